"""What Diffusers' own common pipeline tests expect of a pipeline, and the loader mixins of an SD
pipeline: components in isolation, prompt embeddings, optional components through save/load, any
Diffusers VAE, from_pipe both ways, LoRA and textual inversion. Tiny models, offline."""

import numpy as np
import pytest
import torch
from diffusers import (
    AsymmetricAutoencoderKL,
    AutoencoderKL,
    AutoencoderTiny,
    ConsistencyDecoderVAE,
    StableDiffusionPipeline,
)
from tiny_models import IMAGE_SIZE, needs_peft, random_lora, tiny_components, tiny_image

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.inputs import image_to_latent_mask, image_to_latent_points
from fastdrag.warpage import warp_latents


HANDLES = [(10.0, 12.0), (20.5, 19.0)]  # image (x, y)
TARGETS = [(15.0, 12.0), (22.0, 25.5)]
TEXT_COMPONENTS = ("text_encoder", "tokenizer")


def make(**overrides) -> StableDiffusionFastDragPipeline:
    pipe = StableDiffusionFastDragPipeline(**tiny_components(**overrides))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit(pipe, **kwargs):
    args = dict(image=tiny_image(), handle_points=HANDLES, target_points=TARGETS, output_type="np")
    args.update(kwargs)
    if "prompt_embeds" not in args:
        args.setdefault("prompt", "a cat")
    return pipe(**args).images


# --------------------------------------------------------------------------------------------
# Prompts and embeddings
# --------------------------------------------------------------------------------------------


def test_encode_prompt_works_in_isolation(pipe):
    # Diffusers' isolation test: a pipeline holding only the text components encodes the prompt.
    alone = StableDiffusionFastDragPipeline(
        **{name: component if name in TEXT_COMPONENTS else None for name, component in pipe.components.items()},
        requires_safety_checker=False,
    )
    assert alone.unet is None and alone.vae is None and alone.scheduler is None
    device = torch.device("cpu")
    got = alone.encode_prompt("a cat", device, 1, True, negative_prompt="blurry")
    want = pipe.encode_prompt("a cat", device, 1, True, negative_prompt="blurry")
    assert len(got) == 2 and got[0].shape == (1, 16, 32)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert not torch.equal(got[0], got[1])
    prompt_embeds, negative = pipe.encode_prompt("a cat", device, num_images_per_prompt=3, do_classifier_free_guidance=False)
    assert negative is None and prompt_embeds.shape == (3, 16, 32) and torch.equal(prompt_embeds[2], want[0][0])


def test_prompt_embeddings_stand_for_the_prompts(pipe):
    device = torch.device("cpu")
    embeds, negative = pipe.encode_prompt("a cat", device, 1, True, negative_prompt="blurry")
    np.testing.assert_array_equal(edit(pipe, prompt=None, prompt_embeds=embeds), edit(pipe))
    np.testing.assert_array_equal(
        edit(pipe, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=3.0),
        edit(pipe, negative_prompt="blurry", guidance_scale=3.0),
    )
    from_embeds = pipe.invert(tiny_image(), prompt_embeds=embeds)
    from_text = pipe.invert(tiny_image(), prompt="a cat")
    assert from_embeds.prompt is None and torch.equal(from_embeds.latents, from_text.latents)
    np.testing.assert_array_equal(
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=from_embeds, output_type="np").images, edit(pipe)
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt="a cat", prompt_embeds=torch.zeros(1, 16, 32)), "Cannot forward both `prompt` and `prompt_embeds`"),
        (dict(prompt=None, prompt_embeds=torch.zeros(16, 32)), r"`prompt_embeds` must be a \(1, tokens, dim\) tensor"),
        (dict(prompt=None, prompt_embeds=torch.zeros(2, 16, 32)), r"\(1, tokens, dim\) tensor \(one image\)"),
        (dict(prompt=None, prompt_embeds=torch.zeros(1, 16, 32), negative_prompt_embeds=torch.zeros(1, 8, 32)),
         "must have the same shape"),
        (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 16, 32)), "Cannot forward both `negative_prompt`"),
    ],
)
def test_bad_prompt_embeddings_are_refused_before_any_model_runs(pipe, kwargs, message):
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append("unet"))
    pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append("text"))
    with pytest.raises(ValueError, match=message):
        edit(pipe, **kwargs)
    assert calls == []


def test_a_pipeline_without_text_encoder_asks_for_embeddings():
    pipe = make(text_encoder=None, tokenizer=None)
    with pytest.raises(ValueError, match="no text encoder or tokenizer: pass `prompt_embeds`"):
        edit(pipe)
    assert edit(pipe, prompt=None, prompt_embeds=torch.randn(1, 16, 32)).shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_an_inversion_refuses_other_prompt_embeddings(pipe):
    inversion = pipe.invert(tiny_image(), prompt="a cat")
    with pytest.raises(ValueError, match="`prompt_embeds` differ from the inversion's"):
        pipe(handle_points=HANDLES, target_points=TARGETS, inversion=inversion, prompt_embeds=torch.zeros(1, 16, 32))


# --------------------------------------------------------------------------------------------
# Optional components, save/load, from_pipe
# --------------------------------------------------------------------------------------------


def test_optional_components_set_to_none_round_trip_through_save_and_load(pipe, tmp_path):
    for name in pipe._optional_components:
        setattr(pipe, name, None)
    expected = edit(pipe)
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionFastDragPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name in pipe._optional_components:
        assert getattr(loaded, name) is None, name
    np.testing.assert_array_equal(edit(loaded), expected)


def public_config(pipeline) -> dict:
    return {key: value for key, value in pipeline.config.items() if not key.startswith("_")}


def test_from_pipe_configs_are_consistent_both_ways():
    sd = StableDiffusionPipeline(**tiny_components())
    there_and_back = StableDiffusionPipeline.from_pipe(StableDiffusionFastDragPipeline.from_pipe(sd))
    assert public_config(there_and_back) == public_config(sd)
    fastdrag = make()
    back_again = StableDiffusionFastDragPipeline.from_pipe(StableDiffusionPipeline.from_pipe(fastdrag))
    assert public_config(back_again) == public_config(fastdrag)


# --------------------------------------------------------------------------------------------
# Any Diffusers VAE
# --------------------------------------------------------------------------------------------


def tiny_vaes() -> dict:
    torch.manual_seed(0)
    return {
        "AutoencoderKL": tiny_components()["vae"],
        "AutoencoderTiny": AutoencoderTiny(
            encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1), latent_channels=4,
        ),
        "AsymmetricAutoencoderKL": AsymmetricAutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, down_block_out_channels=(8, 16), layers_per_down_block=1,
            up_block_types=("UpDecoderBlock2D",) * 2, up_block_out_channels=(8, 16), layers_per_up_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=IMAGE_SIZE,
        ),
        "ConsistencyDecoderVAE": ConsistencyDecoderVAE(
            encoder_block_out_channels=(8, 16), encoder_down_block_types=("DownEncoderBlock2D",) * 2,
            encoder_layers_per_block=1, encoder_norm_num_groups=4, latent_channels=4,
            decoder_block_out_channels=(8, 16), decoder_down_block_types=("ResnetDownsampleBlock2D",) * 2,
            decoder_up_block_types=("ResnetUpsampleBlock2D",) * 2, decoder_layers_per_block=1,
            decoder_norm_num_groups=4, sample_size=IMAGE_SIZE,
        ),
    }


@pytest.mark.parametrize("name", list(tiny_vaes()))
def test_any_diffusers_vae_encodes_drags_and_decodes(name):
    vae = tiny_vaes()[name]
    assert isinstance(vae, (AutoencoderKL, AutoencoderTiny, AsymmetricAutoencoderKL, ConsistencyDecoderVAE))
    pipe = make(vae=vae)
    assert pipe.vae_scale_factor == 2
    # With a zero-noise UNet the call returns the warped encoding: the latent is read right.
    torch.nn.init.zeros_(pipe.unet.conv_out.weight)
    torch.nn.init.zeros_(pipe.unet.conv_out.bias)
    latents = edit(pipe, output_type="latent")
    encoded = pipe.encode_image(tiny_image()[None], torch.device("cpu"))
    mask = image_to_latent_mask(torch.ones(IMAGE_SIZE, IMAGE_SIZE), 2)
    want = warp_latents(encoded, mask, image_to_latent_points(HANDLES, 2), image_to_latent_points(TARGETS, 2))
    torch.testing.assert_close(latents, want, atol=1e-5, rtol=1e-5)
    image = edit(pipe)
    assert image.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and np.isfinite(image).all()


# --------------------------------------------------------------------------------------------
# LoRA and textual inversion
# --------------------------------------------------------------------------------------------




@needs_peft
def test_unet_lora_changes_the_edit_and_unloading_restores_the_bits(pipe, tmp_path):
    unet_lora = random_lora(tiny_components()["unet"], ["to_q", "to_k", "to_v", "to_out.0"])
    StableDiffusionFastDragPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=unet_lora)
    before = edit(pipe)
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="drag")
    assert "drag" in pipe.get_active_adapters()
    assert np.abs(edit(pipe) - before).max() > 1e-3
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(edit(pipe), before)


@needs_peft
def test_text_encoder_lora_changes_the_prompt_embedding(pipe, tmp_path):
    lora = random_lora(tiny_components()["text_encoder"], ["q_proj", "k_proj", "v_proj", "out_proj"])
    StableDiffusionFastDragPipeline.save_lora_weights(tmp_path / "lora", text_encoder_lora_layers=lora)
    before = pipe.encode_prompt("a cat", torch.device("cpu"))[0]
    pipe.load_lora_weights(tmp_path / "lora")
    assert not torch.equal(pipe.encode_prompt("a cat", torch.device("cpu"))[0], before)
    pipe.unload_lora_weights()
    assert torch.equal(pipe.encode_prompt("a cat", torch.device("cpu"))[0], before)


def test_textual_inversion_token_conditions_the_edit(pipe):
    before = pipe.encode_prompt("a <drag-toy>", torch.device("cpu"))[0]
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    pipe.load_textual_inversion({"<drag-toy>": vector})
    token_id = pipe.tokenizer.convert_tokens_to_ids("<drag-toy>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[token_id], vector)
    after = pipe.encode_prompt("a <drag-toy>", torch.device("cpu"))[0]
    assert not torch.equal(after, before)
    assert not np.array_equal(edit(pipe, prompt="a <drag-toy>"), edit(pipe, prompt="a"))
