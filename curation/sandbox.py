"""One file's work in a child process, with a time limit from the moment it starts and
failures sorted into transient and terminal.

A decoder can hang (no Python timeout interrupts C code) or abort (taking its process with
it). Each curation worker therefore keeps one child process and hands it one file at a time
over a pipe: a hang costs a kill and a fresh child after ``timeout_s`` of *work* (waiting in
a queue never counts), an abort costs the child, and the worker itself, with the rows it is
gathering, survives both.

What becomes of a failure:
- ``Rejected`` (undecodable, too short, wrong kind): a terminal reject at once.
- an I/O error from the filesystem layer (an object store's 5xx, a reset connection) or a
  child killed by SIGKILL (the out-of-memory killer): transient, tried again after a backoff
  that doubles, ``max_retries`` times; still failing, a reject marked ``retryable``, which
  the next run tries again.
- a child that dies of any other signal (a decoder abort): retried like a transient
  failure, then a terminal reject (the same bytes abort the same decoder again).
- a hang past the limit: a terminal reject.
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

from curation.probe import Rejected
from curation.sources import MediaItem
from curation.worker import process_item
from pipeline.config.schema import Config

log = logging.getLogger("curation")

READY = "ready"
START_TIMEOUT_S = 300.0  # a fresh child imports the decoders and scorers; a loaded node is slow
# Errors that say the file is not there for us: retrying cannot help.
ABSENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass
class Outcome:
    """What one file came to: rows, or a reject (stage, reason) and whether to retry it."""

    rows: list[dict[str, Any]]
    video_seconds: float = 0.0
    reject: Optional[tuple[str, str]] = None
    retryable: bool = False
    attempts: int = 1
    work_s: float = 0.0


@dataclass
class _Failure:
    stage: str
    reason: str
    transient: bool  # worth another try in this run
    retryable: bool  # worth a try in the next run


Work = Callable[[MediaItem, Config], tuple[list[dict[str, Any]], float]]


def _serve(conn: Connection, work: Work, config: Config) -> None:
    """The child's loop: one item in, one result or failure out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the child stops
    conn.send(READY)  # imports done: the first file's clock starts now, not at the spawn
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        try:
            rows, seconds = work(item, config)
            conn.send((rows, seconds))
        except Rejected as rejected:
            conn.send(_Failure(rejected.stage, rejected.reason, transient=False, retryable=False))
        except av.error.FFmpegError as err:  # the bytes, not the storage: terminal
            conn.send(_Failure("decode", _one_line(err), transient=False, retryable=False))
        except OSError as err:
            absent = isinstance(err, ABSENT)
            conn.send(_Failure("read", _one_line(err), transient=not absent, retryable=not absent))
        except Exception as err:  # a defect on this input: reported with its traceback, job goes on
            log.error("curation defect on %s:\n%s", item.uri, traceback.format_exc())
            conn.send(_Failure("worker", _one_line(err), transient=False, retryable=True))


def _one_line(err: BaseException) -> str:
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

    def run(self, item: MediaItem, prior_attempts: int = 0) -> Outcome:
        """The item's rows or its reject, after the retries its failures deserve."""
        attempts = 0
        while True:
            attempts += 1
            started = time.monotonic()
            result = self._attempt(item)
            work_s = time.monotonic() - started
            if not isinstance(result, _Failure):
                rows, seconds = result
                return Outcome(rows, seconds, attempts=prior_attempts + attempts, work_s=work_s)
            if not result.transient or attempts > self.cfg.max_retries:
                gave_up = f" (after {attempts} tries)" if result.transient else ""
                return Outcome([], reject=(result.stage, result.reason + gave_up), retryable=result.retryable,
                               attempts=prior_attempts + attempts, work_s=work_s)
            backoff = self.cfg.retry_backoff_s * 2 ** (attempts - 1)
            log.warning("%s: %s; trying again in %.1f s", item.uri, result.reason, backoff)
            time.sleep(backoff)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
        self._process = self._conn = None

    def _attempt(self, item: MediaItem) -> Any:
        conn = self._ensure_child()
        conn.send(item)
        if not conn.poll(self.cfg.file_timeout_s):
            self._kill()
            return _Failure("worker", f"timed out after {self.cfg.file_timeout_s:g} s of work (decoder hung?)",
                            transient=False, retryable=False)
        try:
            return conn.recv()
        except (EOFError, ConnectionError):
            return self._died()

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
        if self._process is None or not self._process.is_alive():
            context = mp.get_context("spawn")  # a fork of a threaded Ray worker can deadlock
            parent, child = context.Pipe()
            self._process = context.Process(target=_serve, args=(child, self.work, self.config), daemon=True)
            self._process.start()
            child.close()
            if not parent.poll(START_TIMEOUT_S) or parent.recv() != READY:
                self._process.kill()
                raise RuntimeError(f"the curation sandbox did not start in {START_TIMEOUT_S} s")
            self._conn = parent
        assert self._conn is not None
        return self._conn

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None
