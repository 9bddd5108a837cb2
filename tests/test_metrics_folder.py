"""Whose metrics folder it is (metrics_folder.py, used by gunicorn.conf.py): a master keeps and
removes only the folder it made itself; a master started by a USR2 upgrade, which inherits the
old master's environment as it was at the last HUP, makes its own; the operator's folder is
never removed, and not emptied under the old workers of an upgrade. Also which files of a dead
worker are removed. (test_metrics.py runs the same story against real gunicorns.)"""

from __future__ import annotations

import metrics_folder as mf

OLD, NEW = 4100, 4200   # the pids of an old master and of the one its USR2 upgrade starts
MADE = "/tmp/responder-metrics-abc"


def test_a_fresh_start_without_the_variable_makes_a_folder_it_owns():
    choice = mf.choose({}, OLD)
    assert choice == mf.Choice(None, owned=True, empty=False)
    env = {mf.VARIABLE: MADE, mf.MARK: mf.mark(OLD, MADE)}   # what gunicorn.conf.py then sets
    assert mf.removable(env, OLD) == MADE


def test_the_same_master_reading_its_settings_again_on_a_hup_keeps_its_folder():
    env = {mf.VARIABLE: MADE, mf.MARK: mf.mark(OLD, MADE)}
    assert mf.choose(env, OLD) == mf.Choice(MADE, owned=True, empty=False)
    assert mf.removable(env, OLD) == MADE


def test_a_usr2_master_after_a_hup_makes_its_own_and_never_removes_the_old_one():
    # gunicorn copied the old master's environment at the HUP and hands it to the new master
    inherited = {mf.VARIABLE: MADE, mf.MARK: mf.mark(OLD, MADE), "GUNICORN_PID": str(OLD), "GUNICORN_FD": "3"}
    assert mf.choose(inherited, NEW) == mf.Choice(None, owned=True, empty=False)
    # refused before it made one (a bad setting, say): the old master's is not its to remove
    assert mf.removable(inherited, NEW) is None
    # with its own folder made, it removes only that one; the old master still removes its own
    mine = {**inherited, mf.VARIABLE: "/tmp/responder-metrics-new", mf.MARK: mf.mark(NEW, "/tmp/responder-metrics-new")}
    assert mf.removable(mine, NEW) == "/tmp/responder-metrics-new"
    assert mf.removable({mf.VARIABLE: MADE, mf.MARK: mf.mark(OLD, MADE)}, OLD) == MADE


def test_a_usr2_master_without_a_hup_makes_its_own():
    assert mf.choose({"GUNICORN_PID": str(OLD), "GUNICORN_FD": "3"}, NEW) == mf.Choice(None, owned=True, empty=False)


def test_a_mark_in_the_older_form_without_a_pid_is_not_adopted_either():
    env = {mf.VARIABLE: MADE, mf.MARK: MADE}
    assert mf.owner(env) == (None, MADE)
    assert mf.choose(env, NEW) == mf.Choice(None, owned=True, empty=False)
    assert mf.removable(env, NEW) is None


def test_the_operators_folder_is_never_owned_and_not_emptied_under_an_upgrades_old_workers():
    given = "/srv/metrics"
    assert mf.choose({mf.VARIABLE: given}, OLD) == mf.Choice(given, owned=False, empty=True)
    upgrade = {mf.VARIABLE: given, "GUNICORN_PID": str(OLD), "GUNICORN_FD": "3"}
    assert mf.choose(upgrade, NEW) == mf.Choice(given, owned=False, empty=False)
    assert mf.removable({mf.VARIABLE: given}, OLD) is None
    # a stale mark for another folder does not make the operator's folder removable
    stale = {mf.VARIABLE: given, mf.MARK: mf.mark(OLD, MADE)}
    assert mf.choose(stale, OLD) == mf.Choice(given, owned=False, empty=True)
    assert mf.removable(stale, OLD) is None


def test_marks_that_are_not_pid_colon_path():
    assert mf.owner({}) is None
    assert mf.owner({mf.MARK: ""}) is None
    assert mf.owner({mf.MARK: mf.mark(12, "/a:b")}) == (12, "/a:b")
    assert mf.owner({mf.MARK: "x1:/a"}) == (None, "x1:/a")
    assert not mf.reexecuted({}) and mf.reexecuted({"GUNICORN_PID": "1"}) and mf.reexecuted({"GUNICORN_FD": "3,4"})


def test_a_dead_workers_empty_files_are_leftovers_its_counts_are_not(tmp_path):
    (tmp_path / "counter_123.db").write_bytes(b"\x08" + b"\0" * 1023)      # sized: holds counts
    (tmp_path / "histogram_123.db").write_bytes(b"")                     # killed while making it
    (tmp_path / "gauge_all_123.db").write_bytes(b"\0\0\0")
    (tmp_path / "counter_1123.db").write_bytes(b"")                      # another worker's
    (tmp_path / "counter_124.db").write_bytes(b"")
    (tmp_path / "notes_123.txt").write_bytes(b"")
    found = sorted(p.rsplit("/", 1)[1] for p in mf.dead_worker_leftovers(str(tmp_path), 123))
    assert found == ["gauge_all_123.db", "histogram_123.db"]
    assert mf.dead_worker_leftovers(str(tmp_path / "gone"), 123) == []
