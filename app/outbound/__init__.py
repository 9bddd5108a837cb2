"""Outbound sending: Plivo's Message API, signed webhook calls, and the outbox sender.

Nothing here knows Flask or the rules. `plivo.MessageApi` and `webhook.WebhookClient`
turn one HTTP exchange into a `Result`; `sender.Sender` takes items from the
outbox in the database (`app.store`), sends them through those clients, and
writes down what happened.
"""

from __future__ import annotations

from dataclasses import dataclass

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
