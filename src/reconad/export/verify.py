"""Score labelled data through an export folder's graphs (ONNX Runtime, graph optimisations on) and compute
the five metrics as ``reconad test`` does: how an export is shown to give the library's results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reconad.data import CategoryData, load_resized
from reconad.image_runtime import Decoding, size_hw
from reconad.metrics import evaluate


def session(graph: Path) -> Any:
    """An ONNX Runtime session on the CPU with every graph optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def run_graph(graph: Path, images: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(maps ``[N, H, W]``, scores ``[N]``) of resized uint8 ``images`` ``[N, H, W, 3]``, in batches."""
    runner = session(graph)
    outs = [
        runner.run(None, {"images": images[i : i + batch_size]}) for i in range(0, len(images), batch_size)
    ]
    return np.concatenate([m for m, _ in outs]), np.concatenate([s for _, s in outs])


def export_metrics(export_dir: Path, data: CategoryData) -> dict[str, Any]:
    """The metrics of the export's graph for ``data.name`` on ``data``'s test split."""
    manifest = json.loads((Path(export_dir) / "manifest.json").read_text())
    hw = size_hw(manifest["image_size"])
    decoding = Decoding.of_features(manifest["features"])
    loaded = [load_resized(s, hw, decoding) for s in data.test]
    masks = np.stack([m if m is not None else np.zeros(hw, bool) for _, m in loaded])
    graph = Path(export_dir) / manifest["categories"][data.name]["graph"]
    maps, scores = run_graph(graph, np.stack([image for image, _ in loaded]))
    return evaluate(np.array([s.label for s in data.test]), scores, masks, maps)
