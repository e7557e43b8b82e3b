"""Load on ``reconad serve`` over loopback, against ``reconad predict`` on the same images.

    python benchmarks/serve_load.py RUN IMAGES [--clients 8] [--requests 250] [--workers 1] [--map]
        [--max-seconds 900] [--json FILE]

Starts ``reconad serve RUN`` on a free 127.0.0.1 port, then ``--clients`` threads each send ``--requests``
``POST /v1/predict`` of one image (cycling through IMAGES, a folder or files), one after another on a
kept-alive connection. Reports images/s, p50/p99 latency, errors, and the server's resident memory (its
process tree) after 200 and after 2,000 requests; then times ``reconad predict RUN IMAGES`` (its own "in X s",
start-up excluded). Bounded: at most clients × requests requests and ``--max-seconds``; loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from reconad.data.imageio import IMAGE_SUFFIXES

CLI = [sys.executable, "-c", "from reconad.cli import run; run()", "--quiet"]
MEMORY_AT = (200, 2000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants (uvicorn's workers), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


def image_files(inputs: list[Path]) -> list[Path]:
    files = []
    for item in inputs:
        files += (
            sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if item.is_dir()
            else [item]
        )
    if not files:
        raise SystemExit(f"no images in {', '.join(map(str, inputs))}")
    return files


def start_server(run: Path, port: int, workers: int, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [*CLI, "serve", str(run), "--port", str(port), "--workers", str(workers)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return server
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"reconad serve did not start:\n{log.read_text(errors='replace')}")


def load(args: argparse.Namespace, url: str, server_pid: int, images: list[tuple[str, bytes]]) -> dict:
    """Run the clients; latencies in seconds, errors as messages, memory after MEMORY_AT requests."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    memory: dict[int, int] = {}
    done = [0]
    deadline = time.monotonic() + args.max_seconds
    params = {"map": "png"} if args.map else {}

    def client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for i in range(args.requests):
                if time.monotonic() > deadline:
                    return
                name, data = images[(index * args.requests + i) % len(images)]
                start = time.perf_counter()
                try:
                    response = http.post("/v1/predict", files={"file": (name, data)}, params=params)
                    ok = response.status_code == 200 and len(response.json()["results"]) == 1
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as err:
                    problem = f"{type(err).__name__}: {err}"
                seconds = time.perf_counter() - start
                with lock:
                    latencies.append(seconds)
                    if problem:
                        errors.append(problem)
                    done[0] += 1
                    if done[0] in MEMORY_AT:
                        memory[done[0]] = tree_rss_bytes(server_pid)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    result = {
        "requests": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(wall, 1),
        "images_per_second": round((len(latencies) - len(errors)) / wall, 2),
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 1),
        "latency_ms_p99": round(float(np.percentile(ms, 99)), 1),
        "rss_mb": {str(k): round(v / 2**20) for k, v in sorted(memory.items())},
    }
    if len(memory) == 2:
        first, last = (memory[k] for k in MEMORY_AT)
        result["rss_growth_200_to_2000"] = round(last / first - 1, 4)
    return result


def predict_speed(run: Path, inputs: list[Path]) -> dict:
    """``reconad predict`` on the same images: its own seconds (scoring and writing) and the process's."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run(
            [*CLI, "predict", str(run), *map(str, inputs), "--out", out], capture_output=True, text=True
        )
        wall = time.perf_counter() - start
    found = re.search(r"scored (\d+) images .* in ([\d.]+) s", " ".join(done.stdout.split()))
    if done.returncode != 0 or not found:
        return {"error": (done.stderr or done.stdout).strip()[-500:]}
    n, seconds = int(found.group(1)), float(found.group(2))
    return {"images": n, "images_per_second": round(n / seconds, 2), "process_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=250, help="per client")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--map", action="store_true", help="ask for each overlay (?map=png)")
    parser.add_argument("--max-seconds", type=float, default=900, help="stop sending after this long")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    files = image_files(args.images)
    images = [(p.name, p.read_bytes()) for p in files]
    port, load_before = free_port(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(args.run, port, args.workers, Path(tmp) / "serve.log")
        try:
            served = load(args, f"http://127.0.0.1:{port}", server.pid, images)
        finally:
            server.terminate()
            server.wait(timeout=60)
    result = {
        "run": str(args.run),
        "images": len(files),
        "clients": args.clients,
        "requests_per_client": args.requests,
        "workers": args.workers,
        "map": args.map,
        "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after_serve": os.getloadavg()[0]},
        "serve": served,
        "predict": predict_speed(args.run, args.images),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
