"""The README stays true: its schema section is the code's, its file map names real files."""

from __future__ import annotations

import re
from pathlib import Path

from sublim.results import MISALIGNMENT_RESULTS_DOC, RESULTS_SCHEMA_DOC

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_holds_the_current_results_schema() -> None:
    assert RESULTS_SCHEMA_DOC.strip() in README


def test_readme_holds_the_misalignment_results_schema() -> None:
    results = README.split("## Results", 1)[1].split("## File map", 1)[0]
    assert MISALIGNMENT_RESULTS_DOC.strip() in results


def test_file_map_names_existing_paths() -> None:
    fmap = README.split("## File map", 1)[1].split("```")[1]
    prefix = {0: ""}
    missing = []
    for line in fmap.splitlines():
        m = re.match(r"^( *)(\S+)\s", line + " ")
        if not m or m.group(2).startswith("("):
            continue
        indent, name = len(m.group(1)), m.group(2)
        parent = prefix.get(indent, "")
        if not (name.endswith("/") or "." in name or name in {"Makefile"}):
            continue  # a continuation line of a description
        path = parent + name
        if "*" in path:
            if not list(REPO.glob(path)):
                missing.append(path)
        elif not (REPO / path).exists():
            missing.append(path)
        if name.endswith("/"):
            prefix[indent + 2] = path
    assert not missing, f"README file map names missing paths: {missing}"
