"""Failure paths leave nothing broken: the workload runs, DEST is absent, images are untouched."""

from __future__ import annotations

import os
import socket

from conftest import alive, free_port, processes_running, run_module, tree_digest, wait_for


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
