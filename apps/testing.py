"""Models and data built in code, for the tests and the benchmarks: nothing is downloaded.

- :data:`SD15_SCHEDULER` and the ``SD15_*`` model configs: Stable Diffusion 1.5's shapes and DDIM
  settings, the one place they are written down.
- :func:`byte_level_tokenizer`: a CLIP tokenizer over bytes (no merges), enough to drive a text
  encoder with random weights.
- :func:`random_sd15_pipeline`: a full-size SD 1.5-shaped pipeline with random weights; a random
  UNet costs exactly what a trained one does, so it is what the speed benchmark times.
- :data:`SDXL_SCHEDULER`, the ``SDXL_*`` configs and :func:`random_sdxl_pipeline`: the same for
  Stable Diffusion XL (base 1.0's shapes; its repo ships this Euler scheduler).
- :func:`write_dragbench`: a folder in DragBench's layout.
- :func:`capture_by_rerunning`: a stand-in for a CUDA graph capture, so that the graph path runs on
  the CPU (the tests, and the GPU suite's dry run).

The pipeline never imports this module.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1,
)
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)

# Stable Diffusion XL base 1.0's shapes (its model_index.json and component configs).
SDXL_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
    prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(SD15_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT = dict(SD15_TEXT)
SDXL_TEXT_2 = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-to-unicode table, the alphabet a CLIP tokenizer's vocabulary is built on."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = visible[:], 0
    for b in range(256):
        if b not in visible:
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_byte_level_vocabulary(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Write the byte-level CLIP vocabulary (the 256 bytes, ids below 600) as ``vocab.json`` and
    ``merges.txt`` in ``directory``; return their paths.

    transformers 5 saves a CLIP tokenizer as ``tokenizer.json`` alone, which transformers 4's
    ``CLIPTokenizer`` cannot read: a saved model keeps these two files beside it for 4.x.
    """
    directory = Path(directory)
    alphabet = _bytes_to_unicode()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [c + "</w>" for c in alphabet]
    with open(directory / "vocab.json", "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(tokens)}, f)
    with open(directory / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return directory / "vocab.json", directory / "merges.txt"


def byte_level_tokenizer(model_max_length: int, directory: str | os.PathLike | None = None):
    """A ``CLIPTokenizer`` whose vocabulary is the 256 bytes (ids below 600), written to
    ``directory`` (a new temporary one by default) and loaded back."""
    from transformers import CLIPTokenizer

    vocab, merges = write_byte_level_vocabulary(directory or tempfile.mkdtemp(prefix="byte-clip-tokenizer-"))
    return CLIPTokenizer(str(vocab), str(merges), model_max_length=model_max_length)


def random_sd15_pipeline(dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``StableDiffusionFastDragPipeline`` with SD 1.5's UNet, VAE and CLIP text encoder shapes and
    random weights, SD 1.5's DDIM settings and a byte-level tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fastdrag.pipeline_fastdrag import StableDiffusionFastDragPipeline

    torch.manual_seed(seed)
    pipe = StableDiffusionFastDragPipeline(
        vae=AutoencoderKL(**SD15_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
        tokenizer=byte_level_tokenizer(model_max_length=77),
        unet=UNet2DConditionModel(**SD15_UNET),
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def random_sdxl_pipeline(dtype: torch.dtype = torch.float32, seed: int = 0):
    """A ``StableDiffusionXLFastDragPipeline`` with SDXL base 1.0's UNet, VAE and two CLIP text
    encoders' shapes and random weights, its Euler scheduler (the pipeline converts it to DDIM) and
    byte-level tokenizers. In float32 it takes about 14 GB."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from fastdrag.pipeline_fastdrag_sdxl import StableDiffusionXLFastDragPipeline

    torch.manual_seed(seed)
    pipe = StableDiffusionXLFastDragPipeline(
        vae=AutoencoderKL(**SDXL_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SDXL_TEXT)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_2)),
        tokenizer=byte_level_tokenizer(model_max_length=77),
        tokenizer_2=byte_level_tokenizer(model_max_length=77),
        unet=UNet2DConditionModel(**SDXL_UNET),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def write_dragbench(root, samples: dict[str, list[list[float]]], size: int = 32, seed: int = 0) -> None:
    """A DragBench-format folder: ``samples`` maps ``"<category>/<sample>"`` to its ``[x, y]`` points
    (handle, target, handle, ...). Each image is a random ``size x size`` RGB; the mask is its
    centre, ``size // 8`` pixels in from each border."""
    from PIL import Image

    from .dragbench import write_sample

    rng = np.random.default_rng(seed)
    border = size // 8
    for key, points in samples.items():
        folder = Path(root) / key
        folder.mkdir(parents=True)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[border : size - border, border : size - border] = 1
        write_sample(folder, Image.fromarray(image), points, mask, prompt=f"a photo of {key}")


def capture_by_rerunning(fn, inputs: dict[str, torch.Tensor], cache) -> tuple:
    """A stand-in for ``cuda_graphs.capture_cuda_graph``: the first call's ``fn`` and static inputs,
    run again on every replay into fixed outputs. Like a CUDA graph, it sees later calls only
    through the static inputs it was given."""
    from ..cuda_graphs import as_tuple

    outputs = as_tuple(fn(**inputs))

    def replay() -> None:
        for static, new in zip(outputs, as_tuple(fn(**inputs))):
            static.copy_(new)

    return replay, outputs
