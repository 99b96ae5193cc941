"""FastDrag's backbone-independent core, shared by the Stable Diffusion and SDXL pipelines.

Everything FastDrag does that does not depend on the backbone lives here once: the checked inputs
of an edit, the DDIM schedule of inversion and sampling, the inversion loop that records the up
blocks' self-attention keys/values, the one-step warp, the sampling loop that replays them (with
classifier-free guidance and ``callback_on_step_end``), cached inversions and their fingerprints,
CUDA graphs, phase timing and the one-call-at-a-time lock.

What differs between backbones stays in each pipeline file: how text becomes a
:class:`Conditioning` (SD: one CLIP; SDXL: two, a pooled embedding and time ids), the components
and their loaders, and how the VAE is run (SDXL upcasts a float16 VAE).

Diffusers copies a local ``custom_pipeline`` file's direct relative imports only, so each pipeline
file imports every module this one imports.
"""

import contextlib
import contextvars
import functools
import inspect
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, SchedulerMixin
from diffusers.utils import USE_PEFT_BACKEND, logging, scale_lora_layers, unscale_lora_layers

from .attention_processors import RECORD, REPLAY, KVBank, KVState, fastdrag_attention, fastdrag_processors, kv_shapes
from .cuda_graphs import DEFAULT_MAX_GRAPHS, GraphCache
from .inputs import (
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    MAX_DRAGS,
    MAX_GUIDANCE_SCALE,
    MAX_IMAGE_PIXELS,
    EditInputs,
    check_edit_inputs,
    check_holds_data,
    check_real,
    check_schedule,
    check_sized_image,
    image_fingerprint,
    image_to_latent_mask,
    image_to_latent_points,
    image_to_tensor,
    short_repr,
)
from .timing import PhaseClock
from .warpage import edit_latents, warp_constants


logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The names callback_on_step_end knows SDXL's added conditioning by -> its keys in `Conditioning.added`.
CALLBACK_ADDED = {"add_text_embeds": "text_embeds", "add_time_ids": "time_ids"}
# A call's embedding arguments -> the tensor of a Conditioning they stand for (Conditioning.tensors("")).
EMBEDDING_ARGUMENTS = {"prompt_embeds": "prompt_embeds", "pooled_prompt_embeds": "added.text_embeds"}
# The components whose weights an inversion belongs to (those a pipeline lacks count as None).
FINGERPRINTED = ("unet", "vae", "text_encoder", "text_encoder_2")


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """What each UNet call is conditioned on besides the latent and the timestep.

    Attributes:
        prompt_embeds: ``(B, tokens, dim)`` text encoder hidden states (``encoder_hidden_states``).
        added: the UNet's ``added_cond_kwargs``: for SDXL ``text_embeds`` ``(B, pooled_dim)`` and
            ``time_ids`` ``(B, 6)``; ``None`` for Stable Diffusion 1.x/2.x.
    """

    prompt_embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None = None

    def unet_kwargs(self) -> dict[str, Any]:
        return {"encoder_hidden_states": self.prompt_embeds, "added_cond_kwargs": self.added}

    def batched_after(self, negative: "Conditioning") -> "Conditioning":
        """``negative`` then this one along the batch: the two halves of one guided UNet call."""
        added = None if self.added is None else {k: torch.cat([negative.added[k], v]) for k, v in self.added.items()}
        return Conditioning(torch.cat([negative.prompt_embeds, self.prompt_embeds]), added)

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every tensor, by a flat name starting with ``prefix`` (a captured graph's inputs)."""
        added = {f"{prefix}added.{name}": tensor for name, tensor in (self.added or {}).items()}
        return {f"{prefix}prompt_embeds": self.prompt_embeds, **added}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "Conditioning | None":
        """The inverse of :meth:`tensors`; ``None`` when no tensor has ``prefix``."""
        if f"{prefix}prompt_embeds" not in tensors:
            return None
        start = f"{prefix}added."
        added = {name.removeprefix(start): t for name, t in tensors.items() if name.startswith(start)}
        return cls(tensors[f"{prefix}prompt_embeds"], added or None)

    def callback_tensors(self, latents: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors ``callback_on_step_end`` asked for, by Diffusers' names: ``latents``,
        ``prompt_embeds`` and, for SDXL, ``add_text_embeds`` and ``add_time_ids``; each the
        conditional half (the negative one stays as it is)."""
        available = {"latents": latents, "prompt_embeds": self.prompt_embeds}
        available.update({name: self.added[key] for name, key in CALLBACK_ADDED.items() if self.added and key in self.added})
        return {name: available[name] for name in names}

    def with_callback_tensors(self, outputs: dict) -> "Conditioning":
        """This conditioning with the tensors a callback returned in place of its own (each checked to
        be like the one it replaces); itself when it returned none."""
        returned = [name for name in ("prompt_embeds", *CALLBACK_ADDED) if name in outputs]
        if not returned:
            return self
        prompt_embeds, added = self.prompt_embeds, dict(self.added) if self.added else None
        if "prompt_embeds" in outputs:
            prompt_embeds = checked_callback_tensor(outputs.pop("prompt_embeds"), prompt_embeds, "prompt_embeds")
        for name, key in CALLBACK_ADDED.items():
            if name in outputs and added and key in added:
                added[key] = checked_callback_tensor(outputs.pop(name), added[key], name)
        return Conditioning(prompt_embeds, added)


@dataclass
class FastDragInversion:
    """The result of a FastDrag pipeline's ``invert``, reusable for several drags.

    Attributes:
        latents: ``(1, C, h, w)`` inverted latent ``z_t`` at the last inversion timestep.
        image_latents: ``(1, C, h, w)`` the encoded image ``z_0`` (distribution mean, scaled).
        timesteps: the inversion's timesteps, ascending (sampling visits them descending).
        kv_bank: the up blocks' self-attention keys/values, one slot per inversion step (a copy,
            on the device), or ``None`` when inverted with ``preserve_consistency=False``.
        conditioning: what conditioned the inversion's UNet calls (the prompt's embeddings, and
            SDXL's pooled embedding and time ids); sampling uses the same.
        conditions: the call arguments that made ``conditioning`` (``prompt``, and for SDXL
            ``prompt_2``, ``original_size``, ...); a call with the inversion that gives another
            value of one of them is refused. ``prompt`` is ``None`` when inverted from embeddings.
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
    conditioning: Conditioning
    conditions: dict[str, Any]
    image_size: tuple[int, int]
    num_inference_steps: int
    inversion_strength: float
    image_fingerprint: str
    made_by: dict[str, int | None]
    dtype: torch.dtype

    @property
    def prompt(self) -> str | None:
        return self.conditions.get("prompt")

    @property
    def prompt_embeds(self) -> torch.Tensor:
        return self.conditioning.prompt_embeds

    @property
    def nbytes(self) -> int:
        """Memory its tensors take (the keys/values are most of it)."""
        tensors = (self.latents, self.image_latents, *self.conditioning.tensors("").values())
        return sum(t.numel() * t.element_size() for t in tensors) + (self.kv_bank.nbytes if self.kv_bank else 0)


class Schedule(NamedTuple):
    """One call's DDIM schedule: ``steps`` of ``num_inference_steps``, as host ints; inversion
    visits ``inversion`` (ascending), sampling ``sampling`` (the same, descending)."""

    num_inference_steps: int
    steps: int
    inversion: list[int]
    sampling: list[int]


@dataclass
class LatentEdit:
    """An edit's inputs on the device, in the latent grid: ``pixels`` ``(1, 3, H, W)`` in [0, 1] or
    ``None``; ``mask`` the max-pooled ``(h, w)`` bool mask; ``handles``, ``targets`` ``(K, 2)``
    latent ``(row, col)``."""

    pixels: torch.Tensor | None
    mask: torch.Tensor
    handles: torch.Tensor
    targets: torch.Tensor
    mode: str
    fill: str


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


# Set while from_pipe builds a pipeline whose components keep their own dtypes.
_KEEPING_DTYPES: contextvars.ContextVar[bool] = contextvars.ContextVar("fastdrag_keeping_dtypes", default=False)
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
    """The DDIM scheduler FastDrag samples with; a non-DDIM scheduler's config (SDXL repos ship
    Euler) is converted."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler
    config = _explicit_config(scheduler.config, DDIMScheduler)
    # Clipping x0 to [-1, 1] is for pixel-space models; it would break latent inversion.
    config.setdefault("clip_sample", False)
    # Euler's config has no `set_alpha_to_one`; Stable Diffusion's DDIM uses False, as do SDXL's.
    config.setdefault("set_alpha_to_one", False)
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


def check_embeddings(embeds, name: str, ndim: int, width: int | None = None) -> None:
    """``embeds``, when given, is a tensor of one image: ``(1, tokens, dim)`` for ``ndim`` 3 (text
    encoder hidden states), ``(1, dim)`` for 2 (a pooled embedding); ``dim`` is ``width`` when given
    (what the UNet takes)."""
    if embeds is None:
        return
    shape = "(1, tokens, dim)" if ndim == 3 else "(1, dim)"
    if not isinstance(embeds, torch.Tensor) or embeds.ndim != ndim or embeds.shape[0] != 1:
        raise ValueError(
            f"`{name}` must be a {shape} tensor (one image), got "
            f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}"
        )
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(f"`{name}` must be {width} wide (what this UNet takes), got {tuple(embeds.shape)}")
    check_holds_data(embeds, name)
    if not embeds.is_floating_point():
        raise TypeError(f"`{name}` must be a real floating point tensor, got {embeds.dtype}")
    if not bool(torch.isfinite(embeds).all()):
        raise ValueError(f"`{name}` holds NaN or infinite values")


def check_text_or_embeddings(texts: dict[str, Any], name: str, embeds) -> None:
    """A text (any of ``texts``, by argument name) and the embeddings ``name`` that stand for it are
    not both given."""
    given = [text_name for text_name, text in texts.items() if text is not None]
    if embeds is not None and given:
        raise ValueError(f"Cannot forward both `{given[0]}` and `{name}`: give one of them")


def check_same_shape(first, first_name: str, second, second_name: str) -> None:
    """Two embeddings that go into one guided UNet call, when both are given, have one shape."""
    if first is not None and second is not None and first.shape != second.shape:
        raise ValueError(
            f"`{first_name}` and `{second_name}` must have the same shape, got {tuple(first.shape)} and "
            f"{tuple(second.shape)}"
        )


def check_token_counts(prompt_embeds, negative_prompt_embeds, tokens: int | None, encodes_negative: bool) -> None:
    """Under guidance the prompt's and the negative prompt's embeddings go into one UNet call, so
    they must have one token count: a text is encoded to the tokenizer's ``tokens``, a negative text
    to as many tokens as the prompt's embeddings (``encodes_negative``: it will be)."""
    if tokens is None:
        return
    if negative_prompt_embeds is not None and prompt_embeds is None and negative_prompt_embeds.shape[1] != tokens:
        raise ValueError(
            f"`negative_prompt_embeds` has {negative_prompt_embeds.shape[1]} tokens, but the prompt encodes to "
            f"{tokens}: give negative embeddings of {tokens} tokens, or `prompt_embeds` as long as yours"
        )
    if encodes_negative and prompt_embeds is not None and prompt_embeds.shape[1] > tokens:
        raise ValueError(
            f"`prompt_embeds` has {prompt_embeds.shape[1]} tokens, more than the tokenizer's {tokens}, so the negative "
            "prompt cannot be encoded to match them: pass `negative_prompt_embeds` too"
        )


def check_flag(value, name: str) -> None:
    """``value`` is a bool (Python's or numpy's), not merely something truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")


def checked_callback_tensor(new, given: torch.Tensor, name: str) -> torch.Tensor:
    """A tensor a callback returned for ``name`` must be like the one it was given."""
    if not isinstance(new, torch.Tensor) or (new.shape, new.dtype, new.device) != (given.shape, given.dtype, given.device):
        described = f"of shape {tuple(new.shape)}, {new.dtype} on {new.device}" if isinstance(new, torch.Tensor) else (
            f"of type {type(new).__name__}"
        )
        raise ValueError(
            f"`callback_on_step_end` returned `{name}` {described}; expected shape {tuple(given.shape)}, "
            f"{given.dtype} on {given.device}"
        )
    return new


# --------------------------------------------------------------------------------------------
# The key/value side: bank, processors and graphs
# --------------------------------------------------------------------------------------------


@dataclass
class AttentionReplay:
    """Everything of one pipeline that records and replays the up blocks' self-attention keys and
    values, and the CUDA graphs that read and write them.

    Created once per pipeline and kept: a compiled UNet and captured graphs rely on the same
    processor objects and the same bank tensors being there on every call. The bank is replaced
    only when its shape changes (image size, steps, dtype, device), and then the graphs, which
    read and write the old one, are dropped.

    Attributes:
        state: the processors' shared :class:`KVState`, its ``bank`` sized for the last call.
        processors: the FastDrag processor of each up-block self-attention layer.
        graphs: the captured graphs (:class:`GraphCache`), or ``None`` for eager execution.
    """

    state: KVState | None = None
    processors: dict | None = None
    graphs: GraphCache | None = None
    _layers: tuple | None = field(default=None, repr=False)
    _warned_eager: bool = field(default=False, repr=False)

    @property
    def bank(self) -> KVBank | None:
        return self.state.bank if self.state is not None else None

    def prepare(self, unet, device: torch.device, latent_size: tuple[int, int], steps: int) -> KVState:
        """The state, its bank sized for ``latent_size = (h, w)`` and ``steps`` on ``device``, and
        the processors for ``unet``'s layers at that size."""
        device = canonical_device(device)
        if self.state is None or self.state.step.device != device:
            self.state, self.processors = KVState(device), None
        shapes = kv_shapes(unet, latent_size)
        if self.processors is None or self._layers != tuple(shapes):
            self.processors, self._layers = fastdrag_processors(shapes, self.state), tuple(shapes)
        layout = (tuple(sorted(shapes.items())), steps, unet.dtype)
        bank = self.state.bank
        if bank is None or bank.layout != layout or bank.device != device:
            self.state.bank = None  # free the old bank before making the new one
            self.state.bank = KVBank(shapes, steps, device, unet.dtype)
            if self.graphs is not None:
                self.graphs.clear()
        return self.state

    def installed(self, unet, kv: KVState | None) -> contextlib.AbstractContextManager[None]:
        """The FastDrag processors on ``unet`` for the ``with`` body when ``kv`` is given (restored
        on every exit path), else nothing."""
        return fastdrag_attention(unet, self.processors) if kv is not None else contextlib.nullcontext()

    def enable_graphs(self, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        self.graphs, self._warned_eager = GraphCache(max_graphs), False

    def graphs_for(self, device: torch.device, offloaded: bool) -> GraphCache | None:
        """The graphs when enabled and usable on ``device`` without offloading, else ``None``
        (eager; one warning says so the first time)."""
        if self.graphs is None:
            return None
        if device.type != self.graphs.device_type or offloaded:
            if not self._warned_eager:
                why = "with model offloading" if offloaded else f"on {device.type}"
                logger.warning(f"CUDA graphs are enabled but cannot run {why}: running eagerly.")
                self._warned_eager = True
            return None
        return self.graphs

    @staticmethod
    def graph_signature(unet, *schedulers) -> tuple:
        """What a captured UNet loop bakes in besides its inputs: the UNet's weights (by address),
        its attention processors and the schedulers."""
        return (
            tuple(p.data_ptr() for p in unet.parameters()),
            tuple(map(id, unet.attn_processors.values())),
            *((id(scheduler), id(scheduler.config)) for scheduler in schedulers),
        )


class CallGraphs(NamedTuple):
    """The graph cache one call uses, and its :meth:`AttentionReplay.graph_signature`, read once per call."""

    cache: GraphCache
    signature: tuple


# --------------------------------------------------------------------------------------------
# The pipelines' shared behaviour
# --------------------------------------------------------------------------------------------


class FastDragMixin:
    """FastDrag's steps for a Diffusers pipeline with ``unet``, ``vae``, ``scheduler`` (DDIM),
    ``inverse_scheduler`` (optional) and ``image_processor``. A pipeline adds its components, its
    text encoding into a :class:`Conditioning` and its ``__call__``/``invert`` signatures."""

    def _init_fastdrag(self) -> None:
        self._interrupt = False
        self._guidance_scale = 1.0
        self._num_timesteps = 0
        self._clock = PhaseClock()
        self.attention_replay = AttentionReplay()
        self._derived_inverse: tuple[Any, DDIMInverseScheduler] | None = None

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """Build from another pipeline's components (shared, not copied), keeping their dtypes.

        Diffusers' ``from_pipe`` casts every component to one dtype (from 0.36, float32 unless one
        is given), and since the components are shared that would convert the source pipeline too,
        an SDXL pipeline's float32 VAE beside its float16 UNet among them. Without a dtype asked for,
        each component keeps its own.
        """
        if kwargs.get("dtype") is not None or kwargs.get("torch_dtype") is not None:
            return super().from_pipe(pipeline, **kwargs)
        token = _KEEPING_DTYPES.set(True)
        try:
            return super().from_pipe(pipeline, **kwargs)
        finally:
            _KEEPING_DTYPES.reset(token)

    def to(self, *args, **kwargs):
        """As Diffusers' ``to``; inside :meth:`from_pipe` without a dtype asked for, its cast to one
        dtype (``to(dtype=...)``, nothing else) is skipped."""
        if _KEEPING_DTYPES.get() and not args and set(kwargs) == {"dtype"}:
            return self
        return super().to(*args, **kwargs)

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
        self.attention_replay.enable_graphs(max_graphs)

    def disable_cuda_graphs(self) -> None:
        """Go back to eager execution and free the captured graphs."""
        self.attention_replay.graphs = None

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

    def text_phase(self, encodes: bool) -> contextlib.AbstractContextManager[None]:
        """The text phase, timed only when the text encoders run (not for given embeddings)."""
        return self._phase("text") if encodes else contextlib.nullcontext()

    @contextlib.contextmanager
    def lora_scaled(self, encoders: list, lora_scale: float | None) -> Iterator[None]:
        """The text encoders' LoRA layers at ``lora_scale`` for the ``with`` body (PEFT backend), as
        Diffusers' pipelines scale them in ``encode_prompt``."""
        if lora_scale is None or not USE_PEFT_BACKEND:
            yield
            return
        self._lora_scale = lora_scale
        for encoder in encoders:
            scale_lora_layers(encoder, lora_scale)
        try:
            yield
        finally:
            for encoder in encoders:
                unscale_lora_layers(encoder, lora_scale)

    @property
    def _unwrapped_unet(self):
        """The UNet module itself, also when ``torch.compile`` has wrapped it."""
        return getattr(self.unet, "_orig_mod", self.unet)

    # ----------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------

    def check_image(self, image, max_image_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
        """Check ``image`` (see ``inputs.check_image``), that it has at most ``max_image_pixels``
        pixels (checked from its size, before any value is read) and that its sides are multiples
        of ``vae_scale_factor``; return its ``(height, width)``."""
        return check_sized_image(image, max_image_pixels, self.vae_scale_factor)

    def check_edit(
        self, image, handle_points, target_points, mask, fill, mode, inversion,
        max_image_pixels: int = MAX_IMAGE_PIXELS, max_drags: int = MAX_DRAGS,
    ) -> EditInputs:
        """The image (or, with a checked ``inversion``, its size: the image then only has to match
        it, see :meth:`check_inversion`), mask, drags, fill and mode, checked and converted once."""
        if image is None and inversion is None:
            raise ValueError("`image` is required unless `inversion` (from `pipe.invert`) is given")
        return check_edit_inputs(
            image if inversion is None else None, handle_points, target_points, mask, mode, fill,
            size=tuple(inversion.image_size) if inversion is not None else None,
            max_image_pixels=max_image_pixels, max_drags=max_drags, multiple_of=self.vae_scale_factor,
        )

    def check_call_options(
        self, guidance_scale, preserve_consistency, generator, output_type, callback, tensor_inputs
    ) -> None:
        """The call's options that every FastDrag pipeline shares."""
        check_real(guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE_SCALE)
        check_flag(preserve_consistency, "preserve_consistency")
        if callback is not None and not callable(callback):
            raise TypeError(f"`callback_on_step_end` must be callable or None, got {type(callback).__name__}")
        if not isinstance(tensor_inputs, (list, tuple)) or not all(isinstance(k, str) for k in tensor_inputs):
            raise TypeError(f"`callback_on_step_end_tensor_inputs` must be a list of names, got {short_repr(tensor_inputs)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not all(k in self._callback_tensor_inputs for k in tensor_inputs):
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` has to be in {self._callback_tensor_inputs}, got {tensor_inputs}"
            )

    def check_schedule(self, num_inference_steps, inversion_strength) -> int:
        """Validate the schedule against the schedulers; return the number of inversion steps.

        Raises ``ValueError`` unless sampling visits exactly the inversion's timesteps in reverse:
        otherwise no recorded key/value would be replayed and the zero-noise round trip breaks.
        """
        if not isinstance(self.scheduler, DDIMScheduler):
            raise ValueError(
                f"`pipe.scheduler` is a {type(self.scheduler).__name__}, but FastDrag samples with DDIM: set "
                "`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)` (the pipeline converts the "
                "scheduler it is built with, not one set later)"
            )
        steps = check_schedule(num_inference_steps, inversion_strength, self.scheduler.config.num_train_timesteps)
        self.timesteps_for(int(num_inference_steps), steps)
        return steps

    def check_inversion(
        self, inversion, image, conditions: dict[str, Any], embeddings: dict[str, torch.Tensor | None],
        num_inference_steps, inversion_strength, preserve_consistency, max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        """``inversion`` must come from ``invert`` of this pipeline's models and agree with the call:
        the same image (when one is given); the same ``conditions`` (prompts, SDXL's sizes: each
        given one must equal the inversion's); the same ``embeddings`` (by argument name, see
        :data:`EMBEDDING_ARGUMENTS`; ``negative_*`` ones only of the same shape); the same schedule (a
        strength is compared by the steps it makes)."""
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
        for name, value in conditions.items():
            if value is not None and value != inversion.conditions.get(name):
                raise ValueError(
                    f"`{name}`={value!r} differs from the inversion's {inversion.conditions.get(name)!r}: "
                    "leave it out, or invert again"
                )
        if num_inference_steps is not None and int(num_inference_steps) != inversion.num_inference_steps:
            raise ValueError(
                f"`num_inference_steps`={num_inference_steps!r} differs from the inversion's "
                f"{inversion.num_inference_steps}: leave it out, or invert again"
            )
        steps = len(inversion.timesteps)
        if inversion_strength is not None and round(float(inversion_strength) * inversion.num_inference_steps) != steps:
            raise ValueError(
                f"`inversion_strength`={inversion_strength!r} differs from the inversion's {inversion.inversion_strength!r} "
                f"({steps} of {inversion.num_inference_steps} steps): leave it out, or invert again"
            )
        own = inversion.conditioning.tensors("")
        for name, given in embeddings.items():
            positive = name.removeprefix("negative_")
            recorded = own[EMBEDDING_ARGUMENTS[positive]]
            if name != positive:  # a negative prompt may change; it must fit the recorded conditioning
                check_same_shape(recorded, f"{positive} of the inversion", given, name)
            elif given is not None and not torch.equal(given.to(recorded), recorded):
                raise ValueError(f"`{name}` differ from the inversion's: leave them out, or invert again")
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
        return {name: weights_fingerprint(getattr(self, name, None)) for name in FINGERPRINTED}

    def timesteps_for(self, num_inference_steps: int, steps: int) -> tuple[list[int], list[int]]:
        """Inversion timesteps (ascending) and sampling timesteps (descending), as host ints.

        Raises ``ValueError`` unless sampling visits exactly the inversion's timesteps in reverse.
        """
        return schedule_timesteps(self.scheduler, self.ddim_inverse_scheduler, num_inference_steps, steps)

    def schedule(self, num_inference_steps: int | None, inversion_strength: float | None) -> Schedule:
        """The checked call's schedule; ``None`` takes the default."""
        num_inference_steps = int(DEFAULT_STEPS if num_inference_steps is None else num_inference_steps)
        steps = round(float(DEFAULT_STRENGTH if inversion_strength is None else inversion_strength) * num_inference_steps)
        return Schedule(num_inference_steps, steps, *self.timesteps_for(num_inference_steps, steps))

    def latent_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(height, width)`` of the latent of an image of ``size = (height, width)`` pixels."""
        return size[0] // self.vae_scale_factor, size[1] // self.vae_scale_factor

    def preprocess(self, edit: EditInputs, device: torch.device) -> LatentEdit:
        """Checked inputs -> the latent grid's mask and points, everything on ``device``. The host
        sends everything now, before the first kernel, so later no copy waits on the queue."""
        factor = self.vae_scale_factor
        return LatentEdit(
            pixels=to_device(edit.pixels, device) if edit.pixels is not None else None,
            mask=image_to_latent_mask(to_device(edit.mask, device), factor),
            handles=to_device(image_to_latent_points(edit.handles, factor), device),
            targets=to_device(image_to_latent_points(edit.targets, factor), device),
            mode=edit.mode,
            fill=edit.fill,
        )

    # ----------------------------------------------------------------------------------------
    # The VAE
    # ----------------------------------------------------------------------------------------

    def vae_precision(self) -> contextlib.AbstractContextManager[None]:
        """Where the VAE runs in another precision than its weights (SDXL's float16 VAE); as it is here."""
        return contextlib.nullcontext()

    def _latent_statistics(self, latents: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(shift, scale)`` with ``scaled = (raw - shift) * scale``: a VAE's per-channel
        ``latents_mean``/``latents_std`` (Playground-style SDXL VAEs) or its ``shift_factor``, and
        ``scaling_factor``, as Diffusers' pipelines apply them."""
        config = self.vae.config
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            def per_channel(values) -> torch.Tensor:
                return torch.tensor(values, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)

            return per_channel(mean), config.scaling_factor / per_channel(std)
        return getattr(config, "shift_factor", None) or 0.0, config.scaling_factor

    def encode_image(self, image: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``(1, 3, H, W)`` in [0, 1] -> the scaled latent ``(1, C, H / f, W / f)``: deterministic.

        Any Diffusers VAE: the mode (mean) of a latent distribution, or the latents a VAE such as
        ``AutoencoderTiny`` returns directly.
        """
        with self.vae_precision():
            pixels = self.image_processor.normalize(image).to(device=device, dtype=self.vae.dtype)
            encoded = self.vae.encode(pixels)
            latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        shift, scale = self._latent_statistics(latents)
        return (latents - shift) * scale

    def decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> ``(B, 3, H, W)`` images in [-1, 1], the inverse of :meth:`encode_image`."""
        with self.vae_precision():
            latents = latents.to(self.vae.dtype)
            shift, scale = self._latent_statistics(latents)
            return self.vae.decode(latents / scale + shift, return_dict=False)[0]

    # ----------------------------------------------------------------------------------------
    # Keys/values, graphs and the denoising loops
    # ----------------------------------------------------------------------------------------

    def prepare_replay(
        self, device: torch.device, size: tuple[int, int], steps: int, preserve_consistency: bool
    ) -> tuple[KVState | None, CallGraphs | None]:
        """The key/value state for a call (``None`` without consistency) and its graphs (``None``: eager)."""
        replay = self.attention_replay
        kv = replay.prepare(self._unwrapped_unet, device, self.latent_size(size), steps) if preserve_consistency else None
        offloaded = any(hasattr(model, "_hf_hook") for model in self.components.values())
        cache = replay.graphs_for(device, offloaded)
        if cache is None:
            return kv, None
        return kv, CallGraphs(cache, replay.graph_signature(self.unet, self.scheduler, self.ddim_inverse_scheduler))

    def _run_loop(
        self,
        body: Callable[..., torch.Tensor],
        inputs: dict[str, torch.Tensor],
        steps: int,
        kv: KVState | None,
        graphs: CallGraphs | None,
        key: tuple,
    ) -> torch.Tensor:
        """``body(**inputs)``, with the FastDrag processors installed when ``kv`` is given: eagerly
        with a progress bar, or replayed from the graph for ``key`` and the models."""
        with self.attention_replay.installed(self._unwrapped_unet, kv), self.progress_bar(total=steps) as progress_bar:
            if graphs is None:
                return body(**inputs, on_step=progress_bar.update)
            # A graph's outputs are overwritten by its next replay: hand out a copy.
            latents = graphs.cache.run((*key, graphs.signature), body, inputs)[0].clone()
            progress_bar.update(steps)
            return latents

    def _inversion_loop(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        steps: list[int],
        kv: KVState | None,
        on_step: Callable[[], Any] | None = None,
        **conditioning: torch.Tensor,
    ) -> torch.Tensor:
        """DDIM inversion from ``z_0`` over ``steps`` (ascending; ``timesteps`` the same on the device),
        recording the keys/values of step ``i`` into the bank's slot ``i``. ``conditioning``: the
        ``cond_`` tensors of :meth:`Conditioning.tensors`."""
        cond = Conditioning.from_tensors(conditioning, "cond_").unet_kwargs()
        if kv is not None:
            kv.mode = RECORD
        inverse_scheduler = self.ddim_inverse_scheduler
        for i, t in enumerate(steps):
            if kv is not None:
                kv.step.fill_(i)
            noise_pred = self.unet(latents, timesteps[i], **cond, return_dict=False)[0]
            latents = inverse_scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step()
        return latents

    def _sampling_loop(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        *,
        steps: list[int],
        kv: KVState | None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = (),
        on_step: Callable[[], Any] | None = None,
        **conditioning: torch.Tensor,
    ) -> torch.Tensor:
        """DDIM sampling (eta = 0) over ``steps`` (descending; ``timesteps`` the same on the device),
        replaying at step ``i`` the keys/values the inversion recorded in slot ``len(steps) - 1 - i``.
        ``conditioning``: the ``cond_`` and, under guidance, ``uncond_`` tensors of
        :meth:`Conditioning.tensors`."""
        if kv is not None:
            kv.mode = REPLAY
        cond = Conditioning.from_tensors(conditioning, "cond_")
        uncond = Conditioning.from_tensors(conditioning, "uncond_")
        batched = cond.batched_after(uncond).unet_kwargs() if uncond is not None else None
        last = len(steps) - 1
        for i, t in enumerate(steps):
            if self.interrupt:
                continue
            if kv is not None:
                kv.step.fill_(last - i)
            # A callback may turn guidance off (Diffusers' CFG cutoff sets the scale to 0): then the
            # conditional half runs alone. A host value, so captured graphs keep their one branch.
            guided = batched is not None and self.do_classifier_free_guidance
            model_input = torch.cat([latents] * 2) if guided else latents
            noise_pred = self.unet(model_input, timesteps[i], **(batched if guided else cond.unet_kwargs()),
                                   return_dict=False)[0]
            if guided:
                noise_uncond, noise_text = noise_pred.chunk(2)
                noise_pred = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, eta=0.0, return_dict=False)[0]

            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, cond.callback_tensors(latents, callback_on_step_end_tensor_inputs))
                if not isinstance(outputs, dict):
                    raise ValueError(
                        f"`callback_on_step_end` must return a dict of tensors by name (its `callback_kwargs`, "
                        f"changed or not), got {type(outputs).__name__}"
                    )
                latents = checked_callback_tensor(outputs.pop("latents", latents), latents, "latents")
                replaced = cond.with_callback_tensors(outputs)
                if replaced is not cond:
                    cond = replaced
                    batched = cond.batched_after(uncond).unet_kwargs() if uncond is not None else None
            if on_step is not None:
                on_step()
        return latents

    def _invert_latents(
        self, image_latents: torch.Tensor, cond: Conditioning, timesteps: torch.Tensor, steps: list[int],
        kv: KVState | None, graphs: CallGraphs | None,
    ) -> torch.Tensor:
        """Run the inversion loop, recording keys/values when ``kv`` is given."""
        body = functools.partial(self._inversion_loop, steps=steps, kv=kv)
        inputs = {"latents": image_latents.to(self.unet.dtype), "timesteps": timesteps, **cond.tensors("cond_")}
        return self._run_loop(body, inputs, len(steps), kv, graphs, ("inversion", tuple(steps), kv is not None))

    def sample_latents(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        uncond: Conditioning | None,
        timesteps: torch.Tensor,
        steps: list[int],
        kv: KVState | None,
        graphs: CallGraphs | None,
        callback_on_step_end=None,
        callback_on_step_end_tensor_inputs: list[str] = (),
    ) -> torch.Tensor:
        """The sampling half, timed as such: replaying the bank's keys/values when ``kv`` is given,
        guided when ``uncond`` is. A callback runs on the host between steps, so a call with one
        samples eagerly."""
        body = functools.partial(
            self._sampling_loop, steps=steps, kv=kv, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        inputs = {"latents": latents, "timesteps": timesteps, **cond.tensors("cond_")}
        if uncond is not None:
            inputs.update(uncond.tensors("uncond_"))
        graphs = graphs if callback_on_step_end is None else None
        key = ("sampling", tuple(steps), kv is not None, self.guidance_scale)
        with self._phase("sampling"):
            return self._run_loop(body, inputs, len(steps), kv, graphs, key)

    def warp(
        self, latents: torch.Tensor, edit: LatentEdit, generator: torch.Generator | None, graphs: CallGraphs | None
    ) -> torch.Tensor:
        """The one-step edit of the inverted latent, timed as the warp phase: the warp (LWF,
        relocation, filling), or the object moved or copied."""
        with self._phase("warp"):
            args = (latents, edit.mask, edit.handles, edit.targets, edit.mode, edit.fill)
            if graphs is None or edit.fill == "noise":  # random numbers are drawn on the host's generator
                return edit_latents(*args, generator, validate=False)
            mode, fill = edit.mode, edit.fill

            def body(latents, mask, handles, targets):
                return edit_latents(latents, mask, handles, targets, mode, fill, validate=False)

            inputs = {"latents": latents, "mask": edit.mask, "handles": edit.handles, "targets": edit.targets}
            keep_alive = warp_constants(*latents.shape[-2:], latents.device)
            return graphs.cache.run(("warp", mode, fill), body, inputs, keep_alive)[0].clone()

    def encode_and_invert(
        self, pixels: torch.Tensor, cond: Conditioning, schedule: Schedule, kv: KVState | None,
        graphs: CallGraphs | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_0, z_t)``: the encoded image and its inversion, the keys/values recorded in ``kv``'s bank."""
        device = pixels.device
        timesteps = to_device(torch.tensor(schedule.inversion), device)
        with self._phase("encode"):
            image_latents = self.encode_image(pixels, device)
        with self._phase("inversion"):
            latents = self._invert_latents(image_latents, cond, timesteps, schedule.inversion, kv, graphs)
        return image_latents, latents

    def inverted_latents(
        self, edit: LatentEdit, inversion: FastDragInversion | None, cond: Conditioning, schedule: Schedule,
        kv: KVState | None, graphs: CallGraphs | None, device: torch.device,
    ) -> torch.Tensor:
        """``z_t`` of the call: the image encoded and inverted now, or the cached inversion's (its
        keys/values copied into the bank)."""
        if inversion is None:
            return self.encode_and_invert(edit.pixels, cond, schedule, kv, graphs)[1]
        if kv is not None:
            kv.bank.copy_(inversion.kv_bank)
        return inversion.latents.to(device)

    def make_inversion(
        self, pixels: torch.Tensor, cond: Conditioning, conditions: dict[str, Any], schedule: Schedule,
        inversion_strength: float, preserve_consistency: bool,
    ) -> FastDragInversion:
        """The body of ``invert``: encode and invert the checked image ``(1, 3, H, W)`` in [0, 1] (on
        the CPU) once, and keep what a re-drag needs."""
        device = self._execution_device
        size = tuple(pixels.shape[-2:])
        kv, graphs = self.prepare_replay(device, size, schedule.steps, preserve_consistency)
        image_latents, latents = self.encode_and_invert(to_device(pixels, device), cond, schedule, kv, graphs)
        return FastDragInversion(
            latents=latents,
            image_latents=image_latents,
            timesteps=tuple(schedule.inversion),
            kv_bank=kv.bank.clone() if kv is not None else None,
            conditioning=cond,
            conditions=conditions,
            image_size=size,
            num_inference_steps=schedule.num_inference_steps,
            inversion_strength=float(inversion_strength),
            image_fingerprint=image_fingerprint(pixels),
            made_by=self._weights_fingerprints(),
            dtype=self.unet.dtype,
        )

    def start_call(self, guidance_scale: float, schedule: Schedule) -> None:
        """The per-call state Diffusers' properties report (guidance, timesteps, interrupt)."""
        self._guidance_scale = float(guidance_scale)
        self._num_timesteps = len(schedule.sampling)
        self._interrupt = False
