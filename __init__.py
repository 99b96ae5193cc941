"""diffusers-fastdrag: FastDrag one-step drag editing as a Diffusers pipeline.

Everything is imported on first use, so ``import fastdrag`` is cheap; the pipeline pulls in
Diffusers.
"""

# Absolute imports: pytest imports this file on its own when the checkout's folder name is not a
# Python identifier, and a relative import would fail there.
import importlib


__version__ = "0.1.0"

_EXPORTS = {
    "StableDiffusionFastDragPipeline": "fastdrag.pipeline_fastdrag",
    "StableDiffusionXLFastDragPipeline": "fastdrag.pipeline_fastdrag_sdxl",
    "FastDragInversion": "fastdrag.fastdrag_core",
    "image_to_latent_mask": "fastdrag.inputs",
    "image_to_latent_points": "fastdrag.inputs",
    "preview_drag": "fastdrag.apps.frontend",
    "warp_latents": "fastdrag.warpage",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
