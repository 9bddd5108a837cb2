"""Keep the rules a process answers with, and pick up changes to the file.

The file is looked at (one `stat`, no read) at most once per interval, on
the request path. A changed file is compiled in full before it replaces the
current rules; a bad one is logged with every `path:line: message` and the
rules in use stay as they are (SPEC §4: a bad reload keeps the rules it has).

A copy of the last file that compiled is kept (`keep_path`), so a worker that
starts while the file is bad (a respawn, a HUP) answers with the rules the
others have instead of none.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .compiler import Outbound, compile_text, read
from .engine import RuleSet
from .source import Problem, RulesError

log = logging.getLogger("app.rules")


class RulesHolder:
    def __init__(self, path: str, interval: float = 0.0, keep_path: str | None = None, *,
                 outbound: Outbound | None = None):
        self.path = path
        self.interval = interval
        self.keep_path = keep_path
        self.outbound = outbound  # the service's settings, checked on every compile (None: not checked)
        self.ruleset: RuleSet | None = None
        self.error: RulesError | None = None  # the last failed load, if the file is bad now
        self._seen: tuple | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()

    def _signature(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> bool:
        """(Re)load the file now; True when the rules in use are now the file's."""
        seen = self._signature()
        try:
            text = read(self.path)
            ruleset = compile_text(text, self.path, outbound=self.outbound)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, a bad file must not cost the rules in use
            if not isinstance(exc, RulesError):
                log.exception("rules file could not be compiled")
                exc = RulesError([Problem(self.path, 0, f"cannot load: {type(exc).__name__}: {exc}")])
            self._seen = seen
            self.error = exc
            if self.ruleset is None:
                self.ruleset = self._last_good()
            if self.ruleset is None:
                log.error("rules not loaded: %d problem(s)", len(exc.problems),
                          extra={"problems": [str(p) for p in exc.problems]})
            else:
                log.error("rules reload failed, keeping the rules in use (%s)", self.ruleset.digest,
                          extra={"problems": [str(p) for p in exc.problems]})
            return False
        old, self.ruleset, self.error, self._seen = self.ruleset, ruleset, None, seen
        self._keep(text, ruleset)
        shadowed = [str(w) for w in ruleset.warnings if "can never match" in w.message]
        log.info("rules %s: %d rules from %s (%s)", "reloaded" if old else "loaded",
                 len(ruleset.rules), self.path, ruleset.digest,
                 extra={"warnings": len(ruleset.warnings), "shadowed": shadowed} if shadowed
                 else {"warnings": len(ruleset.warnings)})
        return True

    def _keep(self, text: str, ruleset: RuleSet) -> None:
        """Save the text that compiled, atomically, unless the copy is already this one."""
        if not self.keep_path:
            return
        try:
            with open(self.keep_path, encoding="utf-8") as fh:
                if fh.read() == text:
                    return
        except OSError:
            pass
        try:
            os.makedirs(os.path.dirname(self.keep_path) or ".", exist_ok=True)
            tmp = f"{self.keep_path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.keep_path)
        except OSError as exc:
            log.warning("cannot keep a copy of the good rules: %s", exc, extra={"keep_path": self.keep_path})

    def _last_good(self) -> RuleSet | None:
        """The kept copy of the last good file, compiled, or None."""
        if not self.keep_path or not os.path.exists(self.keep_path):
            return None
        try:
            ruleset = compile_text(read(self.keep_path), self.path, outbound=self.outbound)
        except Exception:  # noqa: BLE001 - a damaged copy is no copy
            log.exception("the kept copy of the last good rules cannot be used either")
            return None
        log.error("rules file is bad: answering with the last good rules (%s) kept at %s",
                  ruleset.digest, self.keep_path)
        return ruleset

    def current(self) -> RuleSet | None:
        """The rules to answer with; looks for a changed file at most once per interval."""
        if self.interval and time.monotonic() >= self._next_check:
            self._poll()
        return self.ruleset

    def _poll(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is reloading; use what we have
        try:
            self._next_check = time.monotonic() + self.interval
            if self._signature() != self._seen:
                self.load()
        finally:
            self._lock.release()
