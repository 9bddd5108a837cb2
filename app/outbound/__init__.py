"""Outbound sending: Plivo's Message API, signed webhook calls, and the outbox sender.

Nothing here knows Flask or the rules. `plivo.MessageApi` and `webhook.WebhookClient`
turn one HTTP exchange into a `Result`; `sender.Sender` takes items from the
outbox in the database (`app.store`), sends them through those clients, and
writes down what happened.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import timezone

#: The four ways one attempt can end.
SENT = "sent"          # the other side took it (Plivo: 202 with message_uuid; a webhook: 2xx)
RETRY = "retry"        # it certainly did not go through, or the other side asked to try later
FAILED = "failed"      # refused for good (a 4xx other than 429): trying again will not help
UNKNOWN = "unknown"    # the request may have left and been acted on, but no answer came back


@dataclass(frozen=True, slots=True)
class Result:
    """What one attempt came to.

    `error` is short and safe to log and store: it never holds a token, a secret
    or the message text (for example `HTTP 400: invalid dst`, `connection refused`,
    `no answer within 15 s`).
    """

    outcome: str
    message_uuids: tuple[str, ...] = ()  # Plivo's uuids of the sent message (SENT from the Message API)
    delay: float | None = None           # seconds the server asked us to wait (Retry-After), if it said
    error: str | None = None
    status: int | None = None            # the HTTP status, when an answer came
    opted_out: bool = False              # Plivo refused because the destination opted out (STOP)

    @property
    def message_uuid(self) -> str | None:
        return self.message_uuids[0] if self.message_uuids else None


#: Longest wait a Retry-After is honoured for, in seconds (a larger one is cut to this).
MAX_RETRY_AFTER = 3600.0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait, 0..MAX_RETRY_AFTER, for the Message API and
    webhook clients alike; None when absent or unreadable (the sender then uses its own backoff).

    RFC 9110's two forms: delay-seconds (digits only, so `1.5` and `-3` are unreadable, as
    they are to urllib3) or an HTTP-date, relative to `now` (`time.time()` if not given); a
    date in the past is 0 (try again now), a date without a zone is GMT, as HTTP dates are.

    Ours rather than urllib3's `Retry.parse_retry_after`, which reads the same two forms:
    that one always reads `time.time()` (the webhook client's clock is its own, and tests
    set it), raises on what it cannot read, and turns any number of digits into an int,
    which Python refuses past 4,300 digits (ValueError) while a header may carry more.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return MAX_RETRY_AFTER if len(value) > 6 else min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000", or an asctime date: GMT, as HTTP dates always are
        when = when.replace(tzinfo=timezone.utc)
    return min(max(when.timestamp() - (time.time() if now is None else now), 0.0), MAX_RETRY_AFTER)
