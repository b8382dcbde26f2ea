"""Drain a host (playbooks/drain.yml, the drain role): three real ssh test hosts, host-1 the source, host-2 and host-3
the targets, each capped by drain_capacity_mib so that neither can take everything and the plan must use both. Each
scenario drains 12 mixed workloads, found as an operator would: process trees by pidfile glob (one with children)
and Podman containers by label (each holding page cache of its own, which the plan must count).

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

from conftest import REPO, hosts_port, podman, read_state, run_module, wait_for
from testhosts import MIGRATIONS, PLAYBOOK, Fleet, RemoteOn, mount_ns

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
MIB = 1048576
LEASE = 90
LABEL = "nucleus.drain-test=yes"
# A container counting in memory (the shell's variable, shown in /tmp/n) that holds HELD_MIB of page cache in its own
# upper layer: a file in its /tmp (its resident pages are about 1 MiB).
HELD_MIB = 16
COUNTER = "head -c %dm /dev/zero > /tmp/held; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done" % HELD_MIB


@pytest.fixture(scope="module")
def fleet():
    """host-1 .. host-3 on a port of their own (a worker's pair of lettered hosts may run on hosts_port() meanwhile)."""
    hosts = Fleet(3, hosts_port() + 50)
    hosts.up()
    yield hosts
    hosts.down()


class Image(t.NamedTuple):
    """The test image, and its archive to load into a host's own image store."""
    name: str
    archive: str

    def load(self, fleet: Fleet, host: str) -> None:
        fleet.run(host, "podman image load --input %s" % self.archive)


@pytest.fixture(scope="module")
def image(fleet, container_host, tmp_path_factory):  # pylint: disable=redefined-outer-name
    """The test image in every host's own image store (a container's target needs its image)."""
    found = Image(container_host, str(tmp_path_factory.mktemp("image") / "image.tar"))
    podman("image", "save", "--output", found.archive, container_host)
    for host in fleet.names:
        found.load(fleet, host)
    return found


class Container:
    """A counter container started on host-1, labelled for the drain's discovery."""

    def __init__(self, fleet: Fleet, image_name: str, name: str) -> None:
        self.fleet, self.name = fleet, name
        # No network: the test hosts share this machine's network namespace, and Podman's bridge and firewall rules
        # there are other tests' too.
        self.id = fleet.run("1", "podman run -d --network none --name %s --label %s %s sh -c '%s'"
                            % (name, LABEL, image_name, COUNTER)).strip()
        wait_for(lambda: self.count("1") >= 3, what="container %s counting" % name)

    def state(self, host: str) -> str:
        return self.fleet.run(host, "podman container inspect --format '{{.State.Status}} {{.Id}}' %s" % self.name, check=False).strip()

    def count(self, host: str) -> int:
        return int(self.fleet.run(host, "podman exec %s cat /tmp/n" % self.name, check=False).strip() or 0)


@pytest.fixture
def drained(fleet, tmp_path):
    """Start workloads on host-1 with ``drained(name, args)``; at teardown every copy is killed, every container on
    every host removed, and every host forgets their migrations."""
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
        fleet.run(host, "podman rm --all --force --time 0 >/dev/null 2>&1; rm -rf %s; rm -f /run/d-*.pid" % MIGRATIONS, check=False)


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
    return dict(dict(drain_source="host-1", drain_targets=["host-2", "host-3"],
                     drain_discover={"pidfiles": ["/run/d-*.pid"], "container_labels": [LABEL]},
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
    if "drain_report" not in stats and not check:
        raise AssertionError("the drain set no report (rc %d): %s %s" % (proc.returncode, proc.stdout[-6000:], proc.stderr[-3000:]))
    return proc, stats.get("drain_report", {})


def task_results(proc: subprocess.CompletedProcess, task: str) -> t.List[t.Dict[str, t.Any]]:
    found = []
    for play in played(proc)["plays"]:
        for entry in play["tasks"]:
            if entry["task"]["name"].endswith(task):
                found.extend(entry["hosts"].values())
    return found


def measured_mib(fleet: Fleet, names: t.Sequence[str]) -> float:
    """The workloads' memory, as criu_drain_facts measures it on host-1 (ad hoc, as an operator would look first). A
    container counts the page cache it holds."""
    facts = run_module("criu_drain_facts", {"role": "source", "discover": drain_vars()["drain_discover"]}, host="host-1",
                       inventory=fleet.inventory)
    assert not facts["failed"], facts
    measured = {w["name"]: w for w in facts["source"]["workloads"]}
    assert sorted(measured) == sorted(names) and all(w["movable"] and w["state"] == "running" for w in measured.values()), measured
    for workload in measured.values():
        if workload["kind"] == "container":
            assert workload["memory_bytes"] >= HELD_MIB * MIB, "its page cache must count: %s" % workload
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


def assert_container_moved_once(fleet: Fleet, container: Container, count: int) -> str:
    """Running on host-2 or host-3 under the same id, counting on from ``count``; on host-1 gone (removed at the
    commit); the host it runs on."""
    def where() -> t.Optional[str]:
        states = {host: container.state(host) for host in fleet.names}
        running = [host for host, state in states.items() if state.startswith("running")]
        return running[0] if len(running) == 1 and states["1"] == "" else None
    host = wait_for(where, timeout=60, what="%s to run once, on a target" % container.name)
    assert host != "1" and container.state(host) == "running %s" % container.id
    now = container.count(host)
    assert now >= count, "the count started again (%d after %d): its memory was lost" % (now, count)
    wait_for(lambda: container.count(host) > now, what="%s counting on on host-%s" % (container.name, host))
    return "host-%s" % host


class Mix(t.NamedTuple):
    """What a scenario drains: process trees (by pidfile) and containers (by label)."""
    processes: t.List[RemoteOn]
    containers: t.List[Container]

    @property
    def names(self) -> t.List[str]:
        return [w.name for w in self.processes] + [c.name for c in self.containers]

    def states(self, where: t.Optional[t.Mapping[str, str]] = None) -> t.Dict[str, t.Any]:
        """Each one's state now: a process's (token, count), a container's count (on host-1, or where ``where`` says
        it runs)."""
        found: t.Dict[str, t.Any] = {w.name: read_state(w.state_file) for w in self.processes}
        found.update((c.name, c.count((where or {}).get(c.name, "host-1")[len("host-"):])) for c in self.containers)
        return found

    def assert_moved_once(self, fleet: Fleet, states: t.Mapping[str, t.Any]) -> t.Dict[str, str]:
        """Every one moved exactly once, carrying on from ``states``: where each runs."""
        where = {w.name: assert_moved_once(fleet, w, states[w.name]) for w in self.processes}
        where.update((c.name, assert_container_moved_once(fleet, c, states[c.name])) for c in self.containers)
        return where


def start_mixed(drained: t.Callable[[str, str], RemoteOn], count: int, fleet: t.Optional[Fleet] = None,
                image_name: str = "", containers: int = 0) -> Mix:
    """``count`` workloads: process trees of different sizes and shapes (a tree with children among them) and, with
    ``image_name``, ``containers`` of them containers."""
    shapes = ["--mem 24", "--mem 8", "--children 2 --mem 4", "--mem 16", "--mem 8", "--mem 4"]
    processes = [drained("d-%d" % index, shapes[index % len(shapes)]) for index in range(count - containers)]
    assert fleet is not None or not containers
    return Mix(processes, [Container(fleet, image_name, "dc-%d" % index) for index in range(containers)] if fleet else [])


def test_what_cannot_be_checkpointed_is_reported_untouched_and_fails_the_play(fleet, drained, tmp_path):
    """A stopped workload (a checkpoint of it would restore it stopped) is reported with the reason, never attempted:
    it stays on the source as it was, the others move, and the play fails naming it."""
    moving, stopped = start_mixed(drained, 2).processes
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


def test_check_mode_plans_then_the_drain_uses_both_targets_and_a_rerun_moves_nothing(fleet, image, drained, tmp_path):
    mix = start_mixed(drained, 12, fleet, image.name, containers=2)
    caps = caps_for(fleet, mix.names)
    path = inventory(fleet, tmp_path, caps)

    checked, report = run_drain(path, check=True)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr
    assert report == {}, "check mode reports no drain: it ran none"
    (shown,) = task_results(checked, "The plan")
    planned = [line for line in shown["msg"] if line.startswith("wave ")]
    assert len(planned) == 12 and {line.split(" -> ")[1].split(" ")[0] for line in planned} == {"host-2", "host-3"}, shown
    for workload in mix.processes:
        assert roots(workload, "1") == [workload.pid] and all(roots(workload, host) == [] for host in ("2", "3"))
    for container in mix.containers:
        assert container.state("1") == "running %s" % container.id and container.state("2") == container.state("3") == ""
    for host in fleet.names:
        assert not os.path.exists(fleet.path(host, MIGRATIONS)), "check mode must write nothing on any host"

    states = mix.states()
    proc, report = run_drain(path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    records = {r["name"]: r for r in report["workloads"]}
    assert report["emptied"] and report["left_on_source"] == [] and report["moved"] == 12, report
    assert all(r["outcome"] == "moved" and r["image_bytes"] > 0 and r["downtime_seconds"] > 0 for r in records.values()), records
    assert mix.assert_moved_once(fleet, states) == {name: r["target"] for name, r in records.items()}
    used: t.Dict[str, int] = {}
    for record in records.values():
        used[record["target"]] = used.get(record["target"], 0) + record["image_bytes"]
    assert set(used) == {"host-2", "host-3"}, "the plan must use both targets: %s" % used

    states = mix.states({name: r["target"] for name, r in records.items()})
    again, report = run_drain(path)
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr
    assert {r["why"] for r in report["workloads"]} == {"moved by an earlier run"}, report
    # The processes' pidfiles are still there to find; the containers left host-1 with their migrations (podman ps
    # lists them no more), and their journals, by the label discovery asks for, name them.
    assert {r["name"]: r["target"] for r in report["workloads"]} == {name: r["target"] for name, r in records.items()}
    assert mix.assert_moved_once(fleet, states) == {name: r["target"] for name, r in records.items()}


def test_the_controller_killed_mid_drain_and_the_rerun_finishes_it(fleet, image, drained, tmp_path):
    """The controller dies while the first wave's largest migration is frozen: the migrations it started finish on the
    hosts by themselves, the later waves never start; the same command again resolves the first and moves the rest."""
    mix = start_mixed(drained, 12, fleet, image.name, containers=2)
    path = inventory(fleet, tmp_path, caps_for(fleet, mix.names))
    states = mix.states()
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
    on_source = [w.name for w in mix.processes if w.running_on("1")] + [c.name for c in mix.containers if c.state("1")]
    assert on_source, "the later waves must not have started: the controller died in the first"

    proc, report = run_drain(path, drain_parallel=2)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    assert report["emptied"] and report["moved"] == 12, report
    records = {r["name"]: r for r in report["workloads"]}
    assert mix.assert_moved_once(fleet, states) == {name: r["target"] for name, r in records.items()}
    for name in mix.names:
        journal = fleet.journal("1", name)
        assert journal["outcome"] == "completed", journal
    # d-0 moved once, by the migration the killed controller started: the rerun resolved it, and started none
    assert fleet.journal("1", "d-0")["id"] == started and fleet.journal("1", "d-0")["outcome"] == "completed"


def test_a_container_left_in_doubt_is_found_by_its_journal_and_moved_by_the_rerun(fleet, image, drained, tmp_path):
    """host-2, the only target, dies while the container's copy is being restored there: Podman cannot restore one
    stopped, so that copy may be running and the container stays stopped on host-1 (its checkpoint in Podman), in
    doubt; `podman ps` no longer lists it. host-2 back (reinstalled: nothing of the migration there), the rerun finds
    the unfinished migration in host-1's journals, undoes it and moves the container once; the first run never calls
    the host empty."""
    mix = start_mixed(drained, 1, fleet, image.name, containers=1)  # alone: whatever moved onto host-2 dies with it
    (container,) = mix.containers
    path = inventory(fleet, tmp_path, {"host-2": 10000})
    states = mix.states()
    fleet.arm("2", "restoring", container.name)
    try:
        with open(str(tmp_path / "controller.log"), "w") as log:
            controller = subprocess.Popen(argv(path, drain_targets=["host-2"]), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        fleet.reached("2", container.name, "restoring", timeout=300)
        crash(fleet, "2")
        assert controller.wait(timeout=600) != 0, "the container is still on host-1: the play fails"
    finally:
        fleet.up()
        image.load(fleet, "2")
    output = open(str(tmp_path / "controller.log")).read()
    assert re.search(r'"%s: in_doubt -> host-2 ' % container.name, output), output[-5000:]
    assert container.state("1").split(" ")[0] in ("exited", "stopped") and fleet.journal("1", container.name)["outcome"] == "in_doubt"

    proc, report = run_drain(path, drain_targets=["host-2"])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    records = {r["name"]: r for r in report["workloads"]}
    assert report["emptied"] and sorted(records) == sorted(mix.names), report
    assert mix.assert_moved_once(fleet, states) == {name: "host-2" for name in mix.names}


def crash(fleet: Fleet, host: str) -> None:
    """Every process of test host ``host`` ended at once (its sshd, the migration agents it runs), as a host that dies:
    all stopped first, then killed, so that its sshd cannot serve a session meanwhile (a source that lost its agent
    asks again at once)."""
    ns = fleet.mount_ns(host)

    def processes() -> t.List[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and mount_ns(int(entry)) == ns:
                    found.append(int(entry))
            except OSError:
                pass
        return found

    def signal_all(sig: int) -> bool:
        """``sig`` to every process of the host; whether there was none left."""
        left = processes()
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return not left

    signal_all(signal.SIGSTOP)
    wait_for(lambda: signal_all(signal.SIGKILL), timeout=30, what="host-%s to be gone" % host)


def planned(log_path: str, count: int) -> t.Optional[t.List[t.Tuple[str, str]]]:
    """(workload, target) of the plan a drain running with drain_parallel=0 printed, once all ``count`` are there."""
    with open(log_path) as handle:
        found = re.findall(r'"wave 0: (\S+) -> (host-\d) ', handle.read())
    return found if len(found) == count else None


def test_a_target_that_dies_mid_drain_has_its_workloads_placed_again_on_the_other(fleet, image, drained, tmp_path):
    """host-3 dies while every migration onto it is restoring there. A process's copy there would have stayed stopped
    until the commit, so its migration rolls back and the same run places it once more, on host-2, which has the room.
    A container's copy may be running there (Podman cannot restore one stopped): it stays stopped on host-1, in doubt,
    until host-3 answers; host-3 back (reinstalled: nothing of the migration left), the same command again undoes that
    migration and moves the container. At the end each of the 12 runs once, its state continued."""
    mix = start_mixed(drained, 12, fleet, image.name, containers=2)
    # host-2 could take everything, but most room left first puts some onto host-3 (0.9 of the whole) too
    path = inventory(fleet, tmp_path, caps_for(fleet, mix.names, 1.25, 0.9))
    states = mix.states()
    fleet.arm("3", "restoring")  # every migration onto host-3 stops there, before its vote
    log_path = str(tmp_path / "controller.log")
    try:
        with open(log_path, "w") as log:
            controller = subprocess.Popen(argv(path, drain_parallel=0), cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # The plan this run made (the facts it was made from are this run's: memory moves between two looks).
        plan = wait_for(lambda: planned(log_path, 12), timeout=300, what="the plan")
        onto_3 = [name for name, target in plan if target == "host-3"]
        doubted = sorted(set(onto_3) & {c.name for c in mix.containers})
        assert onto_3, plan
        for name in onto_3:
            fleet.reached("3", name, "restoring", timeout=300)
        crash(fleet, "3")
        failed = controller.wait(timeout=1200) != 0
    finally:
        fleet.up()  # host-3 again, a fresh host
        image.load(fleet, "3")
    output = open(str(tmp_path / "controller.log")).read()
    assert failed == bool(doubted), output[-5000:]
    for name in onto_3:
        if name in doubted:
            assert re.search(r'"%s: in_doubt -> host-3 ' % re.escape(name), output), output[-5000:]
            (container,) = [c for c in mix.containers if c.name == name]
            assert not container.state("1").startswith("running") and not container.state("2"), "stopped, nowhere running"
        else:
            assert re.search(r'"%s: moved -> host-2, [^"]*placed again after rolled_back on host-3' % re.escape(name), output), output[-5000:]

    proc, report = run_drain(path, drain_parallel=0)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    assert report["emptied"], report
    where = mix.assert_moved_once(fleet, states)
    assert {name: host for name, host in where.items() if name not in doubted} == {name: "host-2" for name in where if name not in doubted}
