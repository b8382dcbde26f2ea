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

from bench.summary import cpu_category

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
