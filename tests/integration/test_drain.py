"""Drain a host (playbooks/drain.yml, the drain role): three real ssh test hosts, host-1 the source, host-2 and host-3
the targets, each capped by drain_capacity_mib so that neither can take everything and the plan must use both.

After every drain: each workload runs exactly once, on a target, carrying on from its own memory; nothing of it is left
on the source; and the rerun of the same command moves nothing twice.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import typing as t

import pytest

from conftest import REPO, hosts_port, read_state, run_module, wait_for
from testhosts import MIGRATIONS, PLAYBOOK, Fleet, RemoteOn, mount_ns

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
MIB = 1048576
LEASE = 90


@pytest.fixture(scope="module")
def fleet():
    """host-1 .. host-3 on a port of their own (a worker's pair of lettered hosts may run on hosts_port() meanwhile)."""
    hosts = Fleet(3, hosts_port() + 50)
    hosts.up()
    yield hosts
    hosts.down()


@pytest.fixture
def drained(fleet, tmp_path):
    """Start workloads on host-1 with ``drained(name, args)``; at teardown every copy is killed and every host forgets
    their migrations."""
    started: t.List[RemoteOn] = []

    def start(name: str, args: str) -> RemoteOn:
        workload = RemoteOn(fleet, "1", name, str(tmp_path), args)
        started.append(workload)
        return workload

    yield start
    for host in fleet.names:
        fleet.clear_failpoints(host)
    for workload in started:
        for pid in workload.copies():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # a child that died with its namespace's init
    for host in fleet.names:
        fleet.run(host, "rm -rf %s; rm -f /run/d-*.pid" % MIGRATIONS, check=False)


def inventory(fleet: Fleet, tmp_path, caps: t.Mapping[str, int]) -> str:
    """The fleet's inventory with each target's drain_capacity_mib."""
    lines = []
    for line in open(fleet.inventory).read().splitlines():
        host = line.split(" ", 1)[0]
        lines.append("%s drain_capacity_mib=%d" % (line, caps[host]) if host in caps else line)
    path = str(tmp_path / "inventory.ini")
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def drain_vars(**extra: t.Any) -> t.Dict[str, t.Any]:
    return dict(dict(drain_source="host-1", drain_targets=["host-2", "host-3"], drain_discover={"pidfiles": ["/run/d-*.pid"]},
                     drain_reserve_mib=0, drain_parallel=3, migrate_lease=LEASE), **extra)


def argv(inventory_path: str, check: bool = False, **extra: t.Any) -> t.List[str]:
    return [PLAYBOOK, "-i", inventory_path, "nucleus.criu.drain", "-e", json.dumps(drain_vars(**extra))] + (["--check"] if check else [])


def played(proc: subprocess.CompletedProcess) -> t.Dict[str, t.Any]:
    """The json callback's document (the migrate role prints each migration's progress before it, on its own lines)."""
    text = proc.stdout if proc.stdout.startswith("{") else proc.stdout[proc.stdout.index("\n{") + 1:]
    return json.loads(text)


def run_drain(inventory_path: str, check: bool = False, **extra: t.Any) -> t.Tuple[subprocess.CompletedProcess, t.Dict[str, t.Any]]:
    """The drain playbook with the json callback: its result and the drain_report it set with set_stats."""
    env = dict(os.environ, ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_SHOW_CUSTOM_STATS="1")
    proc = subprocess.run(argv(inventory_path, check, **extra), cwd=REPO, env=env, capture_output=True, text=True, timeout=1500,
                          check=False)
    try:
        stats = played(proc).get("global_custom_stats", {})
    except ValueError as exc:
        raise AssertionError("no JSON from the drain (rc %d): %s %s" % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])) from exc
    return proc, stats.get("drain_report", {})


def task_results(proc: subprocess.CompletedProcess, task: str) -> t.List[t.Dict[str, t.Any]]:
    found = []
    for play in played(proc)["plays"]:
        for entry in play["tasks"]:
            if entry["task"]["name"].endswith(task):
                found.extend(entry["hosts"].values())
    return found


def measured_mib(fleet: Fleet, names: t.Sequence[str]) -> float:
    """The workloads' memory, as criu_drain_facts measures it on host-1 (ad hoc, as an operator would look first)."""
    facts = run_module("criu_drain_facts", {"role": "source", "discover": {"pidfiles": ["/run/d-*.pid"]}}, host="host-1",
                       inventory=fleet.inventory)
    assert not facts["failed"], facts
    measured = {w["name"]: w for w in facts["source"]["workloads"]}
    assert sorted(measured) == sorted(names) and all(w["movable"] and w["state"] == "running" for w in measured.values()), measured
    return sum(w["memory_bytes"] for w in measured.values()) / MIB


def caps_for(fleet: Fleet, names: t.Sequence[str], share_2: float = 0.75, share_3: float = 0.5) -> t.Dict[str, int]:
    """Capacities, as shares of the workloads' memory: by default neither target can take everything (host-2 3/4 of
    it, host-3 1/2), so the plan must use both."""
    total = measured_mib(fleet, names)
    return {"host-2": int(total * share_2) + 1, "host-3": int(total * share_3) + 1}


def roots(workload: RemoteOn, host: str) -> t.List[int]:
    """The copies of ``workload`` running on ``host`` that are its root (pid 1 of its PID namespace), children aside."""
    found = []
    for pid in workload.running_on(host):
        try:
            with open("/proc/%d/status" % pid) as handle:
                if any(line.startswith("NSpid:") and line.split()[-1] == "1" for line in handle):
                    found.append(pid)
        except OSError:
            pass
    return found


def assert_moved_once(fleet: Fleet, workload: RemoteOn, token_count: t.Tuple[str, int]) -> str:
    """Exactly one copy, running on host-2 or host-3, carrying on from its own memory; the host it runs on."""
    def where() -> t.Optional[str]:
        running = {host: roots(workload, host) for host in fleet.names}
        if sorted(len(pids) for pids in running.values()) != [0, 0, 1]:
            return None
        return next(host for host, pids in running.items() if pids)
    host = wait_for(where, timeout=60, what="%s to run once, on a target" % workload.name)
    assert host != "1" and workload.running_on("1") == [], "nothing of it may be left on the source"
    (root,) = roots(workload, host)
    assert mount_ns(root) == fleet.mount_ns(host)
    workload.counts_on(*token_count)
    return "host-%s" % host


def start_mixed(drained: t.Callable[[str, str], RemoteOn], count: int) -> t.List[RemoteOn]:
    """Process workloads of different sizes and shapes (a tree with children among them)."""
    shapes = ["--mem 24", "--mem 8", "--children 2 --mem 4", "--mem 16", "--mem 8", "--mem 4"]
    return [drained("d-%d" % index, shapes[index % len(shapes)]) for index in range(count)]


def test_what_cannot_be_checkpointed_is_reported_untouched_and_fails_the_play(fleet, drained, tmp_path):
    """A stopped workload (a checkpoint of it would restore it stopped) is reported with the reason, never attempted:
    it stays on the source as it was, the others move, and the play fails naming it."""
    moving, stopped = start_mixed(drained, 2)
    state = read_state(moving.state_file)
    os.kill(stopped.pid, signal.SIGSTOP)
    path = inventory(fleet, tmp_path, {"host-2": 10000, "host-3": 10000})
    proc, report = run_drain(path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    records = {r["name"]: r for r in report["workloads"]}
    assert records[stopped.name]["outcome"] == "not_moved" and "stopped" in records[stopped.name]["why"], records
    assert report["left_on_source"] == [stopped.name] and not report["emptied"], report
    assert assert_moved_once(fleet, moving, state) == records[moving.name]["target"]
    assert stopped.copies() and all(os.path.exists("/proc/%d" % pid) for pid in stopped.copies())
    assert fleet.journal("1", stopped.name) is None, "nothing may have been attempted for it"
    os.kill(stopped.pid, signal.SIGCONT)


def test_check_mode_plans_then_the_drain_uses_both_targets_and_a_rerun_moves_nothing(fleet, drained, tmp_path):
    workloads = start_mixed(drained, 12)
    caps = caps_for(fleet, [w.name for w in workloads])
    path = inventory(fleet, tmp_path, caps)

    checked, report = run_drain(path, check=True)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr
    assert report == {}, "check mode reports no drain: it ran none"
    (shown,) = task_results(checked, "The plan")
    planned = [line for line in shown["msg"] if line.startswith("wave ")]
    assert len(planned) == 12 and {line.split(" -> ")[1].split(" ")[0] for line in planned} == {"host-2", "host-3"}, shown
    for workload in workloads:
        assert roots(workload, "1") == [workload.pid] and all(roots(workload, host) == [] for host in ("2", "3"))
    for host in fleet.names:
        assert not os.path.exists(fleet.path(host, MIGRATIONS)), "check mode must write nothing on any host"

    states = {w.name: read_state(w.state_file) for w in workloads}
    proc, report = run_drain(path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    records = {r["name"]: r for r in report["workloads"]}
    assert report["emptied"] and report["left_on_source"] == [] and report["moved"] == 12, report
    used: t.Dict[str, int] = {}
    for workload in workloads:
        record = records[workload.name]
        assert record["outcome"] == "moved" and record["image_bytes"] > 0 and record["downtime_seconds"] > 0, record
        assert assert_moved_once(fleet, workload, states[workload.name]) == record["target"], record
        used[record["target"]] = used.get(record["target"], 0) + record["image_bytes"]
    assert set(used) == {"host-2", "host-3"}, "the plan must use both targets: %s" % used

    states = {w.name: read_state(w.state_file) for w in workloads}
    again, report = run_drain(path)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr
    assert {r["why"] for r in report["workloads"]} == {"moved by an earlier run"}, report
    assert {r["name"]: r["target"] for r in report["workloads"]} == {name: r["target"] for name, r in records.items()}
    for workload in workloads:
        assert assert_moved_once(fleet, workload, states[workload.name]) == records[workload.name]["target"]


def test_the_controller_killed_mid_drain_and_the_rerun_finishes_it(fleet, drained, tmp_path):
    """The controller dies while the first wave's largest migration is frozen: the migrations it started finish on the
    hosts by themselves, the later waves never start; the same command again resolves the first and moves the rest."""
    workloads = start_mixed(drained, 5)
    path = inventory(fleet, tmp_path, caps_for(fleet, [w.name for w in workloads]))
    states = {w.name: read_state(w.state_file) for w in workloads}
    fleet.arm("1", "frozen", "d-0")  # d-0 is the largest (--mem 24): the first of wave 0
    with open(str(tmp_path / "controller.log"), "w") as log:
        controller = subprocess.Popen(argv(path, drain_parallel=2), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
    try:
        fleet.reached("1", "d-0", "frozen", timeout=300)
    finally:
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait(timeout=30)
    started = fleet.journal("1", "d-0")["id"]
    fleet.clear_failpoints("1")
    on_source = [w.name for w in workloads if w.running_on("1")]
    assert on_source, "the later waves must not have started: the controller died in the first"

    proc, report = run_drain(path, drain_parallel=2)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    assert report["emptied"] and report["moved"] == 5, report
    records = {r["name"]: r for r in report["workloads"]}
    for workload in workloads:
        assert assert_moved_once(fleet, workload, states[workload.name]) == records[workload.name]["target"], records
        journal = fleet.journal("1", workload.name)
        assert journal["outcome"] == "completed", journal
    # d-0 moved once, by the migration the killed controller started: the rerun resolved it, and started none
    assert fleet.journal("1", "d-0")["id"] == started and fleet.journal("1", "d-0")["outcome"] == "completed"


def crash(fleet: Fleet, host: str) -> None:
    """Every process of test host ``host`` killed at once (its sshd, the migration agents it runs): as a host that dies."""
    ns = fleet.mount_ns(host)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if mount_ns(int(entry)) == ns:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                pass


def test_a_target_that_dies_mid_drain_has_its_workloads_placed_again_on_the_other(fleet, drained, tmp_path):
    """host-3 dies while every migration onto it is restoring there: each of them rolls back on host-1, and the same
    run places them once more, on host-2, which has the room for them."""
    workloads = start_mixed(drained, 5)
    # host-2 could take everything, but most room left first puts some onto host-3 (0.9 of the whole) too
    path = inventory(fleet, tmp_path, caps_for(fleet, [w.name for w in workloads], 1.25, 0.9))
    checked, _report = run_drain(path, check=True, drain_parallel=0)
    (shown,) = task_results(checked, "The plan")
    onto_3 = [line.split(": ", 1)[1].split(" -> ")[0] for line in shown["msg"] if " -> host-3 " in line]
    assert onto_3, shown
    states = {w.name: read_state(w.state_file) for w in workloads}
    fleet.arm("3", "restoring")  # every migration onto host-3 stops there, before its vote
    try:
        with open(str(tmp_path / "controller.log"), "w") as log:
            controller = subprocess.Popen(argv(path, drain_parallel=0), cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for name in onto_3:
            fleet.reached("3", name, "restoring", timeout=300)
        crash(fleet, "3")
        assert controller.wait(timeout=1200) == 0, open(str(tmp_path / "controller.log")).read()[-5000:]
    finally:
        fleet.up()  # host-3 again, a fresh host, for whatever comes next
    output = open(str(tmp_path / "controller.log")).read()
    for name in onto_3:
        assert re.search(r'"%s: moved -> host-2, [^"]*placed again after rolled_back on host-3' % re.escape(name), output), output[-5000:]
    for workload in workloads:
        assert assert_moved_once(fleet, workload, states[workload.name]) == "host-2"
