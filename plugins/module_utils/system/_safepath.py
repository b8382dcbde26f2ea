# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One way to reach a path safely: every component checked on the way, then used through an fd.

The rule, in the spirit of OpenSSH's StrictModes, applies to every directory from / down, every
symlink followed and the final entry: it must be owned by root or the caller, and not writable by
group or others (a root-owned directory with the sticky bit, such as /tmp, is fine: nobody else can
rename what it holds). An entry that passes cannot be changed by anyone but root or the caller, so
nothing checked here can be swapped before it is used; and what is used is the fd that was checked.
"""

from __future__ import annotations

import errno
import os
import stat
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Directories this collection creates: only root (the caller) may enter them.
DIR_MODE = 0o700
MAX_SYMLINKS = 40
# Names we derive from a checkpoint's name (".NAME.staging-XXXXXXXX", ".NAME.lock") must fit NAME_MAX (255).
MAX_NAME = 200


def entry_problem(st: os.stat_result, euid: int) -> t.Optional[str]:
    """Why a user other than root or ``euid`` could replace or rewrite this entry, or None."""
    if st.st_uid not in (0, euid):
        return "is owned by uid %d, not root or uid %d" % (st.st_uid, euid)
    if stat.S_ISLNK(st.st_mode):
        return None
    sticky_root_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if st.st_mode & 0o022 and not sticky_root_dir:
        return "is writable by group/others (mode %04o)" % stat.S_IMODE(st.st_mode)
    return None


def require_trusted(st: os.stat_result, path: str, what: str, remedy: str, euid: t.Optional[int] = None) -> None:
    """Refuse an entry that another user could change, naming the command that fixes it."""
    euid = os.geteuid() if euid is None else euid
    problem = entry_problem(st, euid)
    if problem:
        fix = "chown root %s" % path if st.st_uid not in (0, euid) else "chmod go-w %s" % path
        raise CriuError("%s %s %s: another user could replace or change it. Fix it (%s) or: %s" % (what, path, problem, fix, remedy),
                        path=path)


class MissingDirectory(CriuError):
    """A directory on the way to a path does not exist (and the walk was not asked to make it)."""

    def __init__(self, path: str) -> None:
        super().__init__("%s does not exist. Create it (owned by root, mode 0700 or 0755) or give a path under an existing "
                         "directory." % path, path=path)
        self.path = path


class Walk(t.NamedTuple):
    """Where a walk ended: an fd of the last directory reached, its real path, and the final name in it."""
    dir_fd: int
    real_dir: str
    name: str


def _split(path: str) -> t.List[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def _reopen(real: t.List[str], remedy: str, euid: int) -> int:
    fd = os.open("/", DIR_FLAGS)
    for index, name in enumerate(real):
        fd = _descend(fd, name, "/" + "/".join(real[:index + 1]), remedy, euid)
    return fd


def _descend(dir_fd: int, name: str, path: str, remedy: str, euid: int) -> int:
    """Open the directory ``name`` under ``dir_fd`` (never through a symlink), check it; ``dir_fd`` is closed
    whatever happens."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise CriuError("Directory %s cannot be opened: %s. %s" % (path, exc.strerror, remedy), path=path) from exc
    finally:
        os.close(dir_fd)
    try:
        require_trusted(os.fstat(fd), path, "Directory", remedy, euid)
    except CriuError:
        os.close(fd)
        raise
    return fd


def _make_dir(dir_fd: int, name: str) -> None:
    """Create ``name`` under the checked directory ``dir_fd`` (mkdirat: nothing between the check and here can
    redirect it); one made meanwhile by someone else is judged like any other directory by the walk."""
    try:
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        pass


def walk(path: str, remedy: str, follow_final: bool = True, euid: t.Optional[int] = None, make_missing: bool = False) -> Walk:
    """Walk to the parent of ``path``'s final entry from /, checking every directory and following only
    symlinks that root or the caller own (each hop resolved here, never by the kernel). With
    ``follow_final``, a symlink as the final entry is followed too. A missing directory on the way raises
    MissingDirectory, or with ``make_missing`` is created (mode 0700) under the fd of its checked parent.
    The caller owns ``dir_fd``."""
    euid = os.geteuid() if euid is None else euid
    if not os.path.isabs(path):
        raise CriuError("%s is not an absolute path. Give the full path." % path, path=path)
    pending = _split(path)
    if not pending:
        raise CriuError("%s names the root directory, not an entry in it. Give the full path of a file or directory." % path, path=path)
    real: t.List[str] = []
    fd = os.open("/", DIR_FLAGS)
    hops = 0
    try:
        require_trusted(os.fstat(fd), "/", "Directory", remedy, euid)
        while True:
            name = pending.pop(0)
            if name == "..":
                real = real[:-1]
                os.close(fd)
                fd = -1
                fd = _reopen(real, remedy, euid)
                continue
            here = "/" + "/".join(real + [name])
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not pending:
                    return Walk(fd, "/" + "/".join(real), name)
                if not make_missing:
                    raise MissingDirectory(here) from None
                _make_dir(fd, name)
                pending.insert(0, name)
                continue
            except OSError as exc:
                raise CriuError("%s cannot be inspected: %s. %s" % (here, exc.strerror, remedy), path=here) from exc
            if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
                require_trusted(st, here, "Symlink", remedy, euid)
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise CriuError("%s: too many levels of symlinks. %s" % (path, remedy), path=path)
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    real = []
                    os.close(fd)
                    fd = -1
                    fd = _reopen(real, remedy, euid)
                pending = _split(target) + pending
                continue
            if not pending:
                return Walk(fd, "/" + "/".join(real), name)
            if not stat.S_ISDIR(st.st_mode):
                raise CriuError("%s is not a directory. %s" % (here, remedy), path=here)
            parent, fd = fd, -1
            fd = _descend(parent, name, here, remedy, euid)
            real.append(name)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def reopen_dir(dir_fd: int) -> int:
    """A new, independent fd of the directory ``dir_fd`` names. Listing a directory moves its fd's offset, which
    dup()ed fds share: two threads listing through the same description would see each other's half listings."""
    return os.open(".", DIR_FLAGS, dir_fd=dir_fd)


def listdir(dir_fd: int) -> t.List[str]:
    """The names in the directory ``dir_fd``, safe to call from several threads at once."""
    fd = reopen_dir(dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def open_dir(path: str, what: str, remedy: str, euid: t.Optional[int] = None, make_missing: bool = False) -> t.Tuple[int, str]:
    """An fd of the directory ``path`` (walked and checked) and its real path; refuses anything else.
    A missing directory raises FileNotFoundError (its missing parent, MissingDirectory), so callers can decide
    what absence means; with ``make_missing`` it is created with its missing parents (mode 0700)."""
    euid = os.geteuid() if euid is None else euid
    where = walk(path, remedy, euid=euid, make_missing=make_missing)
    real = os.path.join(where.real_dir, where.name)
    try:
        if make_missing:
            _make_dir(where.dir_fd, where.name)
        fd = os.open(where.name, DIR_FLAGS, dir_fd=where.dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        kind = "is a symlink" if exc.errno == errno.ELOOP else "is not a directory" if exc.errno == errno.ENOTDIR else exc.strerror
        raise CriuError("%s %s %s. %s" % (what, real, kind, remedy), path=real) from exc
    finally:
        os.close(where.dir_fd)
    try:
        require_trusted(os.fstat(fd), real, what, remedy, euid)
    except CriuError:
        os.close(fd)
        raise
    return fd, real


def trusted_program(paths: t.Sequence[str], what: str, remedy: str) -> t.Optional[str]:
    """The first of ``paths`` that exists, resolved, checked trusted by fd (it runs as root); None when none exists.
    Raises when one exists but is not trusted."""
    for path in paths:
        try:
            fd, real = open_file(path, what, remedy)
        except (FileNotFoundError, MissingDirectory):
            continue
        try:
            require_trusted(os.fstat(fd), real, what, remedy)
        finally:
            os.close(fd)
        return real
    return None


def open_file(path: str, what: str, remedy: str, flags: int = os.O_RDONLY, euid: t.Optional[int] = None) -> t.Tuple[int, str]:
    """An fd of the regular file ``path`` (every directory on the way checked, symlinks followed only
    when trusted) and its real path. The file's own owner and mode are for the caller to judge.
    A missing file raises FileNotFoundError, so callers can decide what absence means."""
    where = walk(path, remedy, euid=euid)
    real = os.path.join(where.real_dir, where.name)
    try:
        fd = os.open(where.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=where.dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise
        raise CriuError("Cannot open %s %s: %s. %s" % (what, real, exc.strerror, remedy), path=real) from exc
    finally:
        os.close(where.dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CriuError("%s %s is not a regular file. %s" % (what, real, remedy), path=real)
    return fd, real


def check_name(name: str, path: str) -> None:
    """A checkpoint's directory name must leave room for the names derived from it."""
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME:
        raise CriuError("The name of %s is %d bytes long; nucleus.criu accepts at most %d (it derives the names of its lock "
                        "and staging directories from it). Choose a shorter name." % (path, size, MAX_NAME), path=path)
