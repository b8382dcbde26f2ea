"""Checkpoint -> verify -> restore keeps a workload's memory: it continues its own count."""

from __future__ import annotations

import os
import socket

from conftest import alive, free_port, run_module, wait_for


def checkpoint_and_restore(workload, dest, **options):
    before = workload.state()
    result = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), **options))
    assert result["changed"] is True, result
    assert result["checkpoint"]["process"]["pid"] == workload.pid
    assert result["stats"]["image_bytes"] > 0
    workload.reap()
    tree = result["checkpoint"]["process"]["tree"]
    # Children orphaned by the dump are reaped by init a little later; their pids must be free to restore.
    wait_for(lambda: not any(os.path.exists("/proc/%d" % pid) for pid in tree), what="the dumped tree to be reaped")
    verified = run_module("criu_verify", dict(path=str(dest), check_host=True))
    assert verified.get("valid") is True, verified
    restored = run_module("criu_restore", dict(src=str(dest)))
    assert restored["changed"] is True, restored
    workload.adopt(restored["pid"])
    assert alive(restored["pid"])
    return before, restored


def assert_continues(workload, before, suffix=""):
    """Same token (same memory), and the count goes on from where it was rather than from 1."""
    token, count = before
    after = wait_for(lambda: workload.state(suffix)[1] > count + 2 and workload.state(suffix), what="count to advance")
    assert after[0] == token, "a different token means the process restarted instead of being restored"
    assert after[1] > count


def test_plain_process(workloads, ckpt_dir):
    workload = workloads(minimum=20)
    before, restored = checkpoint_and_restore(workload, ckpt_dir / "plain")
    assert restored["pid"] == workload.pid  # outside a PID namespace, CRIU restores the same pid
    assert_continues(workload, before)


def test_process_tree(workloads, ckpt_dir):
    workload = workloads("--children", "2", minimum=10)
    for suffix in (".1", ".2"):
        workload.wait_count(5, suffix)
    befores = {suffix: workload.state(suffix) for suffix in ("", ".1", ".2")}
    restored = checkpoint_and_restore(workload, ckpt_dir / "tree")[1]
    assert len(restored["checkpoint"]["process"]["tree"]) == 3
    for suffix, before in befores.items():
        assert_continues(workload, before, suffix)


def test_pid_namespace(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=20)
    before, restored = checkpoint_and_restore(workload, ckpt_dir / "pidns")
    assert restored["checkpoint"]["process"]["pid_namespace_init"] is True
    assert_continues(workload, before)


def test_pid_namespace_restores_while_original_runs(workloads, ckpt_dir):
    """Its own PID namespace is what lets a tree restore beside (or instead of) its original pids."""
    workload = workloads(pid_namespace=True, minimum=10)
    dest = ckpt_dir / "twin"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), leave_running=True))["changed"]
    restored = run_module("criu_restore", dict(src=str(dest)))
    assert restored["changed"] is True, restored
    workload.adopt(restored["pid"])
    assert restored["pid"] != workload.pid and alive(workload.pid) and alive(restored["pid"])


def test_tcp_connection_survives(workloads, ckpt_dir):
    port = free_port()
    workload = workloads("--tcp", str(port), minimum=5)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client:
        client.sendall(b"next\n")
        token, count = client.recv(128).decode().split()
        restored = checkpoint_and_restore(workload, ckpt_dir / "tcp", tcp_established=True)[1]
        assert restored["checkpoint"]["options"]["tcp_established"] is True
        client.sendall(b"next\n")
        reply = client.recv(128).decode().split()
    assert reply[0] == token, "the restored server must answer on the same connection with the same memory"
    assert int(reply[1]) > int(count)
