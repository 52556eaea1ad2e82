"""The README's diagnosis-code table, generated from the catalog so it cannot drift.

``python -m lossprobe.readme_table README.md`` rewrites the block between the
``<!-- codes:start -->`` / ``<!-- codes:end -->`` markers; a test checks it is current.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .catalog import CATALOG

START, END = "<!-- codes:start -->", "<!-- codes:end -->"


def table() -> str:
    rows = ["| code | severity | what it means |", "|---|---|---|"]
    for d in CATALOG.values():
        rows.append(f"| `{d.code}` | {d.severity} | {d.meaning} |")
    return "\n".join(rows)


def rewrite(text: str) -> str:
    a, b = text.index(START) + len(START), text.index(END)
    return text[:a] + "\n" + table() + "\n" + text[b:]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(rewrite(path.read_text()))
