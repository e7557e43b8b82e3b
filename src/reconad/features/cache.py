"""On-disk cache of patch features, keyed by the extractor's config and each image file's content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from reconad.atomic import atomic_path


def default_cache_dir() -> Path:
    """``$RECONAD_CACHE``, else ``$XDG_CACHE_HOME/reconad``, else ``~/.cache/reconad``."""
    if os.environ.get("RECONAD_CACHE"):
        return Path(os.environ["RECONAD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reconad"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (the image's identity, whatever its name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FeatureCache:
    """One small safetensors file per (extractor key, image content). Writes are atomic (temp + rename)."""

    def __init__(self, extractor_key: str, root: Path | None = None) -> None:
        self.dir = (root or default_cache_dir()) / "features" / extractor_key

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.safetensors"

    def get(self, digest: str) -> Tensor | None:
        path = self._path(digest)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except Exception:  # a damaged entry is recomputed, never trusted
            return None

    def put(self, digest: str, features: Tensor) -> None:
        try:
            with atomic_path(self._path(digest)) as tmp:
                save_file({"features": features.contiguous().clone()}, str(tmp))
        except OSError:  # a read-only or full cache costs speed, not correctness
            pass
