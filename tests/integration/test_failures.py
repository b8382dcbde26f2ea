"""Failure paths leave nothing broken: the workload runs, DEST is absent, images are untouched."""

from __future__ import annotations

import os
import secrets
import socket

from conftest import alive, free_port, kill_checkpoint_at, proc_state, processes_running, run_module, tree_digest, wait_for


def test_failed_dump_leaves_process_running_and_no_dest(workloads, ckpt_dir, tmp_path):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "peer.sock"))
    server.listen(1)
    with server:
        workload = workloads("--unix-connect", str(tmp_path / "peer.sock"))
        peer = server.accept()[0]  # the other half of the connection lives outside the tree
        start = workload.state()
        dest = ckpt_dir / "fails"
        # Even with ext_unix_sk, CRIU cannot dump half of a unix stream connection.
        result = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), ext_unix_sk=True))
        assert result["failed"], result
        assert "unix stream" in result["msg"] and "still running" in result["msg"], result["msg"]
        assert result["log"] and os.path.isfile(result["log"]), "the failed dump's log must be kept and named"
        assert not dest.exists()
        assert not [n for n in os.listdir(ckpt_dir) if "staging" in n or n == "fails"], os.listdir(ckpt_dir)
        assert alive(workload.pid)
        wait_for(lambda: workload.state()[1] > start[1] + 2, what="the workload to keep counting")
        peer.close()


def test_failed_restore_leaves_images_identical(workloads, ckpt_dir):
    port = free_port()
    workload = workloads("--tcp", str(port), pid_namespace=True)
    dest = ckpt_dir / "busyport"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), leave_running=True))["changed"]
    images = tree_digest(str(dest / "images"))
    result = run_module("criu_restore", dict(src=str(dest)))
    assert result["failed"] and "criu restore failed" in result["msg"], result
    assert result["log"].endswith("restore.log") and result["errors"], result
    assert tree_digest(str(dest / "images")) == images
    assert not (dest / "restored.json").exists()
    assert set(processes_running(workload.state_file)) == {workload.proc.pid, workload.pid}, "only the original may run"


def test_restore_refuses_busy_pids_before_running_criu(workloads, ckpt_dir):
    workload = workloads()
    dest = ckpt_dir / "busy"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), leave_running=True))["changed"]
    result = run_module("criu_restore", dict(src=str(dest)))
    assert result["failed"] and "PIDs %d" % workload.pid in result["msg"] and "PID namespace" in result["msg"], result
    assert not (dest / "restore.log").exists(), "criu must not even have been started"
    verdict = run_module("criu_verify", dict(path=str(dest), check_host=True))
    assert verdict["failed"] and any("in use" in p for p in verdict["problems"]), verdict


def test_restore_timeout_kills_criu_and_the_restored_tree(workloads, ckpt_dir):
    """A truncated pages image makes criu restore hang with the task spinning; nothing may be left behind."""
    workload = workloads("--mem", "32")
    dest = ckpt_dir / "truncated"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest)))["changed"]
    workload.reap()
    pages = max((dest / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    os.truncate(pages, pages.stat().st_size // 2)
    refused = run_module("criu_restore", dict(src=str(dest)))
    assert refused["failed"] and "size expected" in refused["msg"], "verification must catch truncation first"
    wait_for(lambda: not os.path.exists("/proc/%d" % workload.pid), what="the original pid to be reaped")
    result = run_module("criu_restore", dict(src=str(dest), verify=False, timeout=5))
    assert result["failed"] and result.get("timed_out") and "did not finish within 5s" in result["msg"], result
    assert processes_running(workload.state_file) == [], "criu killed on timeout must not orphan the restored task"
    assert not (dest / "restored.json").exists()


def test_a_checkpoint_killed_after_the_dump_leaves_nothing_stopped_for_good(workloads, ckpt_dir):
    """The module dies after criu's dump, before the publish: the tree is left stopped, with its connection in criu's
    hands. The rerun resumes it and its connection, then dumps it running: the checkpoint restores a server that
    answers on the same connection. (A rerun that dumped the stopped tree made a checkpoint that restored it
    stopped.)"""
    port = free_port()
    workload = workloads("--tcp", str(port), pid_namespace=True)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client:
        client.sendall(b"next\n")
        token, count = client.recv(128).decode().split()
        name = "killed-%s" % secrets.token_hex(3)
        dest = ckpt_dir / name
        args = dict(pid=workload.pid, dest=str(dest), tcp_established=True)
        kill_checkpoint_at(args, name, "dumped")
        assert not dest.exists(), "the run was to die before the publish"
        assert proc_state(workload.pid) == "T", "criu's dump leaves the tree stopped until the publish"

        rerun = run_module("criu_checkpoint", args)
        assert rerun["changed"], rerun.get("msg", rerun)
        workload.reap()
        restored = run_module("criu_restore", dict(src=str(dest), tcp_established=True))
        assert restored["changed"], restored
        workload.adopt(restored["pid"])
        assert proc_state(restored["pid"]) != "T", "the checkpoint restores a running server"
        client.sendall(b"next\n")
        reply = client.recv(128).decode().split()
    assert reply[0] == token and int(reply[1]) > int(count), "the same server, its memory and connection kept"
    assert rerun["actions"][0].startswith("Resumed pid %d and its 0 descendant(s)" % workload.pid), rerun["actions"]


def test_a_checkpoint_killed_after_the_publish_has_its_rerun_end_the_tree(workloads, ckpt_dir):
    """The module dies after publishing the checkpoint, before ending the tree it left stopped: the rerun finds the
    checkpoint of this very tree, and ends the tree, as the checkpoint says it is (it stayed stopped for good)."""
    workload = workloads(pid_namespace=True)
    before = workload.state()
    name = "published-%s" % secrets.token_hex(3)
    dest = ckpt_dir / name
    args = dict(pid=workload.pid, dest=str(dest))
    kill_checkpoint_at(args, name, "published")
    assert dest.is_dir() and proc_state(workload.pid) == "T", "the checkpoint published, its tree stopped"
    rerun = run_module("criu_checkpoint", args)
    assert rerun["changed"] and not alive(workload.pid), rerun.get("msg", rerun)
    assert rerun["actions"] == ["End pid %d (python), which a run that died after publishing its checkpoint left stopped"
                                % workload.pid], rerun["actions"]
    again = run_module("criu_checkpoint", args)
    assert not again["changed"] and again["actions"] == [], again
    workload.reap()
    restored = run_module("criu_restore", dict(src=str(dest)))
    assert restored["changed"], restored
    workload.adopt(restored["pid"])
    after = wait_for(lambda: workload.state()[1] > before[1] and workload.state(), what="the restored workload counting")
    assert after[0] == before[0], "the checkpoint's memory: the same token"


def test_a_dump_blocked_by_criu_s_proc_mount_point_names_the_directory_to_remove(workloads, ckpt_dir):
    # A workload in its own PID namespace without its own /proc: criu mounts one in its working directory, under the
    # name proc.crtools. One there already (another dump at that moment, or one a killed criu left) stops the dump.
    workload = workloads(pid_namespace=True, minimum=3)
    leftover = os.path.join(os.readlink("/proc/%d/cwd" % workload.pid), "proc.crtools")
    os.mkdir(leftover, 0o700)
    dest = ckpt_dir / "blocked"
    result = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest)))
    assert result["failed"] and "remove the empty directory proc.crtools" in result["msg"], result
    assert not dest.exists() and alive(workload.pid)
    os.rmdir(leftover)
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), leave_running=True))["changed"]
