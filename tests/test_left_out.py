"""Out-of-sample scores from one fit: each training image scored without the atoms taken from it."""

import numpy as np
import pytest
import torch

from reconad import pipeline
from reconad.errors import ReconadError
from reconad.features.store import as_patches
from reconad.models.bank.knn import NearestNeighbors, exact_search, ivf_centroids
from reconad.models.bank.patchcore import PatchCore
from reconad.models.bank.self_expressive import sparse_codes
from reconad.models.bank.sgfr import SGFR
from reconad.pipeline import DEFAULT_SCORING, left_out_scores


def features(n=8, c=6, h=4, w=4, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("metric", ["l2", "cosine", "abscos"])
@pytest.mark.parametrize("nprobe", [0, 2])
def test_a_search_that_excludes_atoms_is_the_search_of_the_others(metric, nprobe):
    atoms, queries = torch.randn(400, 8), torch.randn(50, 8)
    gone = torch.arange(0, 400, 3)
    others = torch.tensor([i for i in range(400) if i % 3])
    full = NearestNeighbors(atoms, None, 0, metric)
    d, i = full.search(queries, 5, gone)
    d_ref, i_ref = NearestNeighbors(atoms[others], None, 0, metric).search(queries, 5)
    torch.testing.assert_close(d, d_ref)
    assert torch.equal(i, others[i_ref])
    entries = full._entries_of(gone)  # the torch search (a GPU without FAISS-GPU) excludes the same
    table = atoms if metric == "l2" else torch.nn.functional.normalize(atoms, dim=1)
    table = torch.cat([table, -table]) if metric == "abscos" else table
    q = queries if metric == "l2" else torch.nn.functional.normalize(queries, dim=1)
    d_t, i_t = full._fold_negatives(*exact_search(table, q, 5, metric, entries))
    torch.testing.assert_close(d_t, d, rtol=1e-4, atol=1e-4)
    assert torch.equal(i_t, i)
    ivf = NearestNeighbors(atoms, ivf_centroids(atoms, 1, 0, metric), 1, metric) if nprobe else full
    found = ivf.search(queries, 5, gone)[1]
    assert not np.isin(found.numpy(), gone.numpy()).any() and (found >= 0).all()  # full: exact where short
    left = 2 * (2 if metric == "abscos" else 1)  # two atoms left (abscos: each and its negative)
    assert (ivf.search(queries, 5, torch.arange(398))[1][:, left:] == -1).all()


def test_a_bank_with_too_few_atoms_of_other_images_says_so():
    x = features(2)
    x[1] = 0.0  # a blank image: the coreset's atoms all come from the other
    model = PatchCore(coreset_ratio=0.1, k=3, nprobe=0).fit(x)
    assert set(model.origin_.tolist()) == {0}
    with pytest.raises(ReconadError, match="fewer than k=3 atoms from good images other than"):
        model.predict_left_out(x, torch.arange(2))


@pytest.mark.parametrize("nprobe", [0, 1])
def test_patchcore_left_out_is_the_bank_of_the_other_images(nprobe):
    """A full bank (every patch an atom), so leaving an image out is exactly the bank of the others; with one
    IVF probe a query whose cell holds only its own image's atoms falls back to the exact search."""
    x = features(12)
    x[5] += 4.0  # an unusual image: its cell holds its own atoms only
    model = PatchCore(coreset_ratio=1.0, nprobe=nprobe).fit(x)
    got = model.predict_left_out(x, torch.arange(12))
    for i in range(12):
        rest = PatchCore(coreset_ratio=1.0, nprobe=0).fit(torch.cat([x[:i], x[i + 1 :]]))
        exact = rest.predict(x[i : i + 1])[0]
        if nprobe == 0 or i == 5:  # IVF elsewhere: an approximate nearest atom, never nearer
            torch.testing.assert_close(got[i], exact, rtol=1e-4, atol=1e-4)
        assert (got[i] >= exact - 1e-4).all()
    assert (nprobe == 0 or len(model.centroids_) > 1) and got[5].min() > 2 * got[torch.arange(12) != 5].max()


def test_chunked_coreset_atoms_know_their_images():
    x = features(10)
    model = PatchCore(coreset_ratio=0.3, coreset_chunk=3 * 16, nprobe=0).fit(x)
    patches = as_patches(x).reshape(10, 16, -1)
    for atom, image in zip(model.bank_, model.origin_.tolist()):
        assert (patches[image] == atom).all(1).any()


def test_sgfr_left_out_codes_over_the_other_images_atoms():
    x = features(6)
    model = SGFR(sampling_ratio=1.0, nprobe=0, n_candidates=8).fit(x)  # every patch an atom
    got = model.predict_left_out(x[2:3], torch.tensor([2]))
    others = model.bank_[torch.arange(96) // 16 != 2]
    y = as_patches(x[2:3]) / model.scale_
    _, _, res = sparse_codes(
        NearestNeighbors(others, None, 0, model.metric), y, 8, model.lam, model.alpha, 15
    )
    torch.testing.assert_close(got.flatten(), res.sqrt() * model.scale_, rtol=1e-4, atol=1e-5)
    assert got.mean() > model.predict(x[2:3]).mean()  # with its own atoms among them, closer


def test_an_image_unlike_the_others_scores_high_although_the_bank_holds_it():
    x = torch.zeros(10, 4, 4, 4)
    x[3] += 5.0  # one unusual good image
    model = PatchCore(coreset_ratio=1.0, nprobe=0).fit(x)
    scores, levels = left_out_scores(model, x, np.arange(10), (16, 16), DEFAULT_SCORING)
    assert scores[3] > 1.0 and np.all(np.delete(scores, 3) < 1e-3) and levels.shape == (10,)


def test_beyond_max_scored_a_seeded_sample_is_scored(monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_SCORED", 4)
    rows = pipeline.scored_images(10, seed=0)
    assert len(rows) == 4 and list(rows) == sorted(set(rows)) and rows.max() < 10
    assert list(pipeline.scored_images(3, seed=0)) == [0, 1, 2]
    assert list(rows) == list(pipeline.scored_images(10, seed=0))  # seeded
    x = features(10)
    model = PatchCore(coreset_ratio=0.5, nprobe=0).fit(x)
    every, _ = left_out_scores(model, x, np.arange(10), (16, 16), DEFAULT_SCORING)
    some, _ = left_out_scores(model, x, rows, (16, 16), DEFAULT_SCORING)
    np.testing.assert_allclose(some, every[rows], rtol=1e-6)


def test_an_extended_bank_keeps_the_images_of_its_atoms():
    x = features(6)
    model = PatchCore(coreset_ratio=0.5, nprobe=0).fit(x)
    before = len(model.bank_)
    model.extend(features(2, seed=1) + 3.0)
    assert len(model.origin_) == len(model.bank_) > before and (model.origin_[before:] == -1).all()
