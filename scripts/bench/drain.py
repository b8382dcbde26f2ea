# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain row (issue 25), over three numbered test hosts (testhosts.Fleet): COUNT workloads of MIB on host-1
emptied onto host-2 and host-3 by ``ansible-playbook nucleus.criu.drain``, against one migration of one such
workload and against the same COUNT migrated one after another, one migrate playbook each.

The migrate playbook's list form is no baseline for "one after another": it makes one play host per workload and
Ansible's forks run them at once (playbooks/migrate.yml), so the sequential row runs the playbook once per workload.
Every figure is a playbook's wall time; the downtimes are the drain report's (set_stats drain_report) and, for the
migrate playbooks, the source journals'. Nothing of the product is patched.
"""

from __future__ import annotations

import functools
import json
import os
import typing as t

import yaml

from bench import cpuprof, env
from bench.env import BenchError, log
from bench.migration import Bench, check_moved, host_name, migrate, run_playbook, start_workload, stop_workload
from bench.summary import median, rotate
from testhosts import MIGRATIONS, Fleet, RemoteOn

SOURCE = "1"
TARGETS = ("2", "3")
VARIANTS = ("one", "sequential", "drain")
# Each target may take this share of the workloads' memory: more than half, so that together they take everything,
# less than all, so that neither can take everything alone and the plan must use both (as tests/integration/test_drain.py).
TARGET_SHARE = 0.6
NAME_PREFIX = "drain-"
Run = t.Dict[str, t.Any]
Scope = t.Callable[[int, str], bool]
T = t.TypeVar("T")


def role_default(name: str) -> t.Any:
    """A variable's default in roles/drain/defaults/main.yml: what the run used when the benchmark left it unset,
    recorded as a number rather than as "the default"."""
    with open(os.path.join(env.REPO, "roles", "drain", "defaults", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)[name]


def parallel_used(parallel: t.Optional[int]) -> int:
    """drain_parallel as the drain ran it: ``parallel`` if the benchmark passed one, else the role's default."""
    return int(role_default("drain_parallel")) if parallel is None else parallel


def forks_for(count: int, parallel: t.Optional[int]) -> int:
    """Ansible's forks for a drain of ``count``: at least one per migration of a wave (0: no limit, all at once),
    never fewer than Ansible's default 5, so that the forks are never what serialises a wave."""
    wave = parallel_used(parallel) or count
    return max(5, min(wave, count))


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (VmRSS): what criu_drain_facts counts for a single-process workload."""
    with open("/proc/%d/status" % pid, encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise BenchError("no VmRSS for pid %d: it is gone" % pid)


def capacities(workloads: t.Sequence[RemoteOn]) -> t.Dict[str, int]:
    """drain_capacity_mib per target: TARGET_SHARE of the workloads' memory each, so that both are needed."""
    total = sum(rss_mib(w.pid) for w in workloads)
    return {host_name(target): int(total * TARGET_SHARE) + 1 for target in TARGETS}


def inventory(fleet: Fleet, path: str, caps: t.Mapping[str, int]) -> str:
    """The fleet's inventory with each target's drain_capacity_mib (a host variable, as an operator sets it)."""
    with open(fleet.inventory, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    out = []
    for line in lines:
        host = line.split(" ", 1)[0]
        out.append("%s drain_capacity_mib=%d" % (line, caps[host]) if host in caps else line)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(out) + "\n")
    return path


def start_workloads(fleet: Fleet, bench: Bench, variant: str, count: int, mib: int, index: int) -> t.List[RemoteOn]:
    """``count`` workloads of ``mib`` on host-1, each named after the variant and run (a migration's journal is
    keyed by its workload's name)."""
    return [start_workload(fleet, SOURCE, "%s%s-%d-r%d" % (NAME_PREFIX, variant, number, index), bench, mib)
            for number in range(count)]


def clean(fleet: Fleet, workloads: t.Iterable[RemoteOn]) -> None:
    """Every copy of the workloads killed (wherever it runs: the hosts share the PID space) and every host's
    migration journals and images and the workloads' pidfiles removed, as test_drain.py's ``drained`` fixture does:
    the next variant starts from hosts where nothing migrated."""
    for workload in workloads:
        stop_workload(workload)
    for host in fleet.names:
        fleet.run(host, "rm -rf %s; rm -f /run/%s*.pid" % (MIGRATIONS, NAME_PREFIX), check=False)


def cpu_of(profile: t.Optional[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Optional[float]]:
    """The whole machine's busy CPU seconds and the controller's, from a playbook's CPU profile."""
    profile = profile or {}
    return {"machine": profile.get("machine_busy_s"), "controller": profile.get("controller_cpu_s")}


def fleet_scope(fleet: Fleet, bench: Bench) -> Scope:
    """What the row's migrations run and nothing else of the machine (cpuprof.pair_scope over the three hosts' mount
    namespaces, the benchmark's children, this run's ssh masters): the machine may run other tests meanwhile, and
    its busy time would count theirs."""
    return cpuprof.pair_scope([fleet.mount_ns(host) for host in fleet.names], bench.run_dir)


def sampled(scope: Scope, action: t.Callable[[], T]) -> t.Tuple[T, cpuprof.MachineSampler]:
    """``action()``, with the CPU of what ``scope`` accepts sampled around it."""
    sampler = cpuprof.MachineSampler(scope).start()
    try:
        return action(), sampler
    finally:
        sampler.stop()


def one_row(fleet: Fleet, bench: Bench, scope: Scope, mib: int, index: int) -> Run:
    """One workload, host-1 -> host-2, by the migrate playbook (as the fan-out's baseline)."""
    workloads = start_workloads(fleet, bench, "one", 1, mib, index)
    try:
        what = "ansible-playbook nucleus.criu.migrate (one %d MiB workload)" % mib
        (wall, journals, found), sampler = sampled(scope, functools.partial(
            migrate, fleet, bench, [(workloads[0], SOURCE, TARGETS[0])], "copy", what, profile=True))
    finally:
        clean(fleet, workloads)
    cpu = cpu_of(found)
    return {"one_wall_s": wall, "one_downtime_s": float(journals[0]["downtime_seconds"]), "one_cpu_s": cpu["machine"],
            "one_controller_cpu_s": cpu["controller"], "one_fleet_cpu_s": sampler.busy_s}


def sequential_row(fleet: Fleet, bench: Bench, scope: Scope, count: int, mib: int, index: int) -> Run:
    """The same ``count`` workloads, one migrate playbook each, one after another, onto host-2 and host-3 in turn
    (the drain's two targets, half each); the sum of the playbooks' wall times (the checks between them excluded)."""
    workloads = start_workloads(fleet, bench, "seq", count, mib, index)
    walls: t.List[float] = []
    downtimes: t.List[float] = []
    machine: t.List[t.Optional[float]] = []
    controller: t.List[t.Optional[float]] = []
    fleet_cpu: t.List[float] = []
    try:
        for number, workload in enumerate(workloads):
            moves = [(workload, SOURCE, TARGETS[number % len(TARGETS)])]
            what = "ansible-playbook nucleus.criu.migrate (%s, %d of %d)" % (workload.name, number + 1, count)
            (wall, journals, found), sampler = sampled(scope, functools.partial(migrate, fleet, bench, moves, "copy", what, profile=True))
            fleet_cpu.append(sampler.busy_s)
            walls.append(wall)
            downtimes.append(float(journals[0]["downtime_seconds"]))
            cpu = cpu_of(found)
            machine.append(cpu["machine"])
            controller.append(cpu["controller"])
    finally:
        clean(fleet, workloads)
    return {"sequential_wall_s": sum(walls), "sequential_walls_s": walls, "sequential_downtimes_s": downtimes,
            "sequential_max_downtime_s": max(downtimes), "sequential_median_downtime_s": median(downtimes),
            "sequential_cpu_s": None if None in machine else sum(t.cast(t.List[float], machine)),
            "sequential_controller_cpu_s": None if None in controller else sum(t.cast(t.List[float], controller)),
            "sequential_fleet_cpu_s": sum(fleet_cpu)}


def drain_vars(workloads: t.Sequence[RemoteOn], parallel: t.Optional[int], algorithm: t.Optional[str]) -> t.Dict[str, t.Any]:
    """The drain's extra vars: the workloads given by pid (not discovered, so that nothing else on host-1 counts),
    drain_parallel only when asked (the role's default otherwise), the benchmark's migrate_hash_algorithm if any."""
    found: t.Dict[str, t.Any] = {"drain_source": host_name(SOURCE), "drain_targets": [host_name(h) for h in TARGETS],
                                 "drain_workloads": [{"name": w.name, "pid": w.pid} for w in workloads]}
    if parallel is not None:
        found["drain_parallel"] = parallel
    if algorithm:
        found["migrate_hash_algorithm"] = algorithm
    return found


def report_of(output: str) -> t.Dict[str, t.Any]:
    """drain_report from the json callback's document (the migrate role prints each migration's progress before
    it, on lines of their own)."""
    text = output if output.startswith("{") else output[output.index("\n{") + 1:]
    try:
        return json.loads(text)["global_custom_stats"]["drain_report"]
    except (LookupError, ValueError) as exc:
        raise BenchError("no drain_report in the drain's output: %s" % output[-2000:]) from exc


def check_drained(fleet: Fleet, workloads: t.Sequence[RemoteOn], report: t.Mapping[str, t.Any]) -> t.Dict[str, str]:
    """Each workload moved once, running where the report says, and both targets used; its target by name."""
    records = {r["name"]: r for r in report["workloads"]}
    if not report.get("emptied") or report.get("moved") != len(workloads):
        raise BenchError("the drain left %s on host-1: %s" % (report.get("left_on_source"), report.get("lines")))
    targets = {}
    for workload in workloads:
        target = records[workload.name]["target"]
        check_moved(fleet, workload, SOURCE, target[len("host-"):])
        targets[workload.name] = target
    if set(targets.values()) != {host_name(h) for h in TARGETS}:
        raise BenchError("the drain used %s, not both targets: drain_capacity_mib did not do its job" % sorted(set(targets.values())))
    return targets


def drain_row(fleet: Fleet, bench: Bench, scope: Scope, count: int, mib: int, index: int, parallel: t.Optional[int]) -> Run:
    """``count`` workloads drained from host-1 onto host-2 and host-3 by one drain playbook; its wall time, the
    report's per-workload downtimes and targets, its CPU profile."""
    workloads = start_workloads(fleet, bench, "drain", count, mib, index)
    try:
        caps = capacities(workloads)
        path = inventory(fleet, os.path.join(bench.run_dir, "drain-inventory-r%d.ini" % index), caps)
        argv = [env.PLAYBOOK, "-i", path, "nucleus.criu.drain", "-e", json.dumps(drain_vars(workloads, parallel, bench.algorithm))]
        callback = {"ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
                    "ANSIBLE_SHOW_CUSTOM_STATS": "1"}
        forks = forks_for(count, parallel)
        what = "ansible-playbook nucleus.criu.drain (%d x %d MiB)" % (count, mib)
        (wall, found, output), sampler = sampled(scope, functools.partial(
            run_playbook, bench, argv, what, forks=forks, profile=True, extra_env=callback))
        report = report_of(output)
        targets = check_drained(fleet, workloads, report)
    finally:
        clean(fleet, workloads)
    downtimes = [float(r["downtime_seconds"]) for r in report["workloads"]]
    cpu = cpu_of(found)
    if found is not None:
        found["what"] = "%d x %d MiB, %d fork(s)" % (count, mib, forks)
    return {"drain_wall_s": wall, "drain_downtimes_s": {r["name"]: float(r["downtime_seconds"]) for r in report["workloads"]},
            "drain_max_downtime_s": max(downtimes), "drain_median_downtime_s": median(downtimes),
            "drain_targets": {host: sorted(targets.values()).count(host) for host in sorted(set(targets.values()))},
            "drain_capacity_mib": caps, "drain_cpu_s": cpu["machine"], "drain_controller_cpu_s": cpu["controller"],
            "drain_fleet_cpu_s": sampler.busy_s, "drain_fleet_cpu_by": sampler.by_category(),
            "drain_cpu_profile": found, "drain_report_lines": report.get("lines")}


def drain_run(fleet: Fleet, bench: Bench, count: int, mib: int, index: int, parallel: t.Optional[int]) -> Run:
    """One run: one migration, the sequential migrations and the drain, in an order that rotates from run to run."""
    out: Run = {"run": index, "size_mib": mib, "count": count}
    scope = fleet_scope(fleet, bench)
    titles = {"one": "one migration", "sequential": "%d migrations one after another" % count, "drain": "the drain of %d" % count}
    for variant in rotate(VARIANTS, index):
        log("drain row, run %d: %s" % (index + 1, titles[variant]))
        if variant == "one":
            out.update(one_row(fleet, bench, scope, mib, index))
        elif variant == "sequential":
            out.update(sequential_row(fleet, bench, scope, count, mib, index))
        else:
            out.update(drain_row(fleet, bench, scope, count, mib, index, parallel))
    return out
