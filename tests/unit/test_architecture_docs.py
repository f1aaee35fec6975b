"""The architecture page (docs/architecture.md) keeps up with the code: every package it
names exists, every package of the code is on it, and every built-in feature's package is
in its table of where each feature lives."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def packages() -> set[str]:
    """The code's packages, as paths below the repository (filterproxy/chain, ...)."""
    return {
        str(init.parent.relative_to(ROOT))
        for init in (ROOT / "filterproxy").rglob("__init__.py")
        if init.parent != ROOT / "filterproxy"
    }


def test_every_path_the_page_names_exists() -> None:
    named = set(re.findall(r"(?<![\w/])(filterproxy/[\w/.]+|twisted/plugins/[\w.]+)", PAGE))
    assert named, "the page names no module"
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/.")).exists())
    assert missing == []


def test_every_module_the_page_names_in_short_exists() -> None:
    """`chain/manager.py`, `extensions/keys/`: a path below one of the code's packages."""
    tops = {p.split("/")[1] for p in packages()}
    named = {
        path for path in re.findall(r"`([a-z_]+/[\w/.]*)`", PAGE) if path.split("/")[0] in tops
    }
    assert named, "the page names no module in short"
    missing = sorted(p for p in named if not (ROOT / "filterproxy" / p.rstrip("/")).exists())
    assert missing == []


def test_every_package_is_on_the_page() -> None:
    absent = sorted(
        p
        for p in packages()
        if p.removeprefix("filterproxy/") + "/" not in PAGE and p + "/" not in PAGE
    )
    assert absent == []


def test_every_extension_is_in_the_table_of_features() -> None:
    table = PAGE.split("## Where each feature lives", 1)[1].split("\n## ", 1)[0]
    extensions = sorted(p for p in packages() if p.startswith("filterproxy/extensions/"))
    assert extensions
    assert [p for p in extensions if f"`{p.removeprefix('filterproxy/')}/`" not in table] == []
