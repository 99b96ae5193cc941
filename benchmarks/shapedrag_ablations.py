"""The paper's ablations on ShapeDrag, measured with the embedded shapes model: one table.

Every row edits the same seeded held-out samples (``fastdrag.apps.shapes.random_drag_case``) and is
scored against their ground truth (``fastdrag.apps.shapes.score_edit``). Rows: FastDrag's defaults; the
same one-step warp applied to the clean latent and decoded, with no inversion or sampling (what the
VAE and the warp do alone); the unedited image; the paper's ablations (``fill``, K/V replay off,
inversion strength, steps); and ``mode="move"``. Then the round trip (a zero-length drag) and
the seed-to-seed spread of the defaults and of K/V replay off over further sample seeds.

    python benchmarks/shapedrag_ablations.py --model examples/shapes-model          # CPU, minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from fastdrag.apps.cli import UsageError, at_least, run_script
from fastdrag.apps.shapes import (
    SCORE_COLUMNS,
    SHAPEDRAG_COUNT,
    SHAPEDRAG_SEED,
    DragCase,
    psnr,
    random_drag_case,
    render,
    score_drag,
    summarise,
    table,
    to_uint8,
    warp_and_decode,
)


BASELINE = "warp the clean latent, decode (no diffusion)"
UNEDITED = "unedited image"
DEFAULTS = "FastDrag defaults"
NO_REPLAY = "K/V replay off"
ROWS: dict[str, dict] = {
    DEFAULTS: {},
    BASELINE: {},
    UNEDITED: {},
    "fill = zeros": {"fill": "zeros"},
    "fill = original": {"fill": "original"},
    "fill = noise": {"fill": "noise"},
    NO_REPLAY: {"preserve_consistency": False},
    "inversion strength 0.5": {"inversion_strength": 0.5},
    "inversion strength 0.9": {"inversion_strength": 0.9},
    "20 steps": {"num_inference_steps": 20},
    'mode = "move"': {"mode": "move"},
}


def held_out_cases(seed: int, count: int) -> list[DragCase]:
    """``count`` ShapeDrag samples of ``seed``."""
    rng = np.random.default_rng(seed)
    return [random_drag_case(rng) for _ in range(count)]


def original_image(case: DragCase) -> Image.Image:
    return Image.fromarray(to_uint8(render(case.scene)))


def edit(pipe, row: str, case: DragCase, seed: int):
    """One edit of ``row``'s kind: a PIL image."""
    image = original_image(case)
    if row == UNEDITED:
        return image
    if row == BASELINE:
        return warp_and_decode(pipe, image, case.mask, [case.handle], [case.target])
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(image, handle_points=[case.handle], target_points=[case.target], mask=case.mask,
                generator=generator, **ROWS[row]).images[0]


def score_row(pipe, row: str, cases: list[DragCase], progress: bool) -> tuple[dict[str, float], float]:
    """The mean scores of ``row`` over ``cases``, and its seconds per edit."""
    scores, start = [], time.perf_counter()
    for index, case in enumerate(tqdm(cases, desc=row, disable=not progress, leave=False)):
        scores.append(score_drag(edit(pipe, row, case, seed=index), case))
    return summarise(scores), (time.perf_counter() - start) / len(cases)


def round_trip(pipe, cases: list[DragCase]) -> dict[str, float]:
    """Mean PSNR (dB) to the original of a zero-length drag: through the whole pipeline, and
    through the VAE alone (the warp of a zero drag is the identity)."""
    full, vae = [], []
    for case in cases:
        image = original_image(case)
        original = np.asarray(image, dtype=np.float32) / 255
        edited = pipe(image, handle_points=[case.handle], target_points=[case.handle], mask=case.mask).images[0]
        full.append(psnr(np.asarray(edited, dtype=np.float32) / 255, original))
        decoded = warp_and_decode(pipe, image, case.mask, [case.handle], [case.handle])
        vae.append(psnr(np.asarray(decoded, dtype=np.float32) / 255, original))
    return {"pipeline": float(np.mean(full)), "vae": float(np.mean(vae))}


def main(argv=None) -> None:
    from fastdrag import StableDiffusionFastDragPipeline

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="examples/shapes-model")
    parser.add_argument("--count", type=int, default=SHAPEDRAG_COUNT, help="samples per seed")
    parser.add_argument("--seed", type=int, default=SHAPEDRAG_SEED, help="the samples of the main table")
    parser.add_argument("--spread-seeds", type=int, nargs="*", default=[2, 3],
                        help="further sample seeds for the seed-to-seed spread")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help="which rows (default: all)")
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    at_least(args.count, 1, "--count")
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: no such folder")

    pipe = StableDiffusionFastDragPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    progress = not args.no_progress
    cases = held_out_cases(args.seed, args.count)

    results, seconds = {}, {}
    for row in args.rows:
        results[row], seconds[row] = score_row(pipe, row, cases, progress)
    trip = round_trip(pipe, cases)

    # The seed-to-seed spread: the same two rows over other sample sets.
    per_seed = {DEFAULTS: [], NO_REPLAY: []}
    for seed in [args.seed, *args.spread_seeds]:
        seed_cases = cases if seed == args.seed else held_out_cases(seed, args.count)
        for row in per_seed:
            summary = results[row] if seed == args.seed and row in results else score_row(pipe, row, seed_cases, progress)[0]
            per_seed[row].append(summary)

    command = "python benchmarks/shapedrag_ablations.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"ShapeDrag: {args.count} samples of seed {args.seed}, model {args.model}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}\n{command}\n")
    print(table(results, "s / edit", {row: f"{seconds[row]:.2f}" for row in results}))
    print("\n" + "\n".join(f"- {column}: {meaning}" for column, meaning in SCORE_COLUMNS.items()))
    print(f"\nRound trip (zero-length drag), mean PSNR to the original: pipeline {trip['pipeline']:.2f} dB, "
          f"VAE alone {trip['vae']:.2f} dB")
    seeds = [args.seed, *args.spread_seeds]
    print(f"\nSeed-to-seed spread ({len(seeds)} sample seeds {seeds}, {args.count} samples each): mean (std of the seed means)")
    print("| run | " + " | ".join(SCORE_COLUMNS) + " |\n|" + "---|" * (len(SCORE_COLUMNS) + 1))
    for row, summaries in per_seed.items():
        cells = []
        for column in SCORE_COLUMNS:
            values = [summary[column] for summary in summaries]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.3f} ({spread:.3f})")
        print(f"| {row} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "rows": results, "seconds": seconds, "round_trip": trip,
                       "per_seed": {row: dict(zip(map(str, seeds), s)) for row, s in per_seed.items()}}, f, indent=1)


if __name__ == "__main__":
    sys.exit(run_script(main, "shapedrag_ablations.py"))
