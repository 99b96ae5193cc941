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


import asyncio
import base64
import dataclasses
import hashlib
import io
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..inputs import (
    DEFAULT_MODE,
    EDIT_MODES,
    FILL_MODES,
    MAX_DRAGS,
    MAX_UPLOAD_PIXELS,
    check_pixel_count,
    short_repr,
    to_rgb,
)
from .frontend import first_line, format_phases, preview_drag
from .live import Finished, LatestWins
from .options import EditOptions


DEFAULT_MAX_SIDE = 512
DEFAULT_FACTOR = 8
MIN_MAX_SIDE = DEFAULT_FACTOR  # one latent pixel of Stable Diffusion's VAE: nothing smaller can be edited
DEFAULT_CACHE_MIB = 2048  # about ten SD 1.5 inversions at 512x512 in fp16
VIEW_SIDE = 512  # smaller images are shown enlarged by an integer factor up to this
DEFAULTS = EditOptions()  # the Advanced settings' initial values
POLL_SECONDS = 5.0  # how long one request of the page waits for a live result before asking again
POLL_INTERVAL = 0.02  # how often a waiting request looks for a result, in seconds
MAX_LIVE_SESSIONS = 64  # browser sessions live drag keeps (each with an image and one result)
MAX_TOKEN_CHARS = 64


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
    """One browser tab's state. ``points`` are image pixels ``(x, y)``: handle, target, handle, ...

    ``options`` are the page's Advanced settings and ``live`` its live-edit switch, as live drag
    uses them; ``token`` names the session to the page's live-drag requests (see :class:`LiveDrag`).
    """

    image: np.ndarray | None = None  # (H, W, 3) uint8, already resized
    mask: np.ndarray | None = None  # (H, W) bool, or None for the whole image
    points: list[tuple[int, int]] = field(default_factory=list)
    mode: str = DEFAULT_MODE  # "drag", or "move"/"copy" the painted object by one drag
    options: EditOptions = DEFAULTS
    live: bool = True
    token: str = ""

    def snapshot(self) -> "Session":
        """A copy that later clicks, uploads and drags of the tab leave alone (for a job)."""
        return dataclasses.replace(self, points=list(self.points))

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


def points_base(session: Session) -> np.ndarray | None:
    """The image dimmed outside the mask, at its own size: what the page draws the drags on."""
    if session.image is None:
        return None
    if session.mask is None:
        return session.image
    image = session.image.astype(np.float32)
    return np.where(session.mask[..., None], image, image * 0.45 + 255 * 0.1).astype(np.uint8)


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
    """The line under the drag panel: the image, the mask, the drags, what to do next."""
    off = "" if session.live else " Live edit is off."
    if session.image is None:
        return "Upload an image first." + off
    height, width = session.image.shape[:2]
    region = "whole image" if session.mask is None else f"{int(session.mask.sum())} px painted"
    pending = " Click the target of the last handle." if len(session.points) % 2 else " Click a handle."
    if session.moves_an_object:
        pending = (f" Paint the object to {session.mode}." if session.mask is None
                   else " Click where it goes." if len(session.points) % 2 else " Click a point of the object.")
    return f"{width}x{height} image, mask: {region}, {len(session.drags)} drag(s).{pending}{off}"


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
        return dataclasses.replace(session, image=image, mask=mask, points=[], token="")  # a new live session
    session.mask = mask
    return session


def use_as_input(result: Any, session: Session, max_side: int, factor: int,
                 max_pixels: int = MAX_UPLOAD_PIXELS) -> Session:
    """The session on an edited image ("Use as input"), with no mask and no points, fitted as an
    upload is: before, this path skipped ``max_side``, and one request could load any size."""
    image = np.asarray(result, dtype=np.uint8)[..., :3]
    return load_editor_value(dataclasses.replace(session, image=None, mask=None, points=[]),
                             {"background": image, "layers": []}, max_side, factor, max_pixels)


def clamped(session: Session, x: int, y: int) -> tuple[int, int]:
    """The image pixel ``(x, y)`` moved into the session's image."""
    height, width = session.image.shape[:2]
    return min(max(int(x), 0), width - 1), min(max(int(y), 0), height - 1)


def add_point(session: Session, x: int, y: int) -> Session:
    """Add the image pixel ``(x, y)`` (clamped to the image) as the next handle or target. Moving or
    copying takes one drag: a click after a complete one starts it again."""
    if session.image is None:
        return session
    if session.moves_an_object and len(session.points) >= 2:
        session.points.clear()
    session.points.append(clamped(session, x, y))
    return session


def set_points(session: Session, points: list[tuple[int, int]]) -> Session:
    """Replace the points with ``points`` (image pixels ``(x, y)``, clamped to the image), as the
    page's live drag sends them; moving or copying keeps the first drag only."""
    if session.image is None:
        return session
    points = [clamped(session, x, y) for x, y in points]
    session.points = points[:2] if session.moves_an_object else points
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


def inversion_key(image: np.ndarray, options: EditOptions) -> tuple:
    """What a cached inversion is kept under: the image and what it is inverted with."""
    return (image_key(image), *sorted(options.inversion_kwargs().items()))


def prepare_inversion(holder: PipelineHolder, image: np.ndarray, options: EditOptions) -> bool:
    """Invert ``image`` into the server's cache unless it is there already; ``True`` if it inverted."""
    pipe = holder.get()
    key = inversion_key(image, options)
    if holder.inversions.get(key) is not None:
        return False
    try:
        holder.inversions.put(key, pipe.invert(image, **options.inversion_kwargs()))
    except (ValueError, TypeError) as error:
        raise AppError(str(error)) from error
    return True


def edit_session(holder: PipelineHolder, session: Session, options: EditOptions) -> EditResult:
    """Edit the session's image with its drags in its mode (``options.mode`` gives way to the
    session's), inverting only when no cached inversion has the same image and inversion options."""
    if session.image is None:
        raise AppError("upload an image first")
    if not session.drags:
        raise AppError("add at least one drag: click a handle point, then its target point")
    pipe = holder.get()
    options = options.replace(mode=session.mode)
    key = inversion_key(session.image, options)
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
# Live drag
# --------------------------------------------------------------------------------------------


def data_url(image: np.ndarray) -> str:
    """An ``(H, W, 3)`` uint8 array as a PNG ``data:`` URL: lossless, so the page shows the exact pixels."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def drags_text(drags: list[tuple[tuple[int, int], tuple[int, int]]]) -> str:
    """``"(26, 32) -> (40, 40), ..."``: the drags as the page labels a result with them, ``(x, y)``."""
    return ", ".join(f"({hx}, {hy}) -> ({tx}, {ty})" for (hx, hy), (tx, ty) in drags)


@dataclass(frozen=True)
class LiveOutcome:
    """A finished live job: the drags it edited (none for an inversion alone) and the edit, or
    whether the inversion had to be made."""

    drags: list
    edit: EditResult | None = None
    inverted: bool = False


def parse_live_message(message: Any, *names: str) -> dict[str, Any]:
    """A live request's fields, checked: the page's requests come from the outside world, so a
    malformed one is an :class:`AppError` and each field has a bound. ``token`` is a string of at
    most 64 characters, ``points`` at most ``2 * MAX_DRAGS`` pairs of integers ``[x, y]`` (clamped
    to the image later), ``after`` an integer from 0."""
    if not isinstance(message, dict):
        raise AppError("a live request must be an object")
    fields = {}
    for name in names:
        value = message.get(name)
        if name == "token":
            ok = isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_CHARS
        elif name == "points":
            ok = (isinstance(value, list) and len(value) <= 2 * MAX_DRAGS
                  and all(isinstance(p, list) and len(p) == 2 and all(_is_int(c) for c in p) for p in value))
        else:
            ok = _is_int(value) and value >= 0
        if not ok:
            raise AppError(f"bad live request: `{name}` is {short_repr(value)}")
        fields[name] = value
    return fields


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**31


class LiveDrag:
    """The editor's live drag. While the mouse button is held, the page sends the points at each
    move (:meth:`move`): the answer is the pixel preview, and, when the edit changed, a re-drag is
    submitted. The page asks for finished re-drags with :meth:`poll`. Any other change of a session
    (an upload, paint, undo, a setting) goes through :meth:`update`: the first one of an image
    inverts it in the background.

    Re-drags run on one :class:`~fastdrag.apps.live.LatestWins` worker (``self.jobs``), one UNet call
    sequence at a time: each session's newest request wins, sessions take turns, each sees only its
    own results. A re-drag starts from the server's cached inversion (:func:`edit_session`).

    This object owns the sessions' lifetimes, under one lock: a session is found by its token, at
    most ``max_sessions`` are kept, and the least recently used is dropped past that (its page is
    told to reload; if it comes back, it gets a new token). A session with another image is another
    live session: :func:`load_editor_value` gives it no token, and the page's handler forgets the old.
    """

    def __init__(self, holder: PipelineHolder, max_sessions: int = MAX_LIVE_SESSIONS):
        self.holder = holder
        self.jobs = LatestWins(self._run, describe_error=first_line)
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._edits: dict[str, tuple] = {}  # token -> (job number, what its newest job edits)
        self._max_sessions = max_sessions
        self._lock = threading.Lock()

    def register(self, session: Session) -> Session:
        """Make ``session`` the one its token names (giving it a token if it has none)."""
        with self._lock:
            if not session.token:
                session.token = secrets.token_urlsafe(16)
            self._sessions[session.token] = session
            self._sessions.move_to_end(session.token)
            while len(self._sessions) > self._max_sessions:
                _, dropped = self._sessions.popitem(last=False)
                self._drop(dropped)
        return session

    def forget(self, session: Session) -> None:
        """Drop a session whose tab closed or whose image was replaced, with its jobs and result."""
        with self._lock:
            if self._sessions.get(session.token) is session:
                del self._sessions[session.token]
                self._drop(session)

    def session(self, token: str) -> Session:
        """The session ``token`` names, now the most recently used."""
        with self._lock:
            session = self._sessions.get(token)
            if session is not None:
                self._sessions.move_to_end(token)
        if session is None:
            raise AppError("this page's session has ended: reload the page")
        return session

    def update(self, session: Session) -> None:
        """Bring the live edit up to date after a change made outside a drag: re-drag the session's
        drags, or, without any, invert its image in the background unless that is cached. Nothing
        when live edit is off or there is no image."""
        if session.live and session.image is not None:
            self._submit(self.register(session))

    def move(self, message: Any) -> dict[str, Any]:
        """The page's points changed (``{"token", "points"}``): set them, submit a re-drag when the
        edit changed, and answer ``{"preview", "points", "job", "busy"}`` (or ``{"error"}``):
        ``job`` is the number of the newest job for the session (0 for none)."""
        try:
            fields = parse_live_message(message, "token", "points")
            session = set_points(self.session(fields["token"]), [tuple(p) for p in fields["points"]])
            preview = preview_view(session)
            job = self._submit(session) if session.live and session.drags else 0
            return {"preview": data_url(preview) if preview is not None else "", "points": session.points,
                    "job": job, "busy": self.jobs.busy(session.token)}
        except (AppError, ValueError) as error:
            return {"error": first_line(error)}

    async def poll(self, message: Any, timeout: float = POLL_SECONDS) -> dict[str, Any]:
        """The session's newest finished job numbered above ``after`` (``{"token", "after"}``),
        waiting up to ``timeout`` seconds while it has work: ``{"busy", "result"}`` (or
        ``{"error"}``), ``result`` being ``{"seq", "label"}`` and, for an edit, ``"image"``.

        A coroutine, so that a page waiting holds no server thread (Gradio runs a coroutine server
        function on its event loop, a plain one on its thread pool of 40)."""
        try:
            fields = parse_live_message(message, "token", "after")
            token = self.session(fields["token"]).token
        except AppError as error:
            return {"error": str(error)}
        deadline = time.monotonic() + timeout
        while True:
            finished = self.jobs.latest(token, fields["after"])
            busy = self.jobs.busy(token)
            if finished is not None or not busy or time.monotonic() >= deadline:
                break
            await asyncio.sleep(POLL_INTERVAL)
        return {"busy": busy, "result": self._result(finished) if finished is not None else None}

    def status(self, session: Session) -> str:
        """What the page says of live drag for this session before any result."""
        if session.image is None:
            return ""
        if not session.live:
            return "Live edit is off: press Run to edit."
        edit = self._edits.get(session.token)
        if self.jobs.busy(session.token) and edit is not None and not edit[1][1]:
            return "Inverting this image in the background..."
        if self._cached(session):
            return "Inversion ready: drag a point and the edit follows."
        return ""

    def view(self, session: Session) -> dict[str, Any]:
        """The drag panel's value: what the page draws and its token (see ``live_drag.js``)."""
        base = points_base(session)
        if base is None:
            return dict(EMPTY_VIEW, mode=session.mode)
        self.register(session)
        preview = preview_view(session)
        return {"token": session.token, "src": data_url(base), "width": base.shape[1], "height": base.shape[0],
                "zoom": view_zoom(base), "points": [list(p) for p in session.points], "mode": session.mode,
                "preview": data_url(preview), "busy": self.jobs.busy(session.token), "status": self.status(session)}

    def close(self) -> None:
        """Run no more jobs (tests; the app's worker ends with its process)."""
        self.jobs.close()

    def _drop(self, session: Session) -> None:
        """Forget a session just removed from ``_sessions`` (under the lock); it loses its token, so
        that if its page comes back it starts again under a new one."""
        self._edits.pop(session.token, None)
        self.jobs.forget(session.token)
        session.token = ""

    def _cached(self, session: Session) -> bool:
        return self.holder.inversions.get(inversion_key(session.image, session.options)) is not None

    def _submit(self, session: Session) -> int:
        """Submit a job for the session as it is now, unless its newest job edits the same or the
        session was dropped meanwhile (then 0); return the number of the session's newest job."""
        edit = (session.image, session.drags, session.mode, _mask_digest(session.mask), session.options)
        with self._lock:
            if self._sessions.get(session.token) is not session:
                return 0
            last = self._edits.get(session.token)
            if last is not None and last[1][0] is edit[0] and last[1][1:] == edit[1:]:
                return last[0]
            if not edit[1] and self._cached(session):
                return last[0] if last is not None else 0  # nothing to re-drag, nothing to invert
            try:
                job = self.jobs.submit(session.token, session.snapshot())
            except RuntimeError as error:  # closed
                raise AppError("the server is shutting down") from error
            self._edits[session.token] = (job, edit)
            return job

    def _run(self, session: Session) -> LiveOutcome:
        if not session.drags:
            return LiveOutcome(drags=[], inverted=prepare_inversion(self.holder, session.image, session.options))
        edit = edit_session(self.holder, session, session.options)
        return LiveOutcome(drags=session.drags, edit=edit, inverted=not edit.reused)

    @staticmethod
    def _result(finished: Finished) -> dict[str, Any]:
        outcome: LiveOutcome | None = finished.value
        if finished.error is not None:
            return {"seq": finished.seq, "label": f"Live edit {finished.seq} failed: {finished.error}"}
        if outcome.edit is None:
            return {"seq": finished.seq, "label": f"Inversion ready ({finished.seconds:.2f} s): drag a point and "
                                                  "the edit follows."}
        how = "inverted first" if outcome.inverted else "from the cached inversion"
        label = f"Live edit {finished.seq}: {drags_text(outcome.drags)} in {outcome.edit.seconds:.2f} s ({how})"
        return {"seq": finished.seq, "image": data_url(outcome.edit.image), "label": label}


EMPTY_VIEW = {"token": "", "src": "", "width": 0, "height": 0, "zoom": 1, "points": [],
              "mode": DEFAULT_MODE, "preview": "", "busy": False, "status": ""}  # the drag panel with no image


def _mask_digest(mask: np.ndarray | None) -> str | None:
    return None if mask is None else hashlib.sha1(np.packbits(mask).tobytes() + str(mask.shape).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# The Gradio page
# --------------------------------------------------------------------------------------------


LIVE_JS = (Path(__file__).with_name("live_drag.js")).read_text(encoding="utf-8")
# The drag panel: the drags drawn on a canvas (live_drag.js), the pixel preview and the live edit.
LIVE_HTML = """
<div class="live-drag">
  <div id="fd-points"><p>2. Drag from a handle to its target (or click both)</p><canvas></canvas></div>
  <div id="fd-preview"><p>Preview (pixels moved directly)</p><img alt=""></div>
  <div id="fd-live"><p>Live edit (follows the drag)</p><img alt=""><p id="fd-live-label"></p></div>
</div>
"""
LIVE_CSS = """
.live-drag { display: flex; gap: 12px; }
.live-drag > div { flex: 1; min-width: 0; }
.live-drag canvas { display: block; max-width: 100%; height: auto; cursor: crosshair; touch-action: none;
    image-rendering: pixelated; }
.live-drag img { width: 100%; max-height: 360px; object-fit: contain; image-rendering: pixelated; }
"""
# Display-only images are enlarged when small.
CSS = """
#original img, #result img {
    width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;
}
"""


def build_app(holder: PipelineHolder, max_side: int = DEFAULT_MAX_SIDE, max_pixels: int = MAX_UPLOAD_PIXELS,
              live: LiveDrag | None = None, live_edit: bool = True):
    """The editor's page. ``live`` (made from ``holder`` when not given) serves its live drag;
    ``live_edit`` is the live-edit switch's initial state in each new page."""
    # A local editor sends nothing anywhere: Gradio's usage analytics are off, by the variable
    # (read when gradio is imported, and by its launch) and on the Blocks.
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio as gr

    live = live or LiveDrag(holder)

    def views(session: Session):
        return session, live.view(session), points_text(session)

    def changed(old: Session, new: Session):
        """The views after a change outside a drag, the live edit brought up to date; a session
        replaced (another image, none) is forgotten."""
        if new is not old:
            live.forget(old)
        live.update(new)
        return views(new)

    def on_editor(value, session: Session):
        if editor_background(value) is None:
            # An empty value comes with `change` as an upload starts; writing the state back then
            # could overwrite the upload's own update if it finished first.
            return (gr.skip(),) * 3
        try:
            return changed(session, load_editor_value(session, value, max_side, holder.factor, max_pixels))
        except AppError as error:
            return gr.skip(), gr.skip(), f"**Error:** {error}"

    def on_options(session: Session, prompt, steps, strength, fill, consistency, live_on):
        session.options = page_options(prompt, steps, strength, fill, consistency)
        session.live = bool(live_on)
        return changed(session, session)

    def on_run(session: Session, prompt, steps, strength, fill, consistency):
        # A snapshot, never written back: an upload or a click made while this Run works must survive it.
        session = session.snapshot()
        try:
            result = edit_session(holder, session, page_options(prompt, steps, strength, fill, consistency))
        except AppError as error:
            return gr.skip(), gr.skip(), f"**Error:** {error}"
        except Exception as error:  # noqa: BLE001 - the page shows one line; the app keeps running
            return gr.skip(), gr.skip(), f"**Error:** unexpected {type(error).__name__}: {error}"
        return session.image, result.image, result.status()

    def on_use_as_input(result, session: Session):
        if result is None:
            return gr.skip(), gr.skip(), gr.skip(), "Run an edit first."
        try:
            new = use_as_input(result, session, max_side, holder.factor, max_pixels)
        except AppError as error:
            return gr.skip(), gr.skip(), gr.skip(), f"**Error:** {error}"
        return {"background": new.image, "layers": [], "composite": new.image}, *changed(session, new)

    with gr.Blocks(title="FastDrag", analytics_enabled=False) as demo:
        session = gr.State(Session(live=live_edit), delete_callback=live.forget)
        gr.Markdown("# FastDrag\nOne-step drag editing. **1.** Upload an image and paint the region that may "
                    "move (or leave it unpainted: the whole image). **2.** Drag from a handle to its target: the "
                    "edit follows the mouse (or click a handle, then its target). **3.** Run for the final edit. "
                    "To move or copy an object instead, pick the mode, paint the object and give one drag.")
        editor = gr.ImageEditor(label="1. Image and mask (paint the movable region)", type="numpy",
                                sources=["upload", "clipboard"], transforms=(), layers=False,
                                brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), elem_id="editor")

        def live_move(message):
            return live.move(message)

        async def live_poll(message):
            return await live.poll(message)

        drag_panel = gr.HTML(EMPTY_VIEW, html_template=LIVE_HTML, css_template=LIVE_CSS,
                             js_on_load=LIVE_JS, server_functions=[live_move, live_poll], elem_id="drag-panel")
        info = gr.Markdown("Upload an image first.", elem_id="info")
        with gr.Row():
            mode = gr.Radio(list(EDIT_MODES), value=DEFAULT_MODE, label="Mode", elem_id="mode")
            live_on = gr.Checkbox(value=live_edit, label="Live edit (re-edit as you drag)", elem_id="live-on")
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

        outputs = [session, drag_panel, info]
        # `upload` brings the image, `change` and `apply` the brush layers.
        for event in (editor.upload, editor.change, editor.apply):
            event(on_editor, [editor, session], outputs)
        editor.clear(lambda s: changed(s, dataclasses.replace(s, image=None, mask=None, points=[], token="")),
                     [session], outputs)
        mode.change(lambda s, m: changed(s, set_mode(s, m)), [session, mode], outputs)
        drag_panel.release(views, [session], outputs)  # the drag's moves submitted its re-drags already
        undo.click(lambda s: changed(s, undo_point(s)), [session], outputs)
        clear.click(lambda s: changed(s, clear_points(s)), [session], outputs)
        settings = [prompt, steps, strength, fill, consistency, live_on]
        for control in settings:
            control.change(on_options, [session, *settings], outputs)
        run.click(on_run, [session, prompt, steps, strength, fill, consistency], [original, result, status])
        use.click(on_use_as_input, [result, session], [editor, *outputs])
    return demo


def launch(demo, **kwargs):
    """``demo.launch`` with the app's CSS (Gradio 6 takes it at launch, not in ``Blocks``)."""
    return demo.launch(css=CSS, **kwargs)
