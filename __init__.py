"""diffusers-fastdrag: FastDrag one-step drag editing as a Diffusers pipeline.

``warpage`` is light (torch only); the pipeline pulls in Diffusers and is imported on first use.
"""

from .warpage import image_to_latent_mask, image_to_latent_points, preview_drag, warp_latents

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
        from . import pipeline_fastdrag

        return getattr(pipeline_fastdrag, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
