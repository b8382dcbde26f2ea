# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a checkpoint holds, read with CRIU's own image parser (pycriu).

pycriu ships with criu (the criu role puts it in its private tree, with the host's python3-protobuf); it
is imported only from the directory beside the validated criu binary, after that directory passed the
chain rule. Where it (or protobuf) is missing, results say so and carry on without these figures.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_SOCKETS = ("INETSK", "UNIXSK", "PACKETSK", "NETLINKSK")
_loaded: t.Dict[str, t.Any] = {}


def _package_dir(criu_path: str) -> str:
    """pycriu's dist-packages beside criu: /usr/sbin/criu -> /usr/lib/python3/dist-packages."""
    return os.path.join(os.path.dirname(os.path.dirname(criu_path)), "lib", "python3", "dist-packages")


def _check_tree(dir_fd: int, real: str) -> None:
    """Every entry below ``dir_fd`` (cached bytecode too: Python runs a matching .pyc instead of the source)
    only root can change, and no symlink anywhere: a root-owned link may still point at a file others can write."""
    for name in safepath.listdir(dir_fd):
        path = os.path.join(real, name)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise CriuError("pycriu file %s is a symlink: reinstall pycriu (the nucleus.criu.criu role) or: %s"
                            % (path, store.CHAIN_REMEDY), path=path)
        safepath.require_trusted(st, path, "pycriu file", store.CHAIN_REMEDY)
        if stat.S_ISDIR(st.st_mode):
            sub_fd = os.open(name, safepath.DIR_FLAGS, dir_fd=dir_fd)
            try:
                _check_tree(sub_fd, path)
            finally:
                os.close(sub_fd)


def _check_package(directory: str) -> None:
    """The package directory, every directory above it and everything in the package only root can change."""
    fd, real = safepath.open_dir(os.path.join(directory, "pycriu"), "pycriu directory", store.CHAIN_REMEDY)
    try:
        _check_tree(fd, real)
    finally:
        os.close(fd)


def load(criu_path: str) -> t.Tuple[t.Any, str]:
    """(pycriu.images or None, why not)."""
    if "images" in _loaded:
        return _loaded["images"], ""
    directory = _package_dir(criu_path)
    not_installed = "pycriu is not installed beside %s (the nucleus.criu.criu role installs it)" % criu_path
    if not os.path.isdir(os.path.join(directory, "pycriu", "images")):
        return None, not_installed  # only the message depends on this look by path; the check below is by fd
    try:
        _check_package(directory)
    except FileNotFoundError:
        return None, not_installed
    except CriuError as exc:
        return None, "pycriu cannot be trusted: %s" % exc.msg
    sys.path.insert(0, directory)
    try:
        _loaded["images"] = importlib.import_module("pycriu.images")
    except ImportError as exc:
        return None, "pycriu cannot be imported by %s (%s): install python3-protobuf" % (sys.executable, exc)
    finally:
        sys.path.remove(directory)
    return _loaded["images"], ""


class Budget:
    """What parsing one checkpoint may cost. pycriu takes tens of times an image's size in memory and seconds per MiB,
    and a checkpoint whose manifest nobody signed may hold anything: the images parsed here (process tree, cores,
    page maps, files) are kilobytes in a real checkpoint, so a few MiB in all and the task's timeout bound them."""

    MAX_BYTES = 8 << 20

    def __init__(self, timeout: float) -> None:
        self.left = self.MAX_BYTES
        self.deadline = time.monotonic() + timeout

    def take(self, name: str, size: int) -> None:
        if time.monotonic() > self.deadline:
            raise CriuError("the timeout ran out before %s" % name)
        if size > self.left:
            raise CriuError("%s would take the images parsed past %d MiB (real ones are kilobytes): not parsed"
                            % (name, self.MAX_BYTES >> 20))
        self.left -= size


def _load_image(images: t.Any, dir_fd: int, name: str, budget: Budget) -> t.Dict[str, t.Any]:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        budget.take(name, os.fstat(handle.fileno()).st_size)
        return images.load(handle)


def inspect(criu_path: str, checkpoint: store.Checkpoint, timeout: float) -> t.Dict[str, t.Any]:
    """The process tree, each process's memory, and a summary of open files and sockets of a checkpoint, parsed
    within a budget of bytes and time."""
    images, why = load(criu_path)
    if images is None:
        return {"unavailable": why}
    fd = checkpoint.images_fd
    budget = Budget(timeout)
    try:
        tree = _load_image(images, fd, "pstree.img", budget)["entries"]
        processes = []
        for item in tree:
            pid = item["pid"]
            core = _load_image(images, fd, "core-%d.img" % pid, budget)["entries"][0]
            pagemap = _load_image(images, fd, "pagemap-%d.img" % pid, budget)["entries"][1:]
            processes.append({
                "pid": pid, "ppid": item["ppid"], "threads": len(item.get("threads", [])),
                "comm": core.get("tc", {}).get("comm"),
                "memory_bytes": sum(page.get("nr_pages", 0) for page in pagemap) * PAGE_SIZE,
            })
        files: t.Dict[str, int] = {}
        for entry in _load_image(images, fd, "files.img", budget)["entries"]:
            files[entry.get("type", "?")] = files.get(entry.get("type", "?"), 0) + 1
    except Exception as exc:  # pylint: disable=broad-exception-caught
        return {"unavailable": "the images cannot be read: %s" % exc}
    sockets = {kind: count for kind, count in files.items() if kind in _SOCKETS}
    return {"processes": processes, "files": {kind: count for kind, count in files.items() if kind not in _SOCKETS},
            "sockets": sockets, "memory_bytes": sum(p["memory_bytes"] for p in processes)}
