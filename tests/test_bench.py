"""reconad bench: shared features, one entry per model, tables with the best in bold, checks before work."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reconad import bench, pipeline
from reconad.bench import BENCH_MARKER, run_bench
from reconad.data import load_sources
from reconad.data.synthetic import make_parts
from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import METRIC_KEYS
from reconad.models.base import MODELS, init_config
from reconad.options import FitOptions
from reconad.progress import no_progress
from reconad.report.html import METRIC_NAMES
from reconad.runs import load_run

SIZE = 64
PATCHCORE = {"coreset_ratio": 0.05}


class MeanDistance:
    """A deliberately plain per-category model: distance of each patch to the mean good patch."""

    name = "test_mean_distance"
    unified = False
    align_corners = False

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def fit(self, features: torch.Tensor, categories: list[str] | None = None) -> MeanDistance:
        self.mean_ = features.mean(dim=(0, 2, 3))
        self.image_means_ = features.mean(dim=(2, 3))  # each image's, to leave it out (not saved)
        return self

    def predict(self, features: torch.Tensor, categories: list[str] | None = None) -> torch.Tensor:
        return (features - self.mean_[None, :, None, None]).norm(dim=1) * self.scale

    def predict_left_out(self, features: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Each training image's distance to the mean of the others."""
        n = len(self.image_means_)
        others = (n * self.mean_ - self.image_means_[images]) / max(n - 1, 1)
        return (features - others[:, :, None, None]).norm(dim=1) * self.scale

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_}

    def get_config(self) -> dict[str, Any]:
        return init_config(self)

    @classmethod
    def from_state(cls, config: dict[str, Any], state: dict[str, torch.Tensor]) -> MeanDistance:
        model = cls(**config)
        model.mean_ = state["mean"]
        return model


class UnifiedMean(MeanDistance):
    """The same, as one unified model over every category; reports two "epochs" of progress."""

    name = "test_unified_mean"
    unified = True

    def fit(self, features, categories=None, progress=None, **training):  # type: ignore[override]
        assert categories is not None and len(categories) == len(features)
        for epoch in (1, 2):
            if progress:
                progress(epoch, 2, 0.0)
        return super().fit(features)


MODEL_NAMES = ["patchcore", MeanDistance.name, UnifiedMean.name]


@pytest.fixture(scope="module")
def registered():
    """The two test models in the registry for this module only."""
    MODELS.update({MeanDistance.name: MeanDistance, UnifiedMean.name: UnifiedMean})
    yield
    for name in (MeanDistance.name, UnifiedMean.name):
        MODELS.pop(name, None)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two small synthetic categories in one MVTec-layout folder."""
    root = tmp_path_factory.mktemp("bench-data")
    for seed, name in ((0, "part_a"), (1, "part_b")):
        make_parts(root, n_train=10, n_test_good=4, n_test_bad=6, size=SIZE, seed=seed, category=name)
    return f"mvtec:{root}"


def _bench(source: str, out: Path, cache: Path, progress=None) -> str:
    return run_bench(
        MODEL_NAMES,
        [source],
        None,
        out,
        params={"patchcore": PATCHCORE},
        options=FitOptions(image_size=SIZE, holdout=0.2, cache_dir=cache),
        progress=progress or no_progress,
    )


@pytest.fixture(scope="module")
def benched(registered, source: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bench of three models on the two categories (run once for the module)."""
    root = tmp_path_factory.mktemp("bench")
    calls: list[tuple[str, int, int, str, str]] = []

    def progress(description: str, done: int, total: int, info: str = "", unit: str = "images") -> None:
        calls.append((description, done, total, info, unit))

    md = _bench(source, root / "out", root / "cache", progress)
    return {"out": root / "out", "cache": root / "cache", "md": md, "calls": calls}


def _doc(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text())


def test_writes_results_json_with_one_entry_per_model(benched: dict[str, Any]) -> None:
    out = benched["out"]
    doc = _doc(out)
    assert doc[BENCH_MARKER] == bench.BENCH_SCHEMA
    meta = doc["meta"]
    assert meta["seed"] == 0 and meta["arguments"]["models"] == MODEL_NAMES
    assert meta["machine"]["cpu_count"] >= 1 and meta["machine"]["platform"]
    packages = meta["machine"]["packages"]  # what can move the figures between two installs
    assert packages["numpy"] == np.__version__ and meta["machine"]["torch"] == torch.__version__, packages
    assert meta["reconad_version"] and meta["date"]
    assert list(doc["models"]) == MODEL_NAMES
    for name, entry in doc["models"].items():
        assert entry["model"] == name
        assert set(entry["categories"]) == {"part_a", "part_b"}
        for m in entry["categories"].values():
            assert m["n_test"] == 10
            assert all(0.0 <= m[k] <= 1.0 for k in METRIC_KEYS)
        assert set(entry["mean"]) == set(METRIC_KEYS)
        assert entry["peak_rss_bytes"] > 0 and entry["model_fit_seconds"] >= 0
        assert entry["predict_images_per_second"] > entry["predict_images_per_second_end_to_end"] > 0
        weights = sum(f.stat().st_size for f in (out / entry["run_dir"] / "weights").iterdir())
        assert entry["model_bytes"] == weights > 0
    assert doc["models"]["patchcore"]["params"]["coreset_ratio"] == PATCHCORE["coreset_ratio"]


def _tables(md: str) -> dict[str, list[list[str]]]:
    """Markdown section title → rows of cells (header and rule dropped)."""
    tables: dict[str, list[list[str]]] = {}
    for section in md.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        rows = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("|")]
        tables[title.strip()] = [[c.strip() for c in row] for row in rows[2:]]
    return tables


def test_markdown_has_a_table_per_metric_with_the_best_of_each_row_in_bold(benched: dict[str, Any]) -> None:
    md = benched["md"]
    assert (benched["out"] / "results.md").read_text() == md
    tables = _tables(md)
    assert [METRIC_NAMES[k] for k in METRIC_KEYS] == list(tables)[: len(METRIC_KEYS)]
    doc = _doc(benched["out"])
    for key in METRIC_KEYS:
        rows = tables[METRIC_NAMES[key]]
        assert [r[0] for r in rows] == ["part_a", "part_b", "**mean**"]
        for row in rows:
            values = [float(c.strip("*")) for c in row[1:]]
            bold = [c.startswith("**") for c in row[1:]]
            assert any(bold)
            assert all(b == (round(v, 4) == max(round(x, 4) for x in values)) for v, b in zip(values, bold))
        expected = [doc["models"][m]["categories"]["part_a"][key] for m in MODEL_NAMES]
        assert [float(c.strip("*")) for c in rows[0][1:]] == pytest.approx(expected, abs=5e-5)
    cost = tables["Cost"]
    assert [r[0] for r in cost] == MODEL_NAMES and all(len(r) == 6 for r in cost)


def test_report_covers_every_model_and_its_images_exist(benched: dict[str, Any]) -> None:
    out = benched["out"]
    page = (out / "report.html").read_text()
    for name in MODEL_NAMES:
        assert f"{name} · worst cases" in page
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all((out / s).is_file() for s in sources)
    assert page.count('class="metrics"') == len(METRIC_KEYS) + 1  # a table per metric + the cost table


def test_progress_is_one_bench_bar_over_models_and_categories(benched: dict[str, Any]) -> None:
    calls = benched["calls"]
    assert {d for d, *_ in calls} == {"features", "bench"}
    steps = [(n, t) for d, n, t, _, unit in calls if d == "bench" and unit == "steps"]
    assert len(steps) == len([c for c in calls if c[0] == "bench"])  # a step = one category fitted or tested
    assert {t for _, t in steps} == {2 * 2 * len(MODEL_NAMES)}
    done = [n for n, _ in steps]
    assert done == sorted(done) and done[0] == 0 and done[-1] == steps[0][1]
    epochs = [info for d, _, _, info, _ in calls if d == "bench" and info]
    assert epochs == [f"{UnifiedMean.name} epoch {e}/2, loss 0" for e in (1, 2)]  # a unified fit's epochs
    features = [(n, t) for d, n, t, _, _ in calls if d == "features"]
    assert features[-1] == (2 * 20, 2 * 20)


def test_thresholds_are_those_of_pipeline_fit(benched: dict[str, Any], source: str) -> None:
    """The bench fits as ``reconad fit`` does: the same out-of-sample scores, so the same thresholds."""
    saved = load_run(benched["out"] / "runs" / "patchcore")
    data = load_sources([source])
    direct = pipeline.fit(
        "patchcore", data, FeatureExtractor(image_size=SIZE), params=PATCHCORE, holdout=0.2, seed=0
    )
    for name in ("part_a", "part_b"):
        assert saved.categories[name]["threshold"] == pytest.approx(direct.categories[name]["threshold"])
        ours, theirs = saved.categories[name]["operating"], direct.categories[name]["operating"]
        assert ours["scores"] == pytest.approx(theirs["scores"]) and ours["n"] == theirs["n"]


def test_same_seed_same_metrics_and_a_previous_bench_is_replaced(
    benched: dict[str, Any], source: str
) -> None:
    out = benched["out"]
    first = _doc(out)
    (out / "stale.txt").write_text("left by hand")
    _bench(source, out, benched["cache"])
    second = _doc(out)
    assert not (out / "stale.txt").exists()
    for name in MODEL_NAMES:
        for cat, metrics in first["models"][name]["categories"].items():
            for key in METRIC_KEYS:
                assert round(second["models"][name]["categories"][cat][key], 4) == round(metrics[key], 4)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


@pytest.mark.parametrize(
    "case",
    [
        "unknown_model",
        "twice",
        "no_categories",
        "unknown_category",
        "foreign_out",
        "out_is_file",
        "param_for_other",
    ],
)
def test_bad_inputs_fail_before_any_work(
    case: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(bench, "FeatureExtractor", no_work)
    models, data, cats, params = ["patchcore"], [source], None, {}
    out = tmp_path / "out"
    if case == "unknown_model":
        models = ["patchcore", "no_such_model"]
    elif case == "twice":
        models = ["patchcore", "patchcore"]
    elif case == "no_categories":
        (tmp_path / "empty").mkdir()
        data = [f"mvtec:{tmp_path / 'empty'}"]
    elif case == "unknown_category":
        cats = ["part_z"]
    elif case == "foreign_out":
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
    elif case == "out_is_file":
        out.write_text("a file")
    else:
        params = {"sgfr_or_other": {"k": 3}}
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ReconadError):
        options = FitOptions(image_size=SIZE, cache_dir=tmp_path / "cache")
        run_bench(models, data, cats, out, params=params, options=options)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "foreign_out":
        assert (out / "thesis.tex").read_text() == "precious"
