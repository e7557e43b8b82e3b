"""Data sources given as ``FORMAT:PATH`` (e.g. ``mvtec:../shared/data/mvtec_ad``) → categories."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reconad.data import btad, folder, mtd, mvtec, mvtec3d, visa
from reconad.data.sample import CategoryData
from reconad.errors import ReconadError

FORMATS: dict[str, Callable[[Path, int], list[CategoryData]]] = {
    "mvtec": mvtec.load,
    "mvtec3d": mvtec3d.load,
    "mtd": mtd.load,
    "visa": visa.load,
    "btad": btad.load,
    "folder": folder.load,
}


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
    """Load every source (setting ``.source``), keep only ``categories`` if given, refuse duplicate names."""
    if not specs:
        raise ReconadError("no data source given (use FORMAT:PATH, e.g. mvtec:data/mvtec_ad)")
    found: list[CategoryData] = []
    origin: dict[str, str] = {}
    for spec in specs:
        fmt, path = parse_source(spec)
        for cat in FORMATS[fmt](path, seed):
            if cat.name in origin:
                raise ReconadError(f"category {cat.name!r} appears in both {origin[cat.name]!r} and {spec!r}")
            origin[cat.name] = spec
            cat.source = spec
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
