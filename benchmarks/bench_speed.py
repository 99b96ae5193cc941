"""A FastDrag edit against its floor, on full-size Stable Diffusion 1.5- or SDXL-shaped models, per execution path.

The models are built from SD 1.5's configs (``--arch sd15``, the default) or SDXL base 1.0's
(``--arch sdxl``) with random weights (nothing is downloaded): a random UNet costs exactly what a
trained one does. ``--model`` loads real weights instead, in the pipeline its folder names (SD or SDXL).
The default resolution is 512 for SD 1.5; for SDXL 1024 on CUDA, and 256 elsewhere (a CPU runs the
full-size SDXL UNet at 1024 for minutes per call).

Execution paths, each timed against its own floor:
- ``eager``: the pipeline as it is;
- ``graphs`` (CUDA only): ``pipe.enable_cuda_graphs()``; its floor replays the bare UNet calls
  from one CUDA graph;
- ``compile`` (with ``--compile``): ``torch.compile(unet, mode="reduce-overhead", fullgraph=True)``;
  its floor calls the compiled bare UNet.

For each: a default edit (10 steps, strength 0.7: 7 inversion + 7 sampling UNet calls) phase by
phase; a re-drag from a cached inversion; the floor (the same UNet calls at batch 1 with the stock
attention processors, one VAE encode, one VAE decode with PIL post-processing, one text encode,
run the same way); and on CUDA the host-device synchronisations of one edit. Then, each in a fresh
process (``--first-edit``), the first edit of a new pipeline (model build excluded), and the
DragBench runner's steady seconds per sample (``--dragbench N`` samples, default 12); with
``--vae-layouts``, VAE encode and decode in ``channels_last`` against the contiguous layout.

    python benchmarks/bench_speed.py --resolution 256 --warmup 0            # the CPU VM, minutes
    python benchmarks/bench_speed.py --device cuda --dtype float16 --warmup 2 --repeats 5 --compile
    python benchmarks/bench_speed.py --arch sdxl --device cuda --dtype float16 --warmup 2 --repeats 5  # 1024x1024

Targets (H100, fp16, 512x512, SD 1.5 shapes, 10 steps, strength 0.7) are printed beside the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fastdrag.apps.cli import (
    DEFAULT_TRAIN_STEPS,
    DTYPES,
    UsageError,
    at_least,
    check_model_source,
    fastdrag_pipeline_name,
    hub_unreachable,
    pick_device_and_dtype,
    pipeline_class_for,
    run_script,
)
from fastdrag.apps.compat import from_pretrained_dtype
from fastdrag.apps.options import EditOptions
from fastdrag.apps.testing import capture_by_rerunning, random_sd15_pipeline, random_sdxl_pipeline, write_dragbench
from fastdrag.cuda_graphs import GraphCache, capture_cuda_graph
from fastdrag.inputs import DEFAULT_STEPS, DEFAULT_STRENGTH, check_schedule
from fastdrag.timing import PHASES, synchronize


# seconds, for the H100 / fp16 / 512x512 configuration of the fast-path issue
TARGETS = {
    "eager": {"edit / floor": 1.05},
    "graphs": {"edit": 0.20, "re-drag": 0.10, "edit / floor": 1.05},
    "compile": {"edit": 0.15, "re-drag": 0.08},
    "first edit": {"eager": 2.0, "graphs": 2.0},
    "dragbench s/sample": 0.25,
}


ARCHS = {"sd15": "SD 1.5", "sdxl": "SDXL"}
DEFAULT_RESOLUTION = {"sd15": 512, "sdxl": 1024}
SDXL_CPU_RESOLUTION = 256  # the full-size SDXL UNet at 1024 takes minutes per call on a few CPU cores


def build_pipeline(args, dtype: torch.dtype, device: torch.device):
    """The timed pipeline on ``device``: ``--model``'s weights in the FastDrag pipeline its folder
    names, or random weights of ``--arch``'s shapes in ``dtype``, drawn on ``device`` (SDXL's 3.5
    billion take a minute to draw on a CPU)."""
    if args.model:
        pipeline_class = pipeline_class_for(args.model)
        extra = {"safety_checker": None} if "safety_checker" in pipeline_class._optional_components else {}
        return pipeline_class.from_pretrained(args.model, **from_pretrained_dtype(dtype), **extra).to(device)
    with torch.device(device):
        pipe = (random_sdxl_pipeline if args.arch == "sdxl" else random_sd15_pipeline)(dtype)
    return pipe.to(device)


def graphs_wanted(args, device: torch.device) -> bool:
    """Whether the CUDA-graph path is timed: on CUDA, or anywhere with the stand-in capture."""
    return (device.type == "cuda" or args.stand_in_graphs) and not args.no_graphs


def enable_graphs(pipe, device: torch.device) -> None:
    """``pipe.enable_cuda_graphs()`` on CUDA; elsewhere the stand-in capture, which runs the same
    graph path without CUDA (``--stand-in-graphs``: the GPU suite's dry run tests itself with it)."""
    if device.type == "cuda":
        pipe.enable_cuda_graphs()
    else:
        pipe.attention_replay.graphs = GraphCache(capture=capture_by_rerunning, device_type=device.type)


def compile_unet(pipe, args) -> None:
    """The Diffusers way; ``--compile-backend eager`` only traces (no code generated), for CPU dry runs."""
    if args.compile_backend == "inductor":
        pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    else:
        pipe.unet = torch.compile(pipe.unet, backend=args.compile_backend, fullgraph=True)


class Clock:
    """Wall time of a block, with the device synchronised on both sides."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0

    def __enter__(self):
        synchronize(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start


def benchmark_inputs(size: int):
    """A smooth image, a central mask and two drags, in image pixels (x, y)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 8, 8, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    handles = [(0.40 * size, 0.45 * size), (0.60 * size, 0.55 * size)]
    targets = [(0.48 * size, 0.40 * size), (0.55 * size, 0.62 * size)]
    return image, mask, handles, targets


def edit_options(args) -> EditOptions:
    return EditOptions(prompt=args.prompt, num_inference_steps=args.steps, inversion_strength=args.strength)


def edit_once(pipe, inputs, args):
    image, mask, handles, targets = inputs
    return pipe(image, handle_points=handles, target_points=targets, mask=mask, **edit_options(args).pipeline_kwargs())


def time_edit(pipe, inputs, args, device) -> tuple[float, dict[str, float]]:
    with pipe.timing_phases() as phases, Clock(device) as clock:
        edit_once(pipe, inputs, args)
    return clock.seconds, dict(phases)


def time_redrag(pipe, inversion, inputs, device) -> float:
    _, mask, handles, targets = inputs
    with Clock(device) as clock:
        pipe(handle_points=handles, target_points=[(x + 3, y) for x, y in targets], mask=mask, inversion=inversion)
    return clock.seconds


def count_syncs(pipe, inputs, args, device) -> int | None:
    """Host-device synchronisations during one edit (CUDA's sync debug mode, as warnings)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            edit_once(pipe, inputs, args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def is_sdxl(pipe) -> bool:
    """Whether ``pipe``'s UNet takes SDXL's added conditioning (pooled text and six time ids)."""
    return getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"


def floor_text(pipe, prompt: str, device, size: int) -> tuple[torch.Tensor, dict]:
    """The floor's one text encode: ``(embeddings, the UNet's extra arguments)``. SDXL's as Diffusers
    makes it: both encoders' penultimate hidden states side by side, the second's pooled projection,
    and the time ids of a ``size`` x ``size`` image uncropped."""
    if not is_sdxl(pipe):
        return pipe.encode_prompt(prompt, device)[0], {}
    states = []
    for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        output = encoder(ids, output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled = output[0]
    dtype = pipe.unet.dtype
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype)
    added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids}
    return torch.cat(states, dim=-1).to(dtype), {"added_cond_kwargs": added}


class BareUNetCalls:
    """The floor's UNet calls: ``calls`` bare calls at batch 1 with the stock processors; replayed
    from one CUDA graph when ``graphed``. ``unet_kwargs``: SDXL's added conditioning."""

    def __init__(self, pipe, latents, embeds, timesteps: list[int], graphed: bool, unet_kwargs: dict | None = None):
        self.pipe, self.latents, self.embeds, self.unet_kwargs = pipe, latents, embeds, unet_kwargs or {}
        self.timesteps = torch.tensor(timesteps, device=latents.device)
        # Captured the way the pipeline captures its loops (side-stream warm-up, then the graph);
        # off CUDA, graphed means the stand-in capture of a dry run.
        capture = capture_cuda_graph if latents.device.type == "cuda" else capture_by_rerunning
        self.replay = capture(self.run_eagerly, {}, GraphCache(1))[0] if graphed else None

    def run_eagerly(self) -> torch.Tensor:
        for i in range(len(self.timesteps)):
            noise = self.pipe.unet(self.latents, self.timesteps[i], encoder_hidden_states=self.embeds,
                                   return_dict=False, **self.unet_kwargs)[0]
        return noise  # a graph's output; the stand-in capture of a dry run copies it

    def __call__(self):
        self.replay() if self.replay is not None else self.run_eagerly()


@torch.no_grad()
def time_floor(pipe, inputs, args, device, graphed: bool) -> dict[str, float]:
    """The unavoidable work: bare UNet calls at batch 1, VAE encode and decode, text encode (SDXL's
    two encoders and added conditioning, see :func:`floor_text`)."""
    image = inputs[0].to(device)
    steps = pipe.check_schedule(args.steps, args.strength)
    inversion_steps, sampling_steps = pipe.timesteps_for(args.steps, steps)
    timings = {}
    with Clock(device) as clock:
        embeds, unet_kwargs = floor_text(pipe, args.prompt, device, args.resolution)
    timings["text"] = clock.seconds
    with Clock(device) as clock:
        latents = pipe.encode_image(image, device).to(pipe.unet.dtype)
    timings["encode"] = clock.seconds
    unet_calls = BareUNetCalls(pipe, latents, embeds, inversion_steps + sampling_steps, graphed, unet_kwargs)
    unet_calls()  # warm: a compiled UNet may still be building its graphs
    with Clock(device) as clock:
        unet_calls()
    timings[f"{2 * steps} UNet calls"] = clock.seconds
    with Clock(device) as clock:
        decoded = pipe.decode_image(latents)
        pipe.image_processor.postprocess(decoded, output_type="pil")
    timings["decode"] = clock.seconds
    return timings


def measure_path(pipe, inputs, args, device, path: str) -> dict:
    """Edit (with phases), re-drag, floor and synchronisations of one execution path, medians."""
    for _ in range(args.warmup):
        time_edit(pipe, inputs, args, device)
    edits, phases, redrags, floors = [], [], [], []
    inversion = pipe.invert(inputs[0], **edit_options(args).inversion_kwargs())
    time_redrag(pipe, inversion, inputs, device)  # the first re-drag may capture or compile
    for _ in range(args.repeats):
        seconds, phase_times = time_edit(pipe, inputs, args, device)
        edits.append(seconds)
        phases.append(phase_times)
        redrags.append(time_redrag(pipe, inversion, inputs, device))
        floors.append(time_floor(pipe, inputs, args, device, graphed=path == "graphs"))
    median = statistics.median
    floor_parts = {name: median(f[name] for f in floors) for name in floors[0]}
    return {
        "edit": median(edits),
        "phases": {p: median(t[p] for t in phases) for p in PHASES if p in phases[0]},
        "re-drag": median(redrags),
        "floor": sum(floor_parts.values()),
        "floor parts": floor_parts,
        "syncs": count_syncs(pipe, inputs, args, device),
        "kv MiB": inversion.kv_bank.nbytes / 2**20,
        "inversion MiB": inversion.nbytes / 2**20,
    }


def first_edit(args) -> dict:
    """In this (fresh) process: build the pipeline, then time its first edit and the next one."""
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    pipe = build_pipeline(args, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    if args.first_edit == "graphs":
        enable_graphs(pipe, device)
    inputs = benchmark_inputs(args.resolution)
    first = time_edit(pipe, inputs, args, device)[0]
    second = time_edit(pipe, inputs, args, device)[0]
    return {"first": first, "second": second}


def first_edit_in_fresh_process(path: str, argv: list[str] | None = None) -> dict:
    """Run this script again with ``argv`` (this run's by default) and ``--first-edit PATH``, and
    read the JSON line it prints."""
    command = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--first-edit", path]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def dragbench_seconds(pipe, args, device) -> float:
    """The DragBench runner's median seconds per sample after its first two, on generated samples."""
    from fastdrag.apps.dragbench import read_records, run_dragbench

    size = args.resolution
    samples = {
        f"bench/{i:03d}": [[0.3 * size, 0.4 * size], [0.4 * size, 0.35 * size]] * (1 + i % 2)
        for i in range(args.dragbench)
    }
    with tempfile.TemporaryDirectory() as folder:
        write_dragbench(Path(folder) / "data", samples, size=size)
        run_dragbench(Path(folder) / "data", Path(folder) / "out", lambda _: pipe, edit_options(args), progress=False,
                      device=str(device))
        records = read_records(Path(folder) / "out")
    seconds = [r["seconds"] for r in records if r["status"] == "ok"]
    return statistics.median(seconds[2:] or seconds)


@torch.no_grad()
def vae_layouts(pipe, inputs, device, repeats: int) -> dict[str, tuple[float, float, bool]]:
    """VAE encode and decode seconds in each memory layout, and whether the results equal the
    contiguous layout's bits. The VAE is left contiguous afterwards."""
    image = inputs[0].to(device)
    results, reference = {}, None
    for name, layout in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        pipe.vae.to(memory_format=layout)
        times = []
        for _ in range(repeats + 1):  # the first one picks kernels
            with Clock(device) as encode:
                latents = pipe.encode_image(image, device)
            with Clock(device) as decode:
                decoded = pipe.decode_image(latents)
            times.append((encode.seconds, decode.seconds))
        outputs = (latents.contiguous(), decoded.contiguous())
        reference = reference or outputs
        same = all(torch.equal(a, b) for a, b in zip(outputs, reference))
        median = statistics.median
        results[name] = (median(t[0] for t in times[1:]), median(t[1] for t in times[1:]), same)
    pipe.vae.to(memory_format=torch.contiguous_format)
    return results


def peak_memory_text(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB process peak RSS"


def attention_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return contextlib.nullcontext()
    backend = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[name]
    return sdpa_kernel(backend)


def target_text(value: float, target: float | None) -> str:
    if target is None:
        return ""
    return f"<= {target:g} ({'met' if value <= target else 'NOT met'})"


def print_report(results: dict, firsts: dict, dragbench: float | None, layouts: dict, args, device, dtype,
                 built: float) -> None:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"device: {name}; torch {torch.__version__}; {str(dtype).removeprefix('torch.')}; "
          f"{args.resolution}x{args.resolution}; steps {args.steps}, strength {args.strength}; sdpa {args.sdpa}; "
          f"{'weights ' + args.model if args.model else f'random {ARCHS[args.arch]}-shaped weights'}"
          f"{f' ({args.resolution_why})' if args.resolution_why else ''}; "
          f"built in {built:.1f} s; median of {args.repeats} after {args.warmup} warm-up")
    print("\nTargets are the fast-path issue's, for an H100 in fp16 at 512x512; elsewhere they are for reference.\n")
    paths = list(results)
    print("| seconds | " + " | ".join(paths) + " |")
    print("|---|" + "---:|" * len(paths))
    for phase in PHASES:
        print(f"| edit: {phase} | " + " | ".join(f"{results[p]['phases'].get(phase, 0):.4f}" for p in paths) + " |")
    for row in ("edit", "re-drag", "floor"):
        print(f"| **{row}** | " + " | ".join(f"**{results[p][row]:.4f}**" for p in paths) + " |")
    print("| edit / floor | " + " | ".join(f"{results[p]['edit'] / results[p]['floor']:.3f}" for p in paths) + " |")
    print("| re-drag / edit | " + " | ".join(f"{results[p]['re-drag'] / results[p]['edit']:.3f}" for p in paths) + " |")
    print("| K/V bank MiB | " + " | ".join(f"{results[p]['kv MiB']:.1f}" for p in paths) + " |")
    print("| inversion MiB | " + " | ".join(f"{results[p]['inversion MiB']:.1f}" for p in paths) + " |")
    if device.type == "cuda":
        print("| host-device syncs in one edit | " + " | ".join(str(results[p]["syncs"]) for p in paths) + " |")
    for path in paths:
        parts = ", ".join(f"{part} {seconds:.4f}" for part, seconds in results[path]["floor parts"].items())
        print(f"\nfloor ({path}): {parts}")
    print("\ntargets:")
    for path in paths:
        for row, target in TARGETS.get(path, {}).items():
            value = results[path]["edit"] / results[path]["floor"] if row == "edit / floor" else results[path][row]
            print(f"- {path} {row}: {value:.3f} {target_text(value, target)}")
    for path, seconds in firsts.items():
        print(f"- first edit of a fresh pipeline ({path}, model build excluded): {seconds['first']:.3f} "
              f"{target_text(seconds['first'], TARGETS['first edit'].get(path))}; the next: {seconds['second']:.3f}")
    if dragbench is not None:
        print(f"- dragbench run, steady seconds per sample ({args.dragbench} samples): {dragbench:.3f} "
              f"{target_text(dragbench, TARGETS['dragbench s/sample'])}")
    for name, (encode, decode, same) in layouts.items():
        print(f"- VAE in {name}: encode {encode:.4f}, decode {decode:.4f}, "
              f"{'the same bits as' if same else 'DIFFERENT bits from'} contiguous")
    first = next(iter(results.values()))
    print(f"\nK/V bank: {first['kv MiB']:.1f} MiB; peak memory: {peak_memory_text(device)}")


def check_arguments(args: argparse.Namespace) -> None:
    """Every number, the device and the model, before a model is built: a :class:`UsageError`
    otherwise. Settles ``--arch`` (``--model``'s own, or SD 1.5) and ``--resolution`` (see the top)."""
    if args.model and args.arch:
        raise UsageError(f"--arch picks the shapes of random weights; --model {args.model} brings its own")
    device, _ = pick_device_and_dtype(args.device, args.dtype)
    if args.model:
        check_model_source(args.model, "--model", ("model_index.json",), hub_unreachable())
        sdxl = fastdrag_pipeline_name(args.model) == "StableDiffusionXLFastDragPipeline"
        args.arch = "sdxl" if sdxl else "sd15"
    args.arch = args.arch or "sd15"
    args.resolution_why = ""
    if args.resolution is None:
        args.resolution = DEFAULT_RESOLUTION[args.arch]
        if args.arch == "sdxl" and device.type == "cpu":
            args.resolution, args.resolution_why = SDXL_CPU_RESOLUTION, f"the CPU's default for {ARCHS[args.arch]}"
    at_least(args.resolution, 8, "--resolution")
    if args.resolution % 8:
        raise UsageError(f"--resolution must be a multiple of 8, got {args.resolution}")
    for option in ("repeats", "threads"):
        if getattr(args, option) is not None:
            at_least(getattr(args, option), 1, f"--{option}")
    for option in ("warmup", "dragbench"):
        at_least(getattr(args, option), 0, f"--{option}")
    try:
        check_schedule(args.steps, args.strength, DEFAULT_TRAIN_STEPS)
    except ValueError as error:
        raise UsageError(str(error)) from error


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked and settled (:func:`check_arguments`)."""
    args = build_parser().parse_args(argv)
    check_arguments(args)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=DTYPES)
    parser.add_argument("--arch", choices=list(ARCHS),
                        help="shapes of the random weights: sd15 (default) or sdxl; --model brings its own")
    parser.add_argument("--resolution", type=int,
                        help="square image side, a multiple of 8 (default 512 for sd15; for sdxl 1024, or "
                             f"{SDXL_CPU_RESOLUTION} on the CPU)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH)
    parser.add_argument("--prompt", default="a photo")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each; the median is shown")
    parser.add_argument("--warmup", type=int, default=1, help="untimed edits first (kernels, allocator)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(unet, mode='reduce-overhead')")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for --compile; 'eager' only traces (CPU dry runs)")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph path")
    parser.add_argument("--dragbench", type=int, default=12, help="samples for the runner's seconds per sample (0: skip)")
    parser.add_argument("--no-first-edit", action="store_true", help="skip the fresh-process first-edit timings")
    parser.add_argument("--vae-layouts", action="store_true",
                        help="also time VAE encode/decode in channels_last against contiguous, and compare bits")
    parser.add_argument("--first-edit", choices=["eager", "graphs"], help=argparse.SUPPRESS)
    parser.add_argument("--stand-in-graphs", action="store_true",
                        help="off CUDA, time the graph path with a stand-in capture (tests the plumbing, not CUDA)")
    parser.add_argument("--sdpa", default="default", choices=["default", "math", "flash", "efficient", "cudnn"])
    parser.add_argument("--model", help="load real weights (Hub id or folder, SD or SDXL) instead of random ones")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads on the CPU")
    return parser


def main() -> None:
    args = parse_arguments()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.first_edit:
        with attention_backend(args.sdpa):
            print(json.dumps(first_edit(args)))
        return

    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    start = time.perf_counter()
    pipe = build_pipeline(args, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    built = time.perf_counter() - start
    inputs = benchmark_inputs(args.resolution)
    graphs = graphs_wanted(args, device)

    results, dragbench, layouts = {}, None, {}
    with attention_backend(args.sdpa):
        if args.vae_layouts:
            layouts = vae_layouts(pipe, inputs, device, args.repeats)
        results["eager"] = measure_path(pipe, inputs, args, device, "eager")
        if graphs:
            enable_graphs(pipe, device)
            results["graphs"] = measure_path(pipe, inputs, args, device, "graphs")
        if args.dragbench:
            dragbench = dragbench_seconds(pipe, args, device)  # graphs on CUDA, as `dragbench run` does
        pipe.disable_cuda_graphs()
        if args.compile:
            compile_unet(pipe, args)
            results["compile"] = measure_path(pipe, inputs, args, device, "compile")
    del pipe  # the fresh processes build their own: two full-size SDXL models may not fit at once
    gc.collect()
    firsts = {}
    if not args.no_first_edit:
        for path in ["eager", "graphs"] if graphs else ["eager"]:
            firsts[path] = first_edit_in_fresh_process(path)
    print_report(results, firsts, dragbench, layouts, args, device, dtype, built)


if __name__ == "__main__":
    sys.exit(run_script(main, "bench_speed.py"))
