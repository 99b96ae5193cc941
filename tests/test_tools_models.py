"""The tools take Stable Diffusion and SDXL models alike: the pipeline class comes from the model's
``model_index.json`` (:func:`fastdrag.apps.cli.pipeline_class_for`); and the one options type the command
line, DragBench and the editor share (:class:`fastdrag.apps.options.EditOptions`)."""

import json

import numpy as np
import pytest
from PIL import Image
from tiny_models import IMAGE_SIZE, never_load, save_tiny_model, save_tiny_sdxl_model, tiny_image, write_dragbench

from fastdrag.apps import cli
from fastdrag.apps.cli import main
from fastdrag.apps.options import EditOptions


def index_folder(folder, class_name, **components) -> str:
    """A folder holding only a ``model_index.json`` naming ``class_name``."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name, "_diffusers_version": "0.42.1",
                                                         **components}))
    return str(folder)


# --------------------------------------------------------------------------------------------
# The pipeline class of a model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", cli.SD_PIPELINES)
def test_stable_diffusion_models_get_the_sd_pipeline(tmp_path, name):
    from fastdrag import StableDiffusionFastDragPipeline

    assert cli.pipeline_class_for(index_folder(tmp_path / "m", name)) is StableDiffusionFastDragPipeline


@pytest.mark.parametrize("name", cli.SDXL_PIPELINES)
def test_sdxl_models_get_the_sdxl_pipeline(tmp_path, name):
    from fastdrag import StableDiffusionXLFastDragPipeline

    assert cli.pipeline_class_for(index_folder(tmp_path / "m", name)) is StableDiffusionXLFastDragPipeline


def test_a_custom_pipelines_class_name_is_its_last_part(tmp_path):
    from fastdrag import StableDiffusionFastDragPipeline

    folder = index_folder(tmp_path / "m", ["fastdrag", "StableDiffusionFastDragPipeline"])
    assert cli.pipeline_class_for(folder) is StableDiffusionFastDragPipeline


@pytest.mark.parametrize("class_name, shown", [
    ("Foo\nBar", "'Foo\\nBar'"), ("X" * 100_000, "'XXXX"), (None, "None"), ({"a": 1}, "{'a': 1}"),
])
def test_an_odd_class_name_is_refused_in_one_short_line(tmp_path, class_name, shown):
    with pytest.raises(cli.UsageError) as refused:
        cli.pipeline_class_for(index_folder(tmp_path / "m", class_name))
    message = str(refused.value)
    assert "\n" not in message and len(message) < 500 and f"is a {shown}" in message


def test_a_model_index_that_is_no_regular_file_or_too_large_is_not_read(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "model_index.json")  # reading it would block forever
    assert cli.model_index(str(fifo), local_files_only=True) is None
    huge = index_folder(tmp_path / "huge", "StableDiffusionXLPipeline", padding="x" * cli.MAX_MODEL_INDEX_BYTES)
    assert cli.model_index(huge, local_files_only=True) is None


def test_a_cached_hub_ids_index_is_read_from_the_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from fastdrag import StableDiffusionXLFastDragPipeline

    snapshot = tmp_path / "hub" / "models--someone--tiny-sdxl" / "snapshots" / ("0" * 40)
    index_folder(snapshot, "StableDiffusionXLPipeline")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert cli.pipeline_class_for("someone/tiny-sdxl", local_files_only=True) is StableDiffusionXLFastDragPipeline


@pytest.mark.parametrize(
    "name, components, message",
    [
        ("FluxPipeline", {}, "is a FluxPipeline: FastDrag edits with Stable Diffusion 1.x/2.x"),
        ("LatentConsistencyModelPipeline", {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
         "LatentConsistencyModelPipeline (with two text encoders)"),
    ],
)
def test_another_pipeline_is_refused_in_one_line_before_any_weights_load(files, capsys, monkeypatch, name,
                                                                        components, message):
    monkeypatch.setattr(cli, "load_pipeline", never_load)
    monkeypatch.setattr(cli, "build_app", never_load)
    model = index_folder(files / "other", name, **components)
    write_dragbench(files / "data", {"cat/one": [[8, 8], [12, 8]]})
    for argv in (["edit", str(files / "in.png"), "--drag", "1,1:2,2", "-o", str(files / "o.png")],
                 ["dragbench", "run", "--data", str(files / "data"), "--out", str(files / "out")],
                 ["app"]):
        assert main([*argv, "--model", model, "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("fastdrag: error: --model ") and message in err
        assert "StableDiffusionXLPipeline" in err and "StableDiffusionPipeline" in err
    assert not (files / "out").exists()


def test_a_folder_without_an_index_is_left_to_the_load_to_report(files, capsys):
    """As before: the load says why (no model_index.json), in one line."""
    (files / "empty").mkdir()
    assert main(["edit", str(files / "in.png"), "--drag", "1,1:2,2", "-o", str(files / "o.png"),
                 "--model", str(files / "empty"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fastdrag: error: cannot load model") and "model_index.json" in err


# --------------------------------------------------------------------------------------------
# The tools on a (tiny) SDXL model
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return save_tiny_sdxl_model(tmp_path_factory.mktemp("sdxl") / "model")


def test_edit_runs_the_sdxl_pipeline_on_a_saved_sdxl_model(files, capsys, sdxl_model):
    out = files / "edited.png"
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", sdxl_model, "--device", "cpu",
                 "--prompt", "a cat", "-o", str(out)]) == 0
    assert Image.open(out).size == (IMAGE_SIZE, IMAGE_SIZE)
    assert "wrote" in capsys.readouterr().out


def test_edit_swaps_in_a_unet_on_an_sdxl_model(files, sdxl_model):
    from pathlib import Path

    out = files / "edited.png"
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", sdxl_model, "--device", "cpu",
                 "--unet", str(Path(sdxl_model) / "unet"), "--steps", "4", "-o", str(out)]) == 0
    assert Image.open(out).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_dragbench_run_edits_with_an_sdxl_model(tmp_path, sdxl_model):
    from fastdrag.apps.dragbench import read_results

    write_dragbench(tmp_path / "data", {"cat/one": [[10, 12], [16, 12]]})
    assert main(["dragbench", "run", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                 "--model", sdxl_model, "--device", "cpu", "--steps", "4", "--no-progress"]) == 0
    assert [r["status"] for r in read_results(tmp_path / "out").values()] == ["ok"]
    assert Image.open(tmp_path / "out" / "cat" / "one" / "dragged_image.png").size == (IMAGE_SIZE, IMAGE_SIZE)


def test_the_app_loads_an_sdxl_model_and_edits(monkeypatch, sdxl_model):
    from fastdrag import StableDiffusionXLFastDragPipeline
    from fastdrag.apps.app import PipelineHolder, Session, add_point, edit_session

    captured = {}
    monkeypatch.setattr(cli, "build_app", lambda holder, **kwargs: captured.setdefault("holder", holder))
    monkeypatch.setattr(cli, "launch", lambda demo, **kwargs: None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the server sets PIL's limit for its process
    assert main(["app", "--model", sdxl_model, "--device", "cpu"]) == 0
    holder: PipelineHolder = captured["holder"]
    session = Session(image=np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    add_point(session, 10, 12)
    add_point(session, 16, 12)
    result = edit_session(holder, session, EditOptions(num_inference_steps=4))
    assert isinstance(holder.get(), StableDiffusionXLFastDragPipeline)
    assert result.image.shape == (32, 32, 3) and not result.reused
    assert edit_session(holder, session, EditOptions(num_inference_steps=4)).reused


def test_edit_on_a_saved_sd_model_still_gets_the_sd_pipeline(files, monkeypatch):
    from fastdrag import StableDiffusionFastDragPipeline

    model = save_tiny_model(files / "sd")
    loaded = []
    real_load = cli.load_pipeline

    def load(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(cli, "load_pipeline", load)
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", model, "--device", "cpu",
                 "--steps", "4", "-o", str(files / "o.png")]) == 0
    assert type(loaded[0]) is StableDiffusionFastDragPipeline
    assert Image.open(files / "o.png").size == (IMAGE_SIZE, IMAGE_SIZE)


# --------------------------------------------------------------------------------------------
# One options type
# --------------------------------------------------------------------------------------------


def test_pipeline_kwargs_are_the_pipelines_and_an_inversion_brings_its_own_schedule():
    import inspect

    from fastdrag import StableDiffusionFastDragPipeline

    options = EditOptions(prompt="a cat", num_inference_steps=8, inversion_strength=0.5, guidance_scale=2.0,
                          fill="noise", mode="move", preserve_consistency=False, seed=3, max_drags=4,
                          max_image_pixels=100)
    kwargs = options.pipeline_kwargs()
    call = inspect.signature(StableDiffusionFastDragPipeline.__call__).parameters
    invert = inspect.signature(StableDiffusionFastDragPipeline.invert).parameters
    assert set(kwargs) <= set(call) and set(options.inversion_kwargs()) <= set(invert)
    assert kwargs["generator"].initial_seed() == 3 and kwargs["guidance_scale"] == 2.0 and kwargs["mode"] == "move"
    assert EditOptions().pipeline_kwargs()["generator"] is None
    cached = options.pipeline_kwargs(inversion="an inversion")
    assert cached["inversion"] == "an inversion"
    assert not {"prompt", "num_inference_steps", "inversion_strength"} & set(cached)
    # the defaults are the pipeline's own
    defaults = {name: call[name].default for name in ("fill", "mode", "preserve_consistency", "guidance_scale",
                                                      "max_image_pixels", "max_drags")}
    assert {name: getattr(EditOptions(), name) for name in defaults} == defaults


def test_the_cli_passes_its_options_to_the_pipeline(files, monkeypatch):
    calls = []

    class Recording:
        vae_scale_factor = 2

        def to(self, device):
            return self

        def timing_phases(self):
            import contextlib

            return contextlib.nullcontext({})

        def __call__(self, image, **kwargs):
            calls.append(kwargs)

            class Out:
                images = [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))]

            return Out()

    monkeypatch.setattr(cli, "load_pipeline", lambda *args, **kwargs: Recording())
    model = save_tiny_model(files / "sd")
    assert main(["edit", str(files / "in.png"), "--drag", "10,12:16,12", "--model", model, "--device", "cpu",
                 "--prompt", "a dog", "--steps", "6", "--strength", "0.5", "--guidance", "3", "--fill", "noise",
                 "--no-consistency", "--seed", "7", "--max-drags", "9", "--max-pixels", "5000",
                 "-o", str(files / "o.png")]) == 0
    kwargs = calls[0]
    assert kwargs["generator"].initial_seed() == 7
    # The drags as the command line checked them: (K, 2) image (x, y).
    assert kwargs.pop("handle_points").tolist() == [[10.0, 12.0]]
    assert kwargs.pop("target_points").tolist() == [[16.0, 12.0]]
    assert {k: v for k, v in kwargs.items() if k != "generator"} == dict(
        mask=None, prompt="a dog",
        num_inference_steps=6, inversion_strength=0.5, guidance_scale=3.0, fill="noise", mode="drag",
        preserve_consistency=False, max_image_pixels=5000, max_drags=9,
    )


@pytest.mark.parametrize("guidance", ["101", "-1", "nan"])
def test_a_guidance_out_of_range_is_one_line_before_loading(files, capsys, monkeypatch, guidance):
    monkeypatch.setattr(cli, "load_pipeline", never_load)
    assert main(["edit", str(files / "in.png"), "--drag", "1,1:2,2", "-o", str(files / "o.png"),
                 "--model", str(files), "--guidance", guidance]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--guidance must be a number with 0 <= --guidance <= 100" in err


def test_the_guidance_bound_is_the_pipelines(pipe):
    from fastdrag.inputs import MAX_GUIDANCE_SCALE as MAX_GUIDANCE  # the CLI's --guidance checks against it too

    drag = dict(handle_points=[(10, 12)], target_points=[(16, 12)])
    with pytest.raises(ValueError, match=f"<= {MAX_GUIDANCE:g}, got {MAX_GUIDANCE + 0.5}"):
        pipe(tiny_image(), guidance_scale=MAX_GUIDANCE + 0.5, **drag)


def test_a_dragbench_stamp_keeps_its_keys_and_records_guidance_only_when_set():
    from fastdrag.apps.dragbench import options_stamp

    assert options_stamp(EditOptions(prompt="ignored", max_image_pixels=7)) == dict(
        num_inference_steps=10, inversion_strength=0.7, fill="bnni", preserve_consistency=True, seed=None,
        mode="drag", max_drags=256,
    )
    assert options_stamp(EditOptions(guidance_scale=2.0))["guidance_scale"] == 2.0
