# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checkpoint directory on disk: hardening, locking, staging and atomic publish.

Every path here is opened without following symlinks, so a link swapped in between a
check and a use is refused instead of followed. A reader never sees half a checkpoint:
dumps land in a staging directory beside DEST and are renamed into place when complete.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import tempfile
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

DIR_MODE = 0o700
FILE_MODE = 0o600
IMAGES = "images"
METADATA = "metadata.json"
SIGNATURE = "checkpoint.hmac"
RESTORED = "restored.json"
DUMP_LOG = "dump.log"
RESTORE_LOG = "restore.log"
MAX_SMALL_FILE = 16 * 1024 * 1024
_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parent_of(dest: str) -> t.Tuple[str, str]:
    dest = os.path.normpath(dest)
    parent, name = os.path.split(dest)
    if not os.path.isabs(dest) or not name:
        raise CriuError("Checkpoint path %s must be an absolute path to a directory, not /. Give e.g. /var/lib/criu/NAME." % dest, path=dest)
    return parent, name


def check_parent(dest: str) -> str:
    """Refuse a DEST whose parent lets other users swap entries in it (writable without sticky bit)."""
    parent = _parent_of(dest)[0]
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise CriuError("Parent directory %s of %s cannot be used: %s. Create it first (mode 0700 or 0755)." % (parent, dest, exc.strerror), path=dest) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise CriuError("Parent %s of %s is not a directory. Choose a path under an existing directory." % (parent, dest), path=dest)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise CriuError(
            "Parent directory %s of %s is writable by group/others without the sticky bit (mode %04o): another user could "
            "replace the checkpoint. Use a directory only root can write (e.g. /var/lib/criu) or chmod go-w %s."
            % (parent, dest, stat.S_IMODE(st.st_mode), parent),
            path=dest,
        )
    return parent


def inspect_dir(path: str, label: str = "Checkpoint directory") -> t.Optional[os.stat_result]:
    """lstat a checkpoint directory: None if absent; refuse a symlink, a non-directory, or another owner."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CriuError("%s %s cannot be inspected: %s." % (label, path, exc.strerror), path=path) from exc
    if stat.S_ISLNK(st.st_mode):
        raise CriuError("%s %s is a symlink; refusing to follow it. Remove the link or give the real directory." % (label, path), path=path)
    if not stat.S_ISDIR(st.st_mode):
        raise CriuError("%s %s exists and is not a directory. Remove it or choose another path." % (label, path), path=path)
    if st.st_uid != os.geteuid():
        raise CriuError(
            "%s %s is owned by uid %d, not by uid %d who runs this module; refusing to use it. Choose another path or fix its owner."
            % (label, path, st.st_uid, os.geteuid()),
            path=path,
        )
    return st


def enclosing_checkpoint(dest: str) -> t.Optional[str]:
    """The checkpoint directory that ``dest`` would nest inside, if any (a dest inside images/ would corrupt it)."""
    current = os.path.dirname(os.path.abspath(dest))
    while current != "/":
        if os.path.isfile(os.path.join(current, METADATA)) and os.path.isdir(os.path.join(current, IMAGES)):
            return current
        current = os.path.dirname(current)
    return None


class DestLock:
    """An exclusive flock that serialises every run touching one DEST.

    The lock file sits beside DEST and is removed on release; after taking the lock we
    check that the file is still the one on disk, so a waiter never holds a stale inode.
    """

    def __init__(self, dest: str, timeout: float) -> None:
        parent, name = _parent_of(dest)
        self.path = os.path.join(parent, ".%s.lock" % name)
        self.timeout = timeout
        self.fd = -1

    def __enter__(self) -> "DestLock":
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            except OSError as exc:
                raise CriuError(
                    "Cannot open the lock file %s: %s. Remove it if it is a symlink or not a regular file; "
                    "nucleus.criu creates it itself." % (self.path, exc.strerror),
                    path=self.path,
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise CriuError(
                        "Another nucleus.criu run holds the lock %s for more than %ss. Wait for it to finish or raise timeout." % (self.path, self.timeout),
                        path=self.path,
                    ) from exc
                time.sleep(0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc_info: t.Any) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def make_staging(dest: str) -> str:
    """A private directory beside DEST (same filesystem, so publishing is one rename), with images/ in it."""
    parent, name = _parent_of(dest)
    staging = tempfile.mkdtemp(prefix=".%s.staging-" % name, dir=parent)
    os.chmod(staging, DIR_MODE)
    os.mkdir(os.path.join(staging, IMAGES), DIR_MODE)
    return staging


def fsync_dir_entries(directory: str) -> None:
    """Flush the regular files directly in ``directory``, then the directory itself (subdirectories are
    flushed by their own call), so a published checkpoint survives a crash."""
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(directory)


def fsync_dir(path: str) -> None:
    fd = os.open(path, _NOFOLLOW_DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staging: str, dest: str) -> None:
    """Rename a complete staging directory to DEST; an existing DEST (force) is swapped out first, then removed."""
    parent, name = _parent_of(dest)
    old = None
    if os.path.lexists(dest):
        old = tempfile.mkdtemp(prefix=".%s.old-" % name, dir=parent)
        os.rename(dest, os.path.join(old, name))
    os.rename(staging, dest)
    fsync_dir(parent)
    if old:
        shutil.rmtree(old)


def remove_tree(path: str) -> None:
    """Remove a directory we created; never follows symlinks (shutil.rmtree does not)."""
    if os.path.lexists(path):
        shutil.rmtree(path)


def write_file(directory: str, name: str, data: bytes, replace: bool = False) -> None:
    """Write ``directory/name`` with mode 0600, never through a symlink; ``replace`` swaps it in atomically."""
    dir_fd = os.open(directory, _NOFOLLOW_DIR)
    try:
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
            os.fsync(handle.fileno())
        if replace:
            os.rename(target, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_small_file(directory: str, name: str) -> t.Optional[bytes]:
    """Read a metadata-sized regular file without following symlinks; None when absent.

    Raises CriuError for a symlink, a non-regular file or an oversized file.
    """
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
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
