"""Start uvicorn on a run for ``reconad serve``: check the settings and load the run (a bad one fails here, in
one line), warn about exposure, then serve in this process or, with several workers, hand over to
:mod:`reconad.serve.workers`."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from pathlib import Path

from reconad.errors import ReconadError
from reconad.serve.app import create_app
from reconad.serve.line import Record, check_feedback_dir
from reconad.serve.predictor import Predictor
from reconad.serve.workers import (
    ENV_FEEDBACK,
    ENV_KEY_VAR,
    ENV_MAX_UPLOAD,
    ENV_RECORD,
    ENV_RUN,
    ENV_THREADS,
    SUPERVISOR,
)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine reaches (127.0.0.0/8, ::1, ``localhost``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_settings(
    host: str, port: int, workers: int, max_upload_mb: float, api_key_env: str | None
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
    record: Path | None = None,
    feedback_dir: Path | None = None,
    warn: Callable[[str], None] = print,
) -> None:
    """Serve ``run_dir`` until SIGINT or SIGTERM. One worker serves in this process; several replace this
    process by their supervisor (:mod:`reconad.serve.workers`), each worker loading the run once and getting
    an equal share of the cores for torch. Raise :class:`ReconadError` if the run does not load (checked
    here, before any worker starts) or the server cannot start. ``record`` (a CSV file appended to) and
    ``feedback_dir`` are checked and created here too: :mod:`reconad.serve.line`."""
    import uvicorn

    for warning in check_settings(host, port, workers, max_upload_mb, api_key_env):
        warn(warning)
    if record:
        Record(record).prepare()  # the header, written once before any worker starts
    if feedback_dir:
        check_feedback_dir(feedback_dir)
    predictor = Predictor(run_dir)  # the run and its backbone: the check before any worker starts
    max_upload_bytes = int(max_upload_mb * 2**20)
    if workers > 1:  # exec: this process and its memory become the supervisor; each worker loads its own
        os.environ[ENV_RUN] = str(Path(run_dir).resolve())
        os.environ[ENV_MAX_UPLOAD] = str(max_upload_bytes)
        os.environ.pop(ENV_KEY_VAR, None)
        if api_key_env:
            os.environ[ENV_KEY_VAR] = api_key_env
        os.environ[ENV_THREADS] = str(max(1, (os.cpu_count() or 1) // workers))
        for var, path in ((ENV_RECORD, record), (ENV_FEEDBACK, feedback_dir)):
            os.environ[var] = str(Path(path).resolve()) if path else ""
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-c", SUPERVISOR, host, str(port), str(workers)])
    api_key = os.environ[api_key_env] if api_key_env else None
    app = create_app(
        predictor,
        max_upload_bytes=max_upload_bytes,
        api_key=api_key,
        record=record,
        feedback_dir=feedback_dir,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    except SystemExit as stop:  # uvicorn's start-up failure (an address in use): it has logged why
        if stop.code in (0, None):
            raise
        raise ReconadError(f"the server could not start on {host}:{port} (uvicorn's error above)") from None
