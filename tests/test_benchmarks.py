"""The speed benchmark runs end to end (on a tiny model here; the figures come from a GPU)."""

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_model


BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_speed.py"


def test_bench_speed_prints_its_table(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--model", model, "--resolution", "32", "--warmup", "0", "--dragbench", "3", "--vae-layouts"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for row in ("| **edit** |", "| **re-drag** |", "| **floor** |", "| edit / floor |", "| edit: sampling |"):
        assert row in out
    assert "first edit of a fresh pipeline (eager, model build excluded)" in out
    assert "dragbench run, steady seconds per sample (3 samples)" in out
    assert "- VAE in channels_last: encode" in out


BENCHMARKS = BENCH.parent


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("bench_speed.py", ["--device", "cuda"], "--device cuda: this torch has no CUDA"),
        ("bench_speed.py", ["--resolution", "100"], "--resolution must be a multiple of 8, got 100"),
        ("bench_speed.py", ["--steps", "0"], "`num_inference_steps` must be an integer >= 1"),
        ("bench_warpage.py", ["--repeats", "0"], "--repeats must be at least 1, got 0"),
        ("shapedrag_ablations.py", ["--model", "no/such/model"], "--model no/such/model: no such folder"),
        ("train_shapes_model.py", ["--ema", "1.5"], "--ema must be in [0, 1), got 1.5"),
    ],
)
def test_a_usage_error_in_a_script_is_one_line_and_exit_2(script, argv, message):
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    # (transformers 5 may print a line of its own first, about torchvision, at import)
    assert done.stderr.strip().splitlines()[-1].startswith(f"{script}: error: {message}")
    assert "Traceback" not in done.stderr
