"""Every GPU figure the project claims, and every CUDA test, in one command.

A GPU is lent only now and then, for about fifteen minutes, start-up included. This script is what to
run then: on a CUDA machine with no network, where only torch is installed, it installs what is
missing from local wheels and then runs, in this order (most important first, so that a run cut
short still says the most):

  1    the CUDA-marked tests (``-m cuda``: graph replays give the eager bits; no host sync in the
       loops under ``torch.cuda.set_sync_debug_mode("error")``), each with its pass or fail;
  2a   SD 1.5-shaped random weights, float16, 512x512: eager and CUDA-graph edit and re-drag
       against their floors, host syncs, the DragBench runner's seconds per sample, peak memory;
  2b   the first edit in a fresh process (eager, graphs);
  2c   ``--compile``: edit and re-drag of the compiled UNet against its floor;
  3    the warp on the GPU, with the sync check;
  4    SDXL-shaped random weights, float16, 1024x1024, eager and graphs against their floors, K/V bank;
  5    bfloat16, and channels_last, if time is left.

Each step runs in its own process with a time budget; one that runs past it is killed, one that
raises is recorded, and the suite goes on. The whole default run fits in ``--budget`` (480 s).
After each step it writes ``OUT/gpu_suite.md`` (one table: figure, value, target, met, command)
and ``OUT/gpu_suite.json``. Exit status: 0; 1 when a CUDA test failed or did not run (on a GPU a
skipped one counts); 3 when the tests passed but a benchmark step raised or ran out of time;
2 for a usage error, such as missing packages without wheels.

On the GPU machine (copy the repository with its ``.whl/`` folder):

    python benchmarks/gpu_suite.py --out gpu-run --wheels .whl

Before, on a machine with network, download the wheels (for the GPU machine's Python, 3.12 here):

    python benchmarks/gpu_suite.py --download-wheels .whl --python-version 3.12

which runs ``{download}``.

``--dry-run`` runs the same steps on the CPU at tiny sizes (a tiny random model, the stand-in graph
capture, ``torch.compile`` with the eager backend), in a minute or two: the tests run it, so the
suite itself is tested without a GPU.

This file imports only the standard library at the top: it must start where nothing but torch is
installed.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path


BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent

# Everything the suite imports besides torch and its own dependencies, with the versions the dry run
# passed with in CI. Explicit on purpose: the wheels are downloaded with --no-deps (a resolver would
# pull a CUDA build of torch through accelerate), so every dependency is named here;
# tests/test_gpu_suite.py checks that the list is closed under the installed packages' requirements.
WHEELS = {
    "diffusers": "0.42.1", "transformers": "5.24.0", "accelerate": "1.15.0", "safetensors": "0.8.0",
    "numpy": "2.4.6", "pillow": "12.3.0",
    "huggingface-hub": "2.4.0", "hf-xet": "1.8.0", "tokenizers": "0.23.3", "regex": "2026.11.19",
    "pyyaml": "6.0.4", "tqdm": "4.70.1", "psutil": "7.2.2", "packaging": "26.4",
    "importlib-metadata": "10.2.0", "zipp": "4.1.2", "lazy-importer": "0.1.0",
    "requests": "2.34.2", "urllib3": "2.8.0", "idna": "3.20", "certifi": "2026.10.19.post1",
    "charset-normalizer": "3.5.3", "truststore": "0.10.5",
    "httpx2": "2.16.2", "httpcore2": "2.16.2", "h11": "0.16.0", "anyio": "4.16.0",
    "typer": "0.29.2", "click": "8.5.1", "rich": "15.0.0", "markdown-it-py": "4.3.0", "mdurl": "0.1.2",
    "pygments": "2.21.0", "shellingham": "1.5.4", "annotated-doc": "0.0.7",
    "pydantic": "2.14.4", "pydantic-core": "2.50.5", "annotated-types": "0.8.0", "typing-inspection": "0.4.5",
    # the test step
    "pytest": "9.2.0", "pluggy": "1.7.0", "iniconfig": "2.3.1",
}
# What the GPU machine is known to run; --python-version may be given more than once.
DEFAULT_PYTHON_VERSION = "3.12"


def download_command(folder: str, python_version: str = DEFAULT_PYTHON_VERSION) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", python_version, "-d", folder,
            *(f"{name}=={version}" for name, version in WHEELS.items())]


def shell(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)


DOWNLOAD_HINT = ("python benchmarks/gpu_suite.py --download-wheels .whl --python-version 3.12   "
                 "# on a machine with network; it runs: " + shell(download_command(".whl")).replace(sys.executable, "python"))

# SD 1.5 timings: the configuration of the fast-path issue's targets, and its tiny stand-in.
SD15 = ["--device", "cuda", "--dtype", "float16", "--resolution", "512"]
SDXL = ["--arch", "sdxl", "--device", "cuda", "--dtype", "float16", "--resolution", "1024"]
SD15_DRY = ["--device", "cpu", "--dtype", "float32", "--resolution", "32", "--stand-in-graphs", "--compile-backend", "eager"]


def sd15_args(dry: bool, model: str | None, *extra: str, warmup: int = 2, repeats: int = 5) -> list[str]:
    """bench_speed's arguments for the SD 1.5 steps (the dry run's: the tiny model, one timed run,
    no warm-up); the table's command column shows the same."""
    if dry:
        return [*SD15_DRY, "--model", model or "TINY_MODEL", "--warmup", "0", "--repeats", "1", *extra]
    return [*SD15, "--warmup", str(warmup), "--repeats", str(repeats), *extra]


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced."""
    i = argv.index(option)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def bench_command(argv: list[str]) -> str:
    """The standalone bench_speed command for ``argv``, paths inside the checkout made relative."""
    return shell(["python", "benchmarks/bench_speed.py", *(relative(arg) if arg.startswith(str(REPO)) else arg
                                                            for arg in argv)])


@dataclass
class Step:
    name: str
    number: str
    title: str
    budget: float  # seconds on an H100; the dry run's budget is dry_budget
    dry_budget: float
    rows: list[dict] = field(default_factory=list)
    status: str = "not run"
    seconds: float = 0.0
    log: str = ""


class Suite:
    """Runs the steps, each in a child process with its budget, and writes the table and JSON after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.dry = args.dry_run
        self.started = time.monotonic()
        self.deadline = self.started + args.budget
        self.run_info: dict = {}
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.model: str | None = None  # the dry run's tiny model
        self.install_note = "nothing to install"
        self.steps = [step for step in make_steps() if not args.steps or step.name in args.steps]

    def test_files(self) -> list[str]:
        if self.args.tests:
            return [str(Path(path).resolve()) for path in self.args.tests]
        # Every test file that uses the mark (as a decorator or a name for it), so a CUDA test added
        # anywhere is run.
        uses_mark = re.compile(r"^\s*(@pytest\.mark\.cuda\b|\w+\s*=\s*pytest\.mark\.cuda\b)", re.MULTILINE)
        return sorted(str(path) for path in (REPO / "tests").glob("test_*.py") if uses_mark.search(path.read_text()))

    # -- running ---------------------------------------------------------------------------------

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def run_process(self, command: list[str], budget: float, log: Path) -> tuple[int | None, float]:
        """Run ``command`` in its own process group, killed with its children at ``budget`` seconds;
        return its exit status (None when killed) and its seconds."""
        start = time.monotonic()
        with open(log, "w") as output:
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=max(budget, 1.0))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # also the fresh processes a step starts
                except ProcessLookupError:  # it ended meanwhile
                    pass
                process.wait()
                code = None
        return code, time.monotonic() - start

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.run_info = self.describe_run()
        self.write()
        if self.dry and any(step.name.startswith(("sd15", "sdxl")) or step.name == "variants" for step in self.steps):
            self.model = self.make_tiny_model()
        for step in self.steps:
            budget = min(self.args.step_budget.get(step.name, step.dry_budget if self.dry else step.budget),
                         self.time_left())
            if self.time_left() < 5:
                step.status = "not run: out of time"
                step.rows = []
            elif step.name == "cuda-tests":
                self.run_tests(step, budget)
            else:
                self.run_child(step, budget)
            print(f"step {step.number} {step.name}: {step.status} ({step.seconds:.1f} s)", flush=True)
            self.write()
        code = self.exit_code()
        self.run_info["exit code"] = code
        self.run_info["seconds"] = round(time.monotonic() - self.started, 1)
        self.write()
        print((self.out / "gpu_suite.md").read_text())
        return code

    def run_child(self, step: Step, budget: float) -> None:
        rows_file = self.out / "logs" / f"{step.name}.jsonl"
        rows_file.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--step", step.name, "--rows", str(rows_file), "--out", str(self.out)]
        if self.dry:
            command += ["--dry-run", *(["--model", self.model] if self.model else [])]
        log = self.out / "logs" / f"{step.name}.log"
        code, step.seconds = self.run_process(command, budget, log)
        records = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
        step.rows = [r for r in records if "figure" in r]
        overrides = [r["status"] for r in records if "status" in r]
        step.log = str(log.relative_to(self.out))
        if code is None:
            step.status = f"ran past its budget ({budget:.0f} s): killed"
        elif code != 0:
            step.status = f"raised: {last_error_line(log)}"
        else:
            step.status = overrides[-1] if overrides else "ok"

    def run_tests(self, step: Step, budget: float) -> None:
        report = self.out / "logs" / "cuda-tests.xml"
        report.unlink(missing_ok=True)
        files = self.test_files()
        # -c and --rootdir: the project's pytest settings (the `cuda` mark) also for files outside tests/.
        command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                   "-c", str(REPO / "setup.cfg"), "--rootdir", str(REPO),
                   # xunit1 reports carry each test's file, also for a file outside the rootdir
                   f"--junitxml={report}", "-o", "junit_family=xunit1", *files]
        log = self.out / "logs" / "cuda-tests.log"
        code, step.seconds = self.run_process(command, budget, log)
        step.log = str(log.relative_to(self.out))
        shown = shell(["python", "-m", "pytest", "-q", "-m", "cuda", *(relative(f) for f in files)])
        step.rows = test_rows(report, shown, self.dry) if report.exists() else []
        counts = {outcome: sum(r["value"] == outcome for r in step.rows) for outcome in ("passed", "failed", "error", "skipped")}
        summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
        if code is None:
            step.status = f"ran past its budget ({budget:.0f} s): killed"
        elif not step.rows:
            step.status = f"raised: no test ran (pytest exit {code}): {last_error_line(log)}"
        elif code not in (0, 1):
            step.status = f"raised: pytest exit {code}: {last_error_line(log)}"
        elif code == 0 and all(row["met"] is not False for row in step.rows):
            step.status = f"ok: {summary}"
        else:  # a test failed, or on a GPU one skipped
            step.status = f"failed: {summary}"

    def exit_code(self) -> int:
        tests = next((step for step in self.steps if step.name == "cuda-tests"), None)
        if tests is not None and (not tests.status.startswith("ok") or any(r["met"] is False for r in tests.rows)):
            return 1
        if any(not (step.status.startswith("ok") or step.status == "not built yet") for step in self.steps):
            return 3
        return 0

    # -- setup -------------------------------------------------------------------------------------

    def describe_run(self) -> dict:
        import torch

        cuda = torch.cuda.is_available()
        return {
            "kind": "dry run on the CPU at tiny sizes" if self.dry else "GPU run",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "device": torch.cuda.get_device_name(0) if cuda and not self.dry else
            f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "diffusers": installed_version("diffusers"), "commit": git_commit(),
            "command": shell(["python", relative(__file__), *(relative(arg) if arg.startswith(str(REPO)) else arg
                                                              for arg in sys.argv[1:])]),
            "budget s": self.args.budget, "install": self.install_note,
        }

    def make_tiny_model(self) -> str:
        """The dry run's model: the tests' tiny random pipeline, saved once for every step (the SDXL step
        saves its tiny SDXL model beside it)."""
        folder = self.out / "tiny-model"
        code = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from tiny_models import save_tiny_model; "
                f"save_tiny_model({str(folder)!r})")
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=self.env, check=True)
        return str(folder)

    # -- output ------------------------------------------------------------------------------------

    def write(self) -> None:
        steps = [{"name": s.name, "number": s.number, "title": s.title, "status": s.status,
                  "seconds": round(s.seconds, 1), "budget s": s.dry_budget if self.dry else s.budget,
                  "log": s.log, "rows": s.rows} for s in self.steps]
        write_flushed(self.out / "gpu_suite.json", json.dumps({"run": self.run_info, "steps": steps}, indent=1) + "\n")
        write_flushed(self.out / "gpu_suite.md", self.markdown())

    def markdown(self) -> str:
        info = self.run_info
        lines = [f"GPU suite, {info.get('kind')}: {info.get('device')}; torch {info.get('torch')} "
                 f"(CUDA {info.get('cuda')}), diffusers {info.get('diffusers')}, Python {info.get('python')}; "
                 f"commit {info.get('commit')}; {info.get('date')}; {info.get('install')}.",
                 f"Command: `{info.get('command')}`"
                 + (f"; {info['seconds']} s in all, exit status {info['exit code']}." if "exit code" in info else "."),
                 ""]
        if self.dry:
            lines += ["A dry run tests the suite: tiny model, CPU, stand-in graph capture, `torch.compile` with the "
                      "eager backend. Its values are not the GPU's, and the targets (an H100's) do not apply.", ""]
        lines += ["| step | figure | value | target | met | command |", "|---|---|---|---|---|---|"]
        for step in self.steps:
            seconds = f" in {step.seconds:.1f} s" if step.seconds else ""
            met = "yes" if step.status.startswith("ok") else "**no**"
            lines.append(f"| {step.number} | **{step.title}** | {step.status}{seconds} | ok | {met} | |")
            for row in step.rows:
                met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
                lines.append(f"| {step.number} | {row['figure']} | {row['text']} | {row['target'] or ''} | {met} | "
                             f"`{row['command']}` |")
        return "\n".join(lines) + "\n"


def make_steps() -> list[Step]:
    """The steps in order, with their budgets (estimates until a GPU run says more): on an H100 steps
    1 to 4 add up to 450 s, leaving 30 s of the default 480 for installing wheels; step 5 gets what
    time the others leave."""
    return [
        Step("cuda-tests", "1", "CUDA-marked tests", 60, 240),
        Step("sd15", "2a", "SD 1.5 shapes: eager and CUDA graphs against their floors", 150, 240),
        Step("sd15-first-edit", "2b", "SD 1.5 shapes: the first edit in a fresh process", 60, 180),
        Step("sd15-compile", "2c", "SD 1.5 shapes: torch.compile against its floor", 100, 240),
        Step("warp", "3", "the warp on the device", 20, 60),
        Step("sdxl", "4", "SDXL shapes, float16, 1024x1024: eager and CUDA graphs", 60, 60),
        Step("variants", "5", "bfloat16 and channels_last", 120, 180),
    ]


# ------------------------------------------------------------------------------------------------
# The steps' bodies, run in a child process (``--step NAME``): each row is written as soon as known
# ------------------------------------------------------------------------------------------------


class Rows:
    """Rows of one step, appended to a JSON-lines file and flushed one by one, so that a step killed
    at its budget keeps what it had measured."""

    def __init__(self, path: str, dry: bool) -> None:
        self.path, self.dry = Path(path), dry

    def _write(self, record: dict) -> None:
        write_flushed(self.path, json.dumps(record) + "\n", mode="a")

    def add(self, figure: str, value: float | str, command: str, unit: str = "s", target: float | None = None,
            met: bool | None = None) -> None:
        if isinstance(value, float):
            text = f"{value:.3f}" if unit == "" else f"{value:.4f} {unit}" if unit == "s" else f"{value:.3f} {unit}"
        else:
            text = str(value)
        if target is not None and isinstance(value, (int, float)):
            # The targets are an H100's: a dry run on the CPU neither meets nor misses them.
            met = None if self.dry else value <= target
        target_text = f"<= {target:g} {unit}".rstrip() if target is not None else ""
        self._write({"figure": figure, "value": value, "text": text, "target": target_text, "met": met,
                     "command": command})

    def status(self, status: str) -> None:
        self._write({"status": status})


def bench_modules():
    sys.path.insert(0, str(BENCHMARKS))
    import bench_speed
    import bench_warpage

    return bench_speed, bench_warpage


def step_sd15(rows: Rows, argv: list[str]) -> None:
    """Eager and graphs, each against its floor; the DragBench runner (graphs on, as `dragbench run`
    does); the K/V bank and the peak memory."""
    bench, pipe, args, device, command = time_eager_and_graphs(rows, argv, "", targets=True)
    seconds = bench.dragbench_seconds(pipe, args, device)
    rows.add(f"dragbench run, steady seconds per sample ({args.dragbench} samples, graphs)", seconds, command,
             target=bench.TARGETS["dragbench s/sample"])
    add_memory_rows(rows, bench, pipe, device, command, "")


def time_eager_and_graphs(rows: Rows, argv: list[str], label: str, targets: bool) -> tuple:
    """Build bench_speed's pipeline for ``argv`` and time its eager and graph paths against their
    floors, rows named with ``label`` (the targets are SD 1.5's on an H100, so only its rows have
    them); returns ``(bench_speed, pipe, args, device, command)``."""
    import torch

    bench, _ = bench_modules()
    from fastdrag.apps.cli import pick_device_and_dtype

    command = bench_command(argv)
    args = bench.parse_arguments(argv)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    pipe = bench.build_pipeline(args, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    rows.add(f"{label}model build (not in any figure)", time.perf_counter() - start, command)
    inputs = bench.benchmark_inputs(args.resolution)
    for path in ("eager", "graphs"):
        if path == "graphs":
            bench.enable_graphs(pipe, device)
        result = bench.measure_path(pipe, inputs, args, device, path)
        add_path_rows(rows, bench, path, result, command, device, label, targets)
    return bench, pipe, args, device, command


def add_memory_rows(rows: Rows, bench, pipe, device, command: str, label: str) -> None:
    bank = pipe.attention_replay.bank
    rows.add(f"{label}K/V bank", bank.nbytes / 2**20 if bank is not None else 0.0, command, unit="MiB")
    rows.add(f"{label}peak memory", bench.peak_memory_text(device), command)


def add_path_rows(rows: Rows, bench, path: str, result: dict, command: str, device, label: str = "",
                  targets: bool = True) -> None:
    goals = bench.TARGETS.get(path, {}) if targets else {}
    rows.add(f"{label}{path}: edit", result["edit"], command, target=goals.get("edit"))
    rows.add(f"{label}{path}: re-drag", result["re-drag"], command, target=goals.get("re-drag"))
    rows.add(f"{label}{path}: floor", result["floor"], command)
    rows.add(f"{label}{path}: edit / floor", result["edit"] / result["floor"], command, unit="",
             target=goals.get("edit / floor"))
    # The warp's own target (0.3 ms) is for its graph replay inside an edit.
    rows.add(f"{label}{path}: warp phase of an edit", result["phases"].get("warp", 0.0) * 1e3, command, unit="ms",
             target=0.3 if path == "graphs" and targets else None)
    if device.type == "cuda":
        rows.add(f"{label}{path}: host-device syncs in one edit", result["syncs"], command, unit="")


def step_first_edit(rows: Rows, argv: list[str]) -> None:
    import torch

    bench, _ = bench_modules()
    args = bench.parse_arguments(argv)
    paths = ["eager", "graphs"] if bench.graphs_wanted(args, torch.device(args.device)) else ["eager"]
    for path in paths:
        command = bench_command([*argv, "--first-edit", path])
        seconds = bench.first_edit_in_fresh_process(path, argv)
        rows.add(f"first edit of a fresh pipeline ({path}, model build excluded)", seconds["first"], command,
                 target=bench.TARGETS["first edit"].get(path))
        rows.add(f"the next edit in that process ({path})", seconds["second"], command)


def step_compile(rows: Rows, argv: list[str]) -> None:
    bench, _ = bench_modules()
    from fastdrag.apps.cli import pick_device_and_dtype

    command = bench_command(argv)
    args = bench.parse_arguments(argv)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    pipe = bench.build_pipeline(args, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    bench.compile_unet(pipe, args)
    result = bench.measure_path(pipe, bench.benchmark_inputs(args.resolution), args, device, "compile")
    rows.add("compile: whole step, compilation included", time.perf_counter() - start, command)
    add_path_rows(rows, bench, "compile", result, command, device)


def step_warp(rows: Rows, dry: bool) -> None:
    """bench_warpage's cases on the device; on CUDA each also runs under set_sync_debug_mode("error")."""
    import torch

    _, warpage = bench_modules()
    device = torch.device("cpu" if dry else "cuda")
    repeats = 20 if dry else 200
    command = f"python benchmarks/bench_warpage.py --device {device.type} --repeats {repeats}"
    for name, (radius, handles, targets) in warpage.CASES.items():
        pixels, median_ms = warpage.time_case(device, radius, handles, targets, repeats)
        rows.add(f"warp, eager, 64x64 latent, {name}", median_ms, command, unit="ms", target=None if dry else 0.3)
    rows.add("warp never syncs with the host (set_sync_debug_mode('error'))",
             "not checked: no CUDA (dry run)" if dry else "yes", command, met=None if dry else True)


def step_sdxl(rows: Rows, argv: list[str]) -> None:
    """SDXL-shaped random weights, float16, 1024x1024 (the dry run: a tiny SDXL model on the CPU):
    eager and graphs against their floors, the K/V bank and the peak memory."""
    bench, pipe, _, device, command = time_eager_and_graphs(rows, argv, "SDXL ", targets=False)
    add_memory_rows(rows, bench, pipe, device, command, "SDXL ")


def sdxl_args(dry: bool, model: str | None) -> list[str]:
    """bench_speed's arguments for the SDXL step (the dry run's: a tiny SDXL model saved beside the
    tiny SD one, one timed run)."""
    if dry:
        folder = Path(model or "TINY_MODEL").parent / "tiny-sdxl-model"
        if model and not folder.exists():
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_models import save_tiny_sdxl_model

            save_tiny_sdxl_model(folder)
        return [*SD15_DRY, "--model", str(folder), "--warmup", "0", "--repeats", "1", "--no-first-edit",
                "--dragbench", "0"]
    return [*SDXL, "--warmup", "1", "--repeats", "3", "--no-first-edit", "--dragbench", "0"]


def step_variants(rows: Rows, argv: list[str]) -> None:
    """bfloat16 (eager and graphs), then channels_last: the VAE (bench_speed --vae-layouts) and the
    UNet (graphs), both against the float16 contiguous run of step 2a."""
    import torch

    bench, _ = bench_modules()
    from fastdrag.apps.cli import pick_device_and_dtype

    bf16 = with_option(argv, "--dtype", "bfloat16")
    args = bench.parse_arguments(bf16)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    pipe = bench.build_pipeline(args, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    inputs = bench.benchmark_inputs(args.resolution)
    bf16_command = bench_command([*bf16, "--no-first-edit", "--dragbench", "0"])
    for path in ("eager", "graphs"):
        if path == "graphs":
            bench.enable_graphs(pipe, device)
        edit, redrag = edit_and_redrag(bench, pipe, inputs, args, device)
        rows.add(f"bfloat16, {path}: edit", edit, bf16_command)
        rows.add(f"bfloat16, {path}: re-drag", redrag, bf16_command)
    del pipe

    args = bench.parse_arguments(argv)
    device, dtype = pick_device_and_dtype(args.device, args.dtype)
    pipe = bench.build_pipeline(args, dtype, device)
    pipe.set_progress_bar_config(disable=True)
    layouts_command = bench_command([*argv, "--vae-layouts", "--no-first-edit", "--dragbench", "0"])
    for name, (encode, decode, same) in bench.vae_layouts(pipe, inputs, device, args.repeats).items():
        rows.add(f"VAE {name}: encode", encode, layouts_command)
        rows.add(f"VAE {name}: decode", decode, layouts_command)
        if name != "contiguous":
            rows.add(f"VAE {name}: the same bits as contiguous", "yes" if same else "no", layouts_command, met=same)
    pipe.unet.to(memory_format=torch.channels_last)
    bench.enable_graphs(pipe, device)
    edit, redrag = edit_and_redrag(bench, pipe, inputs, args, device)
    command = "python benchmarks/gpu_suite.py --out DIR --steps variants"
    rows.add("UNet channels_last, graphs: edit", edit, command)
    rows.add("UNet channels_last, graphs: re-drag", redrag, command)


def edit_and_redrag(bench, pipe, inputs, args, device) -> tuple[float, float]:
    """Median edit and re-drag seconds after ``args.warmup`` edits (the first captures or compiles):
    bench_speed's measure_path without the floor, which the variants do not need."""
    import statistics

    for _ in range(max(args.warmup, 1)):
        bench.time_edit(pipe, inputs, args, device)
    inversion = pipe.invert(inputs[0], prompt=args.prompt, num_inference_steps=args.steps,
                            inversion_strength=args.strength)
    bench.time_redrag(pipe, inversion, inputs, device)
    edits = [bench.time_edit(pipe, inputs, args, device)[0] for _ in range(args.repeats)]
    redrags = [bench.time_redrag(pipe, inversion, inputs, device) for _ in range(args.repeats)]
    return statistics.median(edits), statistics.median(redrags)


def run_step(args: argparse.Namespace) -> None:
    """The child process's work for ``--step``."""
    rows = Rows(args.rows, args.dry_run)
    dry, model = args.dry_run, args.model
    if args.step == "sd15":
        step_sd15(rows, sd15_args(dry, model, "--no-first-edit", "--dragbench", "2" if dry else "12"))
    elif args.step == "sd15-first-edit":
        step_first_edit(rows, sd15_args(dry, model))
    elif args.step == "sd15-compile":
        step_compile(rows, sd15_args(dry, model, "--compile", "--no-first-edit", "--dragbench", "0"))
    elif args.step == "warp":
        step_warp(rows, dry)
    elif args.step == "sdxl":
        step_sdxl(rows, sdxl_args(dry, model))
    elif args.step == "variants":
        step_variants(rows, sd15_args(dry, model, warmup=1, repeats=3))


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def test_rows(report: Path, command: str, dry: bool) -> list[dict]:
    """One row per test case of a JUnit XML report."""
    rows = []
    for case in ElementTree.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            child = case.find(tag)
            if child is not None:
                outcome = "failed" if tag == "failure" else tag
                message = (child.get("message") or "").splitlines()[0][:120] if child.get("message") else ""
                break
        # A skip on a GPU means the test did not check anything: not met. On the CPU it is expected.
        met = None if outcome == "skipped" and dry else outcome == "passed"
        text = outcome + (f": {message}" if message and outcome != "passed" else "")
        module = Path(case.get("file") or "").stem or case.get("classname", "").rsplit(".", 1)[-1]
        rows.append({"figure": f"{module}::{case.get('name')}",
                     "value": outcome, "text": text.replace("|", "/"), "target": "passed", "met": met,
                     "command": command})
    return rows


def write_flushed(path: Path, text: str, mode: str = "w") -> None:
    """Write and push to the disk at once: a run cut off by the machine's end keeps what it wrote."""
    with open(path, mode) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def last_error_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:200].replace("|", "/")


def relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown (no git)"


def missing_packages() -> list[str]:
    return [name for name in WHEELS if installed_version(name) is None]


def install_from_wheels(folder: str | None, missing: list[str]) -> None:
    """``pip install --no-index --find-links FOLDER`` the missing packages; exit 2 if that cannot be done."""
    if folder is None or not Path(folder).is_dir():
        why = "no --wheels folder given" if folder is None else f"--wheels {folder}: no such folder"
        usage_error(f"missing {', '.join(missing)} and {why}; download the wheels first: {DOWNLOAD_HINT}")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", folder, *missing]
    print(f"installing from {folder}: {shell(command)}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        usage_error(f"pip could not install {', '.join(missing)} from {folder} (this Python, "
                    f"{platform.python_version()}, may need other wheels); download them with: {DOWNLOAD_HINT}")


def usage_error(message: str) -> None:
    """One line on stderr and exit status 2, as for a bad argument."""
    print(f"gpu_suite: {message}", file=sys.stderr)
    sys.exit(2)


def make_fastdrag_importable(env: dict) -> None:
    """Put this checkout on the path as ``fastdrag`` (the repository root is the package) unless it
    already is: no build, no network."""
    spec = importlib.util.find_spec("fastdrag")
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == REPO:
        return
    folder = Path(tempfile.mkdtemp(prefix="gpu-suite-path-"))
    (folder / "fastdrag").symlink_to(REPO, target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    sys.path.insert(0, str(folder))


def download_wheels(folder: str, python_versions: list[str]) -> None:
    for version in python_versions:
        command = download_command(folder, version)
        print(shell(command), flush=True)
        subprocess.run(command, check=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.format(download=shell(download_command(".whl")).replace(sys.executable, "python")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", help="folder for gpu_suite.md, gpu_suite.json and the steps' logs")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--wheels", help="folder of wheels to install missing packages from, without network")
    parser.add_argument("--download-wheels", metavar="DIR", help="download the wheels into DIR (needs network) and stop")
    parser.add_argument("--python-version", action="append",
                        help=f"with --download-wheels: the GPU machine's Python (default {DEFAULT_PYTHON_VERSION}; repeatable)")
    parser.add_argument("--budget", type=float, help="seconds for the whole run (default 480; dry run 900)")
    parser.add_argument("--steps", nargs="+", metavar="STEP", choices=[step.name for step in make_steps()],
                        help="run only these steps (default: all, in order)")
    parser.add_argument("--step-budget", action="append", default=[], metavar="STEP=SECONDS",
                        help="another budget for one step (repeatable), for example sd15-compile=240")
    parser.add_argument("--tests", nargs="+", metavar="FILE",
                        help="test files for step 1 (default: the files in tests/ that use pytest.mark.cuda)")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    return parser


def parse_step_budgets(parser: argparse.ArgumentParser, values: list[str]) -> dict[str, float]:
    names = [step.name for step in make_steps()]
    budgets = {}
    for value in values:
        name, _, seconds = value.partition("=")
        try:
            budgets[name] = float(seconds)
        except ValueError:
            budgets[name] = -1.0
        if name not in names or budgets[name] <= 0:
            parser.error(f"--step-budget {value}: expected STEP=SECONDS with STEP one of {', '.join(names)}")
    return budgets


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.step:
        run_step(args)
        return
    if args.download_wheels:
        download_wheels(args.download_wheels, args.python_version or [DEFAULT_PYTHON_VERSION])
        return
    if not args.out:
        parser.error("--out DIR is required")
    args.step_budget = parse_step_budgets(parser, args.step_budget)
    if importlib.util.find_spec("torch") is None:
        parser.error("torch is not installed: install the torch build for this machine first")
    args.budget = args.budget or (900.0 if args.dry_run else 480.0)
    suite = Suite(args)
    missing = missing_packages()
    if missing:
        start = time.monotonic()
        install_from_wheels(args.wheels, missing)
        suite.install_note = f"installed {len(missing)} packages from wheels in {time.monotonic() - start:.0f} s"
    make_fastdrag_importable(suite.env)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device here: run it on the GPU machine, or use --dry-run on the CPU")
    sys.exit(suite.run())


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        traceback.print_exc()
        sys.exit(130)
