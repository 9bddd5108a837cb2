"""`RulesHolder`: load at start, pick up a changed file (on the request path, or from its
watcher thread), keep the rules in use when the new file is bad, and share the newest good
version with the other workers through the kept copy."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import pytest
from waiting import wait_until

import app.rules.holder as holder_module
from app.rules import RulesError, RuleSet, RulesHolder, Sending, compile_text
from app.rules.holder import KeptCopy, Version, compile_and_keep, kept_copy_path, read_version
from app.rules.kept import KEEP_VERSIONS

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
    """Count the times the holder reads the rules file (the kept copy is read as JSON, not counted)."""
    calls = []
    real = holder_module.read_file

    def spy(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(holder_module, "read_file", spy)
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


def newest_kept(keep_dir, path) -> Path | None:
    """The file of the newest version kept for `path` (its name sorts last), or None."""
    folder = Path(kept_copy_path(str(keep_dir), str(path)))
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    return files[-1] if files else None


def kept_text(keep_dir, path) -> str | None:
    """The text the newest kept version of `path` holds, or None."""
    newest = newest_kept(keep_dir, path)
    return None if newest is None else json.loads(newest.read_text(encoding="utf-8"))["text"]


def test_a_new_holder_with_a_bad_file_answers_with_the_kept_copy(tmp_path):
    path = tmp_path / "rules.yaml"
    keep = tmp_path / "instance" / "rules-kept"
    path.write_text("version: 1\nrules:\n  - {name: a, when: {keyword: hi}, reply: one}\n")
    first = RulesHolder(str(path), keep_dir=str(keep))
    assert first.load() is True
    assert kept_text(keep, path) == path.read_text()
    path.write_text("version: 1\nrules:\n  - {name: a, when: {regex: '('}, reply: two}\n")
    second = RulesHolder(str(path), keep_dir=str(keep))  # e.g. a worker respawned now
    assert second.load() is False
    assert second.current() is not None and second.current().digest == first.current().digest
    assert "bad regex" in str(second.error)
    assert "(" not in kept_text(keep, path)  # the bad file never replaces the kept copy


def test_no_kept_copy_means_no_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("version: 2\n")
    holder = RulesHolder(str(path), keep_dir=str(tmp_path / "missing"))
    assert holder.load() is False and holder.current() is None


# -- the service's settings (`sending`) are checked on every compile -------------------------
WITH_HOOK = """\
version: 1
rules:
  - name: a
    reply: "A"
  - name: hook
    webhook: https://hooks.example/in
"""
NO_SECRET = Sending(api=True, webhook_secret=False)


def test_reload_that_gains_a_webhook_without_the_secret_is_bad(rules_file):
    holder = RulesHolder(str(rules_file), 0.02, sending=NO_SECRET)
    assert holder.sending == NO_SECRET
    assert holder.load() is True
    first = holder.current()
    write(rules_file, WITH_HOOK)
    settle(0.02)
    assert holder.current() is first                  # keeps the rules in use
    assert [str(p) for p in holder.error.problems] == [
        f"{rules_file}:6: rule 'hook': 'webhook' needs WEBHOOK_SECRET to be set "
        "(the key that signs each call, X-Responder-Signature)"]


def test_the_same_reload_is_good_with_the_secret_or_without_sending(rules_file):
    write(rules_file, WITH_HOOK)
    for sending in (Sending(api=False, webhook_secret=True), None):
        holder = RulesHolder(str(rules_file), sending=sending)
        assert holder.load() is True and holder.error is None
        assert names(holder.current()) == ["a", "hook"]


def test_bad_reload_for_the_settings_is_logged(rules_file, caplog):
    holder = RulesHolder(str(rules_file), sending=NO_SECRET)
    holder.load()
    write(rules_file, WITH_HOOK)
    with caplog.at_level("ERROR", logger="app.rules"):
        assert holder.load() is False
    [record] = [r for r in caplog.records if "keeping the rules in use" in r.getMessage()]
    assert any("needs WEBHOOK_SECRET" in p for p in record.problems)


def test_kept_copy_is_compiled_with_the_settings_too(tmp_path):
    path = tmp_path / "rules.yaml"
    keep = tmp_path / "instance" / "rules-kept"
    path.write_text(WITH_HOOK)
    assert RulesHolder(str(path), keep_dir=str(keep)).load() is True      # kept without the settings
    path.write_text("version: 1\nrules:\n  - {name: a, when: {regex: '('}, reply: two}\n")
    strict = RulesHolder(str(path), keep_dir=str(keep), sending=NO_SECRET)
    assert strict.load() is False
    assert strict.current() is None                   # the kept copy needs the secret as well
    lenient = RulesHolder(str(path), keep_dir=str(keep), sending=Sending(api=True, webhook_secret=True))
    assert lenient.load() is False
    assert names(lenient.current()) == ["a", "hook"]


# -- the kept copy: one per rules file, the newest good version, shared by the workers --------
V1 = "version: 1\nrules:\n  - {name: price, when: {keyword: price}, reply: 'one pound'}\n"
V2 = "version: 1\nrules:\n  - {name: price, when: {keyword: price}, reply: 'two pounds'}\n"
V3_BAD = "version: 1\nrules:\n  - {name: price, when: {regex: '('}, reply: 'three'}\n"


def digest_of(text: str) -> str:
    return compile_text(text).digest


def test_the_kept_copy_is_named_after_the_rules_file_and_says_which(tmp_path, monkeypatch):
    keep = tmp_path / "instance" / "rules-kept"
    one, other = tmp_path / "rules.yaml", tmp_path / "other" / "rules.yaml"  # same name, other folder
    other.parent.mkdir()
    one.write_text(V1)
    other.write_text(V2)
    assert RulesHolder(str(one), keep_dir=str(keep)).load() and RulesHolder(str(other), keep_dir=str(keep)).load()
    monkeypatch.chdir(tmp_path)
    assert kept_copy_path(str(keep), "rules.yaml") == kept_copy_path(str(keep), str(one))  # relative or not
    assert kept_copy_path(str(keep), str(one)) != kept_copy_path(str(keep), str(other))
    assert sorted(p.name for p in keep.iterdir()) == sorted(
        os.path.basename(kept_copy_path(str(keep), str(p))) for p in (one, other))
    data = json.loads(newest_kept(keep, one).read_text(encoding="utf-8"))
    stat = os.stat(one)
    assert newest_kept(keep, one).name == f"{stat.st_ctime_ns:020d}-{stat.st_mtime_ns:020d}-{digest_of(V1)}"
    assert data == {"source": str(one), "ctime_ns": stat.st_ctime_ns, "mtime_ns": stat.st_mtime_ns,
                    "digest": digest_of(V1), "text": V1}


def test_a_worker_that_missed_the_last_good_edit_ends_on_it_when_the_file_breaks(tmp_path, caplog):
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    busy, idle = RulesHolder(str(path), 1, keep_dir=str(keep)), RulesHolder(str(path), 1, keep_dir=str(keep))
    assert busy.load() and idle.load()
    path.write_text(V2)
    busy.refresh()                                    # this worker looked while v2 was there
    path.write_text(V3_BAD)
    with caplog.at_level("WARNING", logger="app.rules"):
        idle.refresh()                                # this one only sees the broken v3
        busy.refresh()
    assert idle.current().digest == busy.current().digest == digest_of(V2)
    assert "bad regex" in str(idle.error) and "bad regex" in str(busy.error)
    [switched] = [r.getMessage() for r in caplog.records
                  if "answering with the last good rules kept at" in r.getMessage()]
    assert f"{path} has 1 problem(s)" in switched and kept_copy_path(str(keep), str(path)) in switched
    assert f"newer than the rules in use ({digest_of(V1)})" in switched
    assert any(f"keeping the rules in use ({digest_of(V2)})" in r.getMessage() for r in caplog.records)


def test_while_the_file_stays_bad_the_kept_copy_is_looked_at_again(tmp_path):
    """A worker compiled v2 just before the file broke, but wrote the kept copy after another
    worker had already found the file bad: that one switches at its next look."""
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    idle = RulesHolder(str(path), 1, keep_dir=str(keep))
    assert idle.load()
    path.write_text(V2)
    v2, _ = holder_module.read_version(str(path))   # what the slow worker read
    path.write_text(V3_BAD)
    idle.refresh()
    assert idle.current().digest == digest_of(V1) and idle.error is not None
    idle.refresh()                                    # nothing new anywhere
    assert idle.current().digest == digest_of(V1)
    assert KeptCopy(str(keep), str(path)).offer(v2) is True   # the slow worker's offer lands now
    idle.refresh()
    assert idle.current().digest == digest_of(V2) and idle.error is not None
    path.write_text(V1)                               # fixed, with older rules: the file wins
    idle.refresh()
    assert idle.current().digest == digest_of(V1) and idle.error is None


def test_an_older_version_never_replaces_a_newer_kept_copy(tmp_path):
    kept = KeptCopy(str(tmp_path / "rules-kept"), str(tmp_path / "rules.yaml"))
    new, old = Version.of(V2, (2_000, 2_000)), Version.of(V1, (1_000, 5_000))
    assert kept.read() is None
    assert kept.offer(new) is True
    assert kept.offer(old) is False                    # a slower worker with the version before
    assert kept.read() == new
    assert kept.offer(new) is True                     # the same version again: nothing to write
    newer = Version.of(V1, (3_000, 1_000))             # the older text again, edited back later
    assert kept.offer(newer) is True and kept.read() == newer


def test_an_older_kept_copy_is_brought_up_to_date_by_a_worker_with_newer_rules(tmp_path):
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V2)
    holder = RulesHolder(str(path), 1, keep_dir=str(keep))
    assert holder.load()
    kept = KeptCopy(str(keep), str(path))
    shutil.rmtree(kept.path)                          # e.g. its write failed (a full disk)
    path.write_text(V3_BAD)
    holder.refresh()
    assert holder.current().digest == digest_of(V2)
    assert kept.read().digest == digest_of(V2)         # offered again once the file broke


def test_a_copy_that_belongs_to_another_rules_file_is_refused(tmp_path, caplog):
    keep = tmp_path / "rules-kept"
    bakery, garage = tmp_path / "bakery.yaml", tmp_path / "garage.yaml"
    bakery.write_text(V1)
    garage.write_text(V2)
    assert RulesHolder(str(garage), keep_dir=str(keep)).load()
    # Someone copies the garage's kept copy among the bakery's; then the bakery's file breaks.
    foreign = newest_kept(keep, garage)
    os.makedirs(kept_copy_path(str(keep), str(bakery)))
    shutil.copy(foreign, Path(kept_copy_path(str(keep), str(bakery))) / foreign.name)
    bakery.write_text(V3_BAD)
    with caplog.at_level("ERROR", logger="app.rules"):
        holder = RulesHolder(str(bakery), keep_dir=str(keep))
        assert holder.load() is False
    assert holder.current() is None                   # no rules rather than the garage's
    assert any(f"belongs to another rules file ({str(garage)!r})" in r.getMessage() for r in caplog.records)


def test_two_services_in_one_folder_keep_their_own_rules(tmp_path):
    """The bakery's workers restart on a broken file after the garage kept its own rules."""
    keep = tmp_path / "instance" / "rules-kept"
    bakery, garage = tmp_path / "bakery" / "rules.yaml", tmp_path / "garage" / "rules.yaml"
    for path, text in ((bakery, V1), (garage, V2)):
        path.parent.mkdir()
        path.write_text(text)
    assert RulesHolder(str(bakery), keep_dir=str(keep)).load()
    assert RulesHolder(str(garage), keep_dir=str(keep)).load()
    bakery.write_text(V3_BAD)
    respawned = RulesHolder(str(bakery), keep_dir=str(keep))
    assert respawned.load() is False
    assert respawned.current().digest == digest_of(V1)


@pytest.mark.parametrize("damage", ["not json", json.dumps([1]), "digest"])
def test_a_damaged_kept_copy_is_not_used(tmp_path, damage, caplog):
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    assert RulesHolder(str(path), keep_dir=str(keep)).load()
    copy = newest_kept(keep, path)
    if damage == "digest":
        data = json.loads(open(copy, encoding="utf-8").read())
        data["text"] = V2
        damage = json.dumps(data)
    with open(copy, "w", encoding="utf-8") as fh:
        fh.write(damage)
    path.write_text(V3_BAD)
    with caplog.at_level("ERROR", logger="app.rules"):
        holder = RulesHolder(str(path), keep_dir=str(keep))
        assert holder.load() is False
    assert holder.current() is None
    assert any("are not used for" in r.getMessage() for r in caplog.records)


def test_compile_and_keep_keeps_what_the_master_compiled(tmp_path):
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    assert compile_and_keep(str(path), str(keep)).digest == digest_of(V1)
    path.write_text(V3_BAD)
    with pytest.raises(RulesError):
        compile_and_keep(str(path), str(keep))
    worker = RulesHolder(str(path), keep_dir=str(keep))   # a worker forked after the file broke
    assert worker.load() is False and worker.current().digest == digest_of(V1)


def test_errors_name_the_absolute_path(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules.yaml").write_text(V3_BAD)
    with caplog.at_level("ERROR", logger="app.rules"):
        holder = RulesHolder("rules.yaml", keep_dir="instance/rules-kept")
        assert holder.load() is False
    assert str(holder.error.problems[0]).startswith(f"{tmp_path / 'rules.yaml'}:3: ")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rules not loaded")]
    kept_at = tmp_path / "instance" / "rules-kept" / os.path.basename(kept_copy_path("k", "rules.yaml"))
    assert line == (f"rules not loaded: {tmp_path / 'rules.yaml'} has 1 problem(s) and no last good copy "
                    f"is kept at {kept_at}")


# -- the watcher thread ------------------------------------------------------------------------
def test_the_watcher_follows_the_file_and_requests_do_no_file_work(rules_file, monkeypatch):
    holder = RulesHolder(str(rules_file), 0.05)
    holder.load()
    main, stats = threading.get_ident(), []
    real_stat = holder_module._stat
    monkeypatch.setattr(holder_module, "_stat",
                        lambda path: (stats.append(threading.get_ident()), real_stat(path))[1])
    assert holder.start() is True and holder.start() is False   # one thread per holder
    try:
        write(rules_file, GOOD_B)
        wait_until(lambda: names(holder.ruleset) == ["b", "c"], 5, "rules b, c loaded")  # nobody asked for the rules
        for _ in range(200):
            holder.current()
        assert stats and main not in stats                          # every look came from the watcher
    finally:
        holder.stop()
    assert not any(t.name == "rules-watcher" and t.is_alive() for t in threading.enumerate())
    write(rules_file, GOOD_A)
    settle(0.05)
    assert names(holder.current()) == ["a"]                         # without it, requests look again


def test_no_watcher_without_an_interval(rules_file):
    holder = RulesHolder(str(rules_file), 0)
    assert holder.start() is False
    holder.stop()


# -- a file that could not be read is read again; content that is bad is not -----------------
@contextlib.contextmanager
def no_file_opens():
    """While inside, every file this process opens fails with EMFILE ("Too many open files"),
    as under load: the limit on open files is lowered to the descriptors already open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = os.open(os.devnull, os.O_RDONLY)  # the lowest free descriptor: the next open's number
    os.close(probe)
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_file_that_could_not_be_read_is_read_again_at_the_next_look(rules_file, loads, caplog):
    holder = RulesHolder(str(rules_file), 0.05)
    assert holder.load()
    write(rules_file, GOOD_B)                          # a good edit; its first look fails
    with caplog.at_level("ERROR", logger="app.rules"):
        try:
            with no_file_opens():
                assert holder.start()
                # Several looks while the system refuses to open it: each one tries again.
                wait_until(lambda: len(loads) >= 4, 5, "four looks at the file")
                assert names(holder.current()) == ["a"] and "Too many open files" in str(holder.error)
            wait_until(lambda: names(holder.current()) == ["b", "c"], 5, "rules b, c loaded")   # the next look, unaided
            assert holder.error is None                # /readyz and the metric: the file is fine
        finally:
            holder.stop()
    failed = [r for r in caplog.records if "Too many open files" in str(getattr(r, "problems", ""))]
    assert len(failed) == 1, [r.getMessage() for r in failed]   # logged once, not every look
    assert "keeping the rules in use" in failed[0].getMessage()
    assert "looked at again every 0.05 s" in failed[0].getMessage()


def test_the_same_read_failure_is_logged_once_and_a_new_one_again(rules_file, caplog):
    holder = RulesHolder(str(rules_file))
    assert holder.load()
    write(rules_file, GOOD_B)
    with caplog.at_level("ERROR", logger="app.rules"):
        for _ in range(3):
            with no_file_opens():
                holder.refresh()
        assert "Too many open files" in str(holder.error) and names(holder.current()) == ["a"]
        rules_file.unlink()                            # another failure: said once more
        holder.refresh()
        holder.refresh()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # not the load's INFO
    assert len(lines) == 2, lines
    write(rules_file, GOOD_B)
    holder.refresh()
    assert names(holder.current()) == ["b", "c"] and holder.error is None


def test_a_compile_that_fails_unexpectedly_is_tried_again(rules_file, monkeypatch, caplog):
    holder = RulesHolder(str(rules_file))
    assert holder.load()
    real, calls = holder_module.compile_text, []

    def flaky(text, path, **kw):                      # a bug that strikes a few times
        calls.append(path)
        if len(calls) <= 3:
            raise RuntimeError("boom")
        return real(text, path, **kw)

    monkeypatch.setattr(holder_module, "compile_text", flaky)
    write(rules_file, GOOD_B)
    with caplog.at_level("ERROR", logger="app.rules"):
        for _ in range(3):
            holder.refresh()
            assert names(holder.current()) == ["a"] and "RuntimeError: boom" in str(holder.error)
        holder.refresh()
    assert names(holder.current()) == ["b", "c"] and holder.error is None
    assert len([r for r in caplog.records if r.exc_info]) == 1       # one traceback, not one per look


def test_content_that_is_not_utf8_is_not_read_again_until_it_changes(rules_file, loads):
    holder = RulesHolder(str(rules_file))
    assert holder.load()
    rules_file.write_bytes(b"version: 1\nrules:\n  - name: caf\xe9\n    reply: x\n")
    for _ in range(3):
        holder.refresh()
    assert len(loads) == 2 and "not valid UTF-8" in str(holder.error)


# -- which version the kept copy holds ---------------------------------------------------------
def plant(keep, path, text: str, changed: tuple[int, int]) -> None:
    """A kept version of `path` holding `text`, stamped `changed`, as an earlier process wrote it."""
    folder = kept_copy_path(str(keep), str(path))
    os.makedirs(folder, exist_ok=True)
    data = {"source": str(path), "ctime_ns": changed[0], "mtime_ns": changed[1],
            "digest": digest_of(text), "text": text}
    with open(os.path.join(folder, Version.of(text, changed).name), "w", encoding="utf-8") as fh:
        json.dump(data, fh)


def test_a_kept_copy_stamped_in_the_future_never_rolls_the_workers_back(tmp_path):
    """The copy was written while the clock ran 60 s ahead (then NTP set it right); the rules
    file's current good version must still be kept, and kept to when the file breaks."""
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    ahead = time.time_ns() + 60 * 10**9
    plant(keep, path, V1, (ahead, ahead))
    path.write_text(V2)
    worker = RulesHolder(str(path), 1, keep_dir=str(keep))
    assert worker.load()
    kept = KeptCopy(str(keep), str(path))
    assert kept.read().digest == digest_of(V2)
    assert kept.read().changed == (os.stat(path).st_ctime_ns, os.stat(path).st_mtime_ns)
    path.write_text(V3_BAD)
    worker.refresh()
    assert worker.current().digest == digest_of(V2) and worker.error is not None
    respawned = RulesHolder(str(path), 1, keep_dir=str(keep))   # a worker started now
    assert respawned.load() is False and respawned.current().digest == digest_of(V2)


def test_what_the_file_holds_now_wins_a_tie_and_an_older_offer_is_refused(tmp_path, caplog):
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V2)
    now, _ = read_version(str(path))
    assert now.signature == holder_module._stat_signature(str(path))
    kept = KeptCopy(str(keep), str(path))
    plant(keep, path, V1, now.changed)                 # coarse times: the same stamp as the file
    assert kept.offer(now) is True and kept.read() == now
    # A slower worker offers what it read before: not the file now, not later: refused, logged.
    with caplog.at_level("INFO", logger="app.rules"):
        assert kept.offer(Version.of(V1, now.changed)) is False
        assert kept.offer(Version.of(V1, (now.changed[0] - 1, now.changed[1]))) is False
    assert kept.read() == now
    refused = [r.getMessage() for r in caplog.records if "stays as it is" in r.getMessage()]
    assert len(refused) == 2 and f"stays as it is ({digest_of(V2)})" in refused[0]


def test_a_version_read_while_the_clock_was_ahead_is_not_kept_again_once_the_file_moved_on(tmp_path):
    """A worker loaded V1 while the clock ran 60 s ahead; the clock was set right and the file
    edited to V2, which another worker kept. The first worker's V1, offered again (it finds
    the kept copy older than its own), must not pass for newer and roll every worker back."""
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V2)
    kept = KeptCopy(str(keep), str(path))
    current, _ = read_version(str(path))
    assert kept.offer(current) is True
    ahead = time.time_ns() + 60 * 10**9
    assert kept.offer(Version.of(V1, (ahead, ahead))) is False
    assert kept.read().digest == digest_of(V2)


def test_a_newer_version_kept_after_the_file_changed_is_not_removed_by_an_older_offer(tmp_path, monkeypatch):
    """An offer of what the file holds removes the versions named newer (a clock that was
    ahead), but only while the file still holds it: here the file changes just after the offer
    found it current, and the version another process kept of the new content stays newest."""
    import app.rules.kept as kept_module

    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    old, _ = read_version(str(path))
    path.write_text(V2)
    os.utime(path, ns=(old.changed[1] + 10**9, old.changed[1] + 10**9))
    new, _ = read_version(str(path))
    kept = KeptCopy(str(keep), str(path))
    assert kept.offer(new) is True                 # another process kept the file's new content
    looks = []
    real = kept_module.file_signature

    def changes_after_the_first_look(source):      # the first look still saw the old content
        looks.append(source)
        return old.signature if len(looks) == 1 else real(source)

    monkeypatch.setattr(kept_module, "file_signature", changes_after_the_first_look)
    kept.offer(old)
    assert len(looks) >= 2
    assert kept.read().digest == digest_of(V2)


def test_a_file_system_without_hard_links_still_keeps_each_version(tmp_path, monkeypatch):
    """SMB/CIFS and some FUSE mounts refuse os.link: versions are renamed into place instead."""
    import errno

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    first = RulesHolder(str(path), keep_dir=str(keep))
    assert first.load() is True and kept_text(keep, path) == V1
    path.write_text(V3_BAD)
    respawned = RulesHolder(str(path), keep_dir=str(keep))
    assert respawned.load() is False and respawned.current().digest == digest_of(V1)
    leftovers = [p.name for p in Path(kept_copy_path(str(keep), str(path))).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_kept_copy_that_could_not_be_read_is_read_again_at_the_next_look(tmp_path, monkeypatch):
    """A worker started while the file is bad, whose first look at the kept copy failed (too
    many open files, an I/O error), reads it again at the next look, not only once it changes."""
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    assert RulesHolder(str(path), keep_dir=str(keep)).load() is True
    path.write_text(V3_BAD)
    real_open, failing = open, [True]

    def flaky_open(file, *args, **kwargs):
        if failing[0] and str(file).startswith(kept_copy_path(str(keep), str(path))):
            raise OSError(24, "Too many open files")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", flaky_open)
    worker = RulesHolder(str(path), 1, keep_dir=str(keep))
    assert worker.load() is False and worker.current() is None
    failing[0] = False
    worker.refresh()
    assert worker.current() is not None and worker.current().digest == digest_of(V1)


def test_a_version_is_stamped_from_the_file_it_was_read_from(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(V1)
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    version, signature = read_version(str(path))
    st = os.stat(path)
    assert version.changed == (st.st_ctime_ns, 2_000_000_000)
    assert signature == version.signature == (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


# -- a kept copy that cannot be written ---------------------------------------------------------
def test_a_kept_copy_that_cannot_be_written_never_holds_up_a_reload(tmp_path, caplog):
    """Offers take no lock, so nothing another process holds (or a stuck one) makes them wait;
    a folder that cannot be written (here a file has taken its place) is logged once, the
    watcher keeps its pace meanwhile, and the offer is made again, unaided, until it lands."""
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    path.write_text(V1)
    holder = RulesHolder(str(path), 0.05, keep_dir=str(keep))
    assert holder.load()
    kept = KeptCopy(str(keep), str(path))
    folder = Path(kept.path)
    shutil.rmtree(folder)
    folder.write_text("in the way")
    with caplog.at_level("WARNING", logger="app.rules"):
        assert holder.start()
        try:
            path.write_text(V2)
            edited = time.monotonic()
            wait_until(lambda: holder.ruleset.digest == digest_of(V2), 5, "V2 loaded")
            assert time.monotonic() - edited < 1.0     # never waited on the kept copy first
            wait_until(lambda: any("cannot keep a copy" in r.getMessage() for r in caplog.records), 5,
                       "'cannot keep a copy' logged")
            path.write_text(V3_GOOD)                    # the watcher keeps its pace meanwhile
            edited = time.monotonic()
            wait_until(lambda: holder.ruleset.digest == digest_of(V3_GOOD), 5, "V3 loaded")
            assert time.monotonic() - edited < 1.0
            assert folder.read_text() == "in the way"   # nothing kept meanwhile
            folder.unlink()
            wait_until(lambda: kept_text(keep, path) == V3_GOOD, 5, "V3 kept")   # offered again, unaided
        finally:
            holder.stop()
    warned = [r.getMessage() for r in caplog.records if "cannot keep a copy" in r.getMessage()]
    assert len(warned) == 1, warned                     # once, not at every look
    assert f"at {folder} now" in warned[0] and "trying again at the next look" in warned[0]


V3_GOOD = "version: 1\nrules:\n  - {name: price, when: {keyword: price}, reply: 'three pounds'}\n"


# -- what the kept folder holds: the last few versions, no leftovers ---------------------------
def test_temporary_files_of_unfinished_writes_are_removed_by_age_when_a_copy_is_opened(tmp_path):
    path, other, keep = tmp_path / "rules.yaml", tmp_path / "other.yaml", tmp_path / "rules-kept"
    mine, others = Path(kept_copy_path(str(keep), str(path))), Path(kept_copy_path(str(keep), str(other)))
    mine.mkdir(parents=True)
    others.mkdir()
    old = mine / ".tmp-0123456789abcdef"             # far too old to be a write: its writer was killed
    fresh = mine / ".tmp-fedcba9876543210"           # a write in progress elsewhere
    not_mine = others / ".tmp-0123456789abcdef"      # another file's: left to its own holders
    for name in (old, fresh, not_mine):
        name.write_text("{")
    long_ago = time.time() - 3600
    for name in (old, not_mine):
        os.utime(name, (long_ago, long_ago))
    KeptCopy(str(keep), str(path))
    assert os.listdir(mine) == [fresh.name] and os.listdir(others) == [not_mine.name]


def test_only_the_last_few_versions_stay_kept(tmp_path):
    path, keep = tmp_path / "rules.yaml", tmp_path / "rules-kept"
    holder = RulesHolder(str(path), keep_dir=str(keep))
    for text in (V1, V2, V3_GOOD, GOOD_A, GOOD_B):
        write(path, text)
        assert holder.load()
    assert len(os.listdir(kept_copy_path(str(keep), str(path)))) == KEEP_VERSIONS
    assert kept_text(keep, path) == GOOD_B


# -- rule warnings: logged once per start and once per new version (issue 13) -------------------
def shadowed(name: str) -> str:
    """Rules with one warning: rule `name` can never match (the catch-all before it stops)."""
    return f"version: 1\nrules:\n  - name: all\n    reply: A\n  - name: {name}\n    reply: B\n"


@pytest.fixture
def warned():
    """The rule-warning lines logged by `app.rules` during the test, each once (a handler of its
    own: the app's loggers may or may not propagate, depending on the tests run before)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if record.levelno == logging.WARNING and ": warning: " in record.getMessage():
                lines.append(record.getMessage())

    logger = logging.getLogger("app.rules")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_without_a_master_the_warnings_are_logged_at_start_and_for_each_new_version(tmp_path, warned, monkeypatch):
    monkeypatch.delenv(holder_module.WARNED_ENV, raising=False)
    path = tmp_path / "rules.yaml"
    write(path, shadowed("first"))
    holder = RulesHolder(str(path), keep_dir=str(tmp_path / "kept"))
    holder.load()
    assert warned == [f"{path}:5: warning: rule 'first' can never match: rule 'all' (line 3) matches "
                              "first and stops"]
    again = RulesHolder(str(path), keep_dir=str(tmp_path / "kept"))  # a restart: the copy holds them already
    again.load()
    assert len(warned) == 2  # a start, so said again
    write(path, shadowed("second"))
    holder.refresh()
    again.refresh()  # the same new version in a second process: said by the first to keep it
    assert [m.split("rule ")[1] for m in warned[2:]] == ["'second' can never match: "]


def test_under_a_master_each_version_is_logged_by_one_worker_only(tmp_path, warned, monkeypatch):
    """The master logged the warnings of the file it checked at start; its workers compile the
    same file (said nothing more), and of a new version only the first worker to keep it speaks."""
    path = tmp_path / "rules.yaml"
    write(path, shadowed("first"))
    master = compile_and_keep(str(path), str(tmp_path / "kept"))
    monkeypatch.setenv(holder_module.WARNED_ENV, master.digest)
    workers = [RulesHolder(str(path), keep_dir=str(tmp_path / "kept")) for _ in range(3)]
    for worker in workers:
        worker.load()
    assert warned == []
    write(path, shadowed("second"))
    for worker in workers:
        worker.refresh()
    assert len(warned) == 1 and "rule 'second' can never match" in warned[0]
    os.utime(path, (_MTIME[0] + 5, _MTIME[0] + 5))  # touched, not changed: no new version
    for worker in workers:
        worker.refresh()
    assert len(warned) == 1
    respawned = RulesHolder(str(path), keep_dir=str(tmp_path / "kept"))  # a worker replaced later
    respawned.load()
    assert len(warned) == 1


def test_without_a_kept_copy_every_new_version_is_logged(tmp_path, warned, monkeypatch):
    monkeypatch.setenv(holder_module.WARNED_ENV, "not-these-rules")
    path = tmp_path / "rules.yaml"
    write(path, shadowed("first"))
    holder = RulesHolder(str(path))
    holder.load()
    write(path, GOOD_A)
    holder.refresh()
    write(path, shadowed("second"))
    holder.refresh()
    assert [m.split("rule ")[1] for m in warned] == ["'first' can never match: ", "'second' can never match: "]
