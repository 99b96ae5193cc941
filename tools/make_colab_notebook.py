"""Write ``examples/fastdrag_colab.ipynb`` from the cells below (the notebook is not edited by hand).

    python tools/make_colab_notebook.py

The tests execute the notebook headless against a tiny model by replacing its parameter cell, so
it runs in CI and cannot go stale.
"""

from __future__ import annotations

from pathlib import Path

import nbformat


OUTPUT = Path(__file__).resolve().parent.parent / "examples" / "fastdrag_colab.ipynb"

CELLS = [
    ("markdown", """# FastDrag: drag anything in one step

[FastDrag](https://arxiv.org/abs/2405.15769) (NeurIPS 2024) as a Diffusers pipeline. Give an image, a
mask of what may move, and a drag (handle → target): the pipeline inverts the image once, warps the
inverted latent, and samples it back.

In Colab, pick a GPU runtime (*Runtime → Change runtime type*). The model id is a parameter below."""),
    ("code", """# Parameters
MODEL_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # any Stable Diffusion 1.x model (Hub id or folder)
PROMPT = "a red ball on a blue floor"
SIZE = 512  # image side in pixels, a multiple of 8
INSTALL = True  # pip-install the pipeline first (Colab); False where it is installed
PACKAGE = "diffusers-fastdrag"  # what to pip-install: the package, a git URL or a local checkout"""),
    ("code", """if INSTALL:
    %pip install -q {PACKAGE}"""),
    ("markdown", "## Load the pipeline"),
    ("code", """import torch
from fastdrag import StableDiffusionFastDragPipeline

device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else torch.float32
pipe = StableDiffusionFastDragPipeline.from_pretrained(MODEL_ID, torch_dtype=dtype).to(device)
if device == "cuda":
    pipe.enable_cuda_graphs()  # later edits replay CUDA graphs
pipe.set_progress_bar_config(disable=True)"""),
    ("markdown", "## An image, a mask and a drag\n\nPoints are image pixels `(x, y)`. The mask is white where content may move."),
    ("code", """from PIL import Image, ImageDraw

def disc(draw, centre, radius, fill):
    x, y = centre
    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)

image = Image.new("RGB", (SIZE, SIZE), (40, 70, 160))
disc(ImageDraw.Draw(image), (0.4 * SIZE, 0.5 * SIZE), 0.12 * SIZE, (220, 40, 40))
mask = Image.new("L", (SIZE, SIZE), 0)
disc(ImageDraw.Draw(mask), (0.45 * SIZE, 0.5 * SIZE), 0.3 * SIZE, 255)
handle, target = (0.4 * SIZE, 0.5 * SIZE), (0.55 * SIZE, 0.45 * SIZE)"""),
    ("markdown", "## The pixel preview (instant, no model)"),
    ("code", """from fastdrag.apps.frontend import draw_arrows, preview_drag

preview = preview_drag(image, mask, [handle], [target])
draw_arrows(preview, [(handle, target)])"""),
    ("markdown", "## The edit"),
    ("code", """edited = pipe(image, handle_points=[handle], target_points=[target], mask=mask, prompt=PROMPT).images[0]
edited"""),
    ("markdown", "## Re-drag without inverting again\n\n`pipe.invert` keeps the inversion; each drag from it runs only the warp and the sampling half."),
    ("code", """inversion = pipe.invert(image, prompt=PROMPT)
further = (0.65 * SIZE, 0.4 * SIZE)
again = pipe(handle_points=[handle], target_points=[further], mask=mask, inversion=inversion).images[0]
again"""),
    ("markdown", "## Before and after"),
    ("code", """def side_by_side(*images):
    row = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)), "white")
    x = 0
    for im in images:
        row.paste(im, (x, 0))
        x += im.width
    return row

side_by_side(draw_arrows(image, [(handle, target)]), edited, again)"""),
]


def build() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": []},
    })
    for kind, source in CELLS:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        if source.startswith("# Parameters"):
            cell.metadata["tags"] = ["parameters"]
        notebook.cells.append(cell)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"  # stable ids: the file only changes when a cell does
    return notebook


if __name__ == "__main__":
    nbformat.write(build(), OUTPUT)
    print(f"wrote {OUTPUT.name}")
