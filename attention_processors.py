"""FastDrag's consistency preservation: record self-attention keys/values, then replay them.

During DDIM inversion the self-attention (``attn1``) layers of the UNet's up blocks record their
keys and values, per timestep. During sampling, at the same timestep, those layers attend with
the recorded keys and values in place of their own; queries stay the sampling branch's own.
Cross-attention, down and mid blocks are untouched (``fastdrag-method.md`` section 5).

This module imports nothing relative, so Diffusers can copy it beside a local
``custom_pipeline`` file.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

RECORD = "record"
REPLAY = "replay"
OFF = "off"


class KVRecord:
    """Keys and values per ``(timestep, layer)``, each ``(1, tokens, inner_dim)`` on the UNet's device and dtype."""

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def put(self, timestep: int, layer: str, key: torch.Tensor, value: torch.Tensor) -> None:
        self._entries[(timestep, layer)] = (key.detach(), value.detach())

    def get(self, timestep: int, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return self._entries[(timestep, layer)]
        except KeyError:
            raise RuntimeError(
                f"no keys/values were recorded for layer {layer!r} at timestep {timestep}; "
                f"recorded timesteps: {self.timesteps}"
            ) from None

    @property
    def timesteps(self) -> list[int]:
        return sorted({timestep for timestep, _ in self._entries})

    @property
    def layers(self) -> list[str]:
        return sorted({layer for _, layer in self._entries})

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._entries.values())

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item: tuple[int, str]) -> bool:
        return item in self._entries


@dataclass
class KVState:
    """What the FastDrag processors do on the next UNet call: shared by all of them for one call.

    ``mode`` is ``"record"``, ``"replay"`` or ``"off"``; ``timestep`` is the Python int of the
    UNet call about to run (a host value, so processors never read a device tensor).
    """

    record: KVRecord = field(default_factory=KVRecord)
    mode: str = OFF
    timestep: int | None = None

    def exchange(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Record ``key``/``value``, or swap in the recorded ones, according to ``mode``."""
        if self.mode == RECORD:
            self.record.put(self.timestep, layer, key, value)
            return key, value
        if self.mode == REPLAY:
            recorded_key, recorded_value = self.record.get(self.timestep, layer)
            # Inversion runs at batch 1; sampling may run at 2 (guidance): share one copy.
            batch = key.shape[0]
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


def up_block_self_attention_layers(processor_names) -> list[str]:
    """Names (as in ``unet.attn_processors``) of the up blocks' self-attention layers."""
    return [name for name in processor_names if name.startswith("up_blocks.") and ".attn1." in name]


@contextlib.contextmanager
def fastdrag_attention(unet, state: KVState) -> Iterator[list[str]]:
    """Install FastDrag processors on the up blocks' ``attn1`` layers for the ``with`` body.

    The UNet's own processors (whatever they are: SDPA, sliced, xformers) are put back on every
    exit path: return, exception or interrupt. Yields the names of the layers taken over.
    """
    originals = unet.attn_processors
    layers = up_block_self_attention_layers(originals)
    unet.set_attn_processor(
        {name: FastDragAttnProcessor(name, state) if name in layers else proc for name, proc in originals.items()}
    )
    try:
        yield layers
    finally:
        unet.set_attn_processor(originals)
        state.mode = OFF
