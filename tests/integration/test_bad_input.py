"""Bad input gets a clear error that names the cause and the fix, and changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import typing as t

import pytest

from conftest import alive, run_module, tree_digest


def _snapshot(path):
    return sorted(os.listdir(path))


@pytest.fixture
def running(workloads):
    return workloads()


def test_nonexistent_pid(ckpt_dir):
    result = run_module("criu_checkpoint", dict(pid=4194304 + 7, dest=str(ckpt_dir / "x")))
    assert result["failed"] and "No process with pid" in result["msg"] and "Check the pid" in result["msg"], result
    assert _snapshot(ckpt_dir) == []


PF_KTHREAD = 0x00200000


def a_kernel_thread() -> t.Optional[int]:
    """A kernel thread visible here (by its flags, not by its pid: in a PID namespace pid 2 is an ordinary process and
    no kernel thread is visible at all)."""
    for entry in sorted(os.listdir("/proc"), key=lambda name: (len(name), name)):
        try:
            with open("/proc/%s/stat" % entry) as handle:
                fields = handle.read().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(fields[6]) & PF_KTHREAD:
            return int(entry)
    return None


@pytest.mark.parametrize("system, words", [("init", "it is init"), ("kernel thread", "kernel thread")])
def test_refused_system_pids(ckpt_dir, system, words):
    pid = 1 if system == "init" else a_kernel_thread()
    if pid is None:
        pytest.skip("no kernel thread is visible in this PID namespace")
    result = run_module("criu_checkpoint", dict(pid=pid, dest=str(ckpt_dir / "x")))
    assert result["failed"] and words in result["msg"] and "Give the pid" in result["msg"], result
    assert _snapshot(ckpt_dir) == []


def test_zombie(ckpt_dir):
    child = subprocess.Popen(["true"])
    try:
        while open("/proc/%d/stat" % child.pid).read().rpartition(")")[2].split()[0] != "Z":
            pass
        result = run_module("criu_checkpoint", dict(pid=child.pid, dest=str(ckpt_dir / "x")))
        assert result["failed"] and "zombie" in result["msg"], result
    finally:
        child.wait()
    assert _snapshot(ckpt_dir) == []


def test_own_ancestor(ckpt_dir):
    """pytest runs ansible, which runs the module: checkpointing it would freeze the caller itself."""
    result = run_module("criu_checkpoint", dict(pid=os.getpid(), dest=str(ckpt_dir / "x")))
    assert result["failed"] and "one of its ancestors" in result["msg"], result
    assert alive(os.getpid()) and _snapshot(ckpt_dir) == []


@pytest.mark.parametrize("content, words", [
    (None, "Cannot read pidfile"),
    (b"", "does not hold a pid"),
    (b"12abc\n", "does not hold a pid"),
    (b"Error code: 255", "does not hold a pid"),
])
def test_bad_pidfile(ckpt_dir, tmp_path, content, words):
    pidfile = tmp_path / "job.pid"
    if content is not None:
        pidfile.write_bytes(content)
    result = run_module("criu_checkpoint", dict(pidfile=str(pidfile), dest=str(ckpt_dir / "x")))
    assert result["failed"] and words in result["msg"] and str(pidfile) in result["msg"], result
    assert _snapshot(ckpt_dir) == []


def test_pidfile_symlink_followed_only_when_trusted(running, ckpt_dir, tmp_path):
    """A pidfile reached through a root-owned symlink (as /var/run -> /run) is read; one through another user's is not."""
    real = tmp_path / "real.pid"
    real.write_text("%d\n" % running.pid)
    link = tmp_path / "link.pid"
    link.symlink_to(real)
    os.lchown(str(link), 65534, 65534)
    result = run_module("criu_checkpoint", dict(pidfile=str(link), dest=str(ckpt_dir / "x"), leave_running=True))
    assert result["failed"] and "Symlink %s is owned by uid 65534" % link in result["msg"], result
    assert _snapshot(ckpt_dir) == []
    os.lchown(str(link), 0, 0)
    result = run_module("criu_checkpoint", dict(pidfile=str(link), dest=str(ckpt_dir / "x"), leave_running=True))
    assert result["changed"] and result["pid"] == running.pid, result


@pytest.mark.parametrize("timeout", [0, -5])
def test_timeout_must_be_positive(running, ckpt_dir, timeout):
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / "x"), timeout=timeout))
    assert result["failed"] and "timeout must be a positive" in result["msg"], result
    assert _snapshot(ckpt_dir) == [] and alive(running.pid)


def test_key_and_key_file_together(running, ckpt_dir, tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("secret")
    keyfile.chmod(0o600)
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / "x"), hmac_key="k", hmac_key_file=str(keyfile)))
    assert result["failed"] and "mutually exclusive" in result["msg"], result
    assert "secret" not in str(result)


def test_key_file_readable_by_others(running, ckpt_dir, tmp_path):
    keyfile = tmp_path / "key"
    keyfile.write_text("secret")
    keyfile.chmod(0o644)
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / "x"), hmac_key_file=str(keyfile)))
    assert result["failed"] and "chmod 0600" in result["msg"], result
    assert _snapshot(ckpt_dir) == []


def test_leave_running_and_leave_stopped(running, ckpt_dir):
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / "x"), leave_running=True, leave_stopped=True))
    assert result["failed"] and "mutually exclusive" in result["msg"], result


def test_untrusted_criu_path(running, ckpt_dir, tmp_path):
    """A criu in a group-writable directory is refused before it can run."""
    shady = tmp_path / "shady"
    shady.mkdir(mode=0o775)
    os.chmod(shady, 0o775)
    marker = tmp_path / "ran"
    fake = shady / "criu"
    fake.write_text("#!/bin/sh\ntouch %s\necho 'Version: 9.9'\n" % marker)
    fake.chmod(0o755)
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / "x"), criu_path=str(fake), leave_running=True))
    assert result["failed"] and "writable by group/others" in result["msg"] and "chmod go-w" in result["msg"], result
    assert not marker.exists(), "the untrusted binary must never run"
    assert _snapshot(ckpt_dir) == [] and alive(running.pid)


def test_dest_symlink_refused(running, ckpt_dir, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (ckpt_dir / "link").symlink_to(real)
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / "link"), leave_running=True))
    assert result["failed"] and "is a symlink" in result["msg"], result
    assert os.listdir(real) == [] and _snapshot(ckpt_dir) == ["link"]


def test_dest_parent_world_writable(running, tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(parent / "x"), leave_running=True))
    assert result["failed"] and "writable by group/others" in result["msg"] and "chmod go-w %s" % parent in result["msg"], result
    assert os.listdir(parent) == []


def test_dest_inside_another_checkpoint(running, ckpt_dir):
    outer = ckpt_dir / "outer"
    assert run_module("criu_checkpoint", dict(pid=running.pid, dest=str(outer), leave_running=True))["changed"]
    before = tree_digest(str(outer))
    result = run_module("criu_checkpoint", dict(pid=running.pid, dest=str(outer / "images" / "inner"), leave_running=True, force=True))
    assert result["failed"] and "lies inside the checkpoint" in result["msg"], result
    assert tree_digest(str(outer)) == before


def test_restore_missing_src(tmp_path):
    result = run_module("criu_restore", dict(src=str(tmp_path / "nothing")))
    assert result["failed"] and "No checkpoint at" in result["msg"], result


def test_verify_not_a_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    result = run_module("criu_verify", dict(path=str(empty)))
    assert result["failed"] and "metadata.json is missing" in result["msg"], result


def test_restore_dir_owned_by_another_user(running, ckpt_dir):
    dest = ckpt_dir / "foreign"
    assert run_module("criu_checkpoint", dict(pid=running.pid, dest=str(dest), leave_running=True))["changed"]
    os.chown(dest, 4321, 4321)
    try:
        result = run_module("criu_restore", dict(src=str(dest)))
        assert result["failed"] and "owned by uid 4321" in result["msg"], result
    finally:
        shutil.rmtree(dest)
