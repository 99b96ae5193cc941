"""Every way a Diffusers user loads the pipeline, on tiny models saved to disk, offline."""

import importlib.metadata
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMInverseScheduler,
    DiffusionPipeline,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import dynamic_modules_utils
from tiny_models import tiny_components, tiny_image, tiny_unet

import fastdrag
from fastdrag import StableDiffusionFastDragPipeline


ROOT = Path(fastdrag.__file__).resolve().parent
# The pipeline's sibling modules: each imported directly by every entry file (Diffusers copies only
# those), so that they may import each other.
SIBLINGS = ("warpage", "attention_processors", "cuda_graphs", "fastdrag_core", "inputs", "timing")
ENTRY_FILES = ("pipeline.py", "pipeline_fastdrag.py", *(f"{name}.py" for name in SIBLINGS))


def run(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(tiny_image(), [(10, 12)], [(16, 12)], prompt="a cat", output_type="np").images


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> str:
    """A Stable Diffusion 1.5-style model folder: StableDiffusionPipeline, PNDM scheduler."""
    directory = tmp_path_factory.mktemp("tiny-sd15")
    pndm = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
        set_alpha_to_one=False, steps_offset=1,
    )
    StableDiffusionPipeline(**tiny_components(scheduler=pndm)).save_pretrained(directory)
    return str(directory)


def test_installed_package_import():
    assert importlib.metadata.version("diffusers-fastdrag") == fastdrag.__version__
    assert fastdrag.StableDiffusionFastDragPipeline is StableDiffusionFastDragPipeline


def test_from_pretrained_of_a_stable_diffusion_folder(sd_dir):
    pipe = StableDiffusionFastDragPipeline.from_pretrained(sd_dir)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.ddim_inverse_scheduler.config.steps_offset == 1
    assert run(pipe).shape == (1, 32, 32, 3)


def test_local_custom_pipeline_file(sd_dir, tmp_path):
    # A checkout copied elsewhere, as a user would have it; Diffusers copies the entry file and
    # its direct relative imports.
    for name in ENTRY_FILES:
        shutil.copy(ROOT / name, tmp_path / name)
    pipe = DiffusionPipeline.from_pretrained(
        sd_dir, custom_pipeline=str(tmp_path / "pipeline_fastdrag.py"), trust_remote_code=True
    )
    assert type(pipe).__name__ == "StableDiffusionFastDragPipeline"
    assert type(pipe).__module__.startswith("diffusers_modules.")
    np.testing.assert_array_equal(run(pipe), run(StableDiffusionFastDragPipeline.from_pretrained(sd_dir)))


def test_hub_repo_custom_pipeline(sd_dir, tmp_path, monkeypatch):
    repo = tmp_path / "hub-repo"
    repo.mkdir()
    for name in ENTRY_FILES:
        shutil.copy(ROOT / name, repo / name)
    fetched = []

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        assert repo_id == "fastdrag-org/fastdrag"
        fetched.append(filename)
        return str(repo / filename)

    monkeypatch.setattr(dynamic_modules_utils, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(dynamic_modules_utils, "model_info", lambda *a, **k: types.SimpleNamespace(sha="0" * 40))
    monkeypatch.chdir(tmp_path)  # no local folder named like the repo id
    pipe = DiffusionPipeline.from_pretrained(sd_dir, custom_pipeline="fastdrag-org/fastdrag", trust_remote_code=True)
    assert type(pipe).__name__ == "StableDiffusionFastDragPipeline"
    assert set(fetched) == set(ENTRY_FILES)
    assert run(pipe).shape == (1, 32, 32, 3)


def test_from_pipe_shares_components_and_keeps_dtype(sd_dir):
    sd = StableDiffusionPipeline.from_pretrained(sd_dir, torch_dtype=torch.bfloat16)
    pipe = StableDiffusionFastDragPipeline.from_pipe(sd)
    assert pipe.unet is sd.unet and pipe.vae is sd.vae and pipe.text_encoder is sd.text_encoder
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert isinstance(sd.scheduler, PNDMScheduler)  # the source pipeline is left as it was
    image = run(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_save_pretrained_and_reload(sd_dir, tmp_path):
    pipe = StableDiffusionFastDragPipeline.from_pretrained(sd_dir)
    pipe.save_pretrained(tmp_path / "saved")
    # No inverse scheduler was given: none is saved, and the reloaded pipeline derives the same one.
    assert not (tmp_path / "saved" / "inverse_scheduler").exists()
    reloaded = StableDiffusionFastDragPipeline.from_pretrained(tmp_path / "saved")
    assert reloaded.inverse_scheduler is None and reloaded.ddim_inverse_scheduler.config.steps_offset == 1
    np.testing.assert_array_equal(run(pipe), run(reloaded))

    # One that was given is saved and comes back.
    pipe.register_modules(inverse_scheduler=DDIMInverseScheduler.from_config(dict(pipe.ddim_inverse_scheduler.config)))
    pipe.save_pretrained(tmp_path / "with-inverse")
    assert (tmp_path / "with-inverse" / "inverse_scheduler" / "scheduler_config.json").exists()
    reloaded = StableDiffusionFastDragPipeline.from_pretrained(tmp_path / "with-inverse")
    assert reloaded.inverse_scheduler.config.steps_offset == 1
    np.testing.assert_array_equal(run(pipe), run(reloaded))


@pytest.mark.parametrize("time_cond_proj_dim", [None, 8], ids=["sd-unet", "lcm-unet"])
def test_swapped_unet(sd_dir, tmp_path, time_cond_proj_dim):
    # The authors' default: SD 1.5 with the UNet of an LCM checkpoint (time_cond_proj_dim set).
    tiny_unet(time_cond_proj_dim=time_cond_proj_dim, seed=1).save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    pipe = StableDiffusionFastDragPipeline.from_pretrained(sd_dir, unet=unet)
    assert pipe.unet is unet and pipe.unet.config.time_cond_proj_dim == time_cond_proj_dim
    swapped = run(pipe)
    assert not np.array_equal(swapped, run(StableDiffusionFastDragPipeline.from_pretrained(sd_dir)))


def test_relative_imports_stay_within_what_diffusers_copies():
    # Local loading copies only the entry file's direct relative imports: a sibling's own relative
    # imports must be among them.
    for name in SIBLINGS:
        assert set(dynamic_modules_utils.get_relative_imports(str(ROOT / f"{name}.py"))) <= set(SIBLINGS), name
    for entry in ("pipeline_fastdrag.py", "pipeline_fastdrag_sdxl.py"):
        assert set(dynamic_modules_utils.get_relative_imports(str(ROOT / entry))) == set(SIBLINGS), entry
    assert set(dynamic_modules_utils.get_relative_imports(str(ROOT / "pipeline.py"))) == {*SIBLINGS, "pipeline_fastdrag"}
    assert os.path.exists(ROOT / "pipeline.py")
