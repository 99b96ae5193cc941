"""diffusers-fastdrag: FastDrag one-step drag editing as a Diffusers pipeline.

``warpage`` is light (torch only); the pipeline pulls in Diffusers and is imported on first use.
"""

# Absolute imports: pytest imports this file on its own when the checkout's folder name is not a
# Python identifier, and a relative import would fail there.
import importlib

from fastdrag.warpage import image_to_latent_mask, image_to_latent_points, preview_drag, warp_latents

__version__ = "0.1.0"

__all__ = [
    "StableDiffusionFastDragPipeline",
    "FastDragInversion",
    "image_to_latent_mask",
    "image_to_latent_points",
    "preview_drag",
    "warp_latents",
]


def __getattr__(name: str):
    if name in ("StableDiffusionFastDragPipeline", "FastDragInversion"):
        return getattr(importlib.import_module("fastdrag.pipeline_fastdrag"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
