"""The ``fastdrag`` command line: ``preview`` (no model, instant) and ``edit`` (the pipeline)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

EXAMPLES = """examples:
  fastdrag preview cat.png --drag 250,180:290,160 --mask cat_mask.png --arrows -o preview.png
  fastdrag edit cat.png --drag 250,180:290,160 --mask cat_mask.png --prompt "a cat" -o edited.png
  fastdrag edit cat.png --drag 250,180:290,160 --unet SimianLuo/LCM_Dreamshaper_v7 -o edited.png

Points are image pixels (x, y): x the column, y the row. Repeat --drag for several drags.
"""

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class UsageError(Exception):
    """An error the user caused: reported as one line, exit code 2."""


def parse_drag(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """``"X,Y:X,Y"`` -> ``((x, y), (x, y))``, handle then target."""
    try:
        handle, target = text.split(":")
        hx, hy = (float(v) for v in handle.split(","))
        tx, ty = (float(v) for v in target.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--drag must look like X,Y:X,Y (handle:target, pixels), got {text!r}") from None
    return (hx, hy), (tx, ty)


def open_image(path: str, mode: str):
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise UsageError(f"no such file: {path}")
    try:
        return Image.open(path).convert(mode)
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from error


def draw_arrows(image, drags):
    """Red handle, blue target, a white line between, numbered from 1."""
    from PIL import ImageDraw

    image = image.copy()
    draw = ImageDraw.Draw(image)
    radius = max(2, min(image.size) // 100)
    for number, ((hx, hy), (tx, ty)) in enumerate(drags, start=1):
        draw.line([(hx, hy), (tx, ty)], fill=(255, 255, 255), width=max(1, radius // 2))
        draw.ellipse([hx - radius, hy - radius, hx + radius, hy + radius], fill=(230, 40, 40))
        draw.ellipse([tx - radius, ty - radius, tx + radius, ty + radius], fill=(40, 90, 230))
        draw.text((hx + radius + 1, hy + radius + 1), str(number), fill=(255, 255, 255))
    return image


def run_preview(args) -> None:
    from .warpage import preview_drag

    image = open_image(args.image, "RGB")
    mask = open_image(args.mask, "L") if args.mask else None
    handles, targets = [d[0] for d in args.drag], [d[1] for d in args.drag]
    try:
        out = preview_drag(image, mask, handles, targets)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if args.arrows:
        out = draw_arrows(out, args.drag)
    out.save(args.output)
    print(f"wrote {args.output}")


def pick_device_and_dtype(device: str, dtype: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") else "float32"
    return torch.device(device), getattr(torch, dtype)


def load_pipeline(model: str, unet: str | None, dtype):
    from diffusers import UNet2DConditionModel

    from .pipeline_fastdrag import StableDiffusionFastDragPipeline

    try:
        kwargs = {}
        if unet:
            subfolder = None if (Path(unet) / "config.json").is_file() else "unet"
            kwargs["unet"] = UNet2DConditionModel.from_pretrained(unet, subfolder=subfolder, dtype=dtype)
        return StableDiffusionFastDragPipeline.from_pretrained(model, dtype=dtype, **kwargs)
    except Exception as error:  # Hub, file and config errors all mean "cannot load this"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load model {unet or model!r}: {first_line}") from error


def run_edit(args) -> None:
    import torch

    image = open_image(args.image, "RGB")
    mask = open_image(args.mask, "L") if args.mask else None
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    start = time.perf_counter()
    pipe = load_pipeline(args.model, args.unet, dtype).to(device)
    loaded = time.perf_counter()
    generator = torch.Generator(device="cpu").manual_seed(args.seed) if args.seed is not None else None
    try:
        out = pipe(
            image,
            handle_points=[d[0] for d in args.drag],
            target_points=[d[1] for d in args.drag],
            mask=mask,
            prompt=args.prompt,
            num_inference_steps=args.steps,
            inversion_strength=args.strength,
            generator=generator,
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    done = time.perf_counter()
    out.images[0].save(args.output)
    print(f"load {loaded - start:.2f} s, edit {done - loaded:.2f} s on {device} ({dtype}); wrote {args.output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdrag", description="FastDrag: one-step drag-based image editing.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("image", help="input image")
        sub.add_argument("--drag", type=parse_drag, action="append", required=True, metavar="X,Y:X,Y",
                         help="handle:target in image pixels; repeat for several drags")
        sub.add_argument("--mask", help="mask image, white (nonzero) = may move; default: whole image")
        sub.add_argument("-o", "--output", required=True, help="output image")

    preview = commands.add_parser("preview", help="warp the pixels directly: no model, instant",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(preview)
    preview.add_argument("--arrows", action="store_true", help="draw the drags on the output")

    edit = commands.add_parser("edit", help="run the FastDrag pipeline", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    common(edit)
    edit.add_argument("--prompt", default="", help="text condition (default: empty)")
    edit.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id or folder (default: {DEFAULT_MODEL})")
    edit.add_argument("--unet", help="swap in this UNet (Hub id or folder), e.g. an LCM one")
    edit.add_argument("--steps", type=int, default=10, help="num_inference_steps (default 10)")
    edit.add_argument("--strength", type=float, default=0.7, help="inversion_strength (default 0.7)")
    edit.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda if available)")
    edit.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    edit.add_argument("--seed", type=int, help="seed for fill='noise' (unused by the default fill)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"preview": run_preview, "edit": run_edit}[args.command](args)
    except UsageError as error:
        print(f"fastdrag: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
