"""The Colab notebook runs, headless, against a tiny model: it cannot go stale."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from tiny_models import save_tiny_model

import fastdrag


ROOT = Path(fastdrag.__file__).resolve().parent
NOTEBOOK = ROOT / "examples" / "fastdrag_colab.ipynb"


def test_the_colab_notebook_runs_end_to_end_on_a_tiny_model(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1 and "MODEL_ID" in parameters[0].source
    model = save_tiny_model(tmp_path / "model")
    parameters[0].source = f'MODEL_ID = "{model}"\nPROMPT = "a red ball"\nSIZE = 32\nINSTALL = False\nPACKAGE = ""'
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    images = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
    ]
    assert len(images) == 4  # the preview, the edit, the re-drag, before and after
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []


def test_the_notebook_file_is_what_the_tool_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_colab_notebook", ROOT / "tools" / "make_colab_notebook.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert nbformat.read(NOTEBOOK, as_version=4) == tool.build(), "run: python tools/make_colab_notebook.py"
