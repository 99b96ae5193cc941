"""Tiny random-weight Stable Diffusion components, built in code (nothing is downloaded).

The VAE has two levels, so ``vae_scale_factor`` is 2, not 8: tests catch any literal 8.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from fastdrag.apps.testing import SD15_SCHEDULER, SDXL_SCHEDULER, byte_level_tokenizer, write_dragbench  # noqa: F401


IMAGE_SIZE = 32  # pixels; the latent is 16 x 16


def tiny_tokenizer(directory: str | None = None, model_max_length: int = 16):
    """A byte-level CLIP tokenizer with a 16-token context."""
    return byte_level_tokenizer(model_max_length, directory)


def tiny_text_encoder() -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=600, max_position_embeddings=16,
    )
    return CLIPTextModel(config).eval()


def tiny_unet(time_cond_proj_dim: int | None = None, seed: int = 0) -> UNet2DConditionModel:
    """Self-attention in the up blocks at 16x16 (2 layers) and cross-attention to a 32-dim text."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=4, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        time_cond_proj_dim=time_cond_proj_dim,
    ).eval()


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=IMAGE_SIZE,
    ).eval()


def sd_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.5's DDIM settings, as the authors' release uses them."""
    return DDIMScheduler(**SD15_SCHEDULER)


def tiny_components(**overrides) -> dict:
    components = dict(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(), unet=tiny_unet(),
        scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    components.update(overrides)
    return components


def tiny_image(seed: int = 0) -> torch.Tensor:
    """A smooth ``(3, 32, 32)`` test image in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=IMAGE_SIZE, mode="bilinear", align_corners=False)[0]


def save_tiny_model(directory) -> str:
    """A tiny Stable Diffusion pipeline saved with ``save_pretrained``, loadable as ``--model``."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**tiny_components()).save_pretrained(directory)
    return str(directory)


# --------------------------------------------------------------------------------------------
# Stable Diffusion XL: Diffusers' own SDXL test shapes, grown a little (two text encoders whose
# hidden states are concatenated, a pooled projection and six time ids as added conditioning)
# --------------------------------------------------------------------------------------------


def tiny_sdxl_text_encoders() -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=3, vocab_size=600, max_position_embeddings=16, hidden_act="gelu",
        projection_dim=32,
    )
    return CLIPTextModel(config).eval(), CLIPTextModelWithProjection(config).eval()


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL's layout in small: no attention in the first block, two transformer layers per attention
    in the second; the up blocks' self-attention runs at 8x8 for a 16x16 latent (6 layers)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=4,
    ).eval()


def tiny_sdxl_components(**overrides) -> dict:
    """SDXL components as a Hub repo has them: an Euler scheduler, which the FastDrag pipeline converts to DDIM."""
    text_encoder, text_encoder_2 = tiny_sdxl_text_encoders()
    components = dict(
        vae=tiny_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(), unet=tiny_sdxl_unet(), scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )
    components.update(overrides)
    return components


def save_tiny_sdxl_model(directory) -> str:
    """A tiny SDXL pipeline saved with ``save_pretrained`` (class ``StableDiffusionXLPipeline``), loadable as ``--model``."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**tiny_sdxl_components()).save_pretrained(directory)
    return str(directory)


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def random_lora(model, target_modules: list[str]) -> dict:
    """Random, non-zero LoRA weights for ``model``, as a PEFT state dict."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    # peft's own injection: transformers 5's `add_adapter` asks for a peft newer than any released
    # (its MIN_PEFT_VERSION), while loading LoRA weights works from peft 0.19.
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=target_modules, init_lora_weights=False), model)
    return get_peft_model_state_dict(model)


def peft_missing() -> bool:
    return importlib.util.find_spec("peft") is None


# LoRA is the [lora] extra: the oldest supported combination is tested without it.
needs_peft = pytest.mark.skipif(peft_missing(), reason="LoRA needs peft (the [lora] extra)")


def never_load(*args, **kwargs):
    """A stand-in for a model loader in tests that must fail before any model loads."""
    raise AssertionError("the model was loaded")
