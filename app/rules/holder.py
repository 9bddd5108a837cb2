"""Keep the rules a process answers with, and pick up changes to the file.

The file is looked at (one `stat`, no read) at most once per interval, on
the request path. A changed file is compiled in full before it replaces the
current rules; a bad one is logged with every `path:line: message` and the
rules in use stay as they are (SPEC §4: a bad reload keeps the rules it has).
"""

from __future__ import annotations

import logging
import os
import threading
import time

from .compiler import load
from .engine import RuleSet
from .source import RulesError

log = logging.getLogger("app.rules")


class RulesHolder:
    def __init__(self, path: str, interval: float = 0.0):
        self.path = path
        self.interval = interval
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
            ruleset = load(self.path)
        except RulesError as exc:
            self._seen = seen
            self.error = exc
            if self.ruleset is None:
                log.error("rules not loaded: %d problem(s)", len(exc.problems),
                          extra={"problems": [str(p) for p in exc.problems]})
            else:
                log.error("rules reload failed, keeping the rules in use (%s)", self.ruleset.digest,
                          extra={"problems": [str(p) for p in exc.problems]})
            return False
        old, self.ruleset, self.error, self._seen = self.ruleset, ruleset, None, seen
        shadowed = [str(w) for w in ruleset.warnings if "can never match" in w.message]
        log.info("rules %s: %d rules from %s (%s)", "reloaded" if old else "loaded",
                 len(ruleset.rules), self.path, ruleset.digest,
                 extra={"warnings": len(ruleset.warnings), "shadowed": shadowed} if shadowed
                 else {"warnings": len(ruleset.warnings)})
        return True

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
