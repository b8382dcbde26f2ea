# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Facts about processes and the host, read from /proc.

A pid alone does not name a process (pids are reused), so identity here is always
(pid, start time, boot id).
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import socket
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

PF_KTHREAD = 0x00200000
PR_SET_CHILD_SUBREAPER = 36
PIDFILE_MAX = 4096


class ProcStat(t.NamedTuple):
    """The fields of /proc/PID/stat this collection relies on."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgid: int
    sid: int
    tty_nr: int
    flags: int
    starttime: int

    @property
    def exited(self) -> bool:
        """A zombie (or dying task) still holds its pid but runs no more."""
        return self.state in ("Z", "X")


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat; comm may hold spaces and parentheses, so split at the last ')'."""
    head, rest = text.rsplit(")", 1)
    pid_text, comm = head.split(" (", 1)
    fields = rest.split()
    return ProcStat(
        pid=int(pid_text), comm=comm, state=fields[0], ppid=int(fields[1]), pgid=int(fields[2]),
        sid=int(fields[3]), tty_nr=int(fields[4]), flags=int(fields[6]), starttime=int(fields[19]),
    )


def read_stat(pid: int) -> t.Optional[ProcStat]:
    """The stat of ``pid``, or None when no such process exists."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return parse_stat(handle.read())
    except (OSError, ValueError, IndexError):
        return None


def parse_pidfile(text: str) -> t.Optional[int]:
    """A pid from a pidfile holding only digits (and surrounding whitespace); anything else is None.

    Strict on purpose: an error message such as "Error code: 255" must never be read as pid 255.
    """
    stripped = text.strip()
    if not stripped or not stripped.isascii() or not stripped.isdigit():
        return None
    pid = int(stripped)
    return pid if 0 < pid < 2 ** 22 + 1 else None


def read_pidfile(path: str) -> int:
    """Read a pidfile strictly: reached through directories only root (or the caller) can change, itself owned
    by root or the caller, and holding nothing but a pid. Whoever can rewrite a pidfile chooses which process
    gets checkpointed, and a dump ends the process it names."""
    remedy = "Give the pid directly, or keep the pidfile where only root can change it (e.g. /run)."
    try:
        fd, real = safepath.open_file(path, "pidfile", remedy)
    except FileNotFoundError as exc:
        raise CriuError("Cannot read pidfile %s: it does not exist. Give an existing pidfile or use pid." % path, path=path) from exc
    with os.fdopen(fd, "rb") as handle:
        problem = safepath.entry_problem(os.fstat(fd), os.geteuid())
        if problem:
            raise CriuError("pidfile %s %s: another user could point it at any process. %s" % (real, problem, remedy), path=path)
        data = handle.read(PIDFILE_MAX + 1)
    pid = parse_pidfile(data.decode("ascii", "replace")) if len(data) <= PIDFILE_MAX else None
    if pid is None:
        raise CriuError(
            "Pidfile %s does not hold a pid (it must contain only digits, found %r). Fix the pidfile or use pid." % (path, data[:32]),
            path=path,
        )
    return pid


def resolve_pid(pid: t.Optional[int], pidfile: t.Optional[str]) -> int:
    """The pid given directly, or read strictly from ``pidfile``."""
    return pid if pid is not None else read_pidfile(t.cast(str, pidfile))


def is_alive(pid: int, starttime: t.Optional[int] = None) -> bool:
    """True when ``pid`` exists, is not a zombie, and (if given) started at ``starttime``."""
    st = read_stat(pid)
    if st is None or st.exited:
        return False
    return starttime is None or st.starttime == starttime


def ancestors(pid: int) -> t.List[int]:
    """``pid`` and every ancestor up to init: the chain that runs this module."""
    chain = []
    while pid > 0:
        chain.append(pid)
        st = read_stat(pid)
        if st is None:
            break
        pid = st.ppid
    return chain


def children_map() -> t.Dict[int, t.List[int]]:
    """parent pid -> child pids, for every process visible now."""
    result: t.Dict[int, t.List[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st is not None:
                result.setdefault(st.ppid, []).append(st.pid)
    return result


def descendants(pid: int, children: t.Optional[t.Dict[int, t.List[int]]] = None) -> t.List[int]:
    """Every process below ``pid`` (not ``pid`` itself), parents before children."""
    children = children_map() if children is None else children
    found: t.List[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def _readlink(path: str) -> t.Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _read_text(path: str, default: str = "") -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return default


def ns_pids(pid: int) -> t.List[int]:
    """The NSpid line of /proc/PID/status: the pid in every pid namespace, outermost first."""
    for line in _read_text("/proc/%d/status" % pid).splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return [pid]


def process_state(pid: int) -> t.Dict[str, t.Any]:
    """What a playbook needs to know about ``pid`` before touching it (it may be gone)."""
    st = read_stat(pid)
    if st is None:
        return {"pid": pid, "exists": False, "alive": False}
    return {"pid": pid, "exists": True, "alive": not st.exited, "state": st.state,
            "starttime": st.starttime, "comm": st.comm}


def require_checkpointable(pid: int) -> ProcStat:
    """Refuse a pid that must never be checkpointed, naming why and what to do instead."""
    if pid <= 1:
        raise CriuError("Refusing to checkpoint pid %d: it is init (or not a process). Give the pid of a workload." % pid, pid=pid)
    st = read_stat(pid)
    if st is None:
        raise CriuError("No process with pid %d exists on this host. Check the pid or pidfile." % pid, pid=pid)
    if st.flags & PF_KTHREAD:
        raise CriuError("Refusing to checkpoint pid %d (%s): it is a kernel thread. Give the pid of a user-space workload." % (pid, st.comm), pid=pid)
    if st.exited:
        raise CriuError("Refusing to checkpoint pid %d (%s): it is a zombie that has already exited. Restart the workload." % (pid, st.comm), pid=pid)
    if pid in ancestors(os.getpid()):
        raise CriuError(
            "Refusing to checkpoint pid %d (%s): it is this module or one of its ancestors (e.g. the ssh session or ansible "
            "itself). Give the pid of a separate workload." % (pid, st.comm),
            pid=pid,
        )
    return st


def process_facts(pid: int, st: ProcStat) -> t.Dict[str, t.Any]:
    """What metadata.json records about the root of the dumped tree."""
    cmdline = _read_text("/proc/%d/cmdline" % pid).split("\0")
    nspids = ns_pids(pid)
    tree = [pid] + descendants(pid)
    return {
        "pid": pid,
        "starttime": st.starttime,
        "comm": st.comm,
        "cmdline": [arg for arg in cmdline if arg],
        "exe": _readlink("/proc/%d/exe" % pid),
        "cwd": _readlink("/proc/%d/cwd" % pid),
        "pid_namespace_init": len(nspids) > 1 and nspids[-1] == 1,
        "tree": tree,
    }


def needs_shell_job(pid: int, st: ProcStat, tree: t.Iterable[int]) -> bool:
    """CRIU needs --shell-job when the tree's session or process group leader is outside it, or it has a tty."""
    members = set(tree)
    return st.tty_nr != 0 or st.sid not in members or st.pgid not in members


def host_facts() -> t.Dict[str, str]:
    """Where a checkpoint was made: used to spot a restore on a different host or boot."""
    uname = os.uname()
    return {
        "hostname": socket.gethostname(),
        "machine_id": _read_text("/etc/machine-id"),
        "boot_id": boot_id(),
        "kernel": uname.release,
        "arch": uname.machine,
    }


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """UTC ISO 8601 with microseconds, the timestamp format of every file nucleus.criu writes."""
    return datetime.datetime.now(datetime.timezone.utc).strftime(TIME_FORMAT)


def boot_id() -> str:
    return _read_text("/proc/sys/kernel/random/boot_id")


def processes_with_argument(comm: str, argument: str) -> t.List[int]:
    """Live processes named ``comm`` with ``argument`` as one of their arguments (a container's conmon: its id), in
    this process's mount namespace (what this host's Podman started, not another's sharing the kernel)."""
    found = []
    ours = _readlink("/proc/self/ns/mnt")
    for name in os.listdir("/proc"):
        if not name.isdigit() or _read_text("/proc/%s/comm" % name) != comm or _readlink("/proc/%s/ns/mnt" % name) != ours:
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argument.encode() in argv and is_alive(int(name)):
            found.append(int(name))
    return found


def become_subreaper() -> None:
    """Orphans among this process's descendants become its children, not init's: a criu restore killed midway leaves
    the task it was building within this process's reach (to be killed), not blocked for ever under init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def children_since(starttime: int) -> t.List[int]:
    """This process's children that started at ``starttime`` or later (as a subreaper: the orphans it adopted too)."""
    found = []
    for child in children_map().get(os.getpid(), []):
        st = read_stat(child)
        if st is not None and st.starttime >= starttime:
            found.append(child)
    return found


def kill_tree(root: int, sig: int = signal.SIGKILL) -> t.List[int]:
    """Send ``sig`` to ``root`` and every descendant (children first), returning those signalled."""
    victims = [root] + descendants(root)
    for pid in reversed(victims):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return victims


def wait_identified_gone(identity: t.Optional[t.Sequence[int]], timeout: float) -> None:
    """Wait for the process recorded as [pid, starttime] to end, if that very process still runs."""
    if identity and is_alive(identity[0], identity[1]):
        wait_gone([identity[0]], timeout)


def wait_gone(pids: t.Iterable[int], timeout: float) -> t.List[int]:
    """Wait until none of ``pids`` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    remaining = [p for p in pids if is_alive(p)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.02)
        remaining = [p for p in remaining if is_alive(p)]
    return remaining


def tree_identity(pid: int) -> t.List[t.List[int]]:
    """[pid, starttime] of ``pid`` and every descendant: what can be signalled later without hitting a reused pid."""
    found = []
    for member in [pid] + descendants(pid):
        st = read_stat(member)
        if st is not None:
            found.append([member, st.starttime])
    return found


def signal_identified(identity: t.Iterable[t.Sequence[int]], sig: int) -> t.List[int]:
    """Send ``sig`` to every [pid, starttime] that still names the same process; returns the pids signalled."""
    signalled = []
    for pid, starttime in identity:
        st = read_stat(pid)
        if st is None or st.starttime != starttime or st.exited:
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue
        signalled.append(pid)
    return signalled


def alive_identified(identity: t.Iterable[t.Sequence[int]]) -> t.List[int]:
    """The pids of ``identity`` that still run (same start time, not a zombie)."""
    return [pid for pid, starttime in identity if is_alive(pid, starttime)]


def resident_bytes(pids: t.Iterable[int]) -> int:
    """Sum of VmRSS: a lower bound of what a dump of these processes writes."""
    total = 0
    for pid in pids:
        for line in _read_text("/proc/%d/status" % pid).splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


CGROUP_ROOT = "/sys/fs/cgroup"
# What a memory cgroup charges for its processes' pages and their page cache: (cgroup v1 keys, cgroup v2 keys).
CGROUP_MEMORY_KEYS = (("total_rss", "total_cache"), ("anon", "file"))


def _memory_cgroup(pid: int) -> t.Tuple[t.Optional[str], t.Tuple[str, ...]]:
    """The directory of ``pid``'s memory cgroup and the memory.stat keys to add up there (v1's memory hierarchy, else
    the unified one when memory is its controller); (None, ()) for the root cgroup, which is never a workload's own."""
    lines = [line.split(":", 2) for line in _read_text("/proc/%d/cgroup" % pid).splitlines() if line.count(":") >= 2]
    v1 = next((path for _id, controllers, path in lines if "memory" in controllers.split(",")), None)
    if v1 is not None:
        return (None, ()) if v1 == "/" else (os.path.join(CGROUP_ROOT, "memory") + v1, CGROUP_MEMORY_KEYS[0])
    unified = next((path for hierarchy, _controllers, path in lines if hierarchy == "0"), None)
    if unified in (None, "/") or "memory" not in _read_text(os.path.join(CGROUP_ROOT, "cgroup.controllers")).split():
        return None, ()
    return CGROUP_ROOT + str(unified), CGROUP_MEMORY_KEYS[1]


def _cgroup_processes(directory: str) -> t.Optional[t.Set[int]]:
    """Every process in the cgroup ``directory`` and the cgroups below it; None when it cannot be read whole."""
    found: t.Set[int] = set()
    for here, _dirs, files in os.walk(directory):
        if "cgroup.procs" not in files:
            return None
        found.update(int(word) for word in _read_text(os.path.join(here, "cgroup.procs")).split())
    return found if os.path.isdir(directory) else None


def _below(root: int, pid: int) -> bool:
    """``pid`` is ``root`` or runs below it, now (a tree forks and reaps while it is looked at: a process gone meanwhile
    counts as below, since it is no longer anyone's)."""
    return pid == root or root in ancestors(pid) or read_stat(pid) is None


def held_bytes(tree: t.Sequence[int]) -> int:
    """What a process tree holds in memory: its resident pages and, when its memory cgroup is its own (a container's,
    a unit's with memory accounting), the page cache charged there too. Its tmpfs files and a container's upper layer
    travel with its checkpoint; the files it read or wrote it will cache again on the target: for placement, which must
    never overcommit, the larger figure. A cgroup shared with other processes says nothing of the tree's part, so the
    resident pages alone count then."""
    resident = resident_bytes(tree)
    directory, keys = _memory_cgroup(tree[0])
    members = _cgroup_processes(directory) if directory is not None else None
    if not members or not all(_below(tree[0], member) for member in members):
        return resident
    stat: t.Dict[str, int] = {}
    for line in _read_text(os.path.join(str(directory), "memory.stat")).splitlines():
        name, _space, value = line.partition(" ")
        stat[name] = int(value or 0)
    return max(resident, sum(stat.get(key, 0) for key in keys))
