"""The one path every command takes: samples → features → model → maps → scores → metrics.

``fit`` learns from good images (holding a seeded few back to calibrate the decision threshold),
``evaluate`` scores a labelled test split, ``score_images`` scores arbitrary images. The CLI and the bench
are thin layers over these functions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from reconad import __version__
from reconad.data import CategoryData, Sample, load_image_and_mask, resize_images
from reconad.data.imageio import read_image
from reconad.distributed import World, gather_rows
from reconad.errors import ReconadError
from reconad.features.cache import FeatureCache, file_digest
from reconad.features.extractor import FeatureExtractor
from reconad.metrics import by_defect_type, mean_metrics
from reconad.metrics import evaluate as compute_metrics
from reconad.models.base import Model, check_params, create_model, model_class
from reconad.params import MAX_SEED, check_value
from reconad.runs import UNIFIED, Run, models_to
from reconad.runtime import less_kept_memory
from reconad.scoring import anomaly_maps, calibrate_threshold, image_scores

#: How patch scores become maps and image scores unless a run says otherwise (:func:`score_features`).
DEFAULT_SCORING: dict[str, Any] = {"sigma": 4.0, "reduce": "max"}

#: Feature tensors a model scores at once (:func:`score_features`, :func:`evaluate`).
SCORE_BATCH = 32


class Progress(Protocol):
    """Called as ``progress(description, done, total)`` while long work runs (the CLI draws rich bars from
    it); ``info`` is shown beside the count, ``unit`` names what is counted."""

    def __call__(
        self, description: str, done: int, total: int, info: str = "", unit: str = "images"
    ) -> None: ...


def no_progress(description: str, done: int, total: int, info: str = "", unit: str = "images") -> None:
    """A :class:`Progress` that shows nothing."""


def accelerator(extractor: FeatureExtractor) -> torch.device | None:
    """The extractor's device where it is not the CPU (a CUDA GPU): models then search or run beside the
    backbone (:func:`reconad.runs.models_to`); None on the CPU, where nothing moves."""
    device = getattr(extractor, "device", None)  # test doubles of the extractor may have none
    return None if device is None or torch.device(device).type == "cpu" else torch.device(device)


@dataclass
class Extracted:
    """Features of a list of samples, their resized masks (test splits) and the seconds it took."""

    features: Tensor  # [N, C, h, w]
    masks: np.ndarray | None  # [N, S, S] bool, all-False for images without a mask
    seconds: float


def map_on_cores(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """``[fn(x) for x in items]`` on one thread per core, for work that frees the GIL (image decoding and
    encoding).

    Call it between backbone forwards, not beside them: a decoder sharing the cores with the backbone's
    OpenMP threads made the forward twice as slow (``benchmarks/README.md``, *Predict throughput*).
    """
    workers = min(len(items), torch.get_num_threads())
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def stream_features(
    samples: Sequence[Sample],
    extractor: FeatureExtractor,
    *,
    cache: FeatureCache | None = None,
    with_masks: bool = False,
    batch_size: int = 16,
    progress: Progress = no_progress,
    description: str = "features",
) -> Iterator[tuple[Tensor, np.ndarray | None]]:
    """Each sample's patch features ``[C, h, w]`` (from the cache where it has them) and, with ``with_masks``,
    its mask resized to the image size (None where it has none), in order.

    Decoding and the backbone work ``batch_size`` samples at a time and nothing outlives its batch, so
    memory does not grow with the number of samples (``reconad test`` streams through this).
    """
    n, size = len(samples), extractor.image_size
    if n == 0:
        raise ReconadError("no images to extract features from")
    progress(description, 0, n)
    for start in range(0, n, batch_size):
        batch = samples[start : start + batch_size]
        digests = [file_digest(s.path) for s in batch] if cache else [None] * len(batch)
        features: list[Tensor | None] = [cache.get(d) if cache else None for d in digests]
        masked = [with_masks and s.mask_path is not None for s in batch]
        todo = [j for j, f in enumerate(features) if f is None or masked[j]]  # decode these
        decoded = map_on_cores(lambda s: load_image_and_mask(s, size), [batch[j] for j in todo])
        loaded = dict(zip(todo, decoded))
        need = [j for j in todo if features[j] is None]
        if need:
            out = extractor(torch.from_numpy(resize_images([loaded[j][0] for j in need], size)))
            for j, f in zip(need, out):
                features[j] = f.clone()
                if cache:
                    cache.put(digests[j], features[j])
        for j, f in enumerate(features):
            yield f, loaded[j][1] if j in loaded else None
        progress(description, start + len(batch), n)


def extract(
    samples: Sequence[Sample], extractor: FeatureExtractor, *, with_masks: bool = False, **options: Any
) -> Extracted:
    """Patch features of ``samples`` (from the cache where it has them), and their masks if asked, all held
    in memory; ``options``: those of :func:`stream_features` (cache, batch_size, progress, description)."""
    start = time.perf_counter()
    size = extractor.image_size
    masks = np.zeros((len(samples), size, size), dtype=bool) if with_masks else None
    features = []
    for i, (f, mask) in enumerate(stream_features(samples, extractor, with_masks=with_masks, **options)):
        features.append(f)
        if masks is not None and mask is not None:
            masks[i] = mask
    return Extracted(torch.stack(features), masks, time.perf_counter() - start)


def extract_shared(
    samples: Sequence[Sample], extractor: FeatureExtractor, world: World | None, **options: Any
) -> Extracted:
    """:func:`extract`; in a torchrun job each process extracts its share (images ``rank, rank + W, …``,
    through the cache as usual) and every process gets all the features (:func:`distributed.gather_rows`)."""
    if world is None:
        return extract(samples, extractor, **options)
    start = time.perf_counter()
    mine = samples[world.rank :: world.size]
    local = extract(mine or samples[:1], extractor, **options).features[: len(mine)]  # [:1]: the shape
    return Extracted(gather_rows(local, len(samples), world), None, time.perf_counter() - start)


def check_fit_options(
    model_name: str, params: dict[str, Any], holdout: float, seed: int, prefix: str = ""
) -> dict[str, Any]:
    """What can be checked of a fit before any work: the model's hyper-parameters (returned converted to
    their declared types), the holdout fraction and the seed (errors name them with ``prefix``: ``--``)."""
    check_holdout(holdout, f"{prefix}holdout")
    check_value(f"{prefix}seed", seed, int, low=0, high=MAX_SEED)
    return check_params(model_name, params)


def new_model(model_name: str, params: dict[str, Any], extractor: FeatureExtractor, seed: int) -> Model:
    """An unfitted model with ``params`` and what the features tell it (levels and grids, the run's seed
    unless ``params`` has one). Cheap, so callers make one before any work to check the parameters together
    and against the features (a unified model also needs grids that divide the image size)."""
    if model_class(model_name).unified:
        extractor.check_whole_grids()
    context = {"level_channels": extractor.level_channels, "level_grids": extractor.level_grids, "seed": seed}
    return create_model(model_name, **{**context, **params})


def check_holdout(fraction: float, what: str = "holdout") -> float:
    """The fraction of good training images held back to set the threshold: in (0, 1)."""
    return check_value(what, fraction, float, low=0, high=1, low_inclusive=False, high_inclusive=False)


def split_holdout(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """A seeded ``fraction`` of good training images held back from the model to calibrate the threshold."""
    check_holdout(fraction)
    if len(train) < 2:
        raise ReconadError(
            f"category {train[0].category if train else '?'}: need at least 2 good training images"
        )
    n_hold = min(len(train) - 1, max(1, round(fraction * len(train)))) if fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(len(train))
    held = set(order[:n_hold].tolist())
    return [s for i, s in enumerate(train) if i not in held], [s for i, s in enumerate(train) if i in held]


def patch_maps(
    model: Model, features: Tensor, image_size: int, sigma: float, categories: list[str] | None = None
) -> Tensor:
    """Anomaly maps ``[N, S, S]`` of one batch of feature tensors: the model's patch scores (or level maps),
    resized to the image as the model says (``align_corners``), averaged and smoothed."""
    patch = model.predict(features, categories) if categories else model.predict(features)
    return anomaly_maps(patch, image_size, sigma, align_corners=model.align_corners)


def score_features(
    model: Model,
    features: Tensor,
    image_size: int,
    scoring: dict[str, Any],
    categories: list[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """(anomaly maps ``[N, S, S]``, image scores ``[N]``) of feature tensors, in batches of
    :data:`SCORE_BATCH`."""
    maps = []
    for start in range(0, len(features), SCORE_BATCH):
        chunk = features[start : start + SCORE_BATCH]
        cats = categories[start : start + SCORE_BATCH] if categories else None
        maps.append(patch_maps(model, chunk, image_size, scoring["sigma"], cats))
    all_maps = torch.cat(maps)
    return all_maps, image_scores(all_maps, scoring["reduce"])


def fit(
    model_name: str,
    data: list[CategoryData],
    extractor: FeatureExtractor,
    *,
    params: dict[str, Any] | None = None,
    cache: FeatureCache | None = None,
    holdout: float = 0.1,
    seed: int = 0,
    scoring: dict[str, Any] | None = None,
    progress: Progress = no_progress,
    fit_kwargs: dict[str, Any] | None = None,
    features: dict[str, tuple[Extracted, Extracted]] | None = None,
    world: World | None = None,
) -> Run:
    """Fit ``model_name`` on the good images of every category (one model each, or one unified model).

    ``features``: per category, the already extracted (model part, held-back part) of
    :func:`split_holdout` with the same ``holdout`` and ``seed`` (the bench shares them between models).
    ``world``: this process's place in a torchrun job (:mod:`reconad.distributed`); each process then
    extracts its share of the images, and the unified model trains with DistributedDataParallel. Every
    process returns the same run (only rank 0 should save it).
    """
    params = check_fit_options(model_name, params or {}, holdout, seed)
    if world is not None and not model_class(model_name).unified:
        raise ReconadError(
            f"{model_name} fits each category without training: run it in one process, not under torchrun "
            "(torchrun trains the unified models: rlr, rlr-selfref, uniad)"
        )
    probe = new_model(model_name, params, extractor, seed)  # parameters checked together, before any work
    if world is not None:
        fit_kwargs = {**(fit_kwargs or {}), "world": world}
    torch.manual_seed(seed)
    scoring = {**DEFAULT_SCORING, **(scoring or {})}
    start = time.perf_counter()
    splits = {c.name: split_holdout(c.train, holdout, seed) for c in data}
    feats = features or {
        c.name: tuple(
            extract_shared(
                part, extractor, world, cache=cache, progress=progress, description=f"{c.name}: {what}"
            )
            for part, what in zip(splits[c.name], ("features", "held back"), strict=True)
        )
        for c in data
    }
    feature_seconds = time.perf_counter() - start
    model_start = time.perf_counter()
    models: dict[str, Model] = {}
    with less_kept_memory():
        if probe.unified:
            names = [c.name for c in data for _ in range(len(feats[c.name][0].features))]
            bank = torch.cat([feats[c.name][0].features for c in data])
            models[UNIFIED] = probe.fit(bank, names, **(fit_kwargs or {}))
        else:
            for i, c in enumerate(data):
                progress("fitting", i, len(data))
                model = probe if i == 0 else new_model(model_name, params, extractor, seed)
                models[c.name] = model.fit(feats[c.name][0].features)
            progress("fitting", len(data), len(data))
    model_seconds = time.perf_counter() - model_start
    models_to(models, accelerator(extractor))  # the held-back images are scored where features are made
    categories = {}
    for c in data:
        model = models.get(UNIFIED) or models[c.name]
        held = feats[c.name][1].features
        maps, scores = score_features(model, held, extractor.image_size, scoring, [c.name] * len(held))
        categories[c.name] = {
            "source": c.source,
            "n_train": len(splits[c.name][0]),
            "n_holdout": len(held),
            "threshold": calibrate_threshold(scores),
            "normal_level": float(maps.mean()),
        }
    config = {
        "model": model_name,
        "params": next(iter(models.values())).get_config(),
        "features": extractor.config(),
        "scoring": scoring,
        "categories": categories,
        "seed": seed,
        "holdout": holdout,
        "fit_seconds": time.perf_counter() - start,
        "feature_seconds": feature_seconds,
        "model_fit_seconds": model_seconds,
        "reconad_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if world is not None:
        batch, lr = config["params"]["batch_size"], config["params"]["lr"]
        config["distributed"] = {
            "world_size": world.size,
            "backend": world.backend,
            "batch_size_per_process": batch,
            "effective_batch": batch * world.size,
            "lr": lr,
        }
    return Run(config, models)


@dataclass
class CategoryResult:
    """Everything a category's test produced: for the metrics, the JSON and the report."""

    metrics: dict[str, Any]
    samples: list[Sample]
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray
    maps: np.ndarray
    threshold: float
    seconds: float


def _category_result(
    run: Run, category: str, samples: Sequence[Sample], maps: Tensor, masks: np.ndarray, seconds: float
) -> CategoryResult:
    """Image scores and the five metrics of one category's test maps."""
    labels = np.array([s.label for s in samples])
    maps_np = maps.numpy()
    scores_np = image_scores(maps, run.config["scoring"]["reduce"]).numpy()
    metrics = compute_metrics(labels, scores_np, masks, maps_np)
    threshold = run.categories[category]["threshold"]
    return CategoryResult(metrics, list(samples), labels, scores_np, masks, maps_np, threshold, seconds)


def evaluate_features(run: Run, category: str, samples: list[Sample], ext: Extracted) -> CategoryResult:
    """Score one category's extracted test split and compute its metrics (seconds = model + maps)."""
    start = time.perf_counter()
    maps, _ = score_features(
        run.model_for(category),
        ext.features,
        run.config["features"]["image_size"],
        run.config["scoring"],
        [category] * len(samples),
    )
    return _category_result(run, category, samples, maps, ext.masks, time.perf_counter() - start)


def evaluate_stream(
    run: Run,
    category: str,
    samples: Sequence[Sample],
    extractor: FeatureExtractor,
    *,
    cache: FeatureCache | None = None,
    progress: Progress = no_progress,
) -> CategoryResult:
    """:func:`evaluate_features` without holding the features: each batch of :data:`SCORE_BATCH` is scored as
    soon as it is extracted, and only the maps and masks the pixel metrics need are kept (about a third of
    the memory per image of features + maps at 256 px; the same maps, in the same batches)."""
    start = time.perf_counter()
    models_to(run.models, accelerator(extractor))
    model, size, sigma = run.model_for(category), extractor.image_size, run.config["scoring"]["sigma"]
    masks = np.zeros((len(samples), size, size), dtype=bool)
    maps: list[Tensor] = []
    pending: list[Tensor] = []
    stream = stream_features(
        samples, extractor, cache=cache, with_masks=True, progress=progress, description=f"{category}: test"
    )
    for i, (features, mask) in enumerate(stream):
        if mask is not None:
            masks[i] = mask
        pending.append(features)
        if len(pending) == SCORE_BATCH or i == len(samples) - 1:
            maps.append(patch_maps(model, torch.stack(pending), size, sigma, [category] * len(pending)))
            pending.clear()
    return _category_result(run, category, samples, torch.cat(maps), masks, time.perf_counter() - start)


def evaluate(
    run: Run,
    data: list[CategoryData],
    extractor: FeatureExtractor,
    *,
    cache: FeatureCache | None = None,
    progress: Progress = no_progress,
) -> dict[str, CategoryResult]:
    """Score each category's test split with the run's model(s) and compute the five metrics, streaming
    (:func:`evaluate_stream`).

    ``seconds`` of each result is end to end: decoding, backbone, model and maps.
    """
    results = {}
    for c in data:
        if c.name not in run.categories:
            raise ReconadError(
                f"the run has no model for category {c.name!r} (it has {', '.join(run.categories)})"
            )
        if not c.test:
            raise ReconadError(f"category {c.name}: no test images")
        results[c.name] = evaluate_stream(run, c.name, c.test, extractor, cache=cache, progress=progress)
    return results


def results_json(run: Run, results: dict[str, CategoryResult], by_defect: bool = False) -> dict[str, Any]:
    """The ``reconad test --json`` document; ``by_defect`` adds each category's metrics per defect type
    (:func:`reconad.metrics.by_defect_type`) under ``"defect_types"``."""
    per_category = {name: r.metrics for name, r in results.items()}
    if by_defect:
        for name, r in results.items():
            types = by_defect_type(r.labels, r.scores, r.masks, r.maps, [s.defect for s in r.samples])
            per_category[name] = {**r.metrics, "defect_types": types}
    n_images = sum(r.metrics["n_test"] for r in results.values())
    seconds = sum(r.seconds for r in results.values())
    return {
        "model": run.config["model"],
        "backbone": run.config["features"]["backbone"],
        "image_size": run.config["features"]["image_size"],
        "categories": per_category,
        "mean": mean_metrics(per_category),
        "fit_seconds": run.config["fit_seconds"],
        "predict_images_per_second": n_images / seconds if seconds > 0 else None,
        "model_bytes": run.config.get("model_bytes"),
    }


@dataclass
class Scored:
    """One image scored by :func:`score_images`."""

    path: str
    image: np.ndarray  # the original image, H×W×3 uint8
    map: np.ndarray  # anomaly map at the original size
    score: float
    is_anomalous: bool


def score_decoded(
    run: Run, extractor: FeatureExtractor, images: Sequence[tuple[str, np.ndarray]], category: str
) -> list[Scored]:
    """Score decoded ``(name, H×W×3 uint8 image)`` pairs in one backbone batch, maps at each image's size:
    the step :func:`score_images` runs on each batch it decodes (``reconad serve`` calls it on uploads)."""
    if not images:
        return []
    size, threshold = extractor.image_size, run.categories[category]["threshold"]
    feats = extractor(torch.from_numpy(resize_images([x for _, x in images], size)))
    maps, scores = score_features(
        run.model_for(category), feats, size, run.config["scoring"], [category] * len(images)
    )
    scored = []
    for (name, image), m, s in zip(images, maps, scores):
        full = anomaly_maps(m[None], image.shape[:2], 0)[0] if image.shape[:2] != (size, size) else m
        scored.append(Scored(name, image, full.numpy(), float(s), bool(s > threshold)))
    return scored


def score_images(
    run: Run,
    extractor: FeatureExtractor,
    paths: Sequence,
    category: str,
    *,
    batch_size: int = 16,
    on_error: Callable[[str, str], None] | None = None,
    progress: Progress = no_progress,
) -> Iterator[Scored]:
    """Score image files one batch at a time; unreadable files go to ``on_error(path, message)``."""
    models_to(run.models, accelerator(extractor))  # beside the backbone (a GPU); on the CPU nothing moves

    def load(path: Any) -> np.ndarray | str:
        try:
            return read_image(path)
        except ReconadError as err:
            return str(err)

    done = 0
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        loaded = map_on_cores(load, chunk)
        for p, x in zip(chunk, loaded):
            if isinstance(x, str) and on_error:
                on_error(str(p), x)
        yield from score_decoded(
            run, extractor, [(str(p), x) for p, x in zip(chunk, loaded) if not isinstance(x, str)], category
        )
        done += len(chunk)
        progress("predict", done, len(paths))
