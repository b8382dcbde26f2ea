"""criu_checkpoint's logic up to (never including) running criu (_checkpoint)."""

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _checkpoint as checkpoint
from ansible_collections.nucleus.criu.plugins.module_utils import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import make_checkpoint, wait_for

PARAMS = {
    "pid": None, "pidfile": None, "dest": None, "name": None, "force": False, "timeout": 30,
    "leave_running": False, "leave_stopped": False, "tcp_established": False, "ext_unix_sk": False,
    "file_locks": False, "shell_job": None, "network_lock": None, "hash_algorithm": "sha256",
    "lazy_pages": False, "page_server_port": 0,
    "hmac_key": None, "hmac_key_file": None, "criu_path": None,
}


@pytest.fixture
def workload(spawn):
    child = spawn(["sleep", "60"])
    assert wait_for(lambda: getattr(procfs.read_stat(child.pid), "comm", "") == "sleep")
    return child.pid, procfs.read_stat(child.pid)


def _ckpt_of(dest, pid, st, **kw):
    return make_checkpoint(dest, source={"boot_id": procfs.boot_id(), "arch": os.uname().machine},
                           process={"pid": pid, "starttime": st.starttime, "tree": [pid], "cmdline": ["sleep", "60"]}, **kw)


@pytest.mark.parametrize("timeout", [0, -1])
def test_require_timeout(timeout):
    with pytest.raises(CriuError, match="positive"):
        checkpoint.require_timeout(timeout)


def test_same_process(workload):
    pid, st = workload
    metadata = {"process": {"pid": pid, "starttime": st.starttime}, "source": {"boot_id": procfs.boot_id()}}
    assert checkpoint.same_process(metadata, pid)
    assert not checkpoint.same_process(dict(metadata, process={"pid": pid, "starttime": st.starttime + 1}), pid)
    assert not checkpoint.same_process(dict(metadata, source={"boot_id": "other-boot"}), pid)
    assert not checkpoint.same_process(metadata, pid + 1)


@pytest.mark.parametrize("shell_job, st, expected", [
    (None, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), False),
    (None, procfs.ProcStat(10, "x", "S", 1, 10, 10, 34816, 0, 1), True),
    (False, procfs.ProcStat(10, "x", "S", 1, 10, 10, 34816, 0, 1), False),
    (True, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), True),
])
def test_dump_options_shell_job(shell_job, st, expected):
    options = checkpoint.dump_options(dict(PARAMS, shell_job=shell_job, tcp_established=True), 10, st, [10])
    assert options["shell_job"] is expected and options["tcp_established"] is True
    assert set(options) == {"leave_running", "leave_stopped", "tcp_established", "ext_unix_sk", "file_locks", "shell_job", "network_lock",
                            "lazy_pages"}


def test_leave_running_and_stopped_exclusive(tmp_path):
    with pytest.raises(CriuError, match="mutually exclusive"):
        checkpoint.checkpoint(dict(PARAMS, pid=42, dest=str(tmp_path / "d"), leave_running=True, leave_stopped=True), False)


def test_lazy_pages_needs_leave_stopped(tmp_path):
    with pytest.raises(CriuError, match="lazy_pages needs leave_stopped=true"):
        checkpoint.checkpoint(dict(PARAMS, pid=42, dest=str(tmp_path / "d"), lazy_pages=True), False)


@pytest.mark.parametrize("port", [-1, 65536])
def test_page_server_port_must_be_a_port(tmp_path, port):
    with pytest.raises(CriuError, match="page_server_port must be a TCP port .* got %d" % port):
        checkpoint.checkpoint(dict(PARAMS, pid=42, dest=str(tmp_path / "d"), page_server_port=port), False)


def test_free_port_is_free():
    import socket
    port = checkpoint.free_port()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_dest_inside_a_checkpoint_refused(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CriuError, match="lies inside the checkpoint"):
        checkpoint.checkpoint(dict(PARAMS, pid=42, dest=str(tmp_path / "ckpt" / "images" / "x")), False)


def test_existing_checkpoint_of_same_process_is_unchanged(tmp_path, workload, monkeypatch):
    pid, st = workload
    metadata = _ckpt_of(tmp_path / "ckpt", pid, st)
    monkeypatch.setattr(checkpoint.CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    result = checkpoint.checkpoint(dict(PARAMS, pid=pid, dest=str(tmp_path / "ckpt")), False)
    assert result["changed"] is False and result["checkpoint"] == metadata and result["actions"] == []
    assert procfs.is_alive(pid, st.starttime)


def test_existing_checkpoint_of_another_process_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st)
    with pytest.raises(CriuError, match="already holds a checkpoint of another process .*force=true"):
        checkpoint.checkpoint(dict(PARAMS, pid=os.getpid(), dest=str(tmp_path / "ckpt")), False)


def test_existing_invalid_checkpoint_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st)
    (tmp_path / "ckpt" / "images" / "extra.img").write_bytes(b"x")
    with pytest.raises(CriuError, match="does not hold a valid checkpoint .*extra.img") as err:
        checkpoint.checkpoint(dict(PARAMS, pid=pid, dest=str(tmp_path / "ckpt")), False)
    assert err.value.details["problems"]


def test_signed_checkpoint_with_wrong_key_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st, key=b"right")
    with pytest.raises(CriuError, match="checkpoint.hmac does not match"):
        checkpoint.checkpoint(dict(PARAMS, pid=pid, dest=str(tmp_path / "ckpt"), hmac_key="wrong"), False)


def test_refuses_own_process_before_running_criu(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    with pytest.raises(CriuError, match="this module or one of its ancestors"):
        checkpoint.checkpoint(dict(PARAMS, pid=os.getpid(), dest=str(tmp_path / "new")), False)
    assert not os.path.lexists(tmp_path / "new")
