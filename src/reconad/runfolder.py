"""A run folder's ``run.json``, read and written without torch: what ``reconad threshold`` needs.

The weights beside it are saved and loaded by :mod:`reconad.runs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconad.atomic import atomic_file
from reconad.errors import ReconadError

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
UNIFIED = "unified"  # the key of the single model of a unified run


class UnknownCategory(ReconadError):
    """A category the run has no model for."""


def printable(name: str, limit: int = 200) -> str:
    """``name`` safe for a one-line message: control characters as ``?``, at most ``limit`` characters."""
    return "".join(c if c.isprintable() else "?" for c in name)[:limit] or "upload"


def choose_category(config: dict[str, Any], requested: str | None, ask: str = "pass --category") -> str:
    """The category to score with: ``requested``, or the run's only one; a one-line error saying to ``ask``
    for one where the run has several, :class:`UnknownCategory` for one it does not have."""
    names = list(config["categories"])
    if not requested:
        if len(names) > 1:
            raise ReconadError(f"the run has several categories ({', '.join(names)}): {ask}")
        return names[0]
    if requested not in names:
        raise UnknownCategory(f"the run has no category {printable(requested)!r} (it has {', '.join(names)})")
    return requested


def checkpoint_dir(run_dir: Path) -> Path:
    """Where unified models keep per-epoch checkpoints until the run is saved."""
    return run_dir.with_name(f".{run_dir.name}.checkpoints")


def check_run_folder(path: Path, force: bool = False) -> None:
    """Fail before any work when ``path`` exists (a fit would replace it): always where it is not a run
    folder, and where it is one unless ``force``."""
    if path.exists() and not (path / RUN_FILE).is_file():
        raise ReconadError(f"{path} exists and is not a reconad run: choose another --out")
    if path.exists() and not force:
        raise ReconadError(
            f"{path} already holds a reconad run: pass --force to replace it, or choose another --out"
        )


def weights_file(key: str) -> str:
    """File name of a model's weights inside the run folder (category names made path-safe)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    return f"weights/{safe}.safetensors"


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Replace a run's ``run.json`` atomically (its weights untouched): a new threshold, say."""
    read_config(path)  # a run folder, of a schema this version reads
    with atomic_file(Path(path) / RUN_FILE) as f:
        json.dump(config, f, indent=2)


def read_config(path: Path) -> dict[str, Any]:
    """``run.json`` of a run folder, with its schema version checked."""
    file = Path(path) / RUN_FILE
    if not file.is_file():
        raise ReconadError(f"{path} is not a reconad run (no {RUN_FILE})")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReconadError(f"{file} is not valid JSON: {err}") from err
    version = config.get("schema_version") if isinstance(config, dict) else None
    if not isinstance(version, int):
        raise ReconadError(f"{file} has no schema_version: not a reconad run")
    if version > SCHEMA_VERSION:
        raise ReconadError(
            f"{path} was written by a newer reconad (run schema {version}; this one reads up to "
            f"{SCHEMA_VERSION}): upgrade reconad"
        )
    return config
