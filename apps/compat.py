"""What differs across the Diffusers releases the project supports, in one place.

Each shim names the releases it is for. The tools load models through it; the pipelines need no
shim (their ``from_pipe`` keeps each component's dtype on every release without one).
"""

import diffusers
import torch
from packaging.version import Version


# `from_pretrained(dtype=...)` exists from Diffusers 0.40; before it the keyword is ignored with a
# warning and the model loads in float32. `torch_dtype=` works everywhere, deprecated from 0.40.
DTYPE_KEYWORD = "dtype" if Version(diffusers.__version__) >= Version("0.40.0.dev0") else "torch_dtype"


def from_pretrained_dtype(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The keyword argument that makes the installed Diffusers' ``from_pretrained`` load in ``dtype``."""
    return {DTYPE_KEYWORD: dtype}
