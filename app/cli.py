"""`flask --app wsgi ...` commands (reference: docs/commands.md): thin wrappers around plain functions."""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import urlencode

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from . import operators, ruletest, signature
from .inbound import TYPES, Inbound
from .rules import RulesError, RuleSet, load, sending_of
from .rules.engine import digits
from .store import Exists, Store, StoreError, iso_utc, migrate
from .store.db import display
from .store.outbox import STATUSES

rules_cli = AppGroup("rules", help="Check and test reply rules files.")
db_cli = AppGroup("db", help="The database (DATABASE_URL).")
outbox_cli = AppGroup("outbox", help="Messages and webhook calls sent after the answer (Message API).")
operators_cli = AppGroup("operators", help="The people who may sign in to the operator page (add, remove, list).")


# -- plain functions -------------------------------------------------------------
def check_rules(path: str, sending=None) -> tuple[RuleSet | None, list[str], list[str]]:
    """(ruleset or None, error lines, warning lines) for a rules file.

    With `sending` (what the settings allow), rules that need a missing setting are errors."""
    try:
        ruleset = load(path, sending=sending)
    except RulesError as exc:
        return None, [str(p) for p in exc.problems], []
    return ruleset, [], [f"{w.path}:{w.line}: warning: {w.message}" for w in ruleset.warnings]


def simulate_message(responder, ruleset: RuleSet, text: str, from_: str, to: str, msg_type: str,
                     media: tuple[str, ...], intent: str, at: datetime | None):
    msg = Inbound(from_=from_, to=to, uuid="simulated", type=msg_type, text=text,
                  intent=intent, media=media, media_count=len(media))
    if at is not None:
        at = at.replace(tzinfo=ruleset.tz) if at.tzinfo is None else at.astimezone(ruleset.tz)
    return responder.answer(msg, ruleset, at)


def signed_request(token: str, url: str, method: str, params: list[tuple[str, str]],
                   nonce: str | None) -> dict[str, str]:
    return signature.sign_headers(token, method, url, params, nonce)


_NUMBER_FORM = re.compile(r"^[0-9+\-.() ]+$")


def number(value: str | None, what: str = "NUMBER") -> str | None:
    """A phone number written as in rules (`+1 (415) 555-0100`) as digits, or a usage error.

    Only digits, + - . ( ) and spaces are accepted, so a typo never opts out another number.
    """
    if value is None:
        return None
    text = value.strip()
    reduced = digits(text) if _NUMBER_FORM.match(text) and text.isascii() else ""
    if not 3 <= len(reduced) <= 20:
        raise click.BadParameter(f"{value!r} is not a phone number (digits, with + - . ( ) "
                                 "and spaces allowed)", param_hint=what)
    return reduced


def messages_table(rows: list[dict]) -> list[str]:
    """The message log as a readable table, one message per line and one per reply under it."""
    if not rows:
        return ["no messages"]
    lines = [f"{'received (UTC)':<20}  {'from':<15}  {'to':<15}  {'type':<8}  {'n':>2}  "
             f"{'rules / compliance':<24}  text"]
    for m in rows:
        decided = ", ".join(m["rules"]) or (m["compliance"] or "-")
        flags = " [possible opt-out]" if m["possible_optout"] else ""
        text = " ".join(m["text"].split())
        if len(text) > 40:
            text = text[:39] + "…"
        lines.append(f"{m['received_at'][:19].replace('T', ' '):<20}  {m['from']:<15}  {m['to']:<15}  "
                     f"{m['type']:<8}  {m['deliveries']:>2}  {decided[:24]:<24}  {text}{flags}")
        for r in m["replies"]:
            reply = " ".join(r["text"].split())
            status = r["status"]
            if status is None and r.get("outbox"):  # no delivery report yet: where the send stands
                status = "/".join(sorted({o["status"] for o in r["outbox"]}))
            lines.append(f"{'':<20}  -> {r['dst']:<30}  {r['via']:<4} {status or '-':<11}  "
                         f"{reply[:50] + ('…' if len(reply) > 50 else '')}")
        for h in m["held"]:
            lines.append(f"{'':<20}  !! {h['dst']:<30}  not sent: {h['reason']}")
        for w in m.get("webhooks", ()):
            lines.append(f"{'':<20}  => webhook {w['url'][:40]:<31} {w['status']}")
    return lines


def outbox_rows(items) -> list[dict]:
    """Outbox items as `outbox list --json` prints them (the documented keys first)."""
    return [{
        "id": i.id, "kind": i.kind, "dst": i.dst, "status": i.status, "attempts": i.attempts,
        "message_uuid": i.message_uuid, "error": i.error,
        "role": i.role, "type": i.type if i.kind == "message" else None, "src": i.src, "rule": i.rule,
        "created_at": iso_utc(i.created_at, "seconds"),
        "due_at": iso_utc(i.due_at, "seconds") if i.status == "pending" else None,
        "attempted_at": iso_utc(i.attempted_at, "seconds"), "retried_at": iso_utc(i.retried_at, "seconds"),
    } for i in items]


#: `outbox list`'s columns: the JSON's keys and names (docs/commands.md), `dst` cut to fit.
TABLE_COLUMNS = (("id", 6), ("kind", 7), ("type", 8), ("status", 9), ("attempts", 8), ("created_at", 19),
                  ("due_at", 8), ("dst", 28), ("message_uuid", 36), ("error", 0))


def outbox_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["the outbox is empty"]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if name in ("id", "attempts") else v.ljust(w)
                         for (name, w), v in zip(TABLE_COLUMNS, values)).rstrip()

    lines = [line([name for name, _ in TABLE_COLUMNS])]
    for r in rows:
        dst = r["dst"] if len(r["dst"]) <= 28 else r["dst"][:27] + "…"
        lines.append(line([str(r["id"]), r["kind"], r["type"] or "-", r["status"], str(r["attempts"]),
                           r["created_at"][:19].replace("T", " "), (r["due_at"] or "")[11:19] or "-", dst,
                           r["message_uuid"] or "-", r["error"] or "-"]))
    return lines


def _store() -> Store:
    return current_app.extensions["responder"].store


@contextmanager
def _database():
    """Run a command's database work; a database that does not answer is one line and exit 1."""
    try:
        yield _store()
    except StoreError as exc:
        hint = ""
        if "no such table" in str(exc) or "does not exist" in str(exc):
            hint = "; create the schema with: flask --app wsgi db upgrade"
        click.echo(f"error: the database ({display(current_app.config['DATABASE_URL'])}) "
                   f"does not answer: {exc}{hint}", err=True)
        sys.exit(1)


# -- click wrappers ----------------------------------------------------------------
@rules_cli.command("check")
@click.argument("path", required=False)
def rules_check(path: str | None) -> None:
    """Check a rules file (default: RULES_PATH). Exit 1 if it has errors."""
    path = path or current_app.config["RULES_PATH"]
    ruleset, errors, warnings = check_rules(path, sending_of(current_app.config, serving=False))
    for line in errors:
        click.echo(line, err=True)
    for line in warnings:
        click.echo(line)
    if ruleset is None:
        click.echo(f"{os.path.abspath(path)}: rejected, {len(errors)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{ruleset.path}: OK, {len(ruleset.rules)} rule(s), {len(warnings)} warning(s)")


@rules_cli.command("test")
@click.argument("path", required=False)
@click.option("--rules", "rules_path", help="Rules file (default: RULES_PATH).")
@click.option("-v", "--verbose", is_flag=True, help="List the cases that pass too.")
def rules_test(path: str | None, rules_path: str | None, verbose: bool) -> None:
    """Run rule test cases; exit 1 if any fails.

    PATH is the cases file (default: rules.test.yaml beside the rules file). Each case runs
    on a fresh, empty in-memory state, as if PLIVO_AUTH_ID and WEBHOOK_SECRET were set."""
    result = ruletest.run_file(rules_path or current_app.config["RULES_PATH"], path, verbose)
    for line in result.errors:
        click.echo(line, err=True)
    for line in result.out:
        click.echo(line)
    if not result.ok:
        sys.exit(1)


@click.command("simulate")
@click.argument("text")
@click.option("--from", "from_", required=True, help="Sender number, e.g. 14155550123 or \"+1 (415) 555-0123\".")
@click.option("--to", required=True, help="Your Plivo number that received the message (same forms).")
@click.option("--type", "msg_type", type=click.Choice(TYPES), default="sms", show_default=True)
@click.option("--media", multiple=True, help="A media URL (MMS/WhatsApp); repeatable.")
@click.option("--intent", type=click.Choice(["", "optout", "optin", "help"]), default="")
@click.option("--at", type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]),
              help="Pretend it is this local time (rules' timezone), e.g. 2026-11-23T18:30.")
@click.option("--rules", "path", help="Rules file (default: RULES_PATH).")
@with_appcontext
def simulate(text, from_, to, msg_type, media, intent, at, path):
    """Print the XML the service would answer to TEXT, without a server."""
    from_, to = number(from_, "--from"), number(to, "--to")  # digits, as Plivo sends them
    path = path or current_app.config["RULES_PATH"]
    ruleset, errors, _ = check_rules(path)
    if ruleset is None:
        for line in errors:
            click.echo(line, err=True)
        sys.exit(1)
    responder = current_app.extensions["responder"]
    plan, decision, answer = simulate_message(responder, ruleset, text, from_, to, msg_type, tuple(media),
                                              intent, at)
    if plan.compliance is not None:
        click.echo(f"compliance: {plan.compliance} (answered before any rule)", err=True)
    else:
        click.echo(f"matched: {', '.join(decision.matched) or '(no rule)'}", err=True)
    for error in decision.errors:
        click.echo(f"template error: {error}", err=True)
    for out, via in zip(plan.outgoing, plan.via):
        if via == "api":
            media = f" with {len(out.media)} media" if out.media else ""
            click.echo(f"through the Message API{media} to {'<'.join(out.dst)}: {out.text}", err=True)
    for rule, hook in plan.webhooks:
        click.echo(f"webhook ({rule}): {hook.method} {hook.url}", err=True)
    for held in plan.held:
        click.echo(f"not sent to {held['dst']}: {held['reason']}", err=True)
    click.echo(answer.body.decode("utf-8"))


@click.command("sign")
@click.argument("url")
@click.option("--token", help="Auth token (default: the first of PLIVO_AUTH_TOKEN).")
@click.option("--nonce", help="Nonce (default: a fresh random one).")
@click.option("--method", type=click.Choice(["POST", "GET"], case_sensitive=False), default="POST",
              show_default=True)
@click.option("-d", "--data", "data", multiple=True, metavar="KEY=VALUE",
              help="A form parameter the request will carry (V3 signs them); repeatable.")
@click.option("--curl", is_flag=True, help="Print a complete curl command instead of the headers.")
@with_appcontext
def sign(url, token, nonce, method, data, curl):
    """Print the signature headers Plivo would send for a request to URL."""
    token = token or next(iter(current_app.config["PLIVO_AUTH_TOKENS"]), None)
    if not token:
        raise click.UsageError("give --token or set PLIVO_AUTH_TOKEN")
    params = []
    for item in data:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--data")
        params.append((key, value))
    method = method.upper()
    if method == "GET" and params:  # a GET carries its parameters in the URL, which is what is signed
        url += ("&" if "?" in url else "?") + urlencode(params)
        params = []
    headers = signed_request(token, url, method, params, nonce)
    if not curl:
        for name, value in headers.items():
            click.echo(f"{name}: {value}")
        return
    parts = ["curl", "-sS", "-X", method]
    for name, value in headers.items():
        parts += ["-H", f"{name}: {value}"]
    if method == "POST":
        for key, value in params:
            parts += ["--data-urlencode", f"{key}={value}"]
    parts.append(url)
    click.echo(" ".join(shlex.quote(p) for p in parts))


@click.command("replay")
@click.argument("fixtures", type=click.Path(path_type=str))
@click.option("--url", required=True, help="The service's message URL, e.g. http://127.0.0.1:8000/message "
              "(without a path: the path the recording's service was sent).")
@click.option("--token", help="Auth token to sign with (default: the first of PLIVO_AUTH_TOKEN).")
@click.option("--timeout", type=click.FloatRange(min=0.1, max=600), default=10.0, show_default=True,
              help="Seconds to wait for each answer.")
@click.option("--allow-sending", is_flag=True,
              help="Replay even to a service that does not hold its outbox (it may send replies, "
                   "forwards and webhook calls on to real numbers and systems).")
@with_appcontext
def replay_cmd(fixtures, url, token, timeout, allow_sending):
    """Send recorded webhooks (FIXTURES: a file, or a folder of *.json) to a running service,
    signed anew for URL. Exit 1 if any answer is not 2xx or a file cannot be read.

    The service must run with OUTBOX_SENDER=hold (its /readyz says so), unless --allow-sending."""
    from .recording.replay import ReplayError, fixture_paths, replay

    token = token or next(iter(current_app.config["PLIVO_AUTH_TOKENS"]), None)
    if not token:
        raise click.UsageError("give --token or set PLIVO_AUTH_TOKEN")
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--url")
    good = bad = 0
    try:
        for outcome in replay(fixture_paths(fixtures), url, token, timeout=timeout, require_hold=not allow_sending):
            shown = outcome.status if outcome.status is not None else "-"
            click.echo(f"{outcome.path}: {shown}" + (f" {outcome.reason}" if outcome.reason else ""))
            good, bad = good + outcome.ok, bad + (not outcome.ok)
    except ReplayError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"{good + bad} recording(s): {good} answered 2xx, {bad} not")
    if bad:
        sys.exit(1)


@db_cli.command("upgrade")
@with_appcontext
def db_upgrade():
    """Create or upgrade the schema to the newest migration."""
    store = _store()
    try:
        before, after = migrate.upgrade(store.engine)
    except Exception as exc:  # noqa: BLE001 - one line naming the database, not a traceback
        click.echo(f"error: DATABASE_URL: migrating {display(store.url)} failed: "
                   f"{str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}", err=True)
        sys.exit(1)
    if before == after:
        click.echo(f"{display(store.url)}: already at {after}")
    else:
        click.echo(f"{display(store.url)}: upgraded from {before or 'empty'} to {after}")


@db_cli.command("prune")
@click.option("--days", type=click.IntRange(min=1), help="Keep this many days (default: RETENTION_DAYS).")
@with_appcontext
def db_prune(days):
    """Delete messages and delivery reports older than RETENTION_DAYS, and the nonces and
    MessageUUIDs kept against replays older than REPLAY_DAYS, now (opt-outs stay)."""
    days = days or current_app.config["RETENTION_DAYS"]
    replay_days = max(days, current_app.config["REPLAY_DAYS"])
    with _database() as store:
        counts = store.prune(days, replay_days=replay_days)
    seen = counts.pop("seen", 0)
    click.echo(", ".join(f"{n} {name}" for name, n in counts.items()) + f" older than {days} days deleted; "
               f"{seen} nonces and MessageUUIDs older than {replay_days} days forgotten")


@click.command("messages")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, newest first.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True)
@click.option("--from", "from_", help="Only messages from this number.")
@with_appcontext
def messages_cmd(as_json, limit, from_):
    """The message log: what came in, which rules matched, what went out."""
    with _database() as store:
        rows = store.list_messages(limit, number(from_, "--from"))
    _print_rows(rows, as_json, messages_table)


@click.group("optouts", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, newest first.")
@click.pass_context
@with_appcontext
def optouts_cli(ctx, as_json):
    """Numbers that get nothing from the service (list, add, remove)."""
    if ctx.invoked_subcommand is not None:
        return
    with _database() as store:
        rows = store.list_optouts()
    _print_rows(rows, as_json, _optouts_table)


def _optouts_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["no opt-outs"]
    return [f"{'number':<16}  {'applies to':<16}  {'since (UTC)':<20}  via"] + [
        f"{r['number']:<16}  {r['to'] or 'every number':<16}  {r['since'][:19].replace('T', ' '):<20}  {r['via']}"
        for r in rows]


def _optout_command(name: str, change, to_help: str):
    """`optouts add` and `optouts remove`: both take NUMBER [--to N], checked the same way (a usage
    error for what is not a phone number, so a typo never changes another number's opt-out), and make
    one store call, `change`; the decorated function only says what came of it (its docstring is the help)."""
    def command(say):
        @optouts_cli.command(name, help=say.__doc__)
        @click.argument("number_", metavar="NUMBER")
        @click.option("--to", help=to_help)
        @with_appcontext
        def run(number_, to):
            who, where = number(number_), number(to, "--to")
            with _database() as store:
                changed = change(store, who, where)
            say(who, where, changed)
        return run
    return command


@_optout_command("add", Store.add_optout, "Only for this one of your numbers (default: every number).")
def optouts_add(who, where, added):
    """Opt NUMBER out: it gets no replies or sends of any kind."""
    scope = f"from {where}" if where else "from every number"
    click.echo(f"{who} opted out {scope}" if added else f"{who} was already opted out {scope}")


@_optout_command("remove", Store.remove_optout,
                 "The opt-out for this one of your numbers (default: the account-wide one).")
def optouts_remove(who, where, removed):
    """Remove an opt-out of NUMBER."""
    scope = f"for {where}" if where else "for every number"
    if not removed:
        click.echo(f"{who} had no opt-out {scope}", err=True)
        sys.exit(1)
    click.echo(f"{who} opted in again ({scope})")


@outbox_cli.command("run")
@click.option("--once", is_flag=True, help="Stop when nothing is left to send (for cron or a test).")
@with_appcontext
def outbox_run(once):
    """Send the outbox (when OUTBOX_SENDER=off, or in addition to the web workers).

    Runs until stopped with Ctrl-C or SIGTERM; the attempt in flight is finished first.
    """
    import signal

    from .outbound.sender import build_sender

    if current_app.config["OUTBOX_SENDER"] == "hold":
        click.echo("error: OUTBOX_SENDER=hold: this instance sends nothing (its outbox items are written "
                   "held, and no sender takes them); unset it to send", err=True)
        sys.exit(1)
    with _database() as store:
        sender = build_sender(store, current_app.config)
        if not sender.kinds:
            click.echo("error: nothing to send with: set PLIVO_AUTH_ID (and PLIVO_AUTH_TOKEN) for the "
                       "Message API and/or WEBHOOK_SECRET for webhook calls", err=True)
            sys.exit(1)

        def stop(signum, frame):
            sender.stop(timeout=0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        click.echo(f"sending the outbox of {display(current_app.config['DATABASE_URL'])} "
                   f"({', '.join(sender.kinds)}; at most {current_app.config['PLIVO_API_RATE']:g} "
                   "Message API requests a second)", err=True)
        sender.run(until_idle=once)
        counts = store.outbox_counts()
    click.echo(", ".join(f"{n} {status}" for status, n in counts.items() if n) or "the outbox is empty", err=True)


@outbox_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, newest first.")
@click.option("--status", type=click.Choice(STATUSES),
              help="Only items in this status.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@with_appcontext
def outbox_list(as_json, status, limit):
    """The outbox, newest first: what was sent through the Message API or to webhooks, and what waits."""
    with _database() as store:
        rows = outbox_rows(store.list_outbox(limit, status))
    _print_rows(rows, as_json, outbox_table)


def _operator_change(item_id: int, change: str):
    """Apply the store's `change` (retry_item, cancel_item) to one item; exit 1 if there is none."""
    from .store import utcnow
    with _database() as store:
        item = getattr(store, change)(item_id, utcnow())
    if item is None:
        click.echo(f"error: no outbox item {item_id}", err=True)
        sys.exit(1)
    return item


@outbox_cli.command("retry")
@click.argument("item_id", metavar="ID", type=click.IntRange(min=1))
@with_appcontext
def outbox_retry(item_id):
    """Send a failed or cancelled item again (it starts afresh: due now, a new day to succeed)."""
    item = _operator_change(item_id, "retry_item")
    if item.status != "pending":
        click.echo(f"error: item {item_id} is {item.status}: only failed or cancelled items can be retried", err=True)
        sys.exit(1)
    if item.error and "outcome is unknown" in item.error:
        click.echo(f"warning: item {item_id}'s outcome was unknown: it may have been sent already; "
                   "check the recipient before you rely on this retry", err=True)
    click.echo(f"item {item_id} will be sent again")


@outbox_cli.command("cancel")
@click.argument("item_id", metavar="ID", type=click.IntRange(min=1))
@with_appcontext
def outbox_cancel(item_id):
    """Never send an item that has not gone (pending or failed)."""
    item = _operator_change(item_id, "cancel_item")
    if item.status != "cancelled" or item.error != "cancelled by an operator":
        why = {"sending": " (being sent right now)",
               "unknown": " (it may have been sent; it is being looked up in Plivo's message list)",
               }.get(item.status, "")
        click.echo(f"error: item {item_id} is {item.status}{why}: only pending or failed items can be cancelled",
                   err=True)
        sys.exit(1)
    click.echo(f"item {item_id} cancelled")


def _read_password(from_stdin: bool) -> str:
    """The new password: the first line of stdin (its line ending dropped), or asked twice
    without echo. Never printed, logged or put in an error."""
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1].removesuffix("\r") if line.endswith("\n") else line
    return click.prompt("Password", hide_input=True, confirmation_prompt=True, default="", show_default=False)


@operators_cli.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@with_appcontext
def operators_add(name, password_stdin):
    """Add an operator NAME, who may sign in to the operator page; asks for the password twice."""
    problem = operators.name_problem(name)
    if problem is None:
        password = _read_password(password_stdin)
        problem = operators.password_problem(password)
    if problem is not None:
        click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    password_hash = operators.hash_password(password)
    with _database() as store:
        try:
            store.add_operator(name, password_hash)
        except Exists:
            click.echo(f"error: an operator named {name} exists already (remove it first to change "
                       "its password)", err=True)
            sys.exit(1)
    click.echo(f"operator {name} added")
    if not current_app.config["SECRET_KEY"]:
        click.echo("note: SECRET_KEY is not set: the service will not start while an operator exists "
                   "without it; set SECRET_KEY (the same on every host)", err=True)


@operators_cli.command("remove")
@click.argument("name")
@with_appcontext
def operators_remove(name):
    """Remove the operator NAME: they can no longer sign in."""
    with _database() as store:
        removed = store.remove_operator(name)
    if not removed:
        click.echo(f"error: there is no operator named {name}", err=True)
        sys.exit(1)
    click.echo(f"operator {name} removed")


@operators_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, by name.")
@with_appcontext
def operators_list(as_json):
    """The operators, by name, with when each was added."""
    with _database() as store:
        rows = [{"name": name, "created_at": iso_utc(created_at, "seconds")}
                for name, created_at in store.list_operators()]
    _print_rows(rows, as_json, _operators_table)


def _operators_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["no operators"]
    return [f"{'name':<32}  added (UTC)"] + [
        f"{r['name']:<32}  {r['created_at'][:19].replace('T', ' ')}" for r in rows]


def _print_rows(rows: list[dict], as_json: bool, table) -> None:
    """A listing command's output: one JSON array, or the lines `table(rows)` makes."""
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for line in table(rows):
        click.echo(line)


def register(app: Flask) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(outbox_cli)
    app.cli.add_command(messages_cmd)
    app.cli.add_command(optouts_cli)
    app.cli.add_command(operators_cli)
    app.cli.add_command(rules_cli)
    app.cli.add_command(simulate)
    app.cli.add_command(sign)
    app.cli.add_command(replay_cmd)
