"""Which folder a gunicorn master gives its workers for their metric files, and whose it is.

The master (gunicorn.conf.py) uses PROMETHEUS_MULTIPROC_DIR when the operator set it,
and otherwise makes a temporary folder that it alone removes when it exits. Which
master made a folder is written in the environment as `<pid>:<path>`, because the
environment travels: a HUP makes gunicorn copy it into the one a USR2 upgrade starts
its new master with. A master that finds another master's folder there makes its own:
adopting it would mean emptying it under the old workers and removing it when the new
master exits, while the old master (the one a failed or rolled-back upgrade keeps)
still needs it.

Plain decisions over an environment mapping and a pid: nothing here imports the app
or prometheus_client, which must not be imported before the folder is chosen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: `<pid>:<path>` of the folder a master made for itself.
MARK = "RESPONDER_METRICS_DIR_MADE"
#: Where a master makes its folder when no temporary folder is writable (a read-only root).
SHM = "/dev/shm"


class Choice(NamedTuple):
    """`path`: the folder to use, or None to make a new temporary one (then owned).
    `owned`: this master removes the folder when it exits.
    `empty`: empty the folder at start (files of an earlier run would add their counts)."""

    path: str | None
    owned: bool
    empty: bool


def mark(pid: int, path: str) -> str:
    return f"{pid}:{path}"


def owner(environ: Mapping[str, str]) -> tuple[int | None, str] | None:
    """(pid, path) of the made-folder mark in `environ`; pid None when the mark has no
    pid (an older form: just the path); None without a mark."""
    value = environ.get(MARK, "")
    if not value:
        return None
    pid, sep, path = value.partition(":")
    if sep and pid.isascii() and pid.isdigit():
        return int(pid), path
    return None, value


def reexecuted(environ: Mapping[str, str]) -> bool:
    """Whether this master was started by another one (a USR2 upgrade), whose workers may
    still be running: gunicorn passes it the listening sockets and the old master's pid."""
    return bool(environ.get("GUNICORN_PID") or environ.get("GUNICORN_FD"))


def choose(environ: Mapping[str, str], pid: int) -> Choice:
    """The folder for the master of process `pid`, given its environment."""
    given = environ.get(VARIABLE, "").strip()
    made = owner(environ)
    if made is not None and given and os.path.normpath(made[1]) == os.path.normpath(given):
        if made[0] == pid:
            return Choice(given, owned=True, empty=False)   # its own, read again on a HUP
        return Choice(None, owned=True, empty=False)        # another master's: make a new one
    if given:
        # The operator's folder: never removed. After a USR2 upgrade the old workers still
        # write there, and their counts carry on into the new workers' totals.
        return Choice(given, owned=False, empty=not reexecuted(environ))
    return Choice(None, owned=True, empty=False)


def removable(environ: Mapping[str, str], pid: int) -> str | None:
    """The folder process `pid` may remove as it exits: the one it made, still in use."""
    made = owner(environ)
    if made is None or made[0] != pid:
        return None
    given = environ.get(VARIABLE, "").strip()
    if not given or os.path.normpath(given) != os.path.normpath(made[1]):
        return None
    return made[1]


def dead_worker_leftovers(folder: str, pid: int) -> list[str]:
    """The metric files of worker `pid` (dead) that hold nothing and would break every scrape:
    files shorter than their 8-byte header (the worker was killed between creating the file
    and sizing it). Files with counts are kept: a dead worker's counts stay in the totals."""
    leftovers = []
    suffix = f"_{pid}.db"
    try:
        entries = os.scandir(folder)
    except OSError:
        return leftovers
    with entries:
        for entry in entries:
            if not entry.name.endswith(suffix):
                continue
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_size < 8:
                    leftovers.append(entry.path)
            except OSError:
                continue
    return leftovers
