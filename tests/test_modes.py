"""Moving and copying the masked object (docs/method.md section 8): the latent operation against a
loop oracle, the pipeline's round trip, the checks, the command line and the editor's handlers."""

import numpy as np
import pytest
import torch
from oracles import bnni_oracle, shift_oracle
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_image

from fastdrag.apps.app import Session, add_point, preview_view, set_mode
from fastdrag.apps.cli import main
from fastdrag.inputs import image_to_latent_mask, image_to_latent_points
from fastdrag.warpage import edit_latents, object_offset, shift_object


def random_case(seed: int):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(5, 16)), int(rng.integers(5, 16))
    mask = np.zeros((height, width), bool)
    r0, c0 = rng.integers(0, height), rng.integers(0, width)
    mask[r0 : r0 + rng.integers(1, height), c0 : c0 + rng.integers(1, width)] = True
    offset = (int(rng.integers(-height, height)), int(rng.integers(-width, width)))  # often partly off the grid
    latents = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    return latents, mask, offset


@pytest.mark.parametrize("mode", ["move", "copy"])
@pytest.mark.parametrize("seed", range(25))
def test_shift_matches_the_loop_oracle(seed, mode):
    latents, mask, offset = random_case(seed)
    got = shift_object(torch.from_numpy(latents), torch.from_numpy(mask), torch.tensor(offset), mode)
    pasted, null = shift_oracle(latents, mask, offset, mode)
    want = bnni_oracle(pasted, null) if mode == "move" else pasted
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
    if mode == "copy":  # a copy is exact: values are moved, never computed
        assert np.array_equal(got.numpy().view(np.uint32), pasted.view(np.uint32))


def test_offsets_round_half_to_even():
    handles = torch.tensor([[1.0, 1.0]])
    for delta, expected in (((1.5, 2.5), (2, 2)), ((-1.5, -0.5), (-2, 0)), ((0.49, 3.51), (0, 4))):
        assert object_offset(handles, handles + torch.tensor([delta])).tolist() == list(expected)


def test_move_fills_the_place_the_object_left_and_copy_keeps_it():
    latents = torch.arange(36.0).reshape(1, 1, 6, 6)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1:3, 1:3] = True
    copy = edit_latents(latents, mask, [[1.0, 1.0]], [[3.0, 1.0]], "copy")
    move = edit_latents(latents, mask, [[1.0, 1.0]], [[3.0, 1.0]], "move", fill="zeros")
    assert torch.equal(copy[0, 0, 3:5, 1:3], latents[0, 0, 1:3, 1:3])
    assert torch.equal(copy[0, 0, 1:3, 1:3], latents[0, 0, 1:3, 1:3])  # the original stays
    assert torch.equal(move[0, 0, 3:5, 1:3], latents[0, 0, 1:3, 1:3])
    assert torch.equal(move[0, 0, 1:3, 1:3], torch.zeros(2, 2))  # the vacated place, filled
    outside = ~torch.zeros(6, 6, dtype=torch.bool).index_put_((torch.arange(1, 5),), torch.tensor(True))
    assert torch.equal(move[0, 0][outside], latents[0, 0][outside])


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------

MASK = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
MASK[8:20, 20:30] = 255  # an object near the right edge


def zero_noise(pipe):
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)


@pytest.mark.parametrize("mode", ["move", "copy"])
@pytest.mark.parametrize(
    "handle, target, offset",
    [((22, 10), (25, 15), [2, 2]),  # (dx, dy) = (3, 5) px = (1.5, 2.5) latent pixels, rounded half to even
     ((22, 10), (31, 10), [0, 4])],  # 4.5 latent pixels right rounds to 4: the object goes partly off the grid
)
def test_zero_noise_round_trip_equals_the_section_8_operation(pipe, mode, handle, target, offset):
    zero_noise(pipe)
    out = pipe(tiny_image(), [handle], [target], mask=MASK, mode=mode, prompt="a cat", output_type="latent").images
    with torch.no_grad():
        encoded = pipe.encode_image(tiny_image()[None], torch.device("cpu"))
    handles, targets = image_to_latent_points([handle], 2), image_to_latent_points([target], 2)
    assert object_offset(handles, targets).tolist() == offset
    latent_mask = image_to_latent_mask(torch.from_numpy(MASK), 2).numpy()
    pasted, null = shift_oracle(encoded.numpy(), latent_mask, tuple(offset), mode)
    want = bnni_oracle(pasted, null) if mode == "move" else pasted
    torch.testing.assert_close(out, torch.from_numpy(want).float(), atol=1e-5, rtol=1e-5)


def test_move_and_copy_differ_and_a_cached_inversion_serves_every_mode(pipe):
    args = dict(handle_points=[(22, 10)], target_points=[(12, 14)], mask=MASK, output_type="np")
    full = {mode: pipe(tiny_image(), prompt="a cat", mode=mode, **args).images for mode in ("move", "copy")}
    assert np.abs(full["move"] - full["copy"]).max() > 1e-3
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    for mode in ("move", "copy"):
        np.testing.assert_array_equal(pipe(inversion=inversion, mode=mode, **args).images, full[mode])
    assert pipe(inversion=inversion, **args).images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)  # and drag


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="rotate"), r"`mode` must be one of \('drag', 'move', 'copy'\)"),
        (dict(mode="move", handle_points=[(1, 1), (2, 2)], target_points=[(3, 3), (4, 4)]),
         "`mode='move'` moves one object: give exactly one drag, got 2"),
        (dict(mode="copy", mask=None), "`mode='copy'` needs `mask`: the object to copy"),
    ],
)
def test_bad_modes_are_refused_before_any_model_runs(pipe, kwargs, message):
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    args = {**dict(image=tiny_image(), handle_points=[(22, 10)], target_points=[(12, 14)], mask=MASK), **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**args)
    assert calls == []


# --------------------------------------------------------------------------------------------
# The command line and the editor
# --------------------------------------------------------------------------------------------


def test_cli_preview_and_edit_move_and_copy(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline
    from tiny_models import tiny_components

    array = (tiny_image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(array).save(tmp_path / "in.png")
    Image.fromarray(MASK).save(tmp_path / "mask.png")
    previews = {}
    for mode in ("drag", "move", "copy"):
        out = tmp_path / f"{mode}.png"
        assert main(["preview", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--mode", mode,
                     "--drag", "22,10:12,14", "-o", str(out)]) == 0
        previews[mode] = np.asarray(Image.open(out))
    assert np.array_equal(previews["copy"][10:22, 20:30], array[10:22, 20:30])  # the copy's source stays
    assert not np.array_equal(previews["move"], previews["copy"])
    assert np.array_equal(previews["copy"][12:24, 10:20], array[8:20, 20:30])  # pasted 10 px left, 4 down

    StableDiffusionPipeline(**tiny_components()).save_pretrained(tmp_path / "model")
    assert main(["edit", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--mode", "copy",
                 "--drag", "22,10:12,14", "--model", str(tmp_path / "model"), "--device", "cpu",
                 "-o", str(tmp_path / "edited.png")]) == 0
    assert Image.open(tmp_path / "edited.png").size == (IMAGE_SIZE, IMAGE_SIZE)
    capsys.readouterr()
    assert main(["edit", str(tmp_path / "in.png"), "--mode", "move", "--drag", "22,10:12,14",
                 "--model", str(tmp_path / "model"), "-o", str(tmp_path / "x.png")]) == 2
    assert "`mode='move'` needs `mask`" in capsys.readouterr().err


def test_editor_move_mode_keeps_one_drag_and_previews_the_object():
    image = (tiny_image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    session = Session(image=image, mask=MASK > 0)
    for point in ((22, 10), (12, 14), (5, 5), (6, 6)):
        add_point(session, *point)
    assert len(session.drags) == 2
    set_mode(session, "move")
    assert session.drags == [((22, 10), (12, 14))]
    add_point(session, 24, 12)  # a new click after a complete drag starts it again
    assert session.points == [(24, 12)]
    add_point(session, 14, 16)
    moved = preview_view(session)
    assert not np.array_equal(moved, image)
    assert np.array_equal(moved[12:24, 10:20], image[8:20, 20:30])  # the object, 10 px left and 4 down
    set_mode(session, "copy")
    assert np.array_equal(preview_view(session)[12:22, 22:30], image[12:22, 22:30])  # the source stays
