"""The torch modules an export traces give each model's own patch scores (before any ONNX is involved),
and the ONNX-expressible inverse is an inverse."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from reconad.export.graphs import OPSET, to_onnx
from reconad.models.bank import traced_search
from reconad.models.bank.patchcore import PatchCore, PatchCoreHead
from reconad.models.bank.sgfr import SGFR, SGFRHead
from reconad.models.bank.traced_linalg import spd_inverse
from reconad.models.bank.traced_search import IVFSearch


def _features(n: int = 6, c: int = 32, side: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(c, 3, generator=g) @ torch.randn(3, n * side * side, generator=g)  # near a subspace
    noise = 0.1 * torch.randn(c, n * side * side, generator=g)
    return (base + noise).T.reshape(n, side, side, c).permute(0, 3, 1, 2).contiguous()


def test_spd_inverse():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 16, 16, generator=g)
    spd = a @ a.transpose(1, 2) / 16 + 0.1 * torch.eye(16)
    torch.testing.assert_close(spd_inverse(spd), torch.linalg.inv(spd), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spd_inverse(spd) @ spd, torch.eye(16).expand(50, -1, -1), rtol=0, atol=1e-4)


@pytest.mark.parametrize(("k", "block"), [(1, 8192), (3, 8192), (1, 7), (3, 7)])
def test_patchcore_head(monkeypatch, k, block):
    # several blocks: the merge across blocks is exact too
    monkeypatch.setattr(traced_search, "SEARCH_BLOCK", block)
    feats = _features()
    model = PatchCore(coreset_ratio=0.1, k=k, nprobe=0).fit(feats[:4])
    head = model.export_head()
    assert isinstance(head, PatchCoreHead)
    torch.testing.assert_close(head(feats[4:]), model.predict(feats[4:]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k", [1, 3])
def test_patchcore_head_searches_the_ivf_lists(k):
    """An IVF model: the head finds the atoms of the probed lists, not the exact nearest ones."""
    feats = _features(n=40, side=8)
    model = PatchCore(coreset_ratio=0.5, k=k, nprobe=2).fit(feats[:30])
    exact = PatchCore(coreset_ratio=0.5, k=k, nprobe=0).fit(feats[:30])
    head = model.export_head()
    assert isinstance(head.search, IVFSearch) and len(model.centroids_) > model.nprobe_
    expected = model.predict(feats[30:])
    assert not torch.allclose(expected, exact.predict(feats[30:]), atol=1e-2)  # the probe matters here
    torch.testing.assert_close(head(feats[30:]), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("params", "block"),
    [({}, 8192), ({}, 5), ({"metric": "cosine"}, 8192), ({"metric": "l2"}, 5), ({"lam": 1e-4}, 8192)],
)
def test_sgfr_head(monkeypatch, params, block):
    monkeypatch.setattr(traced_search, "SEARCH_BLOCK", block)
    feats = _features()
    model = SGFR(sampling_ratio=0.2, nprobe=0, pool_size=1000, **params).fit(feats[:4])
    head = model.export_head()
    assert isinstance(head, SGFRHead) and (head.rho is None) == ("lam" in params)
    expected = model.predict(feats[4:])
    # patch scores agree to float32 noise (the ADMM codes and the residual's Gram form round differently:
    # both sides are ~1e-5 from a float64 solve here); the maps' tolerance is checked end to end
    torch.testing.assert_close(head(feats[4:]), expected, rtol=0, atol=1e-3 * float(expected.max()))


@pytest.mark.parametrize("metric", ["abscos", "cosine", "l2"])
def test_sgfr_head_searches_the_ivf_lists(metric):
    feats = _features(n=40, side=8)
    model = SGFR(sampling_ratio=0.5, nprobe=2, pool_size=4000, metric=metric).fit(feats[:30])
    head = model.export_head()
    assert len(model.centroids_) > model.nprobe and isinstance(head.search, IVFSearch)
    expected = model.predict(feats[30:])
    torch.testing.assert_close(head(feats[30:]), expected, rtol=0, atol=1e-3 * float(expected.max()))


@pytest.mark.slow  # 1–2 min each on 2 cores (an SGFR solve over 100 candidates)
@pytest.mark.parametrize("metric", ["abscos", "l2"])
def test_sgfr_head_when_the_probed_lists_hold_fewer_atoms_than_candidates(metric):
    """One probed list of fewer entries than ``n_candidates``: the unfilled slots count as zero atoms, as in
    the library."""
    feats = _features(n=40, side=8)
    model = SGFR(sampling_ratio=0.5, nprobe=1, n_candidates=100, pool_size=4000, metric=metric).fit(
        feats[:30]
    )
    head = model.export_head()
    assert head.search.may_miss and head.search.longest >= 100
    expected = model.predict(feats[30:])
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(head(feats[30:]), expected, rtol=0, atol=1e-3 * float(expected.max()))


@pytest.mark.parametrize(
    ("metric", "batches"),
    [pytest.param("abscos", (10, 1), marks=pytest.mark.slow), ("l2", (10,))],  # the quick loop traces one
    ids=["abscos", "l2"],
)
def test_ivf_search_in_onnx_runtime(metric, batches):
    """Traced to ONNX, the IVF search (how many pairs probe each list is known only when it runs) gives the
    head's scores on batches of another size than the traced one (one image: lists no patch probes)."""
    feats = _features(n=40, side=8)
    model = SGFR(sampling_ratio=0.5, nprobe=2, pool_size=4000, metric=metric).fit(feats[:30])
    head = model.export_head()
    graph = to_onnx(head, feats[:2], ["features"], ["scores"])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in batches:
        (got,) = session.run(None, {"features": feats[30 : 30 + batch].numpy()})
        expected = head(feats[30 : 30 + batch])
        atol, why = 1e-3 * float(expected.max()), lambda default, b=batch: f"batch {b}: {default}"
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=atol, msg=why)


def test_the_search_writes_onnx_at_the_graphs_opset():
    assert traced_search.op.version == OPSET
