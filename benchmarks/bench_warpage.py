"""Median time of ``warpage_field + relocate + bnni`` on a 64x64 SD latent (4 channels).

Cases: a 1793-pixel disc mask with 1 drag, and a 2453-pixel disc with 4 drags. On the CPU the
run uses one thread (``torch.set_num_threads(1)``). Target: at most 1 ms each.

    python benchmarks/bench_warpage.py [--device cpu|cuda] [--repeats 200]

On CUDA it also checks that the warp never synchronises with the host
(``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from fastdrag.apps.cli import at_least, pick_device_and_dtype, run_script
from fastdrag.warpage import bnni, relocate, warpage_field


def disc_mask(radius: float, size: int = 64, centre: float = 32.0) -> torch.Tensor:
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    return (rows - centre) ** 2 + (cols - centre) ** 2 <= radius * radius


CASES = {
    "disc 1793 px, 1 drag": (24.0, [[30.0, 28.0]], [[26.0, 36.0]]),
    "disc 2453 px, 4 drags": (
        28.0,
        [[20.0, 20.0], [20.0, 44.0], [44.0, 20.0], [44.5, 43.25]],
        [[16.0, 18.0], [18.0, 50.0], [48.0, 22.0], [40.0, 40.0]],
    ),
}


def warp_once(latents, mask, handles, targets):
    field = warpage_field(mask, handles, targets, validate=False)
    relocated, null = relocate(latents, mask, field, validate=False)
    return bnni(relocated, null, validate=False)


def time_case(device: torch.device, radius, handles, targets, repeats: int) -> tuple[int, float]:
    mask = disc_mask(radius).to(device)
    handles = torch.tensor(handles, device=device)
    targets = torch.tensor(targets, device=device)
    latents = torch.randn(1, 4, 64, 64, device=device)
    for _ in range(10):
        warp_once(latents, mask, handles, targets)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        warp_once(latents, mask, handles, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("error")
        try:
            warp_once(latents, mask, handles, targets)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return int(mask.sum()), statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    at_least(args.repeats, 1, "--repeats")
    device, _ = pick_device_and_dtype(args.device, "float32")
    if device.type == "cpu":
        torch.set_num_threads(1)
    print(f"device: {device}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    print("| case | mask pixels | median ms (target <= 1) |")
    print("|---|---:|---:|")
    for name, (radius, handles, targets) in CASES.items():
        pixels, median_ms = time_case(device, radius, handles, targets, args.repeats)
        print(f"| {name} | {pixels} | {median_ms:.3f} |")


if __name__ == "__main__":
    sys.exit(run_script(main, "bench_warpage.py"))
