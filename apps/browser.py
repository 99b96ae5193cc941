"""Driving the editor in headless Chromium with Playwright: what the browser tests
(``tests/test_app_browser.py``) and the live-drag benchmark (``benchmarks/bench_live_drag.py``) share.

Needs Playwright and a Chromium (``FASTDRAG_CHROMIUM``, default Debian's ``/usr/bin/chromium``).
Points are image pixels ``(x, y)``.
"""

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from .app import PipelineHolder, build_app, launch


CHROMIUM_FLAGS = [
    # Chromium as root in a sandbox with no network: no sandbox, no GPU, no background connections.
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CANVAS = "#fd-points canvas"
LABEL = "#fd-live-label"

# Installed in the page before a drag: logs, with `performance.now()` milliseconds, every new
# preview, every new live-edit label, every mouse move and the last press and release, so that a
# test or a benchmark reads what the page showed and when.
RECORDER_JS = """() => {
  const log = window.__fastdrag = {previews: [], labels: [], moves: [], pressed: null, released: null};
  const preview = document.querySelector('#fd-preview img');
  new MutationObserver(() => log.previews.push([performance.now(), preview.src.length]))
    .observe(preview, {attributes: true, attributeFilter: ['src']});
  const label = document.querySelector('#fd-live-label');
  new MutationObserver(() => log.labels.push([performance.now(), label.textContent]))
    .observe(label, {childList: true, characterData: true, subtree: true});
  document.addEventListener('pointermove', () => log.moves.push(performance.now()), true);
  document.addEventListener('pointerdown', () => { log.pressed = performance.now(); }, true);
  document.addEventListener('pointerup', () => { log.released = performance.now(); }, true);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(holder: PipelineHolder, max_side: int, live=None) -> Iterator[str]:
    """The editor for ``holder`` on a free localhost port; yields its URL."""
    demo = build_app(holder, max_side=max_side, live=live)
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def upload(page, path: Path) -> None:
    """Give the editor a file. Its canvas is built after the page loads, and a file given before
    that is dropped without an event: so wait for the canvas, and give the file again if the page
    has not answered within 20 s (at most 3 times)."""
    page.wait_for_selector("#editor canvas")
    for _ in range(3):
        page.locator("#editor input[type=file]").set_input_files(str(path))
        with contextlib.suppress(Exception):  # playwright's TimeoutError: give the file again
            page.wait_for_function("!document.querySelector('#info').innerText.startsWith('Upload')",
                                   timeout=20_000)
            return


def upload_and_wait_for_inversion(page, path: Path, timeout_ms: float = 120_000, ready: str = "Inversion ready") -> None:
    """:func:`upload`, then wait until the background inversion is ready (until the live label shows
    ``ready``: "Live edit is off" when the page's live edit is unchecked)."""
    upload(page, path)
    wait_for_label(page, ready, timeout_ms)


def canvas_position(page, x: float, y: float, side: tuple[int, int]) -> tuple[float, float]:
    """The page position of the centre of image pixel ``(x, y)`` on the drag canvas; ``side`` is
    the image's ``(width, height)``."""
    box = page.locator(CANVAS).bounding_box()
    return box["x"] + (x + 0.5) * box["width"] / side[0], box["y"] + (y + 0.5) * box["height"] / side[1]


def drag_path(handle, target, moves: int) -> list[tuple[float, float]]:
    """The ``moves`` positions (image ``(x, y)``) of an even drag from ``handle`` to ``target``."""
    return [(handle[0] + (target[0] - handle[0]) * i / moves, handle[1] + (target[1] - handle[1]) * i / moves)
            for i in range(1, moves + 1)]


def pixels_visited(handle, target, moves: int) -> int:
    """How many times the drag's pixel changes on the way: the positions the page sends."""
    path = [(int(x), int(y)) for x, y in [tuple(handle), *drag_path(handle, target, moves)]]
    return sum(a != b for a, b in zip(path, path[1:]))


def press_drag_release(page, handle, target, side: tuple[int, int], moves: int = 25, pause_ms: float = 40,
                       on_move=None) -> None:
    """Press at ``handle``, move to ``target`` along :func:`drag_path` (``pause_ms`` apart, calling
    ``on_move(i)`` after move ``i``), release."""
    page.mouse.move(*canvas_position(page, *handle, side))
    page.mouse.down()
    for i, (x, y) in enumerate(drag_path(handle, target, moves), start=1):
        page.mouse.move(*canvas_position(page, x, y, side))
        page.wait_for_timeout(pause_ms)
        if on_move is not None:
            on_move(i)
    page.mouse.up()


def wait_for_label(page, text: str, timeout_ms: float = 120_000) -> str:
    """Wait until the live-edit label contains ``text``; return the label."""
    page.wait_for_function("([s, t]) => document.querySelector(s).innerText.includes(t)", arg=[LABEL, text],
                           timeout=timeout_ms)
    return page.locator(LABEL).inner_text()


def shown_image(page, selector: str):
    """The image an ``img`` shows (a ``data:`` URL or a served file), as an RGB PIL image."""
    from urllib.parse import urljoin

    src = page.locator(selector).get_attribute("src")
    if src.startswith("data:"):
        return image_from_data_url(src)
    return open_image_bytes(page.request.get(urljoin(page.url, src)).body())


def image_from_data_url(url: str):
    """The RGB PIL image of a base64 ``data:`` URL (``app.data_url`` makes them)."""
    import base64

    if not url.startswith("data:image/png;base64,"):
        raise ValueError(f"not a PNG data URL: {url[:40]!r}")
    return open_image_bytes(base64.b64decode(url.split(",", 1)[1]))


def open_image_bytes(data: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
