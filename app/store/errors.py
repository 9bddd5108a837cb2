"""The store's errors: one hierarchy, each mapped to one answer by the pipeline."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class Unavailable(StoreError):
    """The database did not answer (down, locked too long, pool exhausted): answer 503."""


class Replayed(StoreError):
    """A signature nonce already used by another request (not this one again): answer 403."""


class Conflict(Unavailable):
    """A unique index refused a row (a MessageUUID claimed at the same moment elsewhere):
    the message path tries again; anywhere else it is a 503 like any refusal."""


class Exists(StoreError):
    """A row already there under a name that must be unique (an operator's): the caller's
    mistake to report as such, not a database that failed, and not tried again."""


def reason(exc: BaseException) -> str:
    """The first line of what the database (or the pool) said."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
