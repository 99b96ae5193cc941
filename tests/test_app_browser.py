"""The editor end to end: the real Gradio app on localhost, driven in Debian's headless Chromium.

Needs the `[test]` extra (Gradio, Playwright) and Debian's `chromium` (`apt-get install chromium`;
`.ci/run` installs it). Without a browser the test is skipped, except under CI (`CI` set), where it
fails. The screenshot goes to `$FASTDRAG_ARTIFACTS` (default `test-artifacts/`); docs/app.md
shows one made by this test.
"""

import contextlib
import io
import os
import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.browser import (
    CHROMIUM_FLAGS,
    RECORDER_JS,
    canvas_position,
    press_drag_release,
    serve,
    shown_image,
    upload,
    upload_and_wait_for_inversion,
    wait_for_label,
)
from fastdrag.apps.shapes import EXAMPLE_CASE, score_drag


ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("FASTDRAG_CHROMIUM", "/usr/bin/chromium")
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


class Gauge:
    """How many UNet calls run at once, and the most there ever were."""

    def __init__(self):
        self.now = self.most = 0
        self._lock = threading.Lock()

    def enter(self, *args):
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self, *args):
        with self._lock:
            self.now -= 1


def shapes_holder(unet_seconds: float, gauge: Gauge | None = None):
    """The embedded shapes model (docs/shapes-model.md), each UNet call slowed by ``unet_seconds``
    (and counted by ``gauge``)."""
    from fastdrag.apps.app import PipelineHolder

    def load():
        pipe = StableDiffusionFastDragPipeline.from_pretrained(ROOT / "examples" / "shapes-model")
        if gauge is not None:
            pipe.unet.register_forward_pre_hook(gauge.enter)
            pipe.unet.register_forward_hook(gauge.leave)
        pipe.unet.register_forward_pre_hook(lambda *args: time.sleep(unet_seconds))
        return pipe

    return PipelineHolder(load)


@pytest.fixture
def app_url():
    require_browser()
    # Slow enough (about 2 s a Run) that the page can act while a Run works.
    with serve(shapes_holder(UNET_SECONDS), max_side=MAX_SIDE) as url:
        yield url


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def click_pixel(page, x: int, y: int) -> None:
    """Click the centre of image pixel ``(x, y)`` on the drag panel's canvas."""
    page.mouse.click(*canvas_position(page, x, y, (MAX_SIDE, MAX_SIDE)))


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


def paint_stroke(page, path: Path) -> None:
    """Paint a horizontal stroke across the middle of the editor (the image sits in its middle fifth). Headless Chromium sometimes shows
    the editor's canvas blank after an upload (about one run in ten here), and a stroke there paints
    nothing: then reload the page (a fresh editor), upload again and paint again, at most 3 times."""
    for _ in range(3):
        canvas = page.locator("#editor canvas").first.bounding_box()
        page.mouse.move(canvas["x"] + canvas["width"] * 0.42, canvas["y"] + canvas["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(canvas["x"] + canvas["width"] * 0.58, canvas["y"] + canvas["height"] * 0.5, steps=12)
        page.mouse.up()
        try:
            page.wait_for_function("/px painted/.test(document.querySelector('#info').innerText)", timeout=10_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError: a fresh page, upload, paint again
            page.reload()
            page.wait_for_selector("#editor canvas")
            page.locator("#live-on input").uncheck()
            wait_text(page, "#info", r"Live edit is off")
            upload(page, path)
            page.wait_for_function("/\\d+x\\d+ image/.test(document.querySelector('#info').innerText)")
            page.wait_for_timeout(1_000)


def natural_size(page, selector: str) -> tuple[int, int]:
    return tuple(page.locator(selector).evaluate("e => [e.naturalWidth, e.naturalHeight]"))


def test_drag_edit_in_the_browser(app_url):
    from playwright.sync_api import sync_playwright

    artifacts = ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.goto(app_url)
            # The click workflow and Run, with live edit off (test_live_drag covers it on).
            page.wait_for_selector("#editor canvas")
            page.locator("#live-on input").uncheck()
            wait_text(page, "#info", r"Live edit is off")  # the server has it: no background inversion

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
            click_pixel(page, 26, 32)
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_pixel(page, 40, 40)
            wait_text(page, "#info", r"1 drag\(s\)")
            page.click("#undo")
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_pixel(page, 35, 32)
            wait_text(page, "#info", r"1 drag\(s\)\. Click a handle")
            assert natural_size(page, "#fd-preview img") == (MAX_SIDE, MAX_SIDE)

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
            dragged_preview = page.locator("#fd-preview img").get_attribute("src")
            click_pixel(page, 26, 32)  # a click after a complete drag starts again
            wait_text(page, "#info", r"0 drag\(s\)\. Click where it goes")
            click_pixel(page, 40, 22)
            wait_text(page, "#info", r"1 drag\(s\)\. Click a point of the object")
            page.wait_for_function(
                "old => document.querySelector('#fd-preview img')?.getAttribute('src') !== old", arg=dragged_preview
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
            click_pixel(page, 20, 20)
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_pixel(page, 30, 20)
            wait_text(page, "#info", r"1 drag\(s\)\. Click a handle")
            page.click("#run")
            page.locator("#editor input[type=file]").set_input_files(str(ROOT / "examples" / "shapes.png"))
            wait_text(page, "#status", r"inverted this image")  # the Run on the used-as-input image ended
            wait_text(page, "#info", r"64x64 image, mask: whole image, 0 drag")
            page.click("#run")
            wait_text(page, "#status", r"Error: add at least one drag")

            # 8. A real drag: the striped disc of examples/drag_me.png, whole image as the mask, goes
            #    to its target in the edit the page shows.
            before = page.locator("#fd-preview img").get_attribute("src")
            page.locator("#editor input[type=file]").set_input_files(str(ROOT / "examples" / "drag_me.png"))
            page.wait_for_function("old => document.querySelector('#fd-preview img')?.getAttribute('src') !== old",
                                   arg=before)  # the panel shows the new image
            wait_text(page, "#info", r"64x64 image, mask: whole image, 0 drag")
            # The upload re-renders the points view once more after its first update: a click
            # landing in between is lost, so click again until the page has it.
            for _ in range(5):
                page.wait_for_timeout(1_000)
                click_pixel(page, *map(int, EXAMPLE_CASE.handle))
                with contextlib.suppress(Exception):  # playwright's TimeoutError: click once more
                    page.wait_for_function("/Click the target/.test(document.querySelector('#info').innerText)",
                                           timeout=5_000)
                    break
            wait_text(page, "#info", r"0 drag\(s\)\. Click the target")
            click_pixel(page, *map(int, EXAMPLE_CASE.target))
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


# --------------------------------------------------------------------------------------------
# Live drag (issue 21): the edit follows the mouse
# --------------------------------------------------------------------------------------------

LIVE_UNET_SECONDS = 0.05  # a re-drag takes about half a second: several finish during a drag, some are dropped
SIDE = (MAX_SIDE, MAX_SIDE)


@pytest.fixture
def live_app():
    """The editor on the shapes model, with its LiveDrag at hand to read the runs and the cache."""
    require_browser()
    from fastdrag.apps.app import LiveDrag

    gauge = Gauge()
    holder = shapes_holder(LIVE_UNET_SECONDS, gauge)
    live = LiveDrag(holder)
    with serve(holder, max_side=MAX_SIDE, live=live) as url:
        yield url, holder, live
    assert gauge.most == 1  # measured at the model: never two UNet calls at once, from any session


def editor_image(path: Path) -> np.ndarray:
    """The image the editor makes of an upload of ``path`` (the same function the page uses)."""
    from PIL import Image

    from fastdrag.apps.app import Session, load_editor_value

    value = {"background": np.asarray(Image.open(path).convert("RGB")), "layers": []}
    return load_editor_value(Session(), value, MAX_SIDE, 8).image


def direct_edit(holder, image: np.ndarray, handle, target) -> np.ndarray:
    """The pipeline called directly with one drag through the server's cached inversion of
    ``image``, as uint8 pixels (as the editor turns its output into pixels)."""
    from test_live import direct_edit as session_edit

    from fastdrag.apps.app import Session

    return session_edit(holder, Session(image=image, points=[handle, target]))


def edit_numbers(labels: list[str]) -> list[int]:
    return [int(m.group(1)) for _, text in labels if (m := re.match(r"Live edit (\d+):", text))]


def assert_one_run_at_a_time(runs) -> None:
    """No two re-drags overlapped, by the server's log of runs: not for one session, not for any two
    (the fixture also counts UNet calls at the model itself)."""
    ordered = sorted(runs, key=lambda run: run.started)
    for before, after in zip(ordered, ordered[1:]):
        assert after.started >= before.ended, (before, after)


def test_live_drag_follows_the_mouse(live_app):
    """Press on the handle, 25 moves, release: the preview moves during the drag, re-drags arrive in
    order, and the last one is the pipeline's edit of the final drag, bit for bit."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    url, holder, live = live_app
    handle, target = tuple(map(int, EXAMPLE_CASE.handle)), tuple(map(int, EXAMPLE_CASE.target))
    frames = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            page.goto(url)
            upload_and_wait_for_inversion(page, ROOT / "examples" / "drag_me.png")
            page.evaluate(RECORDER_JS)

            def snap(step: int) -> None:
                if step % 6 == 0:
                    frames.append(page.locator(".live-drag").screenshot())

            snap(0)
            press_drag_release(page, handle, target, SIDE, moves=25, pause_ms=40, on_move=snap)
            label = wait_for_label(page, f"-> {target} in")
            log = page.evaluate("window.__fastdrag")
            frames.append(page.locator(".live-drag").screenshot())
            shown = np.asarray(shown_image(page, "#fd-live img"))

            # Grab the arrow's head and move it: the same drag, a new target, no new drag.
            regrabbed = (target[0], target[1] + 6)
            press_drag_release(page, target, regrabbed, SIDE, moves=8, pause_ms=40)
            wait_for_label(page, f"{handle} -> {regrabbed} in")
            wait_text(page, "#info", r"1 drag\(s\)")
            shown_again = np.asarray(shown_image(page, "#fd-live img"))
        finally:
            browser.close()

    during = [t for t, _ in log["previews"] if t < log["released"]]
    assert len(during) >= 3, log["previews"]  # the preview followed the mouse while the button was held
    numbers = edit_numbers(log["labels"])
    assert len(numbers) >= 2 and numbers == sorted(set(numbers)), log["labels"]  # several, in order
    assert label.startswith(f"Live edit {numbers[-1]}: {handle} -> {target}")
    image = editor_image(ROOT / "examples" / "drag_me.png")
    assert np.array_equal(shown, direct_edit(holder, image, handle, target))
    assert np.array_equal(shown_again, direct_edit(holder, image, handle, regrabbed))
    assert_one_run_at_a_time(live.jobs.runs)
    assert {run.key for run in live.jobs.runs} == {next(iter({run.key for run in live.jobs.runs}))}

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    images = [Image.open(io.BytesIO(frame)).convert("RGB") for frame in frames]
    gif = ARTIFACTS / "live-drag.gif"
    images[0].save(gif, save_all=True, append_images=images[1:] + [images[-1]] * 3, duration=400, loop=0)
    (ARTIFACTS / "live-drag.txt").write_text(
        f"labels: {log['labels']}\nruns: {list(live.jobs.runs)}\ndropped: {live.jobs.dropped}\n")
    if os.environ.get("FASTDRAG_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(gif, ROOT / "docs" / "images" / "live-drag.gif")


def test_two_sessions_dragging_at_once_see_only_their_own_results(live_app):
    """Two browser sessions drag different images at the same time, moves interleaved: each page
    shows only its own re-drags, and each ends with the pipeline's edit of its own final drag."""
    from playwright.sync_api import sync_playwright

    url, holder, live = live_app
    cases = {"drag_me": (ROOT / "examples" / "drag_me.png", (22, 30), (34, 30)),
             "shapes": (ROOT / "examples" / "shapes.png", (26, 32), (38, 20))}
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            pages = {}
            for name, (path, _, _) in cases.items():
                page = browser.new_context(viewport={"width": 1400, "height": 1250}).new_page()
                page.goto(url)
                upload_and_wait_for_inversion(page, path)
                page.evaluate(RECORDER_JS)
                pages[name] = page
            for name, page in pages.items():
                page.mouse.move(*canvas_position(page, *cases[name][1], SIDE))
                page.mouse.down()
            moves = 20
            for i in range(1, moves + 1):
                for name, page in pages.items():
                    (hx, hy), (tx, ty) = cases[name][1], cases[name][2]
                    page.mouse.move(*canvas_position(page, hx + (tx - hx) * i / moves, hy + (ty - hy) * i / moves, SIDE))
                    page.wait_for_timeout(20)
            for page in pages.values():
                page.mouse.up()
            shown, logs = {}, {}
            for name, page in pages.items():
                wait_for_label(page, f"-> {cases[name][2]} in")
                logs[name] = page.evaluate("window.__fastdrag")
                shown[name] = np.asarray(shown_image(page, "#fd-live img"))
        finally:
            browser.close()

    for name, (path, handle, target) in cases.items():
        other = next(case for key, case in cases.items() if key != name)
        texts = [text for _, text in logs[name]["labels"] if text.startswith("Live edit")]
        assert texts and all(f"{handle} -> " in text for text in texts), texts  # its own drag only
        assert not any(f"{other[1]} -> " in text for text in texts)
        numbers = edit_numbers(logs[name]["labels"])
        assert numbers == sorted(set(numbers))
        assert np.array_equal(shown[name], direct_edit(holder, editor_image(path), handle, target))
    assert_one_run_at_a_time(live.jobs.runs)
    assert len({run.key for run in live.jobs.runs}) == 2
