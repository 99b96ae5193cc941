"""FastDrag's one-step warpage: latent warpage function (LWF), relocation and BNNI.

Latent math only: everything here follows ``docs/method.md`` sections 2-4 and 8 on tensors in the
latent grid. Conventions:

* points are latent ``(row, col)`` floats, ``(K, 2)`` tensors (or nested sequences of numbers);
* masks are ``(H, W)`` bool tensors, ``True`` where content may move;
* latents are ``(B, C, H, W)`` tensors of any float dtype.

Images, masks and drags in image ``(x, y)`` pixels are converted by ``inputs.py``; the pixel
preview is ``frontend.preview_drag``.

The functions are vectorised over pixels and drags and never read tensor values back on the
host, so on CUDA they run without synchronising. The input checks (``validate=True``, the
default) do read values back; callers that have validated their inputs already (the pipeline
does so on the host, before any model runs) pass ``validate=False``.

The edit modes, fill modes and their checks live with the other argument checks in ``inputs.py``.
"""

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .inputs import DEFAULT_FILL, DEFAULT_MODE, check_edit_mode, check_fill


PointsLike = torch.Tensor | Sequence[Sequence[float]]

# Constants of the reference: they make our field agree with it to the bit.
_RADIUS_EPS = 1e-6
_WEIGHT_EPS = 1e-4


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def as_points(points: PointsLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``points`` as a ``(K, 2)`` float32 tensor on ``device``, raising ``ValueError`` naming ``name``."""
    try:
        tensor = torch.as_tensor(points, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"`{name}` must be a (K, 2) tensor of (row, col) points, got {points!r}") from error
    if tensor.numel() == 0:
        tensor = tensor.reshape(0, 2)  # so that `check_points` can say "empty"
    if tensor.ndim == 1 and tensor.numel() == 2:
        tensor = tensor[None]
    if tensor.ndim != 2 or tensor.shape[1] != 2:
        raise ValueError(f"`{name}` must have shape (K, 2), got {tuple(tensor.shape)}")
    return tensor


def check_points(handles: torch.Tensor, targets: torch.Tensor, size: tuple[int, int]) -> None:
    """Check latent drags on a grid of ``size = (H, W)``: ``(K, 2)`` ``(row, col)`` points, the same
    number of each, at least one, finite, with ``0 <= row < H`` and ``0 <= col < W``. Reads values."""
    if handles.shape[0] == 0:
        raise ValueError("`handles` is empty: give at least one drag (K >= 1)")
    if handles.shape != targets.shape:
        raise ValueError(
            f"`handles` and `targets` must have the same number of points, got {handles.shape[0]} and {targets.shape[0]}"
        )
    height, width = size
    for name, points in (("handles", handles), ("targets", targets)):
        if not bool(torch.isfinite(points).all()):
            raise ValueError(f"`{name}` contains a non-finite coordinate: {points.tolist()}")
        rows, cols = points[:, 0], points[:, 1]
        outside = (rows < 0) | (rows >= height) | (cols < 0) | (cols >= width)
        if bool(outside.any()):
            raise ValueError(
                f"`{name}` has points outside the {height}x{width} grid: {points[outside].tolist()} as (row, col); "
                f"allowed: 0 <= row < {height}, 0 <= col < {width}"
            )


def _check_tensor(
    tensor: torch.Tensor, name: str, dtype: torch.dtype, shape: tuple[int, ...] | None = None
) -> None:
    """``tensor`` must be a torch tensor of ``dtype``, of ``shape`` (or any ``(H, W)`` if None)."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != dtype:
        raise ValueError(f"`{name}` must be a {dtype} torch.Tensor, got {type(tensor).__name__} {getattr(tensor, 'dtype', '')}")
    if shape is None and tensor.ndim != 2:
        raise ValueError(f"`{name}` must have shape (H, W), got {tuple(tensor.shape)}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"`{name}` must have shape {tuple(shape)}, got {tuple(tensor.shape)}")


def check_mask(mask: torch.Tensor) -> None:
    """Check that ``mask`` is a non-empty ``(H, W)`` bool tensor. Reads a value on the host."""
    _check_tensor(mask, "mask", torch.bool)
    if not bool(mask.any()):
        raise ValueError("`mask` is empty: at least one pixel must be allowed to move")


def check_latents(latents: torch.Tensor, size: tuple[int, int], name: str = "latents") -> None:
    """``latents`` must be a float ``(B, C, H, W)`` tensor with ``(H, W) == size``."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point torch.Tensor")
    if latents.ndim != 4 or tuple(latents.shape[-2:]) != tuple(size):
        raise ValueError(f"`{name}` must have shape (B, C, {size[0]}, {size[1]}), got {tuple(latents.shape)}")


# --------------------------------------------------------------------------------------------
# Latent warpage function
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)``: two ``(H, W)`` int64 tensors of each pixel's row and column."""
    rows = torch.arange(height, device=device)[:, None].expand(height, width)
    cols = torch.arange(width, device=device)[None, :].expand(height, width)
    return rows, cols


@functools.lru_cache(maxsize=16)
def _flat_index(count: int, device: torch.device) -> torch.Tensor:
    return torch.arange(count, device=device)


@functools.lru_cache(maxsize=16)
def _float_coords(height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(2, H, W)`` float32: each pixel's ``(row, col)``."""
    return torch.stack(_grid(height, width, device)).float()


def _circle_of_mask(mask: torch.Tensor, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre ``O`` (as ``(row, col)``) and radius ``R`` of the circle around the mask's bounding box.

    ``coords``: ``(2, H, W)`` float pixel positions, from :func:`_float_coords`.
    """
    lo = torch.where(mask, coords, float("inf")).amin((1, 2))
    hi = torch.where(mask, coords, float("-inf")).amax((1, 2))
    centre = (lo + hi) / 2
    radius = torch.linalg.vector_norm((centre - lo) + _RADIUS_EPS)
    return centre, radius


def _component_scale(
    rows: torch.Tensor, cols: torch.Tensor, handles: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stretch factor ``s_i(C)`` of every drag at every pixel, and the distances ``|C - A_i|``.

    ``rows``, ``cols``: ``(N,)`` float pixel positions; ``handles``: ``(K, 2)`` as ``(row, col)``.
    Returns two ``(K, N)`` tensors. The float operations follow the reference's order.
    """
    ac_r = rows - handles[:, :1]  # (K, N)
    ac_c = cols - handles[:, 1:]
    oa_r = handles[:, :1] - centre[0]  # (K, 1)
    oa_c = handles[:, 1:] - centre[1]
    ac_len = torch.hypot(ac_r, ac_c)
    e_r, e_c = ac_r / ac_len, ac_c / ac_len
    l0 = (ac_r * oa_r + ac_c * oa_c) / ac_len
    l1 = torch.sqrt(radius * radius - (oa_r * oa_r + oa_c * oa_c) + l0 * l0)
    ap_r, ap_c = (l1 - l0) * e_r, (l1 - l0) * e_c
    scale = torch.hypot(ac_r - ap_r, ac_c - ap_c) / torch.hypot(ap_r, ap_c)
    scale = torch.nan_to_num(scale, nan=0.0, posinf=0.0, neginf=0.0).clamp_(0.0, 1.0)
    # At the handle itself 0/0 above; the pixel moves by the whole drag.
    scale = torch.where(ac_len == 0, 1.0, scale)
    return scale, ac_len


def warpage_field(
    mask: torch.Tensor, handles: PointsLike, targets: PointsLike, validate: bool = True
) -> torch.Tensor:
    """Displacement ``(d_row, d_col)`` of every latent pixel under the LWF.

    Args:
        mask: ``(H, W)`` bool tensor; only its pixels get a vector.
        handles, targets: ``(K, 2)`` latent ``(row, col)`` floats (tensors or sequences).
        validate: check the inputs first (reads values back to the host).

    Returns:
        ``(H, W, 2)`` float32 tensor on the mask's device, zero outside the mask.
    """
    if validate:
        check_mask(mask)
    handles = as_points(handles, "handles", mask.device)
    targets = as_points(targets, "targets", mask.device)
    if validate:
        check_points(handles, targets, tuple(mask.shape))
    height, width = mask.shape
    coords = _float_coords(height, width, mask.device)
    centre, radius = _circle_of_mask(mask, coords)
    scale, distance = _component_scale(coords[0].reshape(-1), coords[1].reshape(-1), handles, centre, radius)
    weights = 1.0 / (distance + _WEIGHT_EPS)
    weights = weights / weights.sum(0, keepdim=True)
    field = (weights * scale).t() @ (targets - handles)  # (N, 2)
    return torch.where(mask[..., None], field.reshape(height, width, 2), 0.0)


# --------------------------------------------------------------------------------------------
# Relocation
# --------------------------------------------------------------------------------------------


def _pixels_first(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(H * W, B * C)``: gathering whole rows of it is fast on every device."""
    return latents.reshape(-1, latents.shape[-2] * latents.shape[-1]).t().contiguous()


def _pixels_last(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pixels_first`, shaped like ``like``."""
    return rows.t().reshape(like.shape).contiguous()


def relocate(
    latents: torch.Tensor, mask: torch.Tensor, field: torch.Tensor, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every mask pixel's value to ``round_half_even(C + field[C])``, clamped into the grid.

    Sources are taken in row-major order and the first one to reach a destination wins it; the
    value written is always the source's original value, so moves never cascade.

    Args:
        latents: ``(B, C, H, W)``, any float dtype; left untouched.
        mask: ``(H, W)`` bool, the pixels that move (and become null until written).
        field: ``(H, W, 2)`` displacements ``(d_row, d_col)``, as from :func:`warpage_field`.

    Returns:
        ``(relocated, null)``: the new latents, and the ``(H, W)`` bool mask of pixels still
        empty. Null pixels keep their old values.
    """
    if validate:
        check_mask(mask)
        check_latents(latents, tuple(mask.shape))
        _check_tensor(field, "field", torch.float32, (*mask.shape, 2))
    height, width = latents.shape[-2:]
    count = height * width
    device = latents.device
    rows, cols = _grid(height, width, device)
    field = field.to(device)
    mask = mask.to(device)
    dest_row = torch.round(rows + field[..., 0]).clamp_(0, height - 1).long()
    dest_col = torch.round(cols + field[..., 1]).clamp_(0, width - 1).long()
    # Pixels outside the mask send to a dummy slot past the grid, so no branch is needed.
    destination = torch.where(mask, dest_row * width + dest_col, count).reshape(-1)
    source = _flat_index(count, device)
    winner = torch.full((count + 1,), count, dtype=torch.long, device=device)
    winner.scatter_reduce_(0, destination, source, reduce="amin", include_self=True)
    winner = winner[:count]
    written = winner < count

    null = mask & ~written.reshape(height, width)
    gather_from = torch.where(written, winner, source)
    relocated = _pixels_first(latents).index_select(0, gather_from)
    return _pixels_last(relocated, latents), null


# --------------------------------------------------------------------------------------------
# Filling the null pixels
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _direction_tables(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tables that let BNNI look in all four directions with a single ``cummax``.

    The grid is padded to a square of side ``S = max(H, W)`` and viewed four ways: as is (looking
    left), mirrored (right), transposed (up) and transposed then mirrored (down). In every view,
    "nearest filled pixel before me along the last axis" is the neighbour wanted.

    Returns:
        ``position``: ``(S,)`` int64, the index along the last axis;
        ``flat``: ``(4, S, S)`` int64, the row-major index ``row * W + col`` of each view's pixel
        in the unpadded grid (0 on padding, which is never filled, so never read);
        ``back``: ``(4, H * W)`` int64, where each unpadded pixel sits in each flattened view.
    """
    side = max(height, width)
    rows = torch.arange(side)[:, None].expand(side, side)
    cols = torch.arange(side)[None, :].expand(side, side)
    inside = (rows < height) & (cols < width)
    flat = torch.where(inside, rows * width + cols, 0)
    views = torch.stack([flat, flat.flip(1), flat.t(), flat.t().flip(1)])
    inside_views = torch.stack([inside, inside.flip(1), inside.t(), inside.t().flip(1)]).reshape(4, -1)
    back = torch.empty(4, height * width, dtype=torch.long)
    for view in range(4):  # four small host-side scatters, once per grid size
        keep = inside_views[view]
        back[view, views[view].reshape(-1)[keep]] = torch.arange(side * side)[keep]
    return torch.arange(side, device=device), views.to(device), back.to(device)


def bnni(latents: torch.Tensor, null: torch.Tensor, validate: bool = True) -> torch.Tensor:
    """Bilateral nearest neighbour interpolation, the paper's symmetric scheme.

    Each null pixel becomes the ``1/k``-weighted mean of the nearest non-null pixels to its left,
    right, up and down (``k`` their distance in pixels), all taken from ``latents`` before any
    filling. A null pixel with no neighbour in any direction keeps its value.

    Args:
        latents: ``(B, C, H, W)``, any float dtype.
        null: ``(H, W)`` bool.

    Returns:
        A new tensor like ``latents``; the weighted mean is computed in float32.
    """
    if validate:
        _check_tensor(null, "null", torch.bool)
        check_latents(latents, tuple(null.shape))
    height, width = latents.shape[-2:]
    position, views, back = _direction_tables(height, width, latents.device)
    side = position.shape[0]
    null = null.to(latents.device)
    filled = F.pad(~null, (0, side - width, 0, side - height))
    filled_views = torch.stack([filled, filled.flip(1), filled.t(), filled.t().flip(1)])
    # For a null pixel the running max stops before the pixel itself, as it is not filled; the
    # values computed at filled pixels are never used.
    nearest = torch.where(filled_views, position, -1).cummax(2).values  # (4, S, S)
    found = nearest >= 0
    weight = torch.where(found, 1.0 / (position - nearest).clamp(min=1), 0.0).reshape(4, -1)
    neighbour = views.gather(2, nearest.clamp(min=0)).reshape(4, -1)
    # Back to the unpadded grid, one row per direction: (4, H * W).
    weight = weight.gather(1, back)
    neighbour = neighbour.gather(1, back)

    values = _pixels_first(latents.float()).index_select(0, neighbour.reshape(-1))
    values = values.reshape(4, height * width, -1)  # (4, H * W, B * C)
    weight_sum = weight.sum(0)
    mean = (weight[..., None] * values).sum(0) / weight_sum.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    mean = _pixels_last(mean.to(latents.dtype), latents)
    replace = null & (weight_sum.reshape(height, width) > 0)
    return torch.where(replace, mean, latents)


def fill_null(
    latents: torch.Tensor,
    null: torch.Tensor,
    mode: str = DEFAULT_FILL,
    generator: torch.Generator | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Fill the null pixels left by :func:`relocate`.

    Modes (the paper's ablation): ``"bnni"`` (default, :func:`bnni`), ``"original"`` (keep the
    value that was there), ``"zeros"``, ``"noise"`` (standard normal, from ``generator``).
    """
    check_fill(mode)
    if validate:
        _check_tensor(null, "null", torch.bool)
        check_latents(latents, tuple(null.shape))
    null = null.to(latents.device)
    if mode == "bnni":
        return bnni(latents, null, validate=False)
    if mode == "original":
        return latents.clone()
    if mode == "zeros":
        return torch.where(null, torch.zeros_like(latents), latents)
    noise_device = generator.device if generator is not None else latents.device
    noise = torch.randn(latents.shape, generator=generator, device=noise_device, dtype=torch.float32)
    return torch.where(null, noise.to(device=latents.device, dtype=latents.dtype), latents)


def warp_constants(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The cached index tensors :func:`warp_latents` reads for an ``(H, W)`` grid on ``device``.

    A CUDA graph of the warp bakes their addresses in: whoever keeps the graph keeps these too,
    so that the caches may drop them without the graph reading freed memory.
    """
    return (
        *_grid(height, width, device),
        _flat_index(height * width, device),
        _float_coords(height, width, device),
        *_direction_tables(height, width, device),
    )


def warp_latents(
    latents: torch.Tensor,
    mask: torch.Tensor,
    handles: PointsLike,
    targets: PointsLike,
    fill: str = DEFAULT_FILL,
    generator: torch.Generator | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """The whole one-step warpage: LWF, relocation, then filling the null pixels.

    ``latents``: ``(B, C, H, W)``; ``mask``: ``(H, W)`` bool; ``handles``/``targets``: ``(K, 2)``
    latent ``(row, col)``. Returns a new tensor; ``latents`` is left untouched.
    """
    check_fill(fill)
    if validate:
        check_latents(latents, tuple(mask.shape))
    field = warpage_field(mask, handles, targets, validate=validate)
    relocated, null = relocate(latents, mask.to(latents.device), field, validate=False)
    return fill_null(relocated, null, fill, generator=generator, validate=False)


# --------------------------------------------------------------------------------------------
# Moving and copying the masked object
# --------------------------------------------------------------------------------------------


def object_offset(handles: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(d_row, d_col)``: the one drag's ``target - handle``, rounded half to even to whole latent
    pixels, as a ``(2,)`` int64 tensor on the points' device (no host read)."""
    return torch.round(targets[0] - handles[0]).long()


def shift_object(
    latents: torch.Tensor,
    mask: torch.Tensor,
    offset: torch.Tensor,
    mode: str = "move",
    fill: str = DEFAULT_FILL,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Paste the masked object ``offset`` latent pixels away; for ``"move"`` fill the place it left.

    ``S`` is ``mask``; ``D`` is ``S`` shifted by ``offset = (d_row, d_col)``, pixels leaving the grid
    dropped. Every ``p`` in ``D`` takes ``latents[p - offset]`` (all channels, from the unchanged
    latents); every other pixel keeps its value. ``"copy"`` stops there; ``"move"`` marks
    ``S \\ D`` null and fills it by ``fill`` from the pasted latents (``docs/method.md`` section 8).

    Args:
        latents: ``(B, C, H, W)``, left untouched.
        mask: ``(H, W)`` bool, the object.
        offset: ``(2,)`` int64 ``(d_row, d_col)``, as from :func:`object_offset`.
    """
    height, width = latents.shape[-2:]
    rows, cols = _grid(height, width, latents.device)
    offset = offset.to(latents.device)
    mask = mask.to(latents.device)
    source_row, source_col = rows - offset[0], cols - offset[1]
    inside = (source_row >= 0) & (source_row < height) & (source_col >= 0) & (source_col < width)
    source_row, source_col = source_row.clamp(0, height - 1), source_col.clamp(0, width - 1)
    pasted = inside & mask[source_row, source_col]  # D, on the destination grid
    source = torch.where(pasted, source_row * width + source_col, _flat_index(height * width, latents.device).view(height, width))
    moved = _pixels_last(_pixels_first(latents).index_select(0, source.reshape(-1)), latents)
    if mode == "copy":
        return moved
    return fill_null(moved, mask & ~pasted, fill, generator=generator, validate=False)


def edit_latents(
    latents: torch.Tensor,
    mask: torch.Tensor,
    handles: PointsLike,
    targets: PointsLike,
    mode: str = DEFAULT_MODE,
    fill: str = DEFAULT_FILL,
    generator: torch.Generator | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """The one-step latent edit of ``mode``: :func:`warp_latents` for ``"drag"``, :func:`shift_object`
    of the one drag's rounded offset for ``"move"`` and ``"copy"``. Points are latent ``(row, col)``."""
    if mode == "drag":
        return warp_latents(latents, mask, handles, targets, fill=fill, generator=generator, validate=validate)
    check_fill(fill)
    handles, targets = as_points(handles, "handles", mask.device), as_points(targets, "targets", mask.device)
    if validate:
        check_edit_mode(mode, handles.shape[0], object_given=True)
        check_mask(mask)
        check_latents(latents, tuple(mask.shape))
        check_points(handles, targets, tuple(mask.shape))
    return shift_object(latents, mask, object_offset(handles, targets), mode, fill, generator)

