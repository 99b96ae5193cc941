"""StableDiffusionFastDragPipeline: FastDrag (NeurIPS 2024) one-step drag editing for Diffusers.

The method: DDIM-invert the image, warp the inverted latent once (latent warpage function,
relocation, BNNI), then sample it back while the up blocks' self-attention replays the keys and
values recorded during inversion. See ``docs/method.md``.

Loadable as a package (``from fastdrag import StableDiffusionFastDragPipeline``), as a local
``custom_pipeline`` file, or from a Hub repo whose entry file is ``pipeline.py``. This file imports
each sibling module it uses directly, as Diffusers' local loading copies only those.
"""

import contextlib
import functools
import inspect
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMInverseScheduler,
    DDIMScheduler,
    DiffusionPipeline,
    SchedulerMixin,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders import StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.utils import USE_PEFT_BACKEND, logging, replace_example_docstring, scale_lora_layers, unscale_lora_layers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer

from .attention_processors import RECORD, REPLAY, KVBank, KVState, fastdrag_attention, fastdrag_processors, kv_shapes
from .compat import from_pretrained_dtype
from .cuda_graphs import DEFAULT_MAX_GRAPHS, GraphCache
from .inputs import (
    DEFAULT_FILL,
    DEFAULT_MODE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_DRAGS,
    MAX_IMAGE_PIXELS,
    check_drag_points,
    check_edit_mode,
    check_fill,
    check_holds_data,
    check_image,
    check_limit,
    check_pixel_count,
    check_real,
    check_schedule,
    check_text,
    image_fingerprint,
    image_size,
    image_to_latent_mask,
    image_to_latent_points,
    image_to_tensor,
    mask_to_tensor,
)
from .timing import PhaseClock
from .warpage import edit_latents, warp_constants


logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from PIL import Image
        >>> from fastdrag import StableDiffusionFastDragPipeline

        >>> pipe = StableDiffusionFastDragPipeline.from_pretrained(
        ...     "stable-diffusion-v1-5/stable-diffusion-v1-5", torch_dtype=torch.float16
        ... ).to("cuda")
        >>> image = Image.open("cat.png")  # 512x512
        >>> mask = Image.open("cat_mask.png")  # white (or painted alpha) = may move
        >>> out = pipe(image, handle_points=[(250, 180)], target_points=[(290, 160)], mask=mask, prompt="a cat")
        >>> out.images[0].save("cat_dragged.png")

        >>> # Re-drag the same image without inverting it again: only the sampling half runs.
        >>> inversion = pipe.invert(image, prompt="a cat")
        >>> out = pipe(handle_points=[(250, 180)], target_points=[(230, 150)], mask=mask, inversion=inversion)
        ```
"""

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Far beyond any useful value: a bound that keeps huge values (1e308) from overflowing into NaN.
MAX_GUIDANCE_SCALE = 100.0


@dataclass
class FastDragInversion:
    """The result of :meth:`StableDiffusionFastDragPipeline.invert`, reusable for several drags.

    Attributes:
        latents: ``(1, C, h, w)`` inverted latent ``z_t`` at the last inversion timestep.
        image_latents: ``(1, C, h, w)`` the encoded image ``z_0`` (distribution mean, scaled).
        timesteps: the inversion's timesteps, ascending (sampling visits them descending).
        kv_bank: the up blocks' self-attention keys/values, one slot per inversion step (a copy,
            on the device), or ``None`` when inverted with ``preserve_consistency=False``.
        prompt_embeds: ``(1, tokens, dim)`` conditional text embedding used for inversion.
        prompt: the prompt text, or ``None`` when inverted from ``prompt_embeds``.
        image_size: ``(height, width)`` of the image, in pixels.
        num_inference_steps, inversion_strength: the schedule it was made with.
        image_fingerprint: a digest of the image's values (see ``inputs.image_fingerprint``).
        made_by: the weights that made it, per component (see :func:`weights_fingerprint`).
        dtype: the UNet's dtype when it was made.
    """

    latents: torch.Tensor
    image_latents: torch.Tensor
    timesteps: tuple[int, ...]
    kv_bank: KVBank | None
    prompt_embeds: torch.Tensor
    prompt: str | None
    image_size: tuple[int, int]
    num_inference_steps: int
    inversion_strength: float
    image_fingerprint: str
    made_by: dict[str, int | None]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Memory its tensors take (the keys/values are most of it)."""
        tensors = (self.latents, self.image_latents, self.prompt_embeds)
        return sum(t.numel() * t.element_size() for t in tensors) + (self.kv_bank.nbytes if self.kv_bank else 0)


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def lock_of(owner) -> threading.RLock:
    """The lock of ``owner`` (a UNet, shared by every pipeline built on it), made on first use."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(owner)
        if lock is None:
            lock = _LOCKS[owner] = threading.RLock()
        return lock


def one_call_at_a_time(method: Callable) -> Callable:
    """Serialise calls that install processors on the UNet and use the key/value bank: from several
    threads they take turns, with the results of sequential calls."""

    @functools.wraps(method)
    def serialised(self, *args, **kwargs):
        with lock_of(self._unwrapped_unet if self.unet is not None else self):
            return method(self, *args, **kwargs)

    return serialised


def weights_fingerprint(model: torch.nn.Module | None) -> int | None:
    """Which weights ``model`` holds in this process: its parameter objects and how often each was
    changed in place. Moving between devices keeps it; new or updated weights change it."""
    if model is None:
        return None
    return hash(tuple((id(parameter), parameter._version) for parameter in model.parameters()))


class CallGraphs(NamedTuple):
    """The graph cache one call uses, and what its UNet loops bake in besides their inputs (the
    UNet's weights by address, its attention processors, the schedulers), read once per call."""

    cache: GraphCache
    signature: tuple


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` with its index filled in (``cuda`` -> ``cuda:0``), as tensors report theirs."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; from the host to CUDA through pinned memory, so the host does not wait."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _explicit_config(config, target: type) -> dict[str, Any]:
    """The entries of a scheduler config that ``target`` accepts, every value explicit.

    ``from_config`` drops the keys listed in ``_use_default_values``; Stable Diffusion pipelines
    patch ``steps_offset`` after construction, so it is listed there and would be lost.
    """
    accepted = inspect.signature(target.__init__).parameters
    return {key: value for key, value in dict(config).items() if key in accepted}


def ddim_scheduler_from(scheduler: SchedulerMixin) -> DDIMScheduler:
    """The DDIM scheduler FastDrag samples with; a non-DDIM scheduler's config is converted."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler
    config = _explicit_config(scheduler.config, DDIMScheduler)
    # Clipping x0 to [-1, 1] is for pixel-space models; it would break latent inversion.
    config.setdefault("clip_sample", False)
    logger.info(f"FastDrag samples with DDIM: converting {type(scheduler).__name__} to DDIMScheduler.")
    return DDIMScheduler.from_config(config)


def inverse_scheduler_from(scheduler: DDIMScheduler) -> DDIMInverseScheduler:
    """The DDIM inverse scheduler mirroring ``scheduler``, with ``steps_offset`` carried over."""
    return DDIMInverseScheduler.from_config(_explicit_config(scheduler.config, DDIMInverseScheduler))


def _timesteps(
    scheduler: DDIMScheduler, inverse_scheduler: DDIMInverseScheduler, num_inference_steps: int, steps: int
) -> tuple[list[int], list[int]]:
    scheduler.set_timesteps(num_inference_steps)
    inverse_scheduler.set_timesteps(num_inference_steps)
    return [int(t) for t in inverse_scheduler.timesteps[:steps]], [int(t) for t in scheduler.timesteps[-steps:]]


def schedule_timesteps(
    scheduler: DDIMScheduler, inverse_scheduler: DDIMInverseScheduler, num_inference_steps: int, steps: int
) -> tuple[list[int], list[int]]:
    """Inversion timesteps (ascending) and sampling timesteps (descending) of ``steps`` of a
    ``num_inference_steps`` schedule, as host ints.

    Raises ``ValueError`` unless sampling visits exactly the inversion's timesteps in reverse, and
    unless every timestep is one the scheduler has: with ``steps_offset`` (1 in Stable Diffusion)
    the "leading" schedule of 1000 steps reaches timestep 1000, past ``alphas_cumprod``, which
    would otherwise fail with an IndexError after every UNet call of the inversion.
    """
    inversion, sampling = _timesteps(scheduler, inverse_scheduler, num_inference_steps, steps)
    if sampling != inversion[::-1]:
        raise ValueError(
            f"`scheduler` samples at {sampling} but `inverse_scheduler` inverts at {inversion}: their configs "
            "disagree (steps_offset, timestep_spacing?). Rebuild one from the other's config."
        )
    last = scheduler.config.num_train_timesteps - 1
    if inversion and not 0 <= min(inversion) <= max(inversion) <= last:
        strength = steps / num_inference_steps
        # The largest schedule at this strength that stays in range; the schedule is cheap to build.
        allowed = next(
            (n for n in range(num_inference_steps - 1, 0, -1)
             if max(_timesteps(scheduler, inverse_scheduler, n, max(1, round(strength * n)))[0], default=0) <= last),
            0,
        )
        raise ValueError(
            f"`num_inference_steps`={num_inference_steps} with `inversion_strength` {strength:g} inverts up to timestep "
            f"{max(inversion)}, past the scheduler's last ({last}, steps_offset={scheduler.config.steps_offset}): "
            f"`num_inference_steps` may be at most {allowed} with `inversion_strength` {strength:g}; lower either"
        )
    return inversion, sampling


class StableDiffusionFastDragPipeline(
    DiffusionPipeline, StableDiffusionMixin, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin
):
    r"""
    FastDrag: one-step drag-based image editing with Stable Diffusion 1.x.

    This model inherits from [`DiffusionPipeline`]; see its documentation for the generic methods
    (downloading, saving, running on a device, offloading, ...). It also has the loading methods:
        - [`~loaders.TextualInversionLoaderMixin.load_textual_inversion`] for textual inversion embeddings
        - [`~loaders.StableDiffusionLoraLoaderMixin.load_lora_weights`] for LoRA weights (UNet and text encoder)
        - [`~loaders.StableDiffusionLoraLoaderMixin.save_lora_weights`] for saving LoRA weights

    Every component may be ``None`` for a pipeline that runs part of the work (say, text encoding
    alone, as Diffusers' isolation tests do); a call needs the ones its work uses.

    Args:
        vae ([`AutoencoderKL`], or any Diffusers VAE: [`AutoencoderTiny`], [`AsymmetricAutoencoderKL`],
            [`ConsistencyDecoderVAE`]): encodes and decodes images to and from latents.
        text_encoder ([`~transformers.CLIPTextModel`]): the frozen CLIP text encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): the denoiser. An LCM-style UNet (with
            ``time_cond_proj_dim``) works too, as in the authors' release.
        scheduler ([`DDIMScheduler`]): sampling scheduler. Another scheduler's config is converted
            to DDIM (with ``clip_sample=False`` unless set), as FastDrag samples with DDIM (eta = 0).
        safety_checker ([`StableDiffusionSafetyChecker`], *optional*): flags NSFW outputs.
        feature_extractor ([`~transformers.CLIPImageProcessor`], *optional*): for the safety checker.
        inverse_scheduler ([`DDIMInverseScheduler`], *optional*): when ``None``, the call inverts with
            one built from ``scheduler``'s config, ``steps_offset`` included
            ([`~StableDiffusionFastDragPipeline.ddim_inverse_scheduler`]); it stays ``None``, and is
            saved as such.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor", "inverse_scheduler"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        safety_checker: StableDiffusionSafetyChecker | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        inverse_scheduler: DDIMInverseScheduler | None = None,
        requires_safety_checker: bool = True,
    ):
        super().__init__()
        if safety_checker is not None and feature_extractor is None:
            raise ValueError(
                "`feature_extractor` is required with a `safety_checker`; pass `safety_checker=None` to run without one."
            )
        scheduler = ddim_scheduler_from(scheduler) if scheduler is not None else None
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            inverse_scheduler=inverse_scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.register_to_config(requires_safety_checker=requires_safety_checker)
        self._interrupt = False
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._clock = PhaseClock()
        # Created on first use and kept: a compiled UNet and captured graphs rely on the same
        # processor objects and the same key/value bank being there on every call.
        self._kv_state: KVState | None = None
        self._kv_processors: dict | None = None
        self._kv_processors_key: tuple | None = None
        self._cuda_graphs: GraphCache | None = None
        self._warned_eager = False
        self._derived_inverse: tuple[Any, DDIMInverseScheduler] | None = None

    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, **kwargs) -> "StableDiffusionFastDragPipeline":
        """Build from another pipeline's components (shared, not copied), keeping their dtype.

        Diffusers 0.42's ``from_pipe`` casts to float32 unless a dtype is given, and since the
        components are shared that would convert the source pipeline too.
        """
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs.update(from_pretrained_dtype(pipeline.dtype))
        return super().from_pipe(pipeline, **kwargs)

    def enable_cuda_graphs(self, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        r"""
        Run inversion, warp and sampling as CUDA graphs: captured on first use, replayed afterwards.

        Each of the three is captured once per combination of what its kernels depend on (image
        size, steps and strength, guidance scale, dtype, consistency, fill, number of drags, the
        UNet and its attention processors), then replayed as one launch: the UNet calls with their
        key/value record or replay and the scheduler steps of a whole loop. Results are the same
        bits as the eager path. The first call of each new combination pays an eager warm-up and
        the capture. At most ``max_graphs`` graphs are kept, least recently used evicted first;
        they share one memory pool. Calls with ``callback_on_step_end`` sample eagerly, and
        ``fill="noise"`` warps eagerly. A capture or replay that raises does not fail the call: that
        combination runs eagerly from then on, and one warning says so.

        Call it after moving the pipeline to its CUDA device. On another device the pipeline runs
        eagerly (a warning says so once). Call it again to drop the graphs, for example after
        changing LoRA scales in place, which a graph would not see.

        Raises:
            RuntimeError: when this torch has no CUDA device.
        """
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device, and torch.cuda.is_available() is False")
        self._cuda_graphs = GraphCache(max_graphs)
        self._warned_eager = False

    def disable_cuda_graphs(self) -> None:
        """Go back to eager execution and free the captured graphs."""
        self._cuda_graphs = None

    @property
    def ddim_inverse_scheduler(self) -> DDIMInverseScheduler:
        """The scheduler inversion runs with: ``inverse_scheduler``, or, when that is ``None``, one
        built from ``scheduler``'s config (kept until the scheduler or its config changes)."""
        if self.inverse_scheduler is not None:
            return self.inverse_scheduler
        source = (self.scheduler, self.scheduler.config)
        if self._derived_inverse is None or any(a is not b for a, b in zip(self._derived_inverse[0], source)):
            self._derived_inverse = (source, inverse_scheduler_from(self.scheduler))
        return self._derived_inverse[1]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def timing_phases(self) -> contextlib.AbstractContextManager[dict[str, float]]:
        """Time the phases of the calls made inside: ``with pipe.timing_phases() as times: pipe(...)``.

        ``times`` maps each phase that ran (``"text"``, ``"encode"``, ``"inversion"``, ``"warp"``,
        ``"sampling"``, ``"decode"``) to seconds, summed over the calls made inside the block.
        The device is synchronised at each phase boundary, never inside the denoising loops, so
        only while timing do the phases lose their overlap.
        """
        return self._clock.collect()

    def _phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self._clock.phase(name, self._execution_device)

    # ----------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------

    def check_image(self, image, max_image_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
        """Check ``image`` (see ``inputs.check_image``), that it has at most ``max_image_pixels``
        pixels (checked from its size, before any value is read) and that its sides are multiples
        of ``vae_scale_factor``; return its ``(height, width)``."""
        check_pixel_count(image_size(image), check_limit(max_image_pixels, "max_image_pixels"), "`image`")
        height, width = check_image(image)
        factor = self.vae_scale_factor
        if height % factor or width % factor:
            raise ValueError(
                f"`image` height and width must be multiples of the VAE scale factor {factor}, got {height}x{width}; "
                f"resize or crop it first (for example to {height // factor * factor}x{width // factor * factor})"
            )
        return height, width

    def check_inputs(
        self,
        image,
        handle_points,
        target_points,
        mask,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_inference_steps,
        inversion_strength,
        guidance_scale,
        fill,
        mode,
        preserve_consistency,
        inversion,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_drags: int = MAX_DRAGS,
    ) -> None:
        """Raise ``ValueError`` or ``TypeError`` on anything a caller can get wrong, before any model runs."""
        if image is None and inversion is None:
            raise ValueError("`image` is required unless `inversion` (from `pipe.invert`) is given")
        self.check_prompt(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, inversion is not None)
        if inversion is not None:
            self.check_inversion(
                inversion, image, prompt, prompt_embeds, num_inference_steps, inversion_strength, preserve_consistency,
                max_image_pixels,
            )
            size = inversion.image_size
        else:
            size = self.check_image(image, max_image_pixels)
        self.check_schedule(
            DEFAULT_STEPS if num_inference_steps is None else num_inference_steps,
            DEFAULT_STRENGTH if inversion_strength is None else inversion_strength,
        )
        handles, _ = check_drag_points(handle_points, target_points, size, check_limit(max_drags, "max_drags"))
        mask_to_tensor(mask, size)
        check_real(guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE_SCALE)
        check_fill(fill)
        check_edit_mode(mode, len(handles), object_given=mask is not None)
        if not isinstance(preserve_consistency, (bool, np.bool_)):
            raise TypeError(f"`preserve_consistency` must be a bool, got {type(preserve_consistency).__name__}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if callback_on_step_end_tensor_inputs is not None and not all(
            k in self._callback_tensor_inputs for k in callback_on_step_end_tensor_inputs
        ):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, "
                f"got {callback_on_step_end_tensor_inputs}"
            )

    def check_prompt(self, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, cached: bool = False) -> None:
        """Texts are strings; each may be given as text or as embeddings, not both; embeddings are
        ``(1, tokens, dim)`` tensors; without a text encoder only embeddings will do."""
        check_text(prompt, "prompt")
        check_text(negative_prompt, "negative_prompt")
        for text, name, embeds in (
            (prompt, "prompt", prompt_embeds), (negative_prompt, "negative_prompt", negative_prompt_embeds)
        ):
            if text is not None and embeds is not None:
                raise ValueError(f"Cannot forward both `{name}` and `{name}_embeds`: give one of them")
            if embeds is not None and (not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[0] != 1):
                raise ValueError(
                    f"`{name}_embeds` must be a (1, tokens, dim) tensor (one image), got "
                    f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}"
                )
            if embeds is not None:
                check_holds_data(embeds, f"{name}_embeds")
        if prompt_embeds is not None and negative_prompt_embeds is not None and (
            prompt_embeds.shape != negative_prompt_embeds.shape
        ):
            raise ValueError(
                "`prompt_embeds` and `negative_prompt_embeds` must have the same shape, got "
                f"{tuple(prompt_embeds.shape)} and {tuple(negative_prompt_embeds.shape)}"
            )
        if prompt_embeds is None and not cached and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError("this pipeline has no text encoder or tokenizer: pass `prompt_embeds`")

    def check_schedule(self, num_inference_steps, inversion_strength) -> int:
        """Validate the schedule against the schedulers; return the number of inversion steps.

        Raises ``ValueError`` unless sampling visits exactly the inversion's timesteps in reverse:
        otherwise no recorded key/value would be replayed and the zero-noise round trip breaks.
        """
        steps = check_schedule(num_inference_steps, inversion_strength, self.scheduler.config.num_train_timesteps)
        self.timesteps_for(int(num_inference_steps), steps)
        return steps

    def check_inversion(
        self, inversion, image, prompt, prompt_embeds, num_inference_steps, inversion_strength, preserve_consistency,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        """``inversion`` must come from :meth:`invert` of this pipeline's models and agree with the call."""
        if not isinstance(inversion, FastDragInversion):
            raise TypeError(f"`inversion` must come from `pipe.invert(...)`, got {type(inversion).__name__}")
        if image is not None:
            size = self.check_image(image, max_image_pixels)
            if size != tuple(inversion.image_size):
                raise ValueError(f"`image` is {size}, but `inversion` was made from a {inversion.image_size} image")
            if image_fingerprint(image_to_tensor(image)) != inversion.image_fingerprint:
                raise ValueError(
                    "`image` differs from the image `inversion` was made from: leave `image` out to drag the "
                    "inverted image, or invert the new one with `pipe.invert`"
                )
        for name, given, own in (
            ("prompt", prompt, inversion.prompt),
            ("num_inference_steps", num_inference_steps, inversion.num_inference_steps),
            ("inversion_strength", inversion_strength, inversion.inversion_strength),
        ):
            if given is not None and given != own:
                raise ValueError(f"`{name}`={given!r} differs from the inversion's {own!r}: leave it out, or invert again")
        if prompt_embeds is not None and not torch.equal(
            prompt_embeds.to(inversion.prompt_embeds), inversion.prompt_embeds
        ):
            raise ValueError("`prompt_embeds` differ from the inversion's: leave them out, or invert again")
        if preserve_consistency and inversion.kv_bank is None:
            raise ValueError(
                "`inversion` holds no keys/values (made with preserve_consistency=False); "
                "invert again with preserve_consistency=True, or pass preserve_consistency=False"
            )
        for name, fingerprint in self._weights_fingerprints().items():
            if inversion.made_by.get(name) != fingerprint:
                raise ValueError(
                    f"`inversion` was made by another {name} (or its weights changed since): "
                    "invert the image again with this pipeline"
                )
        if inversion.dtype != self.unet.dtype:
            raise ValueError(
                f"`inversion` was made in {inversion.dtype}, but the UNet now runs in {self.unet.dtype}: "
                "invert the image again, or move the pipeline back to that dtype"
            )

    def _weights_fingerprints(self) -> dict[str, int | None]:
        return {name: weights_fingerprint(getattr(self, name, None)) for name in ("unet", "vae", "text_encoder")}

    def timesteps_for(self, num_inference_steps: int, steps: int) -> tuple[list[int], list[int]]:
        """Inversion timesteps (ascending) and sampling timesteps (descending), as host ints.

        Raises ``ValueError`` unless sampling visits exactly the inversion's timesteps in reverse.
        """
        return schedule_timesteps(self.scheduler, self.ddim_inverse_scheduler, num_inference_steps, steps)

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` of the latent of an image of ``size = (height, width)`` pixels."""
        return size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor

    def preprocess(
        self, image, mask, handle_points, target_points, size: tuple[int, int], device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Checked inputs -> ``(pixels, latent_mask, handles, targets)`` on ``device``.

        ``pixels``: ``(1, 3, H, W)`` in [0, 1], or None without ``image``; ``latent_mask``: the
        max-pooled ``(h, w)`` bool mask; ``handles``, ``targets``: ``(K, 2)`` latent ``(row, col)``.
        The host sends everything now, before the first kernel, so later no copy waits on the queue.
        """
        factor = self.vae_scale_factor
        pixels = to_device(image_to_tensor(image), device) if image is not None else None
        latent_mask = image_to_latent_mask(to_device(mask_to_tensor(mask, size), device), factor)
        handles = to_device(image_to_latent_points(handle_points, factor), device)
        targets = to_device(image_to_latent_points(target_points, factor), device)
        return pixels, latent_mask, handles, targets

    # ----------------------------------------------------------------------------------------
    # Models
    # ----------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: str | None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = False,
        negative_prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        Encode the prompt (and, under guidance, the negative prompt) into text encoder hidden states.

        Args:
            prompt (`str`, *optional*): the text; ``None`` with ``prompt_embeds``.
            device (`torch.device` or `str`, *optional*): where the embeddings go; the execution
                device when not given.
            num_images_per_prompt (`int`): copies along the batch (FastDrag itself uses 1).
            do_classifier_free_guidance (`bool`): also return the negative embedding.
            negative_prompt (`str`, *optional*): the unconditional text; "" when not given.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor`, *optional*): ready embeddings,
                used as they are instead of encoding the text.
            lora_scale (`float`, *optional*): scale of the text encoder's LoRA layers, if any.
            clip_skip (`int`, *optional*): layers skipped from the end of CLIP (1: the pre-final one).

        Returns:
            `(prompt_embeds, negative_prompt_embeds)`: ``(num_images_per_prompt, tokens, dim)`` each;
            the negative one is ``None`` without guidance.
        """
        # Diffusers' own tests pass the device by name ("cpu").
        device = torch.device(device) if device is not None else self._execution_device
        scaled = lora_scale is not None and USE_PEFT_BACKEND and self.text_encoder is not None
        if scaled:
            self._lora_scale = lora_scale
            scale_lora_layers(self.text_encoder, lora_scale)
        try:
            if prompt_embeds is None:
                prompt_embeds = self._encode_text(prompt or "", device, clip_skip)
            if do_classifier_free_guidance and negative_prompt_embeds is None:
                negative_prompt_embeds = self._encode_text(negative_prompt or "", device, None, prompt_embeds.shape[1])
        finally:
            if scaled:
                unscale_lora_layers(self.text_encoder, lora_scale)
        dtype = next((m.dtype for m in (self.text_encoder, self.unet) if m is not None), prompt_embeds.dtype)
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, 0)
        if not do_classifier_free_guidance:
            return prompt_embeds, None
        negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
        return prompt_embeds, negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)

    def _encode_text(
        self, text: str, device: torch.device, clip_skip: int | None, max_length: int | None = None
    ) -> torch.Tensor:
        """``(1, tokens, dim)`` CLIP hidden states of one text, textual inversion tokens expanded."""
        text = self.maybe_convert_prompt(text, self.tokenizer)
        tokens = self.tokenizer(
            text,
            padding="max_length",
            max_length=max_length or self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = to_device(tokens.attention_mask, device) if use_mask else None
        output = self.text_encoder(to_device(tokens.input_ids, device), attention_mask=mask,
                                   output_hidden_states=clip_skip is not None)
        if clip_skip is None:
            return output[0]
        # The final layer norm still applies to the earlier layer, as in Stable Diffusion's pipelines.
        return self.text_encoder.text_model.final_layer_norm(output[-1][-(clip_skip + 1)])

    def encode_image(self, image: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``(1, 3, H, W)`` in [0, 1] -> the scaled latent ``(1, C, H / f, W / f)``: deterministic.

        Any Diffusers VAE: the mode (mean) of a latent distribution, or the latents a VAE such as
        ``AutoencoderTiny`` returns directly.
        """
        pixels = self.image_processor.normalize(image).to(device=device, dtype=self.vae.dtype)
        encoded = self.vae.encode(pixels)
        latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> ``(B, 3, H, W)`` images in [-1, 1], the inverse of :meth:`encode_image`."""
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(latents, return_dict=False)[0]

    def run_safety_checker(self, image: torch.Tensor, device: torch.device, dtype: torch.dtype):
        if self.safety_checker is None:
            return image, None
        pil_images = self.image_processor.postprocess(image, output_type="pil")
        checker_input = self.feature_extractor(pil_images, return_tensors="pt").to(device)
        return self.safety_checker(images=image, clip_input=checker_input.pixel_values.to(dtype))

    # ----------------------------------------------------------------------------------------
    # Keys/values, graphs and the denoising loops
    # ----------------------------------------------------------------------------------------

    @property
    def _unwrapped_unet(self):
        """The UNet module itself, also when ``torch.compile`` has wrapped it."""
        return getattr(self.unet, "_orig_mod", self.unet)

    def _kv_for(self, device: torch.device, latent_size: tuple[int, int], steps: int) -> tuple[KVState, dict]:
        """The pipeline's key/value state and processors, its bank sized for ``latent_size`` and ``steps``.

        All three are created once and kept, so a compiled UNet sees the same processor objects and
        the same bank tensors on every call; the bank is only replaced when its shape changes.
        """
        unet = self._unwrapped_unet
        device = canonical_device(device)
        state = self._kv_state
        if state is None or state.step.device != device:
            state = self._kv_state = KVState(device)
            self._kv_processors = None
        shapes = kv_shapes(unet, latent_size)
        if self._kv_processors is None or self._kv_processors_key != tuple(shapes):
            self._kv_processors, self._kv_processors_key = fastdrag_processors(shapes, state), tuple(shapes)
        layout = (tuple(sorted(shapes.items())), steps, unet.dtype)
        if state.bank is None or state.bank.layout != layout or state.bank.device != device:
            state.bank = None  # free the old bank before making the new one
            state.bank = KVBank(shapes, steps, device, unet.dtype)
            if self._cuda_graphs is not None:
                self._cuda_graphs.clear()  # they read and write the old bank
        return state, self._kv_processors

    def _graphs_for(self, device: torch.device) -> CallGraphs | None:
        """The graphs when CUDA graphs are enabled and usable on ``device``, else None (eager)."""
        graphs = self._cuda_graphs
        if graphs is None:
            return None
        offloaded = any(hasattr(model, "_hf_hook") for model in self.components.values())
        if device.type != graphs.device_type or offloaded:
            if not self._warned_eager:
                why = "with model offloading" if offloaded else f"on {device.type}"
                logger.warning(f"CUDA graphs are enabled but cannot run {why}: running eagerly.")
                self._warned_eager = True
            return None
        return CallGraphs(graphs, self._graph_signature())

    def _graph_signature(self) -> tuple:
        """What a captured UNet loop bakes in besides its inputs: the UNet's weights (by address),
        its attention processors and the schedulers."""
        unet = self.unet
        return (
            tuple(p.data_ptr() for p in unet.parameters()),
            tuple(map(id, unet.attn_processors.values())),
            id(self.scheduler),
            id(self.ddim_inverse_scheduler),
        )

    def _run_loop(
        self,
        body: Callable[..., torch.Tensor],
        inputs: dict[str, torch.Tensor],
        steps: int,
        kv: tuple[KVState, dict] | None,
        graphs: CallGraphs | None,
        key: tuple,
    ) -> torch.Tensor:
        """``body(**inputs)``, with the FastDrag processors installed when ``kv`` is given: eagerly
        with a progress bar, or replayed from the graph for ``key`` and the models."""
        attention = fastdrag_attention(self._unwrapped_unet, kv[1]) if kv is not None else contextlib.nullcontext()
        with attention, self.progress_bar(total=steps) as progress_bar:
            if graphs is None:
                return body(**inputs, on_step=progress_bar.update)
            # A graph's outputs are overwritten by its next replay: hand out a copy.
            latents = graphs.cache.run((*key, graphs.signature), body, inputs)[0].clone()
            progress_bar.update(steps)
            return latents

    def _inversion_loop(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        steps: list[int],
        kv: KVState | None,
        on_step: Callable[[], Any] | None = None,
    ) -> torch.Tensor:
        """DDIM inversion from ``z_0`` over ``steps`` (ascending; ``timesteps`` the same on the device),
        recording the keys/values of step ``i`` into the bank's slot ``i``."""
        if kv is not None:
            kv.mode = RECORD
        inverse_scheduler = self.ddim_inverse_scheduler
        for i, t in enumerate(steps):
            if kv is not None:
                kv.step.fill_(i)
            noise_pred = self.unet(latents, timesteps[i], encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            latents = inverse_scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step()
        return latents

    def _sampling_loop(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        negative_embeds: torch.Tensor | None = None,
        *,
        steps: list[int],
        kv: KVState | None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = (),
        on_step: Callable[[], Any] | None = None,
    ) -> torch.Tensor:
        """DDIM sampling (eta = 0) over ``steps`` (descending; ``timesteps`` the same on the device),
        replaying at step ``i`` the keys/values the inversion recorded in slot ``len(steps) - 1 - i``."""
        if kv is not None:
            kv.mode = REPLAY
        guided = negative_embeds is not None
        embeds = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds
        last = len(steps) - 1
        for i, t in enumerate(steps):
            if self.interrupt:
                continue
            if kv is not None:
                kv.step.fill_(last - i)
            model_input = torch.cat([latents] * 2) if guided else latents
            noise_pred = self.unet(model_input, timesteps[i], encoder_hidden_states=embeds, return_dict=False)[0]
            if guided:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, eta=0.0, return_dict=False)[0]

            if callback_on_step_end is not None:
                callback_kwargs = {"latents": latents, "prompt_embeds": prompt_embeds}
                callback_kwargs = {k: callback_kwargs[k] for k in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = self._checked_callback_latents(callback_outputs.pop("latents", latents), latents)
                if "prompt_embeds" in callback_outputs:
                    prompt_embeds = callback_outputs.pop("prompt_embeds")
                    embeds = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds
            if on_step is not None:
                on_step()
        return latents

    @staticmethod
    def _checked_callback_latents(new, latents: torch.Tensor) -> torch.Tensor:
        """Latents a callback returned must be a tensor like the ones it was given."""
        if not isinstance(new, torch.Tensor) or (new.shape, new.dtype, new.device) != (
            latents.shape, latents.dtype, latents.device
        ):
            described = f"of shape {tuple(new.shape)}, {new.dtype} on {new.device}" if isinstance(new, torch.Tensor) else (
                f"of type {type(new).__name__}"
            )
            raise ValueError(
                f"`callback_on_step_end` returned `latents` {described}; expected shape {tuple(latents.shape)}, "
                f"{latents.dtype} on {latents.device}"
            )
        return new

    def _invert_latents(
        self,
        image_latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        steps: list[int],
        kv: tuple[KVState, dict] | None,
        graphs: CallGraphs | None,
    ) -> torch.Tensor:
        """Run the inversion loop, recording keys/values when ``kv`` is given."""
        body = functools.partial(self._inversion_loop, steps=steps, kv=kv[0] if kv is not None else None)
        inputs = {"latents": image_latents.to(self.unet.dtype), "prompt_embeds": prompt_embeds, "timesteps": timesteps}
        return self._run_loop(body, inputs, len(steps), kv, graphs, ("inversion", tuple(steps), kv is not None))

    def _sample_latents(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        timesteps: torch.Tensor,
        steps: list[int],
        kv: tuple[KVState, dict] | None,
        graphs: CallGraphs | None,
        callback_on_step_end,
        callback_on_step_end_tensor_inputs: list[str],
    ) -> torch.Tensor:
        """Run the sampling loop, replaying the bank's keys/values when ``kv`` is given. A callback
        runs on the host between steps, so a call with one samples eagerly."""
        body = functools.partial(
            self._sampling_loop, steps=steps, kv=kv[0] if kv is not None else None,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        inputs = {"latents": latents, "prompt_embeds": prompt_embeds, "timesteps": timesteps}
        if negative_embeds is not None:
            inputs["negative_embeds"] = negative_embeds
        graphs = graphs if callback_on_step_end is None else None
        key = ("sampling", tuple(steps), kv is not None, self.guidance_scale)
        return self._run_loop(body, inputs, len(steps), kv, graphs, key)

    def _warp(
        self,
        latents: torch.Tensor,
        mask: torch.Tensor,
        handles: torch.Tensor,
        targets: torch.Tensor,
        mode: str,
        fill: str,
        generator: torch.Generator | None,
        graphs: CallGraphs | None,
    ) -> torch.Tensor:
        """The one-step edit of the inverted latent (validated inputs; ``(row, col)`` points)."""
        if graphs is None or fill == "noise":  # random numbers are drawn on the host's generator
            return edit_latents(latents, mask, handles, targets, mode, fill, generator, validate=False)

        def body(latents, mask, handles, targets):
            return edit_latents(latents, mask, handles, targets, mode, fill, validate=False)

        inputs = {"latents": latents, "mask": mask, "handles": handles, "targets": targets}
        keep_alive = warp_constants(*latents.shape[-2:], latents.device)
        return graphs.cache.run(("warp", mode, fill), body, inputs, keep_alive)[0].clone()

    def _encode_and_invert(
        self,
        pixels: torch.Tensor,
        prompt_embeds: torch.Tensor,
        timesteps: torch.Tensor,
        steps: list[int],
        kv: tuple[KVState, dict] | None,
        graphs: CallGraphs | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_0, z_t)``: the encoded image and its inversion, the keys/values recorded in ``kv``'s bank."""
        with self._phase("encode"):
            image_latents = self.encode_image(pixels, pixels.device)
        with self._phase("inversion"):
            latents = self._invert_latents(image_latents, prompt_embeds, timesteps, steps, kv, graphs)
        return image_latents, latents

    def _load_inversion(self, inversion: FastDragInversion, kv: tuple[KVState, dict] | None, device) -> torch.Tensor:
        """A cached inversion's latent on ``device``, its keys/values copied into the bank."""
        if kv is not None:
            kv[0].bank.copy_(inversion.kv_bank)
        return inversion.latents.to(device)

    def _prompt_embeddings(
        self,
        prompt: str | None,
        negative_prompt: str | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`encode_prompt` for one image, timed as the text phase when it encodes anything."""
        guided = self.do_classifier_free_guidance
        encodes = prompt_embeds is None or (guided and negative_prompt_embeds is None)
        with self._phase("text") if encodes else contextlib.nullcontext():
            return self.encode_prompt(prompt, device, 1, guided, negative_prompt, prompt_embeds, negative_prompt_embeds)

    @torch.no_grad()
    @one_call_at_a_time
    def invert(
        self,
        image,
        prompt: str | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        inversion_strength: float = DEFAULT_STRENGTH,
        preserve_consistency: bool = True,
        prompt_embeds: torch.Tensor | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> FastDragInversion:
        """Encode and DDIM-invert ``image`` once, recording the self-attention keys/values.

        Pass the result as ``inversion=`` to the pipeline call to drag the same image again and
        again: each drag then costs only the warp and the sampling half. It belongs to this
        pipeline's weights and dtype: a call that would mix it with others raises. ``prompt``
        (default "") or ``prompt_embeds`` conditions it, as in the call. ``max_image_pixels`` is
        the call's size limit.
        """
        size = self.check_image(image, max_image_pixels)
        self.check_prompt(prompt, None, prompt_embeds, None)
        steps = self.check_schedule(num_inference_steps, inversion_strength)
        prompt = None if prompt_embeds is not None else prompt or ""
        num_inference_steps = int(num_inference_steps)
        inversion_steps, _ = self.timesteps_for(num_inference_steps, steps)

        device = self._execution_device
        pixels = image_to_tensor(image)
        fingerprint = image_fingerprint(pixels)
        pixels, timesteps = to_device(pixels, device), to_device(torch.tensor(inversion_steps), device)
        kv = self._kv_for(device, self.latent_size(size), steps) if preserve_consistency else None
        graphs = self._graphs_for(device)
        prompt_embeds, _ = self._prompt_embeddings(prompt, None, prompt_embeds, None, device)
        image_latents, latents = self._encode_and_invert(pixels, prompt_embeds, timesteps, inversion_steps, kv, graphs)
        self.maybe_free_model_hooks()
        return FastDragInversion(
            latents=latents,
            image_latents=image_latents,
            timesteps=tuple(inversion_steps),
            kv_bank=kv[0].bank.clone() if kv is not None else None,
            prompt_embeds=prompt_embeds,
            prompt=prompt,
            image_size=size,
            num_inference_steps=num_inference_steps,
            inversion_strength=float(inversion_strength),
            image_fingerprint=fingerprint,
            made_by=self._weights_fingerprints(),
            dtype=self.unet.dtype,
        )

    # ----------------------------------------------------------------------------------------
    # The call
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    @one_call_at_a_time
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        handle_points=None,
        target_points=None,
        mask: PIL.Image.Image | np.ndarray | torch.Tensor | None = None,
        prompt: str | None = None,
        num_inference_steps: int | None = None,
        inversion_strength: float | None = None,
        guidance_scale: float = 1.0,
        negative_prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        fill: str = DEFAULT_FILL,
        mode: str = DEFAULT_MODE,
        preserve_consistency: bool = True,
        inversion: FastDragInversion | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        max_drags: int = MAX_DRAGS,
    ):
        r"""
        Drag the content of ``image`` from each handle point to its target point.

        Args:
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of one):
                The image: PIL in any mode (16-bit read by value, transparency over white), an
                ``(H, W, 3)`` or ``(1, H, W, 3)`` array (uint8, uint16 or float in [0, 1]), or a
                ``(3, H, W)``/``(1, 3, H, W)`` float tensor in [0, 1]. H and W must be multiples of
                ``pipe.vae_scale_factor`` (8 for SD). May be left out when ``inversion`` is given;
                if both are given they must be the same image.
            handle_points, target_points (sequence of `(x, y)`):
                Image pixels, ``x`` the column and ``y`` the row; the same number of each, at least
                one. ``0 <= x < W``, ``0 <= y < H``; fractions allowed.
            mask (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, *optional*):
                ``(H, W)``, nonzero where content may move; a mask with a non-uniform alpha channel
                is read from its alpha. ``None`` lets the whole image move.
            prompt (`str`, *optional*): text condition for every UNet call; default "" (or the
                inversion's prompt).
            num_inference_steps (`int`, *optional*): DDIM schedule length; default 10 (or the
                inversion's).
            inversion_strength (`float`, *optional*): fraction of the schedule inverted, in (0, 1];
                default 0.7 (or the inversion's). ``round(strength * steps)`` UNet calls invert and
                as many sample.
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance while sampling, in
                [0, 100]; 1.0 (the method's default) or less turns it off. Inversion never uses guidance.
            negative_prompt (`str`, *optional*): the unconditional text when guidance is on.
            prompt_embeds (`torch.Tensor`, *optional*): ``(1, tokens, dim)`` text embedding to use
                instead of ``prompt`` (prompt weighting, ...).
            negative_prompt_embeds (`torch.Tensor`, *optional*): the same for ``negative_prompt``.
            fill (`str`, defaults to `"bnni"`): how the pixels left empty by the warp are filled:
                `"bnni"`, `"original"`, `"zeros"` or `"noise"`.
            mode (`str`, defaults to `"drag"`): the one-step edit. `"drag"` warps the content from
                the handles to the targets; `"move"` and `"copy"` take exactly one drag and the
                object's `mask`, and paste the object at the drag's offset (rounded to whole latent
                pixels), `"move"` also filling the place it left by `fill`.
            preserve_consistency (`bool`, defaults to `True`): replay the self-attention keys and
                values recorded during inversion while sampling.
            inversion (`FastDragInversion`, *optional*): the result of `pipe.invert(image, ...)`;
                skips encoding and inversion. It is not modified, so it can serve many drags.
            generator (`torch.Generator`, *optional*): used by ``fill="noise"`` only.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): return a `StableDiffusionPipelineOutput`.
            callback_on_step_end (`Callable`, *optional*): called after each sampling step as
                ``callback_on_step_end(pipe, i, t, callback_kwargs)``; may return new ``latents``.
            callback_on_step_end_tensor_inputs (`list[str]`): tensors passed to the callback.
            max_image_pixels (`int`, defaults to 4,194,304 = 2048x2048): a larger image is refused
                before anything of its size is allocated; raise it for larger images your device
                can hold. Diffusers pipelines cap nothing; this one refuses at once what would
                otherwise fail in an allocation (or be stopped by the OOM killer) much later.
            max_drags (`int`, defaults to 256): more drags are refused, counted before conversion.

        Examples:

        Returns:
            [`~pipelines.stable_diffusion.StableDiffusionPipelineOutput`] or `tuple`: the edited
            images, and NSFW flags (``None`` without a safety checker).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs. Raise error if not correct, before any model runs.
        self.check_inputs(
            image, handle_points, target_points, mask, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
            num_inference_steps, inversion_strength, guidance_scale, fill, mode, preserve_consistency, inversion,
            generator, output_type, callback_on_step_end_tensor_inputs, max_image_pixels, max_drags,
        )

        # 2. Define call parameters: a cached inversion brings its image size, prompt and schedule.
        if inversion is not None:
            image, size = None, inversion.image_size
            prompt_embeds, num_inference_steps, inversion_strength = (
                inversion.prompt_embeds, inversion.num_inference_steps, inversion.inversion_strength
            )
        else:
            size = image_size(image)
        num_inference_steps = int(DEFAULT_STEPS if num_inference_steps is None else num_inference_steps)
        steps = round(float(DEFAULT_STRENGTH if inversion_strength is None else inversion_strength) * num_inference_steps)
        inversion_steps, sampling_steps = self.timesteps_for(num_inference_steps, steps)
        self._guidance_scale = float(guidance_scale)
        self._num_timesteps = len(sampling_steps)
        self._interrupt = False
        device = self._execution_device

        # 3. Preprocess image, mask and drags, and send them to the device.
        pixels, latent_mask, handles, targets = self.preprocess(image, mask, handle_points, target_points, size, device)
        inversion_timesteps = to_device(torch.tensor(inversion_steps), device)
        sampling_timesteps = to_device(torch.tensor(sampling_steps), device)
        kv = self._kv_for(device, self.latent_size(size), steps) if preserve_consistency else None
        graphs = self._graphs_for(device)

        # 4. Encode input prompt.
        prompt_embeds, negative_embeds = self._prompt_embeddings(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, device
        )

        # 5. Encode the image and invert it, recording keys/values; or load the cached inversion.
        if inversion is None:
            _, latents = self._encode_and_invert(pixels, prompt_embeds, inversion_timesteps, inversion_steps, kv, graphs)
        else:
            latents = self._load_inversion(inversion, kv, device)

        # 6. One-step latent edit: the warp (LWF, relocation, filling), or the object moved or copied.
        with self._phase("warp"):
            latents = self._warp(latents, latent_mask, handles, targets, mode, fill, generator, graphs)

        # 7. Denoising loop: sample back to t = 0, replaying the recorded keys/values.
        with self._phase("sampling"):
            latents = self._sample_latents(
                latents, prompt_embeds, negative_embeds, sampling_timesteps, sampling_steps, kv, graphs,
                callback_on_step_end, callback_on_step_end_tensor_inputs,
            )

        # 8. Decode and post-process.
        if output_type != "latent":
            with self._phase("decode"):
                image = self.decode_image(latents)
                image, has_nsfw_concept = self.run_safety_checker(image, device, prompt_embeds.dtype)
                do_denormalize = [True] * image.shape[0] if has_nsfw_concept is None else [not n for n in has_nsfw_concept]
                image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        else:
            image, has_nsfw_concept = latents, None

        # 9. Offload all models.
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image, has_nsfw_concept)
        return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=has_nsfw_concept)
