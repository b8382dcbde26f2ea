# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What criu leaves of a TCP dump when the tree was not left running, undone for a tree that runs on after all.

A dump with ``--leave-stopped`` (every dump here that may end its tree) keeps the dumped TCP connections as the
restore needs them: each socket in repair mode, and the network locked (``--network-lock nftables``: a table
``inet CRIU-<run id>`` in the tree's network namespace dropping their packets, or every packet when the tree has a
namespace of its own). criu undoes both only for a tree it leaves running. A tree resumed instead (a rolled-back
migration) would find its connections dead: each socket is taken out of repair mode (through a copy of its fd,
pidfd_getfd) and the table deleted, as criu's own unlock does, before it runs.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft")
NSENTER_PATHS = ("/usr/bin/nsenter", "/bin/nsenter")
RUN_ID_LINE = "CRIU run id = "
REMEDY = "it runs as root: keep it and its directories root's (the criu role installs nftables)."
SYS_PIDFD_GETFD = 438  # the same number on every architecture (Linux 5.6)
TCP_REPAIR = 19
TCP_REPAIR_OFF = 0
# criu names the table in a 32-byte buffer ("inet CRIU-%s"): only the run id's first 21 characters make it.
TABLE_RUN_ID_CHARS = 21


def run_id(log_path: str) -> t.Optional[str]:
    """The run id criu's log opens with: it names the lock table."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            first = log.readline()
    except OSError:
        return None
    found = first.split(RUN_ID_LINE, 1)[1].strip() if RUN_ID_LINE in first else ""
    return found if found and all(ch.isalnum() or ch == "-" for ch in found) else None


def _trusted(paths: t.Sequence[str], what: str) -> str:
    real = safepath.trusted_program(paths, what, REMEDY)
    if real is not None:
        return real
    raise CriuError("No %s on this host (looked at %s): install nftables." % (what, ", ".join(paths)))


def _socket_fds(pid: int) -> t.List[int]:
    found = []
    for entry in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, entry)).startswith("socket:["):
                found.append(int(entry))
        except OSError:
            continue
    return found


def repair_off(pid: int) -> int:
    """Take every TCP socket of ``pid`` that is in repair mode out of it; how many."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    count = 0
    try:
        for target_fd in _socket_fds(pid):
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, target_fd, 0)
            if fd < 0:
                continue  # closed meanwhile
            with socket.socket(fileno=fd) as sock:  # our copy: closing it leaves the tree's own fd as it is
                if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM and \
                        sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR):
                    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF)
                    count += 1
    finally:
        os.close(pidfd)
    return count


def lock_table(criu_run_id: str) -> str:
    """The nftables table (family inet) of criu's network lock in the run ``criu_run_id``."""
    return "CRIU-%s" % criu_run_id[:TABLE_RUN_ID_CHARS]


def release(tree: t.Sequence[int], criu_run_id: t.Optional[str], timeout: float) -> None:
    """Give the stopped ``tree`` its TCP connections back (see the module's docstring); gone already is fine. Raises
    naming what stays locked."""
    for pid in tree:
        repair_off(pid)
    if not criu_run_id or not tree:
        return
    table = lock_table(criu_run_id)
    argv = [_trusted(NFT_PATHS, "nft"), "delete", "table", "inet", table]
    if os.stat("/proc/%d/ns/net" % tree[0]).st_ino != os.stat("/proc/self/ns/net").st_ino:
        argv = [_trusted(NSENTER_PATHS, "nsenter"), "--target", str(tree[0]), "--net", "--"] + argv
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise CriuError("nft did not delete criu's network lock table %s within %ss." % (table, timeout)) from None
    if proc.returncode != 0 and "No such file or directory" not in proc.stderr:
        raise CriuError("criu's network lock (nftables table inet %s) could not be removed, so pid %d's connections stay "
                        "blocked: %s. Remove it by hand (nft delete table inet %s, in its network namespace)."
                        % (table, tree[0], proc.stderr.strip()[-300:], table))
