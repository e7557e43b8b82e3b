"""The one path every command takes: samples → features → model → maps → scores → metrics.

``fit`` learns from good images (holding a seeded few back to calibrate the decision threshold),
``evaluate`` scores a labelled test split, ``score_images`` scores arbitrary images. The CLI and the bench
are thin layers over these functions.
"""

from __future__ import annotations

import copy
import inspect
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reconad import __version__, distributed
from reconad.data import CategoryData, Sample, load_image_and_mask, load_sources, resize_images
from reconad.data.imageio import pixel_range, training_aspect, training_size
from reconad.distributed import World, gather_rows
from reconad.errors import ReconadError
from reconad.features.cache import FeatureCache, file_digest
from reconad.features.extractor import FeatureExtractor
from reconad.features.store import Features, FeatureSpool, chunk_bounds, join, take
from reconad.features.tiles import TileGrid, canvas_hw
from reconad.image_runtime import DECODING, Decoding, size_hw
from reconad.metrics import by_defect_type, mean_metrics
from reconad.metrics import evaluate as compute_metrics
from reconad.models.base import Model, model_class
from reconad.operating import (
    DEFAULT_FALSE_REJECT,
    check_rate,
    conformal_threshold,
    pooled_verdicts,
    rate_note,
    verdict_rates,
)
from reconad.options import DEFAULTS, FitOptions, aspect_size, check_holdout, check_seed
from reconad.params import check_values
from reconad.progress import Progress, no_progress
from reconad.runfolder import UNIFIED, check_run_folder, checkpoint_dir
from reconad.runs import Run, load_run, models_to, save_run
from reconad.runtime import less_kept_memory
from reconad.scoring import anomaly_maps, image_scores, tiled_maps

#: How patch scores become maps and image scores unless a run says otherwise (:func:`score_features`).
DEFAULT_SCORING: dict[str, Any] = {"sigma": 4.0, "reduce": "max"}

#: Feature tensors a model scores at once (:func:`score_features`, :func:`evaluate`).
SCORE_BATCH = 32

#: Good images of a category scored for its threshold at most (beyond, a seeded sample): 1,000 scores set a
#: 5 % quantile to about ±0.7 pt, and scoring an image costs what predicting it costs.
MAX_SCORED = 1000

#: Spooled images whose maps :func:`left_out_scores` holds at once at most (256 px: 64 MiB; fewer where the
#: memory budget holds fewer of their features).
SPOOL_SCORE = 256


def accelerator(extractor: FeatureExtractor) -> torch.device | None:
    """The extractor's device where it is not the CPU (a CUDA GPU): models then search or run beside the
    backbone (:func:`reconad.runs.models_to`); None on the CPU, where nothing moves."""
    device = getattr(extractor, "device", None)  # test doubles of the extractor may have none
    return None if device is None or torch.device(device).type == "cpu" else torch.device(device)


@dataclass
class Extracted:
    """Features of a list of samples, their resized masks (test splits) and the seconds it took."""

    features: Features  # [N, C, h, w]: in memory, or spooled rows (a fit over its memory budget)
    masks: np.ndarray | None  # [N, H, W] bool, all-False for images without a mask
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
    n, size = len(samples), extractor.image_hw
    decoding = getattr(extractor, "decoding", DECODING)  # test doubles of the extractor may have none
    if n == 0:
        raise ReconadError("no images to extract features from")
    progress(description, 0, n)
    for start in range(0, n, batch_size):
        batch = samples[start : start + batch_size]
        digests = [file_digest(s.path) for s in batch] if cache else [None] * len(batch)
        features: list[Tensor | None] = [cache.get(d) if cache else None for d in digests]
        masked = [with_masks and s.mask_path is not None for s in batch]
        todo = [j for j, f in enumerate(features) if f is None or masked[j]]  # decode these
        decoded = map_on_cores(lambda s: load_image_and_mask(s, size, decoding), [batch[j] for j in todo])
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
    masks = np.zeros((len(samples), *extractor.image_hw), dtype=bool) if with_masks else None
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


@dataclass(frozen=True)
class ModelSpec:
    """A model's class and hyper-parameters, checked once at the edge (:meth:`check`: the name, each value
    converted to its declared type) and passed on; :meth:`build` makes the unfitted model."""

    cls: type
    params: dict[str, Any]

    @classmethod
    def check(cls, name: str, params: Mapping[str, Any]) -> ModelSpec:
        model = model_class(name)
        return cls(model, check_values(model, params, f"model {name}"))

    def build(self, extractor: FeatureExtractor, seed: int = DEFAULTS.seed) -> Model:
        """The unfitted model with what the features tell it (levels and grids, the run's ``seed`` unless the
        parameters have one); its parameters are checked together and against the features (a unified model
        needs grids that divide the image size)."""
        if self.cls.unified and getattr(extractor, "tiles", None) is not None:
            raise ReconadError(
                f"--tile: {self.cls.name} learns each grid position, not one model for every tile: use "
                "patchcore or sgfr"
            )
        if self.cls.unified:
            extractor.check_whole_grids()
        given = {
            "level_channels": extractor.level_channels,
            "level_grids": extractor.level_grids,
            "seed": seed,
        }
        taken = inspect.signature(self.cls).parameters  # the context a model does not take is left out
        return self.cls(**{k: v for k, v in {**given, **self.params}.items() if k in taken})


def new_model(
    model_name: str, params: Mapping[str, Any], extractor: FeatureExtractor, seed: int = DEFAULTS.seed
) -> Model:
    """An unfitted model of ``model_name`` with ``params`` (:class:`ModelSpec`: checked, then built)."""
    return ModelSpec.check(model_name, params).build(extractor, seed)


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
    model: Model,
    features: Tensor,
    image_size: int | tuple[int, int],
    sigma: float,
    categories: list[str] | None = None,
    tiles: TileGrid | None = None,
) -> Tensor:
    """Anomaly maps ``[N, H, W]`` of one batch of feature tensors (``image_size``: ``(H, W)``, or an int for
    a square): the model's patch scores (or level maps), resized to the image as the model says
    (``align_corners``), averaged and smoothed; a tiled run's (``tiles``: its grid) stitched on the canvas
    (:func:`~reconad.scoring.tiled_maps`)."""
    patch = model.predict(features, categories) if categories else model.predict(features)
    return _maps_of(patch, model, image_size, sigma, tiles)


def _maps_of(
    patch: Tensor, model: Model, image_size: int | tuple[int, int], sigma: float, tiles: TileGrid | None
) -> Tensor:
    if tiles is not None:
        return tiled_maps(patch, tiles, sigma, align_corners=model.align_corners)
    return anomaly_maps(patch, image_size, sigma, align_corners=model.align_corners)


def score_features(
    model: Model,
    features: Tensor,
    image_size: int | tuple[int, int],
    scoring: dict[str, Any],
    categories: list[str] | None = None,
    tiles: TileGrid | None = None,
) -> tuple[Tensor, Tensor]:
    """(anomaly maps ``[N, H, W]``, image scores ``[N]``) of feature tensors, in batches of
    :data:`SCORE_BATCH` (``tiles``: as :func:`patch_maps`'s)."""
    maps = []
    for start in range(0, len(features), SCORE_BATCH):
        chunk = features[start : start + SCORE_BATCH]
        cats = categories[start : start + SCORE_BATCH] if categories else None
        maps.append(patch_maps(model, chunk, image_size, scoring["sigma"], cats, tiles))
    all_maps = torch.cat(maps)
    return all_maps, image_scores(all_maps, scoring["reduce"])


@dataclass(frozen=True)
class Training:
    """What fitting a trained model (``unified``: RLR, RLR-selfref, UniAD) takes besides its features:
    per-epoch checkpoints in ``checkpoint_dir`` (None: none), ``resume`` from the last one there,
    ``progress(epoch, epochs, mean_loss)`` after each epoch, and this process's place in a torchrun job
    (``world``; None: one process)."""

    checkpoint_dir: Path | None = None
    resume: bool = False
    progress: Callable[[int, int, float], None] | None = None
    world: World | None = None


#: The (model part, held-back part) of each category's good training images, extracted.
TrainingFeatures = dict[str, tuple[Extracted, Extracted]]


def fit_models(
    model: Model,
    train: dict[str, Features],
    training: Training | None = None,
    progress: Progress = no_progress,
    unified: bool = False,
) -> dict[str, Model]:
    """``model`` (unfitted) fitted on every category's good features at once (a unified model, or a bank
    model asked to be ``unified``: one model under :data:`~reconad.runfolder.UNIFIED`), or a copy of it
    fitted on each category's (``train``: category → features ``[N, C, h, w]``)."""
    training = training or Training()
    with less_kept_memory():
        if model.unified or unified:
            names = [name for name, x in train.items() for _ in range(len(x))]
            how = {
                "checkpoint_dir": training.checkpoint_dir,
                "resume": training.resume,
                "progress": training.progress,
                "world": training.world,
            }
            progress("fitting", 0, 1, unit="models")
            every = torch.cat(list(train.values()))  # the caller's model stays unfitted:
            fitted = copy.deepcopy(model).fit(every, names, **(how if model.unified else {}))
            progress("fitting", 1, 1, unit="models")
            return {UNIFIED: fitted}
        models: dict[str, Model] = {}
        for i, (name, x) in enumerate(train.items()):
            progress("fitting", i, len(train), unit="categories")
            models[name] = copy.deepcopy(model).fit(x)  # each category from the unfitted model
        progress("fitting", len(train), len(train), unit="categories")
        return models


def scored_images(n: int, seed: int) -> np.ndarray:
    """Which of a category's ``n`` good images are scored for its threshold: all of them, or a seeded
    sample of :data:`MAX_SCORED` (sorted)."""
    if n <= MAX_SCORED:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_SCORED, replace=False))


def left_out_scores(
    model: Model,
    features: Features,
    rows: np.ndarray,
    image_size: tuple[int, int],
    scoring: dict[str, Any],
    tiles: TileGrid | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample scores of good images a bank ``model`` was fitted on (``rows`` of ``features``, in the
    order :meth:`fit` took them; every category's pooled for a unified bank), from that one fit: each image
    scored without the atoms taken from it (``predict_left_out``); and the mean of each image's map (their
    mean is the overlays' normal level). Spooled rows are read a part at a time. A tiled run's rows are
    images (all their tiles): an image is scored without any atom from any of its tiles."""
    per_part = len(rows) if isinstance(features, Tensor) else features.images_per_chunk(SPOOL_SCORE)
    scores, levels = np.empty(len(rows)), np.empty(len(rows))
    for a, b in chunk_bounds(len(rows), max(1, min(per_part, SCORE_BATCH))):
        part = take(features, rows[a:b])
        patch = model.predict_left_out(
            part if isinstance(part, Tensor) else part[:], torch.from_numpy(rows[a:b])
        )
        maps = _maps_of(patch, model, image_size, scoring["sigma"], tiles)
        scores[a:b] = image_scores(maps, scoring["reduce"]).numpy()
        levels[a:b] = maps.flatten(1).mean(1).numpy()
    return scores, levels


def _calibrate(
    template: Model,
    run_models: dict[str, Model],
    data: list[CategoryData],
    feats: TrainingFeatures,
    train: dict[str, Features],
    scoring: dict[str, Any],
    calibration: Calibration,
) -> dict[str, dict[str, Any]]:
    """Each category's operating point (:mod:`reconad.operating`) and normal level, from out-of-sample scores
    of its good images: each scored without its own atoms (bank models, :func:`left_out_scores`; a unified
    bank over every category's images pooled, its threshold still per category) or held back (unified
    trained models)."""
    categories = {}
    pooled = UNIFIED in run_models and not template.unified  # one bank for every category
    size, tiles = calibration.image_size, calibration.tiles
    if pooled:
        every = torch.cat([train[c.name] for c in data])
        bounds = np.cumsum([0, *(len(train[c.name]) for c in data)])
    for i, c in enumerate(data):
        fit_part, held = feats[c.name][0].features, feats[c.name][1].features
        calibration.progress("scoring the good images", i, len(data), unit="categories")
        if UNIFIED in run_models and not pooled:  # a trained unified model: its held-back images
            maps, s = score_features(run_models[UNIFIED], held, size, scoring, [c.name] * len(held))
            scores, level, source = s.numpy(), float(maps.mean()), f"held back ({len(held)} images)"
            n_train, extra = len(fit_part), {"n_holdout": len(held)}
        else:
            n_train, extra = len(train[c.name]), {}
            if not hasattr(template, "predict_left_out"):
                raise ReconadError(
                    f"{template.name}: a per-category model needs predict_left_out (models/base.py)"
                )
            rows = scored_images(n_train, calibration.seed)
            bank, features, first = (
                (run_models[UNIFIED], every, bounds[i]) if pooled else (run_models[c.name], train[c.name], 0)
            )
            scores, levels = left_out_scores(bank, features, first + rows, size, scoring, tiles)
            level, source = float(levels.mean()), "each image left out of the bank"
            if len(rows) < n_train:
                source += f" ({len(rows)} of {n_train} images, a seeded sample)"
        point = conformal_threshold(scores, calibration.false_reject)
        if (note := rate_note(c.name, point)) is not None:
            calibration.warn(note)
        categories[c.name] = {
            "source": c.source,
            "n_train": n_train,
            **extra,
            "threshold": point.threshold,
            "normal_level": level,
            "operating": {**point.to_json(), "scores_from": source, "scores": scores.tolist()},
            "trained_on": [file_digest(s.path) for s in c.train],  # SHA-256: what reconad add must not re-add
        }
    calibration.progress("scoring the good images", len(data), len(data), unit="categories")
    return categories


@dataclass(frozen=True)
class Calibration:
    """How :func:`fit` sets each category's threshold (:mod:`reconad.operating`): the false-reject rate
    asked for, the seed of the sample of good images scored where they are more than :data:`MAX_SCORED`,
    the image size of the maps, where a note goes when the good images are too few for the rate, progress,
    and a tiled run's grid."""

    false_reject: float = DEFAULT_FALSE_REJECT
    seed: int = DEFAULTS.seed
    image_size: tuple[int, int] = DEFAULTS.image_size  # (h, w) of the maps
    warn: Callable[[str], None] = print
    progress: Progress = no_progress
    tiles: TileGrid | None = None  # a tiled run's grid


def spooled_features(
    name: str, parts: Sequence[list[Sample]], extractor: FeatureExtractor, spool: FeatureSpool, **options: Any
) -> tuple[Extracted, ...]:
    """:func:`extract` of each part into ``spool`` (one file, the parts one after the other) instead of
    memory: each part's rows of it; ``options``: those of :func:`stream_features` (cache, progress)."""
    start, counts = time.perf_counter(), []
    for part, what in zip(parts, ("features", "held back"), strict=True):
        for f, _ in stream_features(part, extractor, description=f"{name}: {what}", **options):
            spool.append(f)
        counts.append(len(part))
    rows, seconds, edges = spool.rows(), time.perf_counter() - start, np.cumsum([0, *counts])
    return tuple(Extracted(rows.take(np.arange(a, b)), None, seconds) for a, b in zip(edges, edges[1:]))


def training_features(
    data: list[CategoryData],
    extractor: FeatureExtractor,
    world: World | None,
    cache: FeatureCache | None,
    holdout: float,
    seed: int,
    progress: Progress = no_progress,
    spool: Path | None = None,
    budget: float = DEFAULTS.memory_budget,
) -> TrainingFeatures:
    """Each category's (model part, held-back part) of its good training images (:func:`split_holdout`),
    extracted (a torchrun process extracts its share, :func:`extract_shared`). With a ``spool`` folder, a
    category whose features exceed ``budget`` GB is spooled there (:func:`spooled_features`)."""
    shape = (extractor.channels, *extractor.level_hw[0])
    row_bytes = 4 * shape[0] * shape[1] * shape[2]
    feats: TrainingFeatures = {}
    for c in data:
        parts = split_holdout(c.train, holdout, seed)
        if spool is not None and len(c.train) * row_bytes > budget * 1e9:
            writer = FeatureSpool(spool / f"{len(feats)}.f32", shape, int(budget * 1e9))
            feats[c.name] = spooled_features(c.name, parts, extractor, writer, cache=cache, progress=progress)
            continue
        feats[c.name] = tuple(
            extract_shared(
                part, extractor, world, cache=cache, progress=progress, description=f"{c.name}: {what}"
            )
            for part, what in zip(parts, ("features", "held back"), strict=True)
        )
    return feats


def _model_to_fit(
    model: Model | str, params: Mapping[str, Any] | None, extractor: FeatureExtractor, seed: int, world: Any
) -> Model:
    """The model :func:`fit` fits: built from its name and ``params``, or as given (then without
    ``params``); one line where a per-category model is asked to run under torchrun."""
    if isinstance(model, str):
        model = new_model(model, params or {}, extractor, seed)
    elif params:
        raise ReconadError("params go with a model name; a built model already has its parameters")
    if world is not None and not model.unified:
        raise ReconadError(
            f"{model.name} fits each category without training: run it in one process, not under torchrun "
            "(torchrun trains the unified models: rlr, rlr-selfref, uniad)"
        )
    return model


def fit(
    model: Model | str,
    data: list[CategoryData],
    extractor: FeatureExtractor,
    *,
    params: Mapping[str, Any] | None = None,
    holdout: float = DEFAULTS.holdout,
    seed: int = DEFAULTS.seed,
    cache: FeatureCache | None = None,
    scoring: dict[str, Any] | None = None,
    progress: Progress = no_progress,
    training: Training | None = None,
    features: TrainingFeatures | None = None,
    false_reject: float = DEFAULT_FALSE_REJECT,
    warn: Callable[[str], None] = print,
    unified: bool = False,
    memory_budget: float = DEFAULTS.memory_budget,
) -> Run:
    """Fit ``model`` (unfitted, from :func:`new_model`; or a model name, built here with ``params``) on the
    good images of every category (one model each, or one unified model).

    ``features``: per category, the already extracted (model part, held-back part) of
    :func:`split_holdout` with the same ``holdout`` and ``seed`` (the bench shares them between models).
    ``training``: how a unified model trains (:class:`Training`); with a ``world`` each process extracts
    its share of the images and the model trains with DistributedDataParallel. Every process returns the
    same run (only rank 0 should save it).

    The threshold meets the ``false_reject`` rate (:mod:`reconad.operating`): per-category models are fitted
    on every good image, each scored without its own atoms (:func:`left_out_scores`); a unified model trains
    on the images not held back and scores those held back. ``warn`` gets a note where the images are too few.
    ``unified``: a per-category model (PatchCore, SGFR) keeps one bank for every category's good images,
    each scored without its own atoms; each category still gets its own threshold.
    """
    check_holdout(holdout)
    check_seed(seed)
    check_rate(false_reject)
    training = training or Training()
    world = training.world
    model = _model_to_fit(model, params, extractor, seed, world)
    torch.manual_seed(seed)
    scoring = {**DEFAULT_SCORING, **(scoring or {})}
    start = time.perf_counter()
    calibration = Calibration(false_reject, seed, extractor.image_hw, warn, progress, extractor.tiles)
    with tempfile.TemporaryDirectory(prefix="reconad-spool-") as spool:
        in_memory = model.unified or unified or world  # one trained model, one bank, or a torchrun job
        feats = features or training_features(
            data, extractor, world, cache, holdout, seed, progress,
            None if in_memory else Path(spool), memory_budget,
        )  # fmt: skip
        feature_seconds = time.perf_counter() - start
        train = {c.name: feats[c.name][0].features for c in data}
        if not model.unified:  # per-category models learn from every good image
            train = {name: join(x, feats[name][1].features) for name, x in train.items()}
        models = fit_models(model, train, training, progress, unified)
        models_to(models, accelerator(extractor))  # the held-back images are scored where features are made
        categories = _calibrate(model, models, data, feats, train, scoring, calibration)
        model_seconds = time.perf_counter() - start - feature_seconds  # the good images' scoring included
        del train, feats
    config = {
        "model": model.name,
        "params": next(iter(models.values())).get_config(),
        "features": extractor.config(),
        "scoring": scoring,
        "categories": categories,
        "seed": seed,
        "holdout": holdout if model.unified else None,
        "unified": UNIFIED in models,
        "fit_seconds": time.perf_counter() - start,
        "feature_seconds": feature_seconds,
        "model_fit_seconds": model_seconds,
        "reconad_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if world is not None:
        config["distributed"] = world.describe(model.batch_size, model.lr)
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
        size_hw(run.config["features"]["image_size"]),
        run.config["scoring"],
        [category] * len(samples),
        TileGrid.of_features(run.config["features"]),
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
    model, size, sigma = run.model_for(category), extractor.image_hw, run.config["scoring"]["sigma"]
    masks = np.zeros((len(samples), *size), dtype=bool)
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
            cats = [category] * len(pending)
            maps.append(patch_maps(model, torch.stack(pending), size, sigma, cats, extractor.tiles))
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


def test_folder(
    run_dir: Path,
    data: Sequence[str] | None = None,
    categories: list[str] | None = None,
    device: str = DEFAULTS.device,
    progress: Progress = no_progress,
) -> tuple[Run, dict[str, CategoryResult]]:
    """``reconad test``: the run at ``run_dir`` scored on the test split of its categories (or
    ``categories``), read from its own data sources unless ``data`` names others."""
    run = load_run(run_dir)
    specs = list(data or sorted({c["source"] for c in run.categories.values()}))
    sources = load_sources(specs, categories or list(run.categories))
    extractor = FeatureExtractor.from_config(run.config["features"], device)
    return run, evaluate(run, sources, extractor, progress=progress)


def results_json(run: Run, results: dict[str, CategoryResult], by_defect: bool = False) -> dict[str, Any]:
    """The ``reconad test --json`` document: per category the five metrics, the verdicts at the run's
    threshold (``verdicts``: false rejects and escapes, :func:`reconad.operating.verdict_rates`) and how the
    threshold was set (``operating``, without its scores); ``by_defect`` adds the metrics and verdicts per
    defect type (:func:`reconad.metrics.by_defect_type`) under ``"defect_types"``."""
    per_category = {}
    for name, r in results.items():
        operating = {k: v for k, v in run.categories[name].get("operating", {}).items() if k != "scores"}
        verdicts = verdict_rates(r.labels, r.scores, r.threshold)
        doc = {**r.metrics, "verdicts": verdicts, "operating": operating}
        if by_defect:
            kinds = np.array([s.defect for s in r.samples])
            types = by_defect_type(r.labels, r.scores, r.masks, r.maps, kinds.tolist())
            for kind, m in types.items():
                keep = (r.labels == 0) | (kinds == kind)
                m["verdicts"] = verdict_rates(r.labels[keep], r.scores[keep], r.threshold)
            doc["defect_types"] = types
        per_category[name] = doc
    n_images = sum(r.metrics["n_test"] for r in results.values())
    seconds = sum(r.seconds for r in results.values())
    return {
        "model": run.config["model"],
        "backbone": run.config["features"]["backbone"],
        "image_size": run.config["features"]["image_size"],
        "categories": per_category,
        "mean": mean_metrics(per_category),
        "verdicts": pooled_verdicts([d["verdicts"] for d in per_category.values()]),
        "fit_seconds": run.config["fit_seconds"],
        "predict_images_per_second": n_images / seconds if seconds > 0 else None,
        "model_bytes": run.config.get("model_bytes"),
    }


def measured_decoding(data: list[CategoryData], max_pixels: int) -> Decoding:
    """Without ``--bit-depth``: the levels of >8-bit data measured on every category's good training images
    (their lowest and highest sample: the good images fill the backbone's 0–255), one for the run; the
    default where every good training image is 8-bit."""
    paths = [s.path for c in data for s in c.train]
    ranges = [r for r in map_on_cores(lambda p: pixel_range(p, max_pixels), paths) if r is not None]
    if not ranges:
        return Decoding(max_pixels=max_pixels)
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if high <= low:
        raise ReconadError(f"the >8-bit good training images all hold the one value {low}: pass --bit-depth")
    return Decoding((low, high), max_pixels, f"measured on {len(ranges)} good training images")


def feature_cache(options: FitOptions, extractor: FeatureExtractor) -> FeatureCache | None:
    """The on-disk feature cache the options ask for (None with ``no_cache``)."""
    return None if options.no_cache else FeatureCache(extractor.key(), options.cache_dir)


def keep_aspect(
    options: FitOptions, extractor: FeatureExtractor, data: list[CategoryData], warn: Callable[[str], None]
) -> FitOptions:
    """``--keep-aspect``: the options at the size :func:`~reconad.options.aspect_size` gives for the median
    aspect of every category's good training images (``extractor`` resized to it in place); ``warn`` says
    which."""
    aspect = training_aspect((s for c in data for s in c.train), options.max_pixels)
    sized = options.sized(aspect_size(options.image_size[0], aspect, extractor.stride))
    extractor.resize(sized.image_size)
    warn(f"--keep-aspect: fitting at {extractor.image_size} px (the good images' median aspect {aspect:.3g})")
    return sized


def tile_canvas(
    options: FitOptions, extractor: FeatureExtractor, data: list[CategoryData], warn: Callable[[str], None]
) -> None:
    """``--tile``: the canvas (:func:`~reconad.features.tiles.canvas_hw`) of the median native size of every
    category's good training images times ``--scale`` set on ``extractor`` in place; ``warn`` says which."""
    native = training_size((s for c in data for s in c.train), options.max_pixels)
    extractor.resize(canvas_hw(native, options.tile, options.scale))
    tiles = extractor.tiles
    warn(
        f"--tile {tiles.size}: fitting on {len(tiles)} tiles ({len(tiles.rows)}×{len(tiles.cols)}, overlap "
        f"{tiles.overlap} px) of a {extractor.image_hw[1]}x{extractor.image_hw[0]} canvas (the good images' "
        f"median size {native[1]}x{native[0]} × {options.scale:g})"
    )


def fitted_features(
    options: FitOptions, extractor: FeatureExtractor, data: list[CategoryData], warn: Callable[[str], None]
) -> tuple[FitOptions, FeatureExtractor]:
    """The options and the extractor (``options``', resized in place) a fit on ``data`` runs with:
    ``--keep-aspect``'s size, ``--tile``'s canvas and, without ``--bit-depth``, the levels measured on the
    good images (``reconad fit`` and ``reconad bench`` alike); ``warn`` says the sizes chosen."""
    if options.keep_aspect:
        options = keep_aspect(options, extractor, data, warn)
    if options.tile is not None:
        tile_canvas(options, extractor, data, warn)
    if options.bit_depth is None:
        extractor = extractor.with_decoding(measured_decoding(data, options.max_pixels))
    return options, extractor


def fit_folder(
    model_name: str,
    params: Mapping[str, Any],
    sources: Sequence[str],
    categories: list[str] | None,
    out_dir: Path,
    options: FitOptions = DEFAULTS,
    *,
    resume: bool = False,
    force: bool = False,
    display: Callable[[bool], AbstractContextManager[Progress]] = lambda quiet: nullcontext(no_progress),
    warn: Callable[[str], None] = print,
) -> Run:
    """``reconad fit``: the model checked (once, before any work), the data loaded, fitted (as one process
    of a torchrun job where torchrun started it), saved to ``out_dir`` atomically by rank 0. A run already
    at ``out_dir`` is refused before any work unless ``force``.
    ``display(quiet)``: the progress display (quiet on every rank but 0)."""
    spec = ModelSpec.check(model_name, params)
    check_run_folder(out_dir, force)
    extractor = FeatureExtractor.from_options(options)
    spec.build(extractor, options.seed)  # values that clash with the features fail before the data
    data = load_sources(list(sources), categories, seed=options.seed)
    quiet = (distributed.launched() or (0,))[0] != 0  # every torchrun process measures; rank 0 says
    options, extractor = fitted_features(options, extractor, data, (lambda note: None) if quiet else warn)
    model = spec.build(extractor, options.seed)  # at the size the data gave
    ckpt = checkpoint_dir(out_dir)

    def resume_hint() -> str:
        whole = model.unified and ckpt.is_dir() and any(ckpt.glob("*-checkpoint.json"))
        return f"; the checkpoints in {ckpt} are whole: rerun the same command with --resume" if whole else ""

    with distributed.job(options.device, resume_hint) as world:
        device = distributed.device_for(world, options.device)
        if device != options.device:  # a CUDA job: each process takes its local GPU
            extractor = FeatureExtractor.from_options(options.on(device), extractor.decoding)
        main = world is None or world.main
        with display(not main) as progress:
            epochs = lambda epoch, total, loss: progress(  # noqa: E731
                "training", epoch, total, f"loss {loss:.4f}", "epochs"
            )
            training = Training(ckpt, resume, epochs, world) if model.unified else None
            run = fit(
                model,
                data,
                extractor,
                holdout=options.holdout,
                seed=options.seed,
                cache=feature_cache(options, extractor),
                progress=progress,
                training=training,
                false_reject=options.false_reject,
                warn=warn if main else lambda note: None,
                unified=options.unified,
                memory_budget=options.memory_budget,
            )
        if main:  # one writer: rank 0 (atomically, as ever)
            save_run(run, out_dir)
            shutil.rmtree(ckpt, ignore_errors=True)
    return run
