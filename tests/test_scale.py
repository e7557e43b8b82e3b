"""Fits that grow with the line: features spooled past the memory budget and read in chunks fit exactly as
in memory; the chunked coreset covers every patch within its certified radius; a budget below one chunk is
one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIT_ARGS, assert_clean_error, invoke

from reconad import pipeline
from reconad.data import load_sources
from reconad.errors import ReconadError
from reconad.features.store import FeatureRows, FeatureSpool, gather_patches, join, take
from reconad.models.bank.coreset import ChunkedCoreset, greedy_coreset
from reconad.models.bank.patchcore import PatchCore
from reconad.models.bank.sgfr import SGFR


def spooled(tmp_path, features: torch.Tensor, budget: int = 1 << 30) -> FeatureRows:
    spool = FeatureSpool(tmp_path / "f.f32", tuple(features.shape[1:]), budget)
    for f in features:
        spool.append(f)
    return spool.rows()


def images(n: int = 24, c: int = 12, side: int = 6, seed: int = 0) -> torch.Tensor:
    """Features of images that repeat with noise (as a line's good parts do): ``[n, c, side, side]``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(3, c, side, side, generator=g)
    return base[torch.arange(n) % 3] + 0.3 * torch.randn(n, c, side, side, generator=g)


def test_spooled_rows_read_back_exactly(tmp_path):
    x = images()
    rows = spooled(tmp_path, x)
    assert rows.shape == x.shape and torch.equal(rows[:], x) and torch.equal(rows[5:9], x[5:9])
    index = np.array([7, 2, 19])
    assert torch.equal(take(rows, index)[:], x[index])
    assert torch.equal(join(take(rows, index), take(rows, np.array([0])))[:], x[[7, 2, 19, 0]])
    flat = torch.tensor([0, 500, 37, 863])
    every = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    assert torch.equal(gather_patches(rows, flat, per_chunk=5), every[flat])


@pytest.mark.parametrize("chunk", [36 * 5, 36 * 24])  # five images a chunk; one chunk (the exact greedy)
def test_patchcore_fits_spooled_rows_exactly_as_in_memory(tmp_path, chunk):
    x = images()
    memory = PatchCore(coreset_ratio=0.1, projection_dim=8, coreset_chunk=chunk).fit(x)
    rows = PatchCore(coreset_ratio=0.1, projection_dim=8, coreset_chunk=chunk).fit(spooled(tmp_path, x))
    assert torch.equal(rows.bank_, memory.bank_) and rows.nprobe_ == memory.nprobe_
    assert rows.coverage_ == memory.coverage_
    test = images(4, seed=9)
    assert torch.equal(rows.predict(test), memory.predict(test))


def test_patchcore_below_the_chunk_size_is_todays_exact_greedy():
    x = images()
    default = PatchCore(coreset_ratio=0.1, projection_dim=8).fit(x)
    assert len(x) * 36 <= default.coreset_chunk
    exact = greedy_coreset(x.permute(0, 2, 3, 1).reshape(-1, 12), round(0.1 * 24 * 36), 8, 0)[0]
    assert torch.equal(default.bank_, x.permute(0, 2, 3, 1).reshape(-1, 12)[exact])


def test_sgfr_fits_spooled_rows_as_in_memory(tmp_path):
    x = images()
    memory = SGFR(sampling_ratio=0.1, pool_size=400, nprobe=0).fit(x)
    rows = SGFR(sampling_ratio=0.1, pool_size=400, nprobe=0).fit(spooled(tmp_path, x, budget=4 * 4 * 432 * 3))
    torch.testing.assert_close(rows.scale_, memory.scale_, rtol=1e-6, atol=0)  # a float64 sum: rounding
    assert torch.equal(rows.support_, memory.support_)
    torch.testing.assert_close(rows.bank_, memory.bank_, rtol=1e-5, atol=1e-6)


def test_chunked_coreset_covers_every_patch_within_its_radius():
    """Every patch lies within the certified radius of the bank (checked by brute force, no projection): the
    largest of the chunks' own greedy radii; one chunk is the exact greedy."""
    x = images(40, c=10, side=5, seed=3)
    patches = x.permute(0, 2, 3, 1).reshape(-1, 10)
    ratio = 0.1
    chunked = ChunkedCoreset(ratio, 8, projection_dim=None, seed=1).run(x)
    assert len(chunked.bank) == 5 * round(ratio * 8 * 25)  # each of 5 chunks keeps its share
    gap = torch.cdist(patches.double(), chunked.bank.double()).amin(1)
    assert float(gap.max()) <= chunked.radius * (1 + 1e-5)
    own = [greedy_coreset(patches[i * 200 : (i + 1) * 200], 20, None, 1 + i)[1] for i in range(5)]
    assert chunked.radius == max(own)
    one = ChunkedCoreset(ratio, 40, projection_dim=None, seed=1).run(x)  # one chunk: the exact greedy
    assert one.radius == greedy_coreset(patches, len(one.bank), None, 1)[1]


def test_a_budget_below_one_chunk_is_one_line(tmp_path):
    rows = spooled(tmp_path, images(), budget=4 * 432 * 4 * 2)  # two images and their working copies
    with pytest.raises(ReconadError, match=r"--memory-budget .* below one chunk of the patchcore coreset"):
        PatchCore(coreset_ratio=0.1, coreset_chunk=36 * 5).fit(rows)
    PatchCore(coreset_ratio=0.1, coreset_chunk=36 * 2).fit(rows)  # two images a chunk: fits


def test_fit_over_its_budget_spools_and_gives_the_in_memory_run(parts, extractor):
    data = load_sources([f"mvtec:{parts}"])
    params = {"coreset_ratio": 0.05, "coreset_chunk": 3 * 64}  # 3 images of 8×8 patches a chunk
    memory = pipeline.fit("patchcore", data, extractor, params=params, holdout=0.2)
    row = 4 * extractor.channels * extractor.level_hw[0][0] * extractor.level_hw[0][1]
    budget = 4 * 3 * row / 1e9  # one chunk: below the features of the 12 images
    spooled_run = pipeline.fit("patchcore", data, extractor, params=params, holdout=0.2, memory_budget=budget)
    (name,) = memory.categories
    assert torch.equal(spooled_run.models[name].bank_, memory.models[name].bank_)
    a, b = spooled_run.categories[name], memory.categories[name]
    assert a["operating"]["scores"] == b["operating"]["scores"] and a["threshold"] == b["threshold"]


def test_cli_budget_below_one_chunk_is_one_line(parts, tmp_path):
    result = invoke(
        "fit", "patchcore", "--data", f"mvtec:{parts}", "--out", tmp_path / "run", *FIT_ARGS,
        "--memory-budget", "0.0001",
    )  # fmt: skip
    assert_clean_error(result, "--memory-budget", "below one chunk")
