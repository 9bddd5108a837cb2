"""Keep the rules a process answers with, follow the rules file, and agree with the other workers.

Following the file: a serving process (a gunicorn worker, `flask run`) runs one watcher
thread (`start`). Every interval it looks at the file (one `stat`, no read) and, when the
file changed, compiles it in full before it replaces the rules in use; idle workers follow
the file as closely as busy ones, and the request path only reads an attribute. Without a
watcher (in-process tests) `current()` makes the same check itself, at most once per
interval.

A bad file (it does not compile, or cannot be read) never replaces rules; it is logged with
every `path:line: message`, and /readyz lists the problems. A file whose content is bad is
read again only when it changes; one that could not be read at all (too many open files, an
I/O error or a stale handle on a network file system, a permission changed for a moment) is
read again at every look until it can be, and logged once.

While the file is bad a process answers with the newest version of it that any process
serving it compiled, not its own: every good version compiled (the gunicorn master's at start
too) is offered to the rules file's kept copy (`KeptCopy`, in `kept.py`), and while the file
stays bad each process looks at it every interval and switches to the newest kept version
when it holds other rules, at least as new as its own (a kept version older than its own is
offered again: that offer was lost). So every worker ends on the same rules, a worker started
while the file is bad (a respawn, a HUP) answers like the others, and two services with
different rules files in one folder never answer from each other's copy.

The warnings of a version (a rule that can never match, a reply that costs several units, ...)
are logged once per service start and once per new version, one WARNING line each with its
`path:line`, not once per worker: the gunicorn master logs those of the file it checks at
start (and tells its workers, `WARNED_ENV`); later, the one process whose offer creates the
version in the kept copy logs them. A process without a master (`flask run`) logs those of
the rules it starts with; one without a kept copy, those of every version it loads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref

from .compiler import Sending, compile_text, decode
from .engine import RuleSet
from .kept import KEEP_FOLDER, KeptCopy, Version, keep_dir, kept_copy_path
from .kept import signature_of as _signature
from .source import Problem, RulesError

__all__ = ["KEEP_FOLDER", "KeptCopy", "RulesHolder", "Version", "WARNED_ENV", "compile_and_keep", "keep_dir",
           "kept_copy_path", "log_warnings", "read_file", "read_version"]

log = logging.getLogger("app.rules")

#: Set by the gunicorn master to the digest of the rules whose warnings it logged at start,
#: so that its workers, which compile the same file again, do not log them a second time.
WARNED_ENV = "RESPONDER_RULES_WARNED"


def log_warnings(ruleset: RuleSet) -> None:
    """One WARNING line per warning of `ruleset`, as `rules check` prints it:
    `path:line: warning: message`."""
    for warning in ruleset.warnings:
        log.warning("%s: warning: %s", warning.where, warning.message,
                    extra={"rules_path": warning.path, "digest": ruleset.digest})


class Unreadable(RulesError):
    """The rules file could not be read at all (an error of the system, not of its content)."""


def read_file(path: str) -> tuple[bytes, tuple[int, int], tuple | None]:
    """The file's bytes, their (ctime_ns, mtime_ns), and the signature to compare later looks with.

    Times and signature come from the descriptor that was read, so they describe these bytes
    even when the file is replaced meanwhile (the next look then sees another signature). The
    signature is None when the file was written to while it was read, so that the next look
    reads it again. Raises `Unreadable`.
    """
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as fh:
            before = os.fstat(fh.fileno())
            raw = fh.read()
            after = os.fstat(fh.fileno())
    except OSError as exc:
        raise Unreadable([Problem(path, 0, f"cannot read the rules file: {exc.strerror or exc}",
                                  "cannot read")]) from None
    signature = _signature(before)
    return raw, (before.st_ctime_ns, before.st_mtime_ns), signature if signature == _signature(after) else None


def read_version(path: str) -> tuple[Version, tuple | None]:
    """The file's text as a `Version`, and the signature to compare later looks with (as
    `read_file`). Raises `RulesError` when it cannot be read (`Unreadable`) or is not UTF-8."""
    raw, changed, signature = read_file(path)
    return Version.of(decode(raw, os.path.abspath(path)), changed, signature), signature


def _stat(path: str) -> os.stat_result | None:
    """The file's stat, or None when it cannot be seen."""
    try:
        return os.stat(path)
    except OSError:
        return None


def _stat_signature(path: str) -> tuple | None:
    st = _stat(path)
    return None if st is None else _signature(st)


def compile_and_keep(path: str, folder: str, *, sending: Sending | None = None) -> RuleSet:
    """Compile the rules file (raising `RulesError` as `load` does) and offer it to the kept copy.

    For the gunicorn master at start: the workers it forks then find this version kept even
    if the file is broken before they boot. A copy that cannot be written is only logged.
    """
    version, _ = read_version(path)
    ruleset = compile_text(version.text, path, sending=sending)
    KeptCopy(folder, path).offer(version)
    return ruleset


#: A signature no file has: the next look reads the file whatever its stat says.
_READ_AGAIN = ("read again",)

#: Holders whose watcher runs in this process; a forked child has no watcher thread, so its
#: holders go back to looking on the request path (see `_after_fork`).
_watching: "weakref.WeakSet[RulesHolder]" = weakref.WeakSet()


class RulesHolder:
    def __init__(self, path: str, interval: float = 0.0, *, keep_dir: str | None = None,
                 sending: Sending | None = None):
        self.path = path
        self.abspath = os.path.abspath(path)  # named in problems and log lines
        self.interval = interval
        self.kept = KeptCopy(keep_dir, path) if keep_dir else None
        self.sending = sending  # the service's settings, checked on every compile (None: not checked)
        self.ruleset: RuleSet | None = None
        self.error: RulesError | None = None  # the last failed load, while the file is bad
        self._version: Version | None = None  # the version `ruleset` was compiled from
        self._seen: tuple | None = None        # the file's signature at the last look (None: not seen)
        self._kept_seen: tuple | None = None   # the kept copy's signature at the last look
        self._retrying: str | None = None      # a failure read again at every look, logged once
        self._to_offer: Version | None = None  # rules still to offer to the kept copy
        self._to_warn: RuleSet | None = None   # rules whose warnings to log if our offer keeps them first
        self._poll_on_request = bool(interval)
        self._next_check = 0.0
        self._lock = threading.Lock()          # guards the rules in use and the looks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- answering ---------------------------------------------------------------------------

    def current(self) -> RuleSet | None:
        """The rules to answer with. Without a watcher, looks at the file at most once per interval."""
        if self._poll_on_request and time.monotonic() >= self._next_check:
            if self._lock.acquire(blocking=False):  # else another thread is looking: answer with what we have
                try:
                    self._next_check = time.monotonic() + self.interval
                    self._refresh()
                finally:
                    self._lock.release()
        return self.ruleset

    # -- the watcher -------------------------------------------------------------------------

    def start(self) -> bool:
        """Follow the file from a daemon thread, every interval; False when the interval is 0.

        Call it in the process that serves (after gunicorn's fork): a thread does not
        survive a fork.
        """
        if not self.interval or self._thread is not None:
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="rules-watcher", daemon=True)
        self._poll_on_request = False
        _watching.add(self)
        self._thread.start()
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watcher (the look in progress ends first); requests then look themselves."""
        thread, self._thread = self._thread, None
        _watching.discard(self)
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._poll_on_request = bool(self.interval)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any one bad look
                log.exception("looking at the rules file %s failed; trying again in %g s", self.abspath, self.interval)

    def _after_fork(self) -> None:
        self._thread = None
        self._poll_on_request = bool(self.interval)
        self._lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """One look: reload the file if it changed; while it is bad, follow the kept copy."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        if _stat_signature(self.abspath) != self._seen:
            self._load()
        elif self.error is not None:
            self._follow_kept()
        self._keep()

    def load(self) -> bool:
        """(Re)load the file now; True when the rules in use are now the file's."""
        with self._lock:
            loaded = self._load()
            self._keep()
        return loaded

    def _load(self) -> bool:
        try:
            raw, changed, seen = read_file(self.abspath)
        except Unreadable as exc:
            # Not the content's fault: read again at the next look (a file that cannot even be
            # seen, as when it is missing, waits until a look sees it).
            visible = _stat(self.abspath) is not None
            return self._failed(exc, seen=_READ_AGAIN if visible else None, retry=True)
        try:
            version = Version.of(decode(raw, self.abspath), changed, seen)
            ruleset = compile_text(version.text, self.abspath, sending=self.sending)
        except RulesError as exc:
            # The content is bad (not UTF-8, does not compile): read again when the file changes.
            return self._failed(exc, seen=seen, retry=False)
        except Exception as exc:  # whatever went wrong, a bad file must not cost the rules in use
            if str(exc) != self._retrying:
                log.exception("the rules file %s could not be compiled", self.abspath)
            error = RulesError([Problem(self.abspath, 0, f"cannot load: {type(exc).__name__}: {exc}", "cannot load")])
            return self._failed(error, seen=_READ_AGAIN, retry=True, reason=str(exc))
        first = self.ruleset is None
        self.ruleset, self._version, self.error, self._seen = ruleset, version, None, seen
        self._retrying = None
        # The warnings: none when the gunicorn master logged them at start; now at this process's
        # start without a master, or without a kept copy; else by the one process that keeps them first.
        to_log = bool(ruleset.warnings) and not (first and os.environ.get(WARNED_ENV) == ruleset.digest)
        now = to_log and (self.kept is None or (first and WARNED_ENV not in os.environ))
        if now:
            log_warnings(ruleset)
        shadowed = [str(w) for w in ruleset.warnings if "can never match" in w.message]
        log.info("rules %s: %d rules from %s (%s)", "loaded" if first else "reloaded",
                 len(ruleset.rules), self.abspath, ruleset.digest,
                 extra={"warnings": len(ruleset.warnings), "shadowed": shadowed} if shadowed
                 else {"warnings": len(ruleset.warnings)})
        if self.kept is not None:
            self._to_offer, self._to_warn = version, (ruleset if to_log and not now else None)
        return True

    def _failed(self, error: RulesError, *, seen: tuple | None, retry: bool, reason: str | None = None) -> bool:
        """The file gave no rules at this look: answer with the newest good rules, say which; False.

        `seen` is the signature the next look compares with (`_READ_AGAIN`: read it then). `retry`
        says the failure is not the content's (the file could not be read, or compiling failed
        unexpectedly): the same failure at the following looks is then logged only when it
        changes the rules.
        """
        reason = str(error) if reason is None else reason
        repeat = retry and reason == self._retrying
        self._retrying = reason if retry else None
        self._seen, self.error = seen, error
        problems = {"rules_path": self.abspath, "problems": [str(p) for p in error.problems]}
        count = f"{len(error.problems)} problem(s)"
        if retry and self.interval:
            count += f" (it is looked at again every {self.interval:g} s)"
        before = self.ruleset
        if self._adopt_kept(force=not repeat):
            log.error("rules %s: %s has %s; answering with the last good rules kept at %s (%s)%s",
                      "reload failed" if before else "not loaded from the file", self.abspath, count,
                      self.kept.path, self.ruleset.digest,
                      f", newer than the rules in use ({before.digest})" if before else "",
                      extra={**problems, "kept_copy": self.kept.path})
        elif self.ruleset is not None and not repeat:
            log.error("rules reload failed, keeping the rules in use (%s): %s has %s",
                      self.ruleset.digest, self.abspath, count, extra=problems)
        elif not repeat:
            where = f" and no last good copy is kept at {self.kept.path}" if self.kept else ""
            log.error("rules not loaded: %s has %s%s", self.abspath, count, where, extra=problems)
        return False

    def _follow_kept(self) -> None:
        """The file is still bad: another worker may have compiled a newer version before it broke."""
        before = self.ruleset
        if self._adopt_kept(force=False):
            log.warning("rules file %s is still bad: answering with the last good rules kept at %s (%s), "
                        "compiled by another process%s", self.abspath, self.kept.path, self.ruleset.digest,
                        f" and newer than the rules in use ({before.digest})" if before else "",
                        extra={"rules_path": self.abspath, "kept_copy": self.kept.path,
                               "problems": [str(p) for p in self.error.problems]})

    def _adopt_kept(self, *, force: bool) -> bool:
        """Answer with the newest kept version when it holds other rules, at least as new as
        those in use (on a tie the kept version wins, so every worker ends on the same rules);
        True when it does. Kept rules older than those in use, or none, mean this process's
        offer was lost (a race, a full disk): they are offered again. Unless `force`, the kept
        copy is read only when it changed since the last look.
        """
        if self.kept is None:
            return False
        signature = self.kept.signature()
        if not force and signature == self._kept_seen:
            return False
        kept, mine = self.kept.read(), self._version
        # A listing or a read that failed (too many open files, an I/O error) is tried again at
        # the next look, not only once the folder changes.
        self._kept_seen = None if signature is None or self.kept.read_failed else signature
        if self.kept.read_failed:
            return False  # unknown, not empty: nothing to offer again until it can be read
        if mine is not None and (kept is None or kept.changed < mine.changed):
            self._to_offer = mine
        if kept is None or (mine is not None and (kept.digest == mine.digest or kept.changed < mine.changed)):
            return False
        try:
            ruleset = compile_text(kept.text, self.abspath, sending=self.sending)
        except Exception as exc:  # noqa: BLE001 - kept rules that do not compile here are no rules
            reason = "; ".join(str(p) for p in exc.problems) if isinstance(exc, RulesError) else repr(exc)
            self.kept.reject(f"they do not compile with this service's settings: {reason}")
            return False
        self.ruleset, self._version = ruleset, kept
        return True

    def _keep(self) -> None:
        """At the end of a look, offer the rules waiting for the kept copy. An offer the folder
        refused (it cannot be written) is made again at every look. The warnings of rules just
        loaded are logged when this offer is the one that keeps a new version (not the same
        text touched), or when it cannot be kept now (rather than maybe never)."""
        version, warnings, self._to_warn = self._to_offer, self._to_warn, None
        if version is None or self.kept is None:
            return
        replaced = []  # the version newest before, when this offer created `version`'s file
        done = self.kept.keep(version, on_write=replaced.append)
        if done is not None and self._to_offer is version:
            self._to_offer = None
        new = bool(replaced) and (replaced[0] is None or replaced[0].digest != version.digest)
        if warnings is not None and (new or done is None):
            log_warnings(warnings)


def _reset_after_fork() -> None:
    for holder in list(_watching):
        holder._after_fork()
    _watching.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
