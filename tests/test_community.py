"""The one-file community pipeline: generated, never stale, and loadable as Diffusers loads
``custom_pipeline="fastdrag"``."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.utils import dynamic_modules_utils
from tiny_models import tiny_components, tiny_image

import fastdrag
from fastdrag import StableDiffusionFastDragPipeline


ROOT = Path(fastdrag.__file__).resolve().parent
COMMUNITY = ROOT / "community" / "fastdrag.py"
TOOL = ROOT / "tools" / "make_community_pipeline.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("make_community_pipeline", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_community_files_are_not_stale():
    # Diffusers' `make fix-copies` check, for our one-file pipelines: rerun the tool after any change.
    tool = load_tool()
    assert [entry.output.name for entry in tool.ENTRIES] == ["fastdrag.py", "fastdrag_sdxl.py"]
    for entry in tool.ENTRIES:
        assert entry.output.read_text() == tool.render(entry), "run: python tools/make_community_pipeline.py"
    done = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_community_file_stands_alone_with_one_pipeline_class():
    tree = ast.parse(COMMUNITY.read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastdrag")]
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    assert "StableDiffusionFastDragPipeline" in classes
    assert dynamic_modules_utils.get_relative_imports(str(COMMUNITY)) == []


def test_community_file_shows_community_users_what_they_have():
    # A community user has Diffusers, not this package: not even the examples may import it.
    text = COMMUNITY.read_text()
    assert "fastdrag import" not in text and "import fastdrag" not in text
    namespace = {}
    exec(compile(ast.Module([node for node in ast.parse(text).body if isinstance(node, ast.Assign)
                             and [getattr(t, "id", None) for t in node.targets] == ["EXAMPLE_DOC_STRING"]], []),
                 "example", "exec"), namespace)
    assert 'DiffusionPipeline.from_pretrained(' in namespace["EXAMPLE_DOC_STRING"]
    assert 'custom_pipeline="fastdrag"' in namespace["EXAMPLE_DOC_STRING"]
    assert text.startswith("# Copyright") and "Apache License, Version 2.0" in text.split('"""')[0]


def file_diffusers_asks_for(releases: list[str], custom_revision: str | None) -> str:
    """The community-mirror file that ``custom_pipeline="fastdrag"`` makes the installed Diffusers
    download, derived as ``dynamic_modules_utils.get_cached_module_file`` derives it: the installed
    version's folder ``v<major.minor.patch>`` when that is a published release, else ``main``;
    ``custom_revision`` picks a release's folder or ``main`` instead."""
    import diffusers

    installed = ".".join(diffusers.__version__.split(".")[:3])
    if custom_revision is None:
        revision = f"v{installed}" if installed in releases else "main"
    else:
        revision = f"v{custom_revision}" if custom_revision in releases else custom_revision
    return f"{revision}/fastdrag.py"


@pytest.mark.parametrize(
    "released, custom_revision",
    [(True, None), (False, None), (True, "main")],
    ids=["a-release", "a-dev-build", "custom_revision-main"],
)
def test_custom_pipeline_fastdrag_loads_the_file_diffusers_asks_for(tmp_path, monkeypatch, released, custom_revision):
    import diffusers

    model = tmp_path / "sd"
    StableDiffusionPipeline(**tiny_components()).save_pretrained(model)
    installed = ".".join(diffusers.__version__.split(".")[:3])
    releases = ["0.1.0", installed] if released else ["0.1.0"]
    expected = file_diffusers_asks_for(releases, custom_revision)
    asked = []

    def community_mirror(repo_id, filename, repo_type=None, **kwargs):
        asked.append(filename)
        # Only the generated file, and only under the name this Diffusers derives: anything else
        # is what users would get, an error.
        assert repo_id == dynamic_modules_utils.COMMUNITY_PIPELINES_MIRROR_ID and repo_type == "dataset"
        assert filename == expected, f"Diffusers asked for {filename}, not {expected}"
        return str(COMMUNITY)

    monkeypatch.setattr(dynamic_modules_utils, "hf_hub_download", community_mirror)
    monkeypatch.setattr(dynamic_modules_utils, "get_diffusers_versions", lambda: releases)
    monkeypatch.chdir(tmp_path)  # no local folder named "fastdrag"
    revision = {} if custom_revision is None else {"custom_revision": custom_revision}
    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="fastdrag", **revision)
    assert asked == [expected]
    assert expected == (f"v{installed}/fastdrag.py" if released and custom_revision is None else "main/fastdrag.py")
    assert type(pipe).__name__ == "StableDiffusionFastDragPipeline"
    assert type(pipe).__module__.startswith("diffusers_modules.")
    package = StableDiffusionFastDragPipeline.from_pretrained(model)
    for pipeline in (pipe, package):
        pipeline.set_progress_bar_config(disable=True)
    args = dict(handle_points=[(10, 12)], target_points=[(16, 12)], prompt="a cat", output_type="np")
    np.testing.assert_array_equal(pipe(tiny_image(), **args).images, package(tiny_image(), **args).images)


def test_the_community_file_as_a_hub_repos_pipeline_py(tmp_path, monkeypatch):
    import types

    model = tmp_path / "sd"
    StableDiffusionPipeline(**tiny_components()).save_pretrained(model)

    def hub(repo_id, filename, **kwargs):
        assert repo_id == "someone/fastdrag" and filename == "pipeline.py"
        return str(COMMUNITY)

    monkeypatch.setattr(dynamic_modules_utils, "hf_hub_download", hub)
    monkeypatch.setattr(dynamic_modules_utils, "model_info", lambda *a, **k: types.SimpleNamespace(sha="0" * 40))
    monkeypatch.chdir(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(model, custom_pipeline="someone/fastdrag", trust_remote_code=True)
    assert type(pipe).__name__ == "StableDiffusionFastDragPipeline"
