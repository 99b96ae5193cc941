"""The editor end to end: the real Gradio app on localhost, driven in Debian's headless Chromium.

Needs the `[test]` extra (Gradio, Playwright) and Debian's `chromium` (`apt-get install chromium`;
`.ci/run` installs it). Without a browser the test is skipped, except under CI (`CI` set), where it
fails. The screenshot goes to `$FASTDRAG_ARTIFACTS` (default `test-artifacts/`); docs/app.md
shows one made by this test.
"""

import contextlib
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.shapes import EXAMPLE_CASE, score_drag


ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FASTDRAG_CHROMIUM", "/usr/bin/chromium")
# Chromium as root in a sandbox with no network: no sandbox, no GPU, no background connections.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
MAX_SIDE = 64
UNET_SECONDS = 0.15
ARTIFACTS = Path(os.environ.get("FASTDRAG_ARTIFACTS", ROOT / "test-artifacts"))


def require_browser():
    missing = [name for name in ("gradio", "playwright") if not _importable(name)]
    if not Path(CHROMIUM).is_file():
        missing.append(CHROMIUM)
    if missing:
        message = f"the browser test needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url():
    require_browser()
    from fastdrag.apps.app import PipelineHolder, build_app, launch

    def load():
        # The embedded shapes model (docs/shapes-model.md): a drag really moves an object.
        pipe = StableDiffusionFastDragPipeline.from_pretrained(ROOT / "examples" / "shapes-model")
        # Slow enough (about 2 s a Run) that the page can act while a Run works.
        pipe.unet.register_forward_pre_hook(lambda *args: time.sleep(UNET_SECONDS))
        return pipe

    demo = build_app(PipelineHolder(load), max_side=MAX_SIDE)
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def click_image_pixel(page, selector: str, x: int, y: int, image_side: int = MAX_SIDE) -> None:
    """Click the centre of pixel ``(x, y)`` of the ``image_side``-square image shown (enlarged, then
    fitted into its box, centred) by the ``img`` at ``selector``."""
    natural_w, natural_h, left, top, width, height = page.locator(selector).evaluate(
        "e => { const r = e.getBoundingClientRect();"
        " return [e.naturalWidth, e.naturalHeight, r.left, r.top, r.width, r.height]; }"
    )
    scale = min(width / natural_w, height / natural_h, 1.0)  # shown at most at natural size
    offset_x, offset_y = (width - natural_w * scale) / 2, (height - natural_h * scale) / 2
    per_pixel = natural_w * scale / image_side
    page.mouse.click(left + offset_x + (x + 0.5) * per_pixel, top + offset_y + (y + 0.5) * per_pixel)


def wait_text(page, selector: str, pattern: str, timeout: float = 60_000) -> str:
    """Wait until the element's text matches ``pattern``; on a timeout, say what it showed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            "([s, p]) => new RegExp(p).test(document.querySelector(s)?.innerText ?? '')", arg=[selector, pattern],
            timeout=timeout,
        )
    except PlaywrightTimeout:
        shown = page.locator(selector).inner_text() if page.locator(selector).count() else "(no such element)"
        page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
        pytest.fail(f"{selector} never matched {pattern!r}; it shows {shown!r} (screenshot: failure.png)")
    return page.locator(selector).inner_text()


def upload(page, path: Path) -> None:
    """Give the editor a file. Its canvas is built after the page loads, and a file given before
    that is dropped without an event: so wait for the canvas, and give the file again if the page
    has not answered within 20 s."""
    page.wait_for_selector("#editor canvas")
    for _ in range(3):
        page.locator("#editor input[type=file]").set_input_files(str(path))
        try:
            page.wait_for_function("!document.querySelector('#info').innerText.startsWith('Upload')", timeout=20_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: try once more
            continue


def paint_stroke(page, path: Path) -> None:
    """Paint a horizontal stroke across the middle of the editor. Headless Chromium sometimes shows
    the editor's canvas blank after an upload (about one run in ten here), and a stroke there paints
    nothing: then reload the page (a fresh editor), upload again and paint again, at most 3 times."""
    for _ in range(3):
        canvas = page.locator("#editor canvas").first.bounding_box()
        page.mouse.move(canvas["x"] + canvas["width"] * 0.3, canvas["y"] + canvas["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(canvas["x"] + canvas["width"] * 0.7, canvas["y"] + canvas["height"] * 0.5, steps=12)
        page.mouse.up()
        try:
            page.wait_for_function("/px painted/.test(document.querySelector('#info').innerText)", timeout=10_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: a fresh page, upload, paint again
            page.reload()
            upload(page, path)
            page.wait_for_function("/\\d+x\\d+ image/.test(document.querySelector('#info').innerText)")
            page.wait_for_timeout(1_000)


def shown_image(page, selector: str):
    """The image an ``img`` shows, as an RGB PIL image, fetched from its ``src``."""
    import base64
    import io
    from urllib.parse import urljoin

    from PIL import Image

    src = page.locator(selector).get_attribute("src")
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = page.request.get(urljoin(page.url, src)).body()
    return Image.open(io.BytesIO(data)).convert("RGB")


def natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.locator(selector).evaluate("e => [e.naturalWidth, e.naturalHeight]"))


def test_drag_edit_in_the_browser(app_url):
    from playwright.sync_api import sync_playwright

    artifacts = ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.goto(app_url)

            # 1. Upload: the 256x256 example is scaled down to the app's longest side.
            upload(page, ROOT / "examples" / "shapes.png")
            wait_text(page, "#info", r"64x64 image, mask: whole image, 0 drag")

            # Run with no drag: a message in the page, and the app goes on.
            page.click("#run")
            wait_text(page, "#status", r"Error: add at least one drag")

            # 2. Paint a stroke across the disc: the mask arrives with it.
            paint_stroke(page, ROOT / "examples" / "shapes.png")
            wait_text(page, "#info", r"mask: [1-9]\d* px painted")

            # 3. Handle on the disc, target to its right; then undo and redo the target.
            click_image_pixel(page, "#points img", 26, 32)
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_image_pixel(page, "#points img", 40, 40)
            wait_text(page, "#info", r"1 drag\(s\)")
            page.click("#undo")
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_image_pixel(page, "#points img", 35, 32)
            wait_text(page, "#info", r"1 drag\(s\)\. Click a handle")
            assert natural_size(page, "#preview img") == (MAX_SIDE, MAX_SIDE)

            # 4. Run: the edit, of the input's size, beside the original, with the phases.
            page.click("#run")
            first = wait_text(page, "#status", r"Edited in")
            assert "inverted this image" in first
            assert re.search(r"text [\d.]+ s, encode [\d.]+ s, inversion [\d.]+ s, warp", first)
            page.wait_for_selector("#result img")
            assert natural_size(page, "#result img") == (MAX_SIDE, MAX_SIDE)
            assert natural_size(page, "#original img") == (MAX_SIDE, MAX_SIDE)

            # 5. Run again on the same image: the cached inversion is reused, only sampling runs.
            page.click("#run")
            second = wait_text(page, "#status", r"cached inversion reused")
            assert "inversion " not in second.split(")", 1)[1] and "sampling" in second
            (artifacts / "run-times.txt").write_text(f"first run: {first}\nsecond run: {second}\n")
            page.screenshot(path=str(artifacts / "app.png"), full_page=True)

            # 5b. Move the painted object instead: one drag, the preview shows it moved, Run edits
            #     from the same cached inversion (every mode shares it).
            page.locator("#mode label", has_text="move").click()
            wait_text(page, "#info", r"1 drag\(s\)\. Click a point of the object")
            dragged_preview = page.locator("#preview img").get_attribute("src")
            click_image_pixel(page, "#points img", 26, 32)  # a click after a complete drag starts again
            wait_text(page, "#info", r"0 drag\(s\)\. Click where it goes")
            click_image_pixel(page, "#points img", 40, 22)
            wait_text(page, "#info", r"1 drag\(s\)\. Click a point of the object")
            page.wait_for_function(
                "old => document.querySelector('#preview img')?.getAttribute('src') !== old", arg=dragged_preview
            )
            page.click("#run")
            page.wait_for_function("old => document.querySelector('#status').innerText !== old", arg=second)
            moved = wait_text(page, "#status", r"Edited in")
            assert "cached inversion reused" in moved
            page.locator("#mode label", has_text="drag").click()
            wait_text(page, "#info", r"Click a handle")

            # 6. Use as input: the edit becomes the new image, with no points.
            page.click("#use")
            wait_text(page, "#info", r"64x64 image, mask: whole image, 0 drag")

            # 7. An upload made while a Run works survives the Run: the next Run sees the new image,
            #    which has no drag yet, not the image and points the first Run worked on.
            click_image_pixel(page, "#points img", 20, 20)
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_image_pixel(page, "#points img", 30, 20)
            wait_text(page, "#info", r"1 drag\(s\)\. Click a handle")
            page.click("#run")
            page.locator("#editor input[type=file]").set_input_files(str(ROOT / "examples" / "shapes.png"))
            wait_text(page, "#status", r"inverted this image")  # the Run on the used-as-input image ended
            wait_text(page, "#info", r"64x64 image, mask: whole image, 0 drag")
            page.click("#run")
            wait_text(page, "#status", r"Error: add at least one drag")

            # 8. A real drag: the striped disc of examples/drag_me.png, whole image as the mask, goes
            #    to its target in the edit the page shows.
            before = page.locator("#points img").get_attribute("src")
            page.locator("#editor input[type=file]").set_input_files(str(ROOT / "examples" / "drag_me.png"))
            page.wait_for_function("old => document.querySelector('#points img')?.getAttribute('src') !== old", arg=before)
            wait_text(page, "#info", r"64x64 image, mask: whole image, 0 drag")
            # The upload re-renders the points view once more after its first update: a click
            # landing in between is lost, so click again until the page has it.
            for _ in range(5):
                page.wait_for_timeout(1_000)
                click_image_pixel(page, "#points img", *map(int, EXAMPLE_CASE.handle))
                with contextlib.suppress(Exception):  # playwright's TimeoutError: click once more
                    page.wait_for_function("/Click the target/.test(document.querySelector('#info').innerText)",
                                           timeout=5_000)
                    break
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_image_pixel(page, "#points img", *map(int, EXAMPLE_CASE.target))
            wait_text(page, "#info", r"1 drag\(s\)\. Click a handle")
            page.click("#run")
            assert "inverted this image" in wait_text(page, "#status", r"Edited in")
            score = score_drag(shown_image(page, "#result img"), EXAMPLE_CASE, mask=np.ones((MAX_SIDE, MAX_SIDE), bool))
            assert score["share"] > 0.5 and score["distance"] < 5.0, score
        finally:
            browser.close()
    assert (artifacts / "app.png").stat().st_size > 10_000
    if os.environ.get("FASTDRAG_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(artifacts / "app.png", ROOT / "docs" / "images" / "app.png")
