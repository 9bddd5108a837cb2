"""State behind one small interface that takes and gives plain values.

The pipeline, the commands and the pages call `Store` with strings, numbers and
small dataclasses; no SQLAlchemy object leaves this package. The modules, by subject:
`messages` (the one transaction per inbound message, and the message log), `reports`,
`optouts`, `operators`, `outbox`, `retention`; under them `base` (the one way into the database),
`sql` (statements compiled once), `writer` (SQLite's write turn and group commit),
`schema`, `db` (engines) and `migrate`.
"""

from __future__ import annotations

from .db import DatabaseUrlError, check_connection, display
from .errors import Conflict, Exists, Replayed, StoreError, Unavailable
from .outbox import Claimed, Item
from .reports import OPTED_OUT_ERROR, status_key
from .retention import RETENTION, Expiring
from .schema import metadata
from .store import Store
from .values import Claim, Needs, NumberState, Record, Stored, as_utc, day_number, iso_utc, seen_key, utcnow

__all__ = ["Store", "StoreError", "Unavailable", "Replayed", "Conflict", "Exists", "Stored", "Claim", "Needs",
           "Record", "NumberState", "Item", "Claimed", "Expiring", "RETENTION", "OPTED_OUT_ERROR", "status_key",
           "DatabaseUrlError", "utcnow", "as_utc", "iso_utc", "day_number", "seen_key", "metadata", "display",
           "check_connection"]
