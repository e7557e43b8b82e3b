"""The package reads top to bottom: a module imports only modules listed above it in README's *Layout*."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "reconad"


def layout_order() -> list[str]:
    """The top-level modules and folders of ``src/reconad`` in the order README's *Layout* lists them."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    return re.findall(r"^  ([a-z_]+)(?:\.py|/)", block, re.M)


def test_the_layout_names_every_module_once():
    order = layout_order()
    present = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert sorted(order) == sorted(present - {"__init__", "__main__"})


def test_no_module_imports_one_listed_below_it():
    rank = {name: i for i, name in enumerate(layout_order())}
    upward = []
    for path in PACKAGE.rglob("*.py"):
        me = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        source = path.read_text(encoding="utf-8")
        dotted = re.findall(r"^\s*(?:from|import) reconad\.(\w+)", source, re.M)
        named = re.findall(r"^\s*from reconad import ([\w, ]+)", source, re.M)
        for target in dotted + [n.strip() for names in named for n in names.split(",")]:
            if me in rank and target in rank and target != me and rank[target] > rank[me]:
                upward.append(f"{path.relative_to(PACKAGE)} imports reconad.{target}")
    assert not upward
