"""Synthetic shape scenes: the training data of the embedded shapes model, and ShapeDrag, a
DragBench-format benchmark whose drags have a known ground truth.

A scene is a plain background and a few discs and squares, solid or striped, drawn in order (later
ones occlude earlier ones) and anti-aliased by 4x4 supersampling. Coordinates are image pixels
``(x, y)``, x the column and y the row, with pixel ``(x, y)`` centred *on* the integer point, so
an object centred at ``(x, y)`` has its colour centroid there and a drag handle on it is the same
number the pipeline takes.

ShapeDrag sample: one object (drawn last, so nothing covers it) is to be dragged from its centre
``h`` to ``t = h + d``; the ground truth is the same scene with that object drawn at ``t``
(``target_image.png``), everything else unchanged. The object has a *key colour* that nothing else in
the scene comes near, so where it ends up is the centroid of that colour. The pipeline never imports
this module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..inputs import DEFAULT_FILL, DEFAULT_MODE
from ..warpage import edit_latents
from .dragbench import EDITED_FILE, META_FILE, find_samples, load_meta, write_sample


IMAGE_SIZE = 64
SUPERSAMPLE = 4
SHAPE_KINDS = ("disc", "square")
PATTERNS = ("solid", "stripes")
# Colours nearer than this (RGB in [0, 1], Euclidean) to the key colour are not drawn anywhere else in a
# ShapeDrag scene; pixels nearer than KEY_TOLERANCE to it count as the dragged object.
KEY_SEPARATION = 0.45
KEY_TOLERANCE = 0.2
GROUND_TRUTH_FILE = "shapedrag.json"
# The benchmark's defaults: 100 samples from seed 1 (the training scenes come from other seeds).
SHAPEDRAG_COUNT, SHAPEDRAG_SEED = 100, 1
TARGET_FILE = "target_image.png"


@dataclass(frozen=True)
class Shape:
    """One object. ``centre`` is ``(x, y)`` in pixels; ``radius`` is half the side for a square.
    Stripes alternate ``colour`` and ``second_colour`` every ``period`` pixels across ``angle``
    (radians), in the object's own frame, so they move with it."""

    kind: str
    centre: tuple[float, float]
    radius: float
    colour: tuple[float, float, float]
    pattern: str = "solid"
    second_colour: tuple[float, float, float] = (0.0, 0.0, 0.0)
    period: float = 4.0
    angle: float = 0.0

    def moved_by(self, offset: tuple[float, float]) -> "Shape":
        return replace(self, centre=(self.centre[0] + offset[0], self.centre[1] + offset[1]))


@dataclass(frozen=True)
class Scene:
    background: tuple[float, float, float]
    shapes: tuple[Shape, ...]


def _supersampled_grid(size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` coordinates of the ``size * SUPERSAMPLE`` subpixels, each ``(S, S)``; the
    subpixels of pixel ``i`` average to ``i``."""
    coords = (torch.arange(size * SUPERSAMPLE, device=device, dtype=torch.float32) + 0.5) / SUPERSAMPLE - 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    return x, y


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as ``(size, size, 3)`` float32 RGB in [0, 1], ``(row, col)`` indexed."""
    x, y = _supersampled_grid(size)
    image = torch.tensor(scene.background, dtype=torch.float32).view(3, 1, 1).expand(3, *x.shape).clone()
    for shape in scene.shapes:
        dx, dy = x - shape.centre[0], y - shape.centre[1]
        if shape.kind == "disc":
            inside = dx * dx + dy * dy <= shape.radius**2
        elif shape.kind == "square":
            inside = (dx.abs() <= shape.radius) & (dy.abs() <= shape.radius)
        else:
            raise ValueError(f"`kind` must be one of {SHAPE_KINDS}, got {shape.kind!r}")
        colour = torch.tensor(shape.colour, dtype=torch.float32).view(3, 1, 1)
        if shape.pattern == "stripes":
            across = dx * math.cos(shape.angle) + dy * math.sin(shape.angle)
            second = torch.floor(across / shape.period).remainder(2) == 1
            colour = torch.where(second, torch.tensor(shape.second_colour).view(3, 1, 1), colour)
        image = torch.where(inside, colour, image)
    image = F.avg_pool2d(image[None], SUPERSAMPLE)[0]
    return image.permute(1, 2, 0).numpy()


def _colour_far_from(rng: np.random.Generator, avoid: Sequence[Sequence[float]], distance: float) -> tuple:
    """A uniform random RGB colour at least ``distance`` from every colour in ``avoid``."""
    for _ in range(1000):
        colour = rng.uniform(0, 1, 3)
        if all(np.linalg.norm(colour - np.asarray(other)) >= distance for other in avoid):
            return tuple(float(c) for c in colour)
    raise RuntimeError("no colour found far enough from the others")


def _random_shape(rng: np.random.Generator, size: int, radius: tuple[float, float], colour: tuple,
                  second_colour: tuple, centre: tuple[float, float] | None = None) -> Shape:
    r = float(rng.uniform(*radius))
    if centre is None:
        centre = tuple(float(c) for c in rng.uniform(r * 0.5, size - 1 - r * 0.5, 2))
    return Shape(
        kind=str(rng.choice(SHAPE_KINDS)), centre=centre, radius=r, colour=colour,
        pattern=str(rng.choice(PATTERNS)), second_colour=second_colour,
        period=float(rng.uniform(4.0, 8.0)), angle=float(rng.uniform(0, math.pi)),
    )


def random_scene(rng: np.random.Generator, size: int = IMAGE_SIZE, objects: tuple[int, int] = (1, 4)) -> Scene:
    """A training scene: a plain background and ``objects[0]..objects[1]`` shapes of random kind,
    pattern, colours, size and place (they may overlap and leave the frame partly)."""
    count = int(rng.integers(objects[0], objects[1] + 1))
    shapes = tuple(
        _random_shape(rng, size, (size * 0.06, size * 0.22), _colour_far_from(rng, [], 0),
                      _colour_far_from(rng, [], 0))
        for _ in range(count)
    )
    return Scene(background=_colour_far_from(rng, [], 0), shapes=shapes)


def render_batch(rng: np.random.Generator, count: int, size: int = IMAGE_SIZE) -> torch.Tensor:
    """``count`` random training scenes as a ``(count, 3, size, size)`` tensor in [-1, 1]."""
    images = np.stack([render(random_scene(rng, size), size) for _ in range(count)])
    return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1


# --------------------------------------------------------------------------------------------
# ShapeDrag
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DragCase:
    """A ShapeDrag sample: ``scene`` before the drag, the dragged object (the scene's last shape)
    moving from ``handle`` to ``target`` (both ``(x, y)``), and the mask ``(H, W)`` bool."""

    scene: Scene
    handle: tuple[float, float]
    target: tuple[float, float]
    mask: np.ndarray

    @property
    def key_colour(self) -> tuple[float, float, float]:
        return self.scene.shapes[-1].colour

    def truth(self) -> Scene:
        """The scene after a perfect drag: the object at the target, all else unchanged."""
        offset = (self.target[0] - self.handle[0], self.target[1] - self.handle[1])
        *others, moved = self.scene.shapes
        return replace(self.scene, shapes=(*others, moved.moved_by(offset)))


def disc_mask(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    """``(size, size)`` bool, true on pixels within ``radius`` of ``centre`` ``(x, y)``."""
    rows, cols = np.mgrid[:size, :size]
    return (cols - centre[0]) ** 2 + (rows - centre[1]) ** 2 <= radius**2


def random_drag_case(rng: np.random.Generator, size: int = IMAGE_SIZE, distractors: tuple[int, int] = (1, 3),
                     drag: tuple[float, float] = (6.0, 12.0)) -> DragCase:
    """A drag of the topmost object by ``drag[0]..drag[1]`` pixels in a random direction, both
    places fully inside the frame, with integer handle and target. The mask is a disc around the
    handle reaching ``radius + |d| + 6`` pixels: the object and its destination with room to spare.
    The key colour is far from the background and every colour of every other object."""
    radius = float(rng.uniform(size * 0.09, size * 0.15))
    margin = math.ceil(radius) + 1
    for _ in range(1000):
        handle = tuple(float(v) for v in rng.integers(margin, size - margin, 2))
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(*drag)
        target = (round(handle[0] + length * math.cos(angle)), round(handle[1] + length * math.sin(angle)))
        if all(margin <= v < size - margin for v in target):
            break
    else:
        raise RuntimeError("no drag fits the frame")
    target = (float(target[0]), float(target[1]))
    key = _colour_far_from(rng, [], 0)
    colours = []
    for _ in range(2 * int(distractors[1]) + 2):
        colours.append(_colour_far_from(rng, [key], KEY_SEPARATION))
    background, second, *others = colours
    count = int(rng.integers(distractors[0], distractors[1] + 1))
    shapes = [
        _random_shape(rng, size, (size * 0.06, size * 0.16), others[2 * i], others[2 * i + 1]) for i in range(count)
    ]
    shapes.append(replace(_random_shape(rng, size, (radius, radius), key, second), centre=handle))
    length = math.dist(handle, target)
    mask = disc_mask(size, handle, radius + length + 6)
    return DragCase(scene=Scene(background=background, shapes=tuple(shapes)), handle=handle, target=target, mask=mask)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def write_shapedrag(root: str | os.PathLike, count: int, seed: int, size: int = IMAGE_SIZE) -> list[str]:
    """Write ``count`` seeded samples in DragBench's layout under ``root/shapes/<index>/``, each
    with its ground truth (``target_image.png``, and ``shapedrag.json``: handle, target and key
    colour). Returns the sample keys."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    keys = []
    for index in range(count):
        case = random_drag_case(rng, size)
        key = f"shapes/{index:04d}"
        folder = Path(root) / key
        folder.mkdir(parents=True, exist_ok=True)
        write_sample(folder, Image.fromarray(to_uint8(render(case.scene, size))), [case.handle, case.target], case.mask)
        Image.fromarray(to_uint8(render(case.truth(), size))).save(folder / TARGET_FILE)
        truth = {"handle": case.handle, "target": case.target, "key_colour": case.key_colour,
                 "scene": asdict(case.scene)}
        (folder / GROUND_TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
        keys.append(key)
    return keys


# --------------------------------------------------------------------------------------------
# Ground-truth scores
# --------------------------------------------------------------------------------------------


def key_pixels(image: np.ndarray, key_colour: Sequence[float], region: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels of ``image`` (``(H, W, 3)`` in [0, 1]) inside ``region`` within
    KEY_TOLERANCE of the key colour."""
    near = np.linalg.norm(image - np.asarray(key_colour, dtype=np.float32), axis=-1) < KEY_TOLERANCE
    return near & region


def centroid(pixels: np.ndarray) -> np.ndarray | None:
    """Mean ``(x, y)`` of the true pixels, or None if there are none."""
    rows, cols = np.nonzero(pixels)
    return np.array([cols.mean(), rows.mean()]) if len(rows) else None


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of images in [0, 1] over the pixels ``where`` (all by default); inf if equal."""
    diff = (a - b) if where is None else (a - b)[where]
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


SCORE_COLUMNS = {
    "distance": "object to truth (px, lower is better)",
    "share": "share of the drag achieved (1 = all the way)",
    "iou": "IoU of the object's pixels with the truth's",
    "psnr_truth": "PSNR to the ground-truth image (dB)",
    "psnr_outside": "PSNR to the original outside the mask (dB)",
}


def score_edit(edited: np.ndarray, original: np.ndarray, truth: np.ndarray, key_colour: Sequence[float],
               mask: np.ndarray, handle: Sequence[float], target: Sequence[float]) -> dict[str, float]:
    """Ground-truth scores of one edit (images ``(H, W, 3)`` in [0, 1]; ``mask`` ``(H, W)`` bool).

    The object is the key-coloured pixels inside the mask, measured the same way in the edit, the
    original and the truth, so stripes and edges bias all three alike. An object that vanished
    scores as not moved (its centroid stays at the original's) with IoU 0.
    """
    before = centroid(key_pixels(original, key_colour, mask))
    expected = centroid(key_pixels(truth, key_colour, mask))
    found = key_pixels(edited, key_colour, mask)
    where = centroid(found)
    where = before if where is None else where
    drag = np.asarray(target, dtype=np.float64) - np.asarray(handle, dtype=np.float64)
    true_pixels = key_pixels(truth, key_colour, mask)
    union = (found | true_pixels).sum()
    return {
        "distance": float(np.linalg.norm(where - expected)),
        "share": float(np.dot(where - before, drag) / np.dot(drag, drag)),
        "iou": float((found & true_pixels).sum() / union) if union else 0.0,
        "psnr_truth": psnr(edited, truth),
        "psnr_outside": psnr(edited, original, ~mask),
    }


def score_drag(edited, case: DragCase, mask: np.ndarray | None = None) -> dict[str, float]:
    """:func:`score_edit` of an edit of ``case`` (a PIL image or an ``(H, W, 3)`` uint8 array),
    against the case's scene and truth rendered at 8 bits as the edit saw them; ``mask`` (the
    region searched for the object and left out of ``psnr_outside``) defaults to the case's."""
    original, truth = (to_uint8(render(scene, case.mask.shape[0])) / 255.0 for scene in (case.scene, case.truth()))
    mask = case.mask if mask is None else mask
    return score_edit(np.asarray(edited, dtype=np.float32) / 255, original, truth, case.key_colour, mask,
                      case.handle, case.target)


def load_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255


def score_folder(data: str | os.PathLike, results: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Scores of every ShapeDrag sample in ``data`` edited in ``results``
    (``results/<key>/dragged_image.png``), keyed by sample. Samples with no edit are left out."""
    scores = {}
    for sample in find_samples(data):
        edited_path = Path(results) / sample.key / EDITED_FILE
        if not edited_path.is_file():
            continue
        truth = json.loads((sample.folder / GROUND_TRUTH_FILE).read_text())
        mask = np.asarray(load_meta(sample.folder / META_FILE)["mask"]) != 0
        scores[sample.key] = score_edit(
            load_image(edited_path), load_image(sample.folder / "original_image.png"),
            load_image(sample.folder / TARGET_FILE), truth["key_colour"], mask, truth["handle"], truth["target"],
        )
    return scores


def summarise(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each score column (infinite PSNRs, from identical images, are capped at 100 dB)."""
    return {
        column: float(np.mean([min(score[column], 100.0) for score in scores])) if scores else math.nan
        for column in SCORE_COLUMNS
    }


def table(rows: dict[str, dict[str, float]], extra_label: str | None = None, extra: dict[str, object] | None = None) -> str:
    """A Markdown table: one row per name, one column per score, and an ``extra`` column if given."""
    columns = [*SCORE_COLUMNS] + ([extra_label] if extra else [])
    lines = ["| run | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, summary in rows.items():
        cells = [f"{summary[column]:.3f}" for column in SCORE_COLUMNS] + ([str(extra[name])] if extra else [])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The no-diffusion baseline
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def warp_and_decode(pipe, image, mask: np.ndarray, handles, targets, mode: str = DEFAULT_MODE, fill: str = DEFAULT_FILL):
    """FastDrag's one-step latent edit applied to the *clean* latent, decoded with no inversion
    and no sampling: what the VAE and the warp do alone. Same inputs as ``pipe(...)``; returns a PIL
    image."""
    device = pipe._execution_device
    edit = pipe.preprocess(pipe.check_edit(image, handles, targets, mask, fill, mode, None), device)
    latents = pipe.encode_image(edit.pixels, device)
    latents = edit_latents(latents, edit.mask, edit.handles, edit.targets, mode=mode, fill=fill, validate=False)
    return pipe.image_processor.postprocess(pipe.decode_image(latents), output_type="pil")[0]


# --------------------------------------------------------------------------------------------
# The README's example
# --------------------------------------------------------------------------------------------

# A striped orange disc to drag right, a teal square beside it: the edit the README's first command
# makes with the shapes model (examples/drag_me.png, made by tools/make_readme_pictures.py).
EXAMPLE_CASE = DragCase(
    scene=Scene(
        background=(0.92, 0.88, 0.78),
        shapes=(
            Shape("square", (50.0, 52.0), 7.0, (0.1, 0.55, 0.55)),
            Shape("disc", (22.0, 30.0), 8.0, (0.95, 0.45, 0.1), pattern="stripes", second_colour=(0.35, 0.1, 0.45),
                  period=5.0, angle=0.6),
        ),
    ),
    handle=(22.0, 30.0),
    target=(34.0, 30.0),
    mask=disc_mask(IMAGE_SIZE, (22.0, 30.0), 24.0),
)
