"""DragBench metrics: point matching, DIFT on tiny models, 1 - LPIPS with an injected distance."""

import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from tiny_models import (
    IMAGE_SIZE,
    sd_scheduler,
    tiny_text_encoder,
    tiny_tokenizer,
    tiny_unet,
    tiny_vae,
    write_dragbench,
)

from fastdrag.apps.cli import main
from fastdrag.apps.dragbench import RESULTS_FILE, append_line
from fastdrag.apps.metrics import (
    DiftFeaturizer,
    evaluate,
    fidelity,
    load_lpips,
    markdown_table,
    matched_points,
    point_distances,
    write_report,
)


def shifted_features(height=12, width=20, dy=2, dx=4, channels=16):
    source = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(0))
    return source, torch.roll(source, shifts=(dy, dx), dims=(2, 3))


def test_matched_points_follow_the_feature_in_row_col_order():
    source, edited = shifted_features()
    found = matched_points(source, edited, torch.tensor([[3, 5], [0, 0], [11, 10]]))  # (row, col)
    assert found.tolist() == [[5, 9], [2, 4], [1, 14]]  # rows wrap at 12, cols at 20


def test_point_distances_take_xy_points_and_measure_pixels():
    source, edited = shifted_features()
    handles = [(5, 3), (10.7, 6.2)]  # (x, y); a fraction means the pixel that holds it
    targets = [(9, 5), (18, 11)]  # the first is exactly where its handle's feature went
    distances = point_distances(source, edited, handles, targets)
    np.testing.assert_allclose(distances, [0.0, math.hypot(18 - 14, 11 - 8)])
    with pytest.raises(ValueError, match="handle points must lie inside the 20x12 image"):
        point_distances(source, edited, [(20, 3)], [(0, 0)])


def tiny_dift(**kwargs):
    return DiftFeaturizer(tiny_unet(), tiny_vae(), tiny_text_encoder(), tiny_tokenizer(), sd_scheduler(), **kwargs)


def test_dift_returns_ensemble_mean_of_the_up_block_and_stops_there():
    dift = tiny_dift(ensemble_size=3)
    seen_batches, reached_out = [], []
    dift.unet.register_forward_pre_hook(lambda module, args: seen_batches.append(args[0].shape[0]))
    dift.unet.conv_out.register_forward_hook(lambda *args: reached_out.append(1))
    image = torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    features = dift(image)
    assert seen_batches == [3] and reached_out == []
    block = dift.unet.up_blocks[1]
    channels = block.resnets[-1].conv2.out_channels
    assert features.shape[:2] == (1, channels) and features.dtype == torch.float32
    assert torch.equal(features, dift(image))  # seeded noise: equal images, equal features
    assert not torch.equal(features, dift(-image))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"t": 1000}, "`t` must be in"), ({"up_ft_index": 5}, "`up_ft_index` must be in"), ({"ensemble_size": 0}, "ensemble")],
)
def test_dift_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_dift(**kwargs)


def mean_abs(a, b):
    assert a.shape == b.shape == (1, 3, 224, 224) and a.min() >= -1 and a.max() <= 1
    return (a - b).abs().mean(dim=(1, 2, 3))


def test_fidelity_is_one_minus_the_distance_at_224():
    from PIL import Image

    black, white = Image.new("RGB", (40, 24)), Image.new("RGB", (40, 24), (255, 255, 255))
    assert fidelity(black, black, mean_abs) == 1.0
    assert fidelity(black, white, mean_abs) == pytest.approx(1.0 - 2.0)


class FixedFeatures:
    """Features that ignore the content: every handle is found where it was."""

    def __call__(self, image):
        height, width = image.shape[-2:]
        return torch.randn(1, 8, height // 2, width // 2, generator=torch.Generator().manual_seed(1))


SAMPLES = {
    "animals/cat": [[10, 12], [16, 12]],
    "animals/dog": [[8, 8], [11, 12], [20, 20], [20, 24]],
    "landscape/hill": [[16, 16], [16, 10]],
    "landscape/lake": [[5, 20], [9, 20]],
}


@pytest.fixture
def edited_run(tmp_path):
    """A run where every edit returned the original image, but landscape/lake failed."""
    write_dragbench(tmp_path / "data", SAMPLES)
    results = tmp_path / "results"
    for key in SAMPLES:
        if key == "landscape/lake":
            append_line(results / RESULTS_FILE, {"sample": key, "status": "error", "error": "boom"})
            continue
        (results / key).mkdir(parents=True)
        shutil.copy(tmp_path / "data" / key / "original_image.png", results / key / "dragged_image.png")
        append_line(results / RESULTS_FILE, {"sample": key, "status": "ok", "image": f"{key}/dragged_image.png",
                                             "seconds": 2.0 if key.startswith("animals") else 4.0})
    return tmp_path


def test_evaluate_scores_overall_and_per_category(edited_run):
    report = evaluate(edited_run / "data", edited_run / "results", FixedFeatures(), mean_abs, progress=False)
    # Nothing moved, so each distance is the drag's own length: 6; 5 and 4; 6.
    assert report["overall"] == {"samples": 3, "missing": 1, "drags": 4, "md": pytest.approx(21 / 4),
                                 "fidelity": 1.0, "seconds": pytest.approx(8 / 3)}
    assert report["categories"]["animals"]["md"] == pytest.approx(5.0)
    assert report["categories"]["landscape"] == {"samples": 1, "missing": 1, "drags": 1, "md": 6.0,
                                                 "fidelity": 1.0, "seconds": 4.0}
    assert [s["sample"] for s in report["per_sample"]] == ["animals/cat", "animals/dog", "landscape/hill"]

    json_path, md_path = write_report(report, edited_run / "report")
    assert json.loads(json_path.read_text())["overall"]["drags"] == 4
    table = md_path.read_text().splitlines()
    assert table[0].startswith("| category | samples | missing | drags | MD (px)")
    assert table[2] == "| **all** | 3 | 1 | 4 | 5.25 | 1.000 | 2.67 |"
    assert table[4] == "| landscape | 1 | 1 | 1 | 6.00 | 1.000 | 4.00 |"
    assert markdown_table(report) == md_path.read_text()


def test_lpips_missing_names_the_eval_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)
    with pytest.raises(ImportError, match=r"diffusers-fastdrag\[eval\]"):
        load_lpips()


def test_cli_eval_errors_are_one_line(edited_run, monkeypatch, capsys):
    assert main(["dragbench", "eval", "--data", str(edited_run / "data"), "--results", str(edited_run)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "lpips", None)
    argv = ["dragbench", "eval", "--data", str(edited_run / "data"), "--results", str(edited_run / "results")]
    assert main(argv) == 2
    assert "pip install 'diffusers-fastdrag[eval]'" in capsys.readouterr().err
