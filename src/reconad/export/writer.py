"""Write an export folder: the ONNX graphs, ``manifest.json`` and the torch-free runtime.

The folder holds one graph per category (per-category models) or one for all (unified models), the
manifest (format and reconad versions, model, categories with their threshold, normal level and bank
search, image size, opset, each graph's SHA-256), ``predict.py`` and the ``image_runtime.py`` it imports. It
is written to a temporary folder beside the target and renamed into place: an interrupted export leaves the
previous export or none, and a mistake found before the work starts leaves nothing at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from reconad import __version__, image_runtime
from reconad.atomic import atomic_folder
from reconad.errors import ReconadError
from reconad.export.graphs import INPUT, MAPS, OPSET, SCORES, model_graph
from reconad.export.heads import maps_and_scores
from reconad.features.cache import file_digest
from reconad.features.extractor import FeatureExtractor
from reconad.image_runtime import size_hw
from reconad.pipeline import Progress, no_progress
from reconad.runfolder import UNIFIED
from reconad.runs import Run, load_run

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RUNTIME = Path(__file__).with_name("predict.py")


def graph_file(key: str) -> str:
    """The graph's file name for a category (or :data:`~reconad.runfolder.UNIFIED`), made path-safe."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key) + ".onnx"


def _categories(run: Run, wanted: list[str] | None) -> list[str]:
    unknown = [c for c in wanted or [] if c not in run.categories]
    if unknown:
        raise ReconadError(f"the run has no category {unknown[0]!r} (it has {', '.join(run.categories)})")
    return list(dict.fromkeys(wanted)) if wanted else list(run.categories)


def _check_out(out: Path) -> None:
    if out.exists() and not (out / MANIFEST).is_file():
        raise ReconadError(
            f"{image_runtime.show_path(out)} exists and is not a reconad export: choose another --out"
        )
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ReconadError(f"cannot write {out}: {parent} is not a folder")
            break


def _write_graphs(
    run: Run, categories: list[str], folder: Path, progress: Progress
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Export each model's graph into ``folder``; returns category → graph file, and category → the bank
    search its graph performs (models with a bank)."""
    extractor = FeatureExtractor.from_config(run.config["features"])
    keys = [UNIFIED] if UNIFIED in run.models else categories
    searches = {}
    for i, key in enumerate(keys):
        progress("graphs", i, len(keys), unit="graphs")
        head = maps_and_scores(
            run.models[key], extractor.level_hw[0], extractor.image_hw, run.config["scoring"], extractor.tiles
        )
        meta = {"reconad_version": __version__, "model": run.config["model"], "category": key}
        graph = model_graph(extractor, head, meta)
        if (search := getattr(head.head, "search", None)) is not None:
            searches[key] = search.summary
        (folder / graph_file(key)).write_bytes(graph.SerializeToString())
    progress("graphs", len(keys), len(keys), unit="graphs")
    key_of = {c: UNIFIED if UNIFIED in run.models else c for c in categories}
    graphs = {c: graph_file(key) for c, key in key_of.items()}
    return graphs, {c: searches[key] for c, key in key_of.items() if key in searches}


def manifest(
    run: Run,
    categories: list[str],
    graphs: dict[str, str],
    searches: dict[str, dict[str, Any]],
    folder: Path,
) -> dict[str, Any]:
    """The manifest of an export whose graphs are already in ``folder``; ``searches``: each category's bank
    search (``kind`` exact or ivf, atoms, and for ivf the lists and lists probed)."""
    size = run.config["features"]["image_size"]  # an int when square, else "WxH" (as run.json)
    h, w = size_hw(size)
    return {
        "format": "reconad-export",
        "format_version": FORMAT_VERSION,
        "reconad_version": __version__,
        "model": run.config["model"],
        "unified": UNIFIED in run.models,
        "image_size": size,
        "opset": OPSET,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["N", h, w, 3]},
        "outputs": {
            MAPS: {"dtype": "float32", "shape": ["N", h, w]},
            SCORES: {"dtype": "float32", "shape": ["N"]},
        },
        "scoring": run.config["scoring"],
        "features": run.config["features"],
        "categories": {
            c: {
                "graph": graphs[c],
                "threshold": run.categories[c]["threshold"],
                "normal_level": run.categories[c]["normal_level"],
                **({"search": searches[c]} if c in searches else {}),
            }
            for c in categories
        },
        "graphs": {
            g: {"sha256": file_digest(folder / g), "bytes": (folder / g).stat().st_size}
            for g in set(graphs.values())
        },
    }


def export_run(
    run_dir: Path,
    out: Path,
    categories: list[str] | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Export the run at ``run_dir`` (all its categories, or ``categories``) to the folder ``out``; returns
    the manifest. An ``out`` that exists must be an earlier export (it is replaced)."""
    out = Path(out)
    _check_out(out)
    run = load_run(run_dir)
    wanted = _categories(run, categories)
    with atomic_folder(out) as tmp:
        graphs, searches = _write_graphs(run, wanted, tmp, progress)
        doc = manifest(run, wanted, graphs, searches, tmp)
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2))
        shutil.copyfile(RUNTIME, tmp / "predict.py")
        shutil.copyfile(image_runtime.__file__, tmp / "image_runtime.py")
        _check_out(out)  # again, just before a previous export there is replaced
    return doc
