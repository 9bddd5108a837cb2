"""`flask --app wsgi ...` commands (SPEC §7): thin wrappers around plain functions."""

from __future__ import annotations

import shlex
from urllib.parse import urlencode
import sys
from datetime import datetime

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from . import signature
from .inbound import TYPES, Inbound
from .rules import RuleSet, RulesError, load

rules_cli = AppGroup("rules", help="Check reply rules files.")


# -- plain functions -------------------------------------------------------------
def check_rules(path: str) -> tuple[RuleSet | None, list[str], list[str]]:
    """(ruleset or None, error lines, warning lines) for a rules file."""
    try:
        ruleset = load(path)
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


# -- click wrappers ----------------------------------------------------------------
@rules_cli.command("check")
@click.argument("path", required=False)
def rules_check(path: str | None) -> None:
    """Check a rules file (default: RULES_PATH). Exit 1 if it has errors."""
    path = path or current_app.config["RULES_PATH"]
    ruleset, errors, warnings = check_rules(path)
    for line in errors:
        click.echo(line, err=True)
    for line in warnings:
        click.echo(line)
    if ruleset is None:
        click.echo(f"{path}: rejected, {len(errors)} error(s)", err=True)
        sys.exit(1)
    click.echo(f"{path}: OK, {len(ruleset.rules)} rule(s), {len(warnings)} warning(s)")


@click.command("simulate")
@click.argument("text")
@click.option("--from", "from_", required=True, help="Sender number, e.g. 14155550123.")
@click.option("--to", required=True, help="Your Plivo number that received the message.")
@click.option("--type", "msg_type", type=click.Choice(TYPES), default="sms", show_default=True)
@click.option("--media", multiple=True, help="A media URL (MMS/WhatsApp); repeatable.")
@click.option("--intent", type=click.Choice(["", "optout", "optin", "help"]), default="")
@click.option("--at", type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]),
              help="Pretend it is this local time (rules' timezone), e.g. 2026-11-23T18:30.")
@click.option("--rules", "path", help="Rules file (default: RULES_PATH).")
@with_appcontext
def simulate(text, from_, to, msg_type, media, intent, at, path):
    """Print the XML the service would answer to TEXT, without a server."""
    path = path or current_app.config["RULES_PATH"]
    ruleset, errors, _ = check_rules(path)
    if ruleset is None:
        for line in errors:
            click.echo(line, err=True)
        sys.exit(1)
    responder = current_app.extensions["responder"]
    decision, answer = simulate_message(responder, ruleset, text, from_, to, msg_type, tuple(media), intent, at)
    click.echo(f"matched: {', '.join(decision.matched) or '(no rule)'}", err=True)
    for error in decision.errors:
        click.echo(f"template error: {error}", err=True)
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


def register(app: Flask) -> None:
    app.cli.add_command(rules_cli)
    app.cli.add_command(simulate)
    app.cli.add_command(sign)
