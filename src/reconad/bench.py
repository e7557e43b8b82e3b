"""``reconad bench``: every model on every category, on features extracted once; results table and report.

Features of the training and held-back images are extracted once into the feature cache and read back
by :func:`reconad.pipeline.fit` for each model (same held-back split, same threshold as ``reconad fit``).
The test split is extracted once, without the cache, which also times decoding + backbone for the end-to-end
speed. Each model is then scored on those test features exactly as :func:`reconad.pipeline.evaluate` does.

Peak memory: the process's peak resident set size while one model fits and tests, read from ``VmHWM`` in
``/proc/self/status`` after resetting it by writing ``5`` to ``/proc/self/clear_refs`` (Linux). Elsewhere it
falls back to ``ru_maxrss``, the peak over the whole process, which is then not reset between models. The peak
includes what the process already held (backbone, the test features, earlier models' results), so
``rss_start_bytes`` is recorded too.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from reconad import __version__, pipeline
from reconad.atomic import atomic_folder
from reconad.data import CategoryData, Sample, load_sources
from reconad.errors import ReconadError
from reconad.features.cache import FeatureCache
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import METRIC_KEYS
from reconad.models.base import Model, model_class
from reconad.options import DEFAULTS, FitOptions
from reconad.progress import Progress, no_progress
from reconad.report.html import METRIC_NAMES, ModelReport, best_labels, fmt, write_reports
from reconad.runs import Run, save_run

BENCH_MARKER = "reconad_bench"  # key of results.json that marks a bench folder; its value is the schema
BENCH_SCHEMA = 1


# ---------------------------------------------------------------- memory


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss() -> int | None:
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)


# ---------------------------------------------------------------- checks


def is_bench_folder(path: Path) -> bool:
    """Whether ``path`` holds a previous bench (``results.json`` with the bench marker)."""
    try:
        doc = json.loads((path / "results.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and BENCH_MARKER in doc


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_bench_folder(out))):
        raise ReconadError(f"{out} exists and is not a reconad bench folder: choose another --out")


def per_model(params: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{"MODEL.key": value}`` (``--param MODEL.key=value``) → ``{MODEL: {key: value}}``."""
    out: dict[str, dict[str, str]] = {}
    for key, value in params.items():
        name, _, field = key.partition(".")
        if not field:
            raise ReconadError(f"--param {key}: expected MODEL.key=value")
        out.setdefault(name, {})[field] = value
    return out


def _check_models(models: list[str], params: dict[str, dict[str, Any]]) -> list[pipeline.ModelSpec]:
    """Each benched model's name and parameters, checked once before any work (:class:`~.ModelSpec`)."""
    if not models:
        raise ReconadError("no model given: pass at least one --model")
    if len(set(models)) != len(models):
        raise ReconadError(f"a model is named twice in {', '.join(models)}")
    for name in params:
        model_class(name)  # a --param for an unknown model says so
    extra = sorted(set(params) - set(models))
    if extra:
        raise ReconadError(
            f"--param for {', '.join(extra)}, which is not benched (models: {', '.join(models)})"
        )
    return [pipeline.ModelSpec.check(m, params.get(m, {})) for m in models]


def _check_sources(sources: list[CategoryData], holdout: float, seed: int) -> None:
    for c in sources:
        pipeline.split_holdout(c.train, holdout, seed)  # raises for too few good images
        if not c.test:
            raise ReconadError(f"category {c.name}: no test images")


# ---------------------------------------------------------------- features


@dataclass
class _Test:
    """A category's test split, extracted once."""

    samples: list[Sample]
    ext: pipeline.Extracted


def _feature_cache(extractor: FeatureExtractor, cache_dir: Path | None, scratch: Path) -> FeatureCache:
    """The on-disk cache; a scratch one inside the bench's temp folder where that one cannot be written."""
    cache = FeatureCache(extractor.key(), cache_dir)
    try:
        cache.dir.mkdir(parents=True, exist_ok=True)
        if os.access(cache.dir, os.W_OK):
            return cache
    except OSError:
        pass
    return FeatureCache(extractor.key(), scratch)


def _extract_all(
    sources: list[CategoryData],
    extractor: FeatureExtractor,
    cache: FeatureCache,
    options: FitOptions,
    progress: Progress,
) -> tuple[pipeline.TrainingFeatures, dict[str, _Test], float]:
    """Extract every category's (model part, held-back part) of the training images (through the cache) and
    its test split (timed, uncached), once for all models."""
    total = sum(len(c.train) + len(c.test) for c in sources)
    offset = 0

    def step(description: str, done: int, n: int) -> None:
        progress("features", offset + done, total)

    start = time.perf_counter()
    train, tests = {}, {}
    for c in sources:
        parts = []
        for part in pipeline.split_holdout(c.train, options.holdout, options.seed):
            parts.append(pipeline.extract(part, extractor, cache=cache, progress=step))
            offset += len(part)
        train[c.name] = (parts[0], parts[1])
        ext = pipeline.extract(c.test, extractor, with_masks=True, progress=step)
        offset += len(c.test)
        tests[c.name] = _Test(list(c.test), ext)
    return train, tests, time.perf_counter() - start


# ---------------------------------------------------------------- one model


def _evaluate(run: Run, tests: dict[str, _Test]) -> dict[str, pipeline.CategoryResult]:
    """:func:`pipeline.evaluate_features` on the test features extracted once (seconds = model + maps)."""
    return {name: pipeline.evaluate_features(run, name, t.samples, t.ext) for name, t in tests.items()}


def _bench_model(
    model: Model,
    sources: list[CategoryData],
    train: pipeline.TrainingFeatures,
    tests: dict[str, _Test],
    extractor: FeatureExtractor,
    options: FitOptions,
    runs_dir: Path,
    tick: Callable[..., None],
) -> tuple[ModelReport, dict[str, Any]]:
    """Fit, test and save one model; its report part and its results.json entry."""
    name, n_cat, notes = model.name, len(sources), list[str]()
    _reset_peak_rss()
    rss_start = _status_bytes("VmRSS")

    def fit_progress(description: str, done: int, total: int, info: str = "", unit: str = "") -> None:
        if description == "fitting":  # categories fitted, or a unified model's one fit
            tick(done * n_cat // max(total, 1))

    def epoch_progress(epoch: int, epochs: int, loss: float) -> None:
        tick(epoch * n_cat // max(epochs, 1), f"{name} epoch {epoch}/{epochs}, loss {loss:.4g}")

    run = pipeline.fit(
        model,
        sources,
        extractor,
        holdout=options.holdout,
        seed=options.seed,
        progress=fit_progress,
        training=pipeline.Training(progress=epoch_progress) if model.unified else None,
        features=train,
        false_reject=options.false_reject,
        warn=notes.append,
        unified=options.unified,
    )
    tick(n_cat)
    results = {}
    for i, c in enumerate(sources):
        results.update(_evaluate(run, {c.name: tests[c.name]}))
        tick(n_cat + i + 1)
    peak = _peak_rss()
    save_run(run, runs_dir / name)
    doc = pipeline.results_json(run, results)
    n_images = sum(len(t.samples) for t in tests.values())
    seconds = sum(r.seconds for r in results.values()) + sum(t.ext.seconds for t in tests.values())
    doc.update(
        model_fit_seconds=run.config["model_fit_seconds"],
        predict_images_per_second_end_to_end=n_images / seconds if seconds > 0 else None,
        peak_rss_bytes=peak,
        rss_start_bytes=rss_start,
        params=run.config["params"],
        run_dir=f"runs/{name}",
        notes=notes,
    )
    return ModelReport(name, run.config, results, doc, _cost_cells(doc)), doc


# ---------------------------------------------------------------- tables


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.2f}"


def _speed(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


COST_COLUMNS = (
    "fit s (model)",
    "predict img/s (model + maps)",
    "predict img/s (end to end)",
    "model MB",
    "peak RSS MB",
)


def _cost_cells(doc: dict[str, Any]) -> dict[str, str]:
    values = (
        f"{doc['model_fit_seconds']:.1f}",
        _speed(doc["predict_images_per_second"]),
        _speed(doc["predict_images_per_second_end_to_end"]),
        _mb(doc["model_bytes"]),
        _mb(doc["peak_rss_bytes"]),
    )
    return dict(zip(COST_COLUMNS, values))


def verdicts_cell(v: dict[str, Any]) -> str:
    """A table cell of verdicts at a threshold: ``false rejects/good (rate) · escapes/defective (rate)``."""

    def share(k: int, n: int) -> str:
        return f"{k}/{n} ({k / n:.1%})" if n else "—"

    return f"{share(v['n_false_reject'], v['n_good'])} · {share(v['n_escape'], v['n_defective'])}"


def markdown(docs: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    """``results.md``: per metric a categories × models table (best of each row in bold), then the costs."""
    models = list(docs)
    categories = list(dict.fromkeys(c for d in docs.values() for c in d["categories"]))
    machine = meta["machine"]
    lines = [
        "# reconad bench",
        "",
        f"{meta['date']} · reconad {meta['reconad_version']} · {machine['platform']} · "
        f"{machine['cpu_count']} CPUs · torch {machine['torch_threads']} threads · seed {meta['seed']} · "
        f"{meta['features']['backbone']} levels {meta['features']['layers']} at "
        f"{meta['features']['image_size']} px",
        "",
    ]
    head = "| category | " + " | ".join(models) + " |"
    rule = "|---|" + "---:|" * len(models)
    for key in METRIC_KEYS:
        lines += [f"## {METRIC_NAMES[key]}", "", head, rule]
        rows = [(c, {m: docs[m]["categories"].get(c, {}).get(key) for m in models}) for c in categories]
        rows.append(("**mean**", {m: docs[m]["mean"].get(key) for m in models}))
        for name, values in rows:
            best = best_labels(values)
            cells = [f"**{fmt(values[m])}**" if m in best else fmt(values[m]) for m in models]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"## Verdicts at each run's threshold (false-reject target {meta['arguments']['false_reject']:.1%})",
        "",
        "good rejected · defective passed",
        "",
        head,
        rule,
    ]
    for c in [*categories, None]:
        cells = [
            verdicts_cell(docs[m]["categories"][c]["verdicts"] if c else docs[m]["verdicts"]) for m in models
        ]
        lines.append(f"| {c or '**all**'} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Cost",
        "",
        "| model | " + " | ".join(COST_COLUMNS) + " |",
        "|---|" + "---:|" * len(COST_COLUMNS),
    ]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(_cost_cells(docs[m]).values()) + " |")
    lines += [
        "",
        f"Peak RSS: {meta['peak_rss_method']}.",
        "End to end = decode + resize + backbone (test split, measured once, uncached) + model + maps.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- the bench


#: Distributions besides torch (``machine.torch``, with its build tag) whose versions can move the figures
#: (decoding, resizing, the backbone, search, sampling).
RESULT_PACKAGES = (
    "torchvision",
    "timm",
    "numpy",
    "scipy",
    "scikit-learn",
    "scikit-image",
    "faiss-cpu",
    "pillow",
)


def _packages() -> dict[str, str]:
    """The installed version of each of :data:`RESULT_PACKAGES` (those installed)."""
    found = {}
    for name in RESULT_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "packages": _packages(),
    }


def _meta(options: FitOptions, arguments: dict[str, Any], extractor: FeatureExtractor) -> dict[str, Any]:
    """What results.json records of the bench besides the models: the command, its arguments, the machine."""
    resettable = _reset_peak_rss()
    return {
        "command": shlex.join(sys.argv),
        "arguments": arguments,
        "seed": options.seed,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reconad_version": __version__,
        "machine": _machine(),
        "features": extractor.config(),
        "peak_rss_method": (
            "VmHWM of /proc/self/status, reset per model through /proc/self/clear_refs"
            if resettable
            else "ru_maxrss: the process's peak so far, not reset between models"
        ),
    }


def run_bench(
    models: list[str],
    data: list[str],
    categories: list[str] | None,
    out: Path,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    options: FitOptions = DEFAULTS,
    progress: Progress = no_progress,
) -> str:
    """Fit and test every model on every category; write ``out/results.json``, ``out/results.md`` and
    ``out/report.html`` (replacing a previous bench there atomically). Returns the markdown text.
    ``params``: each model's hyper-parameters (text values are converted; checked before any work)."""
    out = Path(out)
    _check_out(out)
    specs = _check_models(models, params or {})
    sources = load_sources(data, categories, seed=options.seed)
    _check_sources(sources, options.holdout, options.seed)
    extractor = FeatureExtractor.from_options(options)
    options, extractor = pipeline.fitted_features(options, extractor, sources, lambda note: None)
    built = [spec.build(extractor, options.seed) for spec in specs]  # together, with the features
    arguments = {
        "models": models,
        "data": data,
        "categories": categories,
        "params": params or {},
        **{k: v for k, v in asdict(options).items() if k not in ("cache_dir", "no_cache", "keep_aspect")},
        "weights": str(options.weights) if options.weights else None,
        "image_size": extractor.image_size,  # as run.json: an int when square, else "WxH"
        "layers": list(options.layers),
    }
    with atomic_folder(out) as tmp:
        cache = _feature_cache(extractor, options.cache_dir, tmp / "cache")
        train, tests, feature_seconds = _extract_all(sources, extractor, cache, options, progress)
        units = 2 * len(sources)
        reports, docs = [], {}
        for k, model in enumerate(built):

            def tick(done: int, info: str = "", base: int = k * units) -> None:
                progress("bench", base + min(done, units), units * len(built), info=info, unit="steps")

            tick(0)
            report, docs[model.name] = _bench_model(
                model, sources, train, tests, extractor, options, tmp / "runs", tick
            )
            reports.append(report)
        shutil.rmtree(tmp / "cache", ignore_errors=True)
        meta = _meta(options, arguments, extractor)
        meta.update(feature_seconds=feature_seconds, test_images=sum(len(t.samples) for t in tests.values()))
        text = markdown(docs, meta)
        (tmp / "results.json").write_text(
            json.dumps({BENCH_MARKER: BENCH_SCHEMA, "meta": meta, "models": docs}, indent=2)
        )
        (tmp / "results.md").write_text(text)
        write_reports(
            tmp,
            reports,
            title="reconad bench: " + ", ".join(models),
            meta={"data": ", ".join(data), "peak RSS": meta["peak_rss_method"]},
        )
        _check_out(out)  # again, just before a previous bench there is replaced
    return text
