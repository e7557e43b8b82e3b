"""``reconad serve``'s app through FastAPI's test client: every endpoint, every bad upload answered with its
status and a one-line JSON error (and the next good request still served), the API key, and the same scores
and overlays as ``reconad predict``."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_error, bomb_png, invoke, noise
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")  # python-multipart: FastAPI's form parser
from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from reconad.serve.app import create_app  # noqa: E402
from reconad.serve.line import COLUMNS, Record  # noqa: E402
from reconad.serve.predictor import BORDERLINE_MARGIN, Predictor, Upload, is_borderline  # noqa: E402

MAX_UPLOAD = 1 << 20  # 1 MB: small enough to exceed in a test
KEY = "s3cret-key"


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def predictor(fitted_run: Path) -> Predictor:
    return Predictor(fitted_run)


@pytest.fixture(scope="module")
def client(predictor: Predictor) -> TestClient:
    return TestClient(create_app(predictor, max_upload_bytes=MAX_UPLOAD), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def good_png(parts: Path) -> bytes:
    return (parts / "test" / "good" / "000.png").read_bytes()


def post(client: TestClient, *files: tuple[str, bytes], **kwargs):
    return client.post(
        "/v1/predict", files=[("file", (name, data, "image/png")) for name, data in files], **kwargs
    )


def assert_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"]
    message = body["error"]
    assert message and "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message, (word, message)
    return message


def assert_serves(client: TestClient, good_png: bytes, **kwargs) -> None:
    response = post(client, ("ok.png", good_png), **kwargs)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["name"] == "ok.png"


# --- endpoints ----------------------------------------------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_model(client: TestClient, fitted_run: Path) -> None:
    config = json.loads((fitted_run / "run.json").read_text())
    info = client.get("/v1/model").json()
    assert info["model"] == "patchcore"
    assert info["categories"] == list(config["categories"])
    assert info["thresholds"] == {name: c["threshold"] for name, c in config["categories"].items()}
    assert info["image_size"] == config["features"]["image_size"]
    assert info["fitted_at"] == config["created"]
    assert info["reconad_version"] and info["fitted_with_version"] == config["reconad_version"]
    digest = hashlib.sha256((fitted_run / "run.json").read_bytes()).hexdigest()[:8]
    stamp = datetime.fromisoformat(config["created"]).strftime("%Y%m%dT%H%M%SZ")
    assert info["run_id"] == f"{stamp}-{digest}"
    assert info["borderline_margin"] == BORDERLINE_MARGIN
    assert info["record"] is False and info["feedback"] is False


def test_predict_one_and_several(client: TestClient, parts: Path) -> None:
    good, bad = parts / "test" / "good" / "000.png", next((parts / "test" / "blob").glob("*.png"))
    response = post(client, ("good.png", good.read_bytes()), ("bad.png", bad.read_bytes()))
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["name"] for r in results] == ["good.png", "bad.png"]
    for r in results:
        assert set(r) == {"name", "category", "score", "threshold", "is_anomalous", "borderline"}  # no map
        assert r["category"] == "synthetic_part" and r["is_anomalous"] == (r["score"] > r["threshold"])
        assert r["borderline"] == (abs(r["score"] - r["threshold"]) <= BORDERLINE_MARGIN * r["threshold"])
    assert results[1]["score"] > results[0]["score"]


def test_predict_map_is_an_overlay_png_at_the_upload_size(client: TestClient) -> None:
    response = post(client, ("wide.png", png_bytes(noise(40, 90))), params={"map": "png"})
    assert response.status_code == 200, response.text
    overlay = Image.open(io.BytesIO(base64.b64decode(response.json()["results"][0]["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (90, 40) and overlay.mode == "RGB"


def test_page_and_its_assets_are_local(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text
    assert "http://" not in page.text and "https://" not in page.text


def test_unknown_path_is_a_json_404(client: TestClient) -> None:
    assert_error(client.get("/v1/nope"), 404)


# --- bad requests: status, one line, and the service keeps serving ------------------------------------------

TRUNCATED = png_bytes(noise(64, 64))[:300]


@pytest.mark.parametrize(
    "name, data, status, words",
    [
        ("empty.png", b"", 400, ["empty.png", "empty"]),
        ("cut.png", TRUNCATED, 400, ["cut.png", "truncated"]),
        ("notes.png", b"hello, I am a text file and not a picture\n", 415, ["notes.png", "not a recognised"]),
        ("bomb.png", None, 413, ["bomb.png", "decompression bomb"]),
        ("big.png", b"\0" * (MAX_UPLOAD + 1), 413, ["upload too large", "MB"]),
    ],
    ids=["zero_bytes", "truncated_png", "text_as_png", "bomb_20000x20000", "over_the_size_limit"],
)
def test_bad_upload(
    client: TestClient, good_png: bytes, name: str, data: bytes | None, status, words
) -> None:
    assert_error(post(client, (name, bomb_png(20_000) if data is None else data)), status, *words)
    assert_serves(client, good_png)


def test_one_bad_file_fails_the_whole_request(client: TestClient, good_png: bytes) -> None:
    assert_error(post(client, ("ok.png", good_png), ("cut.png", TRUNCATED)), 400, "cut.png")
    assert_serves(client, good_png)


def test_size_limit_holds_without_a_content_length(client: TestClient, good_png: bytes) -> None:
    def chunks():  # a chunked body: no Content-Length to check, the bytes are counted as they come
        for _ in range(3):
            yield b"x" * (MAX_UPLOAD // 2)

    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    assert_error(client.post("/v1/predict", content=chunks(), headers=headers), 413, "upload too large")
    assert_serves(client, good_png)


@pytest.mark.parametrize(
    "data, params, status, words",
    [
        ({"category": "nope"}, {}, 404, ["no category 'nope'", "synthetic_part"]),
        ({}, {"map": "jpeg"}, 400, ["map"]),
    ],
    ids=["unknown_category", "unknown_map_format"],
)
def test_bad_fields(client: TestClient, good_png: bytes, data, params, status, words) -> None:
    assert_error(post(client, ("ok.png", good_png), data=data, params=params), status, *words)
    assert_serves(client, good_png)


def test_no_file(client: TestClient, good_png: bytes) -> None:
    assert_error(client.post("/v1/predict", data={"category": "synthetic_part"}), 400, "file")
    assert_serves(client, good_png)


# --- several categories -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_category_client(fitted_run: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The fitted run with a second category that reuses the first one's model."""
    run = tmp_path_factory.mktemp("two") / "run"
    shutil.copytree(fitted_run, run)
    config = json.loads((run / "run.json").read_text())
    config["categories"]["other"] = config["categories"]["synthetic_part"]
    config["weights"]["other"] = config["weights"]["synthetic_part"]
    (run / "run.json").write_text(json.dumps(config))
    return TestClient(create_app(Predictor(run)), raise_server_exceptions=False)


def test_category_required_when_the_run_has_several(two_category_client: TestClient, good_png: bytes) -> None:
    assert_error(post(two_category_client, ("ok.png", good_png)), 400, "several categories", "other")
    response = post(two_category_client, ("ok.png", good_png), data={"category": "other"})
    assert response.status_code == 200 and response.json()["results"][0]["category"] == "other"


# --- API key ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_client(predictor: Predictor) -> TestClient:
    return TestClient(create_app(predictor, api_key=KEY), raise_server_exceptions=False)


@pytest.mark.parametrize(
    "headers, words",
    [
        ({}, ["missing API key"]),
        ({"Authorization": "Bearer wrong"}, ["wrong API key"]),
        ({"Authorization": f"Basic {KEY}"}, ["missing API key"]),
    ],
    ids=["missing", "wrong", "not_bearer"],
)
def test_api_key_refused(keyed_client: TestClient, good_png: bytes, headers, words) -> None:
    for response in (
        post(keyed_client, ("ok.png", good_png), headers=headers),
        keyed_client.get("/v1/model"),
    ):
        if response.request.headers.get("authorization") == headers.get("Authorization"):
            assert_error(response, 401, *words)
            assert response.headers["www-authenticate"] == "Bearer"
    assert_serves(keyed_client, good_png, headers={"Authorization": f"Bearer {KEY}"})


def test_api_key_leaves_the_page_and_health_open(keyed_client: TestClient) -> None:
    assert keyed_client.get("/healthz").status_code == 200
    assert keyed_client.get("/").status_code == 200
    assert keyed_client.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


# --- on the line: the record of every decision, and feedback -----------------------------------------------

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def line(predictor: Predictor, tmp_path: Path) -> tuple[TestClient, Path, Path]:
    """A keyed client of an app that records to ``record.csv`` and keeps feedback under ``feedback/``."""
    record, feedback = tmp_path / "record.csv", tmp_path / "feedback"
    Record(record).prepare()
    app = create_app(predictor, api_key=KEY, record=record, feedback_dir=feedback)
    return TestClient(app, raise_server_exceptions=False, headers=AUTH), record, feedback


def read_record(path: Path) -> list[dict[str, str]]:
    text = path.read_text()
    assert text.endswith("\n") and text.startswith(",".join(COLUMNS) + "\n")
    return list(csv.DictReader(io.StringIO(text)))


def send_feedback(client: TestClient, name: str, data: bytes, headers=None, **fields: str):
    files = {"file": (name, data, "image/png")}
    return client.post("/v1/feedback", files=files, data=fields, headers=headers)


def test_record_has_a_row_per_image_checked(line, predictor: Predictor, parts: Path) -> None:
    client, record, _ = line
    good, bad = parts / "test" / "good" / "000.png", next((parts / "test" / "blob").glob("*.png"))
    first = post(client, ("good.png", good.read_bytes()), ("bad.png", bad.read_bytes()))
    second = post(client, ("again.png", good.read_bytes()))
    assert first.status_code == second.status_code == 200
    assert_error(post(client, ("cut.png", TRUNCATED)), 400)  # not scored: no row
    results = first.json()["results"] + second.json()["results"]
    rows = read_record(record)
    assert [r["name"] for r in rows] == ["good.png", "bad.png", "again.png"]
    for row, result, data in zip(rows, results, [good.read_bytes(), bad.read_bytes(), good.read_bytes()]):
        assert row["time"].endswith("Z") and datetime.fromisoformat(row["time"].replace("Z", "+00:00"))
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["category"] == "synthetic_part" and row["run_id"] == predictor.run_id
        assert float(row["score"]) == result["score"] and float(row["threshold"]) == result["threshold"]
        assert row["verdict"] == ("anomalous" if result["is_anomalous"] else "normal")


def test_record_rows_of_concurrent_requests_are_whole(line, good_png: bytes) -> None:
    client, record, _ = line
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda i: post(client, (f"c{i}.png", good_png)).status_code, range(8)))
    assert codes == [200] * 8
    rows = read_record(record)
    assert sorted(r["name"] for r in rows) == sorted(f"c{i}.png" for i in range(8))
    assert all(len(r) == len(COLUMNS) and None not in r.values() for r in rows)


#: Appends rows far longer than a page from two threads: interleaved bytes would split them. A fresh
#: interpreter importing only the record's module (``python -c``), so that it starts in a moment.
APPEND_MANY = """
import sys, threading
from pathlib import Path
from reconad.serve.line import Record

path, who = Path(sys.argv[1]), sys.argv[2]
rows = [(who, str(i), "x" * 20_000) for i in range(50)]
threads = [threading.Thread(target=lambda: [Record(path).append([r]) for r in rows]) for _ in "ab"]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


def test_record_appends_from_several_processes_are_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "record.csv"
    Record(path).prepare()
    command = [sys.executable, "-c", APPEND_MANY, str(path)]
    writers = [subprocess.Popen([*command, f"p{i}"]) for i in range(3)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 1 + 3 * 2 * 50
    assert all(line.count(",") == 2 and line.endswith("x" * 20_000) for line in lines[1:])


def test_record_is_appended_to_never_truncated(tmp_path: Path, predictor: Predictor, good_png: bytes) -> None:
    path = tmp_path / "record.csv"
    Record(path).prepare()
    Record(path).add(
        [{"name": "old.png", "category": "c", "score": 1.0, "threshold": 2.0, "is_anomalous": 0}],
        [Upload("old.png", b"x")],
        "run-1",
    )
    before = path.read_bytes()
    client = TestClient(create_app(predictor, record=path))
    Record(path).prepare()  # a restart: the header is not written again
    assert post(client, ("new.png", good_png)).status_code == 200
    assert path.read_bytes().startswith(before)
    assert [r["name"] for r in read_record(path)] == ["old.png", "new.png"]
    path.unlink()  # moved away while serving: the next row starts a new record, header first
    assert post(client, ("newer.png", good_png)).status_code == 200
    assert [r["name"] for r in read_record(path)] == ["newer.png"]


def test_record_download(line, client: TestClient, good_png: bytes) -> None:
    keyed, record, _ = line
    assert post(keyed, ("ok.png", good_png)).status_code == 200
    response = keyed.get("/v1/record")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.content == record.read_bytes() and len(read_record(record)) == 1
    assert keyed.get("/v1/model").json()["record"] is True
    assert_error(keyed.get("/v1/record", headers={"Authorization": "Bearer wrong"}), 401, "wrong API key")
    assert_error(client.get("/v1/record"), 404, "--record")


def test_feedback_is_stored_in_the_layout_add_and_threshold_read(line, good_png: bytes) -> None:
    client, _, feedback = line
    sha = hashlib.sha256(good_png).hexdigest()
    response = send_feedback(client, "part 7.png", good_png, label="good")
    assert response.status_code == 200, response.text
    want = {"stored": f"synthetic_part/good/{sha[:16]}.png", "label": "good", "category": "synthetic_part"}
    assert response.json() == {**want, "sha256": sha}
    assert (feedback / want["stored"]).read_bytes() == good_png
    again = send_feedback(client, "other-name.jpeg", good_png, label="good", category="synthetic_part")
    assert again.json() == response.json()  # the same bytes: the same file, not written twice
    assert [p.relative_to(feedback).as_posix() for p in feedback.rglob("*") if p.is_file()] == [
        want["stored"]
    ]
    relabelled = send_feedback(client, "part 7.png", good_png, label="defective").json()
    assert relabelled["stored"] == f"synthetic_part/defective/{sha[:16]}.png"
    assert relabelled["replaced"] == [want["stored"]] and not (feedback / want["stored"]).exists()
    jpeg = io.BytesIO()
    Image.fromarray(noise(32, 32)).save(jpeg, format="JPEG")
    named = send_feedback(client, "shot.JPG", jpeg.getvalue(), label="good").json()
    assert named["stored"].endswith(".jpg")
    unnamed = send_feedback(client, "no-suffix", png_bytes(noise(32, 32, seed=5)), label="good").json()
    assert unnamed["stored"].endswith(".png")
    assert not [p for p in feedback.rglob(".*")]  # no temporaries left
    assert client.get("/v1/model").json()["feedback"] is True


@pytest.mark.parametrize(
    "which, fields, headers, status, words",
    [
        ("no_dir", {"label": "good"}, {}, 409, ["--feedback-dir"]),
        ("line", {"label": "fine"}, {}, 400, ["label", "good or defective", "fine"]),
        ("line", {}, {}, 400, ["label"]),
        ("line", {"label": "good", "category": "nope"}, {}, 404, ["no category 'nope'"]),
        ("line", {"label": "good"}, {"Authorization": "Bearer wrong"}, 401, ["wrong API key"]),
        ("line", {"label": "good", "name": "notes.png"}, {}, 415, ["notes.png", "not a recognised"]),
        ("line", {"label": "good", "name": "cut.png"}, {}, 400, ["cut.png", "truncated"]),
    ],
    ids=[
        "without_feedback_dir",
        "bad_label",
        "no_label",
        "unknown_category",
        "wrong_key",
        "text",
        "truncated",
    ],
)
def test_feedback_refused(line, client, good_png, which, fields, headers, status, words) -> None:
    keyed, _, feedback = line
    name = fields.pop("name", "ok.png")
    data = {"notes.png": b"hello, I am a text file\n", "cut.png": TRUNCATED}.get(name, good_png)
    target = client if which == "no_dir" else keyed
    response = target.post("/v1/feedback", files={"file": (name, data)}, data=fields, headers=headers)
    assert_error(response, status, *words)
    assert not feedback.exists() or not [p for p in feedback.rglob("*") if p.is_file()]


def test_borderline_is_a_score_within_the_margin_of_the_threshold() -> None:
    assert BORDERLINE_MARGIN == 0.10
    assert is_borderline(9.0, 10.0) and is_borderline(11.0, 10.0) and is_borderline(10.0, 10.0)
    assert not is_borderline(8.99, 10.0) and not is_borderline(11.01, 10.0)


# --- the same numbers as reconad predict --------------------------------------------------------------------


def test_same_scores_and_overlays_as_reconad_predict(client: TestClient, fitted_run: Path, parts, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(parts / "test", images)
    Image.fromarray(noise(80, 96, seed=3)).save(images / "odd_size.png")  # resized to the run's size and back
    before = sorted((p.relative_to(fitted_run), p.stat().st_mtime_ns) for p in fitted_run.rglob("*"))
    result = invoke("predict", fitted_run, images, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 11
    files = [(str(Path(r["path"]).relative_to(images)), Path(r["path"]).read_bytes()) for r in rows]
    response = post(client, *files, params={"map": "png"})
    assert response.status_code == 200, response.text
    for row, served in zip(rows, response.json()["results"]):
        assert f"{served['score']:.6g}" == row["score"]
        assert int(served["is_anomalous"]) == int(row["is_anomalous"])
        assert base64.b64decode(served["overlay_png"]) == (tmp_path / "out" / row["overlay"]).read_bytes()
    assert sorted((p.relative_to(fitted_run), p.stat().st_mtime_ns) for p in fitted_run.rglob("*")) == before


# --- the command and the app factory ----------------------------------------------------------------------


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """``uvicorn.run`` and ``os.execv`` (several workers) replaced by a recorder (nothing listens, this
    process goes on); the settings each saw in the environment."""
    import uvicorn

    from reconad.serve import workers

    calls: list[tuple] = []
    names = [workers.ENV_RUN, workers.ENV_MAX_UPLOAD, workers.ENV_KEY_VAR, workers.ENV_THREADS]
    names += [workers.ENV_RECORD, workers.ENV_FEEDBACK]
    for name in names:  # serve() sets them: monkeypatch puts back what was there before the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    def record(*args, **kwargs):
        calls.append((args, kwargs, {n: os.environ.get(n) for n in names}))

    def execv(*args):
        record(*args)
        raise SystemExit(0)  # as if this process had been replaced

    monkeypatch.setattr(uvicorn, "run", record)
    monkeypatch.setattr(os, "execv", execv)
    return calls


def test_serve_command_serves_one_worker_in_process(fitted_run: Path, uvicorn_calls) -> None:
    result = invoke("serve", fitted_run, "--port", 9999)
    assert result.exit_code == 0, result.output
    ((args, kwargs, env),) = uvicorn_calls
    assert isinstance(args[0], FastAPI)
    assert kwargs == {**kwargs, "host": "127.0.0.1", "port": 9999}
    assert env["RECONAD_SERVE_RUN"] is None


def test_serve_command_hands_several_workers_to_the_supervisor(
    fitted_run: Path, uvicorn_calls, monkeypatch, tmp_path: Path
) -> None:
    from reconad.serve.workers import SUPERVISOR

    monkeypatch.setenv("MY_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    result = invoke(
        "serve",
        fitted_run,
        "--port",
        9999,
        "--workers",
        2,
        "--max-upload-mb",
        3,
        "--api-key-env",
        "MY_KEY",
        "--record",
        "line/record.csv",
        "--feedback-dir",
        "line/feedback",
    )
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    ((args, _, env),) = uvicorn_calls
    assert args == (sys.executable, [sys.executable, "-c", SUPERVISOR, "127.0.0.1", "9999", "2"])
    assert env["RECONAD_SERVE_RUN"] == str(fitted_run.resolve())
    assert env["RECONAD_SERVE_MAX_UPLOAD_BYTES"] == str(3 * 2**20)
    assert env["RECONAD_SERVE_API_KEY_ENV"] == "MY_KEY"
    assert int(env["RECONAD_SERVE_TORCH_THREADS"]) >= 1
    assert env["RECONAD_SERVE_RECORD"] == str(tmp_path / "line" / "record.csv")  # absolute: workers may cd
    assert env["RECONAD_SERVE_FEEDBACK_DIR"] == str(tmp_path / "line" / "feedback")
    assert (tmp_path / "line" / "record.csv").read_text() == ",".join(COLUMNS) + "\n"  # before any worker
    assert (tmp_path / "line" / "feedback").is_dir()


@pytest.mark.parametrize(
    "host, warned", [("0.0.0.0", True), ("192.0.2.1", True), ("127.0.0.2", False), ("::1", False)]
)
def test_serve_warns_beyond_loopback_without_a_key(
    fitted_run: Path, uvicorn_calls, host: str, warned: bool
) -> None:
    result = invoke("serve", fitted_run, "--host", host)
    assert result.exit_code == 0, result.output
    assert ("warning" in result.stderr and "without --api-key-env" in result.stderr) == warned
    assert uvicorn_calls[0][1]["host"] == host


@pytest.mark.parametrize(
    "args, words",
    [
        (["--workers", "0"], ["--workers"]),
        (["--max-upload-mb", "0"], ["--max-upload-mb"]),
        (["--api-key-env", "RECONAD_TEST_UNSET_KEY"], ["RECONAD_TEST_UNSET_KEY", "unset or empty"]),
        (["--record", "{tmp}"], ["is a folder"]),
        (["--record", "{tmp}/notes.txt"], ["notes.txt", "not a reconad record"]),
        (["--feedback-dir", "{tmp}/notes.txt"], ["notes.txt", "not a folder"]),
    ],
)
def test_serve_refuses_bad_settings(fitted_run: Path, uvicorn_calls, tmp_path: Path, args, words) -> None:
    (tmp_path / "notes.txt").write_text("my notes\n")
    result = invoke("serve", fitted_run, *[a.format(tmp=tmp_path) for a in args])
    assert_clean_error(result, *words)
    assert not uvicorn_calls
    assert (tmp_path / "notes.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_a_folder_that_is_not_a_run(tmp_path: Path, uvicorn_calls, workers: int) -> None:
    assert_clean_error(invoke("serve", tmp_path, "--workers", workers), "not a reconad run")
    assert not uvicorn_calls


def test_serve_refuses_a_port_in_use(fitted_run: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = invoke("serve", fitted_run, "--port", taken.getsockname()[1])
    assert result.exit_code == 2, result.output
    assert "error: the server could not start" in result.stderr and "Traceback" not in result.output


def test_app_factory_reads_the_settings_serve_wrote(fitted_run: Path, good_png: bytes, monkeypatch, tmp_path):
    from reconad.serve.app import app_from_env

    monkeypatch.setenv("RECONAD_SERVE_RUN", str(fitted_run))
    monkeypatch.setenv("RECONAD_SERVE_MAX_UPLOAD_BYTES", str(len(good_png) + 1000))
    monkeypatch.setenv("RECONAD_SERVE_API_KEY_ENV", "MY_KEY")
    monkeypatch.setenv("MY_KEY", KEY)
    monkeypatch.delenv("RECONAD_SERVE_TORCH_THREADS", raising=False)
    monkeypatch.setenv("RECONAD_SERVE_RECORD", str(tmp_path / "record.csv"))
    monkeypatch.setenv("RECONAD_SERVE_FEEDBACK_DIR", str(tmp_path / "feedback"))
    client = TestClient(app_from_env(), raise_server_exceptions=False)
    assert_error(post(client, ("ok.png", good_png)), 401, "missing API key")
    auth = {"Authorization": f"Bearer {KEY}"}
    assert_serves(client, good_png, headers=auth)
    assert [r["name"] for r in read_record(tmp_path / "record.csv")] == ["ok.png"]
    assert send_feedback(client, "ok.png", good_png, label="good", headers=auth).status_code == 200
    assert_error(post(client, ("big.png", good_png + b"\0" * 2000), headers=auth), 413, "upload too large")


def test_app_factory_that_cannot_start_exits_with_uvicorns_startup_failure_code(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """One line and the code that makes uvicorn's supervisor stop instead of restarting the worker forever."""
    from uvicorn.config import STARTUP_FAILURE

    from reconad.serve.app import app_from_env

    monkeypatch.setenv("RECONAD_SERVE_RUN", str(tmp_path))
    monkeypatch.setenv("RECONAD_SERVE_MAX_UPLOAD_BYTES", "1000")
    for name in ("API_KEY_ENV", "TORCH_THREADS", "RECORD", "FEEDBACK_DIR"):
        monkeypatch.delenv(f"RECONAD_SERVE_{name}", raising=False)
    ended = []
    monkeypatch.setattr(os, "_exit", ended.append)  # a worker ends at once; pytest must not
    app_from_env()
    assert ended == [STARTUP_FAILURE]
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: worker ") and "not a reconad run" in lines[0]
