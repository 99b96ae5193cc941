"""Per-phase wall times of pipeline calls, for ``pipe.timing_phases()``, the CLI and the benchmarks.

This module imports nothing relative, so Diffusers can copy it beside a local ``custom_pipeline``
file.
"""

import contextlib
import time
from collections.abc import Iterator

import torch


PHASES = ("text", "encode", "inversion", "warp", "sampling", "decode")


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
    """

    def __init__(self) -> None:
        self._times: dict[str, float] | None = None

    @property
    def collecting(self) -> bool:
        return self._times is not None

    @contextlib.contextmanager
    def collect(self) -> Iterator[dict[str, float]]:
        """Yield a dict that fills with ``phase -> seconds``, summed over the calls made inside."""
        times: dict[str, float] = {}
        self._times = times
        try:
            yield times
        finally:
            self._times = None

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
