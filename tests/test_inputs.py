"""The input boundary: every form of image, mask and number a user has, converted by value or refused
before any model runs; cached inversions that refuse to be mixed; modules that import no cycle."""

import ast
import inspect
import pickle
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_components, tiny_image, tiny_unet, tiny_vae

import fastdrag
from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.cli import main
from fastdrag.apps.dragbench import Sample, load_sample
from fastdrag.inputs import check_image, image_fingerprint, image_to_tensor, mask_to_tensor


ROOT = Path(fastdrag.__file__).resolve().parent
HANDLES = [(10.0, 12.0), (20.5, 19.0)]  # image (x, y)
TARGETS = [(15.0, 12.0), (22.0, 25.5)]


def as_uint8(tensor: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8."""
    return (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def watch_models(pipe) -> list:
    """Every UNet, VAE and text encoder call lands in the returned list."""
    calls = []
    for model in (pipe.unet, pipe.vae, pipe.vae.encoder, pipe.text_encoder):
        model.register_forward_pre_hook(lambda *args, _name=type(model).__name__: calls.append(_name))
    return calls


def edit(pipe, **kwargs):
    args = dict(image=tiny_image(), handle_points=HANDLES, target_points=TARGETS, prompt="a cat", output_type="np")
    args.update(kwargs)
    return pipe(**args).images


# --------------------------------------------------------------------------------------------
# Images, converted by value
# --------------------------------------------------------------------------------------------


def test_every_single_image_form_gives_the_same_tensor():
    array = as_uint8(tiny_image())
    want = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    tensor = want[0].clone()
    forms = [
        Image.fromarray(array), [Image.fromarray(array)], array, array[None], [array],
        array.astype(np.float32) / 255, array.astype(np.uint16) * 257, tensor, tensor[None], [tensor],
    ]
    for form in forms:
        assert check_image(form) == (IMAGE_SIZE, IMAGE_SIZE)
        torch.testing.assert_close(image_to_tensor(form), want, atol=1e-6, rtol=0)


def test_sixteen_bit_grayscale_is_read_by_value_not_clipped():
    values = (np.arange(IMAGE_SIZE * IMAGE_SIZE, dtype=np.uint32).reshape(IMAGE_SIZE, IMAGE_SIZE) * 60).astype(np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    got = image_to_tensor(image)
    assert got.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(got[0, 1], torch.from_numpy(values.astype(np.float32) / 65535))
    assert float((got == 1).float().mean()) < 0.01  # PIL's convert("RGB") made 99.6 % of it white
    wide = Image.fromarray(values.astype(np.int32))  # mode "I", as some readers give 16-bit files
    torch.testing.assert_close(image_to_tensor(wide), got)


def test_palette_and_transparent_images():
    array = as_uint8(tiny_image())
    palette = Image.fromarray(array).quantize(16)
    assert palette.mode == "P"
    torch.testing.assert_close(image_to_tensor(palette), image_to_tensor(palette.convert("RGB")))

    rgba = np.concatenate([array, np.full((IMAGE_SIZE, IMAGE_SIZE, 1), 255, np.uint8)], -1)
    rgba[:8, :8, 3] = 0  # transparent corner
    rgba[8:16, :8, 3] = 128  # half transparent
    for form in (Image.fromarray(rgba), rgba):
        got = image_to_tensor(form)[0]
        assert torch.equal(got[:, :8, :8], torch.ones(3, 8, 8))  # over white
        opaque = torch.from_numpy(array[16:, :, :]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(got[:, 16:, :], opaque)
        half = torch.from_numpy(array[8:16, :8]).permute(2, 0, 1).float() / 255
        torch.testing.assert_close(got[:, 8:16, :8], half * 128 / 255 + (1 - 128 / 255), atol=2 / 255, rtol=0)
    gray_alpha = Image.fromarray(rgba).convert("LA")
    assert torch.equal(image_to_tensor(gray_alpha)[0, :, :8, :8], torch.ones(3, 8, 8))


@pytest.mark.parametrize(
    "image, error, message",
    [
        ([tiny_image(), tiny_image(1)], ValueError, "one image at a time, got a list of 2"),
        (np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.int64), TypeError, "uint8, uint16 or float"),
        (np.full((IMAGE_SIZE, IMAGE_SIZE, 3), np.nan, np.float32), ValueError, r"lie in \[0, 1\]"),
        (torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8), TypeError, "floating point"),
        (torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE), ValueError, r"\(3, H, W\) or \(1, 3, H, W\)"),
        (Image.fromarray(np.full((IMAGE_SIZE, IMAGE_SIZE), 70000, np.int32)), ValueError, "values 70000..70000"),
    ],
)
def test_images_that_cannot_be_read_are_refused_by_name(image, error, message):
    with pytest.raises(error, match=f"`image`.*{message}"):
        check_image(image)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------

SIZE = (IMAGE_SIZE, IMAGE_SIZE)


def painted_rgba(alpha_region) -> np.ndarray:
    """White everywhere, opaque only where painted: a brush layer over a white canvas."""
    rgba = np.full((*SIZE, 4), 255, np.uint8)
    rgba[..., 3] = 0
    rgba[alpha_region + (3,)] = 255
    return rgba


def test_a_mask_painted_in_alpha_is_read_from_its_alpha():
    region = (slice(4, 12), slice(6, 20))
    want = torch.zeros(SIZE, dtype=torch.bool)
    want[region] = True
    rgba = painted_rgba(region)
    for mask in (Image.fromarray(rgba), rgba, [Image.fromarray(rgba)], Image.fromarray(rgba).convert("LA")):
        assert torch.equal(mask_to_tensor(mask, SIZE), want)


def test_masks_without_alpha_are_read_from_their_value():
    values = np.zeros(SIZE, np.uint16)
    values[3:9, 3:9] = 300
    want = torch.from_numpy(values != 0)
    opaque = np.concatenate([np.repeat((values > 0)[..., None] * 255, 3, -1), np.full((*SIZE, 1), 255)], -1)
    forms = [
        Image.fromarray(values), values.astype(np.float32) * 0.001, Image.fromarray(values > 0),
        torch.from_numpy(values.astype(np.int32))[None], values[..., None], values[None, None],
        opaque.astype(np.uint8), Image.fromarray(opaque.astype(np.uint8)).convert("P"),
    ]
    for mask in forms:
        assert torch.equal(mask_to_tensor(mask, SIZE), want)


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.full(SIZE, np.nan, np.float32), "must be finite: it contains NaN"),
        (np.where(np.eye(IMAGE_SIZE) > 0, np.inf, 0).astype(np.float32), "must be finite"),
        (np.zeros(SIZE), "`mask` is empty"),
        (painted_rgba((slice(0, 0), slice(0, 0))), "`mask` is empty"),
        (np.ones((2, *SIZE)), "must have the image's size"),
        (np.array([["a"] * IMAGE_SIZE] * IMAGE_SIZE), "must hold numbers"),
    ],
)
def test_bad_masks_are_refused(mask, message):
    with pytest.raises((ValueError, TypeError), match=message):
        mask_to_tensor(mask, SIZE)


# --------------------------------------------------------------------------------------------
# The pipeline's boundary
# --------------------------------------------------------------------------------------------


def test_pipeline_reads_a_sixteen_bit_image_and_an_alpha_mask_as_their_values(pipe):
    values = (as_uint8(tiny_image()).astype(np.uint16)[..., 0]) * 257
    region = (slice(4, 28), slice(4, 28))
    expected = edit(pipe, image=np.repeat(values[..., None], 3, -1), mask=mask_to_tensor(painted_rgba(region), SIZE))
    got = edit(pipe, image=Image.fromarray(values), mask=Image.fromarray(painted_rgba(region)))
    np.testing.assert_array_equal(got, expected)


def test_numpy_scalars_are_numbers(pipe):
    expected = edit(pipe)
    got = edit(pipe, num_inference_steps=np.int64(10), inversion_strength=np.float32(0.7), guidance_scale=np.float64(1))
    np.testing.assert_array_equal(got, expected)


BAD_CALLS = [
    (dict(guidance_scale=1e308), ValueError, r"`guidance_scale` must be a number with 0 <= guidance_scale <= 100"),
    (dict(guidance_scale=float("nan")), ValueError, "`guidance_scale` must be a number"),
    (dict(guidance_scale="7"), ValueError, "`guidance_scale` must be a number"),
    (dict(num_inference_steps=10.0), ValueError, "`num_inference_steps` must be an integer"),
    (dict(num_inference_steps=True), ValueError, "`num_inference_steps` must be an integer"),
    (dict(num_inference_steps=1001), ValueError, r"<= 1000"),
    (dict(inversion_strength="0.7"), ValueError, r"`inversion_strength` must be in \(0, 1\]"),
    (dict(prompt=["a cat"]), TypeError, "`prompt` must be a str"),
    (dict(negative_prompt=3), TypeError, "`negative_prompt` must be a str"),
    (dict(preserve_consistency="yes"), TypeError, "`preserve_consistency` must be a bool"),
    (dict(image=[tiny_image(), tiny_image()]), ValueError, "one image at a time"),
    (dict(mask=np.full(SIZE, np.nan)), ValueError, "NaN"),
    (dict(handle_points="10,12"), ValueError, "`handle_points` must be a sequence of"),
]
# Issue #23: each of these passed the checks, then failed later (an IndexError after every UNet
# call, OverflowError, NotImplementedError) or was silently accepted.
BAD_CALLS_23 = [
    (dict(num_inference_steps=1000, inversion_strength=1.0), ValueError,
     r"`num_inference_steps` may be at most 999 with `inversion_strength` 1;"),
    (dict(guidance_scale=10**400), ValueError, r"`guidance_scale` must be a number with 0 <= guidance_scale <= 100"),
    (dict(guidance_scale=Fraction(10**400, 3)), ValueError, r"`guidance_scale` must be a number"),
    (dict(inversion_strength=Fraction(10**400, 3)), ValueError, r"`inversion_strength` must be in \(0, 1\]"),
    (dict(image=torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, device="meta")), ValueError, "`image` is on the meta device"),
    (dict(mask=torch.ones(SIZE, device="meta")), ValueError, "`mask` is on the meta device"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32, device="meta")), ValueError,
     "`prompt_embeds` is on the meta device"),
    (dict(handle_points=torch.tensor(HANDLES, device="meta")), ValueError, "`handle_points` is on the meta device"),
    (dict(handle_points=[("10", "12"), ("20.5", "19")]), TypeError, "`handle_points` must hold numbers"),
    (dict(handle_points=[(True, 12), (20.5, 19)]), TypeError, "`handle_points` must hold numbers"),
    (dict(target_points=np.array([[True, False], [True, True]])), TypeError, "`target_points` must hold numbers"),
    (dict(target_points=torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)), TypeError, "`target_points` must hold"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS_23)
def test_what_would_fail_later_is_refused_before_any_model_runs(pipe, kwargs, error, message):
    calls = watch_models(pipe)
    with pytest.raises(error, match=message):
        edit(pipe, **kwargs)
    assert calls == []


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS)
def test_bad_calls_are_refused_before_any_model_runs(pipe, kwargs, error, message):
    calls = watch_models(pipe)
    with pytest.raises(error, match=message):
        edit(pipe, **kwargs)
    assert calls == []


def test_a_callback_returning_latents_of_another_shape_is_refused(pipe):
    def shrink(pipeline, i, t, kwargs):
        return {"latents": kwargs["latents"][..., :8, :8]}

    with pytest.raises(ValueError, match=r"`callback_on_step_end` returned `latents` of shape \(1, 4, 8, 8\)"):
        edit(pipe, callback_on_step_end=shrink)


# --------------------------------------------------------------------------------------------
# Cached inversions know what made them
# --------------------------------------------------------------------------------------------


def redrag(pipe, inversion, **kwargs):
    return pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, output_type="np", **kwargs).images


def test_an_inversion_accepts_its_own_image_in_any_form_and_refuses_another(pipe):
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    assert inversion.image_fingerprint == image_fingerprint(image_to_tensor(tiny_image()))
    same = redrag(pipe, inversion)
    # The same picture as PIL is the same image (8-bit rounding aside, so use the 8-bit one throughout).
    array = as_uint8(tiny_image())
    inversion = pipe.invert(array, prompt="a cat")
    np.testing.assert_array_equal(redrag(pipe, inversion, image=Image.fromarray(array)), redrag(pipe, inversion))
    assert same.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    calls = watch_models(pipe)
    with pytest.raises(ValueError, match="`image` differs from the image `inversion` was made from"):
        redrag(pipe, inversion, image=as_uint8(tiny_image(1)))
    assert calls == []


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_an_inversion_refuses_other_weights(pipe, component):
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    replacement = {"unet": lambda: tiny_unet(seed=1), "vae": tiny_vae,
                   "text_encoder": lambda: tiny_components()["text_encoder"]}[component]()
    other = StableDiffusionFastDragPipeline(**{**pipe.components, component: replacement}, requires_safety_checker=False)
    other.set_progress_bar_config(disable=True)
    calls = watch_models(other)
    with pytest.raises(ValueError, match=f"`inversion` was made by another {component}"):
        redrag(other, inversion)
    assert calls == []
    # The same components shared by another pipeline (from_pipe) are the same weights.
    shared = StableDiffusionFastDragPipeline.from_pipe(pipe)
    shared.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(redrag(shared, inversion), redrag(pipe, inversion))


def test_an_inversion_refuses_weights_changed_in_place_and_another_dtype(pipe):
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    with torch.no_grad():
        pipe.unet.conv_out.bias.add_(0.1)  # as fusing a LoRA would
    with pytest.raises(ValueError, match="`inversion` was made by another unet"):
        redrag(pipe, inversion)
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    pipe.to(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="was made in torch.float32, but the UNet now runs in torch.bfloat16"):
        redrag(pipe, inversion)


# --------------------------------------------------------------------------------------------
# DragBench and the command line read files by value
# --------------------------------------------------------------------------------------------


def write_sample(folder: Path, image: Image.Image, prompt) -> Sample:
    folder.mkdir(parents=True)
    image.save(folder / "original_image.png")
    mask = np.zeros(SIZE, np.uint8)
    mask[4:28, 4:28] = 1
    with open(folder / "meta_data.pkl", "wb") as f:
        pickle.dump({"prompt": prompt, "points": [[10, 12], [16, 12]], "mask": mask}, f)
    return Sample(key="a/b", folder=folder)


def test_dragbench_reads_a_sixteen_bit_image_and_a_missing_prompt(tmp_path):
    values = (np.arange(IMAGE_SIZE * IMAGE_SIZE).reshape(SIZE) * 50).astype(np.uint16)
    data = load_sample(write_sample(tmp_path / "s", Image.fromarray(values), None))
    assert data.prompt == ""
    torch.testing.assert_close(image_to_tensor(data.image)[0, 0], torch.from_numpy(values / 65535).float())
    with pytest.raises(ValueError, match="`prompt` in meta_data.pkl must be a string"):
        load_sample(write_sample(tmp_path / "t", Image.fromarray(values), 42))


def test_cli_preview_reads_a_sixteen_bit_image_and_an_alpha_mask(tmp_path):
    values = np.full(SIZE, 16384, np.uint16)  # a quarter grey, not white
    Image.fromarray(values).save(tmp_path / "grey16.png")
    Image.fromarray(painted_rgba((slice(4, 28), slice(4, 28)))).save(tmp_path / "mask.png")
    assert main(["preview", str(tmp_path / "grey16.png"), "--mask", str(tmp_path / "mask.png"),
                 "--drag", "10,12:16,12", "-o", str(tmp_path / "out.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and np.all(out == 64)  # 16384 / 65535 * 255


# --------------------------------------------------------------------------------------------
# The house: modules, imports, the call
# --------------------------------------------------------------------------------------------


APPS = ROOT / "apps"


def module_imports() -> dict[str, set[str]]:
    """Each module of the package (the pipelines' at the top, the tools' in ``apps/``, by file name)
    -> the package modules it imports (anywhere in it)."""
    paths = {path.stem: path for folder in (ROOT, APPS) for path in folder.glob("*.py") if path.stem != "__init__"}
    graph = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module and (node.level or module.startswith("fastdrag.")):
                    found.add(module.split(".")[-1])
                if (node.level and not module) or module in ("fastdrag", "fastdrag.apps", "apps"):
                    found |= {alias.name for alias in node.names}  # from . import x, from fastdrag import x
            elif isinstance(node, ast.Import):
                found |= {alias.name.split(".")[-1] for alias in node.names if alias.name.startswith("fastdrag.")}
        graph[name] = found & set(paths) - {name}
    return graph


def test_the_pipelines_files_import_nothing_from_the_tools_around_them():
    graph = module_imports()
    tools = {path.stem for path in APPS.glob("*.py")} - {"__init__"}
    assert tools == {"cli", "app", "browser", "compat", "dragbench", "frontend", "live", "metrics", "options", "shapes",
                     "testing"}
    for path in ROOT.glob("*.py"):
        if path.stem not in ("__init__", "__main__"):
            assert not graph[path.stem] & tools, (path.stem, graph[path.stem] & tools)


def test_no_two_modules_import_each_other():
    graph = module_imports()
    assert graph["app"] >= {"frontend"} and "cli" not in graph["app"]
    mutual = sorted((a, b) for a in graph for b in graph[a] if a in graph.get(b, ()) and a < b)
    assert mutual == []


PIPELINE_ENTRIES = ("pipeline_fastdrag", "pipeline_fastdrag_sdxl")


def test_the_pipelines_siblings_import_only_what_the_entry_imports_and_warpage_is_latent_math():
    """Diffusers copies a local custom_pipeline file's direct relative imports and nothing further:
    a sibling may import another sibling only when the entry imports that one too."""
    graph = module_imports()
    for entry in PIPELINE_ENTRIES:
        siblings = graph[entry]
        assert {"attention_processors", "fastdrag_core", "inputs", "warpage"} <= siblings, entry
        assert not siblings & {"cli", "app", "dragbench", "frontend", "shapes", "metrics", "testing"}, entry
        for name in siblings:
            assert graph[name] <= siblings, (entry, name, graph[name] - siblings)
    assert graph["inputs"] == set() and graph["warpage"] == {"inputs"}
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse((ROOT / "warpage.py").read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported == {"collections", "functools", "torch", "inputs"}


@pytest.mark.parametrize("pipeline_class", ["StableDiffusionFastDragPipeline", "StableDiffusionXLFastDragPipeline"])
def test_call_reads_top_to_bottom_in_numbered_steps(pipeline_class):
    import fastdrag

    source = inspect.getsource(getattr(fastdrag, pipeline_class).__call__)
    body = source[source.index('        """', source.index("r\"\"\"") + 4) :].splitlines()[1:]
    steps = [line.strip().split(".")[0] for line in body if line.strip().startswith("# ") and line.strip()[2:3].isdigit()]
    assert steps == [f"# {i}" for i in range(1, 10)]
    assert len(body) <= 75


def test_defaults_and_choice_lists_have_one_home():
    from fastdrag import inputs, warpage

    def retyped(name: str) -> list:
        found = []
        path = ROOT / f"{name}.py" if (ROOT / f"{name}.py").exists() else APPS / f"{name}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == 0.7 and isinstance(node.value, float):
                found.append("0.7")
            if isinstance(node, (ast.Tuple, ast.List)) and any(
                isinstance(e, ast.Constant) and e.value == "zeros" for e in node.elts
            ):
                found.append("the fill list")
        return found

    for name in ("cli", "app", "dragbench", "pipeline_fastdrag", "frontend", "metrics", "testing", "shapes"):
        assert retyped(name) == [], name
    assert retyped("inputs") == ["0.7", "the fill list"] and retyped("warpage") == []
    assert inputs.FILL_MODES[0] == inputs.DEFAULT_FILL == warpage.DEFAULT_FILL


# --------------------------------------------------------------------------------------------
# Size limits (issue #23): refused at once, naming the limit and how to raise it
# --------------------------------------------------------------------------------------------


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` pixels (a bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_the_pipeline_refuses_an_image_over_its_pixel_limit_and_a_keyword_raises_it(pipe):
    calls = watch_models(pipe)
    big = np.zeros((2056, 2048, 3), np.uint8)
    with pytest.raises(ValueError, match=r"`image` is 2048x2056 = 4,210,688 pixels, over the limit of 4,194,304.*"
                                         r"max_image_pixels="):
        pipe(big, handle_points=[(1, 1)], target_points=[(2, 2)])
    with pytest.raises(ValueError, match="over the limit of 1,000"):
        edit(pipe, max_image_pixels=1000)
    with pytest.raises(ValueError, match="over the limit of 1,000"):
        pipe.invert(tiny_image(), max_image_pixels=1000)
    assert calls == []
    assert edit(pipe, max_image_pixels=IMAGE_SIZE * IMAGE_SIZE).shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_the_pipeline_refuses_too_many_drags_before_converting_them(pipe):
    calls = watch_models(pipe)
    many = [(1.0, 1.0)] * 100_000
    with pytest.raises(ValueError, match=r"`handle_points` has 100,000 points, over the limit of 256 drags; .*max_drags="):
        edit(pipe, handle_points=many, target_points=many)
    with pytest.raises(ValueError, match="over the limit of 1 drags"):
        edit(pipe, max_drags=1)
    assert calls == []
    edit(pipe, handle_points=(10, 12), target_points=(15, 12), max_drags=1)


def test_a_prompt_over_the_documented_length_is_refused(pipe):
    from fastdrag.inputs import MAX_PROMPT_CHARS

    calls = watch_models(pipe)
    with pytest.raises(ValueError, match=r"`prompt` has 4,000,000 characters; at most 10,000"):
        edit(pipe, prompt="a" * 4_000_000)
    with pytest.raises(ValueError, match="`negative_prompt` has"):
        edit(pipe, negative_prompt="a" * (MAX_PROMPT_CHARS + 1))
    assert calls == []
    edit(pipe, prompt="a " * (MAX_PROMPT_CHARS // 2))


@pytest.mark.parametrize("side", [12000, 30000])
def test_a_decompression_bomb_is_one_line_naming_the_file(tmp_path, side):
    from fastdrag.inputs import open_image

    bomb = png_declaring(tmp_path / "bomb.png", side, side)
    with pytest.raises(ValueError, match=rf"{bomb}.*{side * side:,}|{bomb}.*{side * side} pixels") as error:
        open_image(bomb)
    assert "\n" not in str(error.value) and "limit" in str(error.value)


def test_cli_refuses_a_bomb_and_too_many_drags_in_one_line_and_says_how_to_raise(tmp_path, capsys):
    bomb = png_declaring(tmp_path / "bomb.png", 12000, 12000)
    out = str(tmp_path / "o.png")
    assert main(["preview", str(bomb), "--drag", "1,1:2,2", "-o", out]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "12000x12000" in err and "--max-pixels" in err
    Image.fromarray(as_uint8(tiny_image())).save(tmp_path / "in.png")
    assert main(["preview", str(tmp_path / "in.png"), "--drag", "1,1:2,2", "-o", out, "--max-pixels", "1000"]) == 2
    assert "--max-pixels" in capsys.readouterr().err
    drags = ["--drag", "1,1:2,2"] * 3
    assert main(["preview", str(tmp_path / "in.png"), *drags, "-o", out, "--max-drags", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "over the limit of 2 drags" in err and "--max-drags" in err
    assert main(["preview", str(tmp_path / "in.png"), *drags, "-o", out, "--max-drags", "3"]) == 0


def test_dragbench_refuses_an_oversized_image_and_the_environment_raises_the_limit(tmp_path, monkeypatch):
    from tiny_models import write_dragbench

    write_dragbench(tmp_path / "data", {"cat/one": [[8, 8], [12, 8]]})
    sample = Sample("cat/one", tmp_path / "data" / "cat" / "one")
    monkeypatch.setenv("FASTDRAG_MAX_PIXELS", "1000")
    with pytest.raises(ValueError, match="over the limit of 1,000.*FASTDRAG_MAX_PIXELS"):
        load_sample(sample)
    monkeypatch.setenv("FASTDRAG_MAX_PIXELS", "4096")
    assert load_sample(sample).image.size == (IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_to_image_and_mask_read_from_files(tmp_path, suffix):
    """A phone photo is stored sideways with orientation 6 (turn 90 degrees clockwise to view): drags
    are given where the picture is seen, and the mask is turned with it."""
    stored = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 32, 3), dtype=np.uint8))  # 32 wide, 16 high
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / f"in{suffix}", exif=exif)
    mask = np.zeros((16, 32), np.uint8)
    mask[:, :8] = 255  # the stored left strip: the top strip as seen
    Image.fromarray(mask).save(tmp_path / "mask.png", exif=exif)
    out = tmp_path / "out.png"
    # (x, y) = (12, 28) is inside only as seen: 16 wide, 32 high.
    assert main(["preview", str(tmp_path / f"in{suffix}"), "--drag", "8,28:12,26", "--mask", str(tmp_path / "mask.png"),
                 "-o", str(out)]) == 0
    assert Image.open(out).size == (16, 32)
    from fastdrag.inputs import open_image

    seen = np.asarray(open_image(tmp_path / "mask.png"))
    assert seen.shape == (32, 16) and seen[:8].all() and not seen[8:].any()
