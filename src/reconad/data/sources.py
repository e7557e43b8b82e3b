"""Data sources given as ``FORMAT:PATH`` (e.g. ``mvtec:../shared/data/mvtec_ad``) → categories."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path

from reconad.data.sample import CategoryData
from reconad.errors import ReconadError

#: The data formats; each is read by the module ``reconad.data.<format>`` (its ``load(path, seed)``),
#: imported when a source of that format is loaded.
FORMATS = ("mvtec", "mvtec3d", "mtd", "visa", "btad", "folder")


def parse_source(spec: str) -> tuple[str, Path]:
    """Split ``"FORMAT:PATH"`` into a known format name and a path (``~`` expanded)."""
    known = ", ".join(FORMATS)
    fmt, sep, path = spec.partition(":")
    fmt = fmt.strip().lower()
    if not sep:
        raise ReconadError(
            f"data source {spec!r} is not FORMAT:PATH (e.g. mvtec:data/mvtec_ad); formats: {known}"
        )
    if fmt not in FORMATS:
        raise ReconadError(f"unknown data format {fmt!r} in {spec!r}; known formats: {known}")
    if not path.strip():
        raise ReconadError(f"data source {spec!r} has no path after '{fmt}:'")
    return fmt, Path(path).expanduser()


def load_sources(specs: list[str], categories: list[str] | None = None, seed: int = 0) -> list[CategoryData]:
    """Load every source (setting ``.source``: the spec with its path made absolute, so a run fitted on it is
    tested from any folder), keep only ``categories`` if given, refuse duplicate names."""
    if not specs:
        raise ReconadError("no data source given (use FORMAT:PATH, e.g. mvtec:data/mvtec_ad)")
    found: list[CategoryData] = []
    origin: dict[str, str] = {}
    for spec in specs:
        fmt, path = parse_source(spec)
        for cat in import_module(f"reconad.data.{fmt}").load(path, seed):
            if cat.name in origin:
                raise ReconadError(f"category {cat.name!r} appears in both {origin[cat.name]!r} and {spec!r}")
            origin[cat.name] = spec
            cat.source = f"{fmt}:{os.path.abspath(path)}"
            found.append(cat)
    if categories:
        unknown = [c for c in categories if c not in origin]
        if unknown:
            raise ReconadError(
                f"category {', '.join(map(repr, unknown))} not found; found: {', '.join(sorted(origin))}"
            )
        found = [c for c in found if c.name in set(categories)]
    if not found:
        raise ReconadError(f"no categories found in {', '.join(specs)}")
    return found
