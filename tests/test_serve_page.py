"""The inspection page in real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
``reconad serve`` process: upload a generated defective image with the keyboard, see the verdict and the heat
map; drop a second image; move through the list with the arrow keys; label results (feedback), see the
borderline badge and download the record. The server's run is a copy whose threshold is set just above the
score of one good image, so that image is a real borderline case. The screenshots are saved under
``test-artifacts/`` (or ``$RECONAD_TEST_ARTIFACTS``), which git ignores."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("RECONAD_TEST_ARTIFACTS", Path(__file__).parents[1] / "test-artifacts"))
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    record: Path
    feedback: Path


#: The image the server's run holds to be borderline (normal, 3 % under the threshold).
BORDERLINE = ("train", "good", "000.png")


@pytest.fixture(scope="module")
def borderline_run(fitted_run: Path, parts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the fitted run whose threshold puts :data:`BORDERLINE` 3 % under it (the defective image
    stays far above)."""
    from reconad.serve.predictor import Predictor, Upload

    folder = tmp_path_factory.mktemp("borderline")
    files = [parts.joinpath(*BORDERLINE), defective_image(parts, folder / "images")]
    good, bad = Predictor(fitted_run).predict([Upload(p.name, p.read_bytes()) for p in files])
    run = folder / "run"
    shutil.copytree(fitted_run, run)
    config = json.loads((run / "run.json").read_text())
    config["categories"]["synthetic_part"]["threshold"] = good["score"] / 0.97
    assert bad["score"] > 1.2 * good["score"] / 0.97
    (run / "run.json").write_text(json.dumps(config, indent=2))
    return run


@pytest.fixture(scope="module")
def server(borderline_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``reconad serve RUN --record ... --feedback-dir ...`` in a subprocess on a free loopback port; its
    base URL (once /healthz answers), record and feedback folder."""
    port = free_port()
    folder = tmp_path_factory.mktemp("server")
    log, record, feedback = folder / "serve.log", folder / "record.csv", folder / "feedback"
    command = [
        sys.executable,
        "-c",
        "from reconad.cli import run; run()",
        "--quiet",
        "serve",
        str(borderline_run),
        "--record",
        str(record),
        "--feedback-dir",
        str(feedback),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen([*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # the backbone loads in seconds, more on a busy machine
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"reconad serve did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.5)
        yield Server(url, record, feedback)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def page(tmp_path: Path):
    """A Chromium page in a fresh profile; console errors (CSP violations among them) fail the test."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the page test)")
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1100, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page
        finally:
            context.close()
    assert not errors, errors


def defective_image(parts: Path, folder: Path) -> Path:
    """A good test image of the synthetic part with a bright red square painted over its middle."""
    image = np.asarray(Image.open(parts / "test" / "good" / "000.png").convert("RGB")).copy()
    image[20:44, 20:44] = (250, 30, 30)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "defective.png")
    return folder / "defective.png"


def drop_file(page, selector: str, path: Path) -> None:
    """Drop ``path`` on ``selector`` as a file dragged from the desktop would arrive."""
    page.evaluate(
        """([selector, name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            const target = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                const init = { bubbles: true, cancelable: true, dataTransfer: transfer };
                target.dispatchEvent(new DragEvent(type, init));
            }
        }""",
        [selector, path.name, base64.b64encode(path.read_bytes()).decode()],
    )


def enter_activates_the_picker(page) -> bool:
    """Enter on the focused file input activates it: the input gets the click that opens the native picker
    (held back here with ``preventDefault``). Whether headless Chromium then shows a chooser is the browser's
    business, and in long full-suite runs it sometimes did not (twice, 20 s each); the page's part is the
    reachable, keyboard-activated native input."""
    page.evaluate(
        """() => { window.pickerClicks = 0;
        document.getElementById('file').addEventListener('click', e => { window.pickerClicks++;
        e.preventDefault(); }, {once: true}); }"""
    )
    page.keyboard.press("Enter")
    return page.evaluate("window.pickerClicks") == 1


def test_page_upload_shows_verdict_and_heat_map(server: Server, page, parts: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(server.url)
    expect(page.locator("#model-info")).to_contain_text("patchcore")

    for _ in range(10):  # keyboard only: Tab to the file picker, Enter opens it
        if page.evaluate("document.activeElement.id") == "file":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file"
    assert enter_activates_the_picker(page)
    page.set_input_files("#file", str(defective_image(parts, tmp_path)))  # what the chosen file does

    expect(page.locator("#verdict")).to_have_text("anomalous")
    expect(page.locator("#overlay")).to_have_js_property("complete", True)
    assert page.locator("#overlay").evaluate("img => img.naturalWidth") > 0  # a decoded picture
    assert page.get_attribute("#overlay", "src").startswith("data:image/png;base64,")
    assert page.text_content("#result-name") == "defective.png"
    assert "threshold" in page.text_content("#score-text")
    assert page.locator("#history li").count() == 1
    assert page.locator("#heat-legend .scale-bar").is_visible()  # what the heat map's colours mean
    assert "threshold" in page.text_content("#heat-legend")

    drop_file(page, "#drop", parts / "train" / "good" / "000.png")
    expect(page.locator("#history li")).to_have_count(2)
    expect(page.locator("#result-name")).to_have_text("000.png")
    assert page.text_content("#verdict") in ("normal", "anomalous")

    page.focus("#history li:first-child button")  # newest first; the arrow key moves to the older one
    page.keyboard.press("ArrowDown")
    expect(page.locator("#result-name")).to_have_text("defective.png")
    assert page.text_content("#verdict") == "anomalous"
    assert page.get_attribute("#history li:last-child button", "aria-current") == "true"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)


def stored(feedback: Path) -> list[str]:
    return sorted(p.relative_to(feedback).as_posix() for p in feedback.rglob("*") if p.is_file())


def test_page_labels_results_shows_borderline_and_downloads_the_record(
    server: Server, page, parts: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    page.goto(server.url)
    expect(page.locator("#model-info")).to_contain_text("run ")
    expect(page.locator("#record-download")).to_be_visible()
    expect(page.locator("#margin")).to_have_text("±10 %")  # the margin, stated in the page's legend

    defective = defective_image(parts, tmp_path)
    page.set_input_files("#file", str(defective))
    expect(page.locator("#verdict")).to_have_text("anomalous")
    expect(page.locator("#borderline")).to_be_hidden()
    page.get_by_role("button", name="Confirm defect").click()
    sha = hashlib.sha256(defective.read_bytes()).hexdigest()
    expect(page.locator("#feedback-status")).to_have_text(
        f"Stored as defective (synthetic_part/defective/{sha[:16]}.png)."
    )
    assert page.get_attribute("#confirm-defect", "aria-pressed") == "true"
    assert stored(server.feedback) == [f"synthetic_part/defective/{sha[:16]}.png"]

    borderline = parts.joinpath(*BORDERLINE)
    drop_file(page, "#drop", borderline)
    expect(page.locator("#result-name")).to_have_text("000.png")
    expect(page.locator("#verdict")).to_have_text("normal")
    expect(page.locator("#borderline")).to_be_visible()  # the amber badge beside the verdict
    assert page.locator("#history li:first-child .badge.borderline").count() == 1
    assert page.locator("#meter-band").evaluate("e => getComputedStyle(e).width") != "0px"
    expect(page.locator("#feedback-status")).to_have_text("")  # this image is not labelled yet
    page.get_by_role("button", name="Mark as good").click()
    good_sha = hashlib.sha256(borderline.read_bytes()).hexdigest()
    expect(page.locator("#feedback-status")).to_contain_text("Stored as good")
    assert f"synthetic_part/good/{good_sha[:16]}.png" in stored(server.feedback)

    page.focus("#history li:first-child button")  # the earlier result keeps its label
    page.keyboard.press("ArrowDown")
    expect(page.locator("#feedback-status")).to_contain_text("Stored as defective")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve_page_line.png"), full_page=True)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download record").click()
    text = Path(download.value.path()).read_text()
    assert text == server.record.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["name"], r["verdict"]) for r in rows[-2:]] == [
        ("defective.png", "anomalous"),
        ("000.png", "normal"),
    ]
    assert rows[-2]["sha256"] == sha and rows[-1]["sha256"] == good_sha
