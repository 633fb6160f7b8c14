"""Rewrite the settings table of docs/operations.md from distillery.settings.Settings.

Run by `make generate`; tests/unit/test_cli.py fails when the table is stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from distillery.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
SECTION = re.compile(r"<!-- settings: .*?<!-- /settings -->", re.S)


def main() -> None:
    text = DOC.read_text(encoding="utf-8")
    if not SECTION.search(text):
        raise SystemExit(f"{DOC}: no <!-- settings: ... --> section to rewrite")
    DOC.write_text(SECTION.sub(lambda _: Settings.markdown(), text), encoding="utf-8")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
