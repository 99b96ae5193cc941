import os
import sys


# The oracles and the tiny-model helpers live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
# Nothing in the tests may reach the Hub; a call that tries fails at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Diffusers copies custom pipeline files into its modules cache: keep that out of the home folder.
import tempfile  # noqa: E402


os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="fastdrag-hf-modules-"))

import pytest  # noqa: E402


@pytest.fixture
def files(tmp_path):
    """``in.png``, a tiny image, and ``mask.png``, its centre, in ``tmp_path``: the command line's inputs."""
    import numpy as np
    from PIL import Image
    from tiny_models import IMAGE_SIZE, tiny_image

    image = (tiny_image().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    mask[4:28, 4:28] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path


@pytest.fixture
def pipe():
    from tiny_models import tiny_components

    from fastdrag import StableDiffusionFastDragPipeline

    pipeline = StableDiffusionFastDragPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip without a CUDA device; ``benchmarks/gpu_suite.py`` selects them
    by the mark (``-m cuda``) on a GPU machine."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
