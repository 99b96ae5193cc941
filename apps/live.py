"""Live drag's scheduling: one model, many browser sessions, the latest request of each wins.

The editor (:mod:`fastdrag.apps.app`) submits a job each time a session's drags change while the
mouse button is held. :class:`LatestWins` runs those jobs one at a time on one worker thread, so
the model makes one UNet call sequence at a time (the pipeline's own lock would serialise them
anyway; this adds the order):

- **Latest wins.** A session has at most one waiting job. A newer one replaces it: the stale job
  is dropped, never run. The job that is running is never interrupted.
- **No starvation.** Sessions are served in the order they started waiting. A session that was
  just served waits behind every session already waiting, however fast it submits.
- **Each session sees only its own results.** A session's finished jobs are kept under its key
  only: the newest one, never a history, so memory is one result per key until the key is
  forgotten (:meth:`LatestWins.forget`). The owner of the keys (the editor's ``LiveDrag``) decides
  how many there may be.

Job numbers come from one counter for all keys: they only grow, even for a key forgotten and used
again, so "newer than the last one shown" never mixes two lives of a key.

This module knows nothing of images or pipelines; it is tested with plain functions.
"""

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


RUN_LOG = 1000  # the newest runs kept in LatestWins.runs, for tests and benchmarks


@dataclass(frozen=True)
class Finished:
    """A job's outcome. ``seq`` is the number :meth:`LatestWins.submit` gave it (growing, from 1);
    ``value`` is what the job returned, ``error`` the one line of what it raised (then ``value`` is
    ``None``). Times are ``time.perf_counter()`` seconds."""

    seq: int
    value: Any
    error: str | None
    started: float
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True)
class Run:
    """One job's run, as :attr:`LatestWins.runs` logs it."""

    key: Hashable
    seq: int
    started: float
    ended: float


class LatestWins:
    """Runs ``run(job)`` for submitted jobs on one worker thread; see the module's docstring.

    ``describe_error(error)`` turns what a job raised into the one line kept in
    :attr:`Finished.error`; any exception a job raises is kept that way, and the worker goes on.
    """

    def __init__(self, run: Callable[[Any], Any], describe_error: Callable[[BaseException], str] = str):
        self._run, self._describe_error = run, describe_error
        self._cond = threading.Condition()
        self._waiting: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()  # in order of waiting since
        self._running: tuple[Hashable, int] | None = None
        self._running_forgotten = False  # the running job's key was forgotten: its result is not kept
        self._finished: dict[Hashable, Finished] = {}
        self._seq = 0
        self._worker: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # stale jobs replaced before they started
        self.runs: deque[Run] = deque(maxlen=RUN_LOG)

    def submit(self, key: Hashable, job: Any) -> int:
        """Queue ``job`` for ``key``, replacing the key's waiting job if it has one; return its number."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this LatestWins is closed")
            self._seq += 1
            seq = self._seq
            if key in self._waiting:
                self.dropped += 1
            self._waiting[key] = (seq, job)  # a replaced job keeps its key's place in the line
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="fastdrag-live", daemon=True)
                self._worker.start()
            self._cond.notify_all()
            return seq

    @property
    def waiting(self) -> int:
        """How many jobs wait (at most one per key)."""
        with self._cond:
            return len(self._waiting)

    def busy(self, key: Hashable) -> bool:
        """Whether ``key`` has a job waiting or running."""
        with self._cond:
            return self._busy(key)

    def latest(self, key: Hashable, after: int = 0, timeout: float = 0.0) -> Finished | None:
        """The key's newest finished job if its number is above ``after``; else wait up to
        ``timeout`` seconds for one, and ``None`` if none came (or the key has nothing left to run)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                finished = self._finished.get(key)
                if finished is not None and finished.seq > after:
                    return finished
                left = deadline - time.monotonic()
                if left <= 0 or not self._busy(key) or self._closed:
                    return None
                self._cond.wait(left)

    def forget(self, key: Hashable) -> None:
        """Drop the key's waiting job and its kept result; a job of it that is running ends, and its
        result is not kept (a closed browser tab, an image replaced by another)."""
        with self._cond:
            self._waiting.pop(key, None)
            self._finished.pop(key, None)
            if self._running is not None and self._running[0] == key:
                self._running_forgotten = True
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Run no more jobs (the running one ends) and stop the worker."""
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    def _busy(self, key: Hashable) -> bool:
        running = self._running is not None and self._running[0] == key and not self._running_forgotten
        return key in self._waiting or running

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key, (seq, job) = self._waiting.popitem(last=False)
                self._running, self._running_forgotten = (key, seq), False
            started = time.perf_counter()
            value, error = None, None
            try:
                value = self._run(job)
            except Exception as exception:  # noqa: BLE001 - one job's failure is its result; the worker goes on
                error = self._describe_error(exception)
            ended = time.perf_counter()
            with self._cond:
                self._running = None
                self.runs.append(Run(key, seq, started, ended))
                if not self._running_forgotten:
                    self._finished[key] = Finished(seq, value, error, started, ended)
                self._cond.notify_all()
