"""FastDrag's input boundary: images, masks, drags and numbers as callers have them, checked and converted.

Conventions:

* image points are ``(x, y)`` pixels, ``x`` the column and ``y`` the row, as in PIL and DragBench;
* latent points are ``(row, col)`` floats: ``(row, col) = (y, x) / vae_scale_factor``;
* a mask is ``(H, W)``: a pixel may move where the mask is nonzero, or, for a mask with an alpha
  channel that is not fully opaque, where the alpha is nonzero (strokes on a transparent layer).

Images come as Diffusers pipelines take a single image: a PIL image (any mode: 16-bit and palette
images are read by value, transparent ones composited over white), an ``(H, W, 3)`` or
``(1, H, W, 3)`` array (uint8, uint16, or float in [0, 1]), a ``(3, H, W)`` or ``(1, 3, H, W)``
float tensor in [0, 1], or a one-element list of any of these.

The ``check_*`` functions raise ``ValueError``/``TypeError`` naming the argument and the allowed
values; the converters assume checked input. Nothing here runs a model, and this module imports
nothing relative, so Diffusers can copy it beside a local ``custom_pipeline`` file.
"""

import hashlib
import math
import numbers
import re
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F


DEFAULT_STEPS = 10
DEFAULT_STRENGTH = 0.7
# Classifier-free guidance while sampling: off by default, as the method edits; the bound keeps huge
# values (1e308) from overflowing into NaN, far beyond any useful one.
DEFAULT_GUIDANCE_SCALE = 1.0
MAX_GUIDANCE_SCALE = 100.0
# How the pixels the warp leaves empty are filled (docs/method.md section 4).
FILL_MODES = ("bnni", "original", "zeros", "noise")
DEFAULT_FILL = "bnni"
# The one-step latent edits: drag (sections 2-4), and move or copy the masked object (section 8).
EDIT_MODES = ("drag", "move", "copy")
DEFAULT_MODE = "drag"

# Size limits (docs/hostile-inputs.md). Diffusers pipelines cap nothing, but an image or a drag list
# too large to run is better refused at once, naming the limit, than left to fail in an allocation
# (or to the kernel's OOM killer) after minutes. Each limit can be raised where it is applied: the
# pipeline's keyword arguments, `--max-pixels` / `--max-drags`, FASTDRAG_MAX_PIXELS for DragBench.
MAX_IMAGE_PIXELS = 2048 * 2048  # 4 megapixels: at 2048x2048 SD's self-attention spans 65,536 latent tokens
# The editor scales every image down to its --max-side (512) before anything runs, so it takes
# larger files: a 48-megapixel phone photo (144 MB as RGB), not a 12000x12000 bomb.
MAX_UPLOAD_PIXELS = 50_000_000
MAX_DRAGS = 256  # DragBench samples have a few; each drag costs a pass over the latent
# CLIP reads the first 77 tokens; no prompt needs more characters than this, and tokenizing a 4 MB
# one cost 15 s per call. Refused, not cut, so that nobody wonders where their text went.
MAX_PROMPT_CHARS = 10_000

ImagePointsLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # read by value, not clipped to 8 bits
_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def is_integer(value) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A Python or numpy real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_schedule(num_inference_steps, inversion_strength, max_steps: int) -> int:
    """Validate the schedule; return the number of inversion (and sampling) steps,
    ``round(inversion_strength * num_inference_steps)``."""
    if not is_integer(num_inference_steps) or not 1 <= num_inference_steps <= max_steps:
        raise ValueError(
            f"`num_inference_steps` must be an integer >= 1 and <= {max_steps} (the scheduler's training steps), "
            f"got {short_repr(num_inference_steps)}"
        )
    strength = as_finite_float(inversion_strength)
    if strength is None or not 0 < strength <= 1:
        raise ValueError(f"`inversion_strength` must be in (0, 1], got {short_repr(inversion_strength)}")
    steps = round(strength * int(num_inference_steps))
    if steps < 1:
        raise ValueError(
            f"`inversion_strength` * `num_inference_steps` = {inversion_strength} * {num_inference_steps} "
            "rounds to 0 steps; raise either"
        )
    return steps


def as_finite_float(value) -> float | None:
    """``float(value)`` for a real number that is finite as a float, else None.

    A huge int or ``Fraction`` is a real number, but converting it raises ``OverflowError``, and so
    does ``math.isfinite`` on it: the conversion is tried here, once, so no check lets it through.
    """
    if not is_real(value):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def check_real(value, name: str, low: float, high: float) -> float:
    """``value`` as a float, if it is a real number with ``low <= value <= high``."""
    number = as_finite_float(value)
    if number is None or not low <= number <= high:
        raise ValueError(f"`{name}` must be a number with {low:g} <= {name} <= {high:g}, got {short_repr(value)}")
    return number


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a 400-digit number makes no useful message.
    Containers, strings and numbers are cut before they are printed (``reprlib``), so describing a
    list of millions of points costs what describing a short one does."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxlong = shortener.maxother = limit
    text = shortener.repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def check_holds_data(tensor: torch.Tensor, name: str) -> None:
    """A tensor on the ``meta`` device has a shape but no values: nothing can be read from it."""
    if tensor.device.type == "meta":
        raise ValueError(f"`{name}` is on the meta device, which holds no values; pass a tensor on the CPU or a GPU")


SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


def check_seed(seed, name: str = "seed") -> int:
    """A seed ``torch.Generator.manual_seed`` takes: an integer with ``0 <= seed < 2**64``."""
    if not is_integer(seed) or not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be an integer from 0 to {SEED_LIMIT - 1}, got {short_repr(seed)}")
    return int(seed)


def check_text(value, name: str) -> None:
    """``value`` must be a str or None (a single prompt: FastDrag edits one image), of at most
    :data:`MAX_PROMPT_CHARS` characters."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"`{name}` must be a str or None, got {type(value).__name__}")
    if value is not None and len(value) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"`{name}` has {len(value):,} characters; at most {MAX_PROMPT_CHARS:,} are allowed "
            "(CLIP reads only its first 77 tokens)"
        )


def check_limit(value, name: str) -> int:
    """A size limit given by a caller: an integer >= 1."""
    if not is_integer(value) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {short_repr(value)}")
    return int(value)


def check_pixel_count(size: tuple[int, int], max_pixels: int, name: str = "image",
                      how_to_raise: str = "pass `max_image_pixels=` to raise it") -> None:
    """Refuse an image of ``size = (height, width)`` with more than ``max_pixels`` pixels, before
    anything of its size is allocated."""
    height, width = size
    if height * width > max_pixels:
        side = math.isqrt(max_pixels)
        raise ValueError(
            f"{name} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            f"(about {side}x{side}): scale it down, or {how_to_raise}"
        )


def open_image(path, max_pixels: int = MAX_IMAGE_PIXELS,
               how_to_raise: str = "pass a larger `max_pixels` to raise it", upright: bool = True) -> PIL.Image.Image:
    """The image file at ``path``, decoded, turned upright by its EXIF orientation; ``ValueError``
    naming the file when it has more than ``max_pixels`` pixels.

    The size is read from the header before anything is decoded, so a small file that would decode
    to gigabytes (a decompression bomb) costs nothing. PIL's own bomb check (a warning above its
    ``MAX_IMAGE_PIXELS``, an error above twice that) is replaced by this limit; the error is kept
    as a one-line ``ValueError``. EXIF orientation is applied, as photo viewers and editors do, so
    that points are given where the picture is seen (a phone photo is stored sideways); not with
    ``upright=False``, for data whose points and masks were made on the stored pixel grid.
    """
    import warnings

    import PIL.ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)  # checked below, by our limit
            image = PIL.Image.open(path)
    except PIL.Image.DecompressionBombError as error:
        # Above twice PIL's own limit (179 megapixels): the header's size is in PIL's message only.
        declared = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than PIL decodes"
        raise ValueError(
            f"{path} declares {size}, over the limit of {max_pixels:,} and past PIL's own "
            f"({2 * PIL.Image.MAX_IMAGE_PIXELS:,}): it is refused without decoding (a decompression bomb?)"
        ) from None
    try:
        check_pixel_count((image.height, image.width), max_pixels, str(path), how_to_raise)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image.load()
            turned = PIL.ImageOps.exif_transpose(image) if upright else None
    except BaseException:
        image.close()  # the file stays open until the image is loaded or closed
        raise
    return image if turned is None else turned


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _single(value, name: str):
    """Unwrap a one-element list or tuple; refuse a longer one (one image at a time)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"`{name}`: FastDrag edits one image at a time, got a list of {len(value)}")
        value = value[0]
    return value


def _array_hwc(array: np.ndarray | torch.Tensor, name: str) -> tuple[int, int, int]:
    """``(H, W, C)`` of an ``(H, W, C)`` / ``(1, H, W, C)`` array, C in 1, 3, 4; or of ``(H, W)``."""
    shape = tuple(array.shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2:
        shape = (*shape, 1)
    if len(shape) != 3 or shape[2] not in (1, 3, 4):
        raise ValueError(f"`{name}` array must have shape (H, W, 3) or (1, H, W, 3), got {tuple(array.shape)}")
    return shape


def _tensor_chw(tensor: torch.Tensor, name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` of a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor."""
    shape = tuple(tensor.shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or shape[0] != 3:
        raise ValueError(f"`{name}` tensor must have shape (3, H, W) or (1, 3, H, W), got {tuple(tensor.shape)}")
    return shape


def _check_unit_range(values: np.ndarray | torch.Tensor, name: str) -> None:
    """Float values must be finite and lie in [0, 1]. Reads every value."""
    values = torch.as_tensor(values)
    if values.numel() and (not bool(torch.isfinite(values).all()) or values.min() < 0 or values.max() > 1):
        raise ValueError(f"`{name}` values must lie in [0, 1] (or 0..255 for uint8, 0..65535 for uint16) and be finite")


def image_size(image, name: str = "image") -> tuple[int, int]:
    """``(height, width)`` of one image in any accepted form, from its size or shape alone.

    Raises on a form or shape FastDrag does not take; reads no pixel.
    """
    image = _single(image, name)
    if isinstance(image, PIL.Image.Image):
        return image.height, image.width
    if isinstance(image, np.ndarray):
        return _array_hwc(image, name)[:2]
    if isinstance(image, torch.Tensor):
        return _tensor_chw(image, name)[1:]
    raise TypeError(
        f"`{name}` must be a PIL.Image.Image, an (H, W, 3) numpy array or a (3, H, W) torch.Tensor "
        f"(or a list of one), got {type(image).__name__}"
    )


def check_image(image, name: str = "image") -> tuple[int, int]:
    """Check that ``image`` is one image FastDrag can read; return its ``(height, width)``.

    Float arrays and tensors are read to check their range, as are 32-bit and float PIL images.
    """
    size = image_size(image, name)
    image = _single(image, name)
    if isinstance(image, PIL.Image.Image) and image.mode in ("I", "F"):
        low, high = image.getextrema()
        allowed = 65535 if image.mode == "I" else 1
        if not 0 <= low <= high <= allowed:
            raise ValueError(f"`{name}` is a {image.mode}-mode image with values {low}..{high}; allowed: 0..{allowed}")
    elif isinstance(image, np.ndarray) and image.dtype not in (np.uint8, np.uint16):
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"`{name}` array must be uint8, uint16 or float, got {image.dtype}")
        _check_unit_range(image, name)
    elif isinstance(image, torch.Tensor):
        check_holds_data(image, name)
        if not image.is_floating_point():
            raise TypeError(f"`{name}` tensor must be floating point, in [0, 1], got {image.dtype}")
        _check_unit_range(image.detach(), name)
    return size


def _over_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """An image with transparency, composited over white, as RGB."""
    rgba = image.convert("RGBA")
    flat = PIL.Image.new("RGB", rgba.size, _WHITE)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _has_alpha(image: PIL.Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or (image.mode == "P" and image.has_transparency_data)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any PIL image as 8-bit RGB by value: 16-bit and float gray scaled, transparency over white."""
    if image.mode in _WIDE_GRAY_MODES:
        gray = _gray_unit(image)
        return PIL.Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB")
    if _has_alpha(image):
        return _over_white(image)
    return image.convert("RGB")


def _gray_unit(image: PIL.Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float gray image as ``(H, W)`` float32 in [0, 1], by value."""
    array = np.asarray(image).astype(np.float32)
    return array if image.mode == "F" else array / 65535.0


def image_to_tensor(image) -> torch.Tensor:
    """A checked image (see :func:`check_image`) as a ``(1, 3, H, W)`` float32 tensor in [0, 1] on the CPU."""
    image = _single(image, "image")
    if isinstance(image, torch.Tensor):
        return image.detach().reshape(1, *_tensor_chw(image, "image")).float().cpu()
    if isinstance(image, PIL.Image.Image):
        if image.mode in _WIDE_GRAY_MODES:
            image = _gray_unit(image)
        else:
            image = np.asarray(to_rgb(image))
    array = np.asarray(image)
    height, width, channels = _array_hwc(array, "image")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(array.dtype, 1.0)
    values = torch.from_numpy(array.reshape(height, width, channels).astype(np.float32) / np.float32(scale))
    if channels == 4:  # straight alpha over white
        values = values[..., :3] * values[..., 3:] + (1 - values[..., 3:])
    values = values.expand(height, width, 3) if channels == 1 else values
    return values.permute(2, 0, 1)[None].contiguous()


def image_fingerprint(pixels: torch.Tensor) -> str:
    """A digest of a converted image's values: equal for the same picture in any accepted form."""
    return hashlib.blake2b(pixels.detach().cpu().float().contiguous().numpy().tobytes(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def _mask_values(mask) -> torch.Tensor:
    """A mask in any accepted form as a tensor of its values, ``(H, W)`` or ``(H, W, C)``."""
    if isinstance(mask, PIL.Image.Image):
        if _has_alpha(mask):
            mask = mask.convert("RGBA")
        elif mask.mode not in ("1", "L", "RGB", *_WIDE_GRAY_MODES):
            mask = mask.convert("RGB")
        mask = np.asarray(mask)
    if isinstance(mask, np.ndarray):
        if mask.dtype == object or not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
            raise TypeError(f"`mask` array must hold numbers or bools, got {mask.dtype}")
        mask = torch.from_numpy(np.array(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"`mask` must be a PIL image, a numpy array, a torch.Tensor or None, got {type(mask).__name__}")
    check_holds_data(mask, "mask")
    return mask.detach().cpu()


def _squeeze_mask(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(H, W)``, ``(1, H, W)``, ``(1, 1, H, W)``, ``(H, W, 1)`` -> ``(H, W)``; ``(H, W, 3|4)`` kept."""
    shape, size = tuple(values.shape), tuple(size)
    if shape in ((1, *size), (1, 1, *size), (*size, 1)):
        return values.reshape(size)
    if shape == size or (len(shape) == 3 and shape[:2] == size and shape[2] in (3, 4)):
        return values
    raise ValueError(
        f"`mask` must have the image's size (H, W) = {size}, as (H, W), (1, H, W), (H, W, 1), (H, W, 3) or "
        f"(H, W, 4), got {shape}"
    )


def _opaque(dtype: torch.dtype) -> float:
    """The alpha value of a fully opaque pixel: the integer type's maximum, or 1 for floats."""
    return torch.iinfo(dtype).max if not dtype.is_floating_point and dtype != torch.bool else 1


def mask_to_tensor(mask, size: tuple[int, int]) -> torch.Tensor:
    """A mask (PIL, array, tensor, a list of one, or ``None`` for everything) for an image of
    ``size = (H, W)`` as a non-empty ``(H, W)`` bool tensor on the CPU. Raises on a wrong type, a
    wrong size, non-finite values and an empty mask."""
    if mask is None:
        return torch.ones(size, dtype=torch.bool)
    values = _squeeze_mask(_mask_values(_single(mask, "mask")), size)
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise ValueError("`mask` values must be finite: it contains NaN or infinity")
    if values.ndim == 3:
        alpha = values[..., 3] if values.shape[2] == 4 else None
        # Strokes painted on a transparent layer: the alpha says where, the colour does not matter.
        painted_in_alpha = alpha is not None and bool((alpha != _opaque(alpha.dtype)).any())
        values = alpha if painted_in_alpha else values[..., :3].ne(0).any(-1)
    movable = values != 0
    if not bool(movable.any()):
        raise ValueError("`mask` is empty: mark the region that may move with nonzero pixels, or pass None")
    return movable


# --------------------------------------------------------------------------------------------
# Drags
# --------------------------------------------------------------------------------------------


def _is_coordinate(value) -> bool:
    """A real number, or a numeric array or tensor; not a bool, not a string."""
    if isinstance(value, (np.ndarray, torch.Tensor)):  # a row or a number as an array: its shape is checked later
        return _numeric_dtype(value.dtype) and (not isinstance(value, torch.Tensor) or value.device.type != "meta")
    return is_real(value)


def _numeric_dtype(dtype) -> bool:
    """An integer or floating dtype (numpy or torch), not bool: what a coordinate may be."""
    if isinstance(dtype, torch.dtype):
        return dtype != torch.bool and not dtype.is_complex
    return np.dtype(dtype).kind in "iuf"


def _check_coordinate_types(points, name: str) -> None:
    """Refuse strings and bools as coordinates: numpy would convert ``"10"`` and ``True`` silently."""
    if isinstance(points, (np.ndarray, torch.Tensor)):
        if isinstance(points, torch.Tensor):
            check_holds_data(points, name)
        ok = points.dtype == object or _numeric_dtype(points.dtype)
        leaves = points.ravel().tolist() if points.dtype == object else []
    elif isinstance(points, (str, bytes)):
        raise ValueError(f"`{name}` must be a sequence of (x, y) points, got {short_repr(points)}")
    else:
        try:
            rows = list(points)
            leaves = [v for row in rows for v in (row if isinstance(row, Sequence) and not isinstance(row, str) else [row])]
        except TypeError:
            return  # not a sequence: the conversion below says so
        ok = True
    bad = next((v for v in leaves if not _is_coordinate(v) and not isinstance(v, (list, tuple))), None)
    if not ok or bad is not None:
        what = points.dtype if bad is None else f"{type(bad).__name__} {short_repr(bad, 20)}"
        raise TypeError(f"`{name}` must hold numbers (int or float pixels), got {what}")


def as_image_points(points: ImagePointsLike, name: str) -> torch.Tensor:
    """``points`` as a ``(K, 2)`` float32 tensor; raises ``ValueError`` naming ``name``."""
    _check_coordinate_types(points, name)
    try:
        tensor = torch.as_tensor(points.detach() if isinstance(points, torch.Tensor) else np.asarray(points, np.float64))
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a sequence of (x, y) points, got {short_repr(points)}") from error
    tensor = tensor.to(torch.float32).cpu()
    if tensor.numel() == 0:
        tensor = tensor.reshape(0, 2)
    if tensor.ndim == 1 and tensor.numel() == 2:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape[1] != 2:
        raise ValueError(f"`{name}` must have shape (K, 2), as (x, y) pixels, got {tuple(tensor.shape)}")
    return tensor


def _point_count(points) -> int | None:
    """How many points a points argument holds, from its length alone (None when it has none)."""
    if isinstance(points, (np.ndarray, torch.Tensor)):
        return int(points.shape[0]) if points.ndim == 2 else None
    try:
        count = len(points)
    except TypeError:
        return None
    return 1 if count == 2 and is_real(points[0]) else count  # one (x, y) pair


def check_drag_points(
    handle_points, target_points, image_size: tuple[int, int], max_drags: int = MAX_DRAGS,
    how_to_raise: str = "pass `max_drags=` to raise it",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the drags of an image of ``image_size = (H, W)``; return them as two ``(K, 2)``
    float32 tensors of image ``(x, y)``. Inside means ``0 <= x < W`` and ``0 <= y < H``. More than
    ``max_drags`` drags are refused, counted before anything is converted."""
    if handle_points is None or target_points is None:
        raise ValueError("`handle_points` and `target_points` are required: give at least one drag")
    for name, points in (("handle_points", handle_points), ("target_points", target_points)):
        count = _point_count(points)
        if count is not None and count > max_drags:
            raise ValueError(f"`{name}` has {count:,} points, over the limit of {max_drags:,} drags; {how_to_raise}")
    handles, targets = as_image_points(handle_points, "handle_points"), as_image_points(target_points, "target_points")
    if handles.shape[0] == 0:
        raise ValueError("`handle_points` is empty: give at least one drag (K >= 1)")
    if handles.shape != targets.shape:
        raise ValueError(
            "`handle_points` and `target_points` must have the same number of points, "
            f"got {handles.shape[0]} and {targets.shape[0]}"
        )
    height, width = image_size
    for name, points in (("handle_points", handles), ("target_points", targets)):
        if not bool(torch.isfinite(points).all()):
            raise ValueError(f"`{name}` contains a non-finite coordinate: {points.tolist()}")
        x, y = points[:, 0], points[:, 1]
        outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
        if bool(outside.any()):
            raise ValueError(
                f"`{name}` has points outside the {width}x{height} image: {points[outside].tolist()} as (x, y); "
                f"allowed: 0 <= x < {width}, 0 <= y < {height}"
            )
    return handles, targets


def check_edit_mode(mode: str, drags: int, object_given: bool) -> None:
    """``mode`` is one of ``EDIT_MODES``; moving or copying takes exactly one drag and a mask of
    the object (``object_given``: a mask was given, not the whole image by default)."""
    if mode not in EDIT_MODES:
        raise ValueError(f"`mode` must be one of {EDIT_MODES}, got {mode!r}")
    if mode != "drag" and drags != 1:
        raise ValueError(f"`mode={mode!r}` moves one object: give exactly one drag, got {drags}")
    if mode != "drag" and not object_given:
        raise ValueError(f"`mode={mode!r}` needs `mask`: the object to {mode}")


def check_fill(fill: str) -> None:
    """``fill`` is one of ``FILL_MODES``."""
    if fill not in FILL_MODES:
        raise ValueError(f"`fill` must be one of {FILL_MODES}, got {fill!r}")


def check_sized_image(
    image, max_image_pixels: int = MAX_IMAGE_PIXELS, multiple_of: int = 1,
    how_to_raise: str = "pass `max_image_pixels=` to raise it",
) -> tuple[int, int]:
    """Check ``image`` (:func:`check_image`), refusing it from its size alone, before any value is
    read, when it has more than ``max_image_pixels`` pixels, and when its sides are not multiples
    of ``multiple_of`` (a VAE's scale factor); return its ``(height, width)``."""
    check_pixel_count(image_size(image), check_limit(max_image_pixels, "max_image_pixels"), "`image`", how_to_raise)
    height, width = check_image(image)
    if height % multiple_of or width % multiple_of:
        raise ValueError(
            f"`image` height and width must be multiples of the VAE scale factor {multiple_of}, got {height}x{width}; "
            f"resize or crop it first (for example to {height // multiple_of * multiple_of}x"
            f"{width // multiple_of * multiple_of})"
        )
    return height, width


@dataclass(frozen=True)
class EditInputs:
    """One edit's image, mask and drags, checked and converted once (CPU tensors).

    Attributes:
        size: ``(height, width)`` of the image, in pixels.
        pixels: ``(1, 3, H, W)`` float32 in [0, 1], or ``None`` when the edit starts from a cached
            inversion and no image was given.
        mask: ``(H, W)`` bool, ``True`` where content may move.
        handles, targets: ``(K, 2)`` float32 image ``(x, y)`` pixels.
        mode, fill: the edit mode and the fill of empty pixels, both checked.
    """

    size: tuple[int, int]
    pixels: torch.Tensor | None
    mask: torch.Tensor
    handles: torch.Tensor
    targets: torch.Tensor
    mode: str
    fill: str


def check_edit_inputs(
    image,
    handle_points,
    target_points,
    mask,
    mode: str = DEFAULT_MODE,
    fill: str = DEFAULT_FILL,
    *,
    size: tuple[int, int] | None = None,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_drags: int = MAX_DRAGS,
    multiple_of: int = 1,
    how_to_raise: tuple[str, str] = ("pass `max_image_pixels=` to raise it", "pass `max_drags=` to raise it"),
) -> EditInputs:
    """Check an edit's inputs and convert them once: the pipelines, the command line and the pixel
    preview all start here. ``image`` may be ``None`` when ``size = (height, width)`` is given (an
    edit of a cached inversion; see :func:`check_sized_image` for ``max_image_pixels`` and
    ``multiple_of``). ``how_to_raise`` says, for the pixel and the drag limits, how a caller raises them."""
    if image is not None:
        size = check_sized_image(image, max_image_pixels, multiple_of, how_to_raise[0])
    handles, targets = check_drag_points(
        handle_points, target_points, size, check_limit(max_drags, "max_drags"), how_to_raise[1]
    )
    movable = mask_to_tensor(mask, size)
    check_fill(fill)
    check_edit_mode(mode, len(handles), object_given=mask is not None)
    pixels = image_to_tensor(image) if image is not None else None
    return EditInputs(size, pixels, movable, handles, targets, mode, fill)


# --------------------------------------------------------------------------------------------
# Image space to latent space
# --------------------------------------------------------------------------------------------


def image_to_latent_points(points_xy: ImagePointsLike, scale: int) -> torch.Tensor:
    """Image ``(x, y)`` pixels ``(K, 2)`` -> latent ``(row, col) = (y, x) / scale`` floats (no rounding),
    a float32 tensor on the CPU."""
    return as_image_points(points_xy, "points_xy").flip(-1) / float(scale)


def image_to_latent_mask(mask: torch.Tensor, scale: int) -> torch.Tensor:
    """Max-pool an ``(H, W)`` image mask to the latent grid ``(ceil(H / scale), ceil(W / scale))``.

    A latent pixel is set iff any image pixel of its ``scale x scale`` block is set (nonzero).
    """
    if mask.ndim != 2:
        raise ValueError(f"`mask` must have shape (H, W), got {tuple(mask.shape)}")
    pooled = F.max_pool2d((mask != 0).float()[None, None], kernel_size=scale, stride=scale, ceil_mode=True)
    return pooled[0, 0] > 0
