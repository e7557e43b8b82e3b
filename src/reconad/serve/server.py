"""Start uvicorn on a run for ``reconad serve``: check the settings, warn about exposure, hand the settings to
each worker through the environment (:func:`reconad.serve.app.app_from_env`)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path

from reconad.errors import ReconadError
from reconad.runs import load_run
from reconad.serve.app import ENV_KEY_VAR, ENV_MAX_UPLOAD, ENV_RUN, ENV_THREADS

FACTORY = "reconad.serve.app:app_from_env"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_settings(
    run_dir: Path, host: str, port: int, workers: int, max_upload_mb: float, api_key_env: str | None
) -> list[str]:
    """Raise :class:`ReconadError` on unusable settings (before uvicorn starts); return the warnings."""
    if workers < 1:
        raise ReconadError(f"--workers must be at least 1, got {workers}")
    if not 0 <= port <= 65535:
        raise ReconadError(f"--port must be between 0 and 65535, got {port}")
    if not max_upload_mb > 0:
        raise ReconadError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    if api_key_env is not None and not os.environ.get(api_key_env, "").strip():
        raise ReconadError(f"--api-key-env {api_key_env}: that environment variable is unset or empty")
    load_run(run_dir)  # a bad run fails here in one line, not in each worker
    if not is_loopback(host) and api_key_env is None:
        return [
            f"serving on {host} without --api-key-env: anyone who can reach this port can use the model; "
            "set an API key or bind to 127.0.0.1"
        ]
    return []


def serve(
    run_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_upload_mb: float = 20,
    api_key_env: str | None = None,
    warn: Callable[[str], None] = print,
) -> None:
    """Serve ``run_dir`` until interrupted; each of the ``workers`` processes loads the run once and gets an
    equal share of the cores for torch."""
    import uvicorn

    for warning in check_settings(run_dir, host, port, workers, max_upload_mb, api_key_env):
        warn(warning)
    os.environ[ENV_RUN] = str(Path(run_dir).resolve())
    os.environ[ENV_MAX_UPLOAD] = str(int(max_upload_mb * 2**20))
    os.environ.pop(ENV_KEY_VAR, None)
    if api_key_env:
        os.environ[ENV_KEY_VAR] = api_key_env
    if workers > 1:
        os.environ[ENV_THREADS] = str(max(1, (os.cpu_count() or 1) // workers))
    uvicorn.run(FACTORY, factory=True, host=host, port=port, workers=workers, log_level="info")
