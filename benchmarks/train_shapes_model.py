"""Train the embedded shapes model from scratch: ``examples/shapes-model/``, a Diffusers pipeline
folder that ``StableDiffusionFastDragPipeline.from_pretrained`` loads offline.

Two stages, seeded: a tiny ``AutoencoderKL`` (scale factor 2: 64x64 images, 32x32x4 latents) on
synthetic shape scenes (``fastdrag.apps.shapes``), then a tiny ``UNet2DConditionModel`` (self- and
cross-attention in its up blocks at 16x16 and 8x8, so FastDrag's K/V replay has layers to work on)
on the VAE's latents of fresh scenes, epsilon prediction under Stable Diffusion 1.5's noise schedule,
with an exponential moving average of its weights. The text encoder is a small random CLIP that is
never trained: every training call sees the empty prompt, so the model is unconditional in effect.

Runs on the CPU (the 2-core CI machine took 92 minutes at the defaults, the shipped model's
settings) and on a GPU when there is one. Writes the folder, then a model card (README.md) with the command, the time, the device, the
losses and the held-out round-trip PSNR.

    python benchmarks/train_shapes_model.py --out examples/shapes-model
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastdrag.apps.cli import UsageError, at_least, pick_device_and_dtype, run_script
from fastdrag.apps.shapes import IMAGE_SIZE, render_batch
from fastdrag.apps.testing import SD15_SCHEDULER, byte_level_tokenizer, write_byte_level_vocabulary


VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    sample_size=IMAGE_SIZE, mid_block_add_attention=False,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 96), norm_num_groups=16, attention_head_dim=8, cross_attention_dim=64,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
TEXT_CONFIG = dict(
    bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=64, intermediate_size=128,
    num_attention_heads=4, num_hidden_layers=1, vocab_size=600, max_position_embeddings=77, projection_dim=64,
)
KL_WEIGHT = 1e-6
HELD_OUT_SEED = 10_000  # seeds the round-trip check's scenes; training draws from --seed


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="examples/shapes-model", help="the pipeline folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--unet-steps", type=int, default=4500)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the UNet's weights")
    parser.add_argument("--device", default="auto", help="cuda, cpu (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    return parser.parse_args(argv)


def cosine_lr(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up to ``peak``, then a cosine decay to zero at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two image batches in [-1, 1], over all pixels, in dB."""
    mse = F.mse_loss(a.clamp(-1, 1), b.clamp(-1, 1)).item() / 4  # [-1, 1] -> [0, 1]
    return 10 * math.log10(1 / mse)


def train_vae(args, device: torch.device, rng: np.random.Generator, log: dict):
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**VAE_CONFIG).to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    bar = tqdm(range(args.vae_steps), desc="VAE")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, args.vae_steps, args.vae_lr)
        images = render_batch(rng, args.vae_batch).to(device)
        posterior = vae.encode(images).latent_dist
        # The posterior's mean is what FastDrag encodes with, so the decoder learns from the mean.
        decoded = vae.decode(posterior.mean).sample
        reconstruction = F.l1_loss(decoded, images) + F.mse_loss(decoded, images)
        loss = reconstruction + KL_WEIGHT * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == args.vae_steps - 1:
            bar.set_postfix(loss=f"{reconstruction.item():.4f}", psnr=f"{psnr_db(decoded, images):.1f}")
            log["vae_loss"].append((step, round(reconstruction.item(), 5)))
    vae.eval()
    with torch.no_grad():
        # Stable Diffusion's convention: latents scaled to unit variance.
        sample = torch.cat([vae.encode(render_batch(rng, 64).to(device)).latent_dist.mean for _ in range(4)])
        vae.register_to_config(scaling_factor=float(1 / sample.std()))
    return vae


@torch.no_grad()
def round_trip_psnr(vae, device: torch.device, count: int = 256) -> float:
    """Encode (mean) and decode ``count`` held-out scenes, quantised to 8 bits as the pipeline sees them."""
    images = render_batch(np.random.default_rng(HELD_OUT_SEED), count).to(device)
    images = torch.round((images + 1) * 127.5) / 127.5 - 1
    decoded = torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in images.split(64)])
    decoded = torch.round((decoded.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1
    return psnr_db(decoded, images)


def empty_prompt_embedding(text_encoder, tokenizer, device: torch.device) -> torch.Tensor:
    """The text encoder's output for ``""``, padded to the tokenizer's length: ``(1, 77, dim)``."""
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(device))[0]


def train_unet(args, vae, text_encoder, tokenizer, device: torch.device, rng: np.random.Generator, log: dict):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(args.seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG).to(device).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    noise_schedule = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items() if k != "set_alpha_to_one"})
    alphas = noise_schedule.alphas_cumprod.to(device)
    condition = empty_prompt_embedding(text_encoder, tokenizer, device).expand(args.unet_batch, -1, -1)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.0)
    scale = vae.config.scaling_factor
    bar = tqdm(range(args.unet_steps), desc="UNet")
    for step in bar:
        for group in optimiser.param_groups:
            group["lr"] = cosine_lr(step, args.unet_steps, args.unet_lr)
        with torch.no_grad():
            latents = vae.encode(render_batch(rng, args.unet_batch).to(device)).latent_dist.mean * scale
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(alphas), (len(latents),), device=device)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(noisy, t, condition).sample, noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for averaged, current in zip(ema.parameters(), unet.parameters()):
                averaged.lerp_(current, 1 - decay)
        if step % 50 == 0 or step == args.unet_steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log["unet_loss"].append((step, round(loss.item(), 5)))
    return ema


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def write_model_card(out: Path, args, log: dict, device: torch.device, seconds: dict, sizes: dict) -> None:
    command = "python benchmarks/train_shapes_model.py " + shlex.join(sys.argv[1:])
    last = lambda key: log[key][-1][1] if log[key] else float("nan")  # noqa: E731
    card = f"""---
library_name: diffusers
pipeline_tag: image-to-image
tags: [fastdrag, drag-editing, tiny, synthetic]
---

# The FastDrag shapes model

A tiny Stable Diffusion-shaped model trained on synthetic 64x64 scenes of discs and squares (plain
backgrounds; solid or striped objects in random colours, sizes and places, overlapping), so that
FastDrag edits can be made and checked offline. Load it with
`StableDiffusionFastDragPipeline.from_pretrained("examples/shapes-model")`. It knows nothing else:
give it 64x64 images (other sizes work but are out of its training distribution) and the empty prompt.

| component | what | parameters | safetensors |
|---|---|---|---|
| vae | `AutoencoderKL`, scale factor 2 (64x64 -> 32x32x4), scaling factor {log['scaling_factor']:.4f} | {sizes['vae'][0]:,} | {sizes['vae'][1] / 1e6:.1f} MB |
| unet | `UNet2DConditionModel`, self- and cross-attention in the up blocks (8x8, 16x16), EMA weights | {sizes['unet'][0]:,} | {sizes['unet'][1] / 1e6:.1f} MB |
| text_encoder | random `CLIPTextModel` (1 layer, width 64), never trained: the model is unconditional in effect | {sizes['text_encoder'][0]:,} | {sizes['text_encoder'][1] / 1e6:.1f} MB |
| tokenizer | byte-level CLIP tokenizer (`fastdrag.apps.testing.byte_level_tokenizer`) | | |
| scheduler | DDIM with Stable Diffusion 1.5's settings | | |

## How it was made

```bash
{command}
```

- Device: {device} ({platform.processor() or platform.machine()}{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}), torch {torch.__version__}, seed {args.seed}.
- VAE: {args.vae_steps} steps at batch {args.vae_batch}, L1 + MSE on the posterior mean's decoding, KL weight {KL_WEIGHT}, AdamW, peak lr {args.vae_lr} (cosine); {seconds['vae'] / 60:.1f} min. Final reconstruction loss {last('vae_loss'):.4f}.
- UNet: {args.unet_steps} steps at batch {args.unet_batch} on the VAE's latents of fresh scenes, epsilon prediction, SD 1.5's noise schedule, AdamW, peak lr {args.unet_lr} (cosine), EMA {args.ema}; {seconds['unet'] / 60:.1f} min. Final loss {last('unet_loss'):.4f}.
- Round trip (encode with the mean, decode, 8-bit) on 256 held-out scenes: **{log['round_trip_psnr']:.2f} dB** PSNR.

The losses every 50 steps are in `training_log.json`. ShapeDrag results with this model: the repository's
`BENCHMARKS.md`.
"""
    (out / "README.md").write_text(card)


def check_arguments(args: argparse.Namespace) -> None:
    """Every number and the device, before any training: a :class:`UsageError` otherwise."""
    for option in ("vae_steps", "vae_batch", "unet_steps", "unet_batch"):
        at_least(getattr(args, option), 1, "--" + option.replace("_", "-"))
    at_least(args.threads, 0, "--threads")
    for option in ("vae_lr", "unet_lr"):
        if not 0 < getattr(args, option) < 1:
            raise UsageError(f"--{option.replace('_', '-')} must be in (0, 1), got {getattr(args, option)}")
    if not 0 <= args.ema < 1:
        raise UsageError(f"--ema must be in [0, 1), got {args.ema}")
    pick_device_and_dtype(args.device, "float32")


def main(argv=None) -> None:
    from diffusers import DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from fastdrag.pipeline_fastdrag import StableDiffusionFastDragPipeline

    args = parse_args(argv)
    check_arguments(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, _ = pick_device_and_dtype(args.device, "float32")
    out = Path(args.out)
    rng = np.random.default_rng(args.seed)
    log: dict = {"vae_loss": [], "unet_loss": []}
    seconds = {}

    start = time.perf_counter()
    vae = train_vae(args, device, rng, log)
    seconds["vae"] = time.perf_counter() - start
    log["scaling_factor"] = vae.config.scaling_factor
    log["round_trip_psnr"] = round_trip_psnr(vae, device)
    print(f"VAE: {seconds['vae'] / 60:.1f} min, held-out round trip {log['round_trip_psnr']:.2f} dB", flush=True)

    torch.manual_seed(args.seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG)).to(device).eval()
    tokenizer = byte_level_tokenizer(model_max_length=77)
    start = time.perf_counter()
    unet = train_unet(args, vae.requires_grad_(False), text_encoder, tokenizer, device, rng, log)
    seconds["unet"] = time.perf_counter() - start

    pipe = StableDiffusionFastDragPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    ).to("cpu")
    pipe.save_pretrained(out, safe_serialization=True)
    write_byte_level_vocabulary(out / "tokenizer")
    sizes = {
        name: (parameter_count(getattr(pipe, name)), sum(p.stat().st_size for p in (out / name).glob("*.safetensors")))
        for name in ("vae", "unet", "text_encoder")
    }
    log["seconds"] = seconds
    (out / "training_log.json").write_text(json.dumps(log) + "\n")
    write_model_card(out, args, log, device, seconds, sizes)
    total = sum(size for _, size in sizes.values())
    print(f"wrote {out}: {total / 1e6:.1f} MB of safetensors; VAE {seconds['vae'] / 60:.1f} min, "
          f"UNet {seconds['unet'] / 60:.1f} min; round trip {log['round_trip_psnr']:.2f} dB")


if __name__ == "__main__":
    sys.exit(run_script(main, "train_shapes_model.py"))
