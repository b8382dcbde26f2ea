# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checkpoint directory on disk: the directory chain rule, locking, staging and atomic publish.

A checkpoint's parent is reached through _safepath (every directory from / checked, then held by
fd), and everything below it is opened relative to fds without following symlinks: nothing another
user could change is used after it was checked. A reader never sees half a checkpoint: dumps land in
a staging directory beside DEST and are renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import tempfile
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

DIR_MODE = safepath.DIR_MODE
FILE_MODE = 0o600
IMAGES = "images"
METADATA = "metadata.json"
SIGNATURE = "checkpoint.hmac"
RESTORED = "restored.json"
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
DUMP_STATS = "stats-dump"
RESTORE_STATS = "stats-restore"
# What a checkpoint directory holds; anything else at its top level is reported by verification, never opened.
KNOWN_ENTRIES = (IMAGES, METADATA, SIGNATURE, RESTORED, DUMP_LOG, RESTORE_LOG, DUMP_STATS, RESTORE_STATS)
MAX_SMALL_FILE = 16 * 1024 * 1024
CHAIN_REMEDY = ("Keep checkpoints under directories that only root (or the user running the module) can change, "
                "e.g. /var/lib/criu owned by root with mode 0755 or 0700.")
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Location(t.NamedTuple):
    """Where a checkpoint directory lives: its parent held by fd (the parent's whole chain checked) and its name."""

    parent_fd: int
    parent: str
    name: str

    @property
    def path(self) -> str:
        return os.path.join(self.parent, self.name)


@contextlib.contextmanager
def location(path: str, make_parents: bool = False) -> t.Iterator[Location]:
    """The checked, pinned parent of the checkpoint directory ``path`` (which itself may not exist yet); with
    ``make_parents``, missing parents are created (mode 0700), else one raises safepath.MissingDirectory."""
    path = os.path.normpath(path)
    name = os.path.basename(path)
    if not os.path.isabs(path) or not name:
        raise CriuError("Checkpoint path %s must be an absolute path to a directory, not /. Give e.g. /var/lib/criu/NAME." % path, path=path)
    safepath.check_name(name, path)
    where = safepath.walk(path, CHAIN_REMEDY, follow_final=False, make_missing=make_parents)
    try:
        require_unshared(where.dir_fd, where.real_dir, "Checkpoint parent")
        yield Location(where.dir_fd, where.real_dir, where.name)
    finally:
        os.close(where.dir_fd)


def require_unshared(dir_fd: int, path: str, what: str) -> None:
    """The directory that holds our files (a checkpoint's parent, the migration directory) must be writable by its owner
    alone. The chain rule accepts a root-owned sticky directory above them, but in one that holds them another user
    could create the names we use (a lock, a log, a journal) first: squat them, or plant what we would read back."""
    mode = stat.S_IMODE(os.fstat(dir_fd).st_mode)
    if mode & 0o022:
        raise CriuError("%s %s is a directory other users can write (mode %04o): they could create the files nucleus.criu "
                        "keeps there (locks, logs, journals) before it does. Use a directory that only root writes, e.g. "
                        "/var/lib/criu/NAME for a checkpoint (missing parents are made for you)." % (what, path, mode),
                        path=path)


def _lstat(dir_fd: int, name: str) -> t.Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_subdir(dir_fd: int, name: str, path: str, label: str) -> t.Optional[int]:
    """An fd of the directory ``name`` under ``dir_fd``, None when absent; refuses a symlink, a non-directory and
    anything another user could change."""
    st = _lstat(dir_fd, name)
    if st is None:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise CriuError("%s %s is a symlink; refusing to follow it. Remove the link or give the real directory." % (label, path), path=path)
    if not stat.S_ISDIR(st.st_mode):
        raise CriuError("%s %s exists and is not a directory. Remove it or choose another path." % (label, path), path=path)
    fd = os.open(name, safepath.DIR_FLAGS, dir_fd=dir_fd)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise CriuError("%s %s changed while it was being opened. Make sure nothing else writes there." % (label, path), path=path)
        safepath.require_trusted(opened, path, label, CHAIN_REMEDY)
    except CriuError:
        os.close(fd)
        raise
    return fd


class Checkpoint:
    """A checkpoint directory opened for reading: the directory and its images/ held by fd (-1 when absent)."""

    def __init__(self, fd: int, images_fd: int, path: str) -> None:
        self.fd = fd
        self.images_fd = images_fd
        self.path = path

    @classmethod
    def open(cls, loc: Location) -> t.Optional[Checkpoint]:
        """The checkpoint at ``loc``, None when nothing is there."""
        fd = open_subdir(loc.parent_fd, loc.name, loc.path, "Checkpoint directory")
        if fd is None:
            return None
        try:
            images_fd = open_subdir(fd, IMAGES, os.path.join(loc.path, IMAGES), "Images directory")
        except CriuError:
            os.close(fd)
            raise
        return cls(fd, -1 if images_fd is None else images_fd, loc.path)

    def entries(self) -> t.List[str]:
        return sorted(safepath.listdir(self.fd))

    def unexpected_entries(self) -> t.List[str]:
        """Top-level entries that are no part of a checkpoint, or not what their name promises (a symlink planted
        as a log): reported, never opened or followed."""
        found = []
        for name in self.entries():
            st = _lstat(self.fd, name)
            if name not in KNOWN_ENTRIES:
                found.append(name)
            elif st is not None and name != IMAGES and not stat.S_ISREG(st.st_mode):
                found.append("%s (not a regular file)" % name)
        return found

    def read(self, name: str) -> t.Optional[bytes]:
        return read_small_file(self.fd, name, os.path.join(self.path, name))

    def close(self) -> None:
        for fd in (self.images_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.images_fd = -1

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


def open_checkpoint(loc: Location) -> Checkpoint:
    """The checkpoint at ``loc``, or a refusal saying that nothing is there."""
    opened = Checkpoint.open(loc)
    if opened is None:
        raise CriuError("No checkpoint at %s: the directory does not exist. Check the path." % loc.path, path=loc.path)
    return opened


def replace_problem(loc: Location, empty_ok: bool = True) -> t.Optional[str]:
    """Why ``force`` may not replace what is at ``loc`` (None: nothing there, an empty directory unless not
    ``empty_ok``, or a checkpoint directory this collection made, owned by root or the caller)."""
    st = _lstat(loc.parent_fd, loc.name)
    if st is None:
        return None
    try:
        opened = Checkpoint.open(loc)
    except CriuError as exc:
        return exc.msg
    if opened is None:
        return None
    with opened:
        entries = opened.entries()
        if not entries:
            return None if empty_ok else ("%s is an empty directory, not a checkpoint made by nucleus.criu: "
                                          "remove it yourself (rmdir %s) or choose another dest." % (loc.path, loc.path))
        try:
            raw = opened.read(METADATA)
            document = json.loads(raw.decode("utf-8")) if raw else None
        except (CriuError, ValueError):
            document = None
    if not isinstance(document, dict) or not isinstance(document.get("schema_version"), int):
        return ("%s is not a checkpoint directory made by nucleus.criu (it holds no readable metadata.json); force replaces "
                "only those. Move it away yourself or choose another dest." % loc.path)
    return None


class Lock:
    """An exclusive flock that serialises every run touching one checkpoint directory.

    The lock file ``.NAME.lock`` sits beside it in the checked parent and is removed on release; after
    taking the lock we check that the file is still the one on disk, so a waiter never holds a stale inode.
    """

    def __init__(self, loc: Location, timeout: float) -> None:
        self.loc = loc
        self.name = ".%s.lock" % loc.name
        self.path = os.path.join(loc.parent, self.name)
        self.timeout = timeout
        self.fd = -1

    def _open(self) -> int:
        try:
            fd = os.open(self.name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=self.loc.parent_fd)
        except OSError as exc:
            raise CriuError("Cannot open the lock file %s: %s. Remove it if it is a symlink or not a regular file; "
                            "nucleus.criu creates it itself." % (self.path, exc.strerror), path=self.path) from exc
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            os.close(fd)
            raise CriuError("The lock file %s is owned by uid %d, not by uid %d who runs this module: another user made it. "
                            "Remove it." % (self.path, owner, os.geteuid()), path=self.path)
        return fd

    def __enter__(self) -> Lock:
        deadline = time.monotonic() + self.timeout
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise CriuError("Another nucleus.criu run holds the lock %s for more than %ss. Wait for it to finish or raise timeout."
                                    % (self.path, self.timeout), path=self.path) from exc
                time.sleep(0.05)
                continue
            on_disk = _lstat(self.loc.parent_fd, self.name)
            if on_disk is not None and on_disk.st_ino == os.fstat(fd).st_ino:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc_info: t.Any) -> None:
        try:
            os.unlink(self.name, dir_fd=self.loc.parent_fd)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def _scratch_prefixes(loc: Location) -> t.Tuple[str, str]:
    return ".%s.staging-" % loc.name, ".%s.old-" % loc.name


def remove_litter(loc: Location) -> None:
    """Staging and swapped-out directories that a run killed mid-way left beside the checkpoint (call under the lock)."""
    for name in safepath.listdir(loc.parent_fd):
        if name.startswith(_scratch_prefixes(loc)):
            st = _lstat(loc.parent_fd, name)
            if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
                shutil.rmtree(os.path.join(loc.parent, name))


class Staging:
    """A private directory beside the checkpoint (same filesystem, so publishing is one rename), with images/ in
    it; both held by fd, so criu and the hashing read and write exactly these directories."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.name = _scratch_prefixes(loc)[0] + secrets.token_hex(4)
        self.published = False  # once renamed to the checkpoint's name: the point of no return
        os.mkdir(self.name, DIR_MODE, dir_fd=loc.parent_fd)
        self.fd = os.open(self.name, safepath.DIR_FLAGS, dir_fd=loc.parent_fd)
        os.mkdir(IMAGES, DIR_MODE, dir_fd=self.fd)
        self.images_fd = os.open(IMAGES, safepath.DIR_FLAGS, dir_fd=self.fd)

    @property
    def path(self) -> str:
        return os.path.join(self.loc.parent, self.name)

    def close(self) -> None:
        for fd in (self.images_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.images_fd = -1

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def publish(self, durable: bool = True) -> None:
        """Rename the complete staging directory to the checkpoint's name; a checkpoint already there (force) is
        swapped out first, then removed. The parent is flushed (``durable``) so the new name survives a crash."""
        parent_fd = self.loc.parent_fd
        old = None
        st = _lstat(parent_fd, self.loc.name)
        if st is not None and not (stat.S_ISDIR(st.st_mode) and not os.listdir(self.loc.path)):
            old = _scratch_prefixes(self.loc)[1] + secrets.token_hex(4)
            os.rename(self.loc.name, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        os.rename(self.name, self.loc.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        self.published = True
        if durable:
            os.fsync(parent_fd)
        self.close()
        if old:
            shutil.rmtree(os.path.join(self.loc.parent, old))


def remove_tree(path: str) -> None:
    """Remove a directory this collection made, under a checked parent; never follows symlinks."""
    if os.path.lexists(path):
        shutil.rmtree(path)


def fsync_dir_entries(dir_fd: int) -> None:
    """Flush the regular files directly in a directory, then the directory itself (subdirectories are flushed
    by their own call), so a published checkpoint survives a crash."""
    for name in safepath.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    os.fsync(dir_fd)


def write_file(dir_fd: int, name: str, data: bytes, replace: bool = False, durable: bool = True) -> None:
    """Write ``name`` under ``dir_fd`` with mode 0600, never through a symlink, and (``durable``) flushed with its
    directory; ``replace`` swaps it in atomically (a symlink already at ``name`` is replaced itself, not followed)."""
    target = ".%s.tmp" % name if replace else name
    if replace:
        try:
            os.unlink(target, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())
    if replace:
        os.rename(target, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if durable:
        os.fsync(dir_fd)


def read_small_file(dir_fd: int, name: str, path: str) -> t.Optional[bytes]:
    """Read a metadata-sized regular file under ``dir_fd`` without following symlinks; None when absent.

    Raises CriuError for a symlink, a non-regular file or an oversized file.
    """
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CriuError("%s is a symlink; refusing to follow it." % path, path=path) from exc
        raise CriuError("Cannot read %s: %s." % (path, exc.strerror), path=path) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SMALL_FILE:
        os.close(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CriuError("%s is not a regular file." % path, path=path)
        raise CriuError("%s is %d bytes, larger than any file nucleus.criu writes." % (path, st.st_size), path=path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_SMALL_FILE + 1)


def copy_file(src_dir: str, name: str, dest_fd: int) -> bool:
    """Copy ``src_dir/name`` (a file criu wrote in our private work dir) into ``dest_fd`` as ``name``, replacing
    what is there without following it; False when criu wrote no such file."""
    try:
        with open(os.path.join(src_dir, name), "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return False
    write_file(dest_fd, name, data, replace=True, durable=False)  # a log: nothing is decided from it
    return True


def open_or_create_dir(path: str, what: str) -> t.Tuple[int, str]:
    """An fd of directory ``path`` (created 0700 with its missing parents, each under the fd of its checked parent),
    its whole chain checked, writable by its owner alone."""
    return _unshared(safepath.open_dir(path, what, CHAIN_REMEDY, make_missing=True), what)


def open_existing_dir(path: str, what: str) -> t.Optional[t.Tuple[int, str]]:
    """An fd of directory ``path`` and its real path, or None where it (or a parent) does not exist yet: for a look
    that must create nothing (check mode, a preflight)."""
    try:
        opened = safepath.open_dir(path, what, CHAIN_REMEDY)
    except (FileNotFoundError, safepath.MissingDirectory):
        return None
    return _unshared(opened, what)


def _unshared(opened: t.Tuple[int, str], what: str) -> t.Tuple[int, str]:
    try:
        require_unshared(opened[0], opened[1], what)
    except CriuError:
        os.close(opened[0])
        raise
    return opened


def free_bytes(dir_fd: int) -> int:
    st = os.statvfs(dir_fd)
    return st.f_bavail * st.f_frsize


def free_bytes_for(path: str) -> int:
    """Free bytes where ``path`` would be made: on its nearest existing ancestor's filesystem (an estimate, which
    creates nothing)."""
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def private_dir(prefix: str) -> t.Iterator[str]:
    """A fresh directory only the caller can use, removed afterwards: criu's work dir and logs when it reads a
    checkpoint, which must never be written into."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        fd, real = safepath.open_dir(path, "Private work directory", CHAIN_REMEDY)
        os.close(fd)
        yield real
    finally:
        shutil.rmtree(path, ignore_errors=True)


def enclosing_checkpoint(dest: str) -> t.Optional[str]:
    """The checkpoint directory that ``dest`` would nest inside, if any (a dest inside images/ would corrupt it)."""
    current = os.path.dirname(os.path.abspath(dest))
    while current != "/":
        if os.path.isfile(os.path.join(current, METADATA)) and os.path.isdir(os.path.join(current, IMAGES)):
            return current
        current = os.path.dirname(current)
    return None
