"""Entry file for Hub repos: `custom_pipeline="<user>/<repo>"` loads `pipeline.py`.

Diffusers fetches the relative imports named here along with it, so all three modules travel.
"""

from .attention_processors import FastDragAttnProcessor  # noqa: F401
from .pipeline_fastdrag import FastDragInversion, StableDiffusionFastDragPipeline  # noqa: F401
from .warpage import warp_latents  # noqa: F401
