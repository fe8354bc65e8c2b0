"""Seeded prompt grammars for carrier tasks (numbers, ...)."""
