"""Podman containers migrating between two real ssh hosts, each with Podman storage of its own: the same protocol,
journals and lease as a process, exactly once whatever dies.

Podman cannot restore a container stopped, so the target's copy runs from its restore while the source container
stays stopped (checkpointed, Podman keeping a copy) until the decision. After every kill: the container runs on
exactly one host, its in-memory count going on; the source container exists until the commit and is gone after it;
a rerun of the same command reports or finishes instead of acting twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import typing as t

import pytest

from conftest import alive, podman, run_module, wait_for
from test_migration import finish, kill_at, matrix, recap_changed
from testhosts import MIGRATIONS, Hosts, mount_ns

LEASE = 60
# Counts in memory (the shell's variable) and shows the count in a file: a restored container goes on counting,
# a restarted one would start again from 1.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"


@pytest.fixture(scope="module")
def hosts(hosts, container_host, tmp_path_factory):  # pylint: disable=redefined-outer-name
    """The worker's host pair, with the test image on host-a (each host's image store is its own)."""
    archive = str(tmp_path_factory.mktemp("image") / "image.tar")
    podman("image", "save", "--output", archive, container_host)
    hosts.run("a", "podman image load --input %s" % archive)
    hosts.image, hosts.archive = container_host, archive
    return hosts


class Containers:
    """Counter containers started on host-a; every container on both hosts is removed at teardown."""

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts

    def podman(self, host: str, args: str, check: bool = True) -> str:
        return self.hosts.run(host, "podman " + args, check=check).strip()

    def start(self, name: str, command: str = COUNTER) -> str:
        """The container's id, once it counts."""
        container_id = self.podman("a", "run -d --name %s %s sh -c '%s'" % (name, self.hosts.image, command))  # type: ignore[attr-defined]
        wait_for(lambda: self.count("a", name) >= 3, what="container %s counting" % name)
        return container_id

    def state(self, host: str, name: str) -> str:
        return self.podman(host, "container inspect --format '{{.State.Status}} {{.Id}}' %s" % name, check=False)

    def count(self, host: str, name: str) -> int:
        return int(self.podman(host, "exec %s cat /tmp/n" % name, check=False) or 0)

    def image_on_b(self, present: bool) -> None:
        if present:
            self.podman("b", "image load --input %s" % self.hosts.archive)  # type: ignore[attr-defined]
        else:
            self.podman("b", "image rm --force %s" % self.hosts.image, check=False)  # type: ignore[attr-defined]

    def runs_only_on(self, host: str, name: str, container_id: str, count: int) -> None:
        """Running on ``host`` (under the same id), nowhere else, its count going on from ``count``."""
        other = "b" if host == "a" else "a"
        assert self.state(host, name) == "running %s" % container_id, self.state(host, name)
        assert self.state(other, name) in ("", "exited %s" % container_id), "the container may run on one host only"
        assert not self.state(other, name).startswith("running")
        now = self.count(host, name)
        assert now >= count, "the count started again (%d after %d): its memory was lost" % (now, count)
        wait_for(lambda: self.count(host, name) > now, what="the container counting on on host-%s" % host)

    def remove_all(self) -> None:
        for host in ("a", "b"):
            self.podman(host, "rm --all --force --time 0", check=False)


@pytest.fixture
def containers(hosts):
    made = Containers(hosts)
    yield made
    made.remove_all()
    for host in ("a", "b"):
        hosts.clear_failpoints(host)
        hosts.run(host, "rm -rf %s/c-* %s/.c-*" % (MIGRATIONS, MIGRATIONS), check=False)


def single(name: str, **extra: t.Any) -> t.Dict[str, t.Any]:
    return dict(dict(migrate_source="host-a", migrate_target="host-b", migrate_container=name, migrate_name=name,
                     migrate_lease=LEASE), **extra)


@pytest.mark.slow
def test_migrates_a_container_sending_its_image_when_asked(hosts, containers):
    containers.image_on_b(False)
    name = "c-single"
    container_id = containers.start(name)

    refused = hosts.migrate(**single(name))
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "stopped at preflight, before touching the workload" in output, output
    assert "image %s" % hosts.image in output and "transfer_image" in output, output
    assert containers.state("a", name) == "running %s" % container_id

    # Ad hoc, in check mode: every check on both hosts, nothing sent, nothing frozen.
    predicted = run_module("criu_migrate", dict(name=name, container=name, target="127.0.0.3", ssh_port=hosts.port,
                                                ssh_key_file=hosts.key, transfer_image=True,
                                                ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"),
                           check=True, host="host-a", inventory=hosts.inventory)
    assert predicted["changed"] and not predicted["failed"], predicted
    assert predicted["actions"] == ["would migrate container %s to 127.0.0.3:%d (copy mode, sending its image first)"
                                    % (name, hosts.port)], predicted
    assert containers.state("a", name) == "running %s" % container_id and hosts.journal("a", name) is None
    assert not containers.podman("b", "image exists %s && echo yes" % hosts.image, check=False)

    before = containers.count("a", name)
    moved = hosts.migrate(**single(name, migrate_transfer_image=True))
    assert moved.returncode == 0, moved.stdout + moved.stderr
    containers.runs_only_on("b", name, container_id, before)
    assert containers.state("a", name) == "", "the source container is removed at the commit"
    journal = hosts.journal("a", name)
    assert journal["outcome"] == "completed" and journal["container"]["id"] == container_id, journal
    assert journal["image_seconds"] > 0 and 0 < journal["downtime_seconds"] < 30, journal
    assert journal["image_bytes"] > 0 and journal["podman"], journal
    target = hosts.journal("b", name)
    assert target["id"] == journal["id"] and target["outcome"] == "completed", target

    again = hosts.migrate(**single(name, migrate_transfer_image=True))
    assert again.returncode == 0 and recap_changed(again.stdout) == 0 and "migrated already" in again.stdout, again.stdout
    assert containers.state("b", name) == "running %s" % container_id

    back = hosts.migrate(**single(name, migrate_source="host-b", migrate_target="host-a"))
    assert back.returncode == 0, back.stdout + back.stderr
    containers.runs_only_on("a", name, container_id, before)


def test_preflight_refuses_a_name_taken_on_the_target(hosts, containers):
    containers.image_on_b(True)
    name = "c-taken"
    container_id = containers.start(name)
    containers.podman("b", "create --name %s %s true" % (name, hosts.image))
    result = hosts.migrate(**single(name))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "a container named %s exists here" % name in output, output
    assert containers.state("a", name) == "running %s" % container_id
    assert containers.state("b", name).startswith("created"), "the target's own container is left alone"


def test_postcopy_is_refused_for_a_container(hosts, containers):
    name = "c-postcopy"
    container_id = containers.start(name)
    result = hosts.migrate(**single(name, migrate_mode="postcopy"))
    assert result.returncode != 0 and "cannot migrate a container" in result.stdout, result.stdout
    assert containers.state("a", name) == "running %s" % container_id


# --- the kill matrix -------------------------------------------------------------------------------------

# (who is killed, on which host the step is reached, the step, the outcome the journals must settle on)
# One case per actor and phase class, as test_migration.COPY_MATRIX.
CONTAINER_MATRIX = [
    ("controller", "a", "frozen", "completed"),
    ("driver", "a", "transferring", "rolled_back"),  # the export not sealed yet
    ("driver", "a", "target_restored", "completed"),  # its copy runs on the target: the recovery commits, keeping its work
    ("driver", "a", "committed", "completed"),
    ("target", "b", "restoring", "rolled_back"),
    ("target", "b", "restored", "rolled_back"),
    ("target", "b", "committed", "completed"),
    # The link dies once the export is on its way: the target may restore it (a container's copy runs), so the
    # source cannot resume before it hears from the target again.
    ("link", "a", "transferring", "in_doubt"),
    ("link", "a", "committed", "in_doubt"),
]


@pytest.mark.slow
def test_a_podman_restore_that_hangs_after_starting_the_container_leaves_no_copy(hosts, containers, tmp_path):
    """The target's podman container restore hangs once it has started the container (stopped here, held past the
    migration's timeout): the agent kills podman, and the container it started, running under a conmon Podman has no
    record of, goes too before the source container runs again; it used to run on, a second copy."""
    containers.image_on_b(True)
    name = "c-restorehang"
    container_id = containers.start(name)
    before = containers.count("a", name)
    hosts.arm("b", "importing", name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(name, migrate_timeout=15))
    hosts.reached("b", name, "importing")  # the agent, which has just started podman
    podman_pid = hosts.journal("b", name)["engine_process"][0]
    os.kill(podman_pid, signal.SIGSTOP)
    hosts.clear_failpoints("b")

    def is_monitor_on_b(pid: int) -> bool:
        try:  # a process Podman started a moment ago may have gone already
            with open("/proc/%d/comm" % pid) as comm:
                return comm.read().strip() == "conmon" and mount_ns(pid) == hosts.mount_ns("b")
        except OSError:
            return False

    def monitors() -> t.List[int]:
        return [pid for pid in hosts.processes_running(container_id) if is_monitor_on_b(pid)]
    # Podman runs in small steps until the container's monitor exists: then it hangs, the container started.
    deadline = time.monotonic() + 60
    while not monitors():
        assert alive(podman_pid), "podman finished the restore before the test could hold it"
        assert time.monotonic() < deadline, "podman started no container"
        os.kill(podman_pid, signal.SIGCONT)
        time.sleep(0.005)
        os.kill(podman_pid, signal.SIGSTOP)
    started = monitors()
    finish(controller)
    journal = hosts.settled(name)
    assert journal["outcome"] == "rolled_back", journal
    assert wait_for(lambda: not any(alive(pid) for pid in started), what="the conmon podman left on host-b to go")
    assert not [pid for pid in hosts.processes_running(container_id) if mount_ns(pid) == hosts.mount_ns("b")]
    containers.runs_only_on("a", name, container_id, before)


@pytest.mark.slow
def test_a_slow_podman_restore_does_not_keep_the_source_down_past_its_lease(hosts, containers, tmp_path):
    """The target's Podman restore is slow (held here): the lease (20 s) runs out and the source gives up; the target,
    which no longer hears from it, stops its restore at once, so the source container runs again soon after the lease,
    not once the restore has timed out (60 s) and its copy been removed (it stayed down about three times the lease)."""
    containers.image_on_b(True)
    name = "c-slowrestore"
    container_id = containers.start(name)
    before = containers.count("a", name)
    hosts.arm("b", "importing", name)
    started = time.monotonic()
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(name, migrate_lease=20, migrate_timeout=60))
    hosts.reached("b", name, "importing")
    podman_pid = hosts.journal("b", name)["engine_process"][0]
    os.kill(podman_pid, signal.SIGSTOP)
    hosts.clear_failpoints("b")
    try:
        wait_for(lambda: containers.state("a", name).startswith("running"), timeout=120, what="the source container to run again")
        down = time.monotonic() - started
    finally:
        if alive(podman_pid):
            os.kill(podman_pid, signal.SIGCONT)
    finish(controller)
    assert hosts.settled(name)["outcome"] == "rolled_back"
    assert down < 20 + 15, "the source container stayed down %.0f s, its lease being 20 s" % down
    containers.runs_only_on("a", name, container_id, before)


@pytest.mark.slow
@pytest.mark.parametrize("who, host, phase, outcome", matrix(CONTAINER_MATRIX))
def test_kill_matrix_container(hosts, containers, tmp_path, who, host, phase, outcome):
    containers.image_on_b(True)
    name = "c-%s-%s" % (who, phase.replace("_", "-"))
    container_id = containers.start(name)
    before = containers.count("a", name)
    controller = kill_at(hosts, name, single(name), tmp_path, who, host, phase)
    journal = hosts.settled(name)
    finish(controller)
    assert journal["outcome"] == outcome, journal

    if outcome == "completed":
        containers.runs_only_on("b", name, container_id, before)
        assert containers.state("a", name) == ""
    elif outcome == "rolled_back":
        # Restored in place from Podman's own copy: the same container, its memory intact; nothing on the target.
        containers.runs_only_on("a", name, container_id, before)
        assert containers.state("b", name) == "" and journal["target_cleanup"] == "done", journal
        assert "committed" not in [entry["phase"] for entry in journal["history"]], journal
    else:
        # The target was unreachable when it mattered: the source container stays stopped with its checkpoint and is
        # not restored here until the target says its copy is gone (or, committed, never).
        assert containers.state("a", name) == "exited %s" % container_id
        assert containers.state("b", name) in ("", "running %s" % container_id)
        assert ("never resumed" if phase == "committed" else "until the target confirms") in journal["error"], journal
        told = (tmp_path / "controller.log").read_text()
        assert "is in doubt" in told and "stopped by its checkpoint, which Podman keeps" in told, told

    rerun = hosts.migrate(**single(name))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    containers.runs_only_on("b", name, container_id, before)
    assert containers.state("a", name) == ""
    if outcome == "completed":
        assert recap_changed(rerun.stdout) == 0, "a completed migration is reported, not redone: " + rerun.stdout
    target = hosts.journal("b", name)
    assert target["outcome"] == "completed" and target["id"] == hosts.journal("a", name)["id"], target


def test_a_rolled_back_migration_resumes_the_source_container_with_its_connection(hosts, containers, tmp_path):
    """Frozen with tcp_established, the source container is restored in place with it again when the migration rolls
    back: Podman does not remember it, and without it criu refuses the connection's state and the container stays
    down. (The connection is the container's own, over its loopback: the test hosts share one bridge, and their
    containers' addresses collide.)"""
    containers.image_on_b(True)
    name = "c-tcp-back"
    talk = ("(sleep 100000 | nc -l -p 9000 > /tmp/got &); sleep 0.5; "  # busybox nc ends at its stdin's end
            "(while :; do echo tick; sleep 0.1; done | nc 127.0.0.1 9000 &); " + COUNTER)
    container_id = containers.start(name, talk)
    ticks = wait_for(lambda: lines(containers, name) >= 5 and lines(containers, name), what="ticks over the connection")
    before = containers.count("a", name)
    controller = kill_at(hosts, name, single(name, migrate_tcp_established=True), tmp_path, "target", "b", "restoring")
    journal = hosts.settled(name)
    finish(controller)
    assert journal["outcome"] == "rolled_back", journal
    containers.runs_only_on("a", name, container_id, before)
    resumed = lines(containers, name)
    assert resumed >= ticks
    wait_for(lambda: lines(containers, name) > resumed + 10, what="ticks going on over the same connection")


def test_a_rolled_back_migration_resumes_the_source_container_under_a_new_address_when_its_own_was_taken(
        hosts, containers, tmp_path):
    """Stopped for its export, the source container holds no address in Podman's address book: a container started
    there while the migration runs may be given it. The rollback brings the source back under a new address, and says
    so, where it used to end in doubt with the container stopped."""
    containers.image_on_b(True)
    name = "c-readdressed"
    container_id = containers.start(name)
    own = containers.podman("a", "container inspect --format '{{.NetworkSettings.IPAddress}}' %s" % name)
    before = containers.count("a", name)
    hosts.arm("b", "restoring", name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(name))
    restoring = hosts.reached("b", name, "restoring")
    containers.podman("a", "run -d --name %s-thief --ip %s %s sleep 100000" % (name, own, hosts.image))
    os.kill(restoring, signal.SIGKILL)
    hosts.clear_failpoints("b")
    journal = hosts.settled(name)
    finish(controller)
    assert journal["outcome"] == "rolled_back", journal
    containers.runs_only_on("a", name, container_id, before)
    new = containers.podman("a", "container inspect --format '{{.NetworkSettings.IPAddress}}' %s" % name)
    assert new and new != own
    said = ("it came back with the address %s: its own, %s, was given to another container while it was stopped"
            % (new, own))
    assert journal["source_resumed_as"] == said, journal
    assert said in (tmp_path / "controller.log").read_text()


def lines(containers: Containers, name: str) -> int:
    return len(containers.podman("a", "exec %s cat /tmp/got" % name, check=False).splitlines())


@contextlib.contextmanager
def podman_held(hosts: Hosts, host: str, failpoint: str, name: str, tmp_path) -> t.Iterator[subprocess.Popen]:
    """Start migration ``name``; where Podman has just started on ``host`` (``failpoint``), hold Podman stopped, kill
    the process that started it, and yield the controller once that host undoes the migration (and for 2 s more);
    Podman goes on when the block ends."""
    hosts.arm(host, failpoint, name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(name))
    starter = hosts.reached(host, name, failpoint)
    journal = hosts.journal(host, name)
    assert journal is not None, "no journal on host-%s at %s" % (host, failpoint)
    engine_pid = journal["engine_process"][0]
    os.kill(engine_pid, signal.SIGSTOP)
    try:
        os.kill(starter, signal.SIGKILL)
        hosts.clear_failpoints(host)
        wait_for(lambda: (hosts.journal(host, name) or {}).get("phase") == "aborting", timeout=60,
                 what="host-%s to undo the migration" % host)
        time.sleep(2)
        yield controller
    finally:
        os.kill(engine_pid, signal.SIGCONT)


def test_a_migration_killed_while_podman_checkpoints_waits_for_podman_then_restores_in_place(hosts, containers, tmp_path):
    """The driver dies while Podman checkpoints the container (Podman held stopped until recovery has begun): the
    recovery waits for Podman to be done with the container, then restores it in place. Deciding while Podman still
    works would find it running, leave it, and lose it when Podman's checkpoint stops it a moment later."""
    containers.image_on_b(True)
    name = "c-midexport"
    container_id = containers.start(name)
    before = containers.count("a", name)
    with podman_held(hosts, "a", "checkpointing", name, tmp_path) as controller:
        assert (hosts.journal("a", name) or {}).get("outcome") is None, "the recovery must wait for Podman"
    journal = hosts.settled(name)
    finish(controller)
    assert journal["outcome"] == "rolled_back", journal
    containers.runs_only_on("a", name, container_id, before)
    assert containers.state("b", name) == ""


@pytest.mark.slow
def test_a_link_lost_before_the_export_is_sealed_rolls_back_at_once(hosts, containers, tmp_path):
    """Until the source has sent the whole export the target cannot restore anything: a link lost before that resumes
    the source container at once, without waiting to hear from the target (its leftovers go at the next run)."""
    containers.image_on_b(True)
    name = "c-linkearly"
    container_id = containers.start(name)
    # 64 MiB of file changes in the export: more than ssh and the kernel buffer, so the transfer stalls on the link.
    containers.podman("a", "exec %s busybox dd if=/dev/urandom of=/big bs=1M count=64" % name)
    before = containers.count("a", name)
    hosts.arm("a", "transferring", name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(name))
    hosts.reached("a", name, "transferring")
    frozen_link = hosts.freeze_link("b")
    try:
        hosts.clear_failpoints("a")
        journal = hosts.settled(name)
    finally:
        hosts.thaw_link(frozen_link)
    finish(controller)
    assert journal["outcome"] == "rolled_back" and not journal.get("sealed_sent"), journal
    containers.runs_only_on("a", name, container_id, before)
    rerun = hosts.migrate(**single(name))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    containers.runs_only_on("b", name, container_id, before)


def test_a_target_killed_while_podman_restores_waits_for_podman_then_removes_its_copy(hosts, containers, tmp_path):
    """The target's agent dies while Podman restores the container there (Podman held stopped until the abort has
    begun): the abort waits for that restore, then removes what it made, and only then does the source container run
    again. Looking before Podman is done would find no container, and let a copy appear on the target beside the
    source's."""
    containers.image_on_b(True)
    name = "c-midimport"
    container_id = containers.start(name)
    before = containers.count("a", name)
    with podman_held(hosts, "b", "importing", name, tmp_path) as controller:
        assert hosts.journal("b", name)["outcome"] is None, "the abort must wait for Podman"
    journal = hosts.settled(name)
    finish(controller)
    assert journal["outcome"] == "rolled_back", journal
    containers.runs_only_on("a", name, container_id, before)
    time.sleep(1)
    assert containers.state("b", name) == "", "nothing of the container may remain on the target"
