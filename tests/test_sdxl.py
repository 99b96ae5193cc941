"""StableDiffusionXLFastDragPipeline on tiny random SDXL components built in code (nothing downloaded)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.utils import dynamic_modules_utils
from tiny_models import needs_peft, random_lora, tiny_sdxl_components, tiny_sdxl_text_encoders, tiny_sdxl_unet

import fastdrag
from fastdrag import StableDiffusionXLFastDragPipeline
from fastdrag.apps.testing import SDXL_UNET
from fastdrag.attention_processors import KVBank, kv_shapes


ROOT = Path(fastdrag.__file__).resolve().parent
HEIGHT, WIDTH = 32, 48  # not square: rows and columns cannot be swapped unnoticed
HANDLES = [(14.0, 12.0)]  # image (x, y)
TARGETS = [(22.0, 16.0)]


def sdxl_image(seed: int = 0) -> torch.Tensor:
    """A smooth ``(3, 32, 48)`` image in [0, 1]."""
    coarse = torch.rand(1, 3, 4, 6, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)[0]


def drag(pipe, **kwargs) -> np.ndarray:
    args = dict(image=sdxl_image(), handle_points=HANDLES, target_points=TARGETS, prompt="a cat", output_type="np")
    args.update(kwargs)
    return pipe(**args).images


def new_pipe(**overrides) -> StableDiffusionXLFastDragPipeline:
    pipe = StableDiffusionXLFastDragPipeline(**tiny_sdxl_components(**overrides))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe() -> StableDiffusionXLFastDragPipeline:
    return new_pipe()


def up_block_self_attention(unet) -> list[str]:
    return [name for name in unet.attn_processors if name.startswith("up_blocks.") and ".attn1." in name]


def test_a_non_square_drag_makes_an_image_of_the_input_size_deterministically(pipe):
    first = drag(pipe)
    assert first.shape == (1, HEIGHT, WIDTH, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(drag(pipe), first)
    pil = pipe(sdxl_image(), HANDLES, TARGETS, prompt="a cat").images[0]
    assert pil.size == (WIDTH, HEIGHT)


def test_the_euler_scheduler_of_sdxl_repos_becomes_ddim_with_its_settings(pipe):
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.timestep_spacing == "leading"
    assert pipe.ddim_inverse_scheduler.config.steps_offset == 1
    assert pipe.timesteps_for(10, 7) == ([1, 101, 201, 301, 401, 501, 601], [601, 501, 401, 301, 201, 101, 1])


def test_replay_covers_every_up_block_self_attention_and_only_those(pipe):
    seen = []
    original = pipe.attention_replay.installed

    def spy(unet, kv):
        if kv is not None:
            seen.append(sorted(pipe.attention_replay.processors))
        return original(unet, kv)

    pipe.attention_replay.installed = spy
    drag(pipe)
    layers = sorted(up_block_self_attention(pipe.unet))
    assert len(layers) == 6 and seen == [layers, layers]
    assert sorted(pipe.attention_replay.bank.keys) == layers


def test_sdxl_base_replays_36_layers_and_its_bank_at_1024_in_float16():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
    shapes = kv_shapes(unet, (128, 128))
    assert len(shapes) == 36 == len(up_block_self_attention(unet))
    assert sorted(set(shapes.values())) == [(1024, 1280), (4096, 640)]
    # Keys and values of 7 inversion steps (the default schedule), 2 bytes each: 1470 MiB.
    bank = KVBank(shapes, 7, "meta", torch.float16)
    assert bank.nbytes == 7 * 2 * 2 * (30 * 1024 * 1280 + 6 * 4096 * 640) == 1_541_406_720


def test_consistency_on_and_off_differ(pipe):
    assert np.abs(drag(pipe) - drag(pipe, preserve_consistency=False)).max() > 1e-3


def test_redrags_from_a_cached_inversion_equal_full_calls_bit_for_bit(pipe):
    inversion = pipe.invert(sdxl_image(), prompt="a cat")
    assert inversion.conditioning.added["time_ids"].tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]]
    for targets in (TARGETS, [(8.0, 20.0)]):
        full = drag(pipe, target_points=targets)
        cached = pipe(handle_points=HANDLES, target_points=targets, inversion=inversion, output_type="np").images
        np.testing.assert_array_equal(cached, full)
    guided = drag(pipe, guidance_scale=3.0, negative_prompt="blurry")
    cached = pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, guidance_scale=3.0,
                  negative_prompt="blurry", output_type="np").images
    np.testing.assert_array_equal(cached, guided)


def test_an_inversion_takes_what_it_was_made_with_given_again(pipe):
    inversion = pipe.invert(sdxl_image(), prompt="a cat", inversion_strength=np.float32(0.7))
    expected = drag(pipe)
    again = pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, prompt="a cat", prompt_2="a cat",
                 original_size=[HEIGHT, WIDTH], crops_coords_top_left=(np.int64(0), 0), inversion_strength=0.7,
                 num_inference_steps=10, output_type="np").images
    np.testing.assert_array_equal(again, expected)


def test_an_inversion_refuses_other_conditioning(pipe):
    inversion = pipe.invert(sdxl_image(), prompt="a cat", original_size=(64, 96))
    call = dict(handle_points=HANDLES, target_points=TARGETS, inversion=inversion)
    for name, value in (("prompt", "a dog"), ("prompt_2", "a dog"), ("original_size", (32, 48)),
                        ("target_size", (64, 64)), ("crops_coords_top_left", (4, 4))):
        with pytest.raises(ValueError, match=f"`{name}`=.* differs from the inversion's"):
            pipe(**call, **{name: value})
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=False)
    with pytest.raises(ValueError, match="`pooled_prompt_embeds` differ from the inversion's"):
        pipe(**call, prompt_embeds=embeds, pooled_prompt_embeds=pooled * 5)
    with pytest.raises(ValueError, match="same shape"):
        pipe(**call, guidance_scale=2.0, negative_prompt_embeds=embeds, negative_pooled_prompt_embeds=pooled[:, :16])
    pipe(**call, original_size=(64, 96), crops_coords_top_left=(0, 0), output_type="latent")


def test_sdxl_inputs_change_the_edit(pipe):
    base = drag(pipe)
    for kwargs in (dict(prompt_2="a dog"), dict(original_size=(512, 768)), dict(crops_coords_top_left=(8, 8)),
                   dict(target_size=(64, 96))):
        assert np.abs(drag(pipe, **kwargs) - base).max() > 1e-4, kwargs


def test_guidance_negative_prompts_and_zeros_for_an_empty_negative(pipe):
    plain = drag(pipe)
    zeros = drag(pipe, guidance_scale=3.0)
    assert np.abs(zeros - plain).max() > 1e-4
    assert np.abs(drag(pipe, guidance_scale=3.0, negative_prompt="blurry") - zeros).max() > 1e-4
    assert np.abs(drag(pipe, guidance_scale=3.0, negative_prompt_2="blurry") - zeros).max() > 1e-4
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a cat", device="cpu")
    assert embeds.shape == (1, 16, 64) and pooled.shape == (1, 32)
    assert not negative.any() and not negative_pooled.any()
    unforced = new_pipe()
    unforced.register_to_config(force_zeros_for_empty_prompt=False)
    assert unforced.encode_prompt("a cat", device="cpu")[1].abs().sum() > 0


def test_embeddings_stand_for_the_prompts(pipe):
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt("a cat", do_classifier_free_guidance=True,
                                                                   negative_prompt="blurry")
    by_text = drag(pipe, guidance_scale=2.0, negative_prompt="blurry")
    by_embeds = drag(pipe, prompt=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=2.0,
                     negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
    np.testing.assert_array_equal(by_embeds, by_text)


def test_move_and_copy(pipe):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[8:18, 10:20] = 1
    moved = drag(pipe, mask=mask, mode="move")
    copied = drag(pipe, mask=mask, mode="copy")
    dragged = drag(pipe, mask=mask)
    assert moved.shape == copied.shape == (1, HEIGHT, WIDTH, 3)
    assert np.abs(moved - copied).max() > 1e-4 and np.abs(moved - dragged).max() > 1e-4
    with pytest.raises(ValueError, match="needs `mask`"):
        drag(pipe, mode="move")


def processors_of(pipe) -> dict:
    return dict(pipe.unet.attn_processors)


def test_processors_restored_after_an_error(pipe):
    before = processors_of(pipe)

    def explode(pipeline, i, t, kwargs):
        raise RuntimeError(f"stop at step {i}")

    with pytest.raises(RuntimeError, match="stop at step 0"):
        drag(pipe, callback_on_step_end=explode)
    assert all(processors_of(pipe)[k] is v for k, v in before.items())
    np.testing.assert_array_equal(drag(pipe), drag(new_pipe()))


BAD_INPUTS = [
    (dict(original_size=(0, 10)), ValueError, "`original_size` must be two integers"),
    (dict(crops_coords_top_left=(1.5, 0)), ValueError, "`crops_coords_top_left` must be two integers"),
    (dict(target_size="1024"), ValueError, "`target_size` must be two integers"),
    (dict(prompt_2=3), TypeError, "`prompt_2` must be a str or None"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 64)), ValueError, "`pooled_prompt_embeds` go together"),
    (dict(pooled_prompt_embeds=torch.zeros(1, 32)), ValueError, "`pooled_prompt_embeds` go together"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 32), pooled_prompt_embeds=torch.zeros(1, 32)), ValueError,
     "`prompt_embeds` must be 64 wide"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 64), pooled_prompt_embeds=torch.zeros(1, 16)), ValueError,
     "six time ids and a 16-wide pooled text embedding"),
    (dict(guidance_scale=2.0, negative_prompt_embeds=torch.zeros(1, 16, 64),
          negative_pooled_prompt_embeds=torch.zeros(1, 16)), ValueError, "six time ids and a 16-wide pooled"),
    (dict(prompt_embeds=torch.zeros(1, 16, 64), pooled_prompt_embeds=torch.zeros(1, 32)), ValueError,
     "Cannot forward both `prompt`"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 64), pooled_prompt_embeds=torch.zeros(2, 32)), ValueError,
     r"`pooled_prompt_embeds` must be a \(1, dim\) tensor"),
    (dict(target_points=[(60.0, 12.0)]), ValueError, "outside the 48x32 image"),
    (dict(image=torch.rand(3, 31, 48)), ValueError, "multiples of the VAE scale factor 2"),
    (dict(mode="twist"), ValueError, "`mode` must be one of"),
    (dict(original_size=(70000, 70000)), ValueError, r"`original_size` must be two integers in \[1, 16384\]"),
    (dict(prompt=None, prompt_embeds=torch.full((1, 16, 64), float("nan")), pooled_prompt_embeds=torch.zeros(1, 32)),
     ValueError, "`prompt_embeds` holds NaN or infinite values"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 64), pooled_prompt_embeds=torch.full((1, 32), float("inf"))),
     ValueError, "`pooled_prompt_embeds` holds NaN or infinite values"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 64, dtype=torch.complex64),
          pooled_prompt_embeds=torch.zeros(1, 32)), TypeError, "must be a real floating point tensor"),
    (dict(guidance_scale=2.0, negative_prompt_embeds=torch.zeros(1, 5, 64), negative_pooled_prompt_embeds=torch.zeros(1, 32)),
     ValueError, "`negative_prompt_embeds` has 5 tokens, but the prompt encodes to 16"),
    (dict(prompt=None, prompt_embeds=torch.zeros(1, 32, 64), pooled_prompt_embeds=torch.zeros(1, 32),
          negative_prompt="blur", guidance_scale=2.0), ValueError, "more than the tokenizer's 16"),
    (dict(callback_on_step_end=5), TypeError, "`callback_on_step_end` must be callable"),
    (dict(callback_on_step_end_tensor_inputs=None), TypeError, "`callback_on_step_end_tensor_inputs` must be a list"),
    (dict(num_inference_steps=1000, inversion_strength=1.0), ValueError, "past the scheduler's last"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_INPUTS)
def test_bad_input_is_refused_before_any_model_runs(pipe, kwargs, error, message):
    calls = []
    for model in (pipe.unet, pipe.vae, pipe.vae.encoder, pipe.text_encoder, pipe.text_encoder_2):
        model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(error, match=message):
        drag(pipe, **kwargs)
    assert calls == [] and pipe.attention_replay.bank is None  # nothing allocated either


def test_without_text_encoders_a_negative_prompt_is_refused_at_once():
    pipe = new_pipe(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    embeds, pooled = torch.zeros(1, 16, 64), torch.zeros(1, 32)
    args = dict(prompt=None, prompt_embeds=embeds, pooled_prompt_embeds=pooled, guidance_scale=2.0)
    with pytest.raises(ValueError, match="has none: pass `negative_prompt_embeds`"):
        drag(pipe, negative_prompt="blurry", **args)
    assert drag(pipe, **args).shape == (1, HEIGHT, WIDTH, 3)  # zeros need no encoder
    # An inversion does not depend on the guidance of the call before it.
    assert pipe.invert(sdxl_image(), prompt_embeds=embeds, pooled_prompt_embeds=pooled).conditioning.added


def test_a_scheduler_set_after_construction_must_be_ddim(pipe):
    from diffusers import EulerDiscreteScheduler

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="FastDrag samples with DDIM"):
        drag(pipe)


def test_a_float16_vae_with_force_upcast_runs_in_float32_and_stays_float16():
    pipe = new_pipe()
    pipe.vae.register_to_config(force_upcast=True)
    pipe.vae.to(torch.float16)
    seen = []
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    pipe.vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    image = drag(pipe)
    assert seen == [torch.float32, torch.float32] and pipe.vae.dtype == torch.float16
    assert np.isfinite(image).all()


def test_from_pipe_keeps_each_components_dtype_in_both_pipelines():
    # SDXL users keep the VAE in float32 beside a float16 UNet; the components are shared.
    source = StableDiffusionXLPipeline(**tiny_sdxl_components())
    source.unet.to(torch.float16)
    source.text_encoder_2.to(torch.float16)
    derived = StableDiffusionXLFastDragPipeline.from_pipe(source)
    for pipeline in (source, derived):
        assert pipeline.vae.dtype == torch.float32 and pipeline.unet.dtype == torch.float16
        assert pipeline.text_encoder.dtype == torch.float32 and pipeline.text_encoder_2.dtype == torch.float16
    assert StableDiffusionXLFastDragPipeline.from_pipe(source, torch_dtype=torch.float32).unet.dtype == torch.float32


def test_from_pipe_of_a_diffusers_sdxl_pipeline_equals_the_class(pipe):
    source = StableDiffusionXLPipeline(**tiny_sdxl_components())
    derived = StableDiffusionXLFastDragPipeline.from_pipe(source)
    derived.set_progress_bar_config(disable=True)
    assert derived.unet is source.unet and derived.text_encoder_2 is source.text_encoder_2
    np.testing.assert_array_equal(drag(derived), drag(pipe))


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    loaded = StableDiffusionXLFastDragPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.inverse_scheduler is None and isinstance(loaded.scheduler, DDIMScheduler)
    np.testing.assert_array_equal(drag(loaded), drag(pipe))


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory) -> str:
    """An SDXL model folder as the Hub has them: StableDiffusionXLPipeline, Euler scheduler."""
    directory = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**tiny_sdxl_components()).save_pretrained(directory)
    return str(directory)


def package_drag(sdxl_dir) -> np.ndarray:
    pipe = StableDiffusionXLFastDragPipeline.from_pretrained(sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    return drag(pipe)


def test_a_local_custom_pipeline_file_equals_the_package(sdxl_dir, tmp_path):
    # A checkout copied elsewhere; Diffusers copies the entry file and its direct relative imports.
    for path in ROOT.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)
    pipe = DiffusionPipeline.from_pretrained(sdxl_dir, custom_pipeline=str(tmp_path / "pipeline_fastdrag_sdxl.py"),
                                             trust_remote_code=True)
    assert type(pipe).__name__ == "StableDiffusionXLFastDragPipeline"
    assert type(pipe).__module__.startswith("diffusers_modules.")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(drag(pipe), package_drag(sdxl_dir))


def test_the_community_name_fastdrag_sdxl_equals_the_package(sdxl_dir, tmp_path, monkeypatch):
    community = ROOT / "community" / "fastdrag_sdxl.py"

    def community_mirror(repo_id, filename, repo_type=None, **kwargs):
        assert filename.endswith("/fastdrag_sdxl.py") and repo_type == "dataset"
        return str(community)

    monkeypatch.setattr(dynamic_modules_utils, "hf_hub_download", community_mirror)
    monkeypatch.chdir(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(sdxl_dir, custom_pipeline="fastdrag_sdxl", custom_revision="main")
    assert type(pipe).__name__ == "StableDiffusionXLFastDragPipeline"
    assert type(pipe).__module__.startswith("diffusers_modules.")
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(drag(pipe), package_drag(sdxl_dir))


def test_stand_in_graphs_give_the_eager_bits(pipe):
    from fastdrag.apps.testing import capture_by_rerunning
    from fastdrag.cuda_graphs import GraphCache

    eager = drag(pipe, guidance_scale=2.0)
    pipe.attention_replay.graphs = GraphCache(capture=capture_by_rerunning, device_type="cpu")
    np.testing.assert_array_equal(drag(pipe, guidance_scale=2.0), eager)
    np.testing.assert_array_equal(drag(pipe, guidance_scale=2.0), eager)
    assert pipe.attention_replay.graphs.captures == 3


@needs_peft
def test_unet_and_text_encoder_lora_change_the_edit_and_unloading_restores_the_bits(pipe, tmp_path):
    unet_lora = random_lora(tiny_sdxl_unet(), ["to_q", "to_k", "to_v", "to_out.0"])
    encoder_lora = random_lora(tiny_sdxl_text_encoders()[1], ["q_proj", "k_proj", "v_proj", "out_proj"])
    StableDiffusionXLFastDragPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=unet_lora, text_encoder_2_lora_layers=encoder_lora
    )
    before, embeds = drag(pipe), pipe.encode_prompt("a cat", device="cpu")[0]
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="drag")
    assert "drag" in pipe.get_active_adapters()
    assert np.abs(drag(pipe) - before).max() > 1e-3
    assert not torch.equal(pipe.encode_prompt("a cat", device="cpu")[0], embeds)
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(drag(pipe), before)


def test_textual_inversion_tokens_condition_the_edit(pipe):
    # SDXL embeddings come as one vector per text encoder, each loaded with its tokenizer.
    before = pipe.encode_prompt("a <drag-toy>", device="cpu")[0]
    for index, (encoder, tokenizer) in enumerate(((pipe.text_encoder, pipe.tokenizer),
                                                  (pipe.text_encoder_2, pipe.tokenizer_2))):
        vector = torch.randn(32, generator=torch.Generator().manual_seed(index))
        pipe.load_textual_inversion({"<drag-toy>": vector}, text_encoder=encoder, tokenizer=tokenizer)
    after = pipe.encode_prompt("a <drag-toy>", device="cpu")[0]
    assert not torch.equal(after, before)
    assert np.abs(drag(pipe, prompt="a <drag-toy>") - drag(pipe, prompt="a")).max() > 1e-4


def test_a_vae_with_latent_statistics_encodes_and_decodes_as_diffusers_does(pipe):
    # Playground-style SDXL VAEs normalise each latent channel by its mean and std.
    mean, std = [0.5, -0.25, 0.0, 1.0], [2.0, 0.5, 1.0, 4.0]
    pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
    pixels = sdxl_image()[None]
    raw = pipe.vae.encode(pixels * 2 - 1).latent_dist.mode()
    shape = (1, 4, 1, 1)
    expected = (raw - torch.tensor(mean).view(shape)) * pipe.vae.config.scaling_factor / torch.tensor(std).view(shape)
    latents = pipe.encode_image(pixels, torch.device("cpu"))
    torch.testing.assert_close(latents, expected)
    torch.testing.assert_close(pipe.decode_image(latents), pipe.vae.decode(raw).sample)


def test_diffusers_sdxl_cfg_cutoff_callback_samples_the_rest_without_guidance(pipe):
    from diffusers.callbacks import SDXLCFGCutoffCallback

    batches = []
    pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    cutoff = SDXLCFGCutoffCallback(cutoff_step_index=3, cutoff_step_ratio=None)
    cut = drag(pipe, guidance_scale=3.0, negative_prompt="blurry", callback_on_step_end=cutoff)
    assert batches == [1] * 7 + [2] * 4 + [1] * 3
    assert np.abs(cut - drag(pipe, guidance_scale=3.0, negative_prompt="blurry")).max() > 1e-4


def test_a_callback_may_replace_the_added_conditioning_but_not_its_shape(pipe):
    def later_crop(pipeline, i, t, tensors):
        return {"add_time_ids": tensors["add_time_ids"] + 8}

    args = dict(callback_on_step_end=later_crop, callback_on_step_end_tensor_inputs=["add_time_ids"])
    assert np.abs(drag(pipe, **args) - drag(pipe)).max() > 1e-4

    def wrong(pipeline, i, t, tensors):
        return {"add_text_embeds": tensors["add_text_embeds"][:, :4]}

    with pytest.raises(ValueError, match="returned `add_text_embeds` of shape"):
        drag(pipe, callback_on_step_end=wrong, callback_on_step_end_tensor_inputs=["add_text_embeds"])


def test_a_callback_must_return_a_dict(pipe):
    with pytest.raises(ValueError, match="`callback_on_step_end` must return a dict"):
        drag(pipe, callback_on_step_end=lambda pipeline, i, t, tensors: None)
    assert all("FastDrag" not in type(p).__name__ for p in pipe.unet.attn_processors.values())


def test_invert_takes_a_bool_for_preserve_consistency(pipe):
    with pytest.raises(TypeError, match="`preserve_consistency` must be a bool"):
        pipe.invert(sdxl_image(), preserve_consistency="no")


def test_a_unet_of_the_other_backbone_is_refused_before_any_model_runs():
    from tiny_models import tiny_components, tiny_image, tiny_unet

    sdxl = new_pipe(unet=tiny_unet())
    with pytest.raises(ValueError, match="not an SDXL UNet"):
        drag(sdxl)
    with pytest.raises(ValueError, match="not an SDXL UNet"):
        sdxl.invert(sdxl_image())
    from fastdrag import StableDiffusionFastDragPipeline

    sd = StableDiffusionFastDragPipeline(**tiny_components(unet=tiny_sdxl_unet()))
    calls = []
    sd.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="is an SDXL UNet"):
        sd(tiny_image(), [(10, 12)], [(16, 12)])
    with pytest.raises(ValueError, match="is an SDXL UNet"):
        sd.invert(tiny_image())
    assert calls == []
