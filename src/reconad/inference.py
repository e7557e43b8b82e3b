"""Scoring new images with a fitted run: decode → features → model → maps → verdicts and overlays.

The one scoring loop of ``reconad predict`` (files, :func:`predict_folder`), ``reconad serve`` (uploads,
:func:`score_decoded` and :func:`overlays`) and ``reconad threshold --labelled`` (:func:`set_threshold`):
the same scores, verdicts and overlays for the same image.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reconad.atomic import atomic_file, check_writable
from reconad.data import resize_images
from reconad.data.imageio import collect_images, read_image
from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.image_runtime import AspectWatch, overlay_name, show_path
from reconad.operating import Labelled
from reconad.pipeline import accelerator, map_on_cores, score_features
from reconad.progress import Progress, no_progress
from reconad.report.overlay import overlay_png
from reconad.runs import Run, load_run, models_to
from reconad.scoring import anomaly_maps

#: Images decoded, featured and scored at once.
BATCH = 16


@dataclass
class Scored:
    """One image scored by :func:`score_images`."""

    path: str
    image: np.ndarray  # the original image, H×W×3 uint8
    map: np.ndarray  # anomaly map at the original size
    score: float
    is_anomalous: bool


def score_decoded(
    run: Run,
    extractor: FeatureExtractor,
    images: Sequence[tuple[str, np.ndarray]],
    category: str,
    aspect: AspectWatch | None = None,
) -> list[Scored]:
    """Score decoded ``(name, H×W×3 uint8 image)`` pairs in one backbone batch, maps at each image's size:
    the step :func:`score_images` runs on each batch it decodes (``reconad serve`` calls it on uploads).
    ``aspect`` sees each image's size (it says once when one strays from the run's aspect)."""
    if not images:
        return []
    size, threshold = extractor.image_hw, run.categories[category]["threshold"]
    for name, image in images if aspect else ():
        aspect(name, image.shape[:2])
    feats = extractor(torch.from_numpy(resize_images([x for _, x in images], size)))
    maps, scores = score_features(
        run.model_for(category), feats, size, run.config["scoring"], [category] * len(images), extractor.tiles
    )
    scored = []
    for (name, image), m, s in zip(images, maps, scores):
        full = anomaly_maps(m[None], image.shape[:2], 0)[0] if image.shape[:2] != size else m
        scored.append(Scored(name, image, full.numpy(), float(s), bool(s > threshold)))
    return scored


def score_images(
    run: Run,
    extractor: FeatureExtractor,
    paths: Sequence[Any],
    category: str,
    *,
    batch_size: int = BATCH,
    on_error: Callable[[str, str], None] | None = None,
    progress: Progress = no_progress,
    aspect: AspectWatch | None = None,
) -> Iterator[Scored]:
    """Score image files one batch at a time; unreadable files go to ``on_error(path, message)``, called in
    input order between the images yielded (just before the next readable file's result); ``aspect``: as
    :func:`score_decoded`'s."""
    models_to(run.models, accelerator(extractor))  # beside the backbone (a GPU); on the CPU nothing moves

    def load(path: Any) -> np.ndarray | str:
        try:
            return read_image(path, extractor.decoding)
        except ReconadError as err:
            return str(err)

    done = 0
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        loaded = map_on_cores(load, chunk)
        readable = [(str(p), x) for p, x in zip(chunk, loaded) if not isinstance(x, str)]
        scored = iter(score_decoded(run, extractor, readable, category, aspect))
        for p, x in zip(chunk, loaded):
            if not isinstance(x, str):
                yield next(scored)
            elif on_error:
                on_error(str(p), x)
        done += len(chunk)
        progress("predict", done, len(paths))


def overlays(run: Run, category: str, scored: Sequence[Scored]) -> list[bytes]:
    """The heat-map overlay PNG of each scored image (the category's threshold at mid-scale), encoded on
    every core (call it between backbone batches)."""
    cat = run.categories[category]
    return map_on_cores(lambda s: overlay_png(s.image, s.map, cat["threshold"], cat["normal_level"]), scored)


@dataclass
class PredictSummary:
    """What :func:`predict_folder` did."""

    category: str
    n_inputs: int
    n_scored: int = 0
    n_anomalous: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, message) of unreadable files


def predict_folder(
    run_dir: Path,
    inputs: Sequence[Path],
    category: str | None,
    out_dir: Path,
    device: str = "cpu",
    progress: Progress = no_progress,
    force: bool = False,
    warn: Callable[[str], None] = print,
) -> tuple[Run, PredictSummary]:
    """``reconad predict``: the images ``inputs`` name (files, folders scanned) scored with the run at
    ``run_dir`` (``category``, or its only one) into ``out_dir``: an overlay per image and ``scores.csv``
    (path, score, is_anomalous, overlay, error), a row per image in input order (an unreadable one: its
    error, no score). Rows are written as they come (nothing per image is kept in memory); the file appears
    under its name only once every image is scored. A ``scores.csv`` already there is refused before any
    work unless ``force``. ``warn`` gets one note if some image's aspect strays from the run's
    (:class:`~reconad.image_runtime.AspectWatch`)."""
    check_writable(out_dir, folder=True)
    table = out_dir / "scores.csv"
    if table.exists() and not force:
        raise ReconadError(f"{show_path(table)} exists: pass --force to replace it, or choose another --out")
    run = load_run(run_dir)
    category = run.category(category)
    paths = collect_images(inputs)
    extractor = FeatureExtractor.from_config(run.config["features"], device)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, taken, batch = PredictSummary(category, len(paths)), set[str](), list[Scored | tuple[str, str]]()

    def write_batch(rows: Any) -> None:  # overlays encode on every core, between backbone forwards
        pngs = iter(overlays(run, category, [s for s in batch if isinstance(s, Scored)]))
        for scored in batch:
            if not isinstance(scored, Scored):  # an unreadable file: its row says why
                rows.writerow((scored[0], "", "", "", scored[1]))
                continue
            name = overlay_name(Path(scored.path), taken)
            with atomic_file(out_dir / name, "wb") as f:
                f.write(next(pngs))
            rows.writerow((scored.path, f"{scored.score:.6g}", int(scored.is_anomalous), name, ""))
            summary.n_scored += 1
            summary.n_anomalous += int(scored.is_anomalous)
        batch.clear()

    def on_error(path: str, message: str) -> None:
        summary.failures.append((path, message))
        batch.append((path, message))

    start = time.perf_counter()
    csv_args = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}
    with atomic_file(table, "w", **csv_args) as f:
        rows = csv.writer(f)
        rows.writerow(["path", "score", "is_anomalous", "overlay", "error"])
        aspect = AspectWatch(extractor.image_hw, warn)
        scoring = score_images(
            run, extractor, paths, category, on_error=on_error, progress=progress, aspect=aspect
        )
        for scored in scoring:
            batch.append(scored)
            if len(batch) >= BATCH:  # a batch scored: its overlays encode before the next forward
                write_batch(rows)
        write_batch(rows)
    summary.seconds = time.perf_counter() - start
    return run, summary


@dataclass(frozen=True)
class LabelledFolder:
    """Scores a labelled folder (``good/`` and ``defective/``, images at any depth) with a run folder's
    category: the :data:`~reconad.operating.LabelledScorer` of ``reconad threshold --labelled``."""

    folder: Path
    device: str = "cpu"
    progress: Progress = no_progress

    def __call__(self, run_dir: Path, category: str) -> Labelled:
        good, bad = _labelled_images(self.folder)
        run = load_run(run_dir)
        extractor = FeatureExtractor.from_config(run.config["features"], self.device)
        scored = score_images(run, extractor, good + bad, category, on_error=_refuse, progress=self.progress)
        scores = np.array([s.score for s in scored])
        source = f"labelled folder {self.folder} ({len(good)} good, {len(bad)} defective)"
        return Labelled(scores[: len(good)], scores[len(good) :], source)


def _refuse(path: str, message: str) -> None:
    raise ReconadError(message)


def _labelled_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images of ``folder/good`` and ``folder/defective`` (the latter may be absent)."""
    good_dir, bad_dir = Path(folder) / "good", Path(folder) / "defective"
    if not good_dir.is_dir():
        raise ReconadError(f"{folder} has no good/ folder: a labelled folder holds good/ and defective/")
    good = collect_images([good_dir])
    return good, (collect_images([bad_dir]) if bad_dir.is_dir() and any(bad_dir.iterdir()) else [])
