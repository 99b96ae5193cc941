"""DragBench: read the data set, run the pipeline on every sample, and keep a resumable log.

Layout (DragDiffusion's): ``DATA/<category>/<sample>/`` with ``original_image.png``,
``user_drag.png`` and ``meta_data.pkl`` (a dict: ``prompt``; ``points``, a list of ``[x, y]``
alternating handle and target; ``mask``, an ``(H, W)`` array, nonzero where content may move).

The run writes ``OUT/<category>/<sample>/dragged_image.png`` and appends one JSON line per
attempt to ``OUT/results.jsonl``. A sample counts as done when its last line says ``"ok"`` and
its image exists and decodes, so an interrupted run picks up where it stopped and failed samples
are tried again. ``OUT/run_config.json`` records the options the folder was made with, and a run
with other options refuses to resume there. One run writes to a folder at a time (``OUT/.lock``).
Under ``accelerate launch`` the remaining samples are split across the processes
(``PartialState.split_between_processes``): none is done twice, none is lost.

What is trusted: nothing in DATA. ``meta_data.pkl`` is read with an unpickler that builds only
DragBench's types (dicts, lists, strings, numbers, numpy arrays); anything else fails that sample.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import io
import json
import os
import pickle
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import DEFAULT_STEPS, DEFAULT_STRENGTH
from .warpage import DEFAULT_FILL, DEFAULT_MODE

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "run_config.json"
LOCK_FILE = ".lock"
EDITED_FILE = "dragged_image.png"
PARTIAL_SUFFIX = ".partial.png"
META_FILE = "meta_data.pkl"
SAMPLE_FILES = ("original_image.png", META_FILE)


class RunRefused(Exception):
    """This run cannot write to the output folder (other options, or another run at work there)."""


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


# The globals a DragBench pickle may name: numpy's array and scalar rebuilders under numpy 1's and 2's
# module names, numpy's dtypes, and the bytes decoder protocol-2 pickles use for array data.
_PICKLE_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    ("numpy.dtypes", name)
    for name in ("BoolDType", "UInt8DType", "Int8DType", "UInt16DType", "Int16DType", "Int32DType", "Int64DType",
                 "Float16DType", "Float32DType", "Float64DType")
}


class DataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global, so a
    planted ``__reduce__`` cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"`{module}.{name}` is not allowed in DragBench data")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 on numpy.core
            return super().find_class(module, name)


def load_meta(path: Path) -> dict:
    """``meta_data.pkl`` through :class:`DataUnpickler`; a ``ValueError`` naming the file otherwise."""
    try:
        meta = DataUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise ValueError(f"{path} is not DragBench data: {error}") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a dict, got {type(meta).__name__}")
    return meta


def load_sample(sample: Sample) -> SampleData:
    """Read a sample. The image is returned as stored (the pipeline reads any mode by value)."""
    from PIL import Image

    meta = load_meta(sample.folder / META_FILE)
    handles, targets = split_points(meta["points"])
    prompt = meta.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"`prompt` in meta_data.pkl must be a string, got {type(prompt).__name__}")
    image = Image.open(sample.folder / "original_image.png")
    image.load()
    mask = np.asarray(meta["mask"]) != 0
    return SampleData(image=image, prompt=prompt or "", handles=handles, targets=targets, mask=mask)


def write_sample(folder: Path, image, points: Iterable, mask: np.ndarray, prompt: str = "") -> None:
    """Write one sample into the existing ``folder`` in DragBench's layout: ``image`` (PIL, saved
    as ``original_image.png`` and ``user_drag.png``), ``points`` alternating handle and target
    ``[x, y]``, ``mask`` ``(H, W)``, nonzero where content may move."""
    image.save(folder / "original_image.png")
    image.save(folder / "user_drag.png")
    with open(folder / META_FILE, "wb") as f:
        pickle.dump({"prompt": prompt, "points": [list(point) for point in points],
                     "mask": np.asarray(mask).astype(np.uint8)}, f)


# --------------------------------------------------------------------------------------------
# The results log
# --------------------------------------------------------------------------------------------


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line with O_APPEND writes, so processes sharing the file never interleave.

    The line starts with a newline: if an earlier write was cut short (a full disk, a crash), its
    torn line ends there instead of swallowing this record. A short write is continued; a write
    that fails raises, and the torn line it leaves is skipped by readers.
    """
    data = ("\n" + json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            written = os.write(fd, data)
            if written <= 0:
                raise OSError(errno.ENOSPC, f"could not append to {path}")
            data = data[written:]
    finally:
        os.close(fd)


def read_records(out: str | os.PathLike) -> list[dict]:
    """Every record of ``OUT/results.jsonl``, in order. Torn or foreign lines are skipped with one
    warning that counts them."""
    path = Path(out) / RESULTS_FILE
    records, skipped = [], 0
    if path.is_file():
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("sample"), str):
                skipped += 1
                continue
            records.append(record)
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} unreadable line(s) (torn by a crash or a full disk, or foreign)")
    return records


def read_results(out: str | os.PathLike) -> dict[str, dict]:
    """The last record of each sample in ``OUT/results.jsonl``."""
    return {record["sample"]: record for record in read_records(out)}


def image_decodes(path: Path) -> bool:
    """Whether the file at ``path`` is an image PIL can decode whole."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def is_done(record: dict | None, out: Path) -> bool:
    """The sample's last record says ok, and its image is there and decodes."""
    return (
        record is not None
        and record.get("status") == "ok"
        and isinstance(record.get("image"), str)
        and image_decodes(out / record["image"])
    )


def save_atomically(image, path: Path) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written image, and a
    failed write leaves no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        image.save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_partial_images(out: Path) -> int:
    """Delete the temporary images crashed runs left behind; returns how many."""
    stray = list(out.glob(f"*/*/.*{PARTIAL_SUFFIX}"))
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


class FolderLock:
    """One writer per output folder: an exclusive ``flock`` on ``OUT/.lock``, released by the
    kernel when the process ends, so a crashed run never leaves it stuck."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunRefused(f"another run (process {holder}) is writing to {self.path.parent}; wait for it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def stamp_config(out: Path, config: dict) -> None:
    """Record ``config`` in ``OUT/run_config.json``, or check it against the one recorded there.

    Raises :class:`RunRefused` naming each option that differs.
    """
    path = out / CONFIG_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise RunRefused(f"{path} is not readable JSON ({error}); remove it to start over") from error
        differing = [
            f"{key}: {recorded.get(key)!r} there, {config.get(key)!r} now"
            for key in sorted(set(recorded) | set(config)) if recorded.get(key) != config.get(key)
        ]
        if differing:
            raise RunRefused(
                f"{out} holds a run with other options ({'; '.join(differing)}): use another --out, or the same options"
            )
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


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
    mode: str = DEFAULT_MODE


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
            mode=options.mode,
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


def process_device(requested: str, local_index: int) -> str:
    """The device one process of a launch edits on. ``cpu`` stays; ``auto`` and ``cuda`` mean the
    process's own GPU, ``cuda:<local index mod GPU count>`` (more processes than GPUs share them),
    or, for ``auto`` without a GPU, the CPU; anything else (``cuda:1``, ``mps``) is kept."""
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_index % torch.cuda.device_count()}"
    return "cpu" if requested == "auto" else requested


def run_dragbench(
    data: str | os.PathLike,
    out: str | os.PathLike,
    load_pipeline: Callable[[Any], Any],
    options: EditOptions | None = None,
    progress: bool = True,
    device: str = "auto",
    config: dict | None = None,
) -> RunSummary:
    """Edit every DragBench sample not yet done in ``out``, split across Accelerate's processes.

    ``load_pipeline(device)`` returns the pipeline on that device; it is called once per process,
    and only if that process has samples to do, with the process's device (:func:`process_device`
    of ``device``). ``config`` says what else made the edits (model, dtype, ...): with the
    options (the mode among them) and the project version it is stamped in ``OUT/run_config.json``, and a
    folder stamped otherwise is refused (:class:`RunRefused`), as is a folder another run holds.
    Returns this process's counts.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from . import __version__

    # The processes only coordinate (one barrier, the split), so they form a CPU (gloo) group
    # whatever devices they edit on: a GPU group would need a GPU per process (two processes on one
    # GPU break NCCL), and without cpu=True, processes launched on a machine with no GPU would each
    # see themselves alone and run every sample.
    state = PartialState(cpu=True)
    options = options or EditOptions()
    out = Path(out)
    samples = find_samples(data)
    stamp = {**(config or {}), **dataclasses.asdict(options), "version": __version__}
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    # The main process holds the folder for the whole launch; its other processes write under it.
    with FolderLock(out) if state.is_main_process else contextlib.nullcontext():
        if state.is_main_process:
            stamp_config(out, stamp)
            remove_partial_images(out)
        latest = read_results(out)
        todo = [sample for sample in samples if not is_done(latest.get(sample.key), out)]
        # Every process must read the log before any process appends to it, or the splits differ.
        state.wait_for_everyone()

        done = failed = 0
        with state.split_between_processes(todo) as mine:
            if mine:
                pipe = load_pipeline(process_device(device, state.local_process_index))
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
