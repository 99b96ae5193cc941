"""A FastDrag edit against its floor, on full-size Stable Diffusion 1.5-shaped models.

The models are built from SD 1.5's configs with random weights (nothing is downloaded): a random
UNet costs exactly what a trained one does. ``--model`` loads real weights instead.

It times, in one run:
- a default edit (10 steps, strength 0.7: 7 inversion + 7 sampling UNet calls), phase by phase;
- a re-drag from a cached inversion (``pipe(..., inversion=inv)``: warp, sampling, decode);
- the floor: the same number of bare UNet calls at batch 1, one VAE encode, one VAE decode and one
  text encode, with the stock attention processors;
and prints edit/floor, re-drag/edit, the K/V record's size and the peak memory.

    python benchmarks/bench_speed.py --resolution 256            # the CPU VM, about a minute
    python benchmarks/bench_speed.py --device cuda --dtype float16 --repeats 5

Targets: edit/floor <= 1.05; re-drag <= 0.55 x edit; H100, fp16, 512^2: edit <= 0.35 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time

import torch

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.cli import DTYPES, pick_device_and_dtype
from fastdrag.pipeline_fastdrag import PHASES, synchronize

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
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    set_alpha_to_one=False, steps_offset=1,
)


def random_sd15_pipeline(dtype: torch.dtype) -> StableDiffusionFastDragPipeline:
    """SD 1.5-shaped UNet, VAE and CLIP text encoder with random weights; a byte-level tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from tiny_models import tiny_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    vae = AutoencoderKL(**SD15_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    pipe = StableDiffusionFastDragPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tiny_tokenizer(tempfile.mkdtemp(), model_max_length=77),
        unet=unet, scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def load_pipeline(args, dtype: torch.dtype) -> StableDiffusionFastDragPipeline:
    if args.model:
        return StableDiffusionFastDragPipeline.from_pretrained(args.model, dtype=dtype, safety_checker=None)
    return random_sd15_pipeline(dtype)


class Clock:
    """Wall time of a block, with the device synchronised on both sides."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def benchmark_inputs(size: int):
    """A smooth image, a central mask and two drags, in image pixels (x, y)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    handles = [(0.40 * size, 0.45 * size), (0.60 * size, 0.55 * size)]
    targets = [(0.48 * size, 0.40 * size), (0.55 * size, 0.62 * size)]
    return image, mask, handles, targets


def time_edit(pipe, inputs, args, device) -> tuple[float, dict[str, float]]:
    image, mask, handles, targets = inputs
    with pipe.timing_phases() as phases, Clock(device) as clock:
        pipe(image, handle_points=handles, target_points=targets, mask=mask, prompt=args.prompt,
             num_inference_steps=args.steps, inversion_strength=args.strength)
    return clock.seconds, dict(phases)


def time_redrag(pipe, inversion, inputs, device) -> float:
    _, mask, handles, targets = inputs
    with Clock(device) as clock:
        pipe(handle_points=handles, target_points=[(x + 3, y) for x, y in targets], mask=mask, inversion=inversion)
    return clock.seconds


@torch.no_grad()
def time_floor(pipe, inputs, args, device) -> dict[str, float]:
    """The unavoidable work: bare UNet calls at batch 1, VAE encode and decode, text encode."""
    image = inputs[0]
    calls = 2 * pipe.check_schedule(args.steps, args.strength)
    inversion_steps, sampling_steps = pipe.timesteps_for(args.steps, calls // 2)
    timings = {}
    with Clock(device) as clock:
        embeds = pipe.encode_prompt(args.prompt, device)
    timings["text"] = clock.seconds
    with Clock(device) as clock:
        latents = pipe.encode_image(image, device).to(pipe.unet.dtype)
    timings["encode"] = clock.seconds
    with Clock(device) as clock:
        for t in inversion_steps + sampling_steps:
            pipe.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)
    timings[f"{calls} UNet calls"] = clock.seconds
    with Clock(device) as clock:
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        pipe.image_processor.postprocess(decoded, output_type="pil")
    timings["decode"] = clock.seconds
    return timings


def peak_memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process peak RSS"


def attention_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return contextlib.nullcontext()
    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
    return sdpa_kernel(backend)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--resolution", type=int, default=512, help="square image side, a multiple of 8")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--strength", type=float, default=0.7)
    parser.add_argument("--prompt", default="a photo")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each; the median is shown")
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits first (kernels, allocator, compile)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (used by edit and floor)")
    parser.add_argument("--sdpa", default="default", choices=["default", "math", "flash", "efficient", "cudnn"])
    parser.add_argument("--model", help="load real weights (Hub id or folder) instead of random SD 1.5 shapes")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads on the CPU")
    args = parser.parse_args()

    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    pipe = load_pipeline(args, dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    if args.compile:
        pipe.unet.compile()
    built = time.perf_counter() - start
    inputs = benchmark_inputs(args.resolution)

    edits, phases, redrags, floors, kv_bytes = [], [], [], [], 0
    with attention_backend(args.sdpa):
        for _ in range(args.warmup):
            time_edit(pipe, inputs, args, device)
            time_floor(pipe, inputs, args, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.repeats):
            seconds, phase_times = time_edit(pipe, inputs, args, device)
            edits.append(seconds)
            phases.append(phase_times)
            floors.append(time_floor(pipe, inputs, args, device))
            inversion = pipe.invert(inputs[0], prompt=args.prompt, num_inference_steps=args.steps,
                                    inversion_strength=args.strength)
            kv_bytes = inversion.kv_bank.nbytes
            redrags.append(time_redrag(pipe, inversion, inputs, device))
            del inversion

    median = statistics.median
    edit = median(edits)
    floor_parts = {name: median(f[name] for f in floors) for name in floors[0]}
    floor = sum(floor_parts.values())
    redrag = median(redrags)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"device: {name}; torch {torch.__version__}; {str(dtype).removeprefix('torch.')}; "
          f"{args.resolution}x{args.resolution}; steps {args.steps}, strength {args.strength}; sdpa {args.sdpa}; "
          f"compile {args.compile}; {'weights ' + args.model if args.model else 'random SD 1.5-shaped weights'}; "
          f"built in {built:.1f} s; median of {args.repeats} after {args.warmup} warm-up")
    print()
    print("| what | seconds |")
    print("|---|---:|")
    for phase in PHASES:
        if phase in phases[0]:
            print(f"| edit: {phase} | {median(p[phase] for p in phases):.3f} |")
    print(f"| **edit, total** | **{edit:.3f}** |")
    for part, seconds in floor_parts.items():
        print(f"| floor: {part} | {seconds:.3f} |")
    print(f"| **floor, total** | **{floor:.3f}** |")
    print(f"| **re-drag (cached inversion)** | **{redrag:.3f}** |")
    print()
    print(f"edit / floor = {edit / floor:.3f} (target <= 1.05)")
    print(f"re-drag / edit = {redrag / edit:.3f} (target <= 0.55)")
    print(f"K/V record: {kv_bytes / 2**20:.1f} MiB")
    print(f"peak memory: {peak_memory_text(device)}")


if __name__ == "__main__":
    main()
