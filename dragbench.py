"""DragBench: read the data set, run the pipeline on every sample, and keep a resumable log.

Layout (DragDiffusion's): ``DATA/<category>/<sample>/`` with ``original_image.png``,
``user_drag.png`` and ``meta_data.pkl`` (a dict: ``prompt``; ``points``, a list of ``[x, y]``
alternating handle and target; ``mask``, an ``(H, W)`` array, nonzero where content may move).

The run writes ``OUT/<category>/<sample>/dragged_image.png`` and appends one JSON line per
attempt to ``OUT/results.jsonl``. A sample counts as done when its last line says ``"ok"`` and
its image exists, so an interrupted run picks up where it stopped and failed samples are tried
again. Under ``accelerate launch`` the remaining samples are split across the processes
(``PartialState.split_between_processes``): none is done twice, none is lost.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import DEFAULT_STEPS, DEFAULT_STRENGTH
from .warpage import DEFAULT_FILL

RESULTS_FILE = "results.jsonl"
EDITED_FILE = "dragged_image.png"
SAMPLE_FILES = ("original_image.png", "meta_data.pkl")


@dataclass(frozen=True)
class Sample:
    """One DragBench sample. ``key`` is ``"<category>/<sample>"``, the same in DATA and OUT."""

    key: str
    folder: Path

    @property
    def category(self) -> str:
        return self.key.split("/")[0]


@dataclass
class SampleData:
    """A sample's contents. Points are image pixels ``(x, y)``; ``mask`` is ``(H, W)`` bool."""

    image: Any  # PIL.Image.Image, RGB
    prompt: str
    handles: list[tuple[float, float]]
    targets: list[tuple[float, float]]
    mask: np.ndarray


def find_samples(data: str | os.PathLike) -> list[Sample]:
    """Every ``<category>/<sample>`` folder holding the sample files, sorted by key."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"no such DragBench folder: {root}")
    samples = [
        Sample(key=f"{folder.parent.name}/{folder.name}", folder=folder)
        for folder in root.glob("*/*")
        if folder.is_dir() and all((folder / name).is_file() for name in SAMPLE_FILES)
    ]
    return sorted(samples, key=lambda sample: sample.key)


def split_points(points: Iterable) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """DragBench's alternating ``[x, y]`` list -> ``(handles, targets)``, each a list of ``(x, y)``."""
    pairs = [tuple(float(v) for v in point) for point in points]
    if len(pairs) < 2 or len(pairs) % 2 or any(len(p) != 2 for p in pairs):
        raise ValueError(f"`points` must alternate handle and target [x, y] pairs, got {len(pairs)} points")
    return pairs[0::2], pairs[1::2]


def load_sample(sample: Sample) -> SampleData:
    """Read a sample. The image is returned as stored (the pipeline reads any mode by value)."""
    from PIL import Image

    with open(sample.folder / "meta_data.pkl", "rb") as f:
        meta = pickle.load(f)
    handles, targets = split_points(meta["points"])
    prompt = meta.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"`prompt` in meta_data.pkl must be a string, got {type(prompt).__name__}")
    image = Image.open(sample.folder / "original_image.png")
    image.load()
    mask = np.asarray(meta["mask"]) != 0
    return SampleData(image=image, prompt=prompt or "", handles=handles, targets=targets, mask=mask)


# --------------------------------------------------------------------------------------------
# The results log
# --------------------------------------------------------------------------------------------


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line with a single O_APPEND write, so processes sharing the file never
    interleave within a line."""
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_results(out: str | os.PathLike) -> dict[str, dict]:
    """The last record of each sample in ``OUT/results.jsonl`` (a torn last line is ignored)."""
    path = Path(out) / RESULTS_FILE
    latest: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            latest[record["sample"]] = record
    return latest


def is_done(record: dict | None, out: Path) -> bool:
    return record is not None and record.get("status") == "ok" and (out / record["image"]).is_file()


def save_atomically(image, path: Path) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    image.save(partial)
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class EditOptions:
    """Pipeline arguments shared by every sample (the prompt comes from the sample)."""

    num_inference_steps: int = DEFAULT_STEPS
    inversion_strength: float = DEFAULT_STRENGTH
    fill: str = DEFAULT_FILL
    preserve_consistency: bool = True
    seed: int | None = None


def edit_sample(pipe, data: SampleData, options: EditOptions) -> tuple[Any, dict[str, float]]:
    """Run the pipeline on one sample: ``(edited PIL image, seconds per phase)``."""
    import torch

    generator = torch.Generator("cpu").manual_seed(options.seed) if options.seed is not None else None
    with pipe.timing_phases() as times:
        image = pipe(
            data.image,
            handle_points=data.handles,
            target_points=data.targets,
            mask=data.mask,
            prompt=data.prompt,
            num_inference_steps=options.num_inference_steps,
            inversion_strength=options.inversion_strength,
            fill=options.fill,
            preserve_consistency=options.preserve_consistency,
            generator=generator,
        ).images[0]
    return image, dict(times)


def run_sample(pipe, sample: Sample, out: Path, options: EditOptions, process: int) -> dict:
    """Edit one sample and save it; any exception becomes an ``"error"`` record, never a crash."""
    record: dict[str, Any] = {"sample": sample.key, "category": sample.category, "process": process}
    start = time.perf_counter()
    try:
        image, times = edit_sample(pipe, load_sample(sample), options)
        relative = f"{sample.key}/{EDITED_FILE}"
        save_atomically(image, out / relative)
        record.update(status="ok", image=relative, seconds=time.perf_counter() - start, phases=times)
    except Exception as error:  # noqa: BLE001 - one bad sample must not end a 205-sample run
        record.update(
            status="error",
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(limit=4),
            seconds=time.perf_counter() - start,
        )
    return record


@dataclass
class RunSummary:
    total: int
    skipped: int
    done: int
    failed: int


def run_dragbench(
    data: str | os.PathLike,
    out: str | os.PathLike,
    load_pipeline: Callable[[Any], Any],
    options: EditOptions | None = None,
    progress: bool = True,
    cpu: bool | None = None,
) -> RunSummary:
    """Edit every DragBench sample not yet done in ``out``, split across Accelerate's processes.

    ``load_pipeline(device)`` returns the pipeline on that device; it is called once per process,
    and only if that process has samples to do. ``cpu`` forces the CPU; by default it is used
    when no accelerator is. Returns this process's counts.
    """
    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    # Without cpu=True, Accelerate treats processes launched on a machine with no GPU as
    # independent single processes, and each would run every sample.
    state = PartialState(cpu=not torch.accelerator.is_available() if cpu is None else cpu)
    options = options or EditOptions()
    out = Path(out)
    samples = find_samples(data)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    latest = read_results(out)
    todo = [sample for sample in samples if not is_done(latest.get(sample.key), out)]
    # Every process must read the log before any process appends to it, or the splits differ.
    state.wait_for_everyone()

    done = failed = 0
    with state.split_between_processes(todo) as mine:
        if mine:
            pipe = load_pipeline(state.device)
            pipe.set_progress_bar_config(disable=True)
            bar = tqdm(mine, desc=f"DragBench [{state.process_index}]", disable=not progress,
                       position=state.process_index)
            for sample in bar:
                record = run_sample(pipe, sample, out, options, state.process_index)
                append_line(out / RESULTS_FILE, record)
                done += record["status"] == "ok"
                failed += record["status"] != "ok"
                bar.set_postfix(failed=failed)
    state.wait_for_everyone()
    return RunSummary(total=len(samples), skipped=len(samples) - len(todo), done=done, failed=failed)
