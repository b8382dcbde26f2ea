"""Every criu option criu_checkpoint takes, through a real migration between the test hosts.

Each workload needs its option (tests/integration/option_workload.py builds the resource). Without it the migration is
refused before the decision, naming the option, and the workload runs on at the source; with it (given to the migrate
role per workload, or once for every workload) the workload moves to host-b and carries on from its own memory, its
resource with it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import typing as t

import pytest

from conftest import REPO, read_state, run_module, wait_for
from testhosts import MIGRATIONS, PLAYBOOK, Hosts, Remote
from test_migration import LEASE, assert_migrated

PORT = 8765  # in the workload's own network namespace
PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "option_workload.py")
CPU_CGROUPS = "/sys/fs/cgroup/cpu"
HAS_CPU_CGROUPS = os.path.isfile(os.path.join(CPU_CGROUPS, "cgroup.procs"))


class OptionWorkload(Remote):
    """option_workload.py in MODE on host-a, in its own PID namespace (and network namespace when it holds TCP)."""

    def __init__(self, hosts: Hosts, name: str, tmp: str, mode: str, arg: str = "", netns: bool = False,
                 own_session: bool = True) -> None:
        super().__init__(hosts, name, tmp, "%s %s" % (mode, arg), netns=netns, program=PROGRAM, own_session=own_session)

    def info(self) -> str:
        return wait_for(lambda: open(self.state_file + ".info").read().strip() or "-", what="%s's info" % self.name)


@pytest.fixture
def option_remote(hosts, tmp_path):
    started: t.List[OptionWorkload] = []
    files = tmp_path / "files"
    files.mkdir(mode=0o700)

    def start(name: str, mode: str, arg: str = "", **kwargs: t.Any) -> OptionWorkload:
        workload = OptionWorkload(hosts, name, str(tmp_path), mode, arg.format(files=files), **kwargs)
        started.append(workload)
        return workload

    yield start
    for workload in started:
        workload.stop()
        for host in ("a", "b"):
            hosts.run(host, "rm -rf %s/%s %s/%s.* %s/.%s.*" % (MIGRATIONS, workload.name, MIGRATIONS, workload.name,
                                                               MIGRATIONS, workload.name), check=False)


class DatagramPeer:
    """A datagram socket bound outside any workload's tree (as /dev/log is), read all the time: a full queue would
    block the workload's writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.5)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sock.recv(64)
                self.received += 1
            except socket.timeout:
                pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def dgram_peer(tmp_path):
    peer = DatagramPeer(str(tmp_path / "peer.sock"))
    yield peer
    peer.close()


@pytest.fixture
def in_flight_client():
    """A client outside the tree whose connection the workload's listening socket never accepts (in flight)."""
    started: t.List[subprocess.Popen] = []

    def connect(pid: int, port: int) -> None:
        code = "import socket, time; s = socket.create_connection(('127.0.0.1', %d)); print('up', flush=True); time.sleep(600)" % port
        client = subprocess.Popen(["nsenter", "--net=/proc/%d/ns/net" % pid, "python3", "-c", code], stdout=subprocess.PIPE,
                                  text=True)
        started.append(client)
        assert client.stdout is not None and client.stdout.readline().strip() == "up"

    yield connect
    for client in started:
        client.kill()
        client.wait()


def refused_by_name(hosts: Hosts, workload: Remote, remedy: str, **options: t.Any) -> None:
    """Without its option: refused, the ``remedy`` named, and the workload runs on at the source, alone."""
    token, count = read_state(workload.state_file)
    refused = hosts.migrate_module(workload, lease=LEASE, **options)
    assert refused["failed"] and remedy in refused["msg"], refused
    assert wait_for(lambda: workload.running_on("a") == [workload.pid], what="the source to run on")
    assert workload.copies() == [workload.pid], "no copy may exist elsewhere"
    workload.counts_on(token, count)


def restored_copy(workload: Remote) -> int:
    (pid,) = wait_for(lambda: workload.running_on("b"), what="%s to run on host-b" % workload.name)
    return pid


@pytest.mark.parametrize("mode, arg, remedy, netns, own_session", [
    ("established-tcp", "", "set tcp_established=true", True, True),
    ("listen", str(PORT), "set skip_in_flight=true", True, True),
    ("unix-dgram", "PEER", "set ext_unix_sk=true", False, True),
    ("flock", "{files}/lock", "set file_locks=true", False, True),
    ("link-remap", "{files}", "set link_remap=true", False, True),
    ("ghost", "{files}", "set ghost_limit to at least", False, True),
    # No option helps here: the remedy is how the workload is started, and shell_job is not offered in vain.
    ("append", "{files}/log", "unshare --pid --fork setsid", False, False),
])
def test_a_workload_that_needs_an_option_is_refused_by_name_without_it(hosts, option_remote, dgram_peer, in_flight_client,
                                                                       mode, arg, remedy, netns, own_session):
    workload = option_remote("needs-%s" % mode, mode, arg.replace("PEER", dgram_peer.path), netns=netns, own_session=own_session)
    if mode == "listen":
        in_flight_client(workload.pid, PORT)
    refused_by_name(hosts, workload, remedy)


def test_every_option_migrates_through_the_role(hosts, option_remote, dgram_peer, in_flight_client):
    """One run of the migrate role moves a workload per option: each given as the workload's own key, or once for
    every workload (migrate_ghost_limit, migrate_tcp_established; the tcp_close workload's own false wins)."""
    tcp = option_remote("opt-tcp-established", "established-tcp", netns=True)
    closing = option_remote("opt-tcp-close", "established-tcp", netns=True)
    listening = option_remote("opt-skip-in-flight", "listen", str(PORT), netns=True)
    in_flight_client(listening.pid, PORT)
    dgram = option_remote("opt-ext-unix-sk", "unix-dgram", dgram_peer.path)
    # The locked file is the host's own (/run is private to each test host); host-b has one at the same path. (On storage
    # both hosts share, the target's restore would wait for the frozen source's lock until the lease ran out.)
    locked = option_remote("opt-file-locks", "flock", "/run/opt-file-locks.lock")
    hosts.run("b", "touch /run/opt-file-locks.lock")
    remapped = option_remote("opt-link-remap", "link-remap", "{files}")
    ghost = option_remote("opt-ghost-limit", "ghost", "{files}")
    shell = option_remote("opt-shell-job", "append", "{files}/log")
    locked_net = option_remote("opt-network-lock", "established-tcp", netns=True)
    before = {w.name: (read_state(w.state_file), w.info()) for w in (tcp, closing, locked, remapped, ghost, locked_net)}
    assert before[tcp.name][1] == "open" and before[locked.name][1] == "locked" and before[remapped.name][1] == "linked contents"

    def item(workload: Remote, **options: t.Any) -> t.Dict[str, t.Any]:
        return dict(name=workload.name, source="host-a", target="host-b", pidfile=workload.pidfile, **options)

    result = hosts.migrate(migrate_lease=LEASE, migrate_cleanup="none", migrate_tcp_established=True, migrate_ghost_limit="8M", migrate_workloads=[
        item(tcp),
        item(closing, tcp_established=False, tcp_close=True),
        item(listening, skip_in_flight=True),
        item(dgram, ext_unix_sk=True),
        item(locked, file_locks=True),
        item(remapped, link_remap=True),
        item(ghost),
        item(shell, shell_job=True),
        item(locked_net, network_lock="iptables"),
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    for workload in (tcp, closing, locked, remapped, ghost, locked_net):
        (token, count), _info = before[workload.name]
        assert_migrated(workload, token, count)
    for workload in (listening, dgram, shell):
        assert workload.copies() == [restored_copy(workload)], "exactly one copy, on host-b"
    assert tcp.info() == "open" and locked_net.info() == "open", "established connections came along"
    assert wait_for(lambda: closing.info() == "closed", what="tcp_close's connection to be closed on host-b")
    assert locked.info() == "locked", "the flock came along"
    assert remapped.info() == "linked contents"
    assert ghost.info() == before[ghost.name][1], "the deleted file's contents came along"
    received = dgram_peer.received
    assert wait_for(lambda: dgram_peer.received > received + 5, what="the copy on host-b to write to the same peer")
    copy_ns = "/proc/%d/ns/net" % restored_copy(listening)
    accepted = subprocess.run(["nsenter", "--net=" + copy_ns, "python3", "-c",
                               "import socket; socket.create_connection(('127.0.0.1', %d), timeout=5)" % PORT], check=False)
    assert accepted.returncode == 0, "the restored listening socket accepts connections again"
    recorded = {w.name: sealed_options(hosts, w) for w in (tcp, closing, ghost, locked_net, shell)}
    assert recorded[tcp.name]["tcp_established"] is True and recorded[closing.name]["tcp_close"] is True
    assert recorded[closing.name]["tcp_established"] is False, "the workload's own false wins over migrate_tcp_established"
    assert recorded[ghost.name]["ghost_limit"] == 8 << 20 and recorded[locked_net.name]["network_lock"] == "iptables"
    assert recorded[shell.name]["shell_job"] is True


def sealed_options(hosts: Hosts, workload: Remote) -> t.Dict[str, t.Any]:
    """The criu options in the metadata.json that host-b verified and restored from (kept: migrate_cleanup=none)."""
    with open(hosts.path("b", "%s/%s/metadata.json" % (MIGRATIONS, workload.name))) as handle:
        return t.cast(t.Dict[str, t.Any], json.load(handle)["options"])


@pytest.mark.skipif(not HAS_CPU_CGROUPS, reason="no cgroup v1 cpu hierarchy here")
def test_manage_cgroups_and_cgroup_root_place_the_copy_on_the_target(hosts, option_remote, worker_id):
    """manage_cgroups records the workload's cgroups and recreates them on host-b; cgroup_root puts the copy where the
    operator says instead."""
    source = os.path.join(CPU_CGROUPS, "nucleus-mig-src-%s" % worker_id)
    chosen = os.path.join(CPU_CGROUPS, "nucleus-mig-dst-%s" % worker_id)
    for path in (source, chosen):
        os.makedirs(path, exist_ok=True)

    def cpu_cgroup(pid: int) -> str:
        return [line.split(":", 2)[2] for line in open("/proc/%d/cgroup" % pid).read().splitlines()
                if line.split(":")[1] == "cpu"][0]
    try:
        for name, options, expected in (("cg-kept", {}, source), ("cg-root", {"cgroup_root": ["cpu:/" + os.path.basename(chosen)]}, chosen)):
            workload = option_remote(name, "append", "{files}/%s.log" % name)
            with open(os.path.join(source, "cgroup.procs"), "w") as handle:
                handle.write(str(workload.pid))
            token, count = read_state(workload.state_file)
            migrated = hosts.migrate_module(workload, lease=LEASE, manage_cgroups="soft", **options)
            assert migrated["changed"] and not migrated.get("failed"), migrated
            pid = assert_migrated(workload, token, count)
            assert cpu_cgroup(pid) == "/" + os.path.basename(expected)
            workload.stop()
    finally:
        for path in (source, chosen):
            with open(os.path.join(path, "cgroup.procs")) as handle:
                for member in handle.read().split():
                    with open(os.path.join(CPU_CGROUPS, "cgroup.procs"), "w") as root:
                        root.write(member)
            os.rmdir(path)


def test_a_container_migration_refuses_options_podman_cannot_pass(hosts, option_remote):
    refused = run_module("criu_migrate", dict(name="ctr", container="nucleus-nonexistent", target="127.0.0.3", ghost_limit="8M",
                                              link_remap=True), host="host-a", inventory=hosts.inventory)
    assert refused["failed"] and "link_remap, ghost_limit cannot be used with a container" in refused["msg"], refused


def test_module_defaults_reach_the_role_and_the_key_comes_from_a_file(hosts, option_remote, tmp_path):
    """A play's module_defaults for group/nucleus.criu.criu apply to the role's migrations (it passes timeout only when
    migrate_timeout is set), and migrate_hmac_key_file signs the checkpoint the target verifies with the same key."""
    workload = option_remote("opt-defaults", "append", "{files}/defaults.log")
    key_file = "/run/opt-defaults.key"
    for host in ("a", "b"):  # each host's own /run
        hosts.run(host, "umask 077; printf %%s 0123456789abcdef0123456789abcdef > %s" % key_file)
    playbook = tmp_path / "play.yml"
    playbook.write_text("""
- name: Migrate with the group's defaults
  hosts: host-a
  gather_facts: false
  module_defaults:
    group/nucleus.criu.criu:
      timeout: 77
  roles:
    - role: nucleus.criu.migrate
      vars:
        migrate_source: host-a
        migrate_target: host-b
        migrate_pidfile: %s
        migrate_name: %s
        migrate_lease: %d
        migrate_cleanup: none
        migrate_hmac_key_file: %s
""" % (workload.pidfile, workload.name, LEASE, key_file))
    token, count = read_state(workload.state_file)
    played = subprocess.run([PLAYBOOK, "-i", hosts.inventory, str(playbook)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False)
    assert played.returncode == 0, played.stdout + played.stderr
    assert_migrated(workload, token, count)
    journal = hosts.journal("a", workload.name)
    assert journal is not None and journal["settings"]["timeout"] == 77, journal
    checkpoint = "%s/%s" % (MIGRATIONS, workload.name)
    verified = run_module("criu_verify", dict(path=checkpoint, hmac_key_file=key_file, require_signature=True), host="host-b",
                          inventory=hosts.inventory)
    assert verified["valid"] and not verified["failed"], verified


def test_a_rolled_back_migration_gives_its_tcp_connections_back(hosts, option_remote, tmp_path):
    """A dump that may end its tree leaves its TCP connections as the restore needs them: each socket in repair mode
    and criu's network lock (nftables: a table dropping the dumped connections, or the whole network namespace the
    tree has of its own). Rolled back, the source ran again with its connection dead. Both go before it runs now. (In a
    network namespace of its own: the test hosts share this machine's, where host-b could not restore the connection
    the frozen source still holds.)"""
    workload = option_remote("opt-rollback-tcp", "established-tcp", netns=True)
    assert workload.info() == "open"
    token, count = read_state(workload.state_file)
    hosts.arm("a", "target_restored", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), migrate_lease=LEASE, migrate_tcp_established=True,
                                     migrate_workloads=[dict(name=workload.name, source="host-a", target="host-b",
                                                             pidfile=workload.pidfile)])
    os.kill(hosts.reached("a", workload.name, "target_restored"), 9)  # the driver: its lease keeper rolls back
    hosts.clear_failpoints("a")
    journal = hosts.settled(workload.name)
    controller.wait(timeout=300)
    assert journal["outcome"] == "rolled_back", journal
    moved_on = wait_for(lambda: read_state(workload.state_file)[1] > count + 10 and read_state(workload.state_file), timeout=30,
                        what="the rolled-back workload to count on over its TCP connection")
    assert moved_on[0] == token and workload.info() == "open" and journal["tcp_kept"]
