"""One file's work in a child process, with a time limit from the moment it starts and
failures sorted into transient and terminal.

A decoder can hang (no Python timeout interrupts C code) or abort (taking its process with
it). Each curation worker therefore keeps one child process and hands it a unit's files over
a pipe in one message; the child answers file by file, and each file is timed from the
previous answer: a hang costs a kill and a fresh child (which gets the files after it) after
``timeout_s`` of *work* (waiting in a queue never counts), an abort costs the child, and the
worker itself, with the rows it is gathering, survives both.

What becomes of a failure:
- ``Rejected`` (undecodable, too short, wrong kind): a terminal reject at once.
- an I/O error from the filesystem layer (an object store's 5xx, a reset connection) or a
  child killed by SIGKILL (the out-of-memory killer): transient, tried again after a backoff
  that doubles, ``max_retries`` times; still failing, a reject marked ``retryable``, which
  the next run tries again.
- a child that dies of any other signal (a decoder abort): retried like a transient
  failure, then a terminal reject (the same bytes abort the same decoder again).
- a hang past the limit: a terminal reject.
- an error that no input can cause (``CODE_ERRORS``: a name, an import or a syntax that is
  wrong) is our code broken for every file: it stops the job with its traceback, rather than
  turning the whole corpus into rejects.
- any other exception is a defect in our code on this input: logged with its traceback and
  kept as a retryable reject without retries in this run, so a fixed version picks it up.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable, Optional

import av
import cv2

from curation.probe import Rejected
from curation.sources import MediaItem
from curation.worker import process_item
from pipeline.allocator import keep_freed_memory
from pipeline.config.schema import Config

log = logging.getLogger("curation")

READY = "ready"
START_TIMEOUT_S = 300.0  # a fresh child imports the decoders and scorers; a loaded node is slow
# Errors that say the file is not there for us: retrying cannot help.
ABSENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
# Errors of our code whatever the input (UnboundLocalError is a NameError).
CODE_ERRORS = (NameError, ImportError, SyntaxError)


class CurationCodeError(RuntimeError):
    """The per-file code itself is broken (``CODE_ERRORS`` in the child): the job must stop."""


@dataclass
class Outcome:
    """What one file came to: rows, or a reject (stage, reason) and whether to retry it."""

    rows: list[dict[str, Any]]
    video_seconds: float = 0.0
    reject: Optional[tuple[str, str]] = None
    retryable: bool = False
    attempts: int = 1
    work_s: float = 0.0  # wall seconds from the file's start in the child to its answer
    work_cpu_s: float = 0.0  # the child's CPU seconds on it (a killed child's are unknown: 0)


@dataclass
class _CodeError:
    traceback: str


@dataclass
class _Failure:
    stage: str
    reason: str
    transient: bool  # worth another try in this run
    retryable: bool  # worth a try in the next run


Work = Callable[[MediaItem, Config], tuple[list[dict[str, Any]], float]]


def _serve(conn: Connection, work: Work, config: Config) -> None:
    """The child's loop: a list of items in, one result or failure out per item as each
    ends, with the CPU seconds the child spent on it (the parent times each in wall time
    from the previous one's answer), until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the child stops
    cv2.setNumThreads(1)  # the pool's workers, one per core, are the parallelism (see stages)
    keep_freed_memory()  # each input's buffers reuse the last one's pages (pipeline.allocator)
    conn.send(READY)  # imports done: the first file's clock starts now, not at the spawn
    while True:
        try:
            items = conn.recv()
        except EOFError:
            return
        for item in items:
            started = time.process_time()
            result = _work_on(item, work, config)
            conn.send((result, time.process_time() - started))


def _work_on(item: MediaItem, work: Work, config: Config) -> Any:
    try:
        return work(item, config)
    except Rejected as rejected:
        return _Failure(rejected.stage, rejected.reason, transient=False, retryable=False)
    except av.error.FFmpegError as err:  # the bytes, not the storage: terminal
        return _Failure("decode", one_line(err), transient=False, retryable=False)
    except OSError as err:
        absent = isinstance(err, ABSENT)
        return _Failure("read", one_line(err), transient=not absent, retryable=not absent)
    except CODE_ERRORS:
        return _CodeError(traceback.format_exc())
    except Exception as err:  # a defect on this input: reported with its traceback, job goes on
        log.error("curation defect on %s:\n%s", item.uri, traceback.format_exc())
        return _Failure("worker", one_line(err), transient=False, retryable=True)


def one_line(err: BaseException) -> str:
    """An error as a reject's reason: its type and the first line of its message."""
    text = str(err).splitlines()[0][:300] if str(err) else ""
    return f"{type(err).__name__}: {text}"


class Sandbox:
    """A child process that runs ``work`` (``curation.worker.process_item`` unless a test
    passes another module-level function) one file at a time."""

    def __init__(self, config: Config, work: Optional[Work] = None) -> None:
        self.config = config
        self.work = work or process_item
        self.cfg = config.curation
        self._process: Optional[mp.process.BaseProcess] = None
        self._conn: Optional[Connection] = None
        self._ready = False  # the child has answered READY

    def run_all(self, items: list[tuple[MediaItem, int]]) -> list[Outcome]:
        """Each ``(item, prior_attempts)``'s rows or reject, in order, after the retries its
        failures deserve. The items go to the child in one message and their answers stream
        back, so a unit of small images costs one round trip, not one per image; a hang or a
        crash ends the stream at its item, and the items after it go to a fresh child."""
        outcomes: dict[int, Outcome] = {}
        attempts = [0] * len(items)
        work_s = [0.0] * len(items)
        work_cpu_s = [0.0] * len(items)
        todo, again, rounds = list(range(len(items))), [], 0
        while todo:
            answered = self._stream([items[i][0] for i in todo])
            for i, (result, seconds, cpu) in zip(todo, answered):
                if isinstance(result, _CodeError):
                    raise CurationCodeError(f"curation's per-file code is broken (on {items[i][0].uri}):\n"
                                            f"{result.traceback}")
                attempts[i] += 1
                work_s[i] += seconds
                work_cpu_s[i] += cpu
                item, prior = items[i]
                if not isinstance(result, _Failure):
                    rows, length = result
                    outcomes[i] = Outcome(rows, length, attempts=prior + attempts[i], work_s=work_s[i],
                                          work_cpu_s=work_cpu_s[i])
                elif result.transient and attempts[i] <= self.cfg.max_retries:
                    log.warning("%s: %s; trying again", item.uri, result.reason)
                    again.append(i)
                else:
                    gave_up = f" (after {attempts[i]} tries)" if result.transient else ""
                    outcomes[i] = Outcome([], reject=(result.stage, result.reason + gave_up),
                                          retryable=result.retryable, attempts=prior + attempts[i], work_s=work_s[i],
                                          work_cpu_s=work_cpu_s[i])
            todo = todo[len(answered):]
            if not todo and again:
                rounds += 1
                time.sleep(self.cfg.retry_backoff_s * 2 ** (rounds - 1))
                todo, again = again, []
        return [outcomes[i] for i in range(len(items))]

    def start(self) -> None:
        """Spawn the child now, without waiting for it: its imports overlap the caller's."""
        if self._process is None or not self._process.is_alive():
            context = mp.get_context("spawn")  # a fork of a threaded Ray worker can deadlock
            parent, child = context.Pipe()
            self._process = context.Process(target=_serve, args=(child, self.work, self.config), daemon=True)
            self._process.start()
            child.close()
            self._conn, self._ready = parent, False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
        self._process = self._conn = None

    def _stream(self, items: list[MediaItem]) -> list[tuple[Any, float, float]]:
        """Answers (result or ``_Failure``, wall seconds of work, the child's CPU seconds) for
        a prefix of ``items``: all of them, or up to the one whose child hung or died."""
        conn = self._ensure_child()
        try:
            conn.send(items)
        except (BrokenPipeError, ConnectionError):  # it died idle, after its last answer
            self._kill()
            conn = self._ensure_child()
            conn.send(items)
        answered: list[tuple[Any, float, float]] = []
        for _ in items:
            started = time.monotonic()
            if not conn.poll(self.cfg.file_timeout_s):
                self._kill()
                failure = _Failure("worker", f"timed out after {self.cfg.file_timeout_s:g} s of work (decoder hung?)",
                                   transient=False, retryable=False)
                return answered + [(failure, time.monotonic() - started, 0.0)]
            try:
                result, cpu = conn.recv()
                answered.append((result, time.monotonic() - started, cpu))
            except (EOFError, ConnectionError):
                return answered + [(self._died(), time.monotonic() - started, 0.0)]
        return answered

    def _died(self) -> _Failure:
        assert self._process is not None
        self._process.join(timeout=5)
        code = self._process.exitcode
        self._process = self._conn = None
        if code == -signal.SIGKILL:
            return _Failure("worker", "worker process killed (out of memory?)", transient=True, retryable=True)
        what = signal.Signals(-code).name if code is not None and code < 0 else f"exit code {code}"
        return _Failure("worker", f"worker process crashed on this file ({what}; decoder abort?)",
                        transient=True, retryable=False)

    def _ensure_child(self) -> Connection:
        self.start()
        assert self._process is not None and self._conn is not None
        if not self._ready:
            try:
                ready = self._conn.poll(START_TIMEOUT_S) and self._conn.recv() == READY
            except (EOFError, ConnectionError):  # it died importing: a broken install, not a file
                ready = False
            if not ready:
                self._kill()
                raise RuntimeError(f"the curation sandbox did not start in {START_TIMEOUT_S} s")
            self._ready = True
        return self._conn

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None
