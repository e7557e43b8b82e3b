"""``reconad export``: the exported graphs give the library's maps, scores and verdicts; the folder's
``predict.py`` writes what ``reconad predict`` writes; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import UNREADABLE, assert_clean_error, assert_nothing_written, invoke, write_bad

from reconad import pipeline
from reconad.data import read_image, resize_images
from reconad.data.imageio import scan_images
from reconad.export.graphs import OPSET
from reconad.export.verify import run_graph
from reconad.features.extractor import FeatureExtractor
from reconad.runs import load_run

MAP_TOL = 1e-4  # of the map's range
SCORE_TOL = 1e-4  # relative


#: The parameters of each model's small test run (patchcore is conftest's ``fitted_run``). On this data every
#: bank is too small for an IVF index: the library searches exactly, as the graphs do.
PARAMS = {
    "sgfr": {},
    "rlr": {"epochs": 1},
    "rlr-selfref": {"epochs": 1},
    "uniad": {"epochs": 1, "window": 3},  # 64 px: a 4×4 grid
}


class Lazy(dict):
    """A dict that makes a missing value with ``make(key)`` on first use."""

    def __init__(self, make: Callable[[str], Path]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: str) -> Path:
        self[key] = self.make(key)
        return self[key]


@pytest.fixture(scope="module")
def runs(
    fitted_run: Path, parts: Path, extractor, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A saved run of every model on :func:`parts` (fitted on first use)."""
    from reconad.data import load_sources
    from reconad.runs import save_run

    folder = tmp_path_factory.mktemp("runs")

    def fit(name: str) -> Path:
        if name == "patchcore":
            return fitted_run
        run = pipeline.fit(
            name, load_sources([f"mvtec:{parts}"]), extractor, params=PARAMS[name], holdout=0.2
        )
        save_run(run, folder / name)
        return folder / name

    return Lazy(fit)


@pytest.fixture(scope="module")
def exports(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each run exported with ``reconad export`` (on first use)."""
    folder = tmp_path_factory.mktemp("exports")

    def export(name: str) -> Path:
        result = invoke("export", runs[name], "--out", folder / name)
        assert result.exit_code == 0, result.output
        return folder / name

    return Lazy(export)


@pytest.fixture(scope="module")
def exported(exports: dict[str, Path]) -> Path:
    return exports["patchcore"]


def library_outputs(run_dir: Path, category: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The library's (maps, scores, threshold) for resized uint8 images of ``category`` (a tiled run's
    stitched on its canvas)."""
    run = load_run(run_dir)
    extractor = FeatureExtractor.from_config(run.config["features"])
    features = extractor(torch.from_numpy(images))
    maps, scores = pipeline.score_features(
        run.model_for(category),
        features,
        extractor.image_hw,
        run.config["scoring"],
        [category] * len(images),
        extractor.tiles,
    )
    return maps.numpy(), scores.numpy(), run.categories[category]["threshold"]


def assert_parity(run_dir: Path, export_dir: Path, images: np.ndarray) -> None:
    """Every category's graph gives the library's maps (1e-4 of their range), scores (1e-4 relative) and
    verdicts on ``images``."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    for category, entry in manifest["categories"].items():
        maps, scores = run_graph(export_dir / entry["graph"], images)
        lib_maps, lib_scores, threshold = library_outputs(run_dir, category, images)
        assert maps.shape == lib_maps.shape and maps.dtype == np.float32 and scores.shape == (len(images),)
        span = float(lib_maps.max() - lib_maps.min())
        assert np.abs(maps - lib_maps).max() <= MAP_TOL * span
        np.testing.assert_allclose(scores, lib_scores, rtol=SCORE_TOL)
        assert ((scores > threshold) == (lib_scores > threshold)).all()
        assert entry["threshold"] == threshold


def resized_test_images(parts: Path, size: int = 64) -> np.ndarray:
    return resize_images([read_image(p) for p in scan_images(parts / "test")], size)


#: The quick loop checks PatchCore's graph here, a unified model's (UniAD: the UnifiedHead of all three) in
#: test_export_of_a_process_that_never_predicted, and SGFR's search in ONNX in test_export_heads.py: each
#: further model costs a fit and an export (~15 s on 2 cores).
@pytest.mark.parametrize(
    "model",
    [
        "patchcore",
        *(pytest.param(m, marks=pytest.mark.slow) for m in ("sgfr", "rlr", "rlr-selfref", "uniad")),
    ],
)
def test_graph_gives_the_librarys_maps_scores_and_verdicts(runs, exports, parts, model):
    assert_parity(runs[model], exports[model], resized_test_images(parts))


def test_export_of_a_process_that_never_predicted(runs, parts, tmp_path):
    """A fresh ``reconad export`` process has no attention mask cached yet: building one reads tensor values,
    which the trace refuses: the graphs are traced once the masks exist (an UniAD-style run failed)."""
    from reconad.models.trained import attention

    runs["uniad"]  # fitted first: fitting builds the masks
    for cached in (attention.window_mask, attention.window_blocks, attention.outside_window_mask):
        cached.cache_clear()
    result = invoke("export", runs["uniad"], "--out", tmp_path / "uniad")
    assert result.exit_code == 0, result.output
    assert_parity(runs["uniad"], tmp_path / "uniad", resized_test_images(parts))  # the graph traced whole


@pytest.mark.parametrize("model", ["patchcore", pytest.param("rlr", marks=pytest.mark.slow)])  # rlr: a fit
def test_manifest_and_graphs(runs, exports, model):
    exported = exports[model]
    manifest = json.loads((exported / "manifest.json").read_text())
    run = load_run(runs[model])
    assert manifest["format_version"] == 1 and manifest["opset"] == OPSET
    assert manifest["model"] == model and manifest["image_size"] == 64
    assert manifest["unified"] == (model == "rlr")
    assert list(manifest["categories"]) == list(run.categories)
    for category, entry in manifest["categories"].items():
        assert entry["normal_level"] == run.categories[category]["normal_level"]
        bank = None if model == "rlr" else {"kind": "exact", "atoms": len(run.models[category].bank_)}
        assert entry.get("search") == bank
    for name, entry in manifest["graphs"].items():
        model = onnx.load(str(exported / name))
        onnx.checker.check_model(model, full_check=True)
        assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
        assert [i.name for i in model.graph.input] == ["images"]
        assert [o.name for o in model.graph.output] == ["maps", "scores"]
        assert not any(node.metadata_props for node in model.graph.node)  # the exporter's notes dropped
        assert hashlib.sha256((exported / name).read_bytes()).hexdigest() == entry["sha256"]
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        ["manifest.json", "predict.py", "image_runtime.py", *manifest["graphs"]]
    )


def run_script(export_dir: Path, *args: object, python: str = sys.executable) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(export_dir / "predict.py"), *map(str, args)], capture_output=True, text=True, timeout=300
    )


def read_scores(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def assert_script_scores_as_predict(run_dir: Path, export_dir: Path, folder: Path, tmp_path: Path) -> None:
    """The export's ``predict.py`` and ``reconad predict`` give the same verdicts and scores (1e-4) on
    ``folder``."""
    assert invoke("predict", run_dir, folder, "--out", tmp_path / "library").exit_code == 0
    done = run_script(export_dir, folder, "--out", tmp_path / "ours")
    assert done.returncode == 0, done.stderr
    library, ours = (read_scores(tmp_path / d / "scores.csv") for d in ("library", "ours"))
    assert [r["is_anomalous"] for r in ours] == [r["is_anomalous"] for r in library]
    scores = [[float(r["score"]) for r in rows] for rows in (ours, library)]
    np.testing.assert_allclose(*scores, rtol=1e-4)


def test_predict_script_writes_what_reconad_predict_writes(tmp_path, fitted_run, exported, parts):
    folder = parts / "test"
    result = invoke("predict", fitted_run, folder, "--out", tmp_path / "library")
    assert result.exit_code == 0, result.output
    done = run_script(exported, folder, "--out", tmp_path / "export")
    assert done.returncode == 0, done.stderr
    library, ours = (
        read_scores(tmp_path / "library" / "scores.csv"),
        read_scores(tmp_path / "export" / "scores.csv"),
    )
    assert list(ours[0]) == ["path", "score", "is_anomalous", "overlay", "error"]
    assert [(r["path"], r["is_anomalous"], r["overlay"]) for r in ours] == [
        (r["path"], r["is_anomalous"], r["overlay"]) for r in library
    ]
    np.testing.assert_allclose(
        [float(r["score"]) for r in ours], [float(r["score"]) for r in library], rtol=SCORE_TOL
    )
    for row in ours:
        assert (tmp_path / "export" / row["overlay"]).is_file()
    for name in ["scores.csv", ours[0]["overlay"]]:  # the umask's permissions, not mkstemp's 0600
        mode = (tmp_path / "export" / name).stat().st_mode & 0o777
        assert mode == (tmp_path / "library" / name).stat().st_mode & 0o777


def test_predict_script_skips_unreadable_images(tmp_path, exported, fitted_run, parts):
    """Each unreadable image is named on stderr and gets the row reconad predict gives it: its error, no
    score or overlay, in input order."""
    folder = tmp_path / "in"
    shutil.copytree(parts / "test" / "good", folder)
    for kind in UNREADABLE:
        write_bad(kind, folder)
    done = run_script(exported, folder, "--out", tmp_path / "out")
    assert done.returncode == 1
    skipped = [line for line in done.stderr.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == len(UNREADABLE)
    ours = read_scores(tmp_path / "out" / "scores.csv")
    assert len([r for r in ours if not r["error"]]) == len(list((parts / "test" / "good").iterdir()))
    assert sorted(f"skipped {r['error']}" for r in ours if r["error"]) == sorted(skipped)
    assert invoke("predict", fitted_run, folder, "--out", tmp_path / "library").exit_code == 1
    library = read_scores(tmp_path / "library" / "scores.csv")
    columns = ("path", "is_anomalous", "overlay", "error")
    assert [tuple(r[c] for c in columns) for r in ours] == [tuple(r[c] for c in columns) for r in library]


def test_predict_script_refuses_a_modified_graph(tmp_path, exported, parts):
    copy = Path(shutil.copytree(exported, tmp_path / "copy"))
    graph = next(copy.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    done = run_script(copy, parts / "test", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "SHA-256" in done.stderr and graph.name in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--category", "nope"], ["no category 'nope'"]), (["--out", "{file}"], ["is not a folder"])],
)
def test_predict_script_usage_errors(tmp_path, exported, parts, args, words):
    (tmp_path / "file").write_text("x")
    args = [a.format(file=tmp_path / "file") for a in args]
    if "--out" not in args:
        args += ["--out", tmp_path / "out"]
    done = run_script(exported, parts / "test", *args)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    for word in words:
        assert word in done.stderr


# --- reconad export: bad input ------------------------------------------------------------------------------


def test_export_run_that_does_not_load(tmp_path):
    (tmp_path / "notarun").mkdir()
    out = tmp_path / "out"
    assert_clean_error(invoke("export", tmp_path / "notarun", "--out", out), "not a reconad run")
    assert_nothing_written(out)


def test_export_unknown_category(tmp_path, fitted_run):
    out = tmp_path / "out"
    assert_clean_error(invoke("export", fitted_run, "--out", out, "--category", "nope"), "no category 'nope'")
    assert_nothing_written(out)


def test_export_refuses_an_out_that_is_not_an_export(tmp_path, fitted_run):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_clean_error(invoke("export", fitted_run, "--out", out), "not a reconad export")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".precious")]


def test_export_replaces_an_earlier_export(tmp_path, fitted_run, exported):
    out = Path(shutil.copytree(exported, tmp_path / "again"))
    (out / "stale.onnx").write_bytes(b"old")
    result = invoke("export", fitted_run, "--out", out)
    assert result.exit_code == 0, result.output
    assert not (out / "stale.onnx").exists() and (out / "manifest.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".again")]


# --- the folder without PyTorch -----------------------------------------------------------------------------

FORBIDDEN = ("torch", "timm", "faiss", "scipy", "sklearn", "reconad")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh virtual environment with only onnxruntime, numpy and Pillow (skips when pip cannot install
    them, e.g. offline without a pip cache)."""
    env = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True, timeout=300)
    python = str(env / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    done = subprocess.run(
        [*pip, "onnxruntime", "numpy", "pillow"], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"pip could not install onnxruntime, numpy and pillow: {last}")
    return python


@pytest.mark.slow  # a fresh virtual environment and a pip install
def test_predict_script_runs_without_torch(tmp_path, exported, parts, bare_python):
    library = run_script(exported, parts / "test", "--out", tmp_path / "here")
    assert library.returncode == 0, library.stderr
    shipped = Path(shutil.copytree(exported, tmp_path / "copied"))  # what a user copies to the line
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout
    done = subprocess.run(
        [
            bare_python,
            "-X",
            "importtime",
            str(shipped / "predict.py"),
            str(parts / "test"),
            "--out",
            str(tmp_path / "there"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
    )
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "onnxruntime" in imported and "PIL" in imported
    assert not imported & set(FORBIDDEN), imported & set(FORBIDDEN)
    ours, bare = read_scores(tmp_path / "here" / "scores.csv"), read_scores(tmp_path / "there" / "scores.csv")
    assert [(r["path"], r["score"], r["is_anomalous"]) for r in bare] == [
        (r["path"], r["score"], r["is_anomalous"]) for r in ours
    ]


def test_openvino_compiles_an_exported_graph(runs, exports, parts):
    ov = pytest.importorskip("openvino", reason="openvino is not installed (an optional runtime)")
    images = resized_test_images(parts)
    manifest = json.loads((exports["patchcore"] / "manifest.json").read_text())
    (category, entry), *_ = manifest["categories"].items()
    compiled = ov.Core().compile_model(
        str(exports["patchcore"] / entry["graph"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    result = compiled([images])
    maps, scores = result[compiled.output("maps")], result[compiled.output("scores")]
    lib_maps, lib_scores, _ = library_outputs(runs["patchcore"], category, images)
    assert np.abs(maps - lib_maps).max() <= MAP_TOL * float(lib_maps.max() - lib_maps.min())
    np.testing.assert_allclose(scores, lib_scores, rtol=SCORE_TOL)
