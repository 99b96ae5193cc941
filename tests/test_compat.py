"""What differs across the supported Diffusers and transformers releases, each tested on the
installed one (CI runs this file on the newest and on the oldest supported combination)."""

import inspect

import pytest
import torch
from diffusers import DiffusionPipeline, UNet2DConditionModel
from tiny_models import save_tiny_model

from fastdrag import StableDiffusionFastDragPipeline, StableDiffusionXLFastDragPipeline
from fastdrag.apps.cli import load_pipeline


@pytest.mark.parametrize(
    "pipeline_class, required",
    [(StableDiffusionFastDragPipeline, {"vae", "text_encoder", "tokenizer", "unet", "scheduler"}),
     (StableDiffusionXLFastDragPipeline, {"vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet",
                                          "scheduler"})],
    ids=["sd", "sdxl"],
)
def test_the_pipeline_annotations_are_types_that_every_diffusers_reads(pipeline_class, required):
    # Diffusers 0.33 to 0.36 skip string annotations (`from __future__ import annotations`) when they
    # collect a pipeline's expected component types, and then fail to load it
    # (KeyError: 'requires_safety_checker'). 0.37 resolves them with get_type_hints.
    parameters = inspect.signature(pipeline_class.__init__).parameters
    strings = [name for name, p in parameters.items() if isinstance(p.annotation, str)]
    assert strings == [], f"string annotations in __init__: {strings}"
    # Up to 0.36 only plain classes are collected (a `X | None` is left out), so the required ones.
    collected = DiffusionPipeline._get_signature_types.__func__(pipeline_class)
    assert required <= set(collected)
    assert collected["unet"] == (UNet2DConditionModel,)


def test_encode_prompt_takes_the_device_as_a_string(pipe):
    # Diffusers' own test_encode_prompt_works_in_isolation passes device="cpu".
    by_name = pipe.encode_prompt("a cat", "cpu", 1, False)[0]
    by_device = pipe.encode_prompt("a cat", torch.device("cpu"), 1, False)[0]
    assert torch.equal(by_name, by_device)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_command_line_loads_the_dtype_it_asks_for(tmp_path, dtype):
    # `dtype=` exists from Diffusers 0.40; before it is ignored with a warning and the model loads in
    # float32. `torch_dtype=` is accepted everywhere, deprecated from 0.40.
    pipe = load_pipeline(save_tiny_model(tmp_path / "model"), None, dtype)
    assert pipe.unet.dtype == dtype and pipe.vae.dtype == dtype and pipe.text_encoder.dtype == dtype

