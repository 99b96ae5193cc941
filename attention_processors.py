"""FastDrag's consistency preservation: record self-attention keys/values, then replay them.

During DDIM inversion the self-attention (``attn1``) layers of the UNet's up blocks record their
keys and values, one slot per inversion step. During sampling, at the same timestep, those layers
attend with the recorded keys and values in place of their own; queries stay the sampling branch's
own. Cross-attention, down and mid blocks are untouched (``docs/method.md``, section 5).

Built for ``torch.compile`` and CUDA graphs: the keys and values live in a :class:`KVBank`
preallocated once per (latent size, steps, dtype) and written and read in place; the step is a
one-element device tensor, never a Python number, so Dynamo does not specialise on it; and the
processors are created once per UNet and reused on every call. A compiled UNet therefore builds at
most three graphs (record, replay, and the plain UNet), whatever the number of steps.

This module imports nothing relative, so Diffusers can copy it beside a local
``custom_pipeline`` file.
"""

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


RECORD = "record"
REPLAY = "replay"
OFF = "off"


def _downsampled(size: int, downsampler) -> int:
    """The side a Diffusers ``Downsample2D`` (or a module like it) makes of ``size``."""
    conv = getattr(downsampler, "conv", None)
    if isinstance(conv, torch.nn.Conv2d):
        padding = conv.padding[0]
        if getattr(downsampler, "use_conv", True) and getattr(downsampler, "padding", padding) == 0:
            size += 1  # Downsample2D pads one pixel on the right and bottom instead
        return (size + 2 * padding - conv.kernel_size[0]) // conv.stride[0] + 1
    if isinstance(conv, torch.nn.AvgPool2d):
        return (size - conv.kernel_size) // conv.stride + 1
    return math.ceil(size / 2)


def up_block_token_counts(unet, latent_size: tuple[int, int]) -> dict[int, int]:
    """Tokens (pixels) each up block's attention sees for a ``(height, width)`` latent, by block index.

    Up block ``i`` of ``n`` runs at the resolution of down block ``n - 1 - i``'s input.
    """
    height, width = latent_size
    sides = [(height, width)]
    for block in unet.down_blocks[:-1]:
        downsamplers = getattr(block, "downsamplers", None) or []
        for downsampler in downsamplers:
            height, width = _downsampled(height, downsampler), _downsampled(width, downsampler)
        sides.append((height, width))
    count = len(unet.up_blocks)
    return {i: sides[count - 1 - i][0] * sides[count - 1 - i][1] for i in range(count) if count - 1 - i < len(sides)}


def kv_shapes(unet, latent_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """``{layer: (tokens, inner_dim)}`` of every up-block self-attention layer, for a latent size.

    Layers are named as in ``unet.attn_processors``; only the up blocks are walked.
    """
    tokens = up_block_token_counts(unet, latent_size)
    shapes = {}
    for index, block in enumerate(unet.up_blocks):
        for name, module in block.named_modules(prefix=f"up_blocks.{index}"):
            if name.endswith(".attn1") and hasattr(module, "set_processor"):
                shapes[f"{name}.processor"] = (tokens[index], module.to_k.out_features)
    return shapes


class KVBank:
    """Preallocated keys and values of the up blocks' self-attention, one slot per inversion step.

    ``keys[layer]`` and ``values[layer]`` are ``(steps, tokens, inner_dim)`` tensors on the UNet's
    device and dtype. Slot ``i`` holds what the ``i``-th inversion UNet call saw; sampling reads
    the slots backwards. The tensors are created once and only ever written in place, so their
    addresses stay fixed (what CUDA graphs and ``torch.compile``'s cudagraph mode need).
    """

    def __init__(self, shapes: dict[str, tuple[int, int]], steps: int, device, dtype: torch.dtype) -> None:
        self.shapes = dict(shapes)
        self.steps = steps
        self.keys = {name: torch.zeros(steps, *shape, device=device, dtype=dtype) for name, shape in shapes.items()}
        self.values = {name: torch.zeros(steps, *shape, device=device, dtype=dtype) for name, shape in shapes.items()}
        for tensor in (*self.keys.values(), *self.values.values()):
            torch._dynamo.mark_static_address(tensor)

    @property
    def layout(self) -> tuple:
        """What two banks must share for one to be copied into the other: layers, shapes, steps, dtype."""
        return (tuple(sorted(self.shapes.items())), self.steps, self.dtype)

    @property
    def device(self) -> torch.device:
        return next(iter(self.keys.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.keys.values())).dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def copy_(self, other: "KVBank") -> "KVBank":
        """Overwrite this bank with ``other``'s contents, in place."""
        if other.layout != self.layout:
            raise ValueError("the two key/value banks differ in layers, shapes, steps or dtype")
        for name in self.keys:
            self.keys[name].copy_(other.keys[name])
            self.values[name].copy_(other.values[name])
        return self

    def clone(self) -> "KVBank":
        """A new bank holding a copy of this one's contents."""
        return KVBank(self.shapes, self.steps, self.device, self.dtype).copy_(self)


class KVState:
    """What the FastDrag processors do on the next UNet call; shared by all of them.

    ``mode`` is ``"record"``, ``"replay"`` or ``"off"`` (a host value: Dynamo builds one graph per
    mode). ``step`` is a ``(1,)`` int64 tensor on the UNet's device holding the bank slot of the
    call about to run; the caller sets it in place (``state.step.fill_(i)``), so nothing waits on
    the host and a compiled UNet does not recompile per step.
    """

    def __init__(self, device) -> None:
        self.mode = OFF
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        torch._dynamo.mark_static_address(self.step)
        self.bank: KVBank | None = None

    def exchange(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record ``key``/``value`` into the bank, or swap in the recorded ones, according to ``mode``."""
        if self.mode == RECORD:
            keys, values = self.bank.keys[layer], self.bank.values[layer]
            if tuple(key.shape) != (1, *keys.shape[1:]):
                raise RuntimeError(
                    f"FastDrag expected keys of shape (1, {keys.shape[1]}, {keys.shape[2]}) in {layer}, got "
                    f"{tuple(key.shape)}: this UNet's up-block layout is not one FastDrag knows"
                )
            keys.index_copy_(0, self.step, key)
            values.index_copy_(0, self.step, value)
            return key, value
        if self.mode == REPLAY:
            # Inversion runs at batch 1; sampling may run at 2 (guidance): share one copy.
            batch = key.shape[0]
            recorded_key = self.bank.keys[layer].index_select(0, self.step)
            recorded_value = self.bank.values[layer].index_select(0, self.step)
            return recorded_key.expand(batch, -1, -1), recorded_value.expand(batch, -1, -1)
        return key, value


class FastDragAttnProcessor:
    """Self-attention that records or replays its keys and values; otherwise like ``AttnProcessor2_0``."""

    def __init__(self, layer: str, state: KVState) -> None:
        self.layer = layer
        self.state = state

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        # The one line that makes this FastDrag's processor.
        key, value = self.state.exchange(self.layer, key, value)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.reshape(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.reshape(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # linear proj
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def fastdrag_processors(layers, state: KVState) -> dict[str, FastDragAttnProcessor]:
    """One FastDrag processor per layer name (as in ``unet.attn_processors``), sharing ``state``.

    Build them once and pass the same objects to every :func:`fastdrag_attention`: a compiled UNet
    guards on its processors, and new objects on every call would make it recompile.
    """
    return {name: FastDragAttnProcessor(name, state) for name in layers}


@contextlib.contextmanager
def fastdrag_attention(unet, processors: dict[str, FastDragAttnProcessor]) -> Iterator[None]:
    """Install ``processors`` (from :func:`fastdrag_processors`) on their layers for the ``with`` body.

    Only those layers are touched. Their own processors (whatever they are: SDPA, sliced,
    xformers) are put back on every exit path: return, exception or interrupt; and the
    processors' state is switched off.
    """
    attentions = {name: unet.get_submodule(name.removesuffix(".processor")) for name in processors}
    originals = {name: attention.processor for name, attention in attentions.items()}
    try:
        for name, attention in attentions.items():
            attention.set_processor(processors[name])
        yield
    finally:
        for name, attention in attentions.items():
            attention.set_processor(originals[name])
        for processor in processors.values():
            processor.state.mode = OFF
