"""The plain values the store takes and gives, and how it keeps times and keys.

No SQLAlchemy object leaves the store: callers see these dataclasses, strings,
numbers and naive UTC datetimes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone


def utcnow() -> datetime:
    """Now as the database keeps times: naive UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def as_utc(moment: datetime | None) -> datetime:
    """`moment` as the database keeps times (naive UTC); None is now."""
    if moment is None:
        return utcnow()
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def iso_utc(moment: datetime | None, timespec: str = "auto") -> str | None:
    """A naive UTC time as ISO 8601 with `Z`, for commands and pages (`timespec` as
    `datetime.isoformat` takes it)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer as it left: status, content type and the exact bytes."""

    status: int
    content_type: str
    body: bytes


@dataclass(slots=True)
class Claim:
    """Who a message is from, and what it claims: its MessageUUID and signature nonces."""

    uuid: str
    nonces: Sequence[str]             # every signature nonce of the request
    sender: str
    to: str
    now: datetime                     # naive UTC
    digest: bytes = b""               # the request's signature.request_digest (kept with its nonces)


@dataclass(frozen=True, slots=True)
class Needs:
    """The state a decision needs read."""

    numbers: Sequence[str] = ()          # opt-outs to look up (sender and forward destinations)
    limit_since: datetime | None = None  # count limited replies to the sender since then
    most: int | None = None              # the answer rendered before the state was read holds for
                                         # at most this many recent replies (and no opt-out)


@dataclass(frozen=True, slots=True)
class NumberState:
    """What the database knows that matters to one message, as `policy.plan` reads it. The
    defaults are a service that has seen nothing (`simulate`, rule tests)."""

    opted_out: frozenset[str] = frozenset()  # numbers, of those asked about, that must get nothing from `to`
    recent_replies: int = 0                  # limited replies to the sender within the limit's window


@dataclass(slots=True)
class Record:
    """What was decided for a message, to be written with its claim."""

    message: dict                       # messages columns (see schema) except id, uuid, deliveries, answer
    replies: list[dict] = field(default_factory=list)  # replies columns except id, message_id, created_at
    outbox: list[dict] = field(default_factory=list)   # outbox rows to send afterwards
    change: tuple[str, str, str] | None = None  # ("out"|"in", via, scope) for the sender


def seen_key(kind: str, value: str) -> bytes:
    """A nonce ("nonce") or a MessageUUID ("uuid") as table `seen` keeps it: 16 bytes of
    SHA-256 of "kind:value" (fixed size whatever comes; the two kinds never meet)."""
    return hashlib.sha256(f"{kind}:{value}".encode("utf-8", "surrogatepass")).digest()[:16]


def nonce_keys(nonces: Sequence[str]) -> list[bytes]:
    """The keys of a request's nonces, in one order everywhere (no deadlock between claims)."""
    return sorted({seen_key("nonce", n) for n in nonces})


_EPOCH = date(1970, 1, 1)


def day_number(moment: datetime) -> int:
    """The UTC day of a naive UTC time, as table `seen` keeps it: days since 1970-01-01."""
    return (moment.date() - _EPOCH).days


def lock_key(text: str) -> int:
    """A signed 64-bit key for pg_advisory_xact_lock."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)
