"""Runs that lose nothing and trust no file: DragBench data and logs, crashes and full disks, one
writer per folder, threads sharing a pipeline, the editor under concurrency, and a command line that
fails fast, in one line."""

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import never_load, save_tiny_model, tiny_components, tiny_image, write_dragbench

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps import dragbench
from fastdrag.apps.app import InversionCache, PipelineHolder, Session, add_point, build_app, edit_session
from fastdrag.apps.cli import main
from fastdrag.apps.dragbench import (
    RESULTS_FILE,
    FolderLock,
    RunRefused,
    load_meta,
    read_records,
    read_results,
    run_dragbench,
)
from fastdrag.apps.metrics import evaluate
from fastdrag.apps.options import EditOptions


SAMPLES = {f"cat{i % 2}/s{i}": [[8 + i, 10], [12 + i, 12]] for i in range(6)}


class Loader:
    def __call__(self, device):
        return StableDiffusionFastDragPipeline(**tiny_components()).to(device)


def ok_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in read_records(out):
        if record["status"] == "ok":
            counts[record["sample"]] = counts.get(record["sample"], 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# DragBench files are data
# --------------------------------------------------------------------------------------------


class Planted:
    """A pickle that, unpickled by ``pickle.load``, creates a file: what a hostile sample could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_pickle_does_not_run_and_fails_only_its_sample(tmp_path):
    write_dragbench(tmp_path / "data", SAMPLES)
    marker = tmp_path / "pwned"
    planted = tmp_path / "data" / "cat0" / "s0" / "meta_data.pkl"
    planted.write_bytes(pickle.dumps({"prompt": Planted(marker), "points": [[1, 1], [2, 2]], "mask": np.ones((2, 2))}))
    summary = run_dragbench(tmp_path / "data", tmp_path / "out", Loader(), progress=False)
    assert not marker.exists()
    assert (summary.done, summary.failed) == (5, 1)
    failed = read_results(tmp_path / "out")["cat0/s0"]
    assert failed["status"] == "error" and "meta_data.pkl is not DragBench data" in failed["error"]
    assert "is not allowed" in failed["error"]


@pytest.mark.parametrize(
    "protocol, numpy_one",
    # Pickles from numpy 1 name numpy.core; renaming bytes is only safe in unframed protocols (< 4).
    [(2, False), (4, False), (5, False), (2, True), (3, True)],
)
def test_real_dragbench_pickles_load(tmp_path, protocol, numpy_one):
    meta = {"prompt": "a photo of a cat", "points": [[10, 12], [16, 12]], "mask": np.eye(4, dtype=np.uint8) * 255}
    data = pickle.dumps(meta, protocol=protocol)
    if numpy_one:  # DragBench was pickled with numpy 1, whose arrays name numpy.core
        for name in ("multiarray", "numeric"):
            new, old = f"numpy.core.{name}".encode(), f"numpy._core.{name}".encode()
            data = data.replace(bytes([len(old)]) + old, bytes([len(new)]) + new).replace(old, new)
        assert b"numpy._core" not in data
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(data)
    loaded = load_meta(path)
    assert loaded["prompt"] == meta["prompt"] and loaded["points"] == meta["points"]
    assert np.array_equal(loaded["mask"], meta["mask"]) and loaded["mask"].dtype == np.uint8


def test_a_pickle_that_is_not_a_dict_is_refused(tmp_path):
    path = tmp_path / "meta_data.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="must hold a dict"):
        load_meta(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="is not DragBench data"):
        load_meta(path)


# --------------------------------------------------------------------------------------------
# Resuming: the same options only, nothing lost, nothing twice
# --------------------------------------------------------------------------------------------


def dragbench_argv(tmp_path, *extra) -> list[str]:
    return ["dragbench", "run", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"),
            "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress", *extra]


@pytest.fixture
def bench(tmp_path):
    write_dragbench(tmp_path / "data", SAMPLES)
    save_tiny_model(tmp_path / "model")
    return tmp_path


def test_resuming_with_other_options_exits_2_naming_them(bench, capsys):
    assert main(dragbench_argv(bench, "--steps", "10")) == 0
    stamp = json.loads((bench / "out" / "run_config.json").read_text())
    assert stamp["num_inference_steps"] == 10 and stamp["mode"] == "drag" and stamp["dtype"] == "float32"
    capsys.readouterr()
    assert main(dragbench_argv(bench, "--steps", "20", "--fill", "zeros")) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("fastdrag: error: ")
    assert "num_inference_steps: 10 there, 20 now" in error and "fill: 'bnni' there, 'zeros' now" in error
    assert main(dragbench_argv(bench, "--steps", "10")) == 0  # the same options resume
    assert "6 already done" in capsys.readouterr().out


def test_a_killed_run_resumes_losing_nothing_and_duplicating_nothing(bench):
    command = [sys.executable, "-m", "fastdrag", *dragbench_argv(bench)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and sum(ok_counts(bench / "out").values()) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = ok_counts(bench / "out")
    assert 2 <= sum(before.values()) < len(SAMPLES)

    assert main(dragbench_argv(bench)) == 0
    assert ok_counts(bench / "out") == {key: 1 for key in SAMPLES}
    assert all(dragbench.image_decodes(bench / "out" / key / "dragged_image.png") for key in SAMPLES)
    assert not list((bench / "out").glob("*/*/.*.partial.png"))


def test_a_full_disk_leaves_the_log_readable_and_the_next_run_completes(bench, monkeypatch):
    real_write = os.write
    appends = []

    def full_disk(fd, data):
        if data.startswith(b"\n{") and len(appends) == 2:  # the third record: half of it, then no space
            appends.append("torn")
            real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        if data.startswith(b"\n{"):
            appends.append("ok")
        return real_write(fd, data)

    monkeypatch.setattr(dragbench.os, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        run_dragbench(bench / "data", bench / "out", Loader(), progress=False)
    monkeypatch.setattr(dragbench.os, "write", real_write)

    with pytest.warns(UserWarning, match="skipped 1 unreadable line"):
        summary = run_dragbench(bench / "data", bench / "out", Loader(), progress=False)
    assert summary.failed == 0 and summary.skipped == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ok_counts(bench / "out") == {key: 1 for key in SAMPLES}


def test_a_short_write_is_continued_not_torn(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(dragbench.os, "write", lambda fd, data: real_write(fd, data[:7]))
    for i in range(3):
        dragbench.append_line(tmp_path / RESULTS_FILE, {"sample": f"a/{i}", "status": "ok"})
    assert [r["sample"] for r in read_records(tmp_path)] == ["a/0", "a/1", "a/2"]


def test_foreign_and_undecodable_lines_are_skipped(tmp_path):
    (tmp_path / RESULTS_FILE).write_bytes(b'[1, 2]\n\xff\xfe\n"text"\n{"no": "sample"}\n{"sample": "a/b", "status": "ok"}\n')
    with pytest.warns(UserWarning, match="skipped 4 unreadable line"):
        assert list(read_results(tmp_path)) == ["a/b"]


def test_a_corrupt_edited_image_is_redone_by_run_and_reported_by_eval(bench):
    out = bench / "out"
    run_dragbench(bench / "data", out, Loader(), progress=False)
    (out / "cat1" / "s1" / "dragged_image.png").write_bytes(b"")
    (out / "cat0" / "s2" / "dragged_image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))

    class Features:
        def __call__(self, image):
            return torch.zeros(1, 2, *image.shape[-2:])

    report = evaluate(bench / "data", out, Features(), lambda a, b: torch.zeros(1), progress=False)
    assert [p["sample"] for p in report["problems"]] == ["cat0/s2", "cat1/s1"]
    assert report["overall"]["samples"] == 4 and report["overall"]["missing"] == 2

    summary = run_dragbench(bench / "data", out, Loader(), progress=False)
    assert (summary.skipped, summary.done) == (4, 2)
    assert dragbench.image_decodes(out / "cat1" / "s1" / "dragged_image.png")


def test_stray_temporary_images_are_removed(bench):
    run_dragbench(bench / "data", bench / "out", Loader(), progress=False)
    stray = bench / "out" / "cat0" / "s0" / ".dragged_image.png.999.partial.png"
    stray.write_bytes(b"")
    run_dragbench(bench / "data", bench / "out", Loader(), progress=False)
    assert not stray.exists()


# --------------------------------------------------------------------------------------------
# One writer per folder; exit codes
# --------------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_crashed_one_leaves_no_lock(bench, capsys):
    (bench / "out").mkdir()
    with FolderLock(bench / "out"):
        with pytest.raises(RunRefused, match=f"another run \\(process {os.getpid()}\\) is writing"):
            run_dragbench(bench / "data", bench / "out", Loader(), progress=False)
        assert main(dragbench_argv(bench)) == 2
        assert "another run" in capsys.readouterr().err
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from fastdrag.apps.dragbench import FolderLock\n"
        f"FolderLock(Path({str(bench / 'out')!r})).__enter__(); print('held', flush=True); time.sleep(60)"
    )], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunRefused):
        FolderLock(bench / "out").__enter__()
    holder.kill()
    holder.wait()
    with FolderLock(bench / "out"):  # the kernel released the dead process's lock
        pass


@pytest.mark.parametrize(
    "requested, index, gpus, expected",
    [("cpu", 1, 2, "cpu"), ("auto", 0, 0, "cpu"), ("auto", 1, 1, "cuda:0"), ("cuda", 3, 2, "cuda:1"),
     ("auto", 2, 4, "cuda:2"), ("cuda:1", 0, 2, "cuda:1"), ("mps", 0, 0, "mps")],
)
def test_each_process_picks_its_own_device(monkeypatch, requested, index, gpus, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert dragbench.process_device(requested, index) == expected


def test_run_exits_1_after_doing_the_others_when_a_sample_fails(bench, capsys):
    broken = bench / "data" / "cat1" / "s3" / "meta_data.pkl"
    broken.write_bytes(pickle.dumps({"prompt": "x", "points": [[1, 1], [90, 1]], "mask": np.ones((32, 32))}))
    assert main(dragbench_argv(bench)) == 1
    captured = capsys.readouterr()
    assert "5 edited, 1 failed" in captured.out and "1 sample(s) failed" in captured.err
    assert sorted(ok_counts(bench / "out")) == sorted(k for k in SAMPLES if k != "cat1/s3")


# --------------------------------------------------------------------------------------------
# Threads, and the editor
# --------------------------------------------------------------------------------------------


def test_two_threads_on_one_pipeline_get_the_sequential_results(pipe):
    jobs = [
        dict(image=tiny_image(i), handle_points=[(10 + i, 12)], target_points=[(15 + i, 12)], prompt=f"p{i}")
        for i in range(4)
    ]
    expected = [pipe(**job, output_type="np").images for job in jobs]
    before = dict(pipe.unet.attn_processors)
    results, errors = {}, []

    def work(indices):
        try:
            for _ in range(2):
                for i in indices:
                    results.setdefault(i, []).append(pipe(**jobs[i], output_type="np").images)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(indices,)) for indices in ([0, 1], [2, 3])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i, outputs in results.items():
        for output in outputs:
            np.testing.assert_array_equal(output, expected[i])
    assert all(pipe.unet.attn_processors[name] is processor for name, processor in before.items())


def test_the_editor_run_never_writes_the_session_back():
    holder = PipelineHolder(lambda: StableDiffusionFastDragPipeline(**tiny_components()))
    demo = build_app(holder, max_side=64)
    states = {block._id for block in demo.blocks.values() if type(block).__name__ == "State"}
    run_button = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "run")
    runs = [dep for dep in demo.config["dependencies"] if any(t[0] == run_button._id for t in dep["targets"])]
    assert len(runs) == 1
    assert states and not states & set(runs[0]["outputs"])  # an upload made during the Run survives it
    assert states & set(runs[0]["inputs"])


def session_with(seed: int) -> Session:
    session = Session(image=np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    add_point(session, 10, 12)
    add_point(session, 16, 12)
    return session


def test_cached_inversions_are_shared_and_bounded_and_freed():
    import gc

    holder = PipelineHolder(lambda: StableDiffusionFastDragPipeline(**tiny_components()))
    options = EditOptions(prompt="", num_inference_steps=10, inversion_strength=0.7, fill="bnni", preserve_consistency=True)
    first = edit_session(holder, session_with(0), options)
    assert not first.reused and len(holder.inversions) == 1
    assert edit_session(holder, session_with(0), options).reused  # another tab, the same image
    oldest = next(iter(holder.inversions._items.values()))
    kept = [weakref.ref(oldest.latents), *(weakref.ref(t) for t in oldest.kv_bank.keys.values())]
    holder.inversions.budget = 2 * oldest.nbytes  # room for two
    del oldest
    for seed in (1, 2):
        edit_session(holder, session_with(seed), options)
    assert len(holder.inversions) == 2 and holder.inversions.nbytes <= holder.inversions.budget
    gc.collect()
    assert all(ref() is None for ref in kept)  # the evicted inversion's tensors are freed
    assert not edit_session(holder, session_with(0), options).reused

    small = InversionCache(budget=10)
    small.put(("k",), holder.inversions.get(next(iter(holder.inversions._items))))
    assert len(small) == 0  # larger than the whole budget: not kept


# --------------------------------------------------------------------------------------------
# The command line fails fast, in one line
# --------------------------------------------------------------------------------------------




@pytest.mark.parametrize(
    "extra, message",
    [
        (["-o", "{tmp}/missing_dir/x.png"], "-o {tmp}/missing_dir/x.png: no such folder"),
        (["-o", "{tmp}/x.xyz"], "unknown image format '.xyz'"),
        (["-o", "{tmp}/x.png", "--device", "bogus"], "--device 'bogus' is not a device torch knows"),
        (["-o", "{tmp}/x.png", "--device", "cuda"], "--device cuda: this torch has no CUDA"),
        (["-o", "{tmp}/x.png", "--drag", "-5,12:14,12"], "`handle_points` has points outside the 32x32 image"),
        (["-o", "{tmp}/x.png", "--mask", "{tmp}/in.png", "--drag", "1,1:2,2"], None),
    ],
)
def test_edit_refuses_bad_input_before_loading_a_model(files, capsys, monkeypatch, extra, message):
    from fastdrag.apps import cli

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(cli, "load_pipeline", never_load)
    argv = ["edit", str(files / "in.png"), "--model", str(files)]
    argv += [a.format(tmp=files) for a in extra]
    if "--drag" not in extra:
        argv += ["--drag", "10,12:16,12"]
    if message is None:  # all good: it gets as far as loading
        with pytest.raises(AssertionError, match="the model was loaded"):
            main(argv)
        return
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message.format(tmp=files) in error


def test_an_offline_model_is_one_line_a_shell_user_can_act_on(files, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", "someone/not-cached",
                 "--device", "cpu", "-o", str(files / "o.png")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and len(error) < 300
    assert "not in the local Hugging Face cache" in error and "local_files_only" not in error
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", "./nowhere/model",
                 "--device", "cpu", "-o", str(files / "o.png")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_a_negative_drag_coordinate_is_a_usage_error_not_an_argparse_crash(files, capsys):
    assert main(["preview", str(files / "in.png"), "--drag", "-5,12:14,12", "-o", str(files / "p.png")]) == 2
    assert "`handle_points` has points outside" in capsys.readouterr().err
