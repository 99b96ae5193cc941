"""Hostile and oversized DragBench data and run files (issue #23): each costs milliseconds and
megabytes, fails only its own sample with a line naming the file, and leaves the run going."""

import errno
import json
import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import save_tiny_model, tiny_components, write_dragbench

from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps import dragbench
from fastdrag.apps.cli import main
from fastdrag.apps.dragbench import (
    META_FILE,
    META_MAX_MIB,
    META_MAX_MIB_ENV,
    FolderLock,
    RunRefused,
    load_meta,
    read_records,
    read_results,
    run_dragbench,
)


GOOD = {"cat0/s0": [[8, 10], [12, 12]], "cat1/s1": [[9, 10], [13, 12]]}


class Loader:
    def __call__(self, device):
        return StableDiffusionFastDragPipeline(**tiny_components()).to(device)


# --------------------------------------------------------------------------------------------
# Hostile pickles, built opcode by opcode (each a few hundred bytes unless said otherwise)
# --------------------------------------------------------------------------------------------


def text(value: str) -> bytes:
    data = value.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def global_(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def meta(mask: bytes, points: bytes | None = None) -> bytes:
    """A protocol-2 ``{"prompt": "p", "points": ..., "mask": ...}`` from raw opcodes."""
    if points is None:
        points = pickle.dumps([[8, 10], [12, 12]], protocol=2)[2:-1]
    return (b"\x80\x02" + pickle.EMPTY_DICT + pickle.MARK + text("prompt") + text("p") + text("points") + points
            + text("mask") + mask + pickle.SETITEMS + pickle.STOP)


def deep_tuple_key(depth: int = 200_000) -> bytes:
    """``{((((),),),...): 1}``: hashing the key recurses in C without a limit (the segfault)."""
    return (b"\x80\x02" + pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth + pickle.BININT1 + b"\x01"
            + pickle.SETITEM + pickle.STOP)


def deep_list(depth: int = 20_000) -> bytes:
    return meta(pickle.EMPTY_LIST * depth + pickle.APPEND * (depth - 1))


def laughs(levels: int = 4, width: int = 100) -> bytes:
    """A mask of ``width ** levels`` numbers from ``levels`` lists of ``width`` shared references."""
    ops = pickle.MARK + pickle.BININT1 + b"\x01" + pickle.DUP * (width - 1) + pickle.LIST + pickle.BINPUT + b"\x01"
    for level in range(1, levels):
        ops += pickle.POP + pickle.MARK + pickle.BINGET + bytes([level]) + pickle.DUP * (width - 1) + pickle.LIST
        ops += pickle.BINPUT + bytes([level + 1])
    return meta(ops)


def reconstruct(shape: tuple[int, ...], code: bytes = b"b") -> bytes:
    """``numpy.core.multiarray._reconstruct(ndarray, shape, code)``: numpy allocates ``shape``."""
    return meta(global_("numpy.core.multiarray", "_reconstruct") + global_("numpy", "ndarray")
                + pickle.dumps(shape, protocol=2)[2:-1] + pickle.SHORT_BINBYTES + bytes([len(code)]) + code
                + pickle.TUPLE3 + pickle.REDUCE)


def ndarray_call(shape: tuple[int, ...]) -> bytes:
    """``numpy.ndarray(shape, "u1")``: allocates ``shape`` bytes."""
    return meta(global_("numpy", "ndarray") + pickle.dumps(shape, protocol=2)[2:-1] + text("u1") + pickle.TUPLE2
                + pickle.REDUCE)


def codec_chain(levels: int = 24) -> bytes:
    """``_codecs.encode(..._codecs.encode(b"ab", "hex")..., "hex")``: doubles at every level."""
    ops = global_("_codecs", "encode") + pickle.BINPUT + b"\x01" + pickle.POP
    ops += (pickle.BINGET + b"\x01") * levels + pickle.SHORT_BINBYTES + b"\x02ab"
    ops += (text("hex") + pickle.TUPLE2 + pickle.REDUCE) * levels
    return meta(ops)


def huge_memo_index(index: int = 1 << 26) -> bytes:
    """One ``LONG_BINPUT``: the C unpickler grows its memo table to ``index`` entries."""
    return meta(pickle.NONE + pickle.LONG_BINPUT + struct.pack("<I", index))


def cycle() -> bytes:
    """``l = [l]``: a list holding itself."""
    return meta(pickle.EMPTY_LIST + pickle.BINPUT + b"\x01" + pickle.BINGET + b"\x01" + pickle.APPEND)


HOSTILE = {
    "deep_tuple_key": (deep_tuple_key, "nested deeper than"),
    "deep_list": (deep_list, "nested deeper than"),
    "laughs": (laughs, "values"),
    "reconstruct_huge": (lambda: reconstruct((1 << 34,)), "_reconstruct"),
    "reconstruct_objects": (lambda: reconstruct((10**8,), b"O"), "_reconstruct"),
    "ndarray_call": (lambda: ndarray_call((1 << 34,)), "numpy.ndarray"),
    "codec_chain": (codec_chain, "latin1"),
    "huge_memo_index": (huge_memo_index, "memo"),
    "cycle": (cycle, "changed after"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_pickle_costs_milliseconds_and_megabytes_and_names_its_file(tmp_path, name):
    build, reason = HOSTILE[name]
    path = tmp_path / META_FILE
    path.write_bytes(build())
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as refused:
            load_meta(path)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    assert str(path) in message and reason in message and "\n" not in message
    assert seconds < 2.0  # milliseconds on a quiet machine; generous for a shared CI runner
    assert peak < 32 << 20, f"{peak / 2**20:.0f} MiB"


def test_an_oversized_sparse_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / META_FILE
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that cost no disk
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"over the {META_MAX_MIB} MiB limit") as refused:
            load_meta(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(refused.value) and META_MAX_MIB_ENV in str(refused.value)
    assert peak < 1 << 20


def test_the_size_limit_is_raised_by_the_environment_variable(tmp_path, monkeypatch):
    path = tmp_path / META_FILE
    mask = np.zeros((1536, 1536), np.uint8)  # 2.25 MiB
    path.write_bytes(pickle.dumps({"prompt": "", "points": [[1, 1], [2, 2]], "mask": mask}))
    monkeypatch.setenv(META_MAX_MIB_ENV, "2")
    with pytest.raises(ValueError, match="over the 2 MiB limit"):
        load_meta(path)
    monkeypatch.setenv(META_MAX_MIB_ENV, "3")
    assert load_meta(path)["mask"].shape == (1536, 1536)
    monkeypatch.setenv(META_MAX_MIB_ENV, "lots")
    with pytest.raises(ValueError, match=f"{META_MAX_MIB_ENV} must be a number of MiB"):
        load_meta(path)


def test_a_bad_size_setting_is_a_usage_error_before_any_work(tmp_path, capsys, monkeypatch):
    write_dragbench(tmp_path / "data", GOOD)
    monkeypatch.setenv(META_MAX_MIB_ENV, "0")
    assert main(["dragbench", "run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--model", str(tmp_path), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"{META_MAX_MIB_ENV} must be a number of MiB in (0, 1024], got '0'" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("dtype, shape", [(np.uint8, (512, 768)), (np.bool_, (512, 768)), (np.float32, (256, 256))])
def test_real_sized_pickles_of_every_protocol_load(tmp_path, protocol, dtype, shape):
    mask = (np.random.default_rng(0).random(shape) > 0.5).astype(dtype)
    points = [[np.int64(10), np.int64(12)], [16.5, np.float32(12)], [1, 2], [3, 4]]
    path = tmp_path / META_FILE
    path.write_bytes(pickle.dumps({"prompt": "a cat", "points": points, "mask": mask, "extra": (1, None)},
                                  protocol=protocol))
    loaded = load_meta(path)
    assert loaded["points"] == points and loaded["prompt"] == "a cat"
    assert loaded["mask"].dtype == mask.dtype and np.array_equal(loaded["mask"], mask)


def run_cli(data: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fastdrag", "dragbench", "run", "--data", str(data), "--model", str(model),
               "--out", str(out), "--device", "cpu", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_deeply_nested_pickle_fails_its_own_sample_and_the_others_are_done(tmp_path):
    write_dragbench(tmp_path / "data", {**GOOD, "cat0/deep": [[8, 10], [12, 12]]})
    deep = tmp_path / "data" / "cat0" / "deep" / META_FILE
    deep.write_bytes(deep_tuple_key())
    model = save_tiny_model(tmp_path / "model")
    for _ in range(2):  # and again on resume
        done = run_cli(tmp_path / "data", tmp_path / "out", model)
        assert done.returncode == 1, done.stderr[-2000:]
        assert "1 sample(s) failed" in done.stderr
    results = read_results(tmp_path / "out")
    assert {key: r["status"] for key, r in results.items()} == {"cat0/s0": "ok", "cat1/s1": "ok", "cat0/deep": "error"}
    assert str(deep) in results["cat0/deep"]["error"] and "nested deeper than" in results["cat0/deep"]["error"]


# --------------------------------------------------------------------------------------------
# Peak memory over a folder of hostile pickles
# --------------------------------------------------------------------------------------------

PEAK_SCRIPT = """
import sys
from fastdrag import StableDiffusionFastDragPipeline
from fastdrag.apps.dragbench import run_dragbench
from tiny_models import tiny_components
summary = run_dragbench(sys.argv[1], sys.argv[2], lambda device: StableDiffusionFastDragPipeline(**tiny_components()),
                        progress=False, device="cpu")
print(summary.done, summary.failed)
"""


def peak_rss_mib(data: Path, out: Path) -> tuple[float, str]:
    """Peak resident memory (MiB) of a DragBench run over ``data`` in a fresh process, and its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", PEAK_SCRIPT, str(data), str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, output[-2000:]
    return usage.ru_maxrss / 1024, output  # ru_maxrss is in KiB on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units and sparse files as on Linux")
def test_peak_memory_over_hostile_pickles_stays_what_one_real_sample_needs(tmp_path):
    write_dragbench(tmp_path / "real", {"cat0/s0": [[8, 10], [12, 12]]})
    hostile = {
        "deep_tuple_key": deep_tuple_key(),
        "laughs": laughs(),  # 10^8 numbers once the mask is made an array
        "reconstruct": reconstruct((1 << 15, 1 << 15)),  # 1 GiB, touched by `mask != 0`
        "objects": reconstruct((10**8,), b"O"),  # 800 MB of pointers to None
        "codec_chain": codec_chain(26),  # 128 MiB of hex
        "memo": huge_memo_index(1 << 26),  # a 512 MiB memo table
    }
    write_dragbench(tmp_path / "hostile", {"cat0/s0": [[8, 10], [12, 12]],
                                           **{f"hostile/{name}": [[8, 10], [12, 12]] for name in hostile}})
    for name, data in hostile.items():
        (tmp_path / "hostile" / "hostile" / name / META_FILE).write_bytes(data)
    sparse = tmp_path / "hostile" / "hostile" / "sparse"
    sparse.mkdir()
    Image.new("RGB", (32, 32)).save(sparse / "original_image.png")
    with open(sparse / META_FILE, "wb") as f:
        f.truncate(3 << 30)

    real, _ = peak_rss_mib(tmp_path / "real", tmp_path / "out_real")
    bad, output = peak_rss_mib(tmp_path / "hostile", tmp_path / "out_hostile")
    assert output.split()[-2:] == ["1", str(len(hostile) + 1)]  # the real sample done, each hostile one failed
    print(f"peak RSS: one real sample {real:.0f} MiB; with {len(hostile) + 1} hostile pickles {bad:.0f} MiB")
    assert bad < real * 1.15 + 16, f"{bad:.0f} MiB against {real:.0f} MiB"


# --------------------------------------------------------------------------------------------
# Sample names and symbolic links in the data folder
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["results.jsonl", "run_config.json", ".lock"])
def test_a_sample_named_like_the_runs_own_files_fails_alone_and_the_run_resumes(tmp_path, name):
    # The colliding sample sorts first, so it is edited before the run has written its log.
    write_dragbench(tmp_path / "data", {f"{name}/s": [[8, 10], [12, 12]], "zoo/a": [[8, 10], [12, 12]]})
    out = tmp_path / "out"
    for _ in range(2):  # a first run, then a resume
        summary = run_dragbench(tmp_path / "data", out, Loader(), progress=False)
        assert summary.failed == 1 and summary.skipped + summary.done == 1
    assert (out / "results.jsonl").is_file() and (out / "run_config.json").is_file() and (out / ".lock").is_file()
    results = read_results(out)
    assert results[f"{name}/s"]["status"] == "error" and results["zoo/a"]["status"] == "ok"
    assert "rename the folder" in results[f"{name}/s"]["error"] and repr(name) in results[f"{name}/s"]["error"]


def test_every_file_the_run_writes_at_the_top_of_out_has_a_dot_in_its_name(tmp_path):
    """The rule that keeps sample names from colliding: categories have no dot, the run's files do."""
    write_dragbench(tmp_path / "data", GOOD)
    run_dragbench(tmp_path / "data", tmp_path / "out", Loader(), progress=False)
    own = {path.name for path in (tmp_path / "out").iterdir()} - {"cat0", "cat1"}
    assert own and all("." in name for name in own), own
    assert "." in dragbench.RESULTS_FILE and "." in dragbench.CONFIG_FILE and "." in dragbench.LOCK_FILE


def test_symbolic_links_out_of_the_data_folder_fail_their_sample_and_links_inside_are_followed(tmp_path):
    write_dragbench(tmp_path / "data", GOOD)
    write_dragbench(tmp_path / "elsewhere", {"x/folder": [[8, 10], [12, 12]], "x/file": [[8, 10], [12, 12]]})
    (tmp_path / "data" / "cat0" / "linked_folder").symlink_to(tmp_path / "elsewhere" / "x" / "folder")
    linked_file = tmp_path / "data" / "cat0" / "linked_file"
    linked_file.mkdir()
    for name in ("original_image.png", "user_drag.png"):
        (tmp_path / "elsewhere" / "x" / "file" / name).rename(linked_file / name)
    (linked_file / META_FILE).symlink_to(tmp_path / "elsewhere" / "x" / "file" / META_FILE)
    (tmp_path / "data" / "cat1" / "alias").symlink_to(tmp_path / "data" / "cat1" / "s1")  # inside: fine

    summary = run_dragbench(tmp_path / "data", tmp_path / "out", Loader(), progress=False)
    assert (summary.done, summary.failed) == (3, 2)
    results = read_results(tmp_path / "out")
    assert results["cat1/alias"]["status"] == "ok"
    for key in ("cat0/linked_folder", "cat0/linked_file"):
        assert results[key]["status"] == "error" and "outside the data folder" in results[key]["error"]
    assert str(tmp_path / "elsewhere") in results["cat0/linked_file"]["error"]


# --------------------------------------------------------------------------------------------
# The run's own files: the stamp covers the data, is read defensively; a full disk; the lock
# --------------------------------------------------------------------------------------------


def test_resuming_with_other_data_is_refused_and_a_sample_changed_in_place_is_redone(tmp_path):
    write_dragbench(tmp_path / "data", GOOD)
    write_dragbench(tmp_path / "other", GOOD, seed=1)
    out = tmp_path / "out"
    assert run_dragbench(tmp_path / "data", out, Loader(), progress=False).done == 2
    with pytest.raises(RunRefused, match="data: .* there, .* now"):
        run_dragbench(tmp_path / "other", out, Loader(), progress=False)
    assert json.loads((out / "run_config.json").read_text())["data"] == str((tmp_path / "data").resolve())

    changed = tmp_path / "data" / "cat1" / "s1" / META_FILE
    changed.write_bytes(pickle.dumps({"prompt": "q", "points": [[9, 9], [14, 12]], "mask": np.ones((32, 32))}))
    summary = run_dragbench(tmp_path / "data", out, Loader(), progress=False)
    assert (summary.skipped, summary.done) == (1, 1)
    assert run_dragbench(tmp_path / "data", out, Loader(), progress=False).skipped == 2


def test_cli_refuses_other_data_in_one_line(tmp_path, capsys):
    write_dragbench(tmp_path / "data", GOOD)
    write_dragbench(tmp_path / "other", GOOD)
    save_tiny_model(tmp_path / "model")
    argv = ["dragbench", "run", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--device", "cpu",
            "--no-progress", "--data"]
    assert main([*argv, str(tmp_path / "data")]) == 0
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "other")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "data: " in error and str(tmp_path / "other") in error


@pytest.mark.parametrize("content", [b"[1, 2]\n", '{"model": "caf\xe9"}'.encode("latin-1"), b"\"text\"", b"\x00" * 10])
def test_a_stamp_of_the_wrong_type_or_encoding_is_one_refusal_naming_it(tmp_path, capsys, content):
    write_dragbench(tmp_path / "data", GOOD)
    (tmp_path / "out").mkdir()
    stamp = tmp_path / "out" / "run_config.json"
    stamp.write_bytes(content)
    with pytest.raises(RunRefused, match="use another --out") as refused:
        run_dragbench(tmp_path / "data", tmp_path / "out", Loader(), progress=False)
    assert str(stamp) in str(refused.value)
    assert main(["dragbench", "run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--model", str(tmp_path), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(stamp) in error
    assert stamp.read_bytes() == content  # refused, not overwritten


@pytest.fixture
def bench(tmp_path):
    write_dragbench(tmp_path / "data", GOOD)
    save_tiny_model(tmp_path / "model")
    return tmp_path


def bench_argv(tmp_path) -> list[str]:
    return ["dragbench", "run", "--data", str(tmp_path / "data"), "--model", str(tmp_path / "model"),
            "--out", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("where", ["image", "results line", "stamp"])
def test_a_full_disk_is_one_line_and_exit_1_and_a_rerun_resumes(bench, capsys, monkeypatch, where):
    real_write = os.write

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "image":
        monkeypatch.setattr(Image.Image, "save", no_space)
    else:
        prefix = b"\n{" if where == "results line" else b"{"
        monkeypatch.setattr(dragbench.os, "write",
                            lambda fd, data: no_space() if data.startswith(prefix) else real_write(fd, data))
    assert main(bench_argv(bench)) == 1
    captured = capsys.readouterr()
    # stderr also holds the model loading's progress bars: the run's own say is one line.
    errors = [line for line in captured.err.splitlines() if line.startswith("fastdrag:")]
    assert len(errors) == 1 and "Traceback" not in captured.err
    error = errors[0]
    assert error.startswith("fastdrag: error: No space left on device writing to ")
    assert "disk is full" in error and "rerun" in error and "resume" in error
    assert not list((bench / "out").glob("*/*/.*.partial.png"))
    monkeypatch.undo()

    assert main(bench_argv(bench)) == 0
    assert {key: r["status"] for key, r in read_results(bench / "out").items()} == {key: "ok" for key in GOOD}


def test_a_lock_that_is_a_symbolic_link_is_refused_not_followed(tmp_path, capsys):
    write_dragbench(tmp_path / "data", GOOD)
    (tmp_path / "out").mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "out" / ".lock").symlink_to(target)
    with pytest.raises(RunRefused, match="symbolic link"):
        with FolderLock(tmp_path / "out"):
            pass
    assert main(["dragbench", "run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--model", str(tmp_path), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and ".lock" in error and "symbolic link" in error
    assert target.read_text() == "keep me"
    assert not read_records(tmp_path / "out")


@pytest.mark.parametrize("missing", ["points", "mask"])
def test_a_pickle_missing_a_key_fails_its_sample_naming_the_file_and_the_key(tmp_path, missing):
    write_dragbench(tmp_path / "data", GOOD)
    sample = dragbench.find_samples(tmp_path / "data")[0]
    meta_path = sample.folder / META_FILE
    with open(meta_path, "rb") as f:
        meta = pickle.load(f)
    del meta[missing]
    meta_path.write_bytes(pickle.dumps(meta))
    with pytest.raises(ValueError, match=rf"{META_FILE}.*has no `{missing}`") as error:
        dragbench.load_sample(sample)
    assert str(meta_path) in str(error.value)
