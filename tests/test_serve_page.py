"""The inspection page in real headless Chromium (Debian's ``chromium``, driven by Playwright) against a real
``reconad serve`` process: upload a generated defective image with the keyboard, see the verdict and the heat
map; drop a second image; move through the list with the arrow keys. The screenshot is saved under
``test-artifacts/`` (or ``$RECONAD_TEST_ARTIFACTS``), which git ignores."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def server(fitted_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``reconad serve RUN`` in a subprocess on a free loopback port; its base URL once /healthz answers."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [
        sys.executable,
        "-c",
        "from reconad.cli import run; run()",
        "--quiet",
        "serve",
        str(fitted_run),
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
        yield url
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


def test_page_upload_shows_verdict_and_heat_map(server: str, page, parts: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    page.goto(server)
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
