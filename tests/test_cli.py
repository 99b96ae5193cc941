import numpy as np
import pytest
from PIL import Image

from fastdrag.cli import main
from tiny_models import IMAGE_SIZE, tiny_components, tiny_image


@pytest.fixture
def files(tmp_path):
    image = (tiny_image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    mask[4:28, 4:28] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


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
        (["edit", "{in}", "--drag", "1,1:2,2", "--model", "{tmp}/no-model"], "cannot load model"),
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
    from fastdrag import cli

    import torch

    monkeypatch.setattr(cli, "load_pipeline", lambda model, unet, dtype: StubPipeline())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = cli.build_parser().parse_args(argv)
    assert cli.load_on_device(args, "cuda").cuda_graphs
    assert not cli.load_on_device(args, "cpu").cuda_graphs
    args = cli.build_parser().parse_args([*argv, "--no-cuda-graphs"])
    assert not cli.load_on_device(args, "cuda").cuda_graphs
