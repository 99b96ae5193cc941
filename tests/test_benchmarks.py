"""The speed benchmark runs end to end (on a tiny model here; the figures come from a GPU)."""

import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_model, save_tiny_sdxl_model


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
    kv = next(line for line in out.splitlines() if line.startswith("| K/V bank MiB |"))
    assert float(kv.split("|")[2]) > 0
    assert "| inversion MiB |" in out


def test_bench_speed_times_an_sdxl_model_against_its_floor(tmp_path):
    """``--model`` of an SDXL folder: the SDXL pipeline, and a floor with SDXL's text and added conditioning."""
    model = save_tiny_sdxl_model(tmp_path / "model")
    done = subprocess.run(
        [sys.executable, str(BENCH), "--model", model, "--resolution", "32", "--warmup", "0", "--dragbench", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for row in ("| **edit** |", "| **floor** |", "| K/V bank MiB |", "first edit of a fresh pipeline (eager"):
        assert row in done.stdout


def test_the_floors_sdxl_conditioning_is_what_an_sdxl_unet_takes():
    import torch
    from tiny_models import tiny_sdxl_components

    sys.path.insert(0, str(BENCH.parent))
    import bench_speed

    class Parts:  # the components the floor reads, without a pipeline
        def __init__(self, **components):
            self.__dict__.update(components)

    pipe = Parts(**tiny_sdxl_components())
    assert bench_speed.is_sdxl(pipe)
    embeds, unet_kwargs = bench_speed.floor_text(pipe, "a photo", torch.device("cpu"), 32)
    added = unet_kwargs["added_cond_kwargs"]
    assert added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]
    latents = torch.zeros(1, 4, 16, 16)
    calls = bench_speed.BareUNetCalls(pipe, latents, embeds, [999, 500], graphed=False, unet_kwargs=unet_kwargs)
    with torch.no_grad():
        assert calls.run_eagerly().shape == latents.shape


BENCHMARKS = BENCH.parent


@pytest.mark.parametrize(
    "script, argv, message",
    [
        ("bench_speed.py", ["--device", "cuda"], "--device cuda: this torch has no CUDA"),
        ("bench_speed.py", ["--resolution", "100"], "--resolution must be a multiple of 8, got 100"),
        ("bench_speed.py", ["--steps", "0"], "`num_inference_steps` must be an integer >= 1"),
        # --arch is taken (the resolution is the next error), and checked before any model is built
        ("bench_speed.py", ["--arch", "sdxl", "--resolution", "100"], "--resolution must be a multiple of 8, got 100"),
        ("bench_speed.py", ["--arch", "sdxl", "--steps", "0"], "`num_inference_steps` must be an integer >= 1"),
        ("bench_speed.py", ["--arch", "sd3"], "argument --arch: invalid choice: 'sd3'"),
        ("bench_speed.py", ["--arch", "sdxl", "--model", "."], "--arch picks the shapes of random weights; --model"),
        ("bench_speed.py", ["--model", "no/such/model"], "--model no/such/model: no such folder"),
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


def test_bench_live_drag_prints_its_table():
    """The live-drag benchmark drives the real editor in headless Chromium (skipped without one,
    except under CI), here with one short drag on the shapes model."""
    from test_app_browser import require_browser

    require_browser()
    bench = BENCH.parent / "bench_live_drag.py"
    done = subprocess.run([sys.executable, str(bench), "--drags", "1", "--moves", "6"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in done.stdout.splitlines() if line.startswith("| ")}
    assert float(rows["preview frames per second while dragging"][0]) > 0
    assert 0 < float(rows["release to final result, seconds"][0]) < 60
    redrag = next(value for key, value in rows.items() if key.startswith("one re-drag on the server"))
    assert float(redrag[0]) > 0


def test_bench_live_drag_refuses_bad_options_in_one_line():
    bench = BENCH.parent / "bench_live_drag.py"
    done = subprocess.run([sys.executable, str(bench), "--side", "100"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == "bench_live_drag.py: error: --side must be a multiple of 8, got 100"
