# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read CRIU's own logs: did the action finish, and which errors explain a failure.

CRIU prints harmless ``Error`` lines (e.g. RLIMIT_NOFILE without CAP_SYS_RESOURCE), so
success is judged by the success line, never by the absence of errors.
"""

from __future__ import annotations

import os
import re
import typing as t

SUCCESS_LINES = {
    "dump": "Dumping finished successfully",
    "restore": "Restore finished successfully",
}
_ERROR_RE = re.compile(r"Error \(")
# Seen on every run here, whatever the outcome: no CAP_SYS_RESOURCE, and no iptables tools to save a netns's rules.
_HARMLESS = (
    re.compile(r"rlimit: Can't setup RLIMIT_NOFILE for self"),
    re.compile(r"ip6?tables(-legacy)?-(save|restore)"),
)
_TAIL_BYTES = 512 * 1024
# criu lazy-pages, once per restored process that had lazy memory: pages fetched / pages it needed.
_LAZY_COUNT_RE = re.compile(rb"UFFD transferred pages: \((\d+)/(\d+)\)")

# Known CRIU failures, translated into what the operator should do about them.
_HINTS = (
    (re.compile(r"Can't fork for (\d+): File exists"),
     "PID {0} is already in use on this host and the checkpointed tree needs it back. Wait for the original "
     "process to exit, or checkpoint a workload started in its own PID namespace (unshare --pid --fork), "
     "which restores anywhere."),
    (re.compile(r"Can't bind inet socket .*Address already in use"),
     "A socket in the checkpoint is bound to an address that something on this host holds now (the original still "
     "running, or a container sharing the host's network): stop what holds it, or restore on another host."),
    (re.compile(r"Iptables configuration failed|iptables-restore"),
     "CRIU could not lock the network with iptables. Use network_lock=nftables (the default)."),
    (re.compile(r"Can't dump half of stream unix connection"),
     "The process holds a unix stream socket connected to a process outside the tree; CRIU cannot dump it. "
     "Checkpoint the peer in the same tree, or close the connection first."),
    (re.compile(r"unix.*[Ee]xternal socket|ext-unix-sk"),
     "The process holds a unix socket connected outside the tree: set ext_unix_sk=true if the peer is a datagram socket."),
    # criu's parasite mounts a proc of its own in the task's working directory under a fixed name (proc.crtools) when
    # the task's /proc is not its PID namespace's: two dumps at once of tasks sharing a working directory collide.
    (re.compile(r"[Cc]an't get /proc fd"),
     "criu could not mount a /proc of the workload's PID namespace in its working directory: another dump of a "
     "workload with the same working directory was doing the same at that moment (criu uses one fixed name there, "
     "proc.crtools). Run it again, or give workloads checkpointed at the same time working directories of their own. "
     "If it fails the same way again, a criu killed midway left that directory behind: remove the empty directory "
     "proc.crtools from the working directory of the workload's processes (ls -l /proc/PID/cwd)."),
    (re.compile(r"file locks are hold by dumping tasks|--file-locks"),
     "The process holds file locks (flock, POSIX or OFD locks, leases): set file_locks=true to checkpoint them; their "
     "files must be at the same paths when it is restored."),
    (re.compile(r"Connected TCP socket, consider using --tcp-established"),
     "The process holds an established TCP connection: set tcp_established=true to keep it across the restore, or "
     "tcp_close=true to drop it."),
    (re.compile(r"Connected TCP socket in image"),
     "The checkpoint holds TCP connection state: restore it with tcp_established=true, or with tcp_close=true to have "
     "the connections closed."),
    (re.compile(r"Need to set the --tcp-close option"),
     "The checkpoint was made with tcp_close=true: restore it with tcp_close=true."),
    (re.compile(r"In-flight connection"),
     "A listening socket holds connections that are not yet established (in flight): set skip_in_flight=true to "
     "leave them out (their clients connect again)."),
    (re.compile(r"Can't create link remap for"),
     "The process holds a file that was unlinked (or cannot be reopened by its name): set link_remap=true so it is "
     "linked aside for the restore."),
    (re.compile(r"Can't dump ghost file \S+ of (\d+) size"),
     "The process holds a deleted file of {0} bytes, more than criu keeps in the images by default (1M): set "
     "ghost_limit to at least that size (e.g. ghost_limit=64M)."),
    (re.compile(r"A session leader of \d+\(\d+\) is outside of its pid namespace"),
     "The workload's session leader is outside its PID namespace, which criu cannot dump, not even with shell_job: start "
     "the workload as the leader of a session of its own inside the namespace (unshare --pid --fork setsid CMD)."),
    (re.compile(r"shell-job"),
     "The process belongs to a session or terminal outside the tree: set shell_job=true."),
    (re.compile(r"Can't restore pid namespace|CLONE_NEWPID"),
     "The pid namespace of the checkpoint could not be recreated on this host."),
)


def read_tail(path: str, max_bytes: int = _TAIL_BYTES) -> str:
    """Return the last ``max_bytes`` of a log; a verbose log can be large, and only its end explains a failure."""
    try:
        with open(path, "rb") as handle:
            return tail(handle, max_bytes)
    except OSError:
        return ""


def tail(handle: t.BinaryIO, max_bytes: int = _TAIL_BYTES) -> str:
    """The last ``max_bytes`` of an open log."""
    handle.seek(max(0, os.fstat(handle.fileno()).st_size - max_bytes))
    return handle.read().decode("utf-8", "replace")


def lazy_page_counts(path: str) -> t.List[t.Tuple[int, int]]:
    """Every (fetched, total) line of a lazy-pages log, read line by line: the lines of a tree's first
    processes may lie far from the end of a verbose log."""
    try:
        with open(path, "rb") as handle:
            return [(int(m.group(1)), int(m.group(2))) for m in map(_LAZY_COUNT_RE.search, handle) if m]
    except OSError:
        return []


def succeeded(text: str, action: str) -> bool:
    """True when the log holds CRIU's success line for ``action``."""
    return SUCCESS_LINES[action] in text


def error_lines(text: str, limit: int = 5) -> t.List[str]:
    """The last ``limit`` real ``Error (...)`` lines, harmless ones left out."""
    found = [
        line.strip() for line in text.splitlines()
        if _ERROR_RE.search(line) and not any(h.search(line) for h in _HARMLESS)
    ]
    return found[-limit:] if limit > 0 else []


def hints(lines: t.Iterable[str]) -> t.List[str]:
    """Remedies for the known failures among ``lines``, each given once."""
    found: t.List[str] = []
    for line in lines:
        for pattern, hint in _HINTS:
            match = pattern.search(line)
            if match:
                text = hint.format(*match.groups())
                if text not in found:
                    found.append(text)
    return found
