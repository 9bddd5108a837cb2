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

The rules a process answers with while the file is bad are the newest version of the file
that any process serving it compiled, not each worker's own: the workers of one service (and
the gunicorn master at start) share a kept copy of that version, one JSON file per rules file
in the instance folder, named from the file's absolute path and holding it (`KeptCopy`).
Whoever compiles a version offers it, and under a file lock it replaces the copy when it is
what the rules file holds at that moment (the newest by definition, whatever the clocks said
when the copy was written), else only when its change time is later. The lock is waited for
a bounded time, outside the lock that guards the rules in use: a stuck holder (a hung network
file system, a paused process) delays only the copy, which is offered again at the next
look. While the file stays bad each process looks at the copy every interval and switches to
it when it holds other rules, at least as new as its own. So every worker ends on the same
rules, a worker started while the file is bad (a respawn, a HUP) answers like the others, and
two services with different rules files in one folder never answer from each other's copy.

The warnings of a version (a rule that can never match, a reply that costs several units, ...)
are logged once per service start and once per new version, one WARNING line each with its
`path:line`, not once per worker: the gunicorn master logs those of the file it checks at
start (and tells its workers, `WARNED_ENV`); later, the process whose offer first writes a
version into the kept copy logs its warnings. A process without a master (`flask run`) logs
those of the rules it starts with; one without a kept copy, those of every version it loads.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

from .compiler import Outbound, compile_text, decode
from .engine import RuleSet
from .source import Problem, RulesError

log = logging.getLogger("app.rules")

#: The folder, inside the instance folder, that holds the kept copies.
KEEP_FOLDER = "rules-kept"
#: Seconds an offer waits for another process to release the kept copy's lock before it
#: gives up until the next look.
LOCK_WAIT = 1.0
#: Seconds after which the temporary file of an unfinished write is left over for sure.
STALE_TMP = 300.0
#: Set by the gunicorn master to the digest of the rules whose warnings it logged at start,
#: so that its workers, which compile the same file again, do not log them a second time.
WARNED_ENV = "RESPONDER_RULES_WARNED"


def log_warnings(ruleset: RuleSet) -> None:
    """One WARNING line per warning of `ruleset`, as `rules check` prints it:
    `path:line: warning: message`."""
    for warning in ruleset.warnings:
        log.warning("%s: warning: %s", warning.where, warning.message,
                    extra={"rules_path": warning.path, "digest": ruleset.digest})


def keep_dir(instance_path: str) -> str:
    """Where the kept copies of a service whose instance folder is `instance_path` live."""
    return os.path.join(instance_path, KEEP_FOLDER)


def kept_copy_path(folder: str, rules_path: str) -> str:
    """The kept copy of `rules_path` in `folder`: its base name plus a hash of its absolute path.

    The path is made absolute but symlinks are not resolved, so a file swapped behind a
    symlink (as Kubernetes does with a ConfigMap) keeps one copy.
    """
    source = os.path.abspath(rules_path)
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(os.path.abspath(folder), f"{os.path.basename(source)}-{digest}.json")


@dataclass(frozen=True)
class Version:
    """One version of a rules file: its text and when the file took it."""
    text: str
    digest: str
    changed: tuple[int, int]  # (st_ctime_ns, st_mtime_ns): ctime first, as no one can set it back
    #: The file's signature when it was read (None: unknown, or written to while read), to
    #: tell whether the file still holds this version. Not kept, not compared.
    signature: tuple | None = field(default=None, compare=False)

    @classmethod
    def of(cls, text: str, changed: tuple[int, int], signature: tuple | None = None) -> "Version":
        return cls(text, _digest(text), changed, signature)


def _digest(text: str) -> str:
    """The digest `compile_text` gives the same text, so a kept copy shows the file's digest."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class KeptCopy:
    """The newest version of one rules file that compiled, kept for every process serving it.

    The file holds {"source", "ctime_ns", "mtime_ns", "digest", "text"}; it is written whole
    (a temporary file `<copy>.<pid>.tmp`, then `os.replace`) under an exclusive lock on
    `<folder>/.lock`, so readers need no lock and a slower writer with an older version cannot
    replace a newer one. Temporary files left by a process killed while writing are removed
    when a copy is opened.
    """

    def __init__(self, folder: str, rules_path: str):
        self.source = os.path.abspath(rules_path)
        self.path = kept_copy_path(folder, rules_path)
        self.folder = os.path.dirname(self.path)
        self._reported: str | None = None  # the last problem logged about the copy, logged once
        self._trouble: str | None = None   # the last reason the copy could not be written, logged once
        self._remove_stale_tmp()

    def signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self) -> Version | None:
        """The kept version, or None when there is none or it cannot be used (logged once)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            return self.reject(f"it cannot be read: {exc}")
        if not isinstance(data, dict):
            return self.reject("it is not a kept copy")
        if data.get("source") != self.source:
            return self.reject(f"it belongs to another rules file ({data.get('source')!r})")
        text, changed = data.get("text"), (data.get("ctime_ns"), data.get("mtime_ns"))
        if not isinstance(text, str) or not all(isinstance(n, int) for n in changed):
            return self.reject("it is not a kept copy")
        version = Version.of(text, changed)
        if data.get("digest") != version.digest:
            return self.reject("its text does not match its digest")
        self._reported = None
        return version

    def offer(self, version: Version, *, wait: float = LOCK_WAIT) -> bool:
        """Keep `version` unless the copy holds a newer one; True when the copy is now `version`."""
        return self.keep(version, wait=wait) is True

    def keep(self, version: Version, *, wait: float = LOCK_WAIT, on_write=None) -> bool | None:
        """Offer `version`: True when the copy is now `version`, False when it holds newer rules,
        None when it cannot be told now (the lock stayed held for `wait` seconds, or the folder
        cannot be written; logged once), so the offer should be made again later. When this
        offer writes the copy, `on_write` is called (under the lock) with the version it held.

        `version` replaces the copy when the rules file still holds it (its signature is the
        file's now), whatever the change times say: the copy's may come from a clock that was
        ahead, or tie with it on a file system with coarse times. Otherwise only a later
        change time replaces it; on a tie the copy stays, so every offer ends the same way.
        """
        try:
            os.makedirs(self.folder, exist_ok=True)
            with open(os.path.join(self.folder, ".lock"), "a") as lock:
                if not _flock(lock, wait):  # released when the file is closed
                    return self._cannot_keep(f"another process holds its lock ({lock.name})")
                kept = self.read()
                current = version.signature is not None and version.signature == _stat_signature(self.source)
                if kept is not None and not current and kept.changed >= version.changed:
                    if kept.digest != version.digest:
                        log.info("the kept copy of the rules of %s stays as it is (%s): the rules offered (%s) "
                                 "are not newer, and the file no longer holds them", self.source, kept.digest,
                                 version.digest, extra={"rules_path": self.source, "kept_copy": self.path})
                    self._trouble = None
                    return kept.digest == version.digest
                if kept != version:
                    self._write(version)
                    if on_write is not None:
                        on_write(kept)
        except OSError as exc:
            return self._cannot_keep(str(exc))
        self._trouble = None
        return True

    def _cannot_keep(self, reason: str) -> None:
        """Log once why the copy could not be written this time; None (try again later)."""
        if reason != self._trouble:
            self._trouble = reason
            log.warning("cannot keep a copy of the good rules of %s at %s now: %s; trying again at the next "
                        "look (until then a worker that starts while the file is bad may answer with older "
                        "rules, or none)", self.source, self.path, reason,
                        extra={"rules_path": self.source, "kept_copy": self.path})
        return None

    def _write(self, version: Version) -> None:
        data = {"source": self.source, "ctime_ns": version.changed[0], "mtime_ns": version.changed[1],
                "digest": version.digest, "text": version.text}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def _remove_stale_tmp(self) -> None:
        """Remove the temporary files of writes that never finished: their process is gone
        (killed while writing) or they are older than any write takes."""
        prefix, suffix = os.path.basename(self.path) + ".", ".tmp"
        try:
            names = os.listdir(self.folder)
        except OSError:
            return  # no folder yet: nothing left over
        now = time.time()
        for name in names:
            pid = name[len(prefix):-len(suffix)]
            if not (name.startswith(prefix) and name.endswith(suffix) and pid.isdigit()):
                continue
            tmp = os.path.join(self.folder, name)
            try:
                if _alive(int(pid)) and now - os.stat(tmp).st_mtime < STALE_TMP:
                    continue  # a write in progress
                os.unlink(tmp)
            except OSError:
                continue  # gone already, or not ours to remove
            log.info("removed %s, left by a process stopped while it wrote the kept copy", tmp,
                     extra={"rules_path": self.source, "kept_copy": self.path})

    def reject(self, reason: str) -> None:
        """Log once why the copy is not used; None."""
        if reason != self._reported:
            self._reported = reason
            log.error("the last good rules kept at %s are not used for %s: %s", self.path, self.source, reason,
                      extra={"rules_path": self.source, "kept_copy": self.path})
        return None


def _flock(fh, wait: float) -> bool:
    """An exclusive lock on `fh`, tried for up to `wait` seconds; False when it stayed held."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but is another user's
    return True


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


def _signature(st: os.stat_result) -> tuple:
    """What tells one content of a file from another without reading it."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def compile_and_keep(path: str, folder: str, *, outbound: Outbound | None = None) -> RuleSet:
    """Compile the rules file (raising `RulesError` as `load` does) and offer it to the kept copy.

    For the gunicorn master at start: the workers it forks then find this version kept even
    if the file is broken before they boot. A copy that cannot be written is only logged.
    """
    version, _ = read_version(path)
    ruleset = compile_text(version.text, path, outbound=outbound)
    KeptCopy(folder, path).offer(version)
    return ruleset


#: A signature no file has: the next look reads the file whatever its stat says.
_READ_AGAIN = ("read again",)

#: Holders whose watcher runs in this process; a forked child has no watcher thread, so its
#: holders go back to looking on the request path (see `_after_fork`).
_watching: "weakref.WeakSet[RulesHolder]" = weakref.WeakSet()


class RulesHolder:
    def __init__(self, path: str, interval: float = 0.0, *, keep_dir: str | None = None,
                 outbound: Outbound | None = None):
        self.path = path
        self.abspath = os.path.abspath(path)  # named in problems and log lines
        self.interval = interval
        self.kept = KeptCopy(keep_dir, path) if keep_dir else None
        self.outbound = outbound  # the service's settings, checked on every compile (None: not checked)
        self.ruleset: RuleSet | None = None
        self.error: RulesError | None = None  # the last failed load, while the file is bad
        self._version: Version | None = None  # the version `ruleset` was compiled from
        self._seen: tuple | None = None        # the file's signature at the last look (None: not seen)
        self._kept_seen: tuple | None = None   # the kept copy's signature at the last look
        self._retrying: str | None = None      # a failure read again at every look, logged once
        self._to_offer: Version | None = None  # rules still to offer to the kept copy
        self._kept_stuck = False               # the last offer could not be made (its lock stayed held)
        self._to_warn: tuple[Version, RuleSet] | None = None  # warnings to log if our offer is the first
        self._poll_on_request = bool(interval)
        self._next_check = 0.0
        self._lock = threading.Lock()          # guards the rules in use and the looks at the file
        self._offering = threading.Lock()      # one offer at a time, outside `_lock`
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- answering ---------------------------------------------------------------------------

    def current(self) -> RuleSet | None:
        """The rules to answer with. Without a watcher, looks at the file at most once per interval."""
        if self._poll_on_request and time.monotonic() >= self._next_check:
            self._poll()
        return self.ruleset

    def _poll(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking; answer with what we have
        try:
            self._next_check = time.monotonic() + self.interval
            self._refresh()
        finally:
            self._lock.release()
        self._keep()

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
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad look
                log.exception("looking at the rules file %s failed; trying again in %g s", self.abspath, self.interval)

    def _after_fork(self) -> None:
        self._thread = None
        self._poll_on_request = bool(self.interval)
        self._lock = threading.Lock()
        self._offering = threading.Lock()

    # -- loading -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """One look: reload the file if it changed; while it is bad, follow the kept copy."""
        with self._lock:
            self._refresh()
        self._keep()

    def _refresh(self) -> None:
        if _stat_signature(self.abspath) != self._seen:
            self._load()
        elif self.error is not None:
            self._follow_kept(self.error)

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
            return self._not_loaded(exc, seen=_READ_AGAIN if visible else None, retry=True)
        try:
            version = Version.of(decode(raw, self.abspath), changed, seen)
            ruleset = compile_text(version.text, self.abspath, outbound=self.outbound)
        except RulesError as exc:
            # The content is bad (not UTF-8, does not compile): read again when the file changes.
            return self._not_loaded(exc, seen=seen, retry=False)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, a bad file must not cost the rules in use
            if str(exc) != self._retrying:
                log.exception("the rules file %s could not be compiled", self.abspath)
            error = RulesError([Problem(self.abspath, 0, f"cannot load: {type(exc).__name__}: {exc}", "cannot load")])
            return self._not_loaded(error, seen=_READ_AGAIN, retry=True, reason=str(exc))
        old = self.ruleset
        self.ruleset, self._version, self.error, self._seen = ruleset, version, None, seen
        self._retrying = None
        if self.kept is not None:
            self._to_offer = version
        self._warn(version, ruleset, first=old is None)
        shadowed = [str(w) for w in ruleset.warnings if "can never match" in w.message]
        log.info("rules %s: %d rules from %s (%s)", "reloaded" if old else "loaded",
                 len(ruleset.rules), self.abspath, ruleset.digest,
                 extra={"warnings": len(ruleset.warnings), "shadowed": shadowed} if shadowed
                 else {"warnings": len(ruleset.warnings)})
        return True

    def _warn(self, version: Version, ruleset: RuleSet, *, first: bool) -> None:
        """Log the warnings of rules just compiled from the file, or leave them to `_keep`."""
        self._to_warn = None
        if not ruleset.warnings:
            return
        if first and os.environ.get(WARNED_ENV) == ruleset.digest:
            return  # the gunicorn master logged them at start
        if self.kept is None or (first and WARNED_ENV not in os.environ):
            log_warnings(ruleset)  # this process's start (no master), or no copy tells a new version
        else:
            self._to_warn = (version, ruleset)  # logged if this process is the first to keep them

    def _not_loaded(self, error: RulesError, *, seen: tuple | None, retry: bool, reason: str | None = None) -> bool:
        """The file gave no rules at this look: go on with the newest good ones; False.

        `seen` is the signature the next look compares with (`_READ_AGAIN`: read it then). `retry`
        says the failure is not the content's (the file could not be read, or compiling failed
        unexpectedly): the same failure at the following looks is then logged only once.
        """
        reason = str(error) if reason is None else reason
        repeat = retry and reason == self._retrying
        self._retrying = reason if retry else None
        self._seen, self.error = seen, error
        self._failed(error, repeat=repeat, retry=retry)
        return False

    def _failed(self, error: RulesError, *, repeat: bool = False, retry: bool = False) -> None:
        """The file gave no rules: answer with the newest good rules, and say which (for a
        `repeat` of the last look's failure, only when that changes the rules)."""
        problems = {"rules_path": self.abspath, "problems": [str(p) for p in error.problems]}
        count = f"{len(error.problems)} problem(s)"
        if retry and self.interval:
            count += f" (it is looked at again every {self.interval:g} s)"
        kept = self._newer_kept(force=not repeat)
        if repeat and kept is None:
            return
        if kept is not None:
            before = self.ruleset
            self._adopt(*kept)
            log.error("rules %s: %s has %s; answering with the last good rules kept at %s (%s)%s",
                      "reload failed" if before else "not loaded from the file", self.abspath, count,
                      self.kept.path, self.ruleset.digest,
                      f", newer than the rules in use ({before.digest})" if before else "",
                      extra={**problems, "kept_copy": self.kept.path})
        elif self.ruleset is not None:
            log.error("rules reload failed, keeping the rules in use (%s): %s has %s",
                      self.ruleset.digest, self.abspath, count, extra=problems)
        else:
            where = f" and no last good copy is kept at {self.kept.path}" if self.kept else ""
            log.error("rules not loaded: %s has %s%s", self.abspath, count, where, extra=problems)

    def _follow_kept(self, error: RulesError) -> None:
        """The file is still bad: another worker may have compiled a newer version before it broke."""
        kept = self._newer_kept(force=False)
        if kept is None:
            return
        before = self.ruleset
        self._adopt(*kept)
        log.warning("rules file %s is still bad: answering with the last good rules kept at %s (%s), "
                    "compiled by another process%s", self.abspath, self.kept.path, self.ruleset.digest,
                    f" and newer than the rules in use ({before.digest})" if before else "",
                    extra={"rules_path": self.abspath, "kept_copy": self.kept.path,
                           "problems": [str(p) for p in error.problems]})

    def _newer_kept(self, *, force: bool) -> tuple[Version, RuleSet] | None:
        """The kept version and its rules when they should replace the rules in use, else None.

        They should when they differ and are at least as new (on a tie the copy wins, so
        every worker ends on the same rules). A copy older than the rules in use is replaced
        by them: their own offer was lost (a race, a full disk). Unless `force`, the copy is
        read only when it changed since the last look.
        """
        if self.kept is None:
            return None
        signature = self.kept.signature()
        if not force and signature == self._kept_seen:
            return None
        self._kept_seen = signature
        kept = self.kept.read()
        if kept is None:
            if self._version is not None:
                self._to_offer = self._version
            return None
        mine = self._version
        if mine is not None and kept.digest == mine.digest:
            return None
        if mine is not None and kept.changed < mine.changed:
            self._to_offer = mine
            return None
        try:
            ruleset = compile_text(kept.text, self.abspath, outbound=self.outbound)
        except Exception as exc:  # noqa: BLE001 - a copy that does not compile here is no copy
            reason = "; ".join(str(p) for p in exc.problems) if isinstance(exc, RulesError) else repr(exc)
            self.kept.reject(f"they do not compile with this service's settings: {reason}")
            return None
        return kept, ruleset

    def _adopt(self, version: Version, ruleset: RuleSet) -> None:
        self.ruleset, self._version = ruleset, version

    # -- the kept copy -----------------------------------------------------------------------

    def _keep(self) -> None:
        """Offer the rules waiting for the kept copy; called with `_lock` released, so that a
        copy whose lock is held elsewhere never holds up a reload.

        An offer waits up to `LOCK_WAIT` for the lock. When it could not be made (the lock
        stayed held, the folder cannot be written) it is made again at every look, without
        waiting until one succeeds, so the watcher keeps its pace meanwhile.
        """
        version = self._to_offer
        if version is None or self.kept is None or not self._offering.acquire(blocking=False):
            return
        try:
            replaced = []  # the version this offer replaced in the copy, if it wrote it
            done = self.kept.keep(version, wait=0.0 if self._kept_stuck else LOCK_WAIT,
                                  on_write=replaced.append)
            self._kept_stuck = done is None
            if not self._kept_stuck and self._to_offer is version:
                self._to_offer = None
            warn = self._to_warn
            if warn is not None and warn[0] is version:
                # First to keep them: a new version (not the same text touched). Not kept now
                # (its lock stayed held, the folder cannot be written): logged anyway, rather
                # than maybe never.
                self._to_warn = None
                new = bool(replaced) and (replaced[0] is None or replaced[0].digest != version.digest)
                if new or done is None:
                    log_warnings(warn[1])
        finally:
            self._offering.release()


def _stat_signature(path: str) -> tuple | None:
    st = _stat(path)
    return None if st is None else _signature(st)


def _reset_after_fork() -> None:
    for holder in list(_watching):
        holder._after_fork()
    _watching.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
