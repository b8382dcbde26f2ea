"""Real workloads: each criu option the modules take, on a real process that needs it.

Each test proves the need first (without the option the checkpoint is refused, naming the module option,
and the workload runs on), then checkpoints and restores with it, the workload carrying on from its own
memory. tests/integration/option_workload.py builds the resources.
"""

from __future__ import annotations

import os
import socket
import subprocess
import typing as t

import pytest

from conftest import REPO, Workload, free_port, run_module, wait_for

PROGRAM = os.path.join(REPO, "tests", "integration", "option_workload.py")


@pytest.fixture
def option_workloads(workloads):
    """option_workload.py in a given mode, in its own PID namespace."""

    def start(mode: str, *args: str, net_namespace: bool = False) -> Workload:
        return workloads(mode, *args, pid_namespace=True, minimum=3, program=PROGRAM, net_namespace=net_namespace)

    return start


def info(workload: Workload) -> str:
    return wait_for(lambda: open(workload.state_file + ".info").read().strip() or "-", what="the workload's info")


def refused_and_still_running(workload: Workload, dest: str, option: str, **args: t.Any) -> None:
    """Without the option: refused, the module option named as the remedy, nothing written, the workload untouched."""
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest, **args))
    assert made["failed"] and ("%s=true" % option in made["msg"] or "set %s" % option in made["msg"]), made
    assert not os.path.exists(dest)
    token, count = workload.state()
    assert workload.wait_count(count + 2)[0] == token, "the workload must run on, untouched"


def checkpoint_and_restore(workload: Workload, dest: str, restore_args: t.Optional[t.Mapping[str, t.Any]] = None,
                           **args: t.Any) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any]]:
    """Checkpoint (ending the workload), restore it, check it carries on from its own memory."""
    token, count = workload.state()
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest, **args))
    assert made["changed"] and not made["failed"], made
    workload.reap()
    restored = run_module("criu_restore", dict(dict(src=dest), **(restore_args or {})))
    assert restored["changed"] and not restored["failed"], restored
    workload.adopt(restored["pid"])
    assert workload.wait_count(count + 3)[0] == token
    return made, restored


def test_tcp_closed_on_both_sides_is_recorded_so_it_comes_back(option_workloads, ckpt_dir):
    """criu dumps sockets closed on both sides without tcp_established, yet writes their TCP state; the dump's own
    check records that the restore needs tcp_established, so the workload it ended comes back."""
    workload = option_workloads("closed-tcp")
    made, _restored = checkpoint_and_restore(workload, str(ckpt_dir / "ck"))
    images = os.listdir(str(ckpt_dir / "ck" / "images"))
    assert any(name.startswith("tcp-stream-") for name in images), images
    assert made["checkpoint"]["restore_needs"] == {"tcp_established": True}, made["checkpoint"]


def test_tcp_close(option_workloads, ckpt_dir):
    # In a network namespace of its own: the connection's ends die with the original, so the restore can bind them.
    workload = option_workloads("established-tcp", net_namespace=True)
    assert info(workload) == "open"
    refused_and_still_running(workload, str(ckpt_dir / "refused"), "tcp_established")
    made, _restored = checkpoint_and_restore(workload, str(ckpt_dir / "ck"), tcp_close=True)
    assert made["checkpoint"]["options"]["tcp_close"] is True
    assert wait_for(lambda: info(workload) == "closed", what="the connection to be closed after the restore")


def test_tcp_close_cannot_be_undone_at_restore(option_workloads, ckpt_dir):
    workload = option_workloads("established-tcp")
    dest = str(ckpt_dir / "ck")
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest, tcp_close=True, leave_running=True))["changed"]
    for args, words in (({"tcp_close": False}, "can restore its TCP connections only closed"),
                        ({"tcp_established": True}, "its connections were not saved")):
        refused = run_module("criu_restore", dict(src=dest, **args))
        assert refused["failed"] and words in refused["msg"], refused
    both = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "both"), tcp_close=True,
                                              tcp_established=True, leave_running=True))
    assert both["failed"] and "contradict each other" in both["msg"], both
    # false is no choice at all: a playbook may template either one
    kept = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "false"), tcp_close=True,
                                              tcp_established=False, leave_running=True))
    assert kept["changed"] and kept["checkpoint"]["options"]["tcp_close"] is True, kept


def test_skip_in_flight(option_workloads, ckpt_dir):
    port = free_port()
    workload = option_workloads("listen", str(port))
    client = socket.create_connection(("127.0.0.1", port))  # never accepted: in flight
    try:
        refused_and_still_running(workload, str(ckpt_dir / "refused"), "skip_in_flight")
        checkpoint_and_restore(workload, str(ckpt_dir / "ck"), skip_in_flight=True)
    finally:
        client.close()
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # the restored listening socket accepts connections again


def test_link_remap(option_workloads, ckpt_dir, tmp_path):
    files = tmp_path / "files"
    files.mkdir(mode=0o700)
    workload = option_workloads("link-remap", str(files))
    assert info(workload) == "linked contents"
    refused_and_still_running(workload, str(ckpt_dir / "refused"), "link_remap")
    checkpoint_and_restore(workload, str(ckpt_dir / "ck"), link_remap=True)
    assert info(workload) == "linked contents"


def test_ghost_limit(option_workloads, ckpt_dir, tmp_path):
    files = tmp_path / "files"
    files.mkdir(mode=0o700)
    workload = option_workloads("ghost", str(files))
    before = info(workload)
    refused_and_still_running(workload, str(ckpt_dir / "refused"), "ghost_limit")
    made, _restored = checkpoint_and_restore(workload, str(ckpt_dir / "ck"), ghost_limit="8M")
    assert made["checkpoint"]["options"]["ghost_limit"] == 8 << 20
    assert info(workload) == before, "the deleted file's contents came back"


@pytest.mark.parametrize("args, words", [
    ({"ghost_limit": "lots"}, "is not a size"),
    ({"ghost_limit": 0}, "between 1 byte and 1T"),
    ({"manage_cgroups": "soft", "ghost_limit": "2X"}, "is not a size"),
])
def test_bad_option_values_are_refused_before_anything_runs(option_workloads, ckpt_dir, args, words):
    workload = option_workloads("closed-tcp")
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "x"), **args))
    assert made["failed"] and words in made["msg"], made
    assert not os.path.exists(str(ckpt_dir / "x"))


CPU_CGROUPS = "/sys/fs/cgroup/cpu"


@pytest.mark.skipif(not os.path.isfile(os.path.join(CPU_CGROUPS, "cgroup.procs")), reason="no cgroup v1 cpu hierarchy here")
def test_cgroup_root_places_the_restored_workload(option_workloads, ckpt_dir):
    """manage_cgroups at dump records the workload's cgroups; cgroup_root at restore puts it where the operator wants
    (without it, the restore puts it back where it was)."""
    source, chosen = os.path.join(CPU_CGROUPS, "nucleus-test-src"), os.path.join(CPU_CGROUPS, "nucleus-test-dst")
    for path in (source, chosen):
        os.makedirs(path, exist_ok=True)

    def cpu_cgroup(pid: int) -> str:
        return [line.split(":", 2)[2] for line in open("/proc/%d/cgroup" % pid).read().splitlines() if line.split(":")[1] == "cpu"][0]
    try:
        for target, args in ((source, {}), (chosen, {"cgroup_root": ["cpu:/nucleus-test-dst"]})):
            workload = option_workloads("closed-tcp")
            with open(os.path.join(source, "cgroup.procs"), "w") as handle:
                handle.write(str(workload.pid))
            _made, restored = checkpoint_and_restore(workload, str(ckpt_dir / os.path.basename(target)),
                                                     restore_args=dict(args, manage_cgroups="soft"), manage_cgroups="soft")
            assert cpu_cgroup(restored["pid"]) == "/" + os.path.basename(target)
            workload.stop()
    finally:
        for path in (source, chosen):
            with open(os.path.join(path, "cgroup.procs")) as handle:
                for pid in handle.read().split():
                    with open(os.path.join(CPU_CGROUPS, "cgroup.procs"), "w") as root:
                        root.write(pid)
            os.rmdir(path)


def criu_lock_table(checkpoint: str) -> t.Optional[str]:
    """The nftables table criu's network lock of the dump in ``checkpoint`` left on this host, if any (criu names it
    after the run id its log opens with)."""
    with open(os.path.join(checkpoint, "dump.log")) as log:
        run_id = log.readline().rsplit("=", 1)[1].strip()
    table = "CRIU-%s" % run_id[:21]  # criu's 32-byte buffer for "inet CRIU-%s" cuts the run id
    listed = subprocess.run(["/usr/sbin/nft", "list", "table", "inet", table], capture_output=True, text=True, timeout=60,
                            check=False)
    return None if listed.returncode != 0 else table


def test_a_checkpoint_without_tcp_leaves_no_lock_table_on_the_host(workloads, ckpt_dir):
    """A dump that ends its workload never unlocks the network (criu keeps the lock for the restore): with
    network_lock nftables, each one left a table on the host, walked by every packet from then on. A tree in the host's
    network namespace without tcp_established is dumped with no lock, recorded as such, and restored the same."""
    workload = workloads()
    dest = str(ckpt_dir / "nolock")
    made, _restored = checkpoint_and_restore(workload, dest)
    assert made["checkpoint"]["options"]["network_lock"] == "skip", made["checkpoint"]["options"]
    assert criu_lock_table(dest) is None


def test_a_checkpoint_with_tcp_established_keeps_its_lock_for_the_restore(option_workloads, ckpt_dir):
    """With TCP connections to keep, the lock is criu's, as asked: the restore finds it and unlocks."""
    workload = option_workloads("established-tcp")
    made, _restored = checkpoint_and_restore(workload, str(ckpt_dir / "lock"), tcp_established=True)
    assert made["checkpoint"]["options"]["network_lock"] == "nftables", made["checkpoint"]["options"]
