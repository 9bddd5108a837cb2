"""Background upkeep of a serving process: deleting rows older than RETENTION_DAYS
(the nonces and MessageUUIDs kept against replays: older than REPLAY_DAYS).

Never on the request path: one daemon thread per process wakes about once an
hour (at a random offset, so workers and hosts spread out) and prunes in short
batches that give way to inbound writes (see `Store.prune`). Several processes
pruning at once only find less to delete.
"""

from __future__ import annotations

import logging
import random
import threading

from .store import Store, StoreError

log = logging.getLogger("app.maintenance")

INTERVAL_S = 3600.0


class Pruner:
    def __init__(self, store: Store, days: int, interval: float = INTERVAL_S, replay_days: int | None = None):
        self.store = store
        self.days = days
        self.replay_days = replay_days
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="responder-prune", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        wait = random.uniform(60.0, min(600.0, self.interval))  # not all at start-up
        while not self._stop.wait(wait):
            self.run_once()
            wait = self.interval * random.uniform(0.9, 1.1)

    def run_once(self) -> dict[str, int] | None:
        try:
            counts = self.store.prune(self.days, replay_days=self.replay_days)
        except StoreError as exc:
            log.warning("pruning old rows failed, will try again: %s", exc)
            return None
        except Exception:  # upkeep must never kill the process
            log.exception("pruning old rows failed")
            return None
        if any(counts.values()):
            log.info("old rows deleted", extra={"retention_days": self.days, **counts})
        return counts
