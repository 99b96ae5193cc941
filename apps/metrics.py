"""DragBench metrics: MD (DIFT point matching) and image fidelity 1 - LPIPS.

- **MD**, mean distance, lower is better. DIFT features (Stable Diffusion 2.1, the output of
  ``unet.up_blocks[1]`` at ``t = 261``, averaged over an ensemble of 8 noise draws, empty prompt)
  of the original and the edited image, upsampled to the image size. For each handle, the pixel
  of the edited image whose feature is most similar (cosine) to the handle's feature in the
  original is found; MD is its L2 distance to the target, in pixels, averaged over all drags.
- **1 - LPIPS** (AlexNet, both images resized to 224 x 224), higher is better.

The feature network and the image distance are arguments, so tests run on tiny models and the
real ones (``DiftFeaturizer.from_pretrained``, :func:`load_lpips`) load only when asked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..inputs import image_to_tensor
from .compat import from_pretrained_dtype
from .dragbench import find_samples, is_done, load_sample, read_results


DIFT_MODEL = "stabilityai/stable-diffusion-2-1"
LPIPS_SIZE = 224

# (1, 3, H, W) in [-1, 1] -> (1, C, h, w) features
Featurizer = Callable[[torch.Tensor], torch.Tensor]
# two (N, 3, 224, 224) batches in [-1, 1] -> (N,) distances
ImageDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _StopForward(Exception):
    """Raised by the feature hook: the UNet's remaining blocks are not needed."""


class DiftFeaturizer:
    """DIFT (Tang et al., 2023) diffusion features, implemented with Diffusers components.

    The image is encoded, noised to timestep ``t`` with ``ensemble_size`` independent noises (one
    batch), and the UNet runs on the empty prompt until ``up_blocks[up_ft_index]``; its output,
    averaged over the ensemble, is the feature map. The noise comes from a generator seeded with
    ``seed`` at every call, so equal images give equal features.
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, t: int = 261, up_ft_index: int = 1,
                 ensemble_size: int = 8, seed: int = 0):
        if not 0 <= up_ft_index < len(unet.up_blocks):
            raise ValueError(f"`up_ft_index` must be in [0, {len(unet.up_blocks) - 1}], got {up_ft_index}")
        if not 0 <= t < scheduler.config.num_train_timesteps:
            raise ValueError(f"`t` must be in [0, {scheduler.config.num_train_timesteps - 1}], got {t}")
        if ensemble_size < 1:
            raise ValueError(f"`ensemble_size` must be at least 1, got {ensemble_size}")
        self.unet, self.vae, self.scheduler = unet.eval(), vae.eval(), scheduler
        self.t, self.up_ft_index, self.ensemble_size, self.seed = t, up_ft_index, ensemble_size, seed
        with torch.no_grad():
            ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            self.empty_embeds = text_encoder(ids.to(text_encoder.device))[0].to(unet.device, unet.dtype)

    @classmethod
    def from_pretrained(cls, model: str = DIFT_MODEL, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, **kwargs) -> DiftFeaturizer:
        """Load the components of a Stable Diffusion model (Hub id or folder); SD 2.1 by default."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        load = from_pretrained_dtype(dtype)
        return cls(
            unet=UNet2DConditionModel.from_pretrained(model, subfolder="unet", **load).to(device),
            vae=AutoencoderKL.from_pretrained(model, subfolder="vae", **load).to(device),
            text_encoder=CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **load).to(device),
            tokenizer=CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
            scheduler=DDIMScheduler.from_pretrained(model, subfolder="scheduler"),
            **kwargs,
        )

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """``(1, 3, H, W)`` in [-1, 1] -> ``(1, C, H / f', W / f')`` averaged features."""
        device, dtype = self.unet.device, self.unet.dtype
        generator = torch.Generator("cpu").manual_seed(self.seed)
        pixels = image.to(device=self.vae.device, dtype=self.vae.dtype).expand(self.ensemble_size, -1, -1, -1)
        latents = self.vae.encode(pixels).latent_dist.sample(generator=generator) * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device=device, dtype=dtype)
        t = torch.tensor([self.t], device=device)
        noisy = self.scheduler.add_noise(latents.to(device, dtype), noise, t)
        captured: list[torch.Tensor] = []

        def capture(module, args, output):
            captured.append(output)
            raise _StopForward

        handle = self.unet.up_blocks[self.up_ft_index].register_forward_hook(capture)
        try:
            self.unet(noisy, t, encoder_hidden_states=self.empty_embeds.expand(self.ensemble_size, -1, -1))
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0].float().mean(dim=0, keepdim=True)


def upsample_features(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(1, C, h, w)`` -> ``(1, C, H, W)`` bilinear, ``size`` as ``(H, W)``."""
    return F.interpolate(features.float(), size=size, mode="bilinear", align_corners=False)


def matched_points(source: torch.Tensor, edited: torch.Tensor, handles_rc: torch.Tensor) -> torch.Tensor:
    """Where each handle's feature went: ``(K, 2)`` ``(row, col)`` of the best cosine match.

    ``source``, ``edited``: ``(1, C, H, W)`` features at image resolution; ``handles_rc``:
    ``(K, 2)`` integer ``(row, col)`` pixels in the source.
    """
    _, channels, _height, width = edited.shape
    handle_features = source[0, :, handles_rc[:, 0], handles_rc[:, 1]].T  # (K, C)
    similarity = F.normalize(handle_features, dim=1) @ F.normalize(edited[0].reshape(channels, -1), dim=0)
    best = similarity.argmax(dim=1)
    return torch.stack([best // width, best % width], dim=1)


def xy_to_pixel_rc(points_xy) -> torch.Tensor:
    """``(K, 2)`` image points ``(x, y)`` -> ``(K, 2)`` long ``(row, col)`` of the pixels holding them."""
    return torch.as_tensor(np.asarray(points_xy, dtype=np.float64)).floor().long().flip(-1)


def point_distances(source: torch.Tensor, edited: torch.Tensor, handles_xy, targets_xy) -> np.ndarray:
    """``(K,)`` L2 pixel distances between each target and where its handle's feature went.

    Points are image pixels ``(x, y)``; a fractional point uses the pixel that contains it.
    """
    height, width = edited.shape[-2:]
    handles_rc, targets_rc = xy_to_pixel_rc(handles_xy), xy_to_pixel_rc(targets_xy)
    if not ((handles_rc[:, 0] < height) & (handles_rc[:, 1] < width) & (handles_rc >= 0).all(dim=1)).all():
        raise ValueError(f"handle points must lie inside the {width}x{height} image, got {list(handles_xy)}")
    found = matched_points(source, edited, handles_rc)
    return (found - targets_rc).float().norm(dim=1).numpy()


def pil_to_signed(image) -> torch.Tensor:
    """A PIL image (any mode, read by value as the pipeline reads it) -> ``(1, 3, H, W)`` float in [-1, 1]."""
    return image_to_tensor(image) * 2 - 1


def load_lpips(device: str | torch.device = "cpu") -> ImageDistance:
    """LPIPS with AlexNet from the ``lpips`` package (``pip install 'diffusers-fastdrag[eval]'``).

    ``lpips`` imports torchvision and downloads AlexNet's weights on first use.
    """
    try:
        import lpips
    except ImportError as error:
        raise ImportError(
            "1 - LPIPS needs the `lpips` package (and torchvision): pip install 'diffusers-fastdrag[eval]'"
        ) from error
    model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()

    @torch.no_grad()
    def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return model(a.to(device), b.to(device)).flatten().cpu()

    return distance


def fidelity(original, edited, distance: ImageDistance) -> float:
    """``1 - LPIPS`` of two PIL images, both resized to 224 x 224 (bilinear)."""
    size = (LPIPS_SIZE, LPIPS_SIZE)
    a = F.interpolate(pil_to_signed(original), size=size, mode="bilinear", align_corners=False)
    b = F.interpolate(pil_to_signed(edited), size=size, mode="bilinear", align_corners=False)
    return 1.0 - float(distance(a, b)[0])


# --------------------------------------------------------------------------------------------
# A whole run
# --------------------------------------------------------------------------------------------


@dataclass
class SampleScore:
    sample: str
    category: str
    distances: list[float]  # one per drag, pixels
    fidelity: float  # 1 - LPIPS
    seconds: float | None  # edit time from results.jsonl


def score_sample(sample, record: dict, results: Path, featurizer: Featurizer, distance: ImageDistance) -> SampleScore:
    from PIL import Image

    data = load_sample(sample)
    edited = Image.open(results / record["image"])
    if edited.size != data.image.size:
        edited = edited.resize(data.image.size, Image.BILINEAR)
    size = (data.image.height, data.image.width)
    source_features = upsample_features(featurizer(pil_to_signed(data.image)), size)
    edited_features = upsample_features(featurizer(pil_to_signed(edited)), size)
    distances = point_distances(source_features, edited_features, data.handles, data.targets)
    return SampleScore(
        sample=sample.key,
        category=sample.category,
        distances=[float(d) for d in distances],
        fidelity=fidelity(data.image, edited, distance),
        seconds=record.get("seconds"),
    )


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def summarize(scores: list[SampleScore], missing: int) -> dict:
    """MD over all drags, mean 1 - LPIPS and mean edit time over samples."""
    distances = [d for score in scores for d in score.distances]
    seconds = [score.seconds for score in scores if score.seconds is not None]
    return {
        "samples": len(scores),
        "missing": missing,
        "drags": len(distances),
        "md": _mean(distances),
        "fidelity": _mean([score.fidelity for score in scores]),
        "seconds": _mean(seconds),
    }


def evaluate(data: str | os.PathLike, results: str | os.PathLike, featurizer: Featurizer,
             distance: ImageDistance, progress: bool = True) -> dict:
    """Score every sample edited successfully in ``results``: overall and per-category tables.

    A sample with no successful edit counts as ``missing`` in its category, never as a score. One
    that cannot be scored (its edited image gone or undecodable, its data refused) is missing too,
    and is listed under ``problems`` with the reason: the evaluation of the others goes on.
    """
    from tqdm.auto import tqdm

    results = Path(results)
    latest = read_results(results)
    samples = find_samples(data)
    scores, missing, problems = [], {}, []
    for sample in tqdm(samples, desc="DragBench eval", disable=not progress):
        record = latest.get(sample.key)
        problem = None
        done = is_done(record, results)
        if record is not None and record.get("status") == "ok" and not done:
            problem = "its edited image is missing or cannot be decoded; `dragbench run` redoes it"
        elif done:
            try:
                scores.append(score_sample(sample, record, results, featurizer, distance))
                continue
            except Exception as error:  # noqa: BLE001 - one bad sample must not lose the whole evaluation
                problem = f"{type(error).__name__}: {error}"
        if problem:
            problems.append({"sample": sample.key, "problem": problem})
        missing[sample.category] = missing.get(sample.category, 0) + 1
    categories = sorted({sample.category for sample in samples})
    return {
        "overall": summarize(scores, sum(missing.values())),
        "categories": {
            name: summarize([s for s in scores if s.category == name], missing.get(name, 0)) for name in categories
        },
        "per_sample": [vars(score) for score in scores],
        "problems": problems,
    }


def markdown_table(report: dict) -> str:
    """The report's overall and per-category rows as a Markdown table."""
    rows = [("**all**", report["overall"])] + list(report["categories"].items())
    lines = [
        "| category | samples | missing | drags | MD (px) ↓ | 1 - LPIPS ↑ | s / edit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {row['samples']} | {row['missing']} | {row['drags']} | {row['md']:.2f} "
            f"| {row['fidelity']:.3f} | {row['seconds']:.2f} |"
        )
    problems = report.get("problems") or []
    if problems:
        lines += ["", f"Not scored ({len(problems)}):"] + [f"- {p['sample']}: {p['problem']}" for p in problems]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``eval.json`` and ``eval.md`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "eval.json", out / "eval.md"
    json_path.write_text(json.dumps(report, indent=2, allow_nan=True))
    md_path.write_text(markdown_table(report))
    return json_path, md_path
