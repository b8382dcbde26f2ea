# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where each workload of a drain goes: pure, deterministic placement from facts gathered before anything freezes.

The algorithm is **worst-fit decreasing**: workloads in decreasing order of memory (ties by name), each onto the
compatible target with the most room left (ties by name). Why:

- largest first places the hard cases while every target still has all its room, the order the classic bin-packing
  heuristics (first-/best-/worst-fit decreasing) share and the one that leaves the fewest large workloads unplaced;
- most room left (rather than best fit) spreads the workloads over the targets, so more of them migrate at once under
  a per-target limit, and every target keeps as much headroom as the others;
- sorting by (memory, name) and (room, name) alone makes the plan a function of its inputs: the same facts give the
  same plan on every run and every controller, which a rerun (recovery) relies on to continue the same drain.

A target is never given more than its capacity (its MemAvailable less a reserve, capped by ``drain_capacity_mib``):
a workload that fits nowhere is not placed, and the plan says why (no compatible target, and which feature each one
lacks; or too large for the room the compatible ones have left).

A workload whose migration failed before the commit (rolled back, or stopped at its preflight: it runs on the source)
is placed again once by ``replace``: onto a compatible target where no migration failed this run, with the room the
first round left there.
"""

from __future__ import annotations

import typing as t

MIB = 1048576
KINDS = ("process", "container", "unit")
MODES = ("copy", "postcopy")


class Workload(t.NamedTuple):
    """One workload to move: its name (its migration's name), kind, memory (RSS of its tree, in bytes) and mode."""

    name: str
    kind: str = "process"
    memory_bytes: int = 0
    mode: str = "copy"
    arch: str = ""  # the source's architecture: a checkpoint restores only on the same one

    @property
    def needs(self) -> t.Tuple[str, ...]:
        """The target features it needs beyond criu: ``postcopy`` (lazy pages), ``podman``, ``systemd``."""
        needs = []
        if self.mode == "postcopy":
            needs.append("postcopy")
        if self.kind == "container":
            needs.append("podman")
        if self.kind == "unit":
            needs.append("systemd")
        return tuple(needs)


class Target(t.NamedTuple):
    """One host that may receive workloads: its capacity in bytes and its features."""

    name: str
    capacity_bytes: int
    arch: str = ""
    lazy_pages: bool = False
    podman: bool = False
    systemd: bool = False
    usable: bool = True  # criu usable and the privileges to restore
    problem: str = ""  # why it is not usable

    def lacks(self, workload: Workload) -> t.List[str]:
        """What this target lacks for ``workload`` (empty: compatible, room aside)."""
        if not self.usable:
            return [self.problem or "cannot restore (criu unusable or no privileges)"]
        lacking = []
        if workload.arch and self.arch and workload.arch != self.arch:
            lacking.append("is %s, the workload %s" % (self.arch, workload.arch))
        if "postcopy" in workload.needs and not self.lazy_pages:
            lacking.append("has no lazy pages (criu check --feature uffd-noncoop) for post-copy")
        if "podman" in workload.needs and not self.podman:
            lacking.append("has no Podman ready for checkpoints")
        if "systemd" in workload.needs and not self.systemd:
            lacking.append("does not run systemd")
        return lacking


class Assignment(t.NamedTuple):
    workload: str
    target: str
    memory_bytes: int
    wave: int  # migrations of one wave run at once (at most ``parallel``, at most ``per_target`` per target)


class Unplaced(t.NamedTuple):
    workload: str
    reason: str


class Plan(t.NamedTuple):
    assignments: t.Tuple[Assignment, ...]
    unplaced: t.Tuple[Unplaced, ...]
    free_bytes: t.Dict[str, int]  # room left on each target once the assignments land

    @property
    def waves(self) -> t.List[t.List[str]]:
        """The workloads of each wave, in the order they start."""
        count = max((a.wave for a in self.assignments), default=-1) + 1
        return [[a.workload for a in self.assignments if a.wave == wave] for wave in range(count)]

    def as_dict(self) -> t.Dict[str, t.Any]:
        return {
            "assignments": [a._asdict() for a in self.assignments],
            "unplaced": [u._asdict() for u in self.unplaced],
            "free_bytes": dict(sorted(self.free_bytes.items())),
            "waves": self.waves,
        }


def _mib(value: int) -> str:
    return "%.1f MiB" % (value / float(MIB))


def _order(workloads: t.Iterable[Workload]) -> t.List[Workload]:
    return sorted(workloads, key=lambda w: (-w.memory_bytes, w.name))


def _why_nowhere(workload: Workload, targets: t.Sequence[Target], free: t.Mapping[str, int],
                 excluded: t.Mapping[str, str]) -> str:
    if not targets:
        return "no target was given"
    lacks = []
    room = []
    for target in sorted(targets, key=lambda x: x.name):
        if target.name in excluded:
            lacks.append("%s %s" % (target.name, excluded[target.name]))
            continue
        lacking = target.lacks(workload)
        if lacking:
            lacks.append("%s %s" % (target.name, " and ".join(lacking)))
        else:
            room.append((free[target.name], target.name))
    if not room:
        return "no target can take it: %s" % "; ".join(lacks)
    best, name = min(room, key=lambda r: (-r[0], r[1]))
    return "it needs %s and the compatible target with the most room left (%s) has %s%s" % (
        _mib(workload.memory_bytes), name, _mib(max(best, 0)), "" if not lacks else " (%s)" % "; ".join(lacks))


def _place(workloads: t.Iterable[Workload], targets: t.Sequence[Target], free: t.Dict[str, int],
           excluded: t.Mapping[str, str]) -> t.Tuple[t.List[t.Tuple[Workload, str]], t.List[Unplaced]]:
    placed: t.List[t.Tuple[Workload, str]] = []
    unplaced: t.List[Unplaced] = []
    for workload in _order(workloads):
        fits = [target for target in targets if target.name not in excluded and not target.lacks(workload)
                and free[target.name] >= workload.memory_bytes]
        if not fits:
            unplaced.append(Unplaced(workload.name, _why_nowhere(workload, targets, free, excluded)))
            continue
        chosen = min(fits, key=lambda target: (-free[target.name], target.name))
        free[chosen.name] -= workload.memory_bytes
        placed.append((workload, chosen.name))
    return placed, unplaced


def _waves(placed: t.Sequence[t.Tuple[Workload, str]], parallel: int, per_target: int) -> t.List[Assignment]:
    """Each placement, in placement order, into the first wave that has room for one more migration overall
    (``parallel``, 0: no limit) and onto its target (``per_target``, 0: no limit)."""
    waves: t.List[t.List[str]] = []  # the target of each migration of each wave
    assignments = []
    for workload, target in placed:
        index = next((i for i, wave in enumerate(waves) if (not parallel or len(wave) < parallel)
                      and (not per_target or wave.count(target) < per_target)), len(waves))
        if index == len(waves):
            waves.append([])
        waves[index].append(target)
        assignments.append(Assignment(workload.name, target, workload.memory_bytes, index))
    return sorted(assignments, key=lambda a: (a.wave, -a.memory_bytes, a.workload))


def _check(workloads: t.Sequence[Workload], targets: t.Sequence[Target], parallel: int, per_target: int) -> None:
    names = [w.name for w in workloads]
    if len(set(names)) != len(names):
        raise ValueError("workload names must be unique, got %s" % sorted({n for n in names if names.count(n) > 1}))
    if len({target.name for target in targets}) != len(targets):
        raise ValueError("target names must be unique")
    for workload in workloads:
        if workload.memory_bytes < 0 or workload.kind not in KINDS or workload.mode not in MODES:
            raise ValueError("invalid workload %r" % (workload,))
    if parallel < 0 or per_target < 0:
        raise ValueError("parallel and per_target are 0 (no limit) or positive")


def plan(workloads: t.Sequence[Workload], targets: t.Sequence[Target], parallel: int = 0, per_target: int = 0) -> Plan:
    """The drain's plan: every workload assigned to a target (never beyond its capacity) or unplaced with its reason;
    assignments grouped in waves of at most ``parallel`` migrations, at most ``per_target`` onto one target."""
    _check(workloads, targets, parallel, per_target)
    free = {target.name: target.capacity_bytes for target in targets}
    placed, unplaced = _place(workloads, targets, free, {})
    return Plan(tuple(_waves(placed, parallel, per_target)), tuple(unplaced), free)


def replace(first: Plan, failed: t.Mapping[str, str], workloads: t.Sequence[Workload], targets: t.Sequence[Target],
            parallel: int = 0, per_target: int = 0) -> Plan:
    """Once more, the workloads of ``first`` whose migration failed before the commit (``failed``: workload name to
    why; they run on the source still): onto another target that fits, among those where no migration of ``first``
    failed, with the room ``first`` left on it. Room taken on a failed target is given back to nobody: that target
    is out of this drain."""
    _check(workloads, targets, parallel, per_target)
    by_name = {w.name: w for w in workloads}
    assigned = {a.workload: a.target for a in first.assignments}
    unknown = sorted(set(failed) - set(assigned))
    if unknown:
        raise ValueError("only workloads the plan assigned can be placed again, not %s" % unknown)
    excluded = {assigned[name]: "failed a migration of this drain" for name in failed}
    free = dict(first.free_bytes)
    placed, unplaced = _place([by_name[name] for name in failed], targets, free, excluded)
    unplaced = [Unplaced(u.workload, "%s; then placed again: %s" % (failed[u.workload], u.reason)) for u in unplaced]
    return Plan(tuple(_waves(placed, parallel, per_target)), tuple(unplaced), free)
