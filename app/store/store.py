"""The store: one database, its subjects side by side (see the package's modules)."""

from __future__ import annotations

from .base import Database
from .messages import Messages
from .operators import Operators
from .optouts import Optouts
from .outbox import OutboxStore
from .reports import Reports
from .retention import Retention


class Store(Messages, Reports, Optouts, Operators, OutboxStore, Retention, Database):
    """The database of one process, by subject: messages, delivery reports, opt-outs,
    operators, the outbox, retention. Thread-safe; make one per process, after fork."""

    def _setup(self) -> None:
        super()._setup()
        from sqlalchemy.dialects import postgresql, sqlite

        from .schema import api_slots
        self._slot_upsert = (postgresql if self.postgres else sqlite).insert(api_slots)
