"""End to end: ``genmnist demo`` in a subprocess, driven in headless Chromium.

Needs the extra ``genmnist[demo]`` (Gradio), Playwright for Python (in ``genmnist[dev]``)
and the system's Chromium at ``/usr/bin/chromium`` (Debian: ``apt-get install chromium``;
Playwright's own browser download is never used). Without them these tests are skipped,
except under ``CI=true``, where they fail: CI must install them (``.ci/run`` does).

``GENMNIST_DEMO_SCREENSHOT=docs/demo.png`` makes the docs' picture (skipped without it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Seconds the app may take to start serving (Gradio and torch imports, on a busy CPU).
START_TIMEOUT = 120
#: Milliseconds a click may take to show its result.
RESULT_TIMEOUT = 60_000


def missing(reason: str) -> None:
    """Skip, or fail under CI, where everything the test needs must be installed."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_command(port: int) -> list[str]:
    return [sys.executable, "-m", "genmnist", "demo", "--port", str(port)]


def demo_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    """The URL of ``genmnist demo`` started on a free port (stopped after the tests)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing('Gradio is not installed: pip install -e ".[demo]"')
    port = free_port()
    log = tmp_path_factory.mktemp("demo") / "demo.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            demo_command(port),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=demo_env(),
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        announced = f"genmnist demo: http://127.0.0.1:{port} (Ctrl-C stops it)"
        while not (announced in log.read_text() and answers(url)):
            if process.poll() is not None:
                pytest.fail(f"genmnist demo exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"genmnist demo did not serve {url} in {START_TIMEOUT} s")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing('Playwright is not installed: pip install -e ".[dev]"')
    if not CHROMIUM.exists():
        missing(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, demo_url):
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    page.goto(demo_url)
    page.wait_for_selector("#sample-button", timeout=RESULT_TIMEOUT)
    yield page
    page.close()


def image_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.eval_on_selector(selector, "i => [i.naturalWidth, i.naturalHeight]"))


def wait_for_image(page, selector: str, size: tuple[int, int]) -> None:
    """Wait until the image at ``selector`` has loaded with ``size`` (its pixels)."""
    page.wait_for_function(
        """([selector, w, h]) => {
            const image = document.querySelector(selector);
            return image && image.complete && image.naturalWidth === w && image.naturalHeight === h;
        }""",
        arg=[selector, *size],
        timeout=RESULT_TIMEOUT,
    )


def wait_for_text(page, selector: str, text: str) -> str:
    page.wait_for_function(
        "([selector, text]) => document.querySelector(selector)?.innerText.includes(text)",
        arg=[selector, text],
        timeout=RESULT_TIMEOUT,
    )
    return page.inner_text(selector)


def set_field(page, selector: str, value: str) -> None:
    """Type ``value`` into the field at ``selector`` until the page keeps it.

    A tab's fields can be (re)mounted just after the tab shows, which resets what was typed
    a moment before; so check that the value stays, and type it again if it did not.
    """
    for _ in range(10):
        page.fill(selector, value)
        page.keyboard.press("Tab")  # commit it, as a user leaving the field does
        page.wait_for_timeout(250)
        if page.input_value(selector) == value:
            return
    pytest.fail(f"the field {selector} did not keep the value {value!r}")


def pick(page, selector: str, option: str) -> None:
    page.click(f"{selector} input")
    page.get_by_role("option", name=option, exact=True).click()


def test_generate_a_grid_from_each_family(page):
    # 4 images of 28x28 in one row, 2-pixel padding, enlarged 3 times: 366 x 96 pixels
    set_field(page, "#sample-count input[type=number]", "4")
    page.click("#sample-button")
    wait_for_image(page, "#sample-image img", (366, 96))
    status = wait_for_text(page, "#sample-status", "vae-conv")
    assert "4 images of vae-conv (shipped weights (mnist)), seed 0: sampled in" in status

    pick(page, "#sample-model", "ddpm")
    page.wait_for_selector("#sample-steps textarea", state="visible")
    assert page.get_attribute("#sample-steps textarea", "placeholder") == "the model's: 6"
    set_field(page, "#sample-steps textarea", "3")
    set_field(page, "#sample-seed input", "5")
    page.click("#sample-button")
    status = wait_for_text(page, "#sample-status", "ddpm")
    assert "4 images of ddpm (shipped weights (mnist)), seed 5: sampled in" in status
    wait_for_image(page, "#sample-image img", (366, 96))

    for name in ("dcgan", "flow"):  # a GAN and a flow model, on their own defaults
        pick(page, "#sample-model", name)
        page.click("#sample-button")
        status = wait_for_text(page, "#sample-status", f"images of {name} ")
        assert f"4 images of {name} (shipped weights (mnist)), seed 5: sampled in" in status
        wait_for_image(page, "#sample-image img", (366, 96))


def test_a_bad_value_shows_a_one_line_message(page):
    set_field(page, "#sample-seed input", "-1")
    page.click("#sample-button")
    message = "seed must be a whole number from 0 to 2147483647, got -1"
    page.get_by_text(message).first.wait_for(timeout=RESULT_TIMEOUT)
    assert "Traceback" not in page.inner_text("body")
    set_field(page, "#sample-seed input", "1")  # the app still answers
    page.click("#sample-button")
    status = wait_for_text(page, "#sample-status", "seed 1")
    assert "16 images of vae-conv" in status


def test_the_denoising_tab_shows_every_step(page):
    page.get_by_role("tab", name="Denoising").click()
    page.wait_for_selector("#denoise-button", state="visible")
    set_field(page, "#denoise-count input[type=number]", "2")
    set_field(page, "#denoise-steps textarea", "3")
    page.click("#denoise-button")
    status = wait_for_text(page, "#denoise-status", "3 steps")
    assert "2 images of ddpm (shipped weights (mnist)), seed 0: 3 steps in" in status
    # the final grid: 2 images in a row; each frame: x_t over the clean estimate
    wait_for_image(page, "#denoise-final img", (186, 96))
    assert page.locator("#denoise-frames img").count() >= 3


def test_a_taken_port_is_a_one_line_error(tmp_path):
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing('Gradio is not installed: pip install -e ".[demo]"')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            demo_command(port),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env=demo_env(),
        )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: cannot serve the demo on 127.0.0.1:{port}")


def test_screenshot_for_the_docs(page):
    path = os.environ.get("GENMNIST_DEMO_SCREENSHOT")
    if not path:
        pytest.skip("set GENMNIST_DEMO_SCREENSHOT=docs/demo.png to take the docs' screenshot")
    pick(page, "#sample-model", "ddpm-cfg")
    page.wait_for_selector("#sample-guidance textarea", state="visible")
    set_field(page, "#sample-count input[type=number]", "30")
    page.click("#sample-button")
    wait_for_image(page, "#sample-image img", (906, 276))  # 3 rows of the 10 classes
    wait_for_text(page, "#sample-status", "ddpm-cfg")
    page.screenshot(path=path, full_page=True)
