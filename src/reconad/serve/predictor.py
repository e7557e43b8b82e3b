"""A fitted run loaded once, scoring uploaded image bytes exactly as ``reconad predict`` scores files."""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconad import __version__, pipeline
from reconad.data.imageio import decode_image
from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.report.overlay import overlay_png
from reconad.runs import load_run


class UnknownCategory(ReconadError):
    """A category the run has no model for."""


class CategoryNeeded(ReconadError):
    """The run has several categories and the request named none."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its client-side name and its bytes."""

    name: str
    data: bytes


def printable(name: str, limit: int = 200) -> str:
    """``name`` safe for a one-line message: control characters as ``?``, at most ``limit`` characters."""
    return "".join(c if c.isprintable() else "?" for c in name)[:limit] or "upload"


class Predictor:
    """A run folder loaded once (read only; nothing is written to it) with its feature extractor.

    ``predict`` may be called from several threads: decoding and PNG encoding run in the caller's thread,
    the backbone and model one batch at a time (torch already spreads one batch over every core).
    """

    def __init__(self, run_dir: Path, device: str = "cpu", batch_size: int = 16) -> None:
        self.run_dir = Path(run_dir)
        self.run = load_run(self.run_dir)
        self.extractor = FeatureExtractor.from_config(self.run.config["features"], device)
        self.batch_size = batch_size
        self._model_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: the model, its categories and thresholds, the image size, the
        version serving and the one that fitted, and when."""
        config = self.run.config
        return {
            "model": config["model"],
            "backbone": config["features"]["backbone"],
            "image_size": config["features"]["image_size"],
            "categories": list(self.run.categories),
            "thresholds": {name: c["threshold"] for name, c in self.run.categories.items()},
            "reconad_version": __version__,
            "fitted_with_version": config.get("reconad_version"),
            "fitted_at": config.get("created"),
        }

    def category(self, requested: str | None) -> str:
        """The category to score with: ``requested``, or the run's only one."""
        names = list(self.run.categories)
        if not requested:
            if len(names) > 1:
                raise CategoryNeeded(f"the run has several categories ({', '.join(names)}): send 'category'")
            return names[0]
        if requested not in self.run.categories:
            raise UnknownCategory(
                f"the run has no category {printable(requested)!r} (it has {', '.join(names)})"
            )
        return requested

    def predict(
        self, uploads: Sequence[Upload], category: str | None = None, with_maps: bool = False
    ) -> list[dict[str, Any]]:
        """Score ``uploads`` (all decoded first: one bad file fails the request before any scoring); each
        result is ``{name, category, score, threshold, is_anomalous}`` plus ``overlay_png`` (base64) when
        ``with_maps``."""
        if not uploads:
            raise ReconadError("no image: send one or more multipart fields named 'file'")
        category = self.category(category)
        images = [(printable(u.name), decode_image(u.data, printable(u.name))) for u in uploads]
        cat = self.run.categories[category]
        results = []
        for start in range(0, len(images), self.batch_size):
            with self._model_lock:
                batch = pipeline.score_decoded(
                    self.run, self.extractor, images[start : start + self.batch_size], category
                )
            for scored in batch:
                result = {
                    "name": scored.path,
                    "category": category,
                    "score": scored.score,
                    "threshold": cat["threshold"],
                    "is_anomalous": scored.is_anomalous,
                }
                if with_maps:
                    png = overlay_png(scored.image, scored.map, cat["threshold"], cat["normal_level"])
                    result["overlay_png"] = base64.b64encode(png).decode("ascii")
                results.append(result)
        return results
