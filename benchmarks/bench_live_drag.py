"""Live drag in the editor, as a person feels it: the real app in headless Chromium, real mouse events.

Each of ``--drags`` drags presses on the striped disc of ``examples/drag_me.png``, moves the mouse
to its target in ``--moves`` steps ``--move-ms`` apart (16 ms: a 60 Hz mouse), and releases.
Printed, median and 95th percentile over the drags:

- **mouse moves** the page received per second, and **new pixel positions** per second among them
  (the page sends the points only when the pointer's image pixel changes): the preview's ceiling;
- **preview frames per second** while the button is held: new pixel previews the page showed;
- **re-drags completed per second** while the button is held: model edits finished on the server;
- **release to final result**: from the button's release to the page showing the model's edit of
  the final position (both read from the page's own clock).

``--model`` is the embedded shapes model by default (``examples/shapes-model``, 64 x 64), or
``random-sd15`` for SD 1.5's full-size shapes with random weights (nothing is downloaded: a random
UNet costs what a trained one does), or a model folder. The image is scaled up (nearest) to
``--side`` when larger than 64, and the drag with it.

    python benchmarks/bench_live_drag.py                                 # shapes model, this CPU
    python benchmarks/bench_live_drag.py --model random-sd15 --side 512 --drags 3 --moves 20

Needs the ``[app]`` extra, Playwright and a Chromium (``FASTDRAG_CHROMIUM``, default
``/usr/bin/chromium``).
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastdrag.apps.browser import (
    CHROMIUM_FLAGS,
    RECORDER_JS,
    pixels_visited,
    press_drag_release,
    serve,
    upload_and_wait_for_inversion,
    wait_for_label,
)
from fastdrag.apps.cli import UsageError, run_script
from fastdrag.apps.shapes import EXAMPLE_CASE


ROOT = Path(__file__).resolve().parent.parent
SHAPES_MODEL = ROOT / "examples" / "shapes-model"
IMAGE = ROOT / "examples" / "drag_me.png"  # 64 x 64
CHROMIUM = os.environ.get("FASTDRAG_CHROMIUM", "/usr/bin/chromium")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHAPES_MODEL), help="a model folder, or random-sd15")
    parser.add_argument("--side", type=int, default=64, help="the image's side in pixels, 64 to 2048, a multiple of 8")
    parser.add_argument("--drags", type=int, default=10, help="1 to 1000")
    parser.add_argument("--moves", type=int, default=30, help="mouse moves a drag, 2 to 1000")
    parser.add_argument("--move-ms", type=int, default=16, help="milliseconds between moves, 1 to 10000")
    parser.add_argument("--live-off", action="store_true",
                        help="uncheck live edit: the preview's round trip alone, no model runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def load_pipeline(model: str):
    if model == "random-sd15":
        from fastdrag.apps.testing import random_sd15_pipeline

        return random_sd15_pipeline(torch.float32)
    from fastdrag.apps.cli import pipeline_class_for

    return pipeline_class_for(model).from_pretrained(model)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def one_drag(page, live, handle, target, side: int, moves: int, move_ms: int, live_on: bool = True) -> dict:
    """Drag from ``handle`` to ``target`` (image ``(x, y)``) and wait for the final result (with
    live edit off, for the page to take the drag)."""
    page.click("#clear")
    page.wait_for_function("/0 drag/.test(document.querySelector('#info').innerText)")
    page.evaluate(RECORDER_JS)
    runs_before = len(live.jobs.runs)
    clock = {}
    press_drag_release(page, handle, target, (side, side), moves=moves, pause_ms=move_ms,
                       on_move=lambda i: clock.setdefault("press", time.perf_counter()) if i == 1 else None)
    clock["release"] = time.perf_counter()
    if live_on:
        wait_for_label(page, f"-> {target} in", timeout_ms=600_000)
    else:
        page.wait_for_function("/1 drag/.test(document.querySelector('#info').innerText)")
    log = page.evaluate("window.__fastdrag")
    held_ms = log["released"] - log["pressed"]
    shown = [t for t, text in log["labels"] if f"-> {target} in" in text][-1] if live_on else float("nan")
    runs = list(live.jobs.runs)[runs_before:]
    held = clock["release"] - clock["press"]
    return {
        "moves_per_s": sum(log["pressed"] <= t <= log["released"] for t in log["moves"]) / (held_ms / 1000),
        "positions_per_s": pixels_visited(handle, target, moves) / (held_ms / 1000),
        "preview_fps": sum(log["pressed"] <= t <= log["released"] for t, _ in log["previews"]) / (held_ms / 1000),
        "redrags_per_s": sum(clock["press"] <= run.ended <= clock["release"] for run in runs) / held,
        "release_to_final_s": (shown - log["released"]) / 1000,
        "redrag_s": [run.ended - run.started for run in runs],
        "held_s": held_ms / 1000,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    for option, low, high in (("side", 64, 2048), ("drags", 1, 1000), ("moves", 2, 1000), ("move_ms", 1, 10_000)):
        value = getattr(args, option)
        if not low <= value <= high:
            raise UsageError(f"--{option.replace('_', '-')} must be from {low} to {high}, got {value}")
    if args.side % 8:
        raise UsageError(f"--side must be a multiple of 8, got {args.side}")
    if args.model != "random-sd15" and not Path(args.model).is_dir():
        raise UsageError(f"--model must be a model folder or random-sd15, got {args.model!r}")
    from playwright.sync_api import sync_playwright

    from fastdrag.apps.app import LiveDrag, PipelineHolder

    scale = args.side / 64
    handle = tuple(round(v * scale) for v in EXAMPLE_CASE.handle)
    targets = [(round(EXAMPLE_CASE.target[0] * scale), round((EXAMPLE_CASE.target[1] + i % 3 - 1) * scale))
               for i in range(args.drags)]  # a slightly different target each time: no result is reused
    holder = PipelineHolder(lambda: load_pipeline(args.model))
    live = LiveDrag(holder)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.png"
        Image.open(IMAGE).convert("RGB").resize((args.side, args.side), Image.NEAREST).save(image)
        with serve(holder, max_side=args.side, live=live) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1250})
                page.goto(url)
                if args.live_off:
                    page.wait_for_selector("#editor canvas")
                    page.locator("#live-on input").uncheck()
                    page.wait_for_function("/Live edit is off/.test(document.querySelector('#info').innerText)")
                upload_and_wait_for_inversion(page, image, timeout_ms=1_200_000,
                                              ready="Live edit is off" if args.live_off else "Inversion ready")
                drags = [one_drag(page, live, handle, target, args.side, args.moves, args.move_ms, not args.live_off)
                         for target in targets]
            finally:
                browser.close()
                live.close()
    report(args, drags, live.jobs.dropped)


def report(args, drags: list[dict], dropped: int) -> None:
    figures = {}
    print(f"`python {' '.join(shlex.quote(a) for a in sys.argv)}`\n")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} on the CPU, {torch.get_num_threads()} threads; headless Chromium")
    model = os.path.relpath(args.model, ROOT) if Path(args.model).resolve().is_relative_to(ROOT) else args.model
    print(f"- model: {model}; image {args.side} x {args.side}; 10 steps, strength 0.7 (7 UNet calls a re-drag)")
    print(f"- {args.drags} drags of {args.moves} mouse moves {args.move_ms} ms apart "
          f"(held {statistics.median(d['held_s'] for d in drags):.2f} s each, median)\n")
    print("| | median | 95th percentile |")
    print("|---|---|---|")
    for key, name in (("moves_per_s", "mouse moves the page received per second"),
                      ("positions_per_s", "new pixel positions per second (what the page sends)"),
                      ("preview_fps", "preview frames per second while dragging"),
                      ("redrags_per_s", "re-drags completed per second while dragging"),
                      ("release_to_final_s", "release to final result, seconds")):
        values = [d[key] for d in drags]
        figures[key] = {"median": statistics.median(values), "p95": percentile(values, 95)}
        print(f"| {name} | {figures[key]['median']:.2f} | {figures[key]['p95']:.2f} |")
    redrags = [s for d in drags for s in d["redrag_s"]]
    if not redrags:
        print("\nLive edit off: no re-drag ran.")
        return
    figures["redrag_s"] = {"median": statistics.median(redrags), "p95": percentile(redrags, 95)}
    print(f"| one re-drag on the server, seconds ({len(redrags)} run) | {figures['redrag_s']['median']:.3f} | "
          f"{figures['redrag_s']['p95']:.3f} |")
    print(f"\n{dropped} stale re-drag requests were dropped (replaced before they started).")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "figures": figures,
                                         "dropped": dropped, "drags": drags}, indent=1))


if __name__ == "__main__":
    sys.exit(run_script(main, "bench_live_drag.py"))
