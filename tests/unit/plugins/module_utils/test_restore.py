"""criu_restore's logic before and around criu (_restore)."""

import json
import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils import _restore as restore
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import make_checkpoint

PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def _free_ckpt(dest, **kw):
    return make_checkpoint(dest, process={"pid": PID_MAX + 1, "tree": [PID_MAX + 1]}, **kw)


def _restored(dest, **record):
    with open(os.path.join(str(dest), "restored.json"), "w") as handle:
        json.dump(record, handle)


def test_live_restore(tmp_path, spawn):
    child = spawn(["sleep", "60"])
    st = procfs.read_stat(child.pid)
    metadata = _free_ckpt(tmp_path / "c")
    assert restore.live_restore(str(tmp_path / "c"), metadata) is None
    record = {"pid": child.pid, "starttime": st.starttime, "boot_id": procfs.boot_id(), "checkpoint_id": metadata["id"]}
    _restored(tmp_path / "c", **record)
    assert restore.live_restore(str(tmp_path / "c"), metadata) == record
    for bad in ({"boot_id": "other"}, {"starttime": st.starttime + 1}, {"pid": "1"}, {"pid": PID_MAX + 1},
                {"checkpoint_id": "another checkpoint"}):
        _restored(tmp_path / "c", **dict(record, **bad))
        assert restore.live_restore(str(tmp_path / "c"), metadata) is None, bad
    (tmp_path / "c" / "restored.json").write_text("not json")
    assert restore.live_restore(str(tmp_path / "c"), metadata) is None


def test_load_verified_accepts_valid(tmp_path):
    metadata = _free_ckpt(tmp_path / "c")
    assert restore.load_verified(str(tmp_path / "c"), None, True, False) == metadata
    assert restore.load_verified(str(tmp_path / "c"), None, False, False) == metadata


@pytest.mark.parametrize("verify", [True, False])
def test_load_verified_enforces_key_even_unverified(tmp_path, verify):
    _free_ckpt(tmp_path / "c")
    with pytest.raises(CriuError, match="Refusing to restore .*checkpoint.hmac is missing") as err:
        restore.load_verified(str(tmp_path / "c"), b"key", verify, False)
    assert err.value.details["problems"]


def test_load_verified_refuses_corrupt_images_when_verifying(tmp_path):
    _free_ckpt(tmp_path / "c")
    (tmp_path / "c" / "images" / "inventory.img").write_bytes(b"Inventory")
    with pytest.raises(CriuError, match="Refusing to restore .*inventory.img: sha256 expected"):
        restore.load_verified(str(tmp_path / "c"), None, True, False)


def test_restore_refuses_busy_pids(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "c", process={"pid": os.getpid(), "tree": [os.getpid()]})
    monkeypatch.setattr(restore.CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    params = {"timeout": 30, "hmac_key": None, "hmac_key_file": None, "src": str(tmp_path / "c"), "force": False, "lazy_pages_port": None,
              "verify": True, "require_signature": False}
    with pytest.raises(CriuError, match="Cannot restore .*PIDs %d" % os.getpid()):
        restore.restore(params, False)


def test_restore_refuses_missing_src_and_bad_timeout(tmp_path):
    params = {"timeout": 30, "hmac_key": None, "hmac_key_file": None, "src": str(tmp_path / "none"), "lazy_pages_port": None}
    with pytest.raises(CriuError, match="does not exist"):
        restore.restore(params, False)
    with pytest.raises(CriuError, match="positive"):
        restore.restore(dict(params, timeout=0), False)


def test_restore_is_idempotent_when_restored_process_lives(tmp_path, spawn, monkeypatch):
    child = spawn(["sleep", "60"])
    metadata = _free_ckpt(tmp_path / "c")
    record = {"pid": child.pid, "starttime": procfs.read_stat(child.pid).starttime, "boot_id": procfs.boot_id(),
              "checkpoint_id": metadata["id"]}
    _restored(tmp_path / "c", **record)
    monkeypatch.setattr(restore.CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    params = {"timeout": 30, "hmac_key": None, "hmac_key_file": None, "src": str(tmp_path / "c"), "force": False, "lazy_pages_port": None,
              "verify": True, "require_signature": False}
    assert restore.restore(params, False) == {"changed": False, "src": str(tmp_path / "c"), "pid": child.pid,
                                              "checkpoint": metadata, "restored": record, "actions": []}


def test_confirm_alive(spawn, tmp_path, monkeypatch):
    monkeypatch.setattr(restore, "HEALTH_DELAY", 0.01)
    child = spawn(["sleep", "60"])
    assert restore._confirm_alive(child.pid, "log", "src").pid == child.pid
    with pytest.raises(CriuError, match="reported success but the restored process %d exited" % (PID_MAX + 1)):
        restore._confirm_alive(PID_MAX + 1, "log", "src")


def test_write_pidfile_replaces_symlink_not_target(tmp_path):
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "app.pid").symlink_to(tmp_path / "victim")
    restore._write_pidfile(str(tmp_path / "app.pid"), 4242)
    assert (tmp_path / "victim").read_text() == "precious"
    assert (tmp_path / "app.pid").read_text() == "4242\n" and not (tmp_path / "app.pid").is_symlink()


@pytest.mark.parametrize("lazy, port, message", [
    (True, None, "is a post-copy checkpoint .*Give lazy_pages_port"),
    (False, 4000, "holds the full memory .*drop lazy_pages_port"),
])
def test_lazy_checkpoint_and_lazy_restore_must_match(lazy, port, message):
    with pytest.raises(CriuError, match=message):
        restore.require_matching_mode("/c", {"options": {"lazy_pages": lazy}}, port)


@pytest.mark.parametrize("lazy, port", [(True, 4000), (False, None), (False, 0)])
def test_matching_modes_pass(lazy, port):
    restore.require_matching_mode("/c", {"options": {"lazy_pages": lazy}}, port)
