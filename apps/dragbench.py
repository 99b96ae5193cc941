"""DragBench: read the data set, run the pipeline on every sample, and keep a resumable log.

Layout (DragDiffusion's): ``DATA/<category>/<sample>/`` with ``original_image.png``,
``user_drag.png`` and ``meta_data.pkl`` (a dict: ``prompt``; ``points``, a list of ``[x, y]``
alternating handle and target; ``mask``, an ``(H, W)`` array, nonzero where content may move).

The run writes ``OUT/<category>/<sample>/dragged_image.png`` and appends one JSON line per
attempt to ``OUT/results.jsonl``. A sample counts as done when its last line says ``"ok"`` and
its image exists and decodes, so an interrupted run picks up where it stopped and failed samples
are tried again. ``OUT/run_config.json`` records the options the folder was made with, and a run
with other options refuses to resume there. One run writes to a folder at a time (``OUT/.lock``).
Under ``accelerate launch`` the remaining samples are split across the processes
(``PartialState.split_between_processes``): none is done twice, none is lost.

What is trusted: nothing in DATA. ``meta_data.pkl`` is read within a budget (its size checked
before it is read, its opcodes scanned before anything is built) by an unpickler that builds only
DragBench's types (dicts, lists, strings, numbers, numpy arrays); anything else fails that sample,
as do category names that could collide with the run's own files and symbolic links out of DATA
(docs/hostile-inputs.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import io
import json
import math
import os
import pickle
import pickletools
import stat
import struct
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..inputs import MAX_IMAGE_PIXELS, check_drag_points, image_size, open_image
from .options import EditOptions


RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "run_config.json"
LOCK_FILE = ".lock"
EDITED_FILE = "dragged_image.png"
PARTIAL_SUFFIX = ".partial.png"
META_FILE = "meta_data.pkl"
SAMPLE_FILES = ("original_image.png", META_FILE)


class RunRefused(Exception):
    """This run cannot write to the output folder (other options, or another run at work there)."""


# A full disk (or quota) stops the run, in one line: it is no sample's fault, every later sample would
# fail the same way, and nothing done is lost, so a rerun resumes once there is space.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
STAMP_MAX_BYTES = 1 << 20  # a stamp is a few hundred bytes; a larger run_config.json is not ours


class DiskFull(OSError):
    """Writing to the output folder failed for lack of space; ``strerror`` is the one line to show."""


@dataclass(frozen=True)
class Sample:
    """One DragBench sample. ``key`` is ``"<category>/<sample>"``, the same in DATA and OUT."""

    key: str
    folder: Path

    @property
    def category(self) -> str:
        return self.key.split("/")[0]


@dataclass
class SampleData:
    """A sample's contents. Points are image pixels ``(x, y)``; ``mask`` is ``(H, W)`` bool."""

    image: Any  # PIL.Image.Image, RGB
    prompt: str
    handles: list[tuple[float, float]]
    targets: list[tuple[float, float]]
    mask: np.ndarray


def find_samples(data: str | os.PathLike) -> list[Sample]:
    """Every ``<category>/<sample>`` folder holding the sample files, sorted by key."""
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"no such DragBench folder: {root}")
    samples = [
        Sample(key=f"{folder.parent.name}/{folder.name}", folder=folder)
        for folder in root.glob("*/*")
        if folder.is_dir() and all((folder / name).is_file() for name in SAMPLE_FILES)
    ]
    return sorted(samples, key=lambda sample: sample.key)


def split_points(points: Iterable) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """DragBench's alternating ``[x, y]`` list -> ``(handles, targets)``, each a list of ``(x, y)``."""
    pairs = [tuple(float(v) for v in point) for point in points]
    if len(pairs) < 2 or len(pairs) % 2 or any(len(p) != 2 for p in pairs):
        raise ValueError(f"`points` must alternate handle and target [x, y] pairs, got {len(pairs)} points")
    return pairs[0::2], pairs[1::2]


# --------------------------------------------------------------------------------------------
# Reading meta_data.pkl within a budget
# --------------------------------------------------------------------------------------------

# The limits on one meta_data.pkl, their one home. A real one is a prompt, a few points and a uint8
# mask the size of the image (0.25 MiB at 512 x 512), so each limit is far above what real data
# needs and far below what hurts the machine.
META_MAX_MIB = 4  # the file's size, and the bytes of all its arrays together
META_MAX_MIB_ENV = "FASTDRAG_MAX_META_MIB"  # raises META_MAX_MIB, for masks of images above 2048 x 2048
META_MAX_MIB_CEILING = 1024  # what the variable may ask for at most
META_MAX_DEPTH = 32  # containers inside containers (real data: 3)
META_MAX_VALUES = 20_000  # values built, a shared reference counted each time it is used
META_MAX_OPCODES = 50_000  # pickle instructions, which bounds the pre-scan's own time and memory

# The images' size limit (inputs.MAX_IMAGE_PIXELS), raised by this variable: an environment
# variable, as for the pickle's, so that every process of `accelerate launch` inherits it.
MAX_PIXELS_ENV = "FASTDRAG_MAX_PIXELS"


def max_image_pixels() -> int:
    """The image pixel limit of a run: :data:`~fastdrag.inputs.MAX_IMAGE_PIXELS`, or ``FASTDRAG_MAX_PIXELS``."""
    setting = os.environ.get(MAX_PIXELS_ENV)
    if setting is None:
        return MAX_IMAGE_PIXELS
    if not setting.strip().isdigit() or int(setting) < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a whole number of pixels >= 1, got {setting!r}")
    return int(setting)


# The numpy dtypes a DragBench array or number may have, as pickles spell them (kind and item size).
_META_DTYPES = {"b1": 1, "i1": 1, "u1": 1, "i2": 2, "u2": 2, "i4": 4, "u4": 4, "i8": 8, "u8": 8,
                "f2": 2, "f4": 4, "f8": 8}
_NUMPY_PREFIXES = ("numpy.core", "numpy._core")  # numpy 1's and 2's module names

# The globals a DragBench pickle may name: numpy's array and scalar rebuilders under numpy 1's and 2's
# module names, numpy's dtypes, and the bytes decoder protocol-2 pickles use for array data.
_PICKLE_GLOBALS = {
    (module, name)
    for prefix in _NUMPY_PREFIXES
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
    ("numpy.dtypes", name)
    for name in ("BoolDType", "UInt8DType", "Int8DType", "UInt16DType", "Int16DType", "Int32DType", "Int64DType",
                 "Float16DType", "Float32DType", "Float64DType")
}


@dataclass(frozen=True)
class MetaLimits:
    """What one ``meta_data.pkl`` may cost (see the ``META_*`` constants)."""

    max_bytes: int = META_MAX_MIB << 20
    max_depth: int = META_MAX_DEPTH
    max_values: int = META_MAX_VALUES
    max_opcodes: int = META_MAX_OPCODES


def meta_limits() -> MetaLimits:
    """The limits, with the size limit raised by ``FASTDRAG_MAX_META_MIB`` if it is set."""
    setting = os.environ.get(META_MAX_MIB_ENV)
    if setting is None:
        return MetaLimits()
    try:
        mib = float(setting)
    except ValueError:
        mib = float("nan")
    if not 0 < mib <= META_MAX_MIB_CEILING:
        raise ValueError(f"{META_MAX_MIB_ENV} must be a number of MiB in (0, {META_MAX_MIB_CEILING}], got {setting!r}")
    return MetaLimits(max_bytes=int(mib * (1 << 20)))


class _Refused(Exception):
    """The pre-scan's verdict: the pickle is not DragBench data, and why."""


class _Node:
    """What the pre-scan knows of one value the real unpickler would build: its kind, how many values
    it holds (shared ones counted at each use), how deep it nests, its value where the checks need it
    (numbers, strings, bytes, tuples of those, global names), and whether it is shared yet."""

    __slots__ = ("kind", "values", "depth", "const", "items", "shared", "itemsize", "built")

    def __init__(self, kind: str, const: Any = None, items: list["_Node"] | None = None, itemsize: int = 0):
        self.kind = kind
        self.const = const
        self.items = items or []
        self.values = 1 + sum(item.values for item in self.items)
        self.depth = 1 + max((item.depth for item in self.items), default=0) if kind in _CONTAINERS else 0
        self.shared = False
        self.itemsize = itemsize
        self.built = False


_CONTAINERS = {"list", "dict", "set", "tuple"}
_LEAF_OPCODES = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8", "NONE", "NEWTRUE", "NEWFALSE",
}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _PickleScan:
    """A pure-Python pass over the opcodes that follows the unpickler's stack and memo without
    building anything, so a file whose values would be too many, too deep, too large, or built
    through a shared reference changed later (a cycle) is refused before the real unpickler runs."""

    def __init__(self, limits: MetaLimits):
        self.limits = limits
        self.stack: list[_Node] = []
        self.marks: list[int] = []
        self.memo: dict[int, _Node] = {}
        self.array_bytes = 0

    def run(self, data: bytes) -> None:
        # The scan makes one node per value and no reference cycles, so the cyclic garbage collector
        # has nothing to find in it; left on, its full passes walk every object torch and the model
        # made, and a scan of 20,000 values took 0.5 s instead of 0.08 s.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for count, (opcode, arg, _) in enumerate(pickletools.genops(io.BytesIO(data)), 1):
                if count > self.limits.max_opcodes:
                    raise _Refused(f"more than {self.limits.max_opcodes} pickle instructions")
                self.step(opcode.name, arg)
        except (ValueError, UnicodeDecodeError, struct.error) as error:  # genops on a malformed file
            raise _Refused(f"malformed pickle ({error})") from None
        finally:
            if collecting:
                gc.enable()

    # -- the stack ---------------------------------------------------------------------------

    def push(self, node: _Node) -> None:
        self.check(node)
        self.stack.append(node)

    def pop(self) -> _Node:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused("stack underflow")
        return self.stack.pop()

    def top(self) -> _Node:
        node = self.pop()
        self.stack.append(node)
        return node

    def pop_mark(self) -> list[_Node]:
        if not self.marks:
            raise _Refused("no MARK to pop to")
        start = self.marks.pop()
        items, self.stack[start:] = self.stack[start:], []
        return items

    def check(self, node: _Node) -> None:
        if node.values > self.limits.max_values:
            raise _Refused(f"more than {self.limits.max_values} values (a shared reference counts at each use)")
        if node.depth > self.limits.max_depth:
            raise _Refused(f"containers nested deeper than {self.limits.max_depth}")

    def add(self, target: _Node, kind: str, items: list[_Node]) -> None:
        """Put ``items`` into the container ``target`` (APPEND, SETITEM, ADDITEMS)."""
        if target.kind != kind:
            raise _Refused(f"{kind} items added to a {target.kind}")
        if target.shared:  # its size was counted where it is used: it must not grow after
            raise _Refused("a container changed after it was shared (a cycle)")
        target.items.extend(items)
        target.values += sum(item.values for item in items)
        target.depth = max(target.depth, 1 + max((item.depth for item in items), default=0))
        self.check(target)

    def share(self, node: _Node) -> _Node:
        node.shared = True
        return node

    def step(self, name: str, arg: Any) -> None:
        if name in _LEAF_OPCODES:
            if isinstance(arg, int) and not isinstance(arg, bool) and arg.bit_length() > 64:
                raise _Refused("a number larger than 64 bits")
            self.push(_Node("leaf", const=arg))
        elif name == "MARK":
            self.marks.append(len(self.stack))
            if len(self.marks) > self.limits.max_depth:
                raise _Refused(f"containers nested deeper than {self.limits.max_depth}")
        elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"):
            self.push(_Node(name.removeprefix("EMPTY_").lower(), const=() if name == "EMPTY_TUPLE" else None))
        elif name in ("LIST", "TUPLE", "DICT", "FROZENSET"):
            items = self.pop_mark()
            self.push(self.container(name, items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            items = [self.pop() for _ in range(int(name[-1]))][::-1]
            self.push(self.container("TUPLE", items))
        elif name in ("APPEND", "APPENDS"):
            items = [self.pop()] if name == "APPEND" else self.pop_mark()
            self.add(self.top(), "list", items)
        elif name in ("SETITEM", "SETITEMS"):
            items = [self.pop() for _ in range(2)][::-1] if name == "SETITEM" else self.pop_mark()
            if len(items) % 2:
                raise _Refused("odd number of items for SETITEMS")
            self.keys(items[0::2])
            self.add(self.top(), "dict", items)
        elif name == "ADDITEMS":
            items = self.pop_mark()
            self.keys(items)
            self.add(self.top(), "set", items)
        elif name == "POP":
            if len(self.stack) > (self.marks[-1] if self.marks else 0):
                self.stack.pop()
            else:
                self.pop_mark()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.stack.append(self.share(self.top()))
        elif name in _PUTS or name == "MEMOIZE":
            index = len(self.memo) if name == "MEMOIZE" else arg
            # The C unpickler sizes its memo table by the largest index: a large one is gigabytes.
            if index > self.limits.max_opcodes:
                raise _Refused(f"memo index {index} (the memo is never larger than {self.limits.max_opcodes})")
            self.memo[index] = self.top()
        elif name in _GETS:
            if arg not in self.memo:
                raise _Refused(f"memo index {arg} used before it is set")
            self.stack.append(self.share(self.memo[arg]))
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, _, attribute = arg.partition(" ")
            else:
                attribute, module = self.pop().const, self.pop().const
            if (module, attribute) not in _PICKLE_GLOBALS:
                raise _Refused(f"`{module}.{attribute}` is not allowed in DragBench data"[:200])
            self.push(_Node("global", const=(module, attribute)))
        elif name == "REDUCE":
            args = self.pop()
            self.push(self.call(self.pop(), args))
        elif name == "BUILD":
            state = self.pop()
            self.build(self.top(), state)
        elif name in ("PROTO", "FRAME", "STOP"):
            if name == "STOP" and (len(self.stack) != 1 or self.marks):
                raise _Refused("the pickle does not end with exactly one value")
        else:  # objects, persistent ids, extension codes, out-of-band buffers: DragBench has none
            raise _Refused(f"the pickle instruction {name} is not used by DragBench data")

    def container(self, name: str, items: list[_Node]) -> _Node:
        kind = {"LIST": "list", "TUPLE": "tuple", "DICT": "dict", "FROZENSET": "set"}[name]
        if kind == "dict":
            if len(items) % 2:
                raise _Refused("odd number of items for DICT")
            self.keys(items[0::2])
        elif kind == "set":
            self.keys(items)
        const = tuple(item.const for item in items) if kind == "tuple" else None
        if const is not None and any(item.kind not in ("leaf", "tuple") for item in items):
            const = None
        return _Node(kind, const=const, items=items)

    def keys(self, keys: list[_Node]) -> None:
        # Keys are hashed, and hashing nested tuples recurses in C with no limit: only flat keys.
        if any(key.kind != "leaf" for key in keys):
            raise _Refused("a dict key or set item that is not a number or a string")

    # -- numpy -------------------------------------------------------------------------------

    def dtype_of(self, node: _Node) -> int:
        if node.kind != "dtype":
            raise _Refused("an array or number whose dtype is not a numpy dtype")
        return node.itemsize

    def shape_of(self, node: _Node) -> int:
        """The number of items of a shape tuple."""
        shape = node.const
        if not (isinstance(shape, tuple) and len(shape) <= 32
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise _Refused(f"an array shape that is not a tuple of sizes: {shape!r}"[:200])
        return math.prod(shape)

    def allocate(self, nbytes: int) -> None:
        self.array_bytes += nbytes
        if self.array_bytes > self.limits.max_bytes:
            raise _Refused(f"arrays of more than {self.limits.max_bytes >> 20} MiB together (set {META_MAX_MIB_ENV}"
                           f" to allow more, up to {META_MAX_MIB_CEILING})")

    def call(self, function: _Node, args: _Node) -> _Node:
        if function.kind != "global" or args.kind != "tuple":
            raise _Refused("a call that is not one of numpy's rebuilders")
        module, name = function.const
        items = args.items
        consts = [item.const for item in items]
        if (module, name) == ("_codecs", "encode"):
            # Protocol 2 stores array bytes as latin1 text; any other codec (hex, base64...) grows the data.
            if not (len(items) == 2 and isinstance(consts[0], str) and consts[1] in ("latin1", "latin-1")):
                raise _Refused("`_codecs.encode` is allowed only to turn a str into latin1 bytes")
            try:
                return _Node("leaf", const=consts[0].encode("latin-1"))
            except UnicodeEncodeError:
                raise _Refused("`_codecs.encode` of text that is not latin1") from None
        if (module, name) == ("numpy", "dtype"):
            if not (len(items) == 3 and consts[0] in _META_DTYPES):
                raise _Refused(f"a numpy dtype other than {', '.join(_META_DTYPES)}: {consts[0]!r}"[:200])
            return _Node("dtype", itemsize=_META_DTYPES[consts[0]])
        if name == "_reconstruct":
            # numpy pickles an array as an empty one of this shape and then its state; anything larger
            # is allocated by numpy before the state is even read.
            if not (len(items) == 3 and items[0].kind == "global" and consts[0] == ("numpy", "ndarray")
                    and consts[1] == (0,)
                    and consts[2] in (b"b", "b")):
                raise _Refused("`_reconstruct` other than numpy's own `_reconstruct(ndarray, (0,), b'b')`")
            return _Node("array")
        if name == "scalar":
            if not (len(items) == 2 and isinstance(consts[1], bytes) and len(consts[1]) == self.dtype_of(items[0])):
                raise _Refused("a numpy `scalar` whose bytes do not match its dtype")
            return _Node("leaf")
        if name == "_frombuffer":
            if not (len(items) == 4 and isinstance(consts[0], (bytes, bytearray))
                    and len(consts[0]) == self.shape_of(items[2]) * self.dtype_of(items[1])):
                raise _Refused("a numpy `_frombuffer` whose bytes do not match its shape and dtype")
            self.allocate(len(consts[0]))
            array = _Node("array")
            array.built = True
            return array
        raise _Refused(f"`{module}.{name}` called: DragBench data only names it")

    def build(self, target: _Node, state: _Node) -> None:
        """BUILD: the state of a dtype or of an array made by ``_reconstruct``, and nothing else."""
        if target.shared or target.built:
            raise _Refused("an object's state set twice, or after it was shared")
        target.built = True
        if target.kind == "dtype":
            # (version, byte order, subarray, names, fields, item size, alignment, flags): a plain dtype
            # has no subarray, names or fields, and no item size of its own.
            const = state.const
            if not (isinstance(const, tuple) and len(const) in (8, 9) and const[2:5] == (None, None, None)
                    and const[5] in (-1, target.itemsize)):
                raise _Refused("a numpy dtype state that is not a plain number type's")
            return
        if target.kind != "array" or state.kind != "tuple" or len(state.items) not in (4, 5):
            raise _Refused("a state set on something that is not a numpy array")
        shape, dtype, _, data = state.items[-4:]
        size, itemsize = self.shape_of(shape), self.dtype_of(dtype)
        if not isinstance(data.const, bytes) or len(data.const) != size * itemsize:
            raise _Refused("a numpy array whose bytes do not match its shape and dtype")
        self.allocate(len(data.const))


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of the regular file at ``path``, refused (``ValueError``) if larger than
    ``max_bytes``: the size is checked before reading (a sparse file of gigabytes costs nothing),
    and no more than that is read if the file grows meanwhile. A FIFO or device is refused without
    blocking."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size} bytes, over the {max_bytes / (1 << 20):g} MiB limit for {what}")
        chunks, left = [], max_bytes + 1
        while left and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise ValueError(f"{path} grew over the {max_bytes / (1 << 20):g} MiB limit for {what} while read")
    return data


class DataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and numpy arrays; refuses every other global, so a
    planted ``__reduce__`` cannot run code. :func:`load_meta` runs it only on a pickle the
    pre-scan has bounded."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"`{module}.{name}` is not allowed in DragBench data")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 on numpy.core
            return super().find_class(module, name)


def load_meta(path: Path) -> dict:
    """``meta_data.pkl``, within :func:`meta_limits`: the size is checked before the file is read,
    the opcodes are scanned (depth, values, memo, array bytes, the calls numpy's pickles make) before
    anything is built, and only then :class:`DataUnpickler` builds it. Anything else is a
    ``ValueError`` naming the file, which fails that sample only."""
    path = Path(path)
    limits = meta_limits()
    try:
        data = read_capped(path, limits.max_bytes, f"meta_data.pkl (a real one is well under 1 MiB; set "
                                                   f"{META_MAX_MIB_ENV} to allow more, up to {META_MAX_MIB_CEILING})")
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror or error}") from error
    try:
        _PickleScan(limits).run(data)
        meta = DataUnpickler(io.BytesIO(data)).load()
    except _Refused as error:
        raise ValueError(f"{path} is not DragBench data: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as error:
        raise ValueError(f"{path} is not DragBench data: {error}") from error
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a dict, got {type(meta).__name__}")
    return meta


def check_sample(sample: Sample) -> None:
    """A ``ValueError`` unless the sample is safe to read and to write out:

    - its category has no ``.`` in its name: every file the run and ``eval`` write at the top of OUT
      has one (``results.jsonl``, ``run_config.json``, ``.lock``, ``eval.json``...), so
      ``OUT/<category>`` can never be one of them, whatever files are added later;
    - its folder and files resolve inside the data folder: a symbolic link out of it would make the
      run read (and its errors quote) files the user never handed over, such as another user's
      file or a device. Links that stay inside the data folder are followed.
    """
    if "." in sample.category:
        raise ValueError(
            f"sample {sample.key}: the category folder {sample.category!r} has a '.' in its name, as the files the "
            f"run writes in OUT do (results.jsonl, run_config.json, .lock): rename the folder"
        )
    root = sample.folder.parent.parent.resolve()
    for path in (sample.folder, *(sample.folder / name for name in SAMPLE_FILES)):
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise ValueError(f"sample {sample.key}: {path} leads to {resolved}, outside the data folder {root}; "
                             f"the runner reads nothing outside --data")


def sample_fingerprint(sample: Sample) -> str | None:
    """The size and modification time of the sample's files: an edit recorded with another
    fingerprint was made from other data and is redone. ``None`` if a file cannot be read."""
    try:
        return " ".join(f"{info.st_size}:{info.st_mtime_ns}"
                        for info in (os.stat(sample.folder / name) for name in SAMPLE_FILES))
    except OSError:
        return None


def load_sample(sample: Sample) -> SampleData:
    """Read a sample (after :func:`check_sample`). The image is returned as stored (the pipeline
    reads any mode by value); one over the pixel limit (``FASTDRAG_MAX_PIXELS``) is refused."""
    check_sample(sample)
    meta_path = sample.folder / META_FILE
    meta = load_meta(meta_path)
    for key in ("points", "mask"):
        if key not in meta:
            raise ValueError(f"{meta_path} has no `{key}`: a DragBench sample's {META_FILE} holds `points` and `mask`")
    handles, targets = split_points(meta["points"])
    prompt = meta.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"`prompt` in meta_data.pkl must be a string, got {type(prompt).__name__}")
    # Refused from the header, before decoding, above the limit. Not turned by its EXIF orientation:
    # the mask and points in meta_data.pkl are in the stored pixel grid.
    limit = max_image_pixels()
    image = open_image(sample.folder / "original_image.png", limit,
                       f"raise the limit with {MAX_PIXELS_ENV}=N in the environment (now {limit})", upright=False)
    mask = np.asarray(meta["mask"]) != 0
    return SampleData(image=image, prompt=prompt or "", handles=handles, targets=targets, mask=mask)


def write_sample(folder: Path, image, points: Iterable, mask: np.ndarray, prompt: str = "") -> None:
    """Write one sample into the existing ``folder`` in DragBench's layout: ``image`` (PIL, saved
    as ``original_image.png`` and ``user_drag.png``), ``points`` alternating handle and target
    ``[x, y]``, ``mask`` ``(H, W)``, nonzero where content may move."""
    image.save(folder / "original_image.png")
    image.save(folder / "user_drag.png")
    with open(folder / META_FILE, "wb") as f:
        pickle.dump({"prompt": prompt, "points": [list(point) for point in points],
                     "mask": np.asarray(mask).astype(np.uint8)}, f)


# --------------------------------------------------------------------------------------------
# The results log
# --------------------------------------------------------------------------------------------


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line with O_APPEND writes, so processes sharing the file never interleave.

    The line starts with a newline: if an earlier write was cut short (a full disk, a crash), its
    torn line ends there instead of swallowing this record. A short write is continued; a write
    that fails raises, and the torn line it leaves is skipped by readers.
    """
    data = ("\n" + json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        write_all(fd, data, path)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes, path: Path) -> None:
    """Write all of ``data`` to ``fd``, continuing short writes; a write of nothing means no space."""
    while data:
        written = os.write(fd, data)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        data = data[written:]


def read_records(out: str | os.PathLike) -> list[dict]:
    """Every record of ``OUT/results.jsonl``, in order. Torn or foreign lines are skipped with one
    warning that counts them."""
    path = Path(out) / RESULTS_FILE
    records, skipped = [], 0
    if path.is_file():
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("sample"), str):
                skipped += 1
                continue
            records.append(record)
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} unreadable line(s) (torn by a crash or a full disk, or foreign)")
    return records


def read_results(out: str | os.PathLike) -> dict[str, dict]:
    """The last record of each sample in ``OUT/results.jsonl``."""
    return {record["sample"]: record for record in read_records(out)}


def image_decodes(path: Path) -> bool:
    """Whether the file at ``path`` is an image PIL can decode whole."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):
        return False


def is_done(record: dict | None, out: Path, sample: Sample | None = None) -> bool:
    """The sample's last record says ok, and its image is there and decodes; given the ``sample``,
    the record was also made from the sample's files as they are now (:func:`sample_fingerprint`)."""
    return (
        record is not None
        and record.get("status") == "ok"
        and isinstance(record.get("image"), str)
        and (sample is None or record.get("data") == sample_fingerprint(sample))
        and image_decodes(out / record["image"])
    )


def save_atomically(image, path: Path) -> None:
    """Write to a temporary name, then rename: a crash never leaves a half-written image, and a
    failed write leaves no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        image.save(partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def remove_partial_images(out: Path) -> int:
    """Delete the temporary images crashed runs left behind; returns how many."""
    stray = list(out.glob(f"*/*/.*{PARTIAL_SUFFIX}"))
    for path in stray:
        path.unlink(missing_ok=True)
    return len(stray)


class FolderLock:
    """One writer per output folder: an exclusive ``flock`` on ``OUT/.lock``, released by the
    kernel when the process ends, so a crashed run never leaves it stuck."""

    def __init__(self, out: Path):
        self.path = out / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        try:
            # Not followed if it is a symbolic link: the run would write its process id wherever it points.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                raise
            if error.errno == errno.ELOOP:
                raise RunRefused(f"{self.path} is a symbolic link; the run does not follow it (it would write "
                                 f"where the link points): remove it") from None
            raise RunRefused(f"cannot open the lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunRefused(f"another run (process {holder}) is writing to {self.path.parent}; wait for it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def stamp_config(out: Path, config: dict) -> None:
    """Record ``config`` in ``OUT/run_config.json``, or check it against the one recorded there.

    Raises :class:`RunRefused` naming each option that differs.
    """
    path = out / CONFIG_FILE
    if path.exists() or path.is_symlink():
        try:
            recorded = json.loads(read_capped(path, STAMP_MAX_BYTES, "a run stamp").decode("utf-8"))
        except (OSError, ValueError) as error:  # unreadable, too large, not UTF-8, not JSON
            why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            raise RunRefused(f"{path} is not a run stamp ({why}): use another --out, or empty {out} to start "
                             f"over") from None
        if not isinstance(recorded, dict):
            raise RunRefused(f"{path} holds a JSON {type(recorded).__name__}, not a run stamp: use another --out, "
                             f"or empty {out} to start over")
        differing = [
            f"{key}: {recorded.get(key)!r} there, {config.get(key)!r} now"
            for key in sorted(set(recorded) | set(config)) if recorded.get(key) != config.get(key)
        ]
        if differing:
            raise RunRefused(
                f"{out} holds a run with other options ({'; '.join(differing)}): use another --out, or the same options"
            )
        return
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(), temporary)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


# What a run stamp records of the options: those that make the edits (the prompt is each sample's,
# the pixel limit FASTDRAG_MAX_PIXELS), named as the stamps have always named them. Guidance came
# later: it is recorded only when it is not the default, so a folder stamped before resumes.
STAMPED_OPTIONS = ("num_inference_steps", "inversion_strength", "fill", "preserve_consistency", "seed", "mode",
                   "max_drags")
STAMPED_WHEN_SET = ("guidance_scale",)


def options_stamp(options: EditOptions) -> dict[str, Any]:
    """The part of a run stamp that :class:`EditOptions` make (see :data:`STAMPED_OPTIONS`)."""
    stamp = {name: getattr(options, name) for name in STAMPED_OPTIONS}
    default = EditOptions()
    stamp.update({name: getattr(options, name) for name in STAMPED_WHEN_SET
                  if getattr(options, name) != getattr(default, name)})
    return stamp


def edit_sample(pipe, data: SampleData, options: EditOptions) -> tuple[Any, dict[str, float]]:
    """Run the pipeline on one sample, with its prompt and the run's pixel limit: ``(edited PIL image,
    seconds per phase)``."""
    # Checked here too, to say how a command-line user raises the limit.
    check_drag_points(data.handles, data.targets, image_size(data.image), options.max_drags,
                      f"raise the limit with --max-drags (now {options.max_drags})")
    options = options.replace(prompt=data.prompt, max_image_pixels=max_image_pixels())
    with pipe.timing_phases() as times:
        image = pipe(data.image, handle_points=data.handles, target_points=data.targets, mask=data.mask,
                     **options.pipeline_kwargs()).images[0]
    return image, dict(times)


def run_sample(pipe, sample: Sample, out: Path, options: EditOptions, process: int) -> dict:
    """Edit one sample and save it; any exception becomes an ``"error"`` record, never a crash."""
    record: dict[str, Any] = {"sample": sample.key, "category": sample.category, "process": process,
                              "data": sample_fingerprint(sample)}  # before reading: a later change redoes it
    start = time.perf_counter()
    try:
        image, times = edit_sample(pipe, load_sample(sample), options)
        relative = f"{sample.key}/{EDITED_FILE}"
        save_atomically(image, out / relative)
        record.update(status="ok", image=relative, seconds=time.perf_counter() - start, phases=times)
    except Exception as error:  # noqa: BLE001 - one bad sample must not end a 205-sample run
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            raise  # not the sample's fault: run_dragbench stops the run, and a rerun resumes
        record.update(
            status="error",
            error=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(limit=4),
            seconds=time.perf_counter() - start,
        )
    return record


@dataclass
class RunSummary:
    total: int
    skipped: int
    done: int
    failed: int


def process_device(requested: str, local_index: int) -> str:
    """The device one process of a launch edits on. ``cpu`` stays; ``auto`` and ``cuda`` mean the
    process's own GPU, ``cuda:<local index mod GPU count>`` (more processes than GPUs share them),
    or, for ``auto`` without a GPU, the CPU; anything else (``cuda:1``, ``mps``) is kept."""
    import torch

    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_index % torch.cuda.device_count()}"
    return "cpu" if requested == "auto" else requested


def run_dragbench(
    data: str | os.PathLike,
    out: str | os.PathLike,
    load_pipeline: Callable[[Any], Any],
    options: EditOptions | None = None,
    progress: bool = True,
    device: str = "auto",
    config: dict | None = None,
) -> RunSummary:
    """Edit every DragBench sample not yet done in ``out``, split across Accelerate's processes.

    ``load_pipeline(device)`` returns the pipeline on that device; it is called once per process,
    and only if that process has samples to do, with the process's device (:func:`process_device`
    of ``device``). ``config`` says what else made the edits (model, dtype, ...): with the
    options (the mode among them) and the project version it is stamped in ``OUT/run_config.json``, and a
    folder stamped otherwise is refused (:class:`RunRefused`), as is a folder another run holds.
    The stamp names the data folder (resolved); each record carries its sample's
    :func:`sample_fingerprint`, so an edit of data changed since is redone. A full disk stops the run
    with :class:`DiskFull`; nothing done is lost and a rerun resumes. Returns this process's counts.
    """
    from accelerate import PartialState

    from .. import __version__

    # The processes only coordinate (one barrier, the split), so they form a CPU (gloo) group
    # whatever devices they edit on: a GPU group would need a GPU per process (two processes on one
    # GPU break NCCL), and without cpu=True, processes launched on a machine with no GPU would each
    # see themselves alone and run every sample.
    state = PartialState(cpu=True)
    options = options or EditOptions()
    out = Path(out)
    meta_limits()  # a bad FASTDRAG_MAX_META_MIB is reported now, not by every sample
    max_image_pixels()  # and a bad FASTDRAG_MAX_PIXELS
    samples = find_samples(data)
    stamp = {**(config or {}), **options_stamp(options), "version": __version__,
             "data": str(Path(data).resolve())}
    try:
        return _run(state, samples, out, stamp, load_pipeline, options, progress, device)
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS or isinstance(error, DiskFull):
            raise
        raise DiskFull(error.errno, f"{os.strerror(error.errno)} writing to {error.filename or out}: the disk is "
                                    f"full; free some space and rerun the same command, it resumes where it "
                                    f"stopped") from error


def _run(state: Any, samples: list[Sample], out: Path, stamp: dict, load_pipeline: Callable[[Any], Any],
         options: EditOptions, progress: bool, device: str) -> RunSummary:
    """:func:`run_dragbench` once its arguments are read; ``state`` is Accelerate's ``PartialState``."""
    from tqdm.auto import tqdm

    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    # The main process holds the folder for the whole launch; its other processes write under it.
    with FolderLock(out) if state.is_main_process else contextlib.nullcontext():
        if state.is_main_process:
            stamp_config(out, stamp)
            remove_partial_images(out)
        latest = read_results(out)
        todo = [sample for sample in samples if not is_done(latest.get(sample.key), out, sample)]
        # Every process must read the log before any process appends to it, or the splits differ.
        state.wait_for_everyone()

        done = failed = 0
        with state.split_between_processes(todo) as mine:
            if mine:
                pipe = load_pipeline(process_device(device, state.local_process_index))
                pipe.set_progress_bar_config(disable=True)
                bar = tqdm(mine, desc=f"DragBench [{state.process_index}]", disable=not progress,
                           position=state.process_index)
                for sample in bar:
                    record = run_sample(pipe, sample, out, options, state.process_index)
                    append_line(out / RESULTS_FILE, record)
                    done += record["status"] == "ok"
                    failed += record["status"] != "ok"
                    bar.set_postfix(failed=failed)
        state.wait_for_everyone()
    return RunSummary(total=len(samples), skipped=len(samples) - len(todo), done=done, failed=failed)
