"""CUDA graphs for FastDrag's denoising work: capture once per shape, replay afterwards.

One UNet call of Stable Diffusion 1.5 at 512x512 in fp16 computes in a few milliseconds on a
modern GPU, but launching its hundreds of kernels one by one from Python takes several times
that. A CUDA graph records the kernels of a whole loop (every UNet call, the key/value record or
replay, the scheduler steps) once and launches them again as one unit.

:class:`GraphCache` holds the captured graphs of one pipeline, keyed by whatever changes the
kernels (shapes, dtypes, the timesteps, the guidance scale, the models), least recently used
first out. Inputs are copied into the graph's own static tensors before each replay, and the
outputs are the graph's static tensors: read or copy them before the next replay of that graph.

This module imports nothing relative, so Diffusers can copy it beside a local
``custom_pipeline`` file.
"""

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch


DEFAULT_MAX_GRAPHS = 8

# (fn, static inputs, cache) -> (replay, static outputs)
Capture = Callable[[Callable[..., Any], dict[str, torch.Tensor], "GraphCache"], tuple[Callable[[], None], tuple]]


def as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def capture_cuda_graph(
    fn: Callable[..., Any], inputs: dict[str, torch.Tensor], cache: "GraphCache"
) -> tuple[Callable[[], None], tuple[torch.Tensor, ...]]:
    """Capture ``fn(**inputs)`` in a ``torch.cuda.CUDAGraph``; return its replay and its outputs.

    ``fn`` runs once eagerly on a side stream first, so that lazy initialisation (cuBLAS
    workspaces, kernel selection) happens outside the capture, as PyTorch's documentation asks.
    """
    stream = cache.capture_stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(**inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=cache.pool(), stream=stream):
        outputs = as_tuple(fn(**inputs))
    return graph.replay, outputs


@dataclass
class CapturedGraph:
    replay: Callable[[], None]
    inputs: dict[str, torch.Tensor]
    outputs: tuple[torch.Tensor, ...]
    keep_alive: tuple  # tensors the graph reads that nobody else is sure to keep


class GraphCache:
    """Captured graphs of one pipeline, at most ``max_graphs``, least recently used evicted first.

    Args:
        max_graphs: how many graphs are kept; each holds its static inputs and outputs, and the
            graphs share one memory pool for their intermediate tensors.
        capture: how a graph is made; :func:`capture_cuda_graph` on CUDA. Tests on the CPU pass a
            stand-in that freezes the first call's closure and re-runs it.
        device_type: the device type graphs are used on; the pipeline runs eagerly elsewhere.
    """

    def __init__(self, max_graphs: int = DEFAULT_MAX_GRAPHS, capture: Capture = capture_cuda_graph,
                 device_type: str = "cuda") -> None:
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"`max_graphs` must be an integer >= 1, got {max_graphs!r}")
        self.max_graphs = max_graphs
        self.device_type = device_type
        self.captures = 0
        self._capture = capture
        self._graphs: OrderedDict[Hashable, CapturedGraph] = OrderedDict()
        # Keys whose capture or replay raised: they run eagerly from then on, without retrying.
        self._eager_keys: set[Hashable] = set()
        self._pool = None
        self._stream = None

    def __len__(self) -> int:
        return len(self._graphs)

    def pool(self):
        """The memory pool shared by this cache's graphs (they never run concurrently)."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def capture_stream(self) -> torch.cuda.Stream:
        """One side stream for every capture: graphs that share a pool must be captured on the same one."""
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def clear(self) -> None:
        """Drop every graph and the memory pool."""
        self._graphs.clear()
        self._pool = None

    def run(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        inputs: dict[str, torch.Tensor],
        keep_alive: tuple = (),
    ) -> tuple[torch.Tensor, ...]:
        """``fn(**inputs)`` from the graph for ``key``, capturing it on first use.

        ``key`` must name everything ``fn`` bakes in besides its inputs (Python numbers, shapes of
        other tensors, which models it calls); the inputs' shapes, dtypes and devices are added
        here. ``fn`` may only read tensors passed in ``inputs``, tensors that stay alive and in
        place (parameters, the key/value bank), and those in ``keep_alive``, held as long as the
        graph. The outputs are overwritten by the next replay of this graph.

        A capture or replay that raises (the graph path has not been run on every GPU and torch
        build) does not fail the call: ``fn`` runs eagerly on ``inputs`` instead, for this key and
        every later call with it, and one warning says so.
        """
        full_key = (key, tuple((name, tuple(t.shape), t.dtype, t.device) for name, t in inputs.items()))
        if full_key in self._eager_keys:
            return as_tuple(fn(**inputs))
        entry = self._graphs.get(full_key)
        stage = "capture"
        try:
            if entry is None:
                static = {name: tensor.clone() for name, tensor in inputs.items()}
                replay, outputs = self._capture(fn, static, self)
                self.captures += 1
                entry = CapturedGraph(replay=replay, inputs=static, outputs=outputs, keep_alive=tuple(keep_alive))
                self._graphs[full_key] = entry
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(full_key)
                for name, tensor in inputs.items():
                    entry.inputs[name].copy_(tensor)
            stage = "replay"
            entry.replay()
        except Exception as error:
            self._graphs.pop(full_key, None)
            self._eager_keys.add(full_key)
            name = key[0] if isinstance(key, tuple) and key else key
            warnings.warn(f"CUDA graph {name!r} failed at {stage} ({type(error).__name__}: {error}); "
                          "running it eagerly from now on", stacklevel=2)
            return as_tuple(fn(**inputs))
        return entry.outputs
