"""``fastdrag app``: a drag editor in the browser (Gradio, the ``[app]`` extra).

1. Upload an image (resized so its longest side is at most ``max_side``, each side a multiple of
   the VAE scale factor) and paint the region that may move; no paint means the whole image.
2. Click a handle, then its target, as many times as you like: numbered arrows are drawn, and the
   pixel-space preview (:func:`frontend.preview_drag`) follows at once. Undo and Clear fix mistakes.
   In the move and copy modes one drag moves (or copies) the painted object.
3. Run shows the edit beside the original, with the time of each phase. Another Run on the same
   image (and prompt, steps, strength, consistency), from any tab, reuses the cached inversion:
   only the warp, sampling and decoding run. Inversions are kept server-wide, least recently used
   evicted first past a byte budget (``fastdrag app --cache``).

The handlers are plain functions of a per-browser-session :class:`Session`, tested without a
browser; :func:`build_app` wires them to Gradio components.
"""


import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..inputs import DEFAULT_MODE, EDIT_MODES, FILL_MODES, MAX_UPLOAD_PIXELS, check_pixel_count, to_rgb
from .frontend import draw_arrows, first_line, format_phases, preview_drag
from .options import EditOptions


DEFAULT_MAX_SIDE = 512
DEFAULT_FACTOR = 8
MIN_MAX_SIDE = DEFAULT_FACTOR  # one latent pixel of Stable Diffusion's VAE: nothing smaller can be edited
DEFAULT_CACHE_MIB = 2048  # about ten SD 1.5 inversions at 512x512 in fp16
VIEW_SIDE = 512  # smaller images are shown enlarged by an integer factor up to this
DEFAULTS = EditOptions()  # the Advanced settings' initial values


class AppError(Exception):
    """A problem the user can fix or should know of: shown in the page, never as a traceback."""


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def fit_size(width: int, height: int, max_side: int, factor: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so the longest side is at most ``max_side`` (never up), each
    side then rounded down to a multiple of ``factor`` (at least ``factor``)."""
    scale = min(1.0, max_side / max(width, height))
    return (max(factor, int(width * scale) // factor * factor), max(factor, int(height * scale) // factor * factor))


def painted_mask(layers: list, size: tuple[int, int]) -> np.ndarray | None:
    """The union of the brush layers' painted pixels as an ``(H, W)`` bool mask at ``size``
    ``(width, height)``, or ``None`` when nothing is painted."""
    painted = None
    for layer in layers or []:
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            continue
        alpha = layer[..., 3] > 0
        painted = alpha if painted is None or painted.shape != alpha.shape else painted | alpha
    if painted is None or not painted.any():
        return None
    resized = Image.fromarray(painted.astype(np.uint8) * 255).resize(size, Image.NEAREST)
    return np.asarray(resized) > 0


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# The per-session state and its handlers
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    """One browser tab's state. ``points`` are image pixels ``(x, y)``: handle, target, handle, ..."""

    image: np.ndarray | None = None  # (H, W, 3) uint8, already resized
    mask: np.ndarray | None = None  # (H, W) bool, or None for the whole image
    points: list[tuple[int, int]] = field(default_factory=list)
    mode: str = DEFAULT_MODE  # "drag", or "move"/"copy" the painted object by one drag

    @property
    def drags(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        return list(zip(self.points[0::2], self.points[1::2]))

    @property
    def moves_an_object(self) -> bool:
        return self.mode != "drag"


def view_zoom(image: np.ndarray) -> int:
    """The integer factor a small image is enlarged by for clicking (Gradio maps clicks only on
    images shown at most at their natural size, so the enlargement is done here, not in CSS)."""
    return max(1, VIEW_SIDE // max(image.shape[:2]))


def points_view(session: Session) -> np.ndarray | None:
    """The image enlarged by :func:`view_zoom`, dimmed outside the mask, with the numbered drags
    and a pending handle drawn at the centres of their pixels."""
    if session.image is None:
        return None
    image = session.image.astype(np.float32)
    if session.mask is not None:
        image = np.where(session.mask[..., None], image, image * 0.45 + 255 * 0.1)
    zoom = view_zoom(session.image)
    view = Image.fromarray(image.astype(np.uint8))
    view = view.resize((view.width * zoom, view.height * zoom), Image.NEAREST)

    def centre(point):
        return ((point[0] + 0.5) * zoom, (point[1] + 0.5) * zoom)

    drags = [(centre(h), centre(t)) for h, t in session.drags]
    pending = centre(session.points[-1]) if len(session.points) % 2 else None
    return np.asarray(draw_arrows(view, drags, pending))


def preview_view(session: Session) -> np.ndarray | None:
    """The pixel-space warp of the complete drags (the image itself when there are none)."""
    if session.image is None:
        return None
    if not session.drags or (session.moves_an_object and session.mask is None):
        return session.image
    drags = session.drags
    out = preview_drag(Image.fromarray(session.image), session.mask, [d[0] for d in drags], [d[1] for d in drags],
                       mode=session.mode)
    return np.asarray(out)


def points_text(session: Session) -> str:
    if session.image is None:
        return "Upload an image first."
    height, width = session.image.shape[:2]
    region = "whole image" if session.mask is None else f"{int(session.mask.sum())} px painted"
    pending = " Click the target of the last handle." if len(session.points) % 2 else " Click a handle."
    if session.moves_an_object:
        pending = (f" Paint the object to {session.mode}." if session.mask is None
                   else " Click where it goes." if len(session.points) % 2 else " Click a point of the object.")
    return f"{width}x{height} image, mask: {region}, {len(session.drags)} drag(s).{pending}"


def editor_background(value: Any) -> np.ndarray | None:
    """The uploaded image of an ImageEditor value (a dict, or a bare image), or None."""
    background = value.get("background") if isinstance(value, dict) else value
    if background is None or np.asarray(background).size == 0:
        return None
    return np.asarray(background)


def load_editor_value(session: Session, value: Any, max_side: int, factor: int,
                      max_pixels: int = MAX_UPLOAD_PIXELS) -> Session:
    """A new editor value (upload, brush stroke, or an edit used as input): the image resized, the
    mask read from the brush. Every image enters the editor here, so every one is fitted alike.

    A different image drops the points; painting keeps them. An image of more than ``max_pixels``
    pixels is an :class:`AppError` (it would cost its size again at each stroke).
    """
    background = editor_background(value)
    if background is None:
        return session
    try:
        check_pixel_count(background.shape[:2], max_pixels, "the image",
                          f"start the editor with a larger --max-pixels (now {max_pixels})")
    except ValueError as error:
        raise AppError(str(error)) from error
    original = to_rgb(Image.fromarray(np.asarray(background, dtype=np.uint8)))
    size = fit_size(*original.size, max_side, factor)
    image = np.asarray(original.resize(size, Image.LANCZOS) if size != original.size else original)
    layers = value.get("layers", []) if isinstance(value, dict) else []
    mask = painted_mask(layers, size)
    if session.image is None or image.shape != session.image.shape or not np.array_equal(image, session.image):
        return Session(image=image, mask=mask, mode=session.mode)
    session.mask = mask
    return session


def use_as_input(result: Any, mode: str, max_side: int, factor: int, max_pixels: int = MAX_UPLOAD_PIXELS) -> Session:
    """A new session on an edited image ("Use as input"), fitted as an upload is: before, this
    path skipped ``max_side``, and one request could load any size into a session."""
    image = np.asarray(result, dtype=np.uint8)[..., :3]
    return load_editor_value(Session(mode=mode), {"background": image, "layers": []}, max_side, factor, max_pixels)


def add_point(session: Session, x: int, y: int) -> Session:
    """Add the image pixel ``(x, y)`` (clamped to the image) as the next handle or target. Moving or
    copying takes one drag: a click after a complete one starts it again."""
    if session.image is None:
        return session
    if session.moves_an_object and len(session.points) >= 2:
        session.points.clear()
    height, width = session.image.shape[:2]
    session.points.append((min(max(int(x), 0), width - 1), min(max(int(y), 0), height - 1)))
    return session


def set_mode(session: Session, mode: str) -> Session:
    """Switch between dragging and moving or copying the object (which keeps only the first drag)."""
    session.mode = mode
    if session.moves_an_object:
        del session.points[2:]
    return session


def undo_point(session: Session) -> Session:
    if session.points:
        session.points.pop()
    return session


def clear_points(session: Session) -> Session:
    session.points.clear()
    return session


class InversionCache:
    """The server's cached inversions, keyed by image, prompt, steps, strength and consistency.

    Shared by every tab. Past ``budget`` bytes the least recently used are dropped, and with them
    the memory they held (on the GPU too: the tensors go back to PyTorch's allocator).
    """

    def __init__(self, budget: int):
        self.budget = budget
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return sum(inversion.nbytes for inversion in self._items.values())

    def get(self, key: tuple):
        with self._lock:
            inversion = self._items.get(key)
            if inversion is not None:
                self._items.move_to_end(key)
            return inversion

    def put(self, key: tuple, inversion) -> None:
        """Keep ``inversion``, evicting the least recently used until the budget holds; one larger
        than the whole budget is not kept."""
        with self._lock:
            self._items.pop(key, None)
            if inversion.nbytes > self.budget:
                return
            self._items[key] = inversion
            total = sum(item.nbytes for item in self._items.values())
            while total > self.budget:
                _, evicted = self._items.popitem(last=False)
                total -= evicted.nbytes


class PipelineHolder:
    """Loads the pipeline on first use, once, and remembers a failure to report it in the page.
    It also holds the server's :class:`InversionCache` (``cache_mib`` MiB)."""

    def __init__(self, load: Callable[[], Any], cache_mib: int = DEFAULT_CACHE_MIB):
        self._load, self._pipe, self._error, self._lock = load, None, None, threading.Lock()
        self.inversions = InversionCache(cache_mib * 2**20)

    def get(self):
        with self._lock:
            if self._pipe is None and self._error is None:
                try:
                    self._pipe = self._load()
                    self._pipe.set_progress_bar_config(disable=True)
                except Exception as error:  # noqa: BLE001 - any load failure is reported, the app lives on
                    self._error = first_line(error)
            if self._error is not None:
                raise AppError(f"the model could not be loaded: {self._error}")
            return self._pipe

    @property
    def factor(self) -> int:
        return self._pipe.vae_scale_factor if self._pipe is not None else DEFAULT_FACTOR


@dataclass
class EditResult:
    image: np.ndarray
    seconds: float
    times: dict[str, float]
    reused: bool

    def status(self) -> str:
        how = ("cached inversion reused: only the warp, sampling and decoding ran" if self.reused
               else "inverted this image; the next Run on it reuses the inversion")
        return f"**Edited in {self.seconds:.2f} s** ({how}).  \n{format_phases(self.times)}"


def edit_session(holder: PipelineHolder, session: Session, options: EditOptions) -> EditResult:
    """Edit the session's image with its drags in its mode (``options.mode`` gives way to the
    session's), inverting only when no cached inversion has the same image and inversion options."""
    if session.image is None:
        raise AppError("upload an image first")
    if not session.drags:
        raise AppError("add at least one drag: click a handle point, then its target point")
    pipe = holder.get()
    options = options.replace(mode=session.mode)
    key = (image_key(session.image), *sorted(options.inversion_kwargs().items()))
    inversion = holder.inversions.get(key)
    reused = inversion is not None
    start = time.perf_counter()
    try:
        with pipe.timing_phases() as times:
            if inversion is None:
                inversion = pipe.invert(session.image, **options.inversion_kwargs())
                holder.inversions.put(key, inversion)
            out = pipe(handle_points=[d[0] for d in session.drags], target_points=[d[1] for d in session.drags],
                       mask=session.mask, **options.pipeline_kwargs(inversion), output_type="np")
    except (ValueError, TypeError) as error:
        raise AppError(str(error)) from error
    image = (out.images[0] * 255).round().astype(np.uint8)
    return EditResult(image=image, seconds=time.perf_counter() - start, times=dict(times), reused=reused)


def page_options(prompt: str, steps: float, strength: float, fill: str, consistency: bool) -> EditOptions:
    """The page's Advanced settings as :class:`EditOptions` (sliders give floats)."""
    return EditOptions(prompt=prompt, num_inference_steps=int(steps), inversion_strength=float(strength), fill=fill,
                       preserve_consistency=bool(consistency))


# --------------------------------------------------------------------------------------------
# The Gradio page
# --------------------------------------------------------------------------------------------


# Display-only images are enlarged when small. Not the points view: Gradio maps a click on an image
# shown larger than its natural size to the wrong pixel, so that one is enlarged by points_view.
CSS = """
#preview img, #original img, #result img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
"""


def build_app(holder: PipelineHolder, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = MAX_UPLOAD_PIXELS):
    # A local editor sends nothing anywhere: Gradio's usage analytics are off, by the variable
    # (read when gradio is imported, and by its launch) and on the Blocks.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    def views(session: Session):
        return session, points_view(session), preview_view(session), points_text(session)

    def on_editor(value, session: Session):
        if editor_background(value) is None:
            # An empty value comes with `change` as an upload starts; writing the state back then
            # could overwrite the upload's own update if it finished first.
            return (gr.skip(),) * 4
        try:
            return views(load_editor_value(session, value, max_side, holder.factor, max_pixels))
        except AppError as error:
            return gr.skip(), gr.skip(), gr.skip(), f"**Error:** {error}"

    def on_click(session: Session, event: gr.SelectData):
        if session.image is None:
            return views(session)
        zoom = view_zoom(session.image)
        x, y = event.index  # pixels of the enlarged view
        return views(add_point(session, x // zoom, y // zoom))

    def on_run(session: Session, prompt, steps, strength, fill, consistency):
        # The session is read, never written back: an upload or a click made while this Run works
        # must survive it.
        image = session.image
        try:
            result = edit_session(holder, session, page_options(prompt, steps, strength, fill, consistency))
        except AppError as error:
            return gr.skip(), gr.skip(), f"**Error:** {error}"
        except Exception as error:  # noqa: BLE001 - the page shows one line; the app keeps running
            return gr.skip(), gr.skip(), f"**Error:** unexpected {type(error).__name__}: {error}"
        return image, result.image, result.status()

    def on_use_as_input(result, mode: str):
        if result is None:
            return gr.skip(), Session(mode=mode), None, None, "Run an edit first."
        try:
            session = use_as_input(result, mode, max_side, holder.factor, max_pixels)
        except AppError as error:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), f"**Error:** {error}"
        value = {"background": session.image, "layers": [], "composite": session.image}
        return value, *views(session)

    with gr.Blocks(title="FastDrag", analytics_enabled=False) as demo:
        session = gr.State(Session())
        gr.Markdown("# FastDrag\nOne-step drag editing. **1.** Upload an image and paint the region that may "
                    "move (or leave it unpainted: the whole image). **2.** Click a handle, then its target. "
                    "**3.** Run. To move or copy an object instead, pick the mode, paint the object and give "
                    "one drag.")
        with gr.Row():
            editor = gr.ImageEditor(label="1. Image and mask (paint the movable region)", type="numpy",
                                    sources=["upload", "clipboard"], transforms=(), layers=False,
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), elem_id="editor")
            points = gr.Image(label="2. Click handle, then target", type="numpy", interactive=False,
                              elem_id="points", format="png", height=320)
            preview = gr.Image(label="Preview (pixels moved directly)", type="numpy", interactive=False,
                               elem_id="preview", format="png", height=320)
        info = gr.Markdown("Upload an image first.", elem_id="info")
        with gr.Row():
            mode = gr.Radio(list(EDIT_MODES), value=DEFAULT_MODE, label="Mode", elem_id="mode")
            undo = gr.Button("Undo last point", elem_id="undo")
            clear = gr.Button("Clear points", elem_id="clear")
            run = gr.Button("Run", variant="primary", elem_id="run")
        with gr.Accordion("Advanced", open=False):
            prompt = gr.Textbox(label="Prompt", value=DEFAULTS.prompt)
            steps = gr.Slider(2, 50, value=DEFAULTS.num_inference_steps, step=1, label="Steps")
            strength = gr.Slider(0.05, 1.0, value=DEFAULTS.inversion_strength, step=0.05, label="Inversion strength")
            fill = gr.Dropdown(list(FILL_MODES), value=DEFAULTS.fill, label="Fill")
            consistency = gr.Checkbox(value=DEFAULTS.preserve_consistency, label="Consistency (replay keys/values)")
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            original = gr.Image(label="Original", type="numpy", interactive=False, format="png", elem_id="original", height=360)
            result = gr.Image(label="Edited", type="numpy", interactive=False, format="png", elem_id="result",
                              height=360, buttons=["download"])
        use = gr.Button("Use as input", elem_id="use")

        outputs = [session, points, preview, info]
        # `upload` brings the image, `change` and `apply` the brush layers.
        for event in (editor.upload, editor.change, editor.apply):
            event(on_editor, [editor, session], outputs)
        editor.clear(lambda m: views(Session(mode=m)), [mode], outputs)
        mode.change(lambda s, m: views(set_mode(s, m)), [session, mode], outputs)
        points.select(on_click, [session], outputs)
        undo.click(lambda s: views(undo_point(s)), [session], outputs)
        clear.click(lambda s: views(clear_points(s)), [session], outputs)
        run.click(on_run, [session, prompt, steps, strength, fill, consistency], [original, result, status])
        use.click(on_use_as_input, [result, mode], [editor, *outputs])
    return demo


def launch(demo, **kwargs):
    """``demo.launch`` with the app's CSS (Gradio 6 takes it at launch, not in ``Blocks``)."""
    return demo.launch(css=CSS, **kwargs)
