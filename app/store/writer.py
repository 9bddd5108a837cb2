"""SQLite's one writer at a time: a fair write turn across threads and processes, and
group commit of the messages of one process.

SQLite lets one transaction write at a time, and a writer that finds the lock taken
sleeps in SQLite's busy handler (1, 2, 5, 10 ms...), first come not first served.
Writers queue here instead: the threads of a process on a lock, the processes on an
flock of a file beside the database. The flock is fair: a process that has just had a
turn lets a process that was already waiting go first.

Messages of one process are committed together (`GroupCommit`): the first thread to
find no batch running leads; every message that arrives while a batch runs waits for
the next one, which one of them leads. Each message's outcome is its own, and none is
answered before the commit that holds it.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import Unavailable

#: Longest wait for a SQLite write turn before the message gets 503 (Plivo waits 8 s).
WRITER_WAIT_S = 5.0
#: Longest wait of a message for a batch to take it (then 503): under the 8 s Plivo waits.
QUEUE_WAIT_S = 7.0
#: How long a process that has just had the turn waits for a process that was waiting
#: before it to take it (then it tries anyway: a waiter may have given up).
YIELD_MAX_S = 0.1


class WriteTurn:
    """Mutual exclusion of SQLite writers: a thread lock, then an flock across processes.

    A writer that has to wait says so (a thread of this process by a count, the one thread
    of a process that waits for the flock by a shared flock on a second file), so a
    process that has just written lets it go first, and a background writer (the prune)
    can let every waiting writer go first (`hand_over`).
    """

    def __init__(self, database: str | None):
        self._lock = threading.Lock()
        self._path = os.path.abspath(database) + ".writer-lock" if database else None
        self._fd: int | None = None
        self._waiting = 0                 # threads of this process waiting for the thread lock
        self._count = threading.Lock()
        self._queue_path = self._path + "-queue" if self._path else None
        self._queue_fd: int | None = None  # shared-locked while this process waits for the flock
        self._probe_fd: int | None = None  # another open file: tries the queue exclusively
        self.connection: Any = None        # the process's writing connection, used under the turn

    def __enter__(self):
        deadline = time.monotonic() + WRITER_WAIT_S
        if not self._lock.acquire(blocking=False):
            with self._count:
                self._waiting += 1
            try:
                got = self._lock.acquire(timeout=WRITER_WAIT_S)
            finally:
                with self._count:
                    self._waiting -= 1
            if not got:
                raise Unavailable(f"the database is busy: no write turn within {WRITER_WAIT_S:g} s")
        try:
            if self._path is not None:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                self._flock(deadline)
        except OSError:
            pass  # no lock file (a read-only folder): SQLite's own busy timeout still orders writers
        except BaseException:
            self._lock.release()
            raise
        return self

    def _flock(self, deadline: float) -> None:
        """The cross-process lock by the deadline. Fair: first, while another process waits
        for it, give that one the turn (at most YIELD_MAX_S). Then at once when free, else
        tried again after 0.1, 0.2, 0.5, then every 1 ms (a turn lasts a few hundred
        microseconds), so a stuck holder (a stopped process) costs a 503 after the deadline,
        never a hang. While it waits, the process holds the queue file shared: other
        processes see a writer waiting."""
        if self._others_waiting():
            polite = min(deadline, time.monotonic() + YIELD_MAX_S)
            while self._others_waiting() and time.monotonic() < polite:
                time.sleep(0.0002)
        delays = (0.0001, 0.0002, 0.0005)
        attempt = 0
        queued = False
        try:
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Unavailable(f"the database is busy: no write turn within {WRITER_WAIT_S:g} s") from None
                    if not queued:
                        queued = self._queue(fcntl.LOCK_SH)
                    time.sleep(delays[attempt] if attempt < len(delays) else 0.001)
                    attempt += 1
        finally:
            if queued:
                fcntl.flock(self._queue_fd, fcntl.LOCK_UN)

    def _queue(self, how: int) -> bool:
        """Take the queue file's lock (`how`) without waiting: False when another holds it
        in a way that conflicts. The exclusive try goes through a file of its own, so it
        also sees this process's own waiting thread."""
        try:
            if how == fcntl.LOCK_SH:
                if self._queue_fd is None:
                    self._queue_fd = os.open(self._queue_path, os.O_RDWR | os.O_CREAT, 0o600)
                fd = self._queue_fd
            else:
                if self._probe_fd is None:
                    self._probe_fd = os.open(self._queue_path, os.O_RDWR | os.O_CREAT, 0o600)
                fd = self._probe_fd
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return True
        except OSError:  # BlockingIOError: taken; any other: no queue file, nobody can be seen waiting
            return False

    def _others_waiting(self) -> bool:
        """True while a process (this one's own waiter holds no share now) waits for the flock."""
        if self._queue_path is None:
            return False
        if self._queue(fcntl.LOCK_EX):
            fcntl.flock(self._probe_fd, fcntl.LOCK_UN)
            return False
        return self._probe_fd is not None

    def waiting(self) -> bool:
        """True while another writer waits for a turn: a thread of this process or another process."""
        return bool(self._waiting) or self._others_waiting()

    def hand_over(self, pause: float, most: float) -> None:
        """After a background writer's turn, before its next: sleep `pause`, then wait until
        no writer is waiting (each has had its turn), for at most `most` seconds, so the
        background writer can never be held back for good by a steady stream of writers."""
        time.sleep(pause)
        deadline = time.monotonic() + most
        while self.waiting() and time.monotonic() < deadline:
            time.sleep(0.0005)

    def __exit__(self, *exc):
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self.connection is not None:
                self.connection.close()
                self.connection = None
            for name in ("_fd", "_queue_fd", "_probe_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    os.close(fd)
                    setattr(self, name, None)


class Job:
    """One message waiting for a batch: its work, then its outcome (or its error)."""

    __slots__ = ("work", "outcome", "error", "done", "lead", "_wake")

    def __init__(self, work):
        self.work = work
        self.outcome = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False         # woken to lead the next batch, not with an outcome
        self._wake = threading.Event()

    def finish(self, outcome=None, error: BaseException | None = None) -> None:
        self.outcome, self.error, self.done = outcome, error, True
        self._wake.set()

    def result(self):
        if self.error is not None:
            # One error may end every job of a batch: each thread raises its own copy, so
            # their tracebacks do not mix.
            error = self.error
            if isinstance(error, Unavailable):
                raise type(error)(str(error)) from error
            raise error
        return self.outcome


class GroupCommit:
    """Commits the messages of one process together: `submit(work)` returns the work's
    outcome once the transaction holding it has committed.

    `run(jobs)` writes a batch in one transaction and calls `finish` on every job (an
    outcome each, or an error each). The leader runs one batch (every job queued when it
    starts, its own first among them), then hands the lead to the first job that queued
    meanwhile, so no request waits for others' batches after its own answer is ready.
    """

    def __init__(self, run: Callable[[list[Job]], None], max_batch: int = 32):
        self._run = run
        self._max = max_batch
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._leading = False

    def submit(self, work):
        job = Job(work)
        with self._lock:
            self._queue.append(job)
            lead = not self._leading
            self._leading = True
        if not lead:
            if not job._wake.wait(QUEUE_WAIT_S):
                with self._lock:
                    if job in self._queue and not job.lead:  # not taken into a batch yet: give up
                        self._queue.remove(job)
                        raise Unavailable(f"the database is busy: not written within {QUEUE_WAIT_S:g} s")
                job._wake.wait()  # in a batch that is running: its outcome comes
            if job.done:
                return job.result()
        self._lead(job)
        return job.result()

    def _lead(self, mine: Job) -> None:
        """Run batches until `mine` is done, then pass the lead on (or give it up)."""
        while not mine.done:
            with self._lock:
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 - run() finishes every job; this is a last resort
                for job in batch:
                    if not job.done:
                        job.finish(error=exc)
        with self._lock:
            if not self._queue:
                self._leading = False
                return
            heir = self._queue[0]
            heir.lead = True
            heir._wake.set()
