import pytest
from PIL import Image
from tiny_models import IMAGE_SIZE, never_load, tiny_components, write_dragbench

from fastdrag.apps.cli import main


def test_preview_writes_image(files):
    out = files / "out.png"
    assert main(["preview", str(files / "in.png"), "--drag", "10,12:16,12", "--mask", str(files / "mask.png"),
                 "--arrows", "-o", str(out)]) == 0
    assert Image.open(out).size == (IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["preview", "missing.png", "--drag", "1,1:2,2"], "no such file: missing.png"),
        (["preview", "{in}", "--drag", "1,1:40,2"], "`target_points` has points outside"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--model", "{tmp}/no-model"], "no such folder"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(files, capsys, argv, message):
    argv = [a.format(**{"in": files / "in.png", "tmp": files}) for a in argv] + ["-o", str(files / "o.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fastdrag: error: ") and message in err[-1]


def test_malformed_drag_exits_2(files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["preview", str(files / "in.png"), "--drag", "1,1:2", "-o", "x.png"])
    assert exit_info.value.code == 2 and "X,Y:X,Y" in capsys.readouterr().err


def test_edit_runs_the_pipeline_on_a_local_model(files, capsys):
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**tiny_components()).save_pretrained(files / "model")
    out = files / "edited.png"
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", str(files / "model"),
                 "--device", "cpu", "-o", str(out)]) == 0
    assert Image.open(out).size == (IMAGE_SIZE, IMAGE_SIZE)
    printed = capsys.readouterr().out
    edit_line = next(line for line in printed.splitlines() if line.startswith("edit "))
    phases = [part.split()[0] for part in edit_line.split(": ", 1)[1].split(", ")]
    assert phases == ["text", "encode", "inversion", "warp", "sampling", "decode"]


class StubPipeline:
    """Stands in for a loaded pipeline: records the device it is moved to and whether graphs are on."""

    cuda_graphs = False

    def to(self, device):
        self.device = device
        return self

    def enable_cuda_graphs(self):
        self.cuda_graphs = True


@pytest.mark.parametrize(
    "argv",
    [["app"], ["dragbench", "run", "--data", "d", "--out", "o"]],
    ids=["app", "dragbench-run"],
)
def test_app_and_dragbench_run_use_cuda_graphs_on_cuda_unless_told_not_to(monkeypatch, argv):
    import torch

    from fastdrag.apps import cli

    monkeypatch.setattr(cli, "load_pipeline", lambda model, unet, dtype, local_files_only=False: StubPipeline())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = cli.build_parser().parse_args(argv)
    assert cli.load_on_device(args, "cuda").cuda_graphs
    assert not cli.load_on_device(args, "cpu").cuda_graphs
    args = cli.build_parser().parse_args([*argv, "--no-cuda-graphs"])
    assert not cli.load_on_device(args, "cuda").cuda_graphs


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"fastdrag {version('diffusers-fastdrag')}"



@pytest.mark.parametrize(
    "argv, message",
    [
        (["edit", "{in}", "--drag", "1,1:2,2", "--steps", "0"], "`num_inference_steps` must be an integer >= 1"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--steps", "1001"], "<= 1000"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--strength", "2"], "`inversion_strength` must be in (0, 1]"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--steps", "2", "--strength", "0.1"], "rounds to 0 steps"),
        (["dragbench", "run", "--data", "{tmp}/data", "--out", "{tmp}/out", "--strength", "0"], "`inversion_strength`"),
        (["app", "--port", "70000"], "--port must be an integer from 1 to 65535, got 70000"),
        (["app", "--max-side", "4"], "--max-side must be"),
        (["app", "--cache", "-1"], "--cache must be"),
        (["app", "--max-pixels", "0"], "--max-pixels must be at least 1"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--max-drags", "0"], "--max-drags must be at least 1"),
    ],
)
def test_number_options_are_checked_before_any_model_loads(files, capsys, monkeypatch, argv, message):
    from fastdrag.apps import cli

    monkeypatch.setattr(cli, "load_pipeline", never_load)
    monkeypatch.setattr(cli, "build_app", never_load)
    write_dragbench(files / "data", {"cat/one": [[8, 8], [12, 8]]})
    argv = [a.format(**{"in": files / "in.png", "tmp": files}) for a in argv] + ["--model", str(files)]
    if argv[0] == "edit":
        argv += ["-o", str(files / "o.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastdrag: error: ") and message in err


@pytest.mark.parametrize("model", ["{tmp}/no-model", "examples/shapes-modell", "./nowhere"])
def test_a_missing_local_folder_is_named_as_such(files, capsys, monkeypatch, model):
    from fastdrag.apps import cli

    monkeypatch.setattr(cli, "load_pipeline", never_load)
    monkeypatch.chdir(files)
    (files / "examples").mkdir()
    model = model.format(tmp=files)
    assert main(["edit", "in.png", "--drag", "1,1:2,2", "--model", model, "-o", "o.png"]) == 2
    assert capsys.readouterr().err.strip() == f"fastdrag: error: --model {model}: no such folder"


def unreachable_hub(monkeypatch, tmp_path):
    """The Hub as a machine without a network sees it: not offline by setting, but no connection."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)


@pytest.mark.parametrize("option", ["--model", "--unet"])
def test_a_hub_id_that_cannot_be_downloaded_is_one_line_before_loading(files, capsys, monkeypatch, option):
    from fastdrag.apps import cli

    unreachable_hub(monkeypatch, files)
    monkeypatch.setattr(cli, "load_pipeline", never_load)
    argv = ["edit", str(files / "in.png"), "--drag", "1,1:2,2", "-o", str(files / "o.png")]
    argv += ["--model", str(files)] if option == "--unet" else []
    assert main([*argv, option, "someone/not-cached"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and len(err) < 300
    assert f"{option} someone/not-cached: not in the local Hugging Face cache" in err
    assert "cannot be reached" in err


def test_a_cached_hub_id_loads_from_the_cache_while_the_hub_is_unreachable(files):
    """End to end in a fresh process: a Hub id in the cache edits with no network and no retries."""
    import os
    import subprocess
    import sys

    from tiny_models import save_tiny_model

    cache = files / "hub"
    snapshot = cache / "models--someone--tiny-sd" / "snapshots" / ("0" * 40)
    save_tiny_model(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    env = {key: value for key, value in os.environ.items() if "PROXY" not in key.upper()}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0")
    command = [sys.executable, "-m", "fastdrag", "edit", str(files / "in.png"), "--drag", "10,12:16,12",
               "--device", "cpu", "-o", str(files / "o.png"), "--model"]
    done = subprocess.run([*command, "someone/tiny-sd"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(files / "o.png").size == (IMAGE_SIZE, IMAGE_SIZE)
    assert "retry" not in done.stderr.lower() and "Connection" not in done.stderr
    done = subprocess.run([*command, "someone/not-cached"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not in the local Hugging Face cache" in done.stderr


# Issue #23: each of these ran (some after the model loaded) and ended in a traceback, exit 1.
@pytest.mark.parametrize(
    "argv, message",
    [
        (["edit", "{in}", "--drag", "1,1:2,2", "-o", "{tmp}/o.mpeg"], "-o {tmp}/o.mpeg: PIL cannot write '.mpeg'"),
        (["edit", "{in}", "--drag", "1,1:2,2", "-o", "{tmp}/o.h5"], "PIL cannot write '.h5'"),
        (["preview", "{in}", "--drag", "1,1:2,2", "-o", "{tmp}/o.psd"], "PIL cannot write '.psd'"),
        (["edit", "{in}", "--drag", "1,1:2,2", "-o", "{tmp}/folder.png"], "is a folder"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--device", "meta", "-o", "{tmp}/o.png"], "--device meta"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--device", "xpu", "-o", "{tmp}/o.png"], "--device xpu"),
        (["dragbench", "run", "--data", "{tmp}/data", "--out", "{tmp}/out", "--device", "meta"], "--device meta"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--seed", str(2**64), "-o", "{tmp}/o.png"],
         f"--seed must be an integer from 0 to {2**64 - 1}"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--seed", "-1", "-o", "{tmp}/o.png"], "--seed must be"),
        (["dragbench", "run", "--data", "{tmp}/data", "--out", "{tmp}/out", "--seed", str(2**70)], "--seed must be"),
        (["edit", "{in}", "--drag", "1,1:2,2", "--model", "examples/shapes-model", "--steps", "1000", "--strength", "1",
          "-o", "{tmp}/o.png"], "`num_inference_steps` may be at most 999"),
    ],
)
def test_what_would_fail_later_is_one_line_before_any_model_loads(files, capsys, monkeypatch, argv, message):
    from fastdrag.apps import cli

    monkeypatch.setattr(cli, "load_pipeline", never_load)
    (files / "folder.png").mkdir()
    write_dragbench(files / "data", {"cat/one": [[8, 8], [12, 8]]})
    argv = [a.format(**{"in": files / "in.png", "tmp": files}) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(files)] if argv[0] != "preview" else []
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastdrag: error: ") and message.format(tmp=files) in err


def test_a_bad_pixel_limit_in_the_environment_stops_dragbench_run_at_once(files, capsys, monkeypatch):
    from fastdrag.apps import cli

    monkeypatch.setattr(cli, "load_pipeline", never_load)
    monkeypatch.setenv("FASTDRAG_MAX_PIXELS", "lots")
    write_dragbench(files / "data", {"cat/one": [[8, 8], [12, 8]]})
    assert main(["dragbench", "run", "--data", str(files / "data"), "--out", str(files / "out"),
                 "--model", str(files)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "FASTDRAG_MAX_PIXELS must be a whole number of pixels >= 1, got 'lots'" in err
