"""reconad add: confirmed good images join a bank model's run without refitting, once."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import invoke

from reconad.models.bank.coreset import continue_coreset, coverage_radius
from reconad.runs import load_run


def test_continue_coreset_covers_the_new_patches_within_the_radius():
    """Every new patch ends within ``radius`` of the grown bank, patches the bank covers join nothing, and
    far-apart clusters each get an atom."""
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(200, 8, generator=gen)
    radius = coverage_radius(bank, bank + 0.01 * torch.randn(200, 8, generator=gen), seed=0)
    assert 0 < radius < 0.1
    assert len(continue_coreset(bank, bank[:50] + 0.001, radius)) == 0  # already covered
    far = torch.cat([torch.randn(30, 8, generator=gen) * 0.02 + 10 * torch.eye(8)[i] for i in range(3)])
    chosen = continue_coreset(bank, far, radius)
    grown = torch.cat([bank, far[chosen]])
    assert torch.cdist(far, grown).min(dim=1).values.max() <= radius + 1e-6
    assert 3 <= len(chosen) < len(far)


@pytest.mark.parametrize("model", ["patchcore", "sgfr"])
def test_add_grows_the_bank_without_refitting_and_only_once(model, tmp_path, parts, monkeypatch):
    from reconad import pipeline
    from reconad.options import FitOptions

    run = tmp_path / "run"
    params = {"coreset_ratio": "0.05"} if model == "patchcore" else {"sampling_ratio": "0.05"}
    options = FitOptions(image_size=64, no_cache=True)
    pipeline.fit_folder(model, params, [f"mvtec:{parts}"], None, run, options)
    before = load_run(run)
    bank = before.models["synthetic_part"].bank_.clone()
    op = before.categories["synthetic_part"]["operating"]

    calls = []
    monkeypatch.setattr(type(before.models["synthetic_part"]), "fit", lambda *a: calls.append(a))
    new = tmp_path / "new"  # a variant the line confirms good: the drawn defects, unlike the training patches
    for kind in (parts / "test").iterdir():
        if kind.name != "good":
            shutil.copytree(kind, new / kind.name)
    result = invoke("add", run, new)
    assert result.exit_code == 0, result.output
    assert not calls  # no refit
    after = load_run(run)
    cat = after.categories["synthetic_part"]
    grown = after.models["synthetic_part"].bank_
    assert len(grown) > len(bank) and torch.equal(grown[: len(bank)], bank)  # atoms kept, new ones joined
    n_new = len(list(new.rglob("*.png")))
    assert (
        len(cat["added"]) == n_new
        and cat["n_train"] == before.categories["synthetic_part"]["n_train"] + n_new
    )
    assert len(cat["operating"]["scores"]) == len(op["scores"]) + n_new
    assert cat["operating"]["scores"][: len(op["scores"])] == op["scores"]
    assert f"+ {n_new} added" in cat["operating"]["scores_from"]

    snapshot = (run / "run.json").read_text(), sorted(p.name for p in (run / "weights").iterdir())
    for same in (new, parts / "train" / "good"):  # added before, or trained on: no out-of-sample score
        again = invoke("add", run, same)
        assert again.exit_code == 0 and "nothing changed" in again.stdout
        assert (
            (run / "run.json").read_text(),
            sorted(p.name for p in (run / "weights").iterdir()),
        ) == snapshot


def test_add_refuses_a_unified_run_in_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    doc = {
        "model": "rlr",
        "params": {},
        "weights": {},
        "categories": {"a": {"threshold": 1.0}},
        "features": {"border": "zeros"},
        "scoring": {},
        "schema_version": 1,
        "model_format": 2,
    }
    (run / "run.json").write_text(json.dumps(doc))
    result = invoke("add", run, tmp_path)
    assert result.exit_code == 2
    assert "error:" in result.stderr
