"""`RulesHolder` (SPEC §4): load at start, pick up a changed file, and keep the
rules in use when the new file is bad."""

from __future__ import annotations

import os
import time

import pytest

import app.rules.holder as holder_module
from app.rules import Outbound, RuleSet, RulesError, RulesHolder

GOOD_A = """\
version: 1
rules:
  - name: a
    reply: "A"
"""
GOOD_B = """\
version: 1
rules:
  - name: b
    reply: "B"
  - name: c
    reply: "C"
"""
BAD = """\
version: 1
rules:
  - name: x
    reply: "{{ nope }}"
  - name: x
    reply: y
"""
BAD_2 = """\
version: 1
rules:
  - name: y
    when: {regex: '('}
    reply: z
"""

_MTIME = [1_700_000_000]


def write(path, text: str) -> None:
    """Replace the file and move its mtime forward explicitly (coarse clocks, same sizes)."""
    path.write_text(text, encoding="utf-8")
    _MTIME[0] += 10
    os.utime(path, (_MTIME[0], _MTIME[0]))


def names(ruleset: RuleSet | None) -> list[str] | None:
    return None if ruleset is None else [r.name for r in ruleset.rules]


@pytest.fixture
def rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    write(path, GOOD_A)
    return path


@pytest.fixture
def loads(monkeypatch):
    """Count the times the holder reads the rules file (the kept copy is not counted)."""
    calls = []
    real = holder_module.read

    def spy(path):
        if not path.endswith("rules.last-good.yaml"):
            calls.append(path)
        return real(path)

    monkeypatch.setattr(holder_module, "read", spy)
    return calls


def settle(interval: float) -> None:
    time.sleep(interval * 1.5)


def test_load_at_start(rules_file):
    holder = RulesHolder(str(rules_file))
    assert holder.current() is None and holder.error is None
    assert holder.load() is True
    assert names(holder.current()) == ["a"]
    assert holder.error is None
    assert holder.current().path == str(rules_file)


def test_interval_zero_never_rereads(rules_file, loads):
    holder = RulesHolder(str(rules_file), 0)
    holder.load()
    first = holder.current()
    write(rules_file, GOOD_B)
    for _ in range(3):
        assert holder.current() is first
    assert names(holder.current()) == ["a"]
    assert len(loads) == 1


def test_explicit_load_picks_up_a_change_even_with_interval_zero(rules_file):
    holder = RulesHolder(str(rules_file), 0)
    holder.load()
    write(rules_file, GOOD_B)
    assert holder.load() is True
    assert names(holder.current()) == ["b", "c"]


def test_changed_file_is_picked_up_after_the_interval(rules_file, loads):
    holder = RulesHolder(str(rules_file), 0.02)
    holder.load()
    first = holder.current()
    assert holder.current() is first          # file unchanged: stat only, no re-read
    assert len(loads) == 1
    write(rules_file, GOOD_B)
    settle(0.02)
    assert names(holder.current()) == ["b", "c"]
    assert holder.error is None
    assert len(loads) == 2
    settle(0.02)
    second = holder.current()
    assert second is holder.current() and len(loads) == 2


def test_no_look_at_the_file_within_the_interval(rules_file, loads):
    holder = RulesHolder(str(rules_file), 3600)
    holder.load()
    first = holder.current()                  # the first call looks (nothing changed)
    write(rules_file, GOOD_B)
    assert holder.current() is first
    assert names(holder.current()) == ["a"]
    assert len(loads) == 1


def test_bad_file_keeps_the_old_rules_until_a_good_one(rules_file, loads):
    holder = RulesHolder(str(rules_file), 0.02)
    holder.load()
    first = holder.current()

    write(rules_file, BAD)
    settle(0.02)
    assert holder.current() is first
    error = holder.error
    assert isinstance(error, RulesError)
    assert [str(p) for p in error.problems] == [
        f"{rules_file}:4: unknown name 'nope' in template "
        "(known: from, to, text, type, uuid, media, match, now, rule)",
        f"{rules_file}:5: duplicate rule name 'x' (first at line 3)",
    ]
    assert len(loads) == 2

    # Not parsed again while the bad file stays as it is.
    for _ in range(3):
        settle(0.02)
        assert holder.current() is first
        assert holder.error is error
    assert len(loads) == 2

    # Another bad version: parsed once more, the new error replaces the old one.
    write(rules_file, BAD_2)
    settle(0.02)
    assert holder.current() is first
    assert holder.error is not error
    assert [(p.line, p.message.split(":")[0]) for p in holder.error.problems] == [(4, "bad regex")]
    assert len(loads) == 3

    # A good file replaces the rules and clears the error.
    write(rules_file, GOOD_B)
    settle(0.02)
    assert names(holder.current()) == ["b", "c"]
    assert holder.error is None
    assert len(loads) == 4


def test_explicit_load_of_a_bad_file_returns_false_and_keeps_rules(rules_file):
    holder = RulesHolder(str(rules_file))
    holder.load()
    first = holder.current()
    write(rules_file, BAD)
    assert holder.load() is False
    assert holder.current() is first
    assert len(holder.error.problems) == 2


def test_missing_file_at_start(tmp_path, loads):
    path = tmp_path / "absent.yaml"
    holder = RulesHolder(str(path), 0.02)
    assert holder.load() is False
    assert holder.current() is None
    [problem] = holder.error.problems
    assert (problem.path, problem.line) == (str(path), 0)
    assert "cannot read the rules file" in problem.message
    settle(0.02)
    assert holder.current() is None
    assert len(loads) == 1                    # still missing: not tried again

    write(path, GOOD_A)                       # it appears: picked up
    settle(0.02)
    assert names(holder.current()) == ["a"]
    assert holder.error is None


def test_bad_file_at_start(rules_file):
    write(rules_file, BAD)
    holder = RulesHolder(str(rules_file))
    assert holder.load() is False
    assert holder.current() is None
    assert [p.line for p in holder.error.problems] == [4, 5]


def test_file_removed_later_keeps_the_rules(rules_file):
    holder = RulesHolder(str(rules_file), 0.02)
    holder.load()
    first = holder.current()
    rules_file.unlink()
    settle(0.02)
    assert holder.current() is first
    assert "cannot read the rules file" in holder.error.problems[0].message
    write(rules_file, GOOD_B)
    settle(0.02)
    assert names(holder.current()) == ["b", "c"]
    assert holder.error is None


def test_not_utf8_reload_keeps_the_rules(rules_file):
    holder = RulesHolder(str(rules_file), 0.02)
    holder.load()
    first = holder.current()
    rules_file.write_bytes(b"version: 1\nrules:\n  - name: caf\xe9\n    reply: x\n")
    _MTIME[0] += 10
    os.utime(rules_file, (_MTIME[0], _MTIME[0]))
    settle(0.02)
    assert holder.current() is first
    assert [(p.line, p.message) for p in holder.error.problems] == [(3, "the rules file is not valid UTF-8")]


def test_control_character_reload_keeps_the_rules(rules_file):
    holder = RulesHolder(str(rules_file), 0.02)
    holder.load()
    first = holder.current()
    write(rules_file, 'version: 1\nrules:\n  - name: a\n    reply: "bell\x07"\n')
    settle(0.02)
    assert holder.current() is first
    assert isinstance(holder.error, RulesError)


def test_a_new_holder_with_a_bad_file_answers_with_the_kept_copy(tmp_path):
    path = tmp_path / "rules.yaml"
    keep = tmp_path / "instance" / "rules.last-good.yaml"
    path.write_text("version: 1\nrules:\n  - {name: a, when: {keyword: hi}, reply: one}\n")
    first = RulesHolder(str(path), keep_path=str(keep))
    assert first.load() is True
    assert keep.read_text() == path.read_text()
    path.write_text("version: 1\nrules:\n  - {name: a, when: {regex: '('}, reply: two}\n")
    second = RulesHolder(str(path), keep_path=str(keep))  # e.g. a worker respawned now
    assert second.load() is False
    assert second.current() is not None and second.current().digest == first.current().digest
    assert "bad regex" in str(second.error)
    assert "(" not in keep.read_text()  # the bad file never replaces the kept copy


def test_no_kept_copy_means_no_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 2\n")
    holder = RulesHolder(str(path), keep_path=str(tmp_path / "missing.yaml"))
    assert holder.load() is False and holder.current() is None


# -- the service's settings (`outbound`) are checked on every compile -------------------------
WITH_HOOK = """\
version: 1
rules:
  - name: a
    reply: "A"
  - name: hook
    webhook: https://hooks.example/in
"""
NO_SECRET = Outbound(api=True, webhook_secret=False)


def test_reload_that_gains_a_webhook_without_the_secret_is_bad(rules_file):
    holder = RulesHolder(str(rules_file), 0.02, outbound=NO_SECRET)
    assert holder.outbound == NO_SECRET
    assert holder.load() is True
    first = holder.current()
    write(rules_file, WITH_HOOK)
    settle(0.02)
    assert holder.current() is first                  # keeps the rules in use
    assert [str(p) for p in holder.error.problems] == [
        f"{rules_file}:6: rule 'hook': 'webhook' needs WEBHOOK_SECRET to be set "
        "(the key that signs each call, X-Responder-Signature)"]


def test_the_same_reload_is_good_with_the_secret_or_without_outbound(rules_file):
    write(rules_file, WITH_HOOK)
    for outbound in (Outbound(api=False, webhook_secret=True), None):
        holder = RulesHolder(str(rules_file), outbound=outbound)
        assert holder.load() is True and holder.error is None
        assert names(holder.current()) == ["a", "hook"]


def test_bad_reload_for_the_settings_is_logged(rules_file, caplog):
    holder = RulesHolder(str(rules_file), outbound=NO_SECRET)
    holder.load()
    write(rules_file, WITH_HOOK)
    with caplog.at_level("ERROR", logger="app.rules"):
        assert holder.load() is False
    [record] = [r for r in caplog.records if "keeping the rules in use" in r.getMessage()]
    assert any("needs WEBHOOK_SECRET" in p for p in record.problems)


def test_kept_copy_is_compiled_with_the_settings_too(tmp_path):
    path = tmp_path / "rules.yaml"
    keep = tmp_path / "instance" / "rules.last-good.yaml"
    path.write_text(WITH_HOOK)
    assert RulesHolder(str(path), keep_path=str(keep)).load() is True      # kept without the settings
    path.write_text("version: 1\nrules:\n  - {name: a, when: {regex: '('}, reply: two}\n")
    strict = RulesHolder(str(path), keep_path=str(keep), outbound=NO_SECRET)
    assert strict.load() is False
    assert strict.current() is None                   # the kept copy needs the secret as well
    lenient = RulesHolder(str(path), keep_path=str(keep), outbound=Outbound(api=True, webhook_secret=True))
    assert lenient.load() is False
    assert names(lenient.current()) == ["a", "hook"]
