# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A migration's durable journal: the phase it reached, on disk before the step acts.

Each host keeps one journal per workload name in the migration directory (root-only), replaced
atomically and flushed (file and directory) at every phase, so whichever process dies at whatever
line, the next run reads where it stopped and finishes or undoes exactly that.

Every phase reached is also a failpoint (storage/_failpoint.py): tests use it to kill a controller, a
driver, a restore or a link at exactly that step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.storage._failpoint import failpoint
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

FORMAT = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")


def journal_name(name: str) -> str:
    return "%s.journal.json" % name


def progress_name(name: str) -> str:
    return "%s.progress.json" % name


class Journal:
    """The journal of one migration on one host."""

    def __init__(self, dir_fd: int, directory: str, name: str, data: t.Dict[str, t.Any]) -> None:
        self.dir_fd = dir_fd
        self.directory = directory
        self.name = name
        self.data = data

    @property
    def path(self) -> str:
        return os.path.join(self.directory, journal_name(self.name))

    @property
    def phase(self) -> str:
        return self.data["phase"]

    def get(self, key: str, default: t.Any = None) -> t.Any:
        return self.data.get(key, default)

    @classmethod
    def load(cls, dir_fd: int, directory: str, name: str) -> t.Optional[Journal]:
        raw = store.read_small_file(dir_fd, journal_name(name), os.path.join(directory, journal_name(name)))
        if raw is None:
            return None
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("phase"), str):
            path = os.path.join(directory, journal_name(name))
            raise CriuError("%s is damaged or not a nucleus.criu migration journal (format %d): nothing was done, since a "
                            "decision cannot be read from it. Keep it for the record (mv %s %s.damaged) and rerun the same "
                            "command: with no journal here, the run asks the other host where the migration stands before "
                            "anything else." % (path, FORMAT, path, path), path=path)
        return cls(dir_fd, directory, name, data)

    @classmethod
    def create(cls, dir_fd: int, directory: str, name: str, phase: str, **fields: t.Any) -> Journal:
        journal = cls(dir_fd, directory, name, {"format": FORMAT, "name": name, "history": []})
        journal.record(phase, **fields)
        return journal

    def record(self, phase: str, **fields: t.Any) -> None:
        """Write ``phase`` (and ``fields``) to disk, flushed; on reaching a new phase, stop at its failpoint if one is set."""
        reached = self.data.get("phase") != phase
        now = procfs.utc_now()
        self.data.update(fields)
        self.data["phase"] = phase
        self.data["updated_at"] = now
        self.data["history"].append({"phase": phase, "at": now})
        store.write_file(self.dir_fd, journal_name(self.name), json.dumps(self.data, sort_keys=True, indent=1).encode("utf-8"),
                         replace=True)
        if reached:
            failpoint(self.name, phase)

    @contextlib.contextmanager
    def exclusive(self, wait: bool = True) -> t.Iterator[bool]:
        """The decision lock, held while a decision is checked and written: the worker's commit and the lease keeper's
        kill exclude each other, so neither acts on a journal the other has just changed. Each holder opens the lock
        file itself (a lock on an inherited descriptor would be shared with the process it came from). Yields whether
        the lock is held (always, when ``wait``)."""
        fd = os.open(".%s.journal.lock" % self.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE,
                     dir_fd=self.dir_fd)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def reload(self) -> Journal:
        """The journal as it is on disk now (this copy when there is none)."""
        return Journal.load(self.dir_fd, self.directory, self.name) or self

    def progress(self, **fields: t.Any) -> None:
        """Bytes and rate as they change: written often, so not flushed (it is no part of the recovery)."""
        fields["at"] = procfs.utc_now()
        store.write_file(self.dir_fd, progress_name(self.name), json.dumps(fields, sort_keys=True).encode("utf-8"),
                         replace=True, durable=False)


def require_name(name: str) -> str:
    """A migration's name, which names its journal and checkpoint directory on both hosts: never a path."""
    if not NAME_RE.match(name):
        raise CriuError("name %r must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit: it names the "
                        "migration's journal and checkpoint directory on both hosts." % name)
    return name


def read_progress(dir_fd: int, directory: str, name: str) -> t.Dict[str, t.Any]:
    try:
        raw = store.read_small_file(dir_fd, progress_name(name), os.path.join(directory, progress_name(name)))
        return json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        return {}


# --- the driver lock: held by the driver for as long as it lives --------------------------------------

class DriverLock:
    """A flock on ``.NAME.driver.lock``. The module takes it, the driver it forks inherits it, and the kernel
    releases it when the last of them dies: "is a driver alive?" is "is the lock held?"."""

    def __init__(self, dir_fd: int, name: str, create: bool = True, file: t.Optional[str] = None) -> None:
        self.dir_fd = dir_fd
        self.file = file or ".%s.driver.lock" % name
        self.create = create
        self.fd = -1

    @classmethod
    def for_workload(cls, dir_fd: int, key: str) -> DriverLock:
        """The workload's own claim: one migration of a process or container at a time on this host, whatever its name
        (two controllers, two names: both preflights passed before either froze it, and both drivers moved it)."""
        return cls(dir_fd, "", file=workload_claim(key))

    def try_acquire(self) -> bool:
        """Take the lock; without ``create`` (a look that writes nothing) a missing lock file is a free lock: every
        driver creates it before it starts."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if self.create else 0)
        try:
            self.fd = os.open(self.file, flags, store.FILE_MODE, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = -1
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            return False
        return True

    def held_elsewhere(self) -> bool:
        probe = DriverLock(self.dir_fd, "", create=False, file=self.file)
        if probe.try_acquire():
            probe.release()
            return False
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def workload_claim(key: str) -> str:
    return ".workload.%s.lock" % key
