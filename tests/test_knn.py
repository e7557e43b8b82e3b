"""Nearest-atom search: the IVF index against exact search, and the label-free choice of ``nprobe``."""

import faiss
import pytest
import torch

from reconad.models.bank.knn import (
    NearestNeighbors,
    calibrate_nprobe,
    exact_search,
    ivf_lists,
    train_centroids,
)
from reconad.models.bank.patchcore import PatchCore


def clustered(n: int, dim: int = 16, clusters: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 3
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, dim, generator=g)


def recall(atoms, centroids, nprobe, queries):
    _, exact = NearestNeighbors(atoms).search(queries, 1)
    _, found = NearestNeighbors(atoms, centroids, nprobe).search(queries, 1)
    return (exact == found).float().mean().item()


def test_calibrated_nprobe_is_the_smallest_power_of_two_reaching_the_recall():
    atoms, queries = clustered(4000), clustered(2000, seed=1)
    centroids = train_centroids(atoms, ivf_lists(len(atoms)), seed=0)
    nprobe = calibrate_nprobe(atoms, centroids, queries, min_recall=0.95)
    assert 1 < nprobe < len(centroids)  # this data needs some probing, but not all of it
    assert recall(atoms, centroids, nprobe, queries) >= 0.95
    assert recall(atoms, centroids, nprobe // 2, queries) < 0.95


def test_calibration_falls_back_to_exact_search():
    atoms = clustered(4000)
    assert calibrate_nprobe(atoms, torch.empty(0, 16), atoms[:10]) == 0  # no IVF index at all
    centroids = train_centroids(atoms, ivf_lists(len(atoms)), seed=0)
    assert calibrate_nprobe(atoms, centroids, clustered(500, seed=2), min_recall=1.0 + 1e-9) == 0


def test_patchcore_learns_nprobe_and_matches_exact_search_closely():
    train = clustered(64 * 64 * 8).reshape(8, 64, 64, 16).permute(0, 3, 1, 2).contiguous()
    test = clustered(64 * 64, seed=3).reshape(1, 64, 64, 16).permute(0, 3, 1, 2).contiguous()
    auto = PatchCore(coreset_ratio=0.2).fit(train)
    exact = PatchCore(coreset_ratio=0.2, nprobe=0).fit(train)
    assert torch.equal(auto.bank_, exact.bank_)
    assert 0 < auto.nprobe_ < len(auto.centroids_)
    same = (auto.predict(test) - exact.predict(test)).abs() < 1e-4
    assert same.float().mean() >= 0.95


@pytest.mark.parametrize("metric", ["l2", "cosine", "abscos"])
def test_torch_exact_search_finds_what_faiss_finds(metric, monkeypatch):
    """The GPU search without FAISS-GPU (``exact_search``, run here on the CPU): the same neighbours and
    distances as FAISS's exact index, and FAISS's padding where ``k`` exceeds the atoms."""
    import reconad.models.bank.knn as knn

    monkeypatch.setattr(knn, "QUERY_BLOCK", 300)  # several query blocks, the last one short
    atoms, queries = clustered(500), clustered(700, seed=4)
    index = NearestNeighbors(atoms, metric=metric)
    d_faiss, i_faiss = index.search(queries, 5)
    q = queries if metric == "l2" else knn._unit(queries)
    entries = knn._entries(atoms, metric)
    d, i = index._fold_negatives(*exact_search(entries, q, 5, metric))
    assert torch.equal(i, i_faiss)
    torch.testing.assert_close(d, d_faiss, rtol=1e-4, atol=1e-4)
    few = entries[:3]  # k = 5 > 3 entries: FAISS pads with -1 and the worst float
    flat = faiss.IndexFlatL2(few.shape[1]) if metric == "l2" else faiss.IndexFlatIP(few.shape[1])
    flat.add(few.numpy())
    d_faiss, i_faiss = flat.search(q[:2].numpy(), 5)
    d, i = exact_search(few, q[:2], 5, metric)
    assert torch.equal(i, torch.from_numpy(i_faiss).long()) and (i[:, 3:] == -1).all()
    assert torch.equal(d[:, 3:], torch.from_numpy(d_faiss[:, 3:]))


def test_patchcore_to_cpu_changes_nothing():
    train = clustered(32 * 32 * 4).reshape(4, 32, 32, 16).permute(0, 3, 1, 2).contiguous()
    model = PatchCore(coreset_ratio=0.2).fit(train)
    before = model.predict(train[:1])
    assert torch.equal(model.to("cpu").predict(train[:1]), before)
