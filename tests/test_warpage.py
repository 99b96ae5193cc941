import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import bnni_oracle, field_oracle, relocate_oracle
from PIL import Image

from fastdrag import warpage
from fastdrag.apps.frontend import preview_drag
from fastdrag.inputs import image_to_latent_mask, image_to_latent_points
from fastdrag.warpage import bnni, fill_null, relocate, warp_latents, warpage_field


# --------------------------------------------------------------------------------------------
# Random cases: irregular masks, masks on the border, 1-5 drags, fractional points, non-square
# --------------------------------------------------------------------------------------------


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(6, 24)), int(rng.integers(6, 24))
    kind = seed % 3
    if kind == 0:  # irregular blob: random rectangles unioned
        mask = np.zeros((height, width), bool)
        for _ in range(int(rng.integers(1, 4))):
            r0, c0 = rng.integers(0, height), rng.integers(0, width)
            mask[r0 : r0 + rng.integers(1, height), c0 : c0 + rng.integers(1, width)] = True
    elif kind == 1:  # speckled mask touching the border
        mask = rng.random((height, width)) < 0.5
        mask[0, :] = True
    else:  # disc, possibly cut by the border
        rr, cc = np.mgrid[:height, :width]
        centre = rng.uniform(0, [height, width])
        mask = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= rng.uniform(2, max(height, width)) ** 2
    if not mask.any():
        mask[height // 2, width // 2] = True
    k = int(rng.integers(1, 6))
    handles = np.stack([rng.uniform(0, height - 1e-3, k), rng.uniform(0, width - 1e-3, k)], 1)
    if seed % 4 == 0:  # integer handles on mask pixels
        rows, cols = np.nonzero(mask)
        pick = rng.integers(0, len(rows), k)
        handles = np.stack([rows[pick], cols[pick]], 1).astype(np.float64)
    targets = handles + rng.uniform(-6, 6, handles.shape)
    targets = np.clip(targets, 0, [height - 1e-3, width - 1e-3])
    latents = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    return mask, handles.astype(np.float32), targets.astype(np.float32), latents


SEEDS = range(40)


@pytest.mark.parametrize("seed", SEEDS)
def test_field_matches_oracle(seed):
    mask, handles, targets, _ = random_case(seed)
    got = warpage_field(torch.from_numpy(mask), torch.from_numpy(handles), torch.from_numpy(targets))
    assert got.dtype == torch.float32 and got.shape == (*mask.shape, 2)
    np.testing.assert_allclose(got.numpy(), field_oracle(mask, handles, targets), atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_relocation_matches_oracle_bit_for_bit(seed):
    mask, handles, targets, latents = random_case(seed)
    field = warpage_field(torch.from_numpy(mask), handles, targets)
    got, null = relocate(torch.from_numpy(latents), torch.from_numpy(mask), field)
    want, want_null = relocate_oracle(latents, mask, field.numpy())
    np.testing.assert_array_equal(null.numpy(), want_null)
    assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("seed", SEEDS)
def test_bnni_matches_oracle(seed):
    mask, handles, targets, latents = random_case(seed)
    field = warpage_field(torch.from_numpy(mask), handles, targets)
    relocated, null = relocate(torch.from_numpy(latents), torch.from_numpy(mask), field)
    got = bnni(relocated, null)
    np.testing.assert_allclose(got.numpy(), bnni_oracle(relocated.numpy(), null.numpy()), atol=1e-5, rtol=0)


def test_bnni_weights_by_inverse_distance():
    # One row: value 0 at col 0, value 3 at col 3; col 1 is at distances 1 and 2.
    latents = torch.tensor([[[[0.0, 9.0, 9.0, 3.0]]]])
    null = torch.tensor([[False, True, True, False]])
    out = bnni(latents, null)
    # col 1: (0/1 + 3/2) / (1 + 1/2) = 1; col 2: (0/2 + 3/1) / (1/2 + 1) = 2
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 1.0, 2.0, 3.0]]]]))


def test_bnni_keeps_value_without_neighbours():
    latents = torch.arange(4.0).reshape(1, 1, 2, 2)
    null = torch.ones(2, 2, dtype=torch.bool)
    assert torch.equal(bnni(latents, null), latents)


def test_circle_radius_is_half_diagonal_of_bounding_box():
    # A single-drag field at a pixel on the circle must vanish; the box corners lie on it
    # (up to the 1e-6 of the radius).
    mask = torch.zeros(9, 9, dtype=torch.bool)
    mask[2:7, 2:7] = True  # box rows/cols 2..6, centre (4, 4), R = |(2, 2) + 1e-6|
    field = warpage_field(mask, [[4.0, 4.0]], [[4.0, 6.0]])
    assert field[2, 2].abs().max() < 1e-5
    assert torch.equal(field[4, 4], torch.tensor([0.0, 2.0]))
    # On the ray from the handle through (4, 5): P = (4, 4 + R), s = (R - 1) / 1 ... = |PC| / |AP|
    radius = math.hypot(2 + 1e-6, 2 + 1e-6)
    assert field[4, 5, 1].item() == pytest.approx(2 * (radius - 1) / radius, abs=1e-6)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@st.composite
def warp_cases(draw, zero_length: bool = False):
    height = draw(st.integers(2, 14))
    width = draw(st.integers(2, 14))
    bits = draw(st.lists(st.booleans(), min_size=height * width, max_size=height * width))
    mask = torch.tensor(bits).reshape(height, width)
    if not mask.any():
        mask[draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))] = True
    k = draw(st.integers(1, 5))
    row = st.floats(0, height - 1, width=32)
    col = st.floats(0, width - 1, width=32)
    handles = torch.tensor([[draw(row), draw(col)] for _ in range(k)])
    targets = handles.clone() if zero_length else torch.tensor([[draw(row), draw(col)] for _ in range(k)])
    seed = draw(st.integers(0, 2**16))
    latents = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed))
    return latents, mask, handles, targets


@settings(max_examples=60, deadline=None)
@given(warp_cases(zero_length=True))
def test_zero_length_drags_change_nothing(case):
    latents, mask, handles, targets = case
    field = warpage_field(mask, handles, targets)
    assert torch.equal(field, torch.zeros_like(field))
    relocated, null = relocate(latents, mask, field)
    assert not null.any()
    assert torch.equal(relocated, latents)
    assert torch.equal(warp_latents(latents, mask, handles, targets), latents)


@settings(max_examples=60, deadline=None)
@given(warp_cases())
def test_filling_leaves_no_null_with_a_neighbour(case):
    latents, mask, handles, targets = case
    relocated, null = relocate(latents, mask, warpage_field(mask, handles, targets))
    out = bnni(relocated, null)
    assert torch.isfinite(out).all()
    valid = ~null
    has_neighbour = null & (valid.any(1, keepdim=True) | valid.any(0, keepdim=True))
    if valid.any():
        # A filled value is a convex combination of non-null values of its channel.
        lo = relocated[..., valid].amin(-1)[..., None, None]
        hi = relocated[..., valid].amax(-1)[..., None, None]
        filled = has_neighbour.expand_as(out)
        assert ((out >= lo - 1e-5) | ~filled).all() and ((out <= hi + 1e-5) | ~filled).all()
    # Pixels without neighbours (and non-null pixels) keep their values exactly.
    keep = ~has_neighbour
    assert torch.equal(out[..., keep], relocated[..., keep])


@settings(max_examples=60, deadline=None)
@given(warp_cases())
def test_untouched_outside_mask_unless_written(case):
    latents, mask, handles, targets = case
    height, width = mask.shape
    field = warpage_field(mask, handles, targets)
    relocated, _ = relocate(latents, mask, field)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    dest_r = torch.round(rows + field[rows, cols, 0]).clamp(0, height - 1).long()
    dest_c = torch.round(cols + field[rows, cols, 1]).clamp(0, width - 1).long()
    landed = torch.zeros_like(mask)
    landed[dest_r, dest_c] = True
    untouched = ~mask & ~landed
    assert torch.equal(relocated[..., untouched], latents[..., untouched])
    assert torch.equal(field[~mask], torch.zeros_like(field[~mask]))


@settings(max_examples=60, deadline=None)
@given(warp_cases(), st.data())
def test_mask_pixel_on_integer_handle_moves_by_whole_drag(case, data):
    _, mask, _, targets = case
    rows, cols = torch.nonzero(mask, as_tuple=True)
    i = data.draw(st.integers(0, len(rows) - 1))
    handle = torch.tensor([[float(rows[i]), float(cols[i])]])
    target = targets[:1]
    field = warpage_field(mask, handle, target)
    assert torch.equal(field[rows[i], cols[i]], (target - handle)[0])


@settings(max_examples=30, deadline=None)
@given(warp_cases())
def test_batch_and_dtypes_agree_with_fp32_single(case):
    latents, mask, handles, targets = case
    reference = torch.cat([warp_latents(latents[i : i + 1], mask, handles, targets) for i in range(2)])
    for dtype, tol in ((torch.float32, 1e-6), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)):
        got = warp_latents(latents.to(dtype), mask, handles, targets)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), reference, atol=tol, rtol=tol)


def test_input_is_left_untouched():
    mask, handles, targets, latents = random_case(3)
    tensor = torch.from_numpy(latents)
    before = tensor.clone()
    warp_latents(tensor, torch.from_numpy(mask), handles, targets)
    assert torch.equal(tensor, before)


def test_null_set_is_a_mask_not_zero_values():
    # A zero-valued latent must not be mistaken for a null pixel.
    latents = torch.zeros(1, 1, 3, 3)
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[1, 1] = True
    relocated, null = relocate(latents, mask, warpage_field(mask, [[1.0, 1.0]], [[1.0, 2.0]]))
    assert null.tolist() == [[False, False, False], [False, True, False], [False, False, False]]


@pytest.mark.parametrize("mode", ["original", "zeros", "noise"])
def test_fill_modes(mode):
    latents = torch.randn(1, 2, 4, 4)
    null = torch.zeros(4, 4, dtype=torch.bool)
    null[1:3, 1:3] = True
    out = fill_null(latents, null, mode, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[..., ~null], latents[..., ~null])
    if mode == "original":
        assert torch.equal(out, latents)
    elif mode == "zeros":
        assert torch.equal(out[..., null], torch.zeros(1, 2, 4))
    else:
        again = fill_null(latents, null, mode, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out, again) and not torch.equal(out[..., null], latents[..., null])


# --------------------------------------------------------------------------------------------
# Image space helpers and preview
# --------------------------------------------------------------------------------------------


def test_image_to_latent_points_divides_without_rounding():
    got = image_to_latent_points([(100, 37), (13.5, 0)], 8)
    assert torch.equal(got, torch.tensor([[37 / 8, 100 / 8], [0.0, 13.5 / 8]]))


def test_image_to_latent_mask_max_pools_blocks():
    mask = torch.zeros(16, 24, dtype=torch.uint8)
    mask[9, 17] = 255  # block (1, 2)
    mask[0, 0] = 1  # block (0, 0)
    got = image_to_latent_mask(mask, 8)
    want = torch.zeros(2, 3, dtype=torch.bool)
    want[1, 2] = want[0, 0] = True
    assert torch.equal(got, want)


def test_preview_zero_drag_is_identity_and_keeps_type():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    same = preview_drag(array, None, [(5, 7)], [(5, 7)])
    assert isinstance(same, np.ndarray) and np.array_equal(same, array)
    image = Image.fromarray(array)
    moved = preview_drag(image, None, [(10, 10)], [(14, 10)])
    assert isinstance(moved, Image.Image) and moved.size == image.size
    assert not np.array_equal(np.asarray(moved), array)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    assert preview_drag(tensor, None, [(5, 7)], [(9, 7)]).shape == tensor.shape


def test_preview_moves_the_handle_pixel_to_the_target():
    array = np.zeros((21, 21, 3), dtype=np.uint8)
    array[10, 10] = 255  # one white pixel at (x, y) = (10, 10)
    mask = np.zeros((21, 21), dtype=np.uint8)
    mask[4:17, 4:17] = 1
    out = preview_drag(array, mask, [(10, 10)], [(13, 10)])
    assert out[10, 13].tolist() == [255, 255, 255]


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

MASK = torch.ones(8, 8, dtype=torch.bool)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mask=torch.zeros(8, 8, dtype=torch.bool)), "`mask` is empty"),
        (dict(mask=torch.ones(8, 8)), "`mask` must be a torch.bool"),
        (dict(mask=torch.ones(1, 8, 8, dtype=torch.bool)), "`mask` must have shape"),
        (dict(handles=torch.zeros(0, 2), targets=torch.zeros(0, 2)), "`handles` is empty"),
        (dict(targets=[[1.0, 1.0], [2.0, 2.0]]), "same number of points"),
        (dict(handles=[[float("nan"), 1.0]]), "`handles` contains a non-finite"),
        (dict(targets=[[1.0, float("inf")]]), "`targets` contains a non-finite"),
        (dict(handles=[[8.0, 1.0]]), "`handles` has points outside"),
        (dict(targets=[[1.0, -0.5]]), "`targets` has points outside"),
        (dict(handles=[[1.0, 2.0, 3.0]]), "`handles` must have shape"),
    ],
)
def test_field_rejects_bad_input(kwargs, message):
    args = dict(mask=MASK, handles=[[1.0, 1.0]], targets=[[2.0, 2.0]])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        warpage_field(**args)


def test_relocate_and_bnni_reject_mismatched_shapes():
    field = torch.zeros(8, 8, 2)
    with pytest.raises(ValueError, match="`latents` must have shape"):
        relocate(torch.zeros(1, 4, 8, 9), MASK, field)
    with pytest.raises(ValueError, match="`field` must have shape"):
        relocate(torch.zeros(1, 4, 8, 8), MASK, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="`latents` must have shape"):
        bnni(torch.zeros(1, 4, 8, 8), torch.zeros(8, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="`null` must have shape"):
        bnni(torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="`latents` must have shape"):
        warp_latents(torch.zeros(4, 8, 8), MASK, [[1, 1]], [[2, 2]])
    with pytest.raises(ValueError, match="`fill` must be one of"):
        warp_latents(torch.zeros(1, 4, 8, 8), MASK, [[1, 1]], [[2, 2]], fill="blur")


def test_preview_rejects_points_outside_image_in_xy():
    with pytest.raises(ValueError, match=r"`target_points` has points outside.*0 <= x < 30"):
        preview_drag(np.zeros((20, 30, 3), np.uint8), None, [(1, 1)], [(30, 1)])


def test_module_imports_nothing_relative_but_the_argument_checks():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(warpage))
    assert [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0] == ["inputs"]
