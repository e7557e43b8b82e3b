"""``reconad serve --workers 2`` for real: a subprocess on a free loopback port whose two workers each load
the run, serve the same scores as one process and append whole rows to one ``--record``; SIGTERM (to the
server) or SIGINT (to its process group, as Ctrl-C sends it) stops every process cleanly; a worker that
cannot start stops the service with exit 2."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from reconad.serve.predictor import Predictor, Upload  # noqa: E402
from reconad.serve.workers import SUPERVISOR, WORKER_HEALTHCHECK_S  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts worker processes that import torch: 10 s and more
START_S = 300  # generous: a shared, busy machine takes minutes to start two workers
#: What the ``reconad`` console script is: a main program (with a file) that imports the CLI. Python's
#: ``spawn`` re-imports it in every worker, the cause of the workers that died at start-up.
CONSOLE_SCRIPT = "import sys\nfrom reconad.cli import run\nif __name__ == '__main__':\n    sys.exit(run())\n"


#: A worker app that ends with uvicorn's health-check ping unanswered: it keeps the GIL, so the thread that
#: answers pings cannot, from before the supervisor's next ping until it exits with the start-up failure code.
GIL_HOLDING_APP = """
import os, sys, time

def app():
    time.sleep(1)
    sys.setswitchinterval(100)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        pass
    os._exit(3)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(c) for task in tasks for c in (task / "children").read_text().split()]


def workers_of(pid: int) -> list[int]:
    return [c for c in children(pid) if b"multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_bytes()]


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return False


def wait_until_serving(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    server.kill()
    pytest.fail(f"reconad serve --workers 2 did not start (exit {server.poll()}):\n{log.read_text()}")


@pytest.mark.parametrize("stop", ["SIGTERM to the server", "SIGINT to its process group"])
def test_two_workers_serve_the_scores_of_one_and_stop_cleanly(
    fitted_run: Path, parts: Path, tmp_path: Path, stop: str
) -> None:
    script, log, port = tmp_path / "reconad", tmp_path / "serve.log", free_port()
    script.write_text(CONSOLE_SCRIPT)
    command = [sys.executable, str(script), "--quiet", "serve", str(fitted_run), "--port", str(port)]
    command += ["--record", str(tmp_path / "record.csv")]  # both workers append to it
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*command, "--workers", "2"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(server, url, log)
        workers = workers_of(server.pid)
        assert len(workers) == 2, log.read_text()
        files = sorted((parts / "test").rglob("*.png"))[:4]
        expected = Predictor(fitted_run).predict([Upload(p.name, p.read_bytes()) for p in files])
        for _ in range(2):  # a fresh connection each: the kernel hands them to either worker
            for path, want in zip(files, expected):
                response = httpx.post(f"{url}/v1/predict", files={"file": (path.name, path.read_bytes())})
                assert response.status_code == 200, response.text
                (got,) = response.json()["results"]
                assert got["name"] == want["name"] and got["is_anomalous"] == want["is_anomalous"]
                assert got["score"] == pytest.approx(want["score"], rel=1e-5)
        with open(tmp_path / "record.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert sorted(r["name"] for r in rows) == sorted(p.name for p in files * 2)
        assert all(len(r) == 8 and None not in r.values() for r in rows)
        if stop.startswith("SIGTERM"):
            server.send_signal(signal.SIGTERM)
        else:
            os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=120) == 0, log.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = log.read_text()
    assert not any(running(pid) for pid in workers), text
    assert text.count("Application startup complete") == 2, text
    assert "died" not in text and "Traceback" not in text, text
    assert text.count("Finished server process") == 2, text


def test_a_worker_that_cannot_start_stops_the_service_with_one_line(tmp_path: Path) -> None:
    """The supervisor ``reconad serve --workers 2`` execs, on a folder that is no run: no restart loop."""
    env = {**os.environ, "RECONAD_SERVE_RUN": str(tmp_path), "RECONAD_SERVE_MAX_UPLOAD_BYTES": "1000"}
    done = subprocess.run(
        [sys.executable, "-c", SUPERVISOR, "127.0.0.1", str(free_port()), "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_S,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors[-1].startswith("error: worker process ") and "could not start" in errors[-1], done.stderr
    assert all("not a reconad run" in line for line in errors[:-1]) and len(errors) <= 3, done.stderr
    assert "Traceback" not in done.stderr and "died" not in done.stderr


def test_a_worker_that_ends_with_a_ping_unanswered_stops_the_service_at_once(tmp_path: Path) -> None:
    """uvicorn's own supervisor waits out the whole health check for that ping; ours sees the worker end."""
    (tmp_path / "gil_holding.py").write_text(GIL_HOLDING_APP)
    program = "from reconad.serve.workers import run_workers as r; r('127.0.0.1', {}, 2, 'gil_holding:app')"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", program.format(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_HEALTHCHECK_S - 10,  # without the fix: the health check's full length, and more
    )
    assert done.returncode == 1 and "could not start" in done.stderr, done.stderr
