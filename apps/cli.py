"""The ``fastdrag`` command line: ``preview`` (no model, instant) and ``edit`` (the pipeline)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..inputs import (
    DEFAULT_FILL,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_MODE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    EDIT_MODES,
    FILL_MODES,
    MAX_DRAGS,
    MAX_IMAGE_PIXELS,
    MAX_UPLOAD_PIXELS,
    check_edit_inputs,
    check_schedule,
    check_seed,
    short_repr,
)
from ..inputs import open_image as open_image_file
from .app import DEFAULT_CACHE_MIB, DEFAULT_MAX_SIDE, MIN_MAX_SIDE, PipelineHolder, build_app, launch
from .compat import from_pretrained_dtype
from .frontend import draw_arrows, first_line, format_phases, preview_edit, to_rgb_array
from .shapes import SHAPEDRAG_COUNT, SHAPEDRAG_SEED


EXAMPLES = """examples:
  fastdrag preview cat.png --drag 250,180:290,160 --mask cat_mask.png --arrows -o preview.png
  fastdrag edit cat.png --drag 250,180:290,160 --mask cat_mask.png --prompt "a cat" -o edited.png
  fastdrag edit cat.png --drag 250,180:290,160 --unet SimianLuo/LCM_Dreamshaper_v7 -o edited.png
  fastdrag edit cat.png --drag 250,180:330,180 --mask cat_mask.png --mode move -o moved.png
  fastdrag dragbench run --data drag_bench_data --out results/fastdrag
  accelerate launch --multi_gpu --num_processes 4 -m fastdrag dragbench run --data drag_bench_data --out results/fastdrag
  fastdrag dragbench eval --data drag_bench_data --results results/fastdrag
  fastdrag shapedrag make --out shapedrag && fastdrag dragbench run --model examples/shapes-model --data shapedrag --out results/shapes
  fastdrag shapedrag eval --data shapedrag --results results/shapes

Points are image pixels (x, y): x the column, y the row. Repeat --drag for several drags.
"""

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# Stable Diffusion's training steps: the bound on --steps when a model's scheduler config cannot be read.
DEFAULT_TRAIN_STEPS = 1000


class UsageError(Exception):
    """An error the user caused: reported as one line, exit code 2."""


def at_least(value: float, low: float, option: str) -> None:
    """A :class:`UsageError` unless the number option ``option`` is at least ``low``."""
    if value < low:
        raise UsageError(f"{option} must be at least {low}, got {value}")


def run_script(main: Callable[[], Any], prog: str) -> int:
    """Run a script's ``main``: a :class:`UsageError` it raises is one line on stderr and exit 2, as
    argparse does for the options it checks itself."""
    try:
        main()
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


def parse_drag(text: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """``"X,Y:X,Y"`` -> ``((x, y), (x, y))``, handle then target."""
    try:
        handle, target = text.split(":")
        hx, hy = (float(v) for v in handle.split(","))
        tx, ty = (float(v) for v in target.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--drag must look like X,Y:X,Y (handle:target, pixels), got {text!r}") from None
    return (hx, hy), (tx, ty)


def open_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS):
    """The image file at ``path``, loaded in its own mode (the pipeline reads every mode by value),
    turned upright by its EXIF orientation; one with more than ``max_pixels`` pixels is refused
    from its header, before it is decoded (``inputs.open_image``)."""
    from PIL import UnidentifiedImageError

    if not Path(path).is_file():
        raise UsageError(f"no such file: {path}")
    try:
        return open_image_file(path, max_pixels, f"raise the limit with --max-pixels (now {max_pixels})")
    except ValueError as error:
        raise UsageError(str(error)) from error
    except (UnidentifiedImageError, OSError) as error:
        raise UsageError(f"cannot read image {path}: {error}") from error


def writes_rgb(format_name: str) -> bool:
    """Whether PIL writes an RGB image in ``format_name``: tried on a 1x1 image in memory.

    ``Image.registered_extensions()`` also lists formats PIL only reads (MPEG, PSD), and ``Image.SAVE``
    stub formats whose writer is not installed (HDF5, GRIB) and formats of other modes only (MSP):
    a trial write is the one test that covers all of them.
    """
    import io

    from PIL import Image

    if format_name not in Image.SAVE:
        return False
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=format_name)
    except Exception:  # noqa: BLE001 - any failure means "cannot write an edit in this format"
        return False
    return True


def check_output(path: str) -> None:
    """``-o``: not a folder, its folder exists and is writable, and its extension names an image
    format PIL writes."""
    from PIL import Image

    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise UsageError(f"-o {path} is a folder: give a file name, such as {target / 'edited.png'}")
    if not folder.is_dir():
        raise UsageError(f"-o {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"-o {path}: cannot write in {folder}")
    Image.init()  # registers every plugin's extensions, not only the common ones
    format_name = Image.registered_extensions().get(target.suffix.lower())
    if format_name is None:
        raise UsageError(f"-o {path}: unknown image format {target.suffix or '(no extension)'!r}; use .png, .jpg, .webp, ...")
    if not writes_rgb(format_name):
        raise UsageError(f"-o {path}: PIL cannot write {target.suffix!r} ({format_name}) images; use .png, .jpg, .webp, ...")


def check_seed_option(seed: int | None) -> None:
    """``--seed``: torch's range, before any model loads."""
    if seed is not None:
        try:
            check_seed(seed, "--seed")
        except ValueError as error:
            raise UsageError(str(error)) from error


def read_inputs(args):
    """``(image, mask, edit)`` from the command line: the files as opened, and the edit checked and
    converted once (``inputs.EditInputs``), without a model."""
    at_least(args.max_pixels, 1, "--max-pixels")
    at_least(args.max_drags, 1, "--max-drags")
    image = open_image(args.image, args.max_pixels)
    mask = open_image(args.mask, args.max_pixels) if args.mask else None
    handles, targets = [d[0] for d in args.drag], [d[1] for d in args.drag]
    try:
        edit = check_edit_inputs(
            image, handles, targets, mask, args.mode, getattr(args, "fill", DEFAULT_FILL),
            max_image_pixels=args.max_pixels, max_drags=args.max_drags,
            how_to_raise=(f"raise the limit with --max-pixels (now {args.max_pixels})",
                          f"raise the limit with --max-drags (now {args.max_drags})"),
        )
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    return image, mask, edit


def run_preview(args) -> None:
    check_output(args.output)
    from PIL import Image

    _, _, edit = read_inputs(args)
    out = Image.fromarray(to_rgb_array(preview_edit(edit)))
    if args.arrows:
        out = draw_arrows(out, args.drag)
    out.save(args.output)
    print(f"wrote {args.output}")


def pick_device_and_dtype(device: str, dtype: str):
    """``--device`` and ``--dtype`` resolved (``auto``: CUDA in fp16 when there is one, else the CPU
    in fp32); a device this torch cannot use is a :class:`UsageError`."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:1, mps, ...)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this torch has no CUDA (a CPU build, or no GPU visible); use --device cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    if resolved.type == "meta":
        raise UsageError(f"--device {device}: the meta device holds no values, nothing can run on it; use --device cpu")
    if resolved.type not in ("cpu", "cuda", "mps"):
        # xpu, hpu, ...: usable only when this torch has that backend and a device of it.
        backend = getattr(torch, resolved.type, None)
        if backend is None or not callable(getattr(backend, "is_available", None)) or not backend.is_available():
            raise UsageError(f"--device {device}: this torch cannot use {resolved.type} devices here; use --device cpu")
    if dtype == "auto":
        dtype = "float16" if resolved.type == "cuda" else "float32"
    return resolved, getattr(torch, dtype)


def looks_like_a_path(name: str) -> bool:
    """A model name that can only be a folder (a Hub id is ``owner/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def why_not_loaded(name: str, error: BaseException) -> str:
    """One line saying why ``name`` could not be loaded, in terms a shell user can act on."""
    # huggingface_hub.utils, not .errors: the latter has them only from huggingface_hub 0.24.
    from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled

    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if looks_like_a_path(name) and not Path(name).expanduser().exists():
        return f"cannot load model {name!r}: no such folder"
    offline = any(isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) for e in chain) or any(
        word in str(e) for e in chain for word in ("offline", "local_files_only", "Cannot find the requested files")
    )
    if offline:
        return (f"cannot load model {name!r}: it is not in the local Hugging Face cache and cannot be downloaded "
                "(offline, or HF_HUB_OFFLINE=1); download it once with a connection, or pass a local folder")
    text = first_line(error)
    return f"cannot load model {name!r}: {text if len(text) <= 200 else text[:197] + '...'}"


def model_config(model: str, component: str, local_files_only: bool) -> dict:
    """The config of ``model``'s ``component`` (``"vae"`` or ``"scheduler"``) alone, no weights; ``{}``
    if it cannot be read (then loading the model says why)."""
    from diffusers import AutoencoderKL, DDIMScheduler

    reader = {"vae": AutoencoderKL, "scheduler": DDIMScheduler}[component]
    try:
        return reader.load_config(model, subfolder=component, local_files_only=local_files_only)
    except Exception:  # noqa: BLE001 - then the model load reports it properly
        return {}


def check_schedule_options(args, model_offline: bool) -> None:
    """``--steps`` and ``--strength`` against the model's scheduler (SD's 1000 training steps when its
    config cannot be read), before the model loads: the same checks as the pipeline's, on schedulers
    built from the config alone."""
    config = model_config(args.model, "scheduler", model_offline) if args.model else {}
    try:
        steps = check_schedule(args.steps, args.strength, config.get("num_train_timesteps", DEFAULT_TRAIN_STEPS))
        if config:
            from diffusers import DDIMScheduler

            from ..fastdrag_core import ddim_scheduler_from, inverse_scheduler_from, schedule_timesteps

            scheduler = ddim_scheduler_from(DDIMScheduler.from_config(config))
            schedule_timesteps(scheduler, inverse_scheduler_from(scheduler), args.steps, steps)
    except ValueError as error:
        raise UsageError(str(error)) from error


def check_guidance_option(guidance: float) -> None:
    """``--guidance``: the pipeline's range, before any model loads."""
    from ..inputs import MAX_GUIDANCE_SCALE, check_real

    try:
        check_real(guidance, "--guidance", 0.0, MAX_GUIDANCE_SCALE)
    except ValueError as error:
        raise UsageError(str(error).replace("`", "")) from error


def check_pipeline_options(args) -> bool:
    """What ``edit`` and ``dragbench run`` pass to the pipeline, checked before it loads: the seed, the
    guidance, the model (see :func:`check_model_sources`, whose answer this returns) and the schedule."""
    check_seed_option(args.seed)
    check_guidance_option(args.guidance)
    offline = check_model_sources(args)
    check_schedule_options(args, offline)
    return offline


def check_server_options(args) -> None:
    """The editor's numbers: a port it can bind, a size it can fit images to, a cache of whole MiB."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be an integer from 1 to 65535, got {args.port}")
    at_least(args.max_side, MIN_MAX_SIDE, "--max-side")
    at_least(args.cache, 0, "--cache")
    at_least(args.max_pixels, 1, "--max-pixels")


def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached now, or ``None`` when it may be.

    ``HF_HUB_OFFLINE`` says so at once; otherwise one TCP connection to the Hub's endpoint, at most
    2 s, instead of the Hub client's retries (half a minute) before the same answer. Behind a proxy
    a direct connection proves nothing, so there the Hub is taken as reachable.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=2).close()
    except OSError as error:
        return f"no connection to {endpoint.hostname}: {error.strerror or error}"
    return None


def check_model_source(name: str, option: str, hub_files: tuple[str, ...], unreachable: str | None) -> None:
    """``--model`` / ``--unet`` before any weights load: an existing folder, or a Hub id that is in the
    local cache (any of ``hub_files`` in it) or can be downloaded; otherwise a :class:`UsageError`."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(name).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise UsageError(f"{option} {name}: a file, not a model folder")
    # A name whose first part is a folder here is a mistyped path, not a Hub id.
    if looks_like_a_path(name) or Path(name.split("/")[0]).expanduser().is_dir():
        raise UsageError(f"{option} {name}: no such folder")
    try:
        validate_repo_id(name)
    except HFValidationError:
        raise UsageError(f"{option} {name!r}: neither a folder nor a Hub id (owner/name)") from None
    if unreachable and not any(isinstance(try_to_load_from_cache(name, f), str) for f in hub_files):
        raise UsageError(f"{option} {name}: not in the local Hugging Face cache, and the Hub cannot be reached "
                         f"({unreachable}); download it once with a connection, or pass a local folder")


def check_model_sources(args) -> bool:
    """Check ``--model`` and ``--unet`` (see :func:`check_model_source`), and that ``--model`` is a
    pipeline FastDrag edits with (:func:`fastdrag_pipeline_name`); True when they must load from the local
    cache alone, as the Hub cannot be reached."""
    unreachable = None
    names = [args.model, *([args.unet] if args.unet else [])]
    if not all(Path(name).expanduser().is_dir() for name in names):
        unreachable = hub_unreachable()
    check_model_source(args.model, "--model", ("model_index.json",), unreachable)
    if args.unet:
        check_model_source(args.unet, "--unet", ("unet/config.json", "config.json"), unreachable)
    fastdrag_pipeline_name(args.model, unreachable is not None)  # a pipeline FastDrag cannot edit with
    return unreachable is not None


# The pipelines FastDrag edits with, by the ``_class_name`` of a model's ``model_index.json``: the
# Diffusers pipelines whose components FastDrag's pipelines take as they are.
SD_PIPELINES = (
    "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
    "StableDiffusionFastDragPipeline", "LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline",
)
SDXL_PIPELINES = (
    "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLFastDragPipeline",
)


MAX_MODEL_INDEX_BYTES = 1 << 20  # Diffusers' own are under 1 KiB


def model_index(model: str, local_files_only: bool) -> dict | None:
    """``model``'s ``model_index.json`` (a folder's, or a Hub id's, from the cache when
    ``local_files_only``), or ``None`` when it cannot be read: then loading the model says why."""
    import json

    path = Path(model).expanduser() / "model_index.json"
    try:
        if not path.parent.is_dir():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, "model_index.json", local_files_only=local_files_only))
        # A regular file of a sane size only: a FIFO would block forever, a huge file fill memory.
        if not path.is_file() or path.stat().st_size > MAX_MODEL_INDEX_BYTES:
            return None
        index = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - missing, unreadable, not JSON, not downloadable: the load reports it
        return None
    return index if isinstance(index, dict) else None


def pipeline_class_name(index: dict) -> str:
    """The pipeline class a ``model_index.json`` names (a custom pipeline's is ``[module, class]``)."""
    name = index.get("_class_name")
    if isinstance(name, (list, tuple)) and name:
        name = name[-1]
    # Shown in a one-line error when it is not one FastDrag takes: quoted, escaped and cut short.
    return name if isinstance(name, str) and name.isidentifier() and len(name) <= 100 else short_repr(name)


def fastdrag_pipeline_name(model: str, local_files_only: bool = False) -> str:
    """The name of the FastDrag pipeline class for ``model`` (a folder or a Hub id), from its
    ``model_index.json``, no weights read and no pipeline imported: Stable Diffusion XL pipelines ->
    ``StableDiffusionXLFastDragPipeline``, Stable Diffusion 1.x/2.x ones (and SD-shaped LCM ones) ->
    ``StableDiffusionFastDragPipeline``. Any other pipeline is a :class:`UsageError` naming it. A model
    whose index cannot be read gets the SD pipeline, whose loading then says why it cannot load."""
    index = model_index(model, local_files_only)
    if index is None:
        return "StableDiffusionFastDragPipeline"
    name = pipeline_class_name(index)
    if name in SDXL_PIPELINES:
        return "StableDiffusionXLFastDragPipeline"
    if name in SD_PIPELINES and "text_encoder_2" not in index:  # an LCM of SDXL has two text encoders
        return "StableDiffusionFastDragPipeline"
    shape = " (with two text encoders)" if name in SD_PIPELINES else ""
    raise UsageError(f"--model {model} is a {name}{shape}: FastDrag edits with Stable Diffusion 1.x/2.x "
                     f"({', '.join(SD_PIPELINES[:3])}, ...) and SDXL ({', '.join(SDXL_PIPELINES[:3])}, ...) models")


def pipeline_class_for(model: str, local_files_only: bool = False) -> type:
    """The FastDrag pipeline class that loads ``model`` (see :func:`fastdrag_pipeline_name`): the one
    choice of every tool that loads a model (``edit``, ``dragbench run``, ``app``, the benchmarks)."""
    if fastdrag_pipeline_name(model, local_files_only) == "StableDiffusionXLFastDragPipeline":
        from ..pipeline_fastdrag_sdxl import StableDiffusionXLFastDragPipeline

        return StableDiffusionXLFastDragPipeline
    from ..pipeline_fastdrag import StableDiffusionFastDragPipeline

    return StableDiffusionFastDragPipeline


def load_pipeline(model: str, unet: str | None, dtype, local_files_only: bool = False):
    """The FastDrag pipeline of ``model`` (its class from :func:`pipeline_class_for`), with the UNet of
    ``unet`` (a folder or Hub id, a UNet's own or a pipeline's ``unet/``) swapped in when given."""
    from diffusers import UNet2DConditionModel

    pipeline_class = pipeline_class_for(model, local_files_only)
    name = model
    load = {**from_pretrained_dtype(dtype), "local_files_only": local_files_only}
    try:
        kwargs = {}
        if unet:
            name = unet
            subfolder = None if (Path(unet) / "config.json").is_file() else "unet"
            kwargs["unet"] = UNet2DConditionModel.from_pretrained(unet, subfolder=subfolder, **load)
            name = model
        return pipeline_class.from_pretrained(model, **load, **kwargs)
    except Exception as error:  # noqa: BLE001 - Hub, file and config errors all mean "cannot load this"
        raise UsageError(why_not_loaded(name, error)) from error


def load_on_device(args, device: str, local_files_only: bool = False):
    """The pipeline of ``--model``/``--unet`` on ``device`` (``"auto"``, ``"cuda"``, ...), with CUDA
    graphs on when it is a CUDA device, unless ``--no-cuda-graphs``."""
    device, dtype = pick_device_and_dtype(device, args.dtype)
    pipe = load_pipeline(args.model, args.unet, dtype, local_files_only).to(device)
    if device.type == "cuda" and not args.no_cuda_graphs:
        pipe.enable_cuda_graphs()
    return pipe


def edit_options(args):
    """The :class:`~fastdrag.apps.options.EditOptions` of ``edit`` and ``dragbench run`` (whose prompts
    come from the samples, and whose pixel limit is ``FASTDRAG_MAX_PIXELS``)."""
    from .options import EditOptions

    return EditOptions(
        prompt=getattr(args, "prompt", ""),
        num_inference_steps=args.steps,
        inversion_strength=args.strength,
        guidance_scale=args.guidance,
        fill=args.fill,
        mode=args.mode,
        preserve_consistency=not args.no_consistency,
        seed=args.seed,
        max_drags=args.max_drags,
        max_image_pixels=getattr(args, "max_pixels", MAX_IMAGE_PIXELS),
    )


def run_edit(args) -> None:
    # Everything that needs no model is checked first: a typo costs seconds, not a model download.
    check_output(args.output)
    image, mask, edit = read_inputs(args)
    (height, width), handles, targets = edit.size, edit.handles, edit.targets
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    offline = check_pipeline_options(args)
    blocks = model_config(args.model, "vae", offline).get("block_out_channels")
    factor = 2 ** (len(blocks) - 1) if blocks else None
    if factor and (height % factor or width % factor):
        raise UsageError(f"{args.image} is {width}x{height}: its sides must be multiples of {factor} for this model")
    options = edit_options(args)
    start = time.perf_counter()
    pipe = load_pipeline(args.model, args.unet, dtype, offline).to(device)
    loaded = time.perf_counter()
    try:
        with pipe.timing_phases() as times:
            out = pipe(image, handle_points=handles, target_points=targets, mask=mask, **options.pipeline_kwargs())
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    done = time.perf_counter()
    out.images[0].save(args.output)
    print(f"load {loaded - start:.2f} s on {device} ({str(dtype).removeprefix('torch.')})")
    print(f"edit {done - loaded:.2f} s: {format_phases(times)}")
    print(f"wrote {args.output}")


def run_dragbench_run(args) -> int:
    from .dragbench import DiskFull, RunRefused, find_samples, max_image_pixels, meta_limits, run_dragbench

    at_least(args.max_drags, 1, "--max-drags")
    try:
        meta_limits()  # a bad FASTDRAG_MAX_META_MIB
        max_image_pixels()  # a bad FASTDRAG_MAX_PIXELS
        if not find_samples(args.data):
            raise UsageError(f"no DragBench samples (<category>/<sample>/meta_data.pkl) under {args.data}")
    except (FileNotFoundError, ValueError) as error:
        raise UsageError(str(error)) from error
    _, dtype = pick_device_and_dtype(args.device, args.dtype)  # a bad --device is reported before any work
    offline = check_pipeline_options(args)

    def load(process_device: str):
        return load_on_device(args, process_device, offline)

    config = {"model": args.model, "unet": args.unet, "dtype": str(dtype).removeprefix("torch.")}
    try:
        summary = run_dragbench(args.data, args.out, load, edit_options(args), progress=not args.no_progress,
                                device=args.device, config=config)
    except RunRefused as error:
        raise UsageError(str(error)) from error
    except DiskFull as error:  # a runtime failure, not a usage error: exit 1
        print(f"fastdrag: error: {error.strerror}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"{summary.total} samples: {summary.skipped} already done; results in {args.out}/results.jsonl")
    if summary.done or summary.failed:
        print(f"process {PartialState().process_index}: {summary.done} edited, {summary.failed} failed")
    if summary.failed:
        print(f"fastdrag: {summary.failed} sample(s) failed; their errors are in {args.out}/results.jsonl",
              file=sys.stderr)
        return 1
    return 0


def run_dragbench_eval(args) -> None:
    import torch

    from .metrics import DiftFeaturizer, evaluate, load_lpips, markdown_table, write_report

    if not Path(args.results, "results.jsonl").is_file():
        raise UsageError(f"no results.jsonl in {args.results}: run `fastdrag dragbench run` first")
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    try:
        distance = load_lpips(device)
    except ImportError as error:
        raise UsageError(str(error)) from error
    try:
        featurizer = DiftFeaturizer.from_pretrained(args.dift_model, device=device, dtype=dtype)
    except Exception as error:  # noqa: BLE001 - Hub, file and config errors all mean "cannot load this"
        raise UsageError(f"cannot load DIFT model {args.dift_model!r}: {first_line(error)}") from error
    with torch.no_grad():
        report = evaluate(args.data, args.results, featurizer, distance, progress=not args.no_progress)
    json_path, md_path = write_report(report, args.out or args.results)
    print(markdown_table(report), end="")
    print(f"wrote {json_path} and {md_path}")


def run_shapedrag_make(args) -> None:
    from .shapes import write_shapedrag

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder")
    at_least(args.count, 1, "--count")
    keys = write_shapedrag(out, args.count, args.seed)
    print(f"wrote {len(keys)} ShapeDrag samples (seed {args.seed}) to {out}")


def run_shapedrag_eval(args) -> None:
    import json

    from .shapes import SCORE_COLUMNS, score_folder, summarise, table

    try:
        scores = score_folder(args.data, args.results)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    if not scores:
        raise UsageError(f"no edited ShapeDrag samples of {args.data} in {args.results}")
    summary = summarise(list(scores.values()))
    path = Path(args.results) / "shapedrag_eval.json"
    path.write_text(json.dumps({"summary": summary, "samples": scores}, indent=1) + "\n")
    name = Path(args.results).name
    print(table({name: summary}, "samples", {name: len(scores)}))
    print("\n".join(f"{column}: {meaning}" for column, meaning in SCORE_COLUMNS.items()))
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastdrag", description="FastDrag: one-step drag-based image editing.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fastdrag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub):
        sub.add_argument("image", help="input image")
        sub.add_argument("--drag", type=parse_drag, action="append", required=True, metavar="X,Y:X,Y",
                         help="handle:target in image pixels; repeat for several drags")
        sub.add_argument("--mask", help="mask image, white (nonzero) = may move; default: whole image")
        mode_option(sub)
        sub.add_argument("-o", "--output", required=True, help="output image")
        max_pixels_option(sub)
        max_drags_option(sub)

    preview = commands.add_parser("preview", help="warp the pixels directly: no model, instant",
                                  epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    common(preview)
    preview.add_argument("--arrows", action="store_true", help="draw the drags on the output")

    edit = commands.add_parser("edit", help="run the FastDrag pipeline", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    common(edit)
    edit.add_argument("--prompt", default="", help="text condition (default: empty)")
    model_options(edit)
    pipeline_options(edit)

    bench = commands.add_parser("dragbench", help="run and score the DragBench benchmark", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    run = bench_commands.add_parser("run", help="edit every sample; resumable; splits under accelerate launch")
    run.add_argument("--data", required=True, help="DragBench folder: <category>/<sample>/meta_data.pkl, ...")
    run.add_argument("--out", required=True, help="output folder: edited images and results.jsonl")
    model_options(run)
    cuda_graph_option(run)
    pipeline_options(run)
    mode_option(run)
    max_drags_option(run)
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    score = bench_commands.add_parser("eval", help="MD (DIFT) and 1 - LPIPS, overall and per category")
    score.add_argument("--data", required=True, help="the DragBench folder the run used")
    score.add_argument("--results", required=True, help="the run's --out folder")
    score.add_argument("--out", help="where eval.md and eval.json go (default: --results)")
    score.add_argument("--dift-model", default="stabilityai/stable-diffusion-2-1",
                       help="Stable Diffusion 2.1 Hub id or folder for DIFT features")
    device_options(score)
    score.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    shapes = commands.add_parser("shapedrag", help="ShapeDrag: shape drags with ground truth (docs/shapes-model.md)",
                                 epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    shape_commands = shapes.add_subparsers(dest="shape_command", required=True)
    make = shape_commands.add_parser("make", help="write seeded samples in DragBench's layout, with their ground truth")
    make.add_argument("--out", required=True, help="a new (or empty) folder")
    make.add_argument("--count", type=int, default=SHAPEDRAG_COUNT, help=f"samples (default {SHAPEDRAG_COUNT})")
    make.add_argument("--seed", type=int, default=SHAPEDRAG_SEED, help=f"seed (default {SHAPEDRAG_SEED})")
    check = shape_commands.add_parser("eval", help="score a `dragbench run` of the samples against the ground truth")
    check.add_argument("--data", required=True, help="the folder `shapedrag make` wrote")
    check.add_argument("--results", required=True, help="the run's --out folder; shapedrag_eval.json goes there")

    app = commands.add_parser("app", help="the drag editor in the browser (needs the [app] extra)")
    model_options(app)
    cuda_graph_option(app)
    app.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    app.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    app.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    app.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                     help=f"uploaded images are scaled down to this (default {DEFAULT_MAX_SIDE})")
    app.add_argument("--cache", type=int, default=DEFAULT_CACHE_MIB, metavar="MIB",
                     help=f"memory for cached inversions, shared by all tabs (default {DEFAULT_CACHE_MIB} MiB)")
    app.add_argument("--no-live", action="store_true",
                     help="start pages with live edit off: no re-drag while dragging, no inversion until Run")
    max_pixels_option(app, MAX_UPLOAD_PIXELS, "uploads are scaled down to --max-side anyway")
    return parser


def run_app(args) -> None:
    check_server_options(args)
    pick_device_and_dtype(args.device, args.dtype)  # a bad --device is reported now, not at the first Run
    offline = check_model_sources(args)

    def load():
        return load_on_device(args, args.device, offline)

    from PIL import Image

    # Gradio decodes uploads with PIL before any handler sees them: its bomb check (an error above
    # twice this) is set from the same limit, in this server process only.
    Image.MAX_IMAGE_PIXELS = args.max_pixels
    try:
        demo = build_app(PipelineHolder(load, cache_mib=args.cache), max_side=args.max_side,
                         max_pixels=args.max_pixels, live_edit=not args.no_live)
    except ImportError as error:
        raise UsageError(f"the app needs Gradio: pip install 'diffusers-fastdrag[app]' ({error})") from error
    when = "the first Run" if args.no_live else "the first upload (live edit inverts it at once)"
    print(f"FastDrag editor on http://{args.host}:{args.port} (the model loads on {when})")
    launch(demo, server_name=args.host, server_port=args.port, share=args.share)


DTYPES = ["auto", "float16", "bfloat16", "float32"]


def max_pixels_option(sub: argparse.ArgumentParser, default: int = MAX_IMAGE_PIXELS, why: str = "2048x2048") -> None:
    sub.add_argument("--max-pixels", type=int, default=default, metavar="N",
                     help=f"refuse images of more pixels than this, before decoding them (default {default}, {why})")


def model_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--model", default=DEFAULT_MODEL, help=f"Hub id or folder (default: {DEFAULT_MODEL})")
    sub.add_argument("--unet", help="swap in this UNet (Hub id or folder), e.g. an LCM one")
    device_options(sub)


def cuda_graph_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--no-cuda-graphs", action="store_true",
                     help="on CUDA, run eagerly instead of replaying captured CUDA graphs (pipe.enable_cuda_graphs)")


def max_drags_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--max-drags", type=int, default=MAX_DRAGS, metavar="N",
                     help=f"refuse more drags than this (default {MAX_DRAGS})")


def mode_option(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--mode", default=DEFAULT_MODE, choices=EDIT_MODES,
                     help="drag the content (default), or move / copy the masked object by one drag")


def device_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--device", default="auto", help="cuda, cpu, ... (default: cuda if available)")
    sub.add_argument("--dtype", default="auto", choices=DTYPES, help="default: float16 on CUDA, else float32")


def pipeline_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"num_inference_steps (default {DEFAULT_STEPS})")
    sub.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                     help=f"inversion_strength (default {DEFAULT_STRENGTH})")
    sub.add_argument("--fill", default=DEFAULT_FILL, choices=FILL_MODES,
                     help=f"how null pixels are filled (default {DEFAULT_FILL})")
    sub.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE_SCALE,
                     help=f"guidance_scale while sampling (default {DEFAULT_GUIDANCE_SCALE:g}: no classifier-free guidance)")
    sub.add_argument("--no-consistency", action="store_true", help="do not replay the recorded keys/values")
    sub.add_argument("--seed", type=int, help="seed for --fill noise (unused by the default fill)")


def attach_negative_drags(argv: list[str]) -> list[str]:
    """``--drag -5,128:140,128`` -> ``--drag=-5,128:140,128``: argparse would take the value for an option."""
    joined, rest = [], iter(argv)
    for arg in rest:
        if arg == "--drag":
            value = next(rest, None)
            joined.append(arg if value is None else f"--drag={value}" if value.startswith("-") else arg)
            if value is not None and not value.startswith("-"):
                joined.append(value)
        else:
            joined.append(arg)
    return joined


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(attach_negative_drags(sys.argv[1:] if argv is None else list(argv)))
    try:
        if args.command == "app":
            run_app(args)
        elif args.command == "dragbench":
            return {"run": run_dragbench_run, "eval": run_dragbench_eval}[args.bench_command](args) or 0
        elif args.command == "shapedrag":
            {"make": run_shapedrag_make, "eval": run_shapedrag_eval}[args.shape_command](args)
        else:
            {"preview": run_preview, "edit": run_edit}[args.command](args)
    except UsageError as error:
        print(f"fastdrag: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
