"""The settings of one edit, one type for every front end: the command line (``fastdrag edit``),
DragBench (``fastdrag dragbench run``, :mod:`fastdrag.apps.dragbench`) and the editor (``fastdrag app``).

Each front end fills an :class:`EditOptions` from its own inputs (options, a sample's prompt, the
page's sliders); :meth:`EditOptions.pipeline_kwargs` and :meth:`EditOptions.inversion_kwargs` are the
one place they become the pipeline's keyword arguments. The pipelines (SD and SDXL) never import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..inputs import (
    DEFAULT_FILL,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_MODE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_DRAGS,
    MAX_IMAGE_PIXELS,
)


@dataclass(frozen=True)
class EditOptions:
    """What an edit is made with, apart from the image, its drags and its mask.

    ``seed`` seeds ``fill="noise"`` (a fresh CPU generator each edit, so one seed gives one result);
    ``max_drags`` and ``max_image_pixels`` are the call's limits.
    """

    prompt: str = ""
    num_inference_steps: int = DEFAULT_STEPS
    inversion_strength: float = DEFAULT_STRENGTH
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    fill: str = DEFAULT_FILL
    mode: str = DEFAULT_MODE
    preserve_consistency: bool = True
    seed: int | None = None
    max_drags: int = MAX_DRAGS
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def replace(self, **changes: Any) -> EditOptions:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def generator(self):
        """A CPU ``torch.Generator`` seeded with ``seed``, or ``None`` without one."""
        if self.seed is None:
            return None
        import torch

        return torch.Generator("cpu").manual_seed(self.seed)

    def inversion_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``pipe.invert(image, **...)``: what a cached inversion is made with."""
        return dict(
            prompt=self.prompt,
            num_inference_steps=self.num_inference_steps,
            inversion_strength=self.inversion_strength,
            preserve_consistency=self.preserve_consistency,
            max_image_pixels=self.max_image_pixels,
        )

    def pipeline_kwargs(self, inversion: Any = None) -> dict[str, Any]:
        """The keyword arguments of ``pipe(image, handle_points=..., target_points=..., mask=..., **...)``.

        With an ``inversion`` (``pipe.invert(...)``) it is passed, and the prompt and schedule it
        holds are left out: the pipeline takes them from it.
        """
        kwargs = dict(
            prompt=self.prompt,
            num_inference_steps=self.num_inference_steps,
            inversion_strength=self.inversion_strength,
            guidance_scale=self.guidance_scale,
            fill=self.fill,
            mode=self.mode,
            preserve_consistency=self.preserve_consistency,
            generator=self.generator(),
            max_image_pixels=self.max_image_pixels,
            max_drags=self.max_drags,
        )
        if inversion is not None:
            for name in ("prompt", "num_inference_steps", "inversion_strength"):
                del kwargs[name]
            kwargs["inversion"] = inversion
        return kwargs
