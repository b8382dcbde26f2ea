# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can THIS host checkpoint, and can it restore a given checkpoint?"""

from __future__ import annotations

import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
CAP_CHECKPOINT_RESTORE = 40
# Optional kernel features, and what a host without them cannot do.
FEATURES = {
    "mem_dirty_track": "iterative pre-copy (soft-dirty memory tracking)",
    "uffd-noncoop": "post-copy restore (lazy pages)",
    "network_lock_nftables": "locking the network with nftables while dumping TCP connections",
    "timens": "restoring the time namespace",
    "tcp_half_closed": "dumping half-closed TCP connections",
}
# CRIU's page server tees page pipes of up to 4 MiB; below that every page request fails with EPERM.
POSTCOPY_PIPE_SIZE = 4 * 1024 * 1024
PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"
PRIVILEGE_HINT = "Run the task as root (become: true); CRIU needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE plus CAP_SYS_PTRACE."


def effective_caps() -> int:
    for line in open("/proc/self/status").read().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def can_checkpoint() -> t.Tuple[bool, str]:
    """Whether the caller holds what CRIU needs, and if not, why."""
    caps = effective_caps()
    has_ptrace = caps >> CAP_SYS_PTRACE & 1
    has_cr = caps >> CAP_SYS_ADMIN & 1 or caps >> CAP_CHECKPOINT_RESTORE & 1
    if has_ptrace and has_cr:
        return True, ""
    return False, "uid %d lacks the capabilities to checkpoint. %s" % (os.geteuid(), PRIVILEGE_HINT)


def require_privileges() -> None:
    ok, reason = can_checkpoint()
    if not ok:
        raise CriuError(reason)


def criu_facts(criu_path: t.Optional[str], timeout: float = 60) -> t.Dict[str, t.Any]:
    """criu's path (the real one, which runs), version and ``criu check`` verdict; ``usable`` only when all of them are good."""
    facts: t.Dict[str, t.Any] = {"path": None, "version": None, "usable": False, "check": False, "problems": []}
    try:
        runtime = CriuRuntime.load(criu_path)
    except CriuError as exc:
        facts["path"] = exc.details.get("path")
        facts["version"] = exc.details.get("version")
        facts["problems"].append(exc.msg)
        return facts
    facts["path"], facts["version"] = runtime.path, runtime.version_string
    facts["check"], facts["check_output"] = runtime.check(timeout=timeout)
    if not facts["check"]:
        facts["problems"].append("criu check failed on this kernel: %s" % facts["check_output"][-500:])
    facts["missing_features"] = [name for name in FEATURES if not runtime.check(name, timeout=timeout)[0]]
    facts["lazy_pages"] = "uffd-noncoop" not in facts["missing_features"]
    facts["dirty_tracking"] = "mem_dirty_track" not in facts["missing_features"]
    facts["usable"] = facts["check"]
    return facts


def pipe_max_size() -> int:
    with open(PIPE_MAX_SIZE) as handle:
        return int(handle.read().strip())


def page_server_problem() -> str:
    """Why this host cannot serve lazy pages (post-copy source), empty when it can."""
    try:
        size = pipe_max_size()
    except (OSError, ValueError) as exc:
        return "%s cannot be read (%s), so the pipe size CRIU's page server needs cannot be checked." % (PIPE_MAX_SIZE, exc)
    if size >= POSTCOPY_PIPE_SIZE:
        return ""
    return ("fs.pipe-max-size is %d here, and CRIU's page server needs %d (smaller pipes fail every page request). "
            "Run sysctl -w fs.pipe-max-size=%d (and persist it in /etc/sysctl.d/), or migrate without post-copy."
            % (size, POSTCOPY_PIPE_SIZE, POSTCOPY_PIPE_SIZE))


def require_page_server() -> None:
    problem = page_server_problem()
    if problem:
        raise CriuError("This host cannot be the source of a post-copy migration: %s" % problem, path=PIPE_MAX_SIZE)


def busy_pids(metadata: t.Mapping[str, t.Any]) -> t.List[int]:
    """PIDs a restore of this tree needs that are taken here; a tree in its own pid namespace needs none."""
    process = metadata["process"]
    if process.get("pid_namespace_init"):
        return []
    return [pid for pid in process.get("tree", []) if isinstance(pid, int) and procfs.read_stat(pid) is not None]


def restore_problems(metadata: t.Mapping[str, t.Any]) -> t.List[str]:
    """Why this host cannot restore ``metadata``'s checkpoint (empty when it can)."""
    problems = []
    arch = os.uname().machine
    source_arch = metadata["source"].get("arch")
    if source_arch != arch:
        problems.append("the checkpoint was made on %s but this host is %s: restore it on a %s host" % (source_arch, arch, source_arch))
    busy = busy_pids(metadata)
    if busy:
        problems.append(
            "PIDs %s of the checkpointed tree are in use on this host: wait for the original processes to exit, restore on "
            "another host, or checkpoint workloads started in their own PID namespace (unshare --pid --fork)"
            % ", ".join(map(str, busy))
        )
    return problems
