"""Per-phase wall times of pipeline calls, for ``pipe.timing_phases()``, the CLI and the benchmarks.

This module imports nothing relative, so Diffusers can copy it beside a local ``custom_pipeline``
file.
"""

import contextlib
import contextvars
import time
from collections.abc import Iterator

import torch


PHASES = ("text", "encode", "inversion", "warp", "sampling", "decode")

# The open ``collect`` blocks of the current thread (or asyncio task), by clock: a context variable,
# not an attribute of the clock, so that calls made at once from several threads (Gradio with
# concurrency above 1) each land in their own block, never in another thread's.
_OPEN: contextvars.ContextVar[dict[int, dict[str, float]]] = contextvars.ContextVar("fastdrag_phase_times", default={})


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PhaseClock:
    """Times named phases while a :meth:`collect` block is open; costs nothing otherwise.

    The device is synchronised at each phase boundary (never inside a phase), and only while
    collecting: timing takes away the overlap of host and device work between phases.

    A block counts the calls made inside it by the same thread (or asyncio task) only: blocks
    opened at once by several threads on one clock each get their own times.
    """

    @property
    def _times(self) -> dict[str, float] | None:
        return _OPEN.get().get(id(self))

    @property
    def collecting(self) -> bool:
        """Whether a :meth:`collect` block of this clock is open in the current thread."""
        return self._times is not None

    @contextlib.contextmanager
    def collect(self) -> Iterator[dict[str, float]]:
        """Yield a dict that fills with ``phase -> seconds``, summed over the calls made inside by
        this thread."""
        times: dict[str, float] = {}
        # A new mapping, never changed in place: other contexts may hold the previous one.
        token = _OPEN.set({**_OPEN.get(), id(self): times})
        try:
            yield times
        finally:
            _OPEN.reset(token)

    @contextlib.contextmanager
    def phase(self, name: str, device: torch.device) -> Iterator[None]:
        """Count the ``with`` body as phase ``name`` (one of :data:`PHASES`)."""
        times = self._times
        if times is None:
            yield
            return
        synchronize(device)
        start = time.perf_counter()
        yield
        synchronize(device)
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
