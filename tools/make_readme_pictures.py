"""Write the README's example and the pictures its first command makes (nothing here is drawn by hand).

- ``examples/drag_me.png``, ``examples/drag_me_mask.png``: ``fastdrag.apps.shapes.EXAMPLE_CASE`` rendered;
- ``docs/images/drag_me_drag.png``: the input with its drag drawn;
- ``docs/images/drag_me_edited.png``: the output of the README's first command, run on the CPU;
- ``docs/images/drag_me_truth.png``: the scene with the disc truly moved, for comparison.

The pictures are the 64x64 images enlarged 4x with no smoothing, to be seen in the README.

    python tools/make_readme_pictures.py

The tests run the README's command again and compare its output with ``drag_me_edited.png``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from fastdrag.apps.cli import main as fastdrag
from fastdrag.apps.frontend import draw_arrows
from fastdrag.apps.shapes import EXAMPLE_CASE, render, to_uint8


ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "drag_me.png"
MASK = ROOT / "examples" / "drag_me_mask.png"
MODEL = ROOT / "examples" / "shapes-model"
PICTURES = ROOT / "docs" / "images"
EDITED = PICTURES / "drag_me_edited.png"
SCALE = 4


def enlarge(image: Image.Image) -> Image.Image:
    return image.resize((image.width * SCALE, image.height * SCALE), Image.NEAREST)


def drag_argument() -> str:
    (hx, hy), (tx, ty) = EXAMPLE_CASE.handle, EXAMPLE_CASE.target
    return f"{hx:g},{hy:g}:{tx:g},{ty:g}"


def readme_command(output: Path) -> list[str]:
    """The README's first command (after ``fastdrag``), with paths from the repository root."""
    return ["edit", str(IMAGE), "--mask", str(MASK), "--drag", drag_argument(), "--model", str(MODEL),
            "--device", "cpu", "-o", str(output)]


def run_readme_command(output: Path) -> Image.Image:
    code = fastdrag(readme_command(output))
    if code:
        raise SystemExit(f"the README's command failed with exit code {code}")
    return Image.open(output).convert("RGB")


def main() -> None:
    Image.fromarray(to_uint8(render(EXAMPLE_CASE.scene))).save(IMAGE)
    Image.fromarray(EXAMPLE_CASE.mask.astype("uint8") * 255).save(MASK)
    PICTURES.mkdir(exist_ok=True)
    drag = tuple((x * SCALE + SCALE / 2, y * SCALE + SCALE / 2) for x, y in (EXAMPLE_CASE.handle, EXAMPLE_CASE.target))
    draw_arrows(enlarge(Image.open(IMAGE).convert("RGB")), [drag]).save(PICTURES / "drag_me_drag.png")
    enlarge(Image.fromarray(to_uint8(render(EXAMPLE_CASE.truth())))).save(PICTURES / "drag_me_truth.png")
    with tempfile.TemporaryDirectory() as folder:
        enlarge(run_readme_command(Path(folder) / "edited.png")).save(EDITED)
    print(f"wrote {IMAGE.name}, {MASK.name} and the pictures in {PICTURES}")


if __name__ == "__main__":
    main()
