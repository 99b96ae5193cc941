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
def pipe():
    from tiny_models import tiny_components

    from fastdrag import StableDiffusionFastDragPipeline

    pipeline = StableDiffusionFastDragPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
