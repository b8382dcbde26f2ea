# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cheap profile of where the controller's CPU goes while one ansible-playbook runs.

A thread walks the process tree under ansible-playbook every INTERVAL seconds (through /proc/PID/task/TID/children,
no scan of all of /proc) and keeps each process's last CPU time (/proc/PID/stat utime + stime). Ansible's ssh
ControlPersist masters leave the tree (they daemonize), so processes whose command line names Ansible's
control-path directory are followed too, counting only the CPU they used during the run. Processes shorter
than one interval are missed by sampling; the rusage of the whole tree (os.wait4) gives their share.
"""

from __future__ import annotations

import os
import threading
import typing as t

from bench.summary import cpu_category, machine_category

CLK_TCK = os.sysconf("SC_CLK_TCK")
INTERVAL = 0.1
MASTER_SCAN_EVERY = 5  # intervals between two scans of /proc for Ansible's ssh masters


def read_stat(pid: int) -> t.Optional[t.Tuple[str, float, int]]:
    """(comm, CPU seconds used, starttime) of ``pid``, None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            raw = handle.read().decode("utf-8", "replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    return comm, (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19])


def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def children(pid: int) -> t.List[int]:
    found: t.List[int] = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return found
    for task in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, task), encoding="ascii") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            pass
    return found


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all of /proc/stat's cpu line but idle and iowait)."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK_TCK


class Sampler:
    """Samples the tree under ``root`` (and processes whose command line contains ``master_needle``) until stop()."""

    def __init__(self, root: int, master_needle: t.Optional[str] = None) -> None:
        self.root = root
        self.needle = master_needle
        self.seen: t.Dict[t.Tuple[int, int], t.Tuple[str, float]] = {}
        self.masters: t.Dict[t.Tuple[int, int], t.Tuple[float, float]] = {}  # key -> (CPU at first sight, last CPU)
        self._categories: t.Dict[t.Tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._masters_at_start = True
        self.samples = 0

    def start(self) -> Sampler:
        if self.needle:
            self._scan_masters()
            self._masters_at_start = False
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self.needle:
            self._scan_masters()

    def _loop(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self._walk()
            tick += 1
            if self.needle and tick % MASTER_SCAN_EVERY == 0:
                self._scan_masters()
            self.samples += 1
            self._stop.wait(INTERVAL)

    def _walk(self) -> None:
        stack = [self.root]
        while stack:
            pid = stack.pop()
            stat = read_stat(pid)
            if stat is None:
                continue
            comm, cpu, start = stat
            key = (pid, start)
            if key not in self._categories:
                self._categories[key] = cpu_category(pid, self.root, comm, cmdline(pid))
            self.seen[key] = (self._categories[key], cpu)
            stack += children(pid)

    def _scan_masters(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            stat = read_stat(pid)
            if stat is None or stat[0] != "ssh":
                continue
            key = (pid, stat[2])
            if key not in self.masters and self.needle not in cmdline(pid):  # type: ignore[operator]
                continue
            first = self.masters.get(key, (0.0 if not self._masters_at_start else stat[1], 0.0))[0]
            self.masters[key] = (first, stat[1])

    def tree_seen(self) -> t.Dict[t.Tuple[int, int], t.Tuple[str, float]]:
        """The tree's processes (the masters that were still in it before they daemonized excluded)."""
        return {key: value for key, value in self.seen.items() if key not in self.masters}

    def masters_cpu_s(self) -> float:
        """CPU the ssh masters used during the run (those alive before it count from the run's start)."""
        return sum(max(0.0, last - first) for first, last in self.masters.values())


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is a parent, grandparent, ... of ``pid`` (through /proc/PID/stat's ppid)."""
    for _hop in range(64):
        try:
            with open("/proc/%d/stat" % pid, "rb") as handle:
                raw = handle.read().decode("utf-8", "replace")
        except OSError:
            return False
        pid = int(raw[raw.rindex(")") + 2:].split()[1])
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def pair_scope(mount_namespaces: t.Iterable[str], needle: str) -> t.Callable[[int, str], bool]:
    """What one migration between two test hosts runs, and nothing else of a shared machine: the processes in either
    host's mount namespace (sshd, the modules, driver, worker and agents, criu, the workloads, the bare pipeline), the
    benchmark's own descendants (ansible-playbook and its ssh clients) and the processes whose command line names
    ``needle`` (this run's directory: Ansible's daemonized ssh masters)."""
    namespaces = set(mount_namespaces)
    own = os.getpid()

    def inside(pid: int, command: str) -> bool:
        if needle in command:
            return True
        try:
            if os.readlink("/proc/%d/ns/mnt" % pid) in namespaces:
                return True
        except OSError:
            pass
        return descends_from(pid, own)
    return inside


class MachineSampler:
    """Every process on the machine (but this one), sampled every INTERVAL until stop(): the CPU each used in between,
    by machine_category. The test hosts and the controller share this machine, so this is what a migration costs on
    both hosts and the controller together. Processes shorter than one interval are missed; the machine's busy time
    (machine_busy_s) over the same window gives their share, and that of the kernel's interrupts.

    With a ``scope`` (pid, command line -> whether it counts; see pair_scope), only the processes it accepts count:
    on a machine that runs anything else, the figures are then this migration's alone. What sampling misses is not
    known then (the machine's busy time is everyone's), so there is no "not sampled" and ``busy_s`` is the sum of
    what was seen."""

    def __init__(self, scope: t.Optional[t.Callable[[int, str], bool]] = None) -> None:
        self.scope = scope
        self.first: t.Dict[t.Tuple[int, int], float] = {}
        self.last: t.Dict[t.Tuple[int, int], t.Tuple[str, float]] = {}
        self._comm: t.Dict[t.Tuple[int, int], str] = {}
        self._outside: t.Set[t.Tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="machine-cpu-sampler", daemon=True)
        self._busy_before = 0.0
        self.busy_s = 0.0

    def start(self) -> MachineSampler:
        self._scan(baseline=True)
        self._busy_before = machine_busy_s()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._scan(baseline=False)
        self.busy_s = machine_busy_s() - self._busy_before
        if self.scope is not None:
            self.busy_s = sum(max(0.0, cpu - self.first[key]) for key, (_category, cpu) in self.last.items())

    def _loop(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._scan(baseline=False)

    def _scan(self, baseline: bool) -> None:
        own = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == own:
                continue
            stat = read_stat(int(entry))
            if stat is None:
                continue
            comm, cpu, start = stat
            key = (int(entry), start)
            if key in self._outside:
                continue
            if key not in self.first:
                command = cmdline(int(entry))
                if self.scope is not None and not self.scope(int(entry), command):
                    self._outside.add(key)
                    continue
                self.first[key] = cpu if baseline else 0.0
                self.last[key] = (machine_category(comm, command), cpu)
            elif comm != self._comm.get(key):  # seen between its fork and its exec: what it runs now says what it is
                self.last[key] = (machine_category(comm, cmdline(int(entry))), cpu)
            else:
                self.last[key] = (self.last[key][0], cpu)
            self._comm[key] = comm

    def by_category(self) -> t.Dict[str, float]:
        """CPU seconds used in the window, by category; what sampling missed as "not sampled" (unscoped only)."""
        found: t.Dict[str, float] = {}
        for key, (category, cpu) in self.last.items():
            used = cpu - self.first[key]
            if used > 0:
                found[category] = found.get(category, 0.0) + used
        missed = self.busy_s - sum(found.values())
        if missed > 0 and self.scope is None:
            found["not sampled (short-lived, interrupts, this sampler)"] = missed
        return found
