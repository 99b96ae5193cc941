"""DragBench runner: data reading, results log, resume, failures, and the Accelerate split."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import IMAGE_SIZE, save_tiny_model, tiny_components, write_dragbench

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.cli import main
from fastdrag.apps.dragbench import (
    RESULTS_FILE,
    EditOptions,
    find_samples,
    load_sample,
    read_records,
    read_results,
    run_dragbench,
    split_points,
)


GOOD = {
    "animals/cat": [[10, 12], [16, 12]],
    "animals/dog": [[8, 8], [12, 10], [20, 20], [18, 24]],
    "landscape/hill": [[16, 16], [16, 10]],
    "landscape/lake": [[5, 20], [9, 20]],
}
BAD = {"human_head/face": [[10, 12], [40, 12]]}  # target outside the 32x32 image


def lines(out: Path) -> list[dict]:
    """Every record of the log (each starts on a fresh line, so blank lines sit between them)."""
    return read_records(out)


class CountingLoader:
    """``load_pipeline(device)`` for ``run_dragbench``: a tiny pipeline, counting loads."""

    def __init__(self):
        self.loads = 0

    def __call__(self, device):
        self.loads += 1
        return StableDiffusionFastDragPipeline(**tiny_components()).to(device)


def test_find_and_load_samples(tmp_path):
    write_dragbench(tmp_path, {**GOOD, **BAD})
    (tmp_path / "animals" / "not_a_sample").mkdir()
    samples = find_samples(tmp_path)
    assert [s.key for s in samples] == sorted([*GOOD, *BAD])
    assert samples[0].category == "animals"
    data = load_sample(next(s for s in samples if s.key == "animals/dog"))
    assert data.handles == [(8.0, 8.0), (20.0, 20.0)] and data.targets == [(12.0, 10.0), (18.0, 24.0)]
    assert data.mask.dtype == bool and data.mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and data.mask.sum() == 24 * 24
    assert data.prompt == "a photo of animals/dog" and data.image.size == (IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("points", [[[1, 2]], [[1, 2], [3, 4], [5, 6]], [[1, 2, 3], [4, 5, 6]]])
def test_split_points_rejects_malformed_lists(points):
    with pytest.raises(ValueError, match="`points` must alternate"):
        split_points(points)


def test_run_edits_every_sample_records_failures_and_goes_on(tmp_path):
    write_dragbench(tmp_path / "data", {**GOOD, **BAD})
    out = tmp_path / "out"
    summary = run_dragbench(tmp_path / "data", out, CountingLoader(), EditOptions(), progress=False)
    assert (summary.total, summary.skipped, summary.done, summary.failed) == (5, 0, 4, 1)
    records = {r["sample"]: r for r in lines(out)}
    assert set(records) == {*GOOD, *BAD}
    for key in GOOD:
        assert records[key]["status"] == "ok" and records[key]["category"] == key.split("/")[0]
        assert Image.open(out / key / "dragged_image.png").size == (IMAGE_SIZE, IMAGE_SIZE)
        assert set(records[key]["phases"]) == {"text", "encode", "inversion", "warp", "sampling", "decode"}
        assert records[key]["seconds"] >= sum(records[key]["phases"].values())
    failed = records["human_head/face"]
    assert failed["status"] == "error" and "`target_points` has points outside" in failed["error"]
    assert not (out / "human_head" / "face").exists()


def test_run_resumes_skipping_done_samples_and_retrying_failed_ones(tmp_path):
    write_dragbench(tmp_path / "data", {**GOOD, **BAD})
    out = tmp_path / "out"
    run_dragbench(tmp_path / "data", out, CountingLoader(), progress=False)
    first = (out / "animals" / "cat" / "dragged_image.png").stat().st_mtime_ns

    (out / "landscape" / "lake" / "dragged_image.png").unlink()  # as if lost before the crash
    loader = CountingLoader()
    summary = run_dragbench(tmp_path / "data", out, loader, progress=False)
    assert (summary.skipped, summary.done, summary.failed) == (3, 1, 1)
    counts = {}
    for record in lines(out):
        counts[record["sample"]] = counts.get(record["sample"], 0) + 1
    assert counts == {"animals/cat": 1, "animals/dog": 1, "landscape/hill": 1, "landscape/lake": 2, "human_head/face": 2}
    assert (out / "animals" / "cat" / "dragged_image.png").stat().st_mtime_ns == first

    # With the failing sample fixed in place there is nothing left after it: then the pipeline is not
    # even loaded. (Other data into the same folder is refused: tests/test_hostile_dragbench.py.)
    write_dragbench(tmp_path / "fixed", {"human_head/face": [[10, 12], [14, 12]]})
    os.replace(tmp_path / "fixed" / "human_head" / "face" / "meta_data.pkl",
               tmp_path / "data" / "human_head" / "face" / "meta_data.pkl")
    assert run_dragbench(tmp_path / "data", out, CountingLoader(), progress=False).done == 1
    idle = CountingLoader()
    summary = run_dragbench(tmp_path / "data", out, idle, progress=False)
    assert (summary.skipped, summary.done, idle.loads) == (5, 0, 0)


def test_read_results_keeps_the_last_record_and_ignores_a_torn_line(tmp_path):
    (tmp_path / RESULTS_FILE).write_text(
        '{"sample": "a/x", "status": "error"}\n{"sample": "a/x", "status": "ok", "image": "a/x/i.png"}\n{"sample": "a/y", "sta'
    )
    assert read_results(tmp_path) == {"a/x": {"sample": "a/x", "status": "ok", "image": "a/x/i.png"}}


def test_accelerate_launch_splits_samples_across_two_cpu_processes(tmp_path):
    many = {f"cat{i % 3}/s{i}": [[4 + i, 10], [8 + i, 12]] for i in range(7)}
    write_dragbench(tmp_path / "data", many)
    model = save_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        # Accelerate's own --cpu flag picks its single-process launcher unless MPI is set up; --multi_gpu
        # starts the processes with torchrun, and `--device cpu` makes them one gloo group on the CPU.
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "fastdrag", "dragbench", "run", "--data", str(tmp_path / "data"), "--model", model,
        "--out", str(out), "--device", "cpu", "--no-progress",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = lines(out)
    assert sorted(r["sample"] for r in records) == sorted(many)  # each exactly once: none twice, none lost
    assert all(r["status"] == "ok" for r in records)
    assert {r["process"] for r in records} == {0, 1}
    assert all((out / key / "dragged_image.png").is_file() for key in many)


def test_cli_run_reports_a_missing_data_folder(tmp_path, capsys):
    assert main(["dragbench", "run", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such DragBench folder" in capsys.readouterr().err


def test_cli_run_on_a_saved_model(tmp_path, capsys):
    write_dragbench(tmp_path / "data", GOOD)
    model = save_tiny_model(tmp_path / "model")
    argv = ["dragbench", "run", "--data", str(tmp_path / "data"), "--model", model, "--out", str(tmp_path / "o"),
            "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    assert "4 edited, 0 failed" in capsys.readouterr().out
    assert main(argv) == 0
    assert "4 already done" in capsys.readouterr().out
    assert np.asarray(Image.open(tmp_path / "o" / "animals" / "cat" / "dragged_image.png")).shape == (32, 32, 3)


def test_cli_run_caps_the_drags_of_a_sample_with_max_drags(tmp_path, capsys):
    write_dragbench(tmp_path / "data", {"animals/cat": GOOD["animals/cat"], "animals/dog": GOOD["animals/dog"]})
    model = save_tiny_model(tmp_path / "model")
    argv = ["dragbench", "run", "--data", str(tmp_path / "data"), "--model", model, "--out", str(tmp_path / "o"),
            "--device", "cpu", "--no-progress", "--max-drags", "1"]
    assert main(argv) == 1  # the dog has two drags: its sample fails, the cat is done
    assert "1 edited, 1 failed" in capsys.readouterr().out
    errors = [record["error"] for record in read_results(tmp_path / "o").values() if record.get("error")]
    assert len(errors) == 1 and "over the limit of 1 drags" in errors[0] and "--max-drags" in errors[0]
