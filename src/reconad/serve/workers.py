"""``reconad serve --workers N`` (N > 1): uvicorn's supervisor and its N worker processes.

The CLI checks the run, writes the settings into the environment and replaces itself (``exec``) by
:func:`main`, a fresh interpreter started with ``-c``. Two things follow. Each worker, which Python's
``spawn`` starts by re-importing the parent's main program, imports nothing before it answers uvicorn's
health check: spawned from the ``reconad`` script it first re-imported the whole CLI (torch and all, 5 s and
more), and uvicorn, which kills a worker that has not answered within 5 s, killed and replaced every worker
before it served. And the supervisor holds neither torch nor the run: only the workers do.
"""

from __future__ import annotations

import sys

from uvicorn.supervisors import Multiprocess

from reconad.errors import ReconadError

#: How ``reconad serve`` hands its settings to the app factory in each worker.
ENV_RUN = "RECONAD_SERVE_RUN"
ENV_MAX_UPLOAD = "RECONAD_SERVE_MAX_UPLOAD_BYTES"
ENV_KEY_VAR = "RECONAD_SERVE_API_KEY_ENV"
ENV_THREADS = "RECONAD_SERVE_TORCH_THREADS"
ENV_RECORD = "RECONAD_SERVE_RECORD"
ENV_FEEDBACK = "RECONAD_SERVE_FEEDBACK_DIR"

FACTORY = "reconad.serve.app:app_from_env"
#: What the CLI execs: ``python -c SUPERVISOR HOST PORT WORKERS``.
SUPERVISOR = "from reconad.serve.workers import main; main()"
#: Seconds a worker may go without answering uvicorn's health check before it is killed and replaced. A
#: worker answers from its first second, on another thread, while it loads the run; a generous bound keeps a
#: heavily loaded machine from losing a worker that is merely slow.
WORKER_HEALTHCHECK_S = 60


class Supervisor(Multiprocess):
    """uvicorn's supervisor, except that it hears at once when a worker ends. uvicorn keeps its own copy of
    each worker's end of the health-check pipe, so a ping that reached a worker in its last moments (one that
    fails at start-up, or stops on Ctrl-C) was never answered nor seen to close: the supervisor waited out the
    whole :data:`WORKER_HEALTHCHECK_S`. With that copy closed once the worker has started, the ping sees the
    pipe close when the worker ends."""

    def keep_subprocess_alive(self) -> None:
        for process in self.processes:  # each is started; closing twice is a no-op
            process.child_conn.close()
        super().keep_subprocess_alive()


def run_workers(host: str, port: int, workers: int, factory: str = FACTORY) -> None:
    """Serve with ``workers`` processes under uvicorn's supervisor until SIGINT or SIGTERM. Raise
    :class:`ReconadError` if the socket cannot be bound or a worker cannot start (uvicorn stops, rather than
    restarts, a worker that exits with its start-up failure code, as ``app_from_env`` does then). ``factory``
    is the ``module:function`` each worker calls for its app."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    config = uvicorn.Config(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
    try:
        sockets = [config.bind_socket()]
    except SystemExit:  # uvicorn has logged why (an address in use)
        raise ReconadError(f"cannot listen on {host}:{port} (uvicorn's error is above)") from None
    supervisor = Supervisor(config, sockets=sockets)
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise ReconadError(f"worker process {failed[0]} could not start (its error is above); stopped")


def main() -> None:
    """The supervisor's program: ``HOST PORT WORKERS`` from ``sys.argv``; a failure is one line, exit 2."""
    host, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        run_workers(host, port, workers)
    except ReconadError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
