"""Evaluation suites and their scoring."""
