"""benchmarks/gpu_suite.py: its dry run on the CPU writes every step's rows, a failing CUDA test
fails it, and it installs what is missing from local wheels only.

The dry run is how CI runs the suite: the same steps as on a GPU, at tiny sizes. Its table and JSON
stay in `$FASTDRAG_ARTIFACTS/gpu-suite-dry-run/` (default `test-artifacts/`) for CI to show.
"""

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement


ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
ARTIFACTS = Path(os.environ.get("FASTDRAG_ARTIFACTS", ROOT / "test-artifacts"))


def load_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_suite(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True, timeout=1500)


def test_the_dry_run_writes_every_step_with_values():
    out = ARTIFACTS / "gpu-suite-dry-run"
    shutil.rmtree(out, ignore_errors=True)
    done = run_suite("--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    table = (out / "gpu_suite.md").read_text()
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == ["cuda-tests", "sd15", "sd15-first-edit", "sd15-compile", "warp", "sdxl", "variants"]
    assert report["run"]["exit code"] == 0 and report["run"]["kind"].startswith("dry run")
    for name, step in steps.items():
        assert step["status"].startswith("ok"), step
        assert step["rows"], name
        for row in step["rows"]:
            assert row["text"] and row["command"] is not None, row
            # every row of the JSON is a row of the table, with its value
            assert f"| {step['number']} | {row['figure']} | {row['text']} |" in table, row

    figures = {name: [row["figure"] for row in step["rows"]] for name, step in steps.items()}
    # Step 1: each CUDA-marked test by name; on the CPU they skip, which a GPU run would count as failed.
    assert any("test_real_cuda_graphs_give_the_eager_bits" in f for f in figures["cuda-tests"])
    assert any("test_no_synchronisation_in_the_loops_on_cuda" in f for f in figures["cuda-tests"])
    assert all(row["value"] == "skipped" and row["met"] is None for row in steps["cuda-tests"]["rows"])
    for path in ("eager", "graphs"):
        for figure in ("edit", "re-drag", "floor", "edit / floor"):
            assert f"{path}: {figure}" in figures["sd15"]
        assert f"first edit of a fresh pipeline ({path}, model build excluded)" in figures["sd15-first-edit"]
        assert f"bfloat16, {path}: edit" in figures["variants"]
    assert {"compile: edit", "compile: re-drag", "compile: edit / floor"} <= set(figures["sd15-compile"])
    assert any(f.startswith("dragbench run, steady seconds per sample") for f in figures["sd15"])
    assert "peak memory" in figures["sd15"]
    assert sum(f.startswith("warp, eager") for f in figures["warp"]) == 2
    assert "UNet channels_last, graphs: edit" in figures["variants"]
    assert "VAE channels_last: decode" in figures["variants"]
    # Step 4: SDXL through its own pipeline, against its floor.
    for path in ("eager", "graphs"):
        for figure in ("edit", "re-drag", "floor", "edit / floor"):
            assert f"SDXL {path}: {figure}" in figures["sdxl"]
    assert {"SDXL K/V bank", "SDXL peak memory"} <= set(figures["sdxl"])
    sdxl_edit = next(row for row in steps["sdxl"]["rows"] if row["figure"] == "SDXL eager: edit")
    assert isinstance(sdxl_edit["value"], float) and "tiny-sdxl-model" in sdxl_edit["command"]
    # Numbers are numbers, and the targets come from bench_speed.
    edit = next(row for row in steps["sd15"]["rows"] if row["figure"] == "graphs: edit")
    assert isinstance(edit["value"], float) and edit["value"] > 0 and edit["target"] == "<= 0.2 s"
    assert "--stand-in-graphs" in edit["command"] and edit["command"].startswith("python benchmarks/bench_speed.py")


def test_a_failing_cuda_test_fails_the_suite(tmp_path):
    tests = tmp_path / "test_on_gpu.py"
    tests.write_text(
        "import pytest\n\n"
        "@pytest.mark.cuda\ndef test_passes():\n    assert True\n\n"
        "@pytest.mark.cuda\ndef test_fails():\n    assert 1 == 2, 'replay differs'\n\n"
        "def test_not_marked():\n    assert False\n"
    )
    done = run_suite("--dry-run", "--out", str(tmp_path / "out"), "--steps", "cuda-tests", "--tests", str(tests))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    (step,) = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())["steps"]
    assert step["status"] == "failed: 1 passed, 1 failed"
    outcomes = {row["figure"]: (row["value"], row["met"]) for row in step["rows"]}
    assert outcomes == {"test_on_gpu::test_passes": ("passed", True), "test_on_gpu::test_fails": ("failed", False)}
    assert "| 1 | test_on_gpu::test_fails | failed: AssertionError: replay differs" in (
        (tmp_path / "out" / "gpu_suite.md").read_text())


def test_a_step_past_its_budget_is_killed_and_the_suite_goes_on(tmp_path):
    done = run_suite("--dry-run", "--out", str(tmp_path), "--steps", "warp", "sdxl", "--step-budget", "warp=0.5")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    warp, sdxl = json.loads((tmp_path / "gpu_suite.json").read_text())["steps"]
    assert warp["status"] == "ran past its budget (0 s): killed" and warp["seconds"] < 5
    assert sdxl["status"].startswith("ok")
    assert "| 3 | **the warp on the device** | ran past its budget (0 s): killed" in (tmp_path / "gpu_suite.md").read_text()
    bad = run_suite("--dry-run", "--out", str(tmp_path), "--step-budget", "warp")
    assert bad.returncode == 2 and "--step-budget warp: expected STEP=SECONDS" in bad.stderr


def test_missing_packages_without_wheels_stop_with_the_download_command(capsys, tmp_path):
    suite = load_suite()
    for folder in (None, str(tmp_path / "absent")):
        with pytest.raises(SystemExit) as stopped:
            suite.install_from_wheels(folder, ["diffusers", "pytest"])
        assert stopped.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "missing diffusers, pytest" in error
        assert "gpu_suite.py --download-wheels .whl" in error
        assert "pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==" in error
    assert "pip download --no-deps --only-binary=:all:" in run_suite("--help").stdout


def test_wheels_are_installed_offline_and_only_the_missing_ones(monkeypatch, tmp_path):
    suite = load_suite()
    calls = []
    monkeypatch.setattr(suite.subprocess, "run", lambda command, **kwargs: calls.append(command) or
                        subprocess.CompletedProcess(command, 0, "", ""))
    monkeypatch.setattr(suite, "installed_version", lambda name: None if name in ("diffusers", "pluggy") else "1")
    suite.install_from_wheels(str(tmp_path), suite.missing_packages())
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(tmp_path),
                      "diffusers", "pluggy"]]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(roots) -> set[str]:
    """The installed distributions ``roots`` need, recursively (no extras)."""
    seen, todo = set(), [canonical(name) for name in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
    return seen


def test_the_wheel_list_names_every_dependency_torch_does_not_bring():
    suite = load_suite()
    listed = {canonical(name) for name in suite.WHEELS}
    needed = requirement_closure(["diffusers", "transformers", "accelerate", "safetensors", "numpy", "pillow", "pytest"])
    assert needed - requirement_closure(["torch"]) - listed == set()
    # and the project's own requirements
    setup = (ROOT / "setup.cfg").read_text()
    block = setup.split("install_requires =")[1].split("\n\n")[0]
    project = {canonical(Requirement(line.strip()).name) for line in block.splitlines() if line.strip()}
    assert project - {"torch"} <= listed
