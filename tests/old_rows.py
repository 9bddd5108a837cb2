"""Many old rows, written fast in bulk: what a retention prune has to delete.

    fill(url, count)   # `count` old messages, each with what a day of traffic leaves

Each message (an SMS answered by XML) comes with its reply, one delivery report on
that reply, its signature nonce as `seen` keeps it (its MessageUUID goes there when it
is pruned), and every tenth with a finished webhook call in the outbox, as the service
would have written them `days_old` days ago and after (one message every `spacing_s`
seconds). Written by the database itself in chunks (SQLite: a recursive CTE;
PostgreSQL: generate_series), about 5 rows per message.

Used by tests/test_prune.py and bench/prune.py; standard library and SQLAlchemy only.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

#: Texts of SQL string literals; SENDER and UUID stand for SQL expressions spliced in.
PARAMS = ('{"From": "SENDER", "To": "14155550100", "Type": "sms", "Text": "hours please", '
          '"MessageUUID": "UUID", "Units": "1", "TotalRate": "0.00500", '
          '"TotalAmount": "0.00500", "MessageIntent": "", "PowerpackUUID": "", "MediaCount": "0"}')
ANSWER = ('<Response><Message src="14155550100" dst="SENDER" type="sms">'
          'We are open 9am-5pm, Monday to Friday.</Message></Response>')
RULES = '["hours"]'
REPORT = '{"Status": "delivered", "Sequence": "2"}'


def _splice(text: str, **expressions: str) -> str:
    """A literal's text with each NAME replaced by the SQL expression's value."""
    for name, expression in expressions.items():
        text = text.replace(name.upper(), f"' || ({expression}) || '")
    return text


class _Dialect:
    def __init__(self, postgres: bool):
        self.postgres = postgres

    def series(self, first: int, last: int) -> tuple[str, str]:
        """(a WITH prefix or '', the FROM source) giving n from first to last."""
        if self.postgres:
            return "", f"generate_series({first}, {last}) AS s(n)"
        return (f"WITH RECURSIVE s(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM s WHERE n < {last}) ", "s")

    def time(self, base: datetime, seconds: str) -> str:
        stamp = base.strftime("%Y-%m-%d %H:%M:%S")
        if self.postgres:
            return f"(TIMESTAMP '{stamp}' + ({seconds}) * INTERVAL '1 second')"
        return f"(strftime('%Y-%m-%d %H:%M:%S', '{stamp}', '+' || ({seconds}) || ' seconds') || '.000000')"

    def day(self, base: datetime, seconds: str) -> str:
        """The UTC day as table `seen` keeps it: days since 1970-01-01."""
        stamp = base.strftime("%Y-%m-%d %H:%M:%S")
        if self.postgres:
            return f"((TIMESTAMP '{stamp}' + ({seconds}) * INTERVAL '1 second')::date - DATE '1970-01-01')"
        return f"CAST(julianday('{stamp}', '+' || ({seconds}) || ' seconds') - 2440587.5 AS INTEGER)"

    def key(self, kind: str, number: str) -> str:
        """A 16-byte key of table `seen`, unique per kind letter and number (not a real hash:
        the prune never looks inside)."""
        if self.postgres:
            return f"convert_to('{kind}' || lpad(({number})::text, 15, '0'), 'UTF8')"
        return f"CAST('{kind}' || printf('%015d', {number}) AS BLOB)"

    def json(self, text: str) -> str:
        return f"('{text}')::json" if self.postgres else f"('{text}')"

    def number_list(self, number: str) -> str:
        """A JSON list of one number (a reply's `dst`)."""
        return f"json_build_array({number})" if self.postgres else f"json_array({number})"

    def blob(self, text: str) -> str:
        return f"convert_to('{text}', 'UTF8')" if self.postgres else f"CAST('{text}' AS BLOB)"

    def boolean(self, value: bool) -> str:
        return ("true" if value else "false") if self.postgres else ("1" if value else "0")


def fill(url_or_engine, count: int, *, days_old: int = 400, spacing_s: int = 10, chunk: int = 50_000,
         outbox_every: int = 10, progress=None) -> dict[str, int]:
    """Write `count` old messages and what comes with them; rows written per table."""
    from app.store.db import make_engine
    engine = url_or_engine if isinstance(url_or_engine, sa.Engine) else make_engine(url_or_engine, pool_size=1)
    d = _Dialect(engine.dialect.name == "postgresql")
    base = (datetime.now(timezone.utc) - timedelta(days=days_old)).replace(tzinfo=None, microsecond=0)
    written = {"messages": 0, "replies": 0, "reports": 0, "seen": 0, "outbox": 0}
    started = time.monotonic()
    fairy = engine.raw_connection()  # the driver's connection: our own transactions, no events
    conn = fairy.driver_connection
    try:
        cur = conn.cursor()

        def one(sql: str):
            cur.execute(sql)
            return cur.fetchone()[0]

        if d.postgres:
            cur.execute("SET session_replication_role = replica")  # no FK triggers while filling
        else:
            cur.execute("PRAGMA synchronous=OFF")
        first = {t: one(f"SELECT coalesce(max(id), 0) FROM {t}") for t in ("messages", "replies")}
        conn.commit()
        for lo in range(1, count + 1, chunk):
            hi = min(count, lo + chunk - 1)
            with_, source = d.series(lo, hi)
            m0, r0 = first["messages"], first["replies"]
            uuid = f"'old-' || ({m0} + n)"
            sender = "'1999' || n"
            ts = d.time(base, f"n * {spacing_s}")
            later = d.time(base, f"n * {spacing_s} + 1")
            statements = {
                "messages": (
                    "INSERT INTO messages (id, uuid, received_at, from_number, to_number, type, text, intent, "
                    "params, rules, compliance, possible_optout, held, deliveries, answer_status, answer_type, "
                    f"answer_body) {with_}SELECT {m0} + n, {uuid}, {ts}, {sender}, '14155550100', 'sms', "
                    f"'hours please', '', {d.json(_splice(PARAMS, sender=sender, uuid=uuid))}, "
                    f"{d.json(RULES)}, NULL, {d.boolean(False)}, {d.json('[]')}, 1, 200, "
                    f"'application/xml', {d.blob(_splice(ANSWER, sender=sender))} FROM {source}"),
                "replies": (
                    "INSERT INTO replies (id, message_id, position, kind, rule, src, dst, sender, limited, "
                    "text, via, created_at, status, status_key, status_at, plivo_uuid) "
                    f"{with_}SELECT {r0} + n, {m0} + n, 0, 'reply', 'hours', '14155550100', {d.number_list(sender)}, "
                    f"{sender}, {d.boolean(True)}, 'We are open 9am-5pm, Monday to Friday.', 'xml', {ts}, "
                    f"'delivered', '2|000000000002|', {later}, 'old-sent-' || ({r0} + n) FROM {source}"),
                "reports": (
                    "INSERT INTO reports (received_at, message_uuid, parent_uuid, status, sequence, part, "
                    f"error_code, reply_id, params) {with_}SELECT {later}, 'old-sent-' || ({r0} + n), NULL, "
                    f"'delivered', '2', '', NULL, {r0} + n, {d.json(REPORT)} FROM {source}"),
                # Its nonce, remembered against replays (its MessageUUID is known by its row).
                "seen": (
                    f"INSERT INTO seen (key, digest, day) {with_}SELECT {d.key('N', f'{m0} + n')}, "
                    f"{d.blob('0123456789abcdef')}, {d.day(base, f'n * {spacing_s}')} FROM {source}"),
                "outbox": (
                    "INSERT INTO outbox (created_at, kind, role, message_id, position, rule, src, dst, type, "
                    "method, text, media, status, attempts, due_at, attempted_at, finished_at) "
                    f"{with_}SELECT {ts}, 'webhook', 'webhook', {m0} + n, NULL, 'hours', NULL, "
                    f"'https://crm.example/hook', 'json', 'POST', '{{}}', {d.json('[]')}, 'sent', 1, {ts}, "
                    f"{ts}, {later} FROM {source} WHERE n % {outbox_every} = 0"),
            }
            if not d.postgres:
                cur.execute("BEGIN")
            for table, statement in statements.items():
                cur.execute(statement)
                written[table] += cur.rowcount
            conn.commit()
            if progress is not None:
                progress(hi, time.monotonic() - started)
        if d.postgres:
            cur.execute("SET session_replication_role = DEFAULT")
            for table in ("messages", "replies", "reports", "outbox"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT coalesce(max(id), 1) FROM {table}))")
            conn.commit()
            conn.autocommit = True  # as autovacuum would have left them: statistics, visibility map
            for table in ("messages", "replies", "reports", "seen", "outbox"):
                cur.execute(f"VACUUM ANALYZE {table}")
            conn.autocommit = False
        else:
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cur.close()
    finally:
        fairy.close()
        if engine is not url_or_engine:
            engine.dispose()
    return written
