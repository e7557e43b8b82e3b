"""Run folders: save → load is exact; saving is atomic even when interrupted; loading trusts nothing (no
pickle ever runs, newer schemas and weights outside the run are refused) and fails with one clear error."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error, invoke
from safetensors.torch import save_file

from reconad import inference, pipeline
from reconad.data import load_sources
from reconad.errors import ReconadError
from reconad.runfolder import SCHEMA_VERSION
from reconad.runs import load_run, save_run


class Evil:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def edit_config(run: Path, **changes) -> None:
    config = json.loads((run / "run.json").read_text())
    config.update(changes)
    (run / "run.json").write_text(json.dumps(config))


def truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:100])


def weights_of(run: Path) -> Path:
    (file,) = (run / "weights").iterdir()
    return file


def test_save_load_round_trip_is_exact(fitted_run, parts, extractor):
    run = load_run(fitted_run)
    config = json.loads((fitted_run / "run.json").read_text())
    assert run.config == config and config["schema_version"] == SCHEMA_VERSION
    assert config["weights"] == {"synthetic_part": "weights/synthetic_part.safetensors"}
    data = load_sources([f"mvtec:{parts}"])
    first = pipeline.evaluate(run, data, extractor)["synthetic_part"]
    again = pipeline.evaluate(load_run(fitted_run), data, extractor)["synthetic_part"]
    assert (first.scores == again.scores).all() and (first.maps == again.maps).all()


def test_loaded_run_scores_exactly_like_the_fitted_model(tmp_path, parts, extractor):
    data = load_sources([f"mvtec:{parts}"])
    run = pipeline.fit("patchcore", data, extractor, params={"coreset_ratio": 0.05})
    save_run(run, tmp_path / "run")
    feats = pipeline.extract(data[0].test, extractor).features
    before = run.models["synthetic_part"].predict(feats)
    after = load_run(tmp_path / "run").models["synthetic_part"].predict(feats)
    assert torch.equal(before, after)


def test_save_replaces_a_previous_run_and_leaves_no_temporaries(tmp_path, fitted_run):
    run = load_run(fitted_run)
    out = tmp_path / "run"
    save_run(run, out)
    run.config["seed"] = 123
    save_run(run, out)
    assert load_run(out).config["seed"] == 123
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_saved_run_and_reports_get_the_usual_permissions(tmp_path, fitted_run):
    """Writing via temporaries must not leave 0700 folders or 0600 files (others could not read them)."""
    umask = os.umask(0)
    os.umask(umask)
    save_run(load_run(fitted_run), tmp_path / "run")
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~umask
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)  # safetensors alone would make these 0600
    assert {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~umask}
    result = invoke("test", tmp_path / "run", "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path, fitted_run):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ReconadError, match="not a reconad run"):
        save_run(load_run(fitted_run), out)
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


@pytest.mark.parametrize("failing_call", [1, 2, 3])
@pytest.mark.parametrize("exception", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_interrupted_save_leaves_the_previous_run(tmp_path, fitted_run, monkeypatch, failing_call, exception):
    """Fail at each write or rename of a save over an existing run: the previous run is still there, whole."""
    import reconad.runs as runs

    out = tmp_path / "run"
    shutil.copytree(fitted_run, out)
    old_config = (out / "run.json").read_text()
    calls = {"n": 0}

    def failing(real):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == failing_call:
                raise exception
            return real(*args, **kwargs)

        return wrapper

    # the steps of a save, in order: write the weights, rename the old run away, rename the new one in
    monkeypatch.setattr(runs, "save_file", failing(runs.save_file))
    monkeypatch.setattr(os, "replace", failing(os.replace))
    run = load_run(fitted_run)
    run.config["seed"] = 99
    with pytest.raises(type(exception)):
        save_run(run, out)
    monkeypatch.undo()
    assert (out / "run.json").read_text() == old_config
    assert load_run(out).config["seed"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_interrupted_first_save_leaves_nothing(tmp_path, fitted_run, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_run(load_run(fitted_run), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


# --- loading trusts nothing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_in_place_of_weights_is_refused(tmp_path, copy_run, writer):
    run = copy_run()
    marker = tmp_path / "pwned"
    payload = {"bank": Evil(marker)}
    if writer == "pickle":
        weights_of(run).write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, weights_of(run))
    with pytest.raises(ReconadError, match="not a valid safetensors file"):
        load_run(run)
    assert not marker.exists()
    assert_clean_error(invoke("test", run), "not a valid safetensors file", str(weights_of(run)))
    assert_clean_error(invoke("predict", run, tmp_path, "--out", tmp_path / "p"), "not a valid safetensors")
    assert not marker.exists()
    assert not (tmp_path / "p").exists()


def test_weights_pickle_under_another_name_is_never_read(tmp_path, copy_run):
    """run.json may only point at files inside the run; a .pt/.pkl name there is still read as safetensors."""
    run = copy_run()
    marker = tmp_path / "pwned"
    (run / "weights" / "model.pkl").write_bytes(pickle.dumps({"bank": Evil(marker)}, protocol=2))
    edit_config(run, weights={"synthetic_part": "weights/model.pkl"})
    with pytest.raises(ReconadError, match="not a valid safetensors file"):
        load_run(run)
    assert not marker.exists()


def test_newer_schema_version_is_refused(copy_run):
    run = copy_run()
    edit_config(run, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ReconadError, match="newer reconad"):
        load_run(run)
    assert_clean_error(invoke("test", run), f"run schema {SCHEMA_VERSION + 1}", "upgrade reconad")


@pytest.mark.parametrize("target", ["../outside.safetensors", "{abs}", "weights/../../outside.safetensors"])
def test_weights_path_outside_the_run_is_refused(tmp_path, copy_run, target):
    run = copy_run()
    outside = tmp_path / "outside.safetensors"
    shutil.copy(weights_of(run), outside)  # a perfectly valid file: refused for where it is, not what it is
    edit_config(run, weights={"synthetic_part": target.format(abs=outside)})
    with pytest.raises(ReconadError, match="points outside the run"):
        load_run(run)
    assert_clean_error(invoke("test", run), "points outside the run")


def test_weights_symlink_leading_outside_is_refused(tmp_path, copy_run):
    run = copy_run()
    outside = tmp_path / "outside.safetensors"
    shutil.move(weights_of(run), outside)
    (run / "weights" / "synthetic_part.safetensors").symlink_to(outside)
    with pytest.raises(ReconadError, match="points outside the run"):
        load_run(run)


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda run: (run / "run.json").write_text("{not json"), "not valid JSON"),
        (lambda run: (run / "run.json").write_bytes(b"\xff\xfe\x00"), "not valid JSON"),
        (lambda run: (run / "run.json").unlink(), "not a reconad run"),
        (lambda run: edit_config(run, schema_version=None), "no schema_version"),
        (lambda run: (run / "run.json").write_text("[1, 2]"), "no schema_version"),
        (lambda run: weights_of(run).unlink(), "synthetic_part.safetensors"),
        (
            lambda run: weights_of(run).write_bytes(weights_of(run).read_bytes()[:100]),
            "not a valid safetensors",
        ),
        (lambda run: edit_config(run, model="nosuchmodel"), "unknown model 'nosuchmodel'"),
        (
            lambda run: save_file({"other": torch.zeros(2)}, str(weights_of(run))),
            "synthetic_part.safetensors",
        ),
        (lambda run: edit_config(run, params={"bogus": 1}), "run.json"),
        (lambda run: edit_config(run, weights=["weights/synthetic_part.safetensors"]), "run.json"),
        (lambda run: edit_config(run, categories=None), "run.json"),
    ],
    ids=[
        "bad-json",
        "binary-json",
        "no-run-json",
        "no-schema",
        "json-not-object",
        "weights-missing",
        "weights-truncated",
        "unknown-model",
        "weights-of-another-model",
        "unknown-param",
        "weights-not-a-mapping",
        "categories-missing",
    ],
)
def test_damaged_run_gives_one_clear_error(copy_run, damage, words):
    run = copy_run()
    damage(run)
    with pytest.raises(ReconadError, match=None) as info:
        load_run(run)
    assert words in str(info.value)
    assert_clean_error(invoke("test", run), words)


def test_python_predict_on_a_loaded_run_matches_the_cli(tmp_path, fitted_run, parts):
    """README's *Python* recipe for new images: load the run, rebuild its extractor from the run's own
    config, score — the same scores and verdicts as ``reconad predict``."""
    import csv

    from reconad.features.extractor import FeatureExtractor

    paths = sorted((parts / "test").rglob("*.png"))[::3][:4]  # good and defective ones
    run = load_run(fitted_run)
    extractor = FeatureExtractor.from_config(run.config["features"])
    assert extractor.config() == run.config["features"]
    category = next(iter(run.categories))
    scored = list(inference.score_images(run, extractor, paths, category))
    out = tmp_path / "pred"
    result = invoke("predict", fitted_run, *paths, "--out", out)
    assert result.exit_code == 0, result.output
    with open(out / "scores.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    assert len(scored) == len(rows) == 4
    for s in scored:
        assert float(rows[s.path]["score"]) == pytest.approx(s.score, rel=1e-5)
        assert rows[s.path]["is_anomalous"] == str(int(s.is_anomalous))
        assert s.map.shape == s.image.shape[:2]


def test_run_fitted_on_older_features_is_refused(tmp_path, copy_run):
    """A run whose features config lacks ``border`` (saved before the 3×3 average counted its zero padding)
    was fitted on other features: one line to refit, from Python and from the CLI (exit 2)."""
    run = copy_run()
    config = json.loads((run / "run.json").read_text())
    del config["features"]["border"]
    (run / "run.json").write_text(json.dumps(config))
    with pytest.raises(ReconadError, match="refit it") as info:
        load_run(run)
    assert "\n" not in str(info.value)
    assert_clean_error(invoke("test", run), "older reconad", "refit it")
    image = next(iter((tmp_path / "run").parent.glob("*")))  # any path: the run is refused before reading
    assert_clean_error(invoke("predict", run, image, "--out", tmp_path / "p"), "older reconad", "refit it")


UNIFIED_TINY = {
    "rlr": {"epochs": 1, "widths": [8, 8], "layers": 1, "heads": 2, "device": "cpu"},
    "uniad": {
        "epochs": 1, "width": 8, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff_dim": 16,
        "window": 1, "device": "cpu",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(UNIFIED_TINY))
def test_unified_run_of_an_older_state_format_is_refused(tmp_path, parts, extractor, name):
    """A unified run saved before the fidelity changes (no ``model_format``, or another one) holds networks
    trained on other features and nets (UniAD: before its state was the unified models' one): one line to
    refit."""
    data = load_sources([f"mvtec:{parts}"])
    out = tmp_path / name
    save_run(pipeline.fit(name, data, extractor, params=UNIFIED_TINY[name], holdout=0.2), out)
    config = json.loads((out / "run.json").read_text())
    assert config["model_format"] == 2
    load_run(out)
    for stale in (None, 1):
        if stale is None:
            del config["model_format"]
        else:
            config["model_format"] = stale
        (out / "run.json").write_text(json.dumps(config))
        with pytest.raises(ReconadError, match="older reconad.*refit it"):
            load_run(out)
    assert_clean_error(invoke("test", out), "state format 1", "refit it")
