"""Torch → ONNX: one graph from uint8 pixels to anomaly maps and image scores.

The feature part (:class:`~reconad.features.extractor.PatchFeatures`: normalisation, backbone levels,
smoothing, upsampling) is exported once per feature configuration and merged in front of each model's head
(:mod:`.heads`): every category of a run shares it. Only the feature graph goes through the exporter's full
optimizer (:func:`to_onnx`).
Graphs use ONNX opset :data:`OPSET`, a dynamic batch axis, and pass ``onnx.checker`` (full check).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer
import torch
from onnx import compose
from torch import nn

from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.models.bank.traced_search import ONNX_TRANSLATIONS

#: The ONNX opset every exported graph uses (ONNX Runtime ≥ 1.14, OpenVINO ≥ 2023.0, TensorRT ≥ 8.6 read it).
OPSET = 18
INPUT, MAPS, SCORES = "images", "maps", "scores"
_FEATURES = "features"
_feature_graphs: dict[str, onnx.ModelProto] = {}


def to_onnx(
    module: nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], optimize: bool = False
) -> onnx.ModelProto:
    """Trace ``module`` (one tensor input whose axis 0 is the batch) to an ONNX model at :data:`OPSET`;
    ``optimize``: through the exporter's optimizer (onnxscript's constant folding and rewrite rules),
    otherwise through :func:`_folded` only.

    The rewrite rules make the backbone's graph 2.7× faster in ONNX Runtime (0.033 → 0.012 s per 256-px
    image) and no head faster, while one of them (``SlicesSplit``) takes time that grows with the graph:
    41 of SGFR's 78-s export on bottle (392 IVF lists). Heads skip them.
    """
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=({0: batch},),
            custom_translation_table=ONNX_TRANSLATIONS,
            optimize=optimize,
            verbose=False,
        )
    if program is None:  # pragma: no cover  (the dynamo exporter always returns a program)
        raise ReconadError("the ONNX exporter returned no graph")
    if not optimize:
        _folded(program.model)
    return program.model_proto


def _folded(model: ir.Model) -> None:
    """The exporter's optimizer without its rewrite rules, in place: constants folded and made initializers,
    duplicates merged, unused nodes dropped (SGFR's bottle head: 6,735 → 3,712 nodes in 1.3 s; ONNX Runtime
    loads it in 0.6 s instead of 1.1 s and runs it as fast as the fully optimized graph)."""
    onnxscript.optimizer.fold_constants(model)
    ir.passes.Sequential(
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.RemoveUnusedNodesPass(),
    )(model)


def feature_graph(extractor: FeatureExtractor) -> onnx.ModelProto:
    """uint8 ``images [N, H, W, 3]`` → ``features [N, C, h, w]`` (cached per feature configuration)."""
    key = extractor.key()
    if key not in _feature_graphs:
        example = torch.zeros(2, *extractor.image_hw, 3, dtype=torch.uint8)
        _feature_graphs[key] = to_onnx(extractor.net.cpu(), example, [INPUT], [_FEATURES], optimize=True)
    return _feature_graphs[key]


def _renamed(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` everywhere in ``model``'s main graph (in place)."""
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def model_graph(
    extractor: FeatureExtractor, head: nn.Module, metadata: dict[str, Any] | None = None
) -> onnx.ModelProto:
    """The full graph: ``images`` uint8 ``[N, H, W, 3]`` → ``maps`` float32 ``[N, H, W]`` and ``scores``
    float32 ``[N]`` (``(H, W)``: the run's image size); ``head`` maps features to (maps, scores)
    (:class:`~.heads.MapsAndScores`)."""
    example = torch.zeros(2, extractor.channels, *extractor.level_hw[0])
    head = head.cpu().eval()
    with torch.no_grad():  # one eager call first: heads build some constants on first use (attention masks,
        head(example)  # cached once a check has read their values), which a trace cannot do
    scored = to_onnx(head, example, [_FEATURES], [MAPS, SCORES])
    features = compose.add_prefix(feature_graph(extractor), "features/")
    merged = compose.merge_models(features, scored, io_map=[(f"features/{_FEATURES}", _FEATURES)])
    _renamed(merged, f"features/{INPUT}", INPUT)
    opsets = {o.domain: o.version for o in merged.opset_import}  # the merge lists each model's imports
    del merged.opset_import[:]
    merged.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    for node in merged.graph.node:  # the exporter's notes on each node (its torch source: 70 MB on SGFR's
        del node.metadata_props[:]  # per-list search, each node naming every list's weights)
    merged.producer_name = "reconad"
    for key, value in (metadata or {}).items():
        merged.metadata_props.add(key=key, value=str(value))
    try:
        onnx.checker.check_model(merged, full_check=True)
    except onnx.checker.ValidationError as err:  # pragma: no cover  (a bug, not a user mistake)
        raise ReconadError(f"the exported graph fails onnx.checker: {str(err).splitlines()[0]}") from err
    return merged
