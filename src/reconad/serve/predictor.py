"""A fitted run loaded once, scoring uploaded image bytes exactly as ``reconad predict`` scores files."""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconad import __version__
from reconad.data.imageio import decode_bytes
from reconad.errors import ReconadError
from reconad.features.extractor import FeatureExtractor
from reconad.image_runtime import AspectWatch
from reconad.inference import overlays, score_decoded
from reconad.runfolder import RUN_FILE, printable
from reconad.runs import load_run

#: A score within this fraction of the threshold (above or below) is *borderline*: the verdict stands, but it
#: is a close call worth a second look. Declared once: each result carries ``borderline``, ``GET /v1/model``
#: the margin.
BORDERLINE_MARGIN = 0.10


def is_borderline(score: float, threshold: float) -> bool:
    """``score`` within :data:`BORDERLINE_MARGIN` of ``threshold`` (relative to the threshold's size)."""
    return abs(score - threshold) <= BORDERLINE_MARGIN * abs(threshold)


def run_id(run_json: bytes, created: str | None) -> str:
    """What identifies the run a decision was made with: the time it was fitted (UTC, ``YYYYMMDDTHHMMSSZ``)
    and the first 8 hex digits of ``sha256(run.json)`` (``sha256sum RUN/run.json`` shows them), so a new fit
    or a changed threshold gives a new id. Just the digest where ``created`` is missing."""
    digest = hashlib.sha256(run_json).hexdigest()[:8]
    stamp = "".join(c for c in (created or "")[:19] if c.isdigit() or c == "T")
    return f"{stamp}Z-{digest}" if len(stamp) == 15 else digest


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its client-side name and its bytes."""

    name: str
    data: bytes


def note(message: str) -> None:
    """A note on the server's stderr (its log), one line."""
    print(f"note: {message}", file=sys.stderr, flush=True)


class Predictor:
    """A run folder loaded once (read only; nothing is written to it) with its feature extractor.

    ``predict`` may be called from several threads: decoding and PNG encoding run in the caller's thread,
    the backbone and model one batch at a time (torch already spreads one batch over every core).
    """

    def __init__(
        self, run_dir: Path, device: str = "cpu", batch_size: int = 16, warn: Callable[[str], None] = note
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run = load_run(self.run_dir)
        self.run_id = run_id((self.run_dir / RUN_FILE).read_bytes(), self.run.config.get("created"))
        self.extractor = FeatureExtractor.from_config(self.run.config["features"], device)
        self.batch_size = batch_size
        self._model_lock = threading.Lock()
        self.aspect = AspectWatch(self.extractor.image_hw, warn)  # says once per process

    def info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers: the model, its categories and thresholds, the image size, the
        version serving and the one that fitted, and when, the run id and the borderline margin."""
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
            "run_id": self.run_id,
            "borderline_margin": BORDERLINE_MARGIN,
        }

    def check(self, upload: Upload, category: str | None = None) -> str:
        """The category ``upload`` is for, picked as :meth:`predict` picks it, once its bytes decode with
        predict's checks (failing as predict fails: unknown category, not an image, too large...)."""
        category = self.run.category(category, ask="send 'category'")
        decode_bytes(upload.data, printable(upload.name), self.extractor.decoding)
        return category

    def predict(
        self, uploads: Sequence[Upload], category: str | None = None, with_maps: bool = False
    ) -> list[dict[str, Any]]:
        """Score ``uploads`` (all decoded first: one bad file fails the request before any scoring); each
        result is ``{name, category, score, threshold, is_anomalous, borderline}`` plus ``overlay_png``
        (base64) when ``with_maps``."""
        if not uploads:
            raise ReconadError("no image: send one or more multipart fields named 'file'")
        category = self.run.category(category, ask="send 'category'")
        decoding = self.extractor.decoding
        images = [(printable(u.name), decode_bytes(u.data, printable(u.name), decoding)) for u in uploads]
        threshold = self.run.categories[category]["threshold"]
        results = []
        for start in range(0, len(images), self.batch_size):
            with self._model_lock:
                batch = score_decoded(
                    self.run, self.extractor, images[start : start + self.batch_size], category, self.aspect
                )
            pngs = overlays(self.run, category, batch) if with_maps else [None] * len(batch)
            for scored, png in zip(batch, pngs):
                result = {
                    "name": scored.path,
                    "category": category,
                    "score": scored.score,
                    "threshold": threshold,
                    "is_anomalous": scored.is_anomalous,
                    "borderline": is_borderline(scored.score, threshold),
                }
                if png is not None:
                    result["overlay_png"] = base64.b64encode(png).decode("ascii")
                results.append(result)
        return results
