"""The checkpoint directory on disk (_store)."""

import os
import stat
import threading

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import needs_root


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o1777, 0o1770])
def test_check_parent_accepts_private_or_sticky(tmp_path, mode):
    os.chmod(tmp_path, mode)
    assert store.check_parent(str(tmp_path / "ckpt")) == str(tmp_path)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_check_parent_refuses_writable_non_sticky(tmp_path, mode):
    os.chmod(tmp_path, mode)
    with pytest.raises(CriuError, match="writable by group/others without the sticky bit"):
        store.check_parent(str(tmp_path / "ckpt"))


@pytest.mark.parametrize("dest", ["relative/ckpt", "ckpt", "/"])
def test_check_parent_refuses_relative_and_root(dest):
    with pytest.raises(CriuError, match="must be an absolute path"):
        store.check_parent(dest)


def test_check_parent_missing_or_not_a_directory(tmp_path):
    with pytest.raises(CriuError, match="Create it first"):
        store.check_parent(str(tmp_path / "missing" / "ckpt"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CriuError, match="not a directory"):
        store.check_parent(str(tmp_path / "file" / "ckpt"))


def test_inspect_dir(tmp_path):
    assert store.inspect_dir(str(tmp_path / "absent")) is None
    (tmp_path / "dir").mkdir()
    assert stat.S_ISDIR(store.inspect_dir(str(tmp_path / "dir")).st_mode)
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    with pytest.raises(CriuError, match="is a symlink"):
        store.inspect_dir(str(tmp_path / "link"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(CriuError, match="not a directory"):
        store.inspect_dir(str(tmp_path / "file"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(CriuError, match="is a symlink"):
        store.inspect_dir(str(tmp_path / "dangling"))


@needs_root
def test_inspect_dir_refuses_another_owner(tmp_path):
    (tmp_path / "dir").mkdir()
    os.chown(tmp_path / "dir", 4321, 4321)
    with pytest.raises(CriuError, match="owned by uid 4321"):
        store.inspect_dir(str(tmp_path / "dir"))


def _fake_checkpoint(path):
    (path / store.IMAGES).mkdir(parents=True)
    (path / store.METADATA).write_text("{}")
    return str(path)


@pytest.mark.parametrize("rel", ["images/new", "images/a/b", "new", "sub/dir/new"])
def test_enclosing_checkpoint_detected(tmp_path, rel):
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    assert store.enclosing_checkpoint(os.path.join(ckpt, rel)) == ckpt


def test_enclosing_checkpoint_none(tmp_path):
    ckpt = _fake_checkpoint(tmp_path / "ckpt")
    assert store.enclosing_checkpoint(ckpt) is None  # DEST itself (force) is not "inside"
    assert store.enclosing_checkpoint(str(tmp_path / "other")) is None
    (tmp_path / "half" / store.IMAGES).mkdir(parents=True)  # images/ without metadata.json
    assert store.enclosing_checkpoint(str(tmp_path / "half" / "x")) is None


def test_dest_lock_is_exclusive_and_removed(tmp_path):
    dest = str(tmp_path / "ckpt")
    lock_path = str(tmp_path / ".ckpt.lock")
    with store.DestLock(dest, timeout=5) as lock:
        assert lock.path == lock_path and os.path.exists(lock_path)
        assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
        with pytest.raises(CriuError, match="holds the lock .*ckpt.lock") as err:
            with store.DestLock(dest, timeout=0.2):
                pytest.fail("second lock acquired while the first is held")
        assert err.value.details["path"] == lock_path
    assert not os.path.lexists(lock_path)
    with store.DestLock(dest, timeout=0.2):  # free again
        pass


def test_dest_lock_waiter_gets_it_after_release(tmp_path):
    dest = str(tmp_path / "ckpt")
    order = []
    held = threading.Event()

    def holder():
        with store.DestLock(dest, timeout=5):
            held.set()
            order.append("holder-in")
            threading.Event().wait(0.3)
            order.append("holder-out")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    with store.DestLock(dest, timeout=5):
        order.append("waiter-in")
    thread.join()
    assert order == ["holder-in", "holder-out", "waiter-in"]
    assert not os.path.lexists(str(tmp_path / ".ckpt.lock"))


def test_dest_lock_refuses_symlinked_lock_file_with_criu_error(tmp_path):
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / ".ckpt.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CriuError):
        with store.DestLock(str(tmp_path / "ckpt"), timeout=0.2):
            pass


def test_dest_lock_never_follows_a_symlink(tmp_path):
    (tmp_path / "elsewhere").write_text("precious")
    (tmp_path / ".ckpt.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises((OSError, CriuError)):
        with store.DestLock(str(tmp_path / "ckpt"), timeout=0.2):
            pass
    assert (tmp_path / "elsewhere").read_text() == "precious"


def test_make_staging(tmp_path):
    staging = store.make_staging(str(tmp_path / "ckpt"))
    assert os.path.dirname(staging) == str(tmp_path)
    assert os.path.basename(staging).startswith(".ckpt.staging-")
    assert stat.S_IMODE(os.stat(staging).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(staging, "images")).st_mode) == 0o700


def _staged(tmp_path, content):
    staging = store.make_staging(str(tmp_path / "ckpt"))
    store.write_file(staging, store.METADATA, content)
    return staging


def test_publish_new_dest(tmp_path):
    dest = str(tmp_path / "ckpt")
    staging = _staged(tmp_path, b"new")
    store.publish(staging, dest)
    assert not os.path.exists(staging)
    assert open(os.path.join(dest, store.METADATA), "rb").read() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_publish_replaces_existing_dest_without_litter(tmp_path):
    dest = str(tmp_path / "ckpt")
    store.publish(_staged(tmp_path, b"old"), dest)
    (tmp_path / "ckpt" / "images" / "pages-1.img").write_bytes(b"old pages")
    store.publish(_staged(tmp_path, b"new"), dest)
    assert open(os.path.join(dest, store.METADATA), "rb").read() == b"new"
    assert os.listdir(os.path.join(dest, "images")) == []
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no .ckpt.old-* nor .ckpt.staging-*


def test_remove_tree_does_not_follow_symlinks(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("x")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "link").symlink_to(tmp_path / "keep")
    store.remove_tree(str(tmp_path / "gone"))
    store.remove_tree(str(tmp_path / "never-existed"))
    assert not os.path.lexists(tmp_path / "gone") and (tmp_path / "keep" / "file").exists()


@pytest.mark.parametrize("replace", [False, True])
def test_write_file_mode_0600_even_with_permissive_umask(tmp_path, replace):
    old = os.umask(0)
    try:
        store.write_file(str(tmp_path), "metadata.json", b"{}", replace=replace)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "metadata.json").st_mode) == 0o600
    assert (tmp_path / "metadata.json").read_bytes() == b"{}"
    assert os.listdir(tmp_path) == ["metadata.json"]


def test_write_file_refuses_to_write_through_a_symlink(tmp_path):
    (tmp_path / "victim").write_bytes(b"precious")
    (tmp_path / "metadata.json").symlink_to(tmp_path / "victim")
    with pytest.raises((OSError, CriuError)):
        store.write_file(str(tmp_path), "metadata.json", b"evil")
    assert (tmp_path / "victim").read_bytes() == b"precious"


def test_write_file_replace_swaps_the_link_not_its_target(tmp_path):
    (tmp_path / "victim").write_bytes(b"precious")
    (tmp_path / "restored.json").symlink_to(tmp_path / "victim")
    (tmp_path / ".restored.json.tmp").symlink_to(tmp_path / "victim")
    store.write_file(str(tmp_path), "restored.json", b"new", replace=True)
    assert (tmp_path / "victim").read_bytes() == b"precious"
    assert not os.path.islink(tmp_path / "restored.json")
    assert (tmp_path / "restored.json").read_bytes() == b"new"


def test_write_file_refuses_symlinked_directory(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError):
        store.write_file(str(tmp_path / "link"), "metadata.json", b"{}")
    assert os.listdir(tmp_path / "real") == []


def test_read_small_file(tmp_path, monkeypatch):
    assert store.read_small_file(str(tmp_path), "absent") is None
    (tmp_path / "ok").write_bytes(b"0123456789")
    assert store.read_small_file(str(tmp_path), "ok") == b"0123456789"
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with pytest.raises(CriuError, match="is a symlink"):
        store.read_small_file(str(tmp_path), "link")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CriuError, match="not a regular file"):
        store.read_small_file(str(tmp_path), "fifo")  # must not block on the FIFO either
    monkeypatch.setattr(store, "MAX_SMALL_FILE", 9)
    with pytest.raises(CriuError, match="10 bytes, larger than"):
        store.read_small_file(str(tmp_path), "ok")


def test_read_small_file_refuses_directory(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(CriuError, match="not a regular file"):
        store.read_small_file(str(tmp_path), "dir")
