"""What the command line and the editor show a person: the pixel preview, drawn drags, phase times
and one-line errors. Both front ends import this module; it imports neither of them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..inputs import (
    DEFAULT_FILL,
    DEFAULT_MODE,
    MAX_UPLOAD_PIXELS,
    EditInputs,
    check_edit_inputs,
    image_to_latent_points,
)
from ..timing import PHASES
from ..warpage import edit_latents


def preview_drag(
    image, mask, handle_points, target_points, fill: str = DEFAULT_FILL, mode: str = DEFAULT_MODE,
    max_image_pixels: int = MAX_UPLOAD_PIXELS,
):
    """Edit the RGB pixels themselves at image resolution, as ``mode`` edits the latent: an
    instant, model-free preview (a move or copy offset is whole pixels here, whole latent pixels in
    the pipeline).

    Args:
        image: any image the pipeline takes (PIL, ``(H, W, 3)`` array, ``(3, H, W)`` tensor, ...).
        mask: ``(H, W)`` mask as the pipeline takes it; ``None`` = the whole image.
        handle_points, target_points: ``(K, 2)`` image ``(x, y)`` pixels.
        max_image_pixels: a larger image is refused from its size (the editor's upload limit by default).

    Returns:
        The warped image: a float tensor shaped like ``image`` for a tensor, a uint8 ``(H, W, 3)``
        array for an array, an RGB PIL image otherwise.
    """
    edit = check_edit_inputs(image, handle_points, target_points, mask, mode, fill, max_image_pixels=max_image_pixels)
    warped = preview_edit(edit)
    if isinstance(image, torch.Tensor):
        return warped.reshape(image.shape).to(image.dtype)
    array = to_rgb_array(warped)
    return array if isinstance(image, np.ndarray) else Image.fromarray(array)


def preview_edit(edit: EditInputs) -> torch.Tensor:
    """The pixel preview of a checked edit (see :func:`preview_drag`): ``(1, 3, H, W)`` in [0, 1]."""
    handles, targets = image_to_latent_points(edit.handles, 1), image_to_latent_points(edit.targets, 1)
    return edit_latents(edit.pixels, edit.mask, handles, targets, edit.mode, edit.fill, validate=False)


def to_rgb_array(pixels: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` in [0, 1] -> an ``(H, W, 3)`` uint8 array."""
    return (pixels[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def draw_arrows(image, drags, pending: tuple[float, float] | None = None):
    """Red handle, blue target, a white line between, numbered from 1; ``pending`` is a handle
    still waiting for its target. Points are image pixels ``(x, y)``."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    radius = max(2, min(image.size) // 100)

    def dot(x, y, colour):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)

    for number, ((hx, hy), (tx, ty)) in enumerate(drags, start=1):
        draw.line([(hx, hy), (tx, ty)], fill=(255, 255, 255), width=max(1, radius // 2))
        dot(hx, hy, (230, 40, 40))
        dot(tx, ty, (40, 90, 230))
        draw.text((hx + radius + 1, hy + radius + 1), str(number), fill=(255, 255, 255))
    if pending is not None:
        dot(*pending, (230, 40, 40))
        draw.text((pending[0] + radius + 1, pending[1] + radius + 1), str(len(drags) + 1), fill=(255, 255, 255))
    return image


def first_line(error: BaseException) -> str:
    """The first line of an error's message (or its type's name): what a person sees of it."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def format_phases(times: dict[str, float]) -> str:
    """``{"text": 0.01, ...}`` -> ``"text 0.01 s, ..."`` in the pipeline's phase order."""
    return ", ".join(f"{phase} {times[phase]:.2f} s" for phase in PHASES if phase in times)
