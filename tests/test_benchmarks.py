"""The speed benchmark runs end to end (on a tiny model here; the figures come from a GPU)."""

import subprocess
import sys
from pathlib import Path

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
