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
  only: the newest one, never a history, so memory is one result per session, for at most
  ``max_keys`` sessions (the least recently used idle one is forgotten past that).

This module knows nothing of images or pipelines; it is tested with plain functions.
"""

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


MAX_KEYS = 64  # browser sessions with a kept result; each keeps one result (an image)
RUN_LOG = 1000  # the newest runs kept in LatestWins.runs, for tests and benchmarks


@dataclass(frozen=True)
class Finished:
    """A job's outcome. ``seq`` is the number :meth:`LatestWins.submit` gave it (per key, from 1);
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

    def __init__(self, run: Callable[[Any], Any], describe_error: Callable[[BaseException], str] = str,
                 max_keys: int = MAX_KEYS):
        self._run, self._describe_error, self._max_keys = run, describe_error, max_keys
        self._cond = threading.Condition()
        self._waiting: OrderedDict[Hashable, tuple[int, Any]] = OrderedDict()  # in order of waiting since
        self._running: tuple[Hashable, int] | None = None
        self._finished: OrderedDict[Hashable, Finished] = OrderedDict()  # least recently used first
        self._submitted: OrderedDict[Hashable, int] = OrderedDict()  # least recently submitted first
        self._worker: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # stale jobs replaced before they started
        self.runs: deque[Run] = deque(maxlen=RUN_LOG)

    def submit(self, key: Hashable, job: Any) -> int:
        """Queue ``job`` for ``key``, replacing the key's waiting job if it has one; return its number."""
        with self._cond:
            if self._closed:
                raise RuntimeError("this LatestWins is closed")
            seq = self._submitted.get(key, 0) + 1
            self._submitted[key] = seq
            self._submitted.move_to_end(key)
            if key in self._waiting:
                self.dropped += 1
            self._waiting[key] = (seq, job)  # a replaced job keeps its key's place in the line
            self._forget_idle_keys()
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="fastdrag-live", daemon=True)
                self._worker.start()
            self._cond.notify_all()
            return seq

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
                    self._finished.move_to_end(key)
                    return finished
                left = deadline - time.monotonic()
                if left <= 0 or not self._busy(key) or self._closed:
                    return None
                self._cond.wait(left)

    def forget(self, key: Hashable) -> None:
        """Drop the key's waiting job and its kept result (a closed browser tab)."""
        with self._cond:
            self._waiting.pop(key, None)
            self._finished.pop(key, None)
            if not self._busy(key):
                self._submitted.pop(key, None)

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
        return key in self._waiting or (self._running is not None and self._running[0] == key)

    def _forget_idle_keys(self) -> None:
        """Past ``max_keys`` keys, forget the least recently used idle ones (their kept result)."""
        for key in list(self._submitted):
            if len(self._submitted) <= self._max_keys:
                return
            if not self._busy(key):
                self._submitted.pop(key)
                self._finished.pop(key, None)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                key, (seq, job) = self._waiting.popitem(last=False)
                self._running = (key, seq)
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
                if key in self._submitted:  # not forgotten while it ran
                    self._finished[key] = Finished(seq, value, error, started, ended)
                    self._finished.move_to_end(key)
                self._cond.notify_all()
