"""The web app in a real browser: headless Debian Chromium driven by Playwright through train -> gallery -> edit
-> download, against ``imagic-lora ui`` started as a user starts it, with the built-in shapes model.

Set IMAGIC_LORA_UI_SCREENSHOTS=DIR to keep the screenshots (the README's comes from here).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, forged_png, store_snapshot
from PIL import Image

from imagic_lora import ProfileStore

pytest.importorskip("gradio", reason="the web app's extra: pip install -e '.[ui]'")
playwright = pytest.importorskip("playwright.sync_api", reason="the browser test's driver: pip install -e '.[dev]'")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium: make test installs it")]
SHAPES_INPUT = REPO / "profiles" / "shapes-input.png"
SOURCE, EDIT = ("a large red circle on the left on a teal background",
                "a large blue circle on the left on a teal background")
# what a locked-down machine needs: no sandbox as root, no GPU, no calls home on a closed network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]
LONG = 300_000  # ms: training on two CPU cores


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def app(isolated_user_dir, tmp_path):
    """``imagic-lora ui --model builtin:shapes`` on a free port; its URL once the page answers."""
    port = _free_port()
    log = (tmp_path / "ui.log").open("w")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "imagic_lora.cli", "ui", "--model", "builtin:shapes",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            assert server.poll() is None, (tmp_path / "ui.log").read_text()
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert time.perf_counter() - started < 60, "the app did not answer within a minute"
                time.sleep(0.05)
        print(f"\nimagic-lora ui answered after {time.perf_counter() - started:.2f} s")
        yield url
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture
def page(app, tmp_path):
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        started = time.perf_counter()
        page.goto(app)  # returns at the load event
        loaded = time.perf_counter()
        playwright.expect(page.locator("#edit-run")).to_be_enabled()
        print(f"page loaded {loaded - started:.2f} s after the request, interactive {time.perf_counter() - loaded:.2f}"
              " s after that")
        yield page
        browser.close()


def _screenshot(page, name: str, tmp_path: Path) -> Path:
    folder = Path(os.environ.get("IMAGIC_LORA_UI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _status(page, element: str, text: str, timeout: int = 30_000) -> str:
    locator = page.locator(f"#{element}")
    playwright.expect(locator).to_contain_text(text, timeout=timeout)
    return locator.inner_text().strip()


def _fill(page, element: str, text: str) -> None:
    page.locator(f"#{element} textarea, #{element} input").first.fill(text)


def _fresh(page, tab: str) -> None:
    """The page loaded again (empty upload fields), on ``tab``."""
    page.reload()
    page.get_by_role("tab", name=tab).click()


def _upload(page, element: str, path: Path) -> None:
    page.locator(f"#{element} input[type=file]").set_input_files(str(path))


def _start_training(page, name: str, schedule: str | None = None) -> None:
    """Drop the shapes photo on the Train tab, name and describe it, pick ``schedule``, press Train."""
    page.get_by_role("tab", name="Train").click()
    _upload(page, "train-photo", SHAPES_INPUT)
    _status(page, "train-status", "Photo ready.")
    _fill(page, "train-name", name)
    _fill(page, "train-prompt", SOURCE)
    if schedule:
        page.locator("#train-schedule input").click()
        page.get_by_role("option", name=schedule).click()
    page.locator("#train-run").click()


def test_train_browse_edit_and_download_in_the_browser(page, tmp_path):
    # 1. train: drop a photo, describe it, see each step with its loss, find the profile in the gallery
    _start_training(page, "demo")
    step = _status(page, "train-progress", "step", LONG)
    assert "of" in step
    saved = _status(page, "train-status", "Saved profile 'demo'", LONG)
    assert "LoRA loss" in saved
    _screenshot(page, "ui-train", tmp_path)
    page.get_by_role("tab", name="Profiles").click()
    _status(page, "profiles-status", "1 profile(s) in the store")  # the listing was refreshed after training
    playwright.expect(page.locator("#gallery img")).to_have_count(1)
    playwright.expect(page.locator("#profiles-table")).to_contain_text(SOURCE)

    # 2. edit at the defaults; the downloaded PNG is the CLI's, pixel for pixel
    page.get_by_role("tab", name="Edit").click()
    _fill(page, "edit-prompt", EDIT)
    page.locator("#edit-run").click()
    assert _status(page, "edit-status", "Edited 'demo'", LONG).startswith("Edited")
    playwright.expect(page.locator("#edit-result img").first).to_be_visible()
    with page.expect_download() as download:
        page.locator("#edit-download").click()
    ours = tmp_path / "ui.png"
    download.value.save_as(ours)
    _screenshot(page, "ui-edit", tmp_path)
    cli = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "imagic_lora.cli", "apply", "profile", "demo", EDIT, "--out",
                           str(cli)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    theirs = cli / download.value.suggested_filename
    assert np.array_equal(np.asarray(Image.open(ours)), np.asarray(Image.open(theirs)))
    assert Image.open(ours).text["parameters"] == Image.open(theirs).text["parameters"]

    # 3. export the profile as a download: the store's own bytes
    page.get_by_role("tab", name="Profiles").click()
    page.locator("#export").click()
    _status(page, "profiles-status", "Exported demo.imagic.safetensors")
    with page.expect_download() as download:
        page.locator("#export-download").click()
    exported = tmp_path / "exported.imagic.safetensors"
    download.value.save_as(exported)
    assert exported.read_bytes() == ProfileStore().get_bytes("demo")

    # 4. delete asks first; "No" keeps it, "Yes" removes it
    page.locator("#delete").click()
    page.locator("#delete-keep").click()
    assert ProfileStore().names() == ["demo"]
    page.locator("#delete").click()
    page.locator("#delete-confirm").click()
    _status(page, "profiles-status", "Deleted profile 'demo'")
    assert ProfileStore().names() == []


def test_hostile_uploads_show_one_line_and_change_nothing(page, tmp_path, trained):
    ProfileStore().save(trained.renamed("kept"))
    before = store_snapshot()
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("<html>not an image</html>")
    truncated = tmp_path / "truncated.imagic.safetensors"
    truncated.write_bytes(trained.to_bytes()[:5000])
    other_model = tmp_path / "ball.imagic.safetensors"
    other_model.write_bytes(trained.to_bytes())  # trained on builtin:tiny; the app serves builtin:shapes

    for photo, reason in ((not_an_image, "photo.png"), (forged_png(tmp_path / "bomb.png", 20000, 20000),
                                                        "megapixel")):
        _fresh(page, "Train")
        _upload(page, "train-photo", photo)
        line = _status(page, "train-status", "Error: ")
        assert reason in line and "\n" not in line and "Traceback" not in line
    for upload, reason in ((truncated, "Error: "), (other_model, "which this app does not serve")):
        _fresh(page, "Profiles")
        _upload(page, "import-file", upload)
        page.locator("#import").click()
        line = _status(page, "profiles-status", reason)
        assert line.startswith("Error: ") and "\n" not in line
    _screenshot(page, "ui-refused", tmp_path)
    assert store_snapshot() == before


def test_a_second_request_waits_in_the_queue_and_cancel_stores_nothing(page, app, tmp_path):
    _start_training(page, "long", "like the SD ports: 500 + 500 steps")
    _status(page, "train-progress", "stage 1/2 embedding: step", LONG)

    # another tab's edit waits behind the training, and is told its place
    other = page.context.browser.new_page(viewport={"width": 1280, "height": 900})
    other.goto(app)
    other.locator("#edit-run").click()
    playwright.expect(other.locator("#edit-status").get_by_text(re.compile(r"queue: 1/1"))).to_be_visible()
    _screenshot(other, "ui-queued", tmp_path)

    page.locator("#train-cancel").click()
    _status(page, "train-status", "Error: training cancelled; nothing was stored", LONG)
    assert ProfileStore().names() == []
    _status(other, "edit-status", "Error: pick a profile first")  # it ran once the training had stopped
