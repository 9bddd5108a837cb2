"""The good versions of a rules file, kept for every process that serves it (`KeptCopy`).

One folder per rules file in the instance folder (`kept_copy_path`), one file per version
named `<ctime_ns>-<mtime_ns>-<digest>`, so that names sort by when the rules file took the
version and every process agrees on the newest (the largest name). A version's file is
written whole once and never changed: a temporary file, then `os.link` to its name, which
fails when the name exists, so exactly one process creates each version (it logs the
version's warnings; on a file system without hard links a rename stands in, and two
processes renaming the same version at once both log them) and readers need no lock. No
lock at all: nothing another process does (a hung write, a paused process) can hold up an
offer. Leftovers of a writer killed mid-write are removed by their age alone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field

log = logging.getLogger("app.rules")

#: The folder, inside the instance folder, that holds the kept copies.
KEEP_FOLDER = "rules-kept"
#: Versions kept per rules file: the newest decides; the ones before it are there for a
#: process that listed the folder just before a newer one came.
KEEP_VERSIONS = 3
#: Seconds after which a temporary file is left over for sure (its writer was killed): a
#: write takes milliseconds.
STALE_TMP = 300.0

_NAME = re.compile(r"[0-9]{20}-[0-9]{20}-[0-9a-f]{12}\Z")
_TMP = ".tmp-"
#: What os.link raises where the file system has no hard links: the version is renamed instead.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS})


def keep_dir(instance_path: str) -> str:
    """Where the kept copies of a service whose instance folder is `instance_path` live."""
    return os.path.join(instance_path, KEEP_FOLDER)


def kept_copy_path(folder: str, rules_path: str) -> str:
    """The folder of `rules_path`'s kept versions in `folder`: its base name plus a hash of its
    absolute path. Symlinks are not resolved, so a file swapped behind a symlink (as Kubernetes
    does with a ConfigMap) keeps one folder."""
    source = os.path.abspath(rules_path)
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return os.path.join(os.path.abspath(folder), f"{os.path.basename(source)}-{digest}")


def file_signature(path: str) -> tuple | None:
    """What tells one content of a file from another without reading it (None: not seen)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return signature_of(st)


def signature_of(st: os.stat_result) -> tuple:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


@dataclass(frozen=True)
class Version:
    """One version of a rules file: its text and when the file took it."""
    text: str
    digest: str
    changed: tuple[int, int]  # (st_ctime_ns, st_mtime_ns): ctime first, as no one can set it back
    #: The file's signature when it was read (None: unknown, or written to while read), to
    #: tell whether the file still holds this version. Not kept, not compared.
    signature: tuple | None = field(default=None, compare=False)

    @classmethod
    def of(cls, text: str, changed: tuple[int, int], signature: tuple | None = None) -> "Version":
        # The digest `compile_text` gives the same text, so a kept version shows the file's.
        return cls(text, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12], changed, signature)

    @property
    def name(self) -> str:
        return f"{self.changed[0]:020d}-{self.changed[1]:020d}-{self.digest}"


class KeptCopy:
    """The kept versions of one rules file; each file holds {"source", "ctime_ns", "mtime_ns",
    "digest", "text"}, checked when read."""

    def __init__(self, folder: str, rules_path: str):
        self.source = os.path.abspath(rules_path)
        self.path = kept_copy_path(folder, rules_path)
        self._reported: set[str] = set()  # problems logged about the kept files, each once
        self._trouble: str | None = None  # the last reason a version could not be kept, logged once
        self.read_failed = False           # the last read ended on an error of the system
        self._tidy()

    def _names(self) -> list[str]:
        """The kept versions' names, newest first."""
        try:
            return sorted((n for n in os.listdir(self.path) if _NAME.match(n)), reverse=True)
        except FileNotFoundError:
            return []

    def signature(self) -> tuple | None:
        """What tells one state of the folder from another without reading a version."""
        try:
            return tuple(self._names())
        except OSError:
            return None

    def read(self) -> Version | None:
        """The newest usable version, or None. A file that is no version of this rules file is
        passed over (logged once); one that cannot be read now ends the search, rather than
        answer with older rules (`read_failed` then says so: read again at the next look)."""
        self.read_failed = False
        try:
            names = self._names()
        except OSError as exc:
            self.read_failed = True
            return self.reject(f"they cannot be read: {exc}")
        for name in names:
            try:
                with open(os.path.join(self.path, name), encoding="utf-8") as fh:
                    data = json.load(fh)
            except FileNotFoundError:
                continue  # removed since the listing
            except ValueError as exc:
                self.reject(f"{name} cannot be read: {exc}")
                continue
            except OSError as exc:
                self.read_failed = True
                return self.reject(f"{name} cannot be read: {exc}")
            version = self._check(name, data)
            if version is not None:
                if name == names[0]:
                    self._reported.clear()
                return version
        return None

    def _check(self, name: str, data) -> Version | None:
        if not isinstance(data, dict):
            return self.reject(f"{name} is not a kept version")
        if data.get("source") != self.source:
            return self.reject(f"{name} belongs to another rules file ({data.get('source')!r})")
        text, changed = data.get("text"), (data.get("ctime_ns"), data.get("mtime_ns"))
        if not isinstance(text, str) or not all(isinstance(n, int) for n in changed):
            return self.reject(f"{name} is not a kept version")
        version = Version.of(text, changed)
        if data.get("digest") != version.digest or version.name != name:
            return self.reject(f"{name}: its text does not match its digest or its name")
        return version

    def offer(self, version: Version) -> bool:
        """Keep `version` unless newer rules are kept; True when the newest kept is `version`."""
        return self.keep(version) is True

    def keep(self, version: Version, *, on_write=None) -> bool | None:
        """Offer `version`: True when the newest kept is now `version`, False when newer rules are
        kept, None when the folder cannot be written now (logged once: offer it again later).
        When this offer creates the version's file, `on_write` gets the version newest before.

        `version` is kept when the rules file still holds it (its signature is the file's now),
        whatever the change times say: versions named newer come from a clock that was ahead,
        or tie with it on a file system with coarse times, and are removed. Otherwise only a
        later change time is kept; on a tie the kept version stays, so every offer ends the
        same way. A version the file no longer holds, stamped later than the file's change time
        now, was read while the clock was ahead (the file changed after it): it is not kept
        again, as it would pass for newer. Both times come from the file system's clock.
        """
        try:
            os.makedirs(self.path, exist_ok=True)
            kept = self.read()
            if kept != version:
                current = self._holds(version)
                if not current and version.changed[0] > _changed_now(self.source):
                    return False
                if kept is not None and not current and kept.changed >= version.changed:
                    if kept.digest != version.digest:
                        log.info("the kept copy of the rules of %s stays as it is (%s): the rules offered (%s) "
                                 "are not newer, and the file no longer holds them", self.source, kept.digest,
                                 version.digest, extra={"rules_path": self.source, "kept_copy": self.path})
                    self._trouble = None
                    return kept.digest == version.digest
                for name in self._names() if current else ():
                    # Checked again before each removal: a process that kept a newer version of
                    # the file just now (after the look above) keeps it.
                    if name > version.name and self._holds(version):
                        _remove(os.path.join(self.path, name))
                if self._create(version):
                    self._tidy()
                    if on_write is not None:
                        on_write(kept)
        except OSError as exc:
            if str(exc) != self._trouble:
                self._trouble = str(exc)
                log.warning("cannot keep a copy of the good rules of %s at %s now: %s; trying again at the "
                            "next look (until then a worker that starts while the file is bad may answer with "
                            "older rules, or none)", self.source, self.path, exc,
                            extra={"rules_path": self.source, "kept_copy": self.path})
            return None
        self._trouble = None
        return True

    def _holds(self, version: Version) -> bool:
        """Whether the rules file holds `version` now (its signature is the file's)."""
        return version.signature is not None and version.signature == file_signature(self.source)

    def _create(self, version: Version) -> bool:
        """Write `version`'s file; False when it exists (another process kept it first)."""
        data = {"source": self.source, "ctime_ns": version.changed[0], "mtime_ns": version.changed[1],
                "digest": version.digest, "text": version.text}
        tmp = os.path.join(self.path, _TMP + secrets.token_hex(8))
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "w", encoding="utf-8") as fh:
                json.dump(data, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            final = os.path.join(self.path, version.name)
            try:
                os.link(tmp, final)
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                # A file system without hard links (SMB/CIFS, some FUSE mounts): a rename, unless
                # the version is there already. Two processes may both rename the same content;
                # both then log its warnings, which is all this costs.
                if os.path.exists(final):
                    return False
                os.rename(tmp, final)
            return True
        except FileExistsError:
            return False
        finally:
            _remove(tmp)

    def _tidy(self) -> None:
        """Remove the versions before the last `KEEP_VERSIONS`, and temporary files older than
        any write takes (their writer was killed)."""
        try:
            names = os.listdir(self.path)
        except OSError:
            return  # no folder yet: nothing to remove
        for name in sorted((n for n in names if _NAME.match(n)), reverse=True)[KEEP_VERSIONS:]:
            _remove(os.path.join(self.path, name))
        for name in names:
            tmp = os.path.join(self.path, name)
            try:
                if not name.startswith(_TMP) or time.time() - os.stat(tmp).st_mtime < STALE_TMP:
                    continue
                os.unlink(tmp)
            except OSError:
                continue  # gone already, or not ours to remove
            log.info("removed %s, left by a process stopped while it wrote a kept copy", tmp,
                     extra={"rules_path": self.source, "kept_copy": self.path})

    def reject(self, reason: str) -> None:
        """Log once why kept rules are not used; None."""
        if reason not in self._reported:
            self._reported.add(reason)
            log.error("the last good rules kept at %s are not used for %s: %s", self.path, self.source, reason,
                      extra={"rules_path": self.source, "kept_copy": self.path})
        return None


def _changed_now(path: str) -> int | float:
    """The file's change time now (ns), or infinity when it cannot be seen (nothing to compare)."""
    try:
        return os.stat(path).st_ctime_ns
    except OSError:
        return float("inf")


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # gone already (another process removed it), or never written
