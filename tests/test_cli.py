"""`flask --app wsgi ...` commands, through Flask's CLI runner and as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, TOKEN, make_app


def test_rules_check_ok(runner):
    result = runner.invoke(args=["rules", "check"])
    assert result.exit_code == 0, result.output
    assert "OK, 13 rule(s)" in result.output
    assert "warning: rule 'spanish-line': reply is UCS-2" in result.output


def test_rules_check_errors_exit_1(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - name: a\n    when: {regex: '('}\n    reply: hi\n"
                   "  - name: a\n    reply: '{{ nope }}'\n")
    result = runner.invoke(args=["rules", "check", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:4: bad regex" in result.output
    assert f"{bad}:6: duplicate rule name 'a' (first at line 3)" in result.output
    assert f"{bad}:7: unknown name 'nope'" in result.output


def test_simulate_prints_xml(runner):
    result = runner.invoke(args=["simulate", "order 12345", "--from", "14155550123", "--to", "14155550100"])
    assert result.exit_code == 0, result.output
    assert ('<Message src="14155550100" dst="14155550123" type="sms">Order 12345: see where it is at '
            'https://acme.example/o/12345</Message>') in result.output


def test_simulate_at_a_time(runner):
    result = runner.invoke(args=["simulate", "hello", "--from", "14155550123", "--to", "14155550100",
                                 "--at", "2026-11-24T22:00"])
    assert "We are closed now and open again at 9am; a person will answer then.</Message>" in result.output
    assert "A person will answer soon." not in result.output  # the after-hours reply instead, not as well
    assert "matched: to-the-team, after-hours" in result.output


def test_simulate_whatsapp_answers_empty(runner):
    result = runner.invoke(args=["simulate", "hours", "--from", "14155550123", "--to", "14155550100",
                                 "--type", "whatsapp"])
    assert "<Response/>" in result.output


def test_simulate_numbers_are_reduced_to_digits_like_the_server_sees_them(runner):
    result = runner.invoke(args=["simulate", "order 12345", "--from", "+1 415.555.0123",
                                 "--to", "+1 (415) 555-0200"])
    assert result.exit_code == 0, result.output
    assert '<Message src="14155550200" dst="14155550123" type="sms">' in result.output


@pytest.mark.parametrize("option, value", [("--from", "bob"), ("--to", "+1 415 555 0200 x7"), ("--to", "12")])
def test_simulate_refuses_what_is_not_a_number(runner, option, value):
    numbers = {"--from": "14155550123", "--to": "14155550100", option: value}
    result = runner.invoke(args=["simulate", "hi", "--from", numbers["--from"], "--to", numbers["--to"]])
    assert result.exit_code == 2
    assert f"Invalid value for {option}: {value!r} is not a phone number" in result.output
    assert "Traceback" not in result.output and "<Response" not in result.output


def test_sign_prints_headers_that_verify(runner):
    from app.signature import verify
    result = runner.invoke(args=["sign", "https://sms.example.com/message", "--token", "tok",
                                 "--nonce", "12345", "-d", "From=1", "-d", "Text=hi"])
    assert result.exit_code == 0
    headers = dict(line.split(": ", 1) for line in result.output.strip().splitlines())
    assert headers["X-Plivo-Signature-V2-Nonce"] == "12345"
    assert verify(["tok"], "POST", "https://sms.example.com/message", headers, [("From", "1"), ("Text", "hi")]) == "V3"


def test_sign_known_answer(runner):
    result = runner.invoke(args=["sign", "https://answer.url", "--token", "my_auth_token", "--nonce", "12345"])
    assert "X-Plivo-Signature-V2: ehV3IKhLysWBxC1sy8INm0qGoQYdYsHwuoKjsX7FsXc=" in result.output


def test_sign_uses_configured_token(tmp_path):
    app = make_app(tmp_path)
    result = app.test_cli_runner().invoke(args=["sign", "http://x/message", "--curl", "-d", "From=1"])
    assert result.output.startswith("curl -sS -X POST -H 'X-Plivo-Signature-V2: ")
    assert "--data-urlencode From=1 http://x/message" in result.output


def flask_cmd(*args, app="wsgi", **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PLIVO_", "RULES_"))}
    base.update(env)
    return subprocess.run([sys.executable, "-m", "flask", "--app", app, *args], cwd=ROOT,
                          env=base, capture_output=True, text=True, timeout=60)


@pytest.mark.server
@pytest.mark.parametrize("app", ["wsgi", "app"])  # `--app app`: Flask calls create_app() itself
def test_real_command_checks_a_broken_file_without_a_token(tmp_path, app):
    bad = tmp_path / "rules.yaml"
    bad.write_text("version: 1\ncompliance: {scope: galaxy}\nrules: []\n")
    result = flask_cmd("rules", "check", str(bad), app=app)
    assert result.returncode == 1
    assert f"{bad}:2: 'scope' must be account or number, got 'galaxy'" in result.stderr


@pytest.mark.server
def test_real_command_simulate(tmp_path):
    result = flask_cmd("simulate", "Hours?", "--from", "14155550123", "--to", "14155550100", PLIVO_AUTH_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Message')


def test_sign_get_puts_the_parameters_in_the_signed_url(runner):
    from app.signature import verify
    result = runner.invoke(args=["sign", "https://sms.example.com/message", "--token", "tok", "--method", "GET",
                                 "-d", "From=1", "-d", "Text=hi there", "--curl"])
    assert "https://sms.example.com/message?From=1&Text=hi+there" in result.output
    plain = runner.invoke(args=["sign", "https://sms.example.com/message", "--token", "tok", "--method", "GET",
                                "--nonce", "7", "-d", "From=1", "-d", "Text=hi there"])
    headers = dict(line.split(": ", 1) for line in plain.output.strip().splitlines())
    assert verify(["tok"], "GET", "https://sms.example.com/message?From=1&Text=hi+there", headers) == "V3"


@pytest.mark.server
def test_flask_run_needs_the_token_like_gunicorn():
    result = flask_cmd("run", "--port", "0")
    assert result.returncode != 0
    assert "PLIVO_AUTH_TOKEN is not set" in result.stderr


def test_shipped_rules_answer_stop_start_help_with_the_built_in_compliance(runner):
    for word in ("STOP", "stop", "Unsubscribe", "ＳＴＯＰ"):
        result = runner.invoke(args=["simulate", word, "--from", "14155550123", "--to", "14155550100"])
        assert ">You are unsubscribed. Reply START to resubscribe.</Message>" in result.output, word
        assert "compliance: optout" in result.output
    # simulate is a service that has seen nothing: nobody opted out, so START is an ordinary text
    result = runner.invoke(args=["simulate", "START", "--from", "14155550123", "--to", "14155550100"])
    assert "matched: to-the-team, everything-else" in result.output and "resubscribed" not in result.output
    result = runner.invoke(args=["simulate", "Help!", "--from", "14155550123", "--to", "14155550100"])
    assert "Acme support: help@acme.example" in result.output


WHATSAPP_AND_MEDIA = ("version: 1\nrules:\n"
                      "  - {name: wa, when: {type: whatsapp}, reply: hi}\n"
                      "  - {name: pic, when: {keyword: pic}, reply: here, media: 'https://cdn.example.com/a.png'}\n")


@pytest.mark.server
def test_rules_check_with_an_auth_id_and_no_token_judges_as_that_service_would(tmp_path):
    """A command sends nothing, so it needs no token: with PLIVO_AUTH_ID set, WhatsApp replies
    and media are allowed, as they are in the service that has this id (and its token)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(WHATSAPP_AND_MEDIA)
    result = flask_cmd("rules", "check", str(rules), PLIVO_AUTH_ID="MAXXXXXXXXXXXXXXXXXX")
    assert result.returncode == 0, result.stderr
    assert "needs PLIVO_AUTH_ID" not in result.stderr + result.stdout
    assert f"{rules}: OK, 2 rule(s), 0 warning(s)" in result.stdout
    # without the id the same file is refused, and the message names it
    result = flask_cmd("rules", "check", str(rules))
    assert result.returncode == 1
    assert f"{rules}:3: rule 'wa': replies to WhatsApp go through Plivo's Message API, which needs " \
           "PLIVO_AUTH_ID to be set" in result.stderr


@pytest.mark.server
def test_rules_check_shows_a_bad_url_without_its_password_or_query(tmp_path):
    """`rules check` prints the whole message to the person at the terminal, but a URL in it
    loses its user information and query: they are the same secrets the log must not hold."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - name: crm\n"
                     "    webhook: 'htps://admin:S3cret@crm.example.com/hooks?api_key=k3y'\n")
    result = flask_cmd("rules", "check", str(rules), WEBHOOK_SECRET="s")
    assert result.returncode == 1
    assert f"{rules}:4: 'webhook' takes an http(s) URL, got 'htps://…@crm.example.com/hooks?…'" in result.stderr
    assert "S3cret" not in result.stderr + result.stdout and "api_key" not in result.stderr + result.stdout
