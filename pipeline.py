"""Entry file for Hub repos: `custom_pipeline="<user>/<repo>"` loads `pipeline.py`.

Diffusers fetches the relative imports named here along with it, so every module travels. Diffusers
takes the one pipeline class defined or imported here; for SDXL, a Hub repo's `pipeline.py` is
`community/fastdrag_sdxl.py` (one self-contained file) instead.
"""

from .attention_processors import FastDragAttnProcessor  # noqa: F401
from .cuda_graphs import GraphCache  # noqa: F401
from .fastdrag_core import FastDragInversion  # noqa: F401
from .inputs import image_to_tensor  # noqa: F401
from .pipeline_fastdrag import StableDiffusionFastDragPipeline  # noqa: F401
from .timing import PhaseClock  # noqa: F401
from .warpage import warp_latents  # noqa: F401
