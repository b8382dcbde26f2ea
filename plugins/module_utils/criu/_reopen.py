# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files a restore reopens, checked on the restoring host before criu runs.

criu restore reopens each of the workload's files (open files, working and root directory, executable, mapped
files) by the path recorded at the dump, as root, following symlinks; it checks a file's size and mode, not an
O_APPEND file's size. Whoever can change a directory on such a path after the dump could swap the file for a
symlink and have root open, for the restored workload, a file it names (say, append lines to /etc/passwd). So
every recorded path that exists here is held to the chain rule before criu runs: every directory from / owned by
root (or the caller) and not writable by others (a root-owned sticky directory is fine), the entry itself no
symlink, and in a sticky directory owned by root (or the caller), whose owner alone may swap it. A path missing
here is criu's to report. The paths come from files.img of the verified images.
"""

from __future__ import annotations

import os
import stat
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _protowire as protowire
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

FILES_IMAGE = "files.img"
MAGICS = (1414939417, 1445998904)  # IMG_COMMON, FILES (criu/include/magic.h)
FILE_ENTRY_REG = 3  # file_entry.reg: a reg_file_entry (images/fdinfo.proto)
REG_NAME = 6  # reg_file_entry.name (images/regfile.proto)
MAX_BYTES = 64 << 20  # about 100 bytes a file: far more files than a process tree can hold open
REMEDY = ("criu restore reopens the workload's files by these paths as root: keep them in directories only root can "
          "change, or restore on a host where they are.")


def recorded_paths(images_fd: int) -> t.List[str]:
    """Every path of a regular file or directory in files.img (none when there is no files.img: a container's
    checkpoint holds Podman's export instead), in the order recorded, each once."""
    try:
        fd = os.open(FILES_IMAGE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=images_fd)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CriuError("%s is larger than %d MiB: refusing to read it." % (FILES_IMAGE, MAX_BYTES >> 20))
    paths: t.Dict[str, None] = {}
    try:
        for entry in protowire.entries(data, MAGICS, "files"):
            for number, reg in protowire.fields(entry):
                if number == FILE_ENTRY_REG and isinstance(reg, bytes):
                    paths.update((name.decode("utf-8", "surrogateescape"), None)
                                 for field, name in protowire.fields(reg) if field == REG_NAME and isinstance(name, bytes))
    except ValueError as exc:
        raise CriuError("%s cannot be read: %s." % (FILES_IMAGE, exc)) from exc
    return list(paths)


def path_problem(path: str, euid: int) -> t.Optional[str]:
    """Why criu must not reopen ``path`` here as root, or None."""
    if not path.startswith("/") or path == "/":
        return None
    try:
        where = safepath.walk(path, REMEDY, follow_final=False, euid=euid)
    except safepath.MissingDirectory:
        return None
    except CriuError as exc:
        return exc.msg
    try:
        st = os.stat(where.name, dir_fd=where.dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return ("%s is a symlink now, and criu would follow it as root: the workload had a file there when it was "
                    "checkpointed. %s" % (path, REMEDY))
        parent = os.fstat(where.dir_fd)
        if parent.st_mode & 0o022 and st.st_uid not in (0, euid):
            return ("%s is owned by uid %d in %s, a directory others can write: its owner could swap it for a symlink "
                    "before criu opens it as root. %s" % (path, st.st_uid, where.real_dir, REMEDY))
    except FileNotFoundError:
        return None
    finally:
        os.close(where.dir_fd)
    return None


def problems(images_fd: int) -> t.List[str]:
    """Why this host cannot let criu reopen the workload's files (see the module's docstring); empty when it can."""
    euid = os.geteuid()
    found = [path_problem(path, euid) for path in recorded_paths(images_fd)]
    return [problem for problem in found if problem]
