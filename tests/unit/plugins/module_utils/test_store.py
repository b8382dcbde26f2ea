"""The checkpoint directory on disk (_store)."""

import json
import os
import stat
import threading

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import IS_ROOT, OTHER_UID, dir_fd, make_checkpoint, needs_root


def _real_of(fd):
    return os.readlink("/proc/self/fd/%d" % fd)


# --- location ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o1755])
def test_location_accepts_a_parent_only_its_owner_writes(tmp_path, mode):
    os.chmod(tmp_path, mode)
    with store.location(str(tmp_path / "ckpt")) as loc:
        assert (loc.parent, loc.name, loc.path) == (str(tmp_path), "ckpt", str(tmp_path / "ckpt"))
        assert _real_of(loc.parent_fd) == str(tmp_path)
        fd = loc.parent_fd
    with pytest.raises(OSError):
        os.fstat(fd)  # closed when the block ends


@pytest.mark.parametrize("mode", [0o1777, 0o1770])
def test_location_refuses_a_shared_sticky_parent(tmp_path, mode):
    """A root-owned sticky directory may lie above a checkpoint, never hold it: others could create its lock, its
    logs or a sibling first."""
    if not IS_ROOT:
        pytest.skip("only root can make a root-owned sticky directory")
    os.chmod(tmp_path, mode)
    with pytest.raises(CriuError) as err:
        with store.location(str(tmp_path / "ckpt")):
            pass
    assert err.value.msg.startswith("Checkpoint parent %s is a directory other users can write (mode %04o)" % (tmp_path, mode))
    assert "/var/lib/criu/NAME" in err.value.msg and err.value.details["path"] == str(tmp_path)
    sticky = tmp_path / "migrations"
    sticky.mkdir()
    os.chmod(sticky, mode)
    for opener in (store.open_or_create_dir, store.open_existing_dir):
        with pytest.raises(CriuError, match="Migration directory %s is a directory other users can write" % sticky):
            opener(str(sticky), "Migration directory")
    assert os.listdir(sticky) == [] and os.listdir(tmp_path) == ["migrations"]


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_location_refuses_writable_non_sticky_parent(tmp_path, mode):
    os.chmod(tmp_path, mode)
    with pytest.raises(CriuError, match="Directory %s is writable by group/others" % tmp_path) as err:
        with store.location(str(tmp_path / "ckpt")):
            pytest.fail("an untrusted parent was accepted")
    assert "chmod go-w %s" % tmp_path in err.value.msg and store.CHAIN_REMEDY in err.value.msg


@needs_root
def test_location_refuses_an_ancestor_of_another_user(tmp_path):
    (tmp_path / "a").mkdir()
    os.chown(tmp_path / "a", OTHER_UID, OTHER_UID)
    with pytest.raises(CriuError, match="owned by uid %d" % OTHER_UID):
        with store.location(str(tmp_path / "a" / "ckpt")):
            pass


@pytest.mark.parametrize("dest", ["relative/ckpt", "ckpt", "/"])
def test_location_refuses_relative_and_root(dest):
    with pytest.raises(CriuError, match="must be an absolute path"):
        with store.location(dest):
            pass


def test_location_missing_parent_or_not_a_directory(tmp_path):
    with pytest.raises(CriuError, match="%s does not exist" % (tmp_path / "missing")):
        with store.location(str(tmp_path / "missing" / "ckpt")):
            pass
    assert not os.path.lexists(tmp_path / "missing")
    with store.location(str(tmp_path / "missing" / "ckpt"), make_parents=True) as loc:
        assert loc.parent == str(tmp_path / "missing") and loc.name == "ckpt"
    assert stat.S_IMODE(os.lstat(tmp_path / "missing").st_mode) == 0o700 and not os.path.lexists(tmp_path / "missing" / "ckpt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CriuError, match="not a directory"):
        with store.location(str(tmp_path / "file" / "ckpt")):
            pass


def test_location_refuses_a_name_too_long_for_its_lock(tmp_path):
    with pytest.raises(CriuError, match="accepts at most 200"):
        with store.location(str(tmp_path / ("x" * 201))):
            pass
    with store.location(str(tmp_path / ("x" * 200))) as loc:
        assert loc.name == "x" * 200


def test_location_normalises_and_follows_a_trusted_parent_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with store.location(str(tmp_path / "link") + "/./ckpt/") as loc:
        assert (loc.parent, loc.name) == (str(tmp_path / "real"), "ckpt")


def test_location_does_not_follow_a_final_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "ckpt").symlink_to(tmp_path / "real")
    with store.location(str(tmp_path / "ckpt")) as loc:
        assert (loc.parent, loc.name) == (str(tmp_path), "ckpt")
        with pytest.raises(CriuError, match="Checkpoint directory %s is a symlink" % (tmp_path / "ckpt")):
            store.Checkpoint.open(loc)


# --- Checkpoint.open / open_subdir ----------------------------------------------------------------


def _open(path):
    with store.location(str(path)) as loc:
        return store.Checkpoint.open(loc)


def test_checkpoint_open(tmp_path):
    assert _open(tmp_path / "absent") is None
    (tmp_path / "dir").mkdir()
    with _open(tmp_path / "dir") as opened:
        assert opened.path == str(tmp_path / "dir") and opened.images_fd == -1
        assert _real_of(opened.fd) == str(tmp_path / "dir")
    assert opened.fd == -1 and opened.images_fd == -1  # closed by the with block
    (tmp_path / "dir" / "images").mkdir()
    with _open(tmp_path / "dir") as opened:
        assert _real_of(opened.images_fd) == str(tmp_path / "dir" / "images")


@pytest.mark.parametrize("make, message", [
    (lambda p: p.symlink_to(p.parent / "elsewhere"), "is a symlink; refusing to follow it"),
    (lambda p: p.symlink_to(p.parent / "nowhere"), "is a symlink; refusing to follow it"),
    (lambda p: p.write_text("x"), "exists and is not a directory"),
])
def test_checkpoint_open_refuses_what_is_not_a_directory(tmp_path, make, message):
    (tmp_path / "elsewhere").mkdir()
    make(tmp_path / "ckpt")
    with pytest.raises(CriuError, match="Checkpoint directory %s %s" % (tmp_path / "ckpt", message)) as err:
        _open(tmp_path / "ckpt")
    assert err.value.details["path"] == str(tmp_path / "ckpt")


def test_checkpoint_open_refuses_a_symlinked_images_dir(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "real-images").mkdir()
    (tmp_path / "ckpt" / "images").symlink_to(tmp_path / "real-images")
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(CriuError, match="Images directory %s is a symlink" % (tmp_path / "ckpt" / "images")):
        _open(tmp_path / "ckpt")
    assert sorted(os.listdir("/proc/self/fd")) == before  # the checkpoint's fd was closed


def test_checkpoint_open_refuses_a_writable_checkpoint_or_images_dir(tmp_path):
    (tmp_path / "ckpt" / "images").mkdir(parents=True)
    os.chmod(tmp_path / "ckpt" / "images", 0o777)
    with pytest.raises(CriuError, match="Images directory .* is writable by group/others"):
        _open(tmp_path / "ckpt")
    os.chmod(tmp_path / "ckpt" / "images", 0o700)
    os.chmod(tmp_path / "ckpt", 0o775)
    with pytest.raises(CriuError, match="Checkpoint directory .* is writable by group/others"):
        _open(tmp_path / "ckpt")


@needs_root
def test_checkpoint_open_refuses_another_owner(tmp_path):
    (tmp_path / "dir").mkdir()
    os.chown(tmp_path / "dir", 4321, 4321)
    with pytest.raises(CriuError, match="owned by uid 4321"):
        _open(tmp_path / "dir")


def test_open_checkpoint_says_when_nothing_is_there(tmp_path):
    with store.location(str(tmp_path / "absent")) as loc:
        with pytest.raises(CriuError, match="No checkpoint at %s: the directory does not exist" % (tmp_path / "absent")):
            store.open_checkpoint(loc)


def test_checkpoint_entries_read_and_unexpected_entries(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "dump.log").write_text("log")
    (tmp_path / "ckpt" / "stray").write_text("x")
    (tmp_path / "ckpt" / "restore.log").symlink_to("/etc/passwd")
    (tmp_path / "ckpt" / "checkpoint.hmac").mkdir()
    with _open(tmp_path / "ckpt") as opened:
        assert opened.entries() == ["checkpoint.hmac", "dump.log", "images", "metadata.json", "restore.log", "stray"]
        assert opened.unexpected_entries() == ["checkpoint.hmac (not a regular file)", "restore.log (not a regular file)", "stray"]
        assert opened.read("dump.log") == b"log" and opened.read("restored.json") is None
        with pytest.raises(CriuError, match="restore.log is a symlink"):
            opened.read("restore.log")


# --- replace_problem ----------------------------------------------------------------------------


def _replace_problem(path):
    with store.location(str(path)) as loc:
        return store.replace_problem(loc)


@pytest.mark.parametrize("schema", [1, 2])
def test_replace_problem_allows_absent_empty_and_our_checkpoints(tmp_path, schema):
    assert _replace_problem(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert _replace_problem(tmp_path / "empty") is None
    make_checkpoint(tmp_path / "ours", schema=schema)  # ours whichever schema made it
    assert _replace_problem(tmp_path / "ours") is None


@pytest.mark.parametrize("content", [None, b"not json", b"[1]", b'{"schema_version": "1"}', b"{}"])
def test_replace_problem_refuses_a_directory_we_did_not_make(tmp_path, content):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.db").write_text("x")
    if content is not None:
        (tmp_path / "data" / "metadata.json").write_bytes(content)
    problem = _replace_problem(tmp_path / "data")
    assert problem is not None and "is not a checkpoint directory made by nucleus.criu" in problem


def test_replace_problem_refuses_links_and_files(tmp_path):
    make_checkpoint(tmp_path / "ours")
    (tmp_path / "link").symlink_to(tmp_path / "ours")
    assert "is a symlink" in _replace_problem(tmp_path / "link")
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in _replace_problem(tmp_path / "file")
    os.unlink(tmp_path / "ours" / "metadata.json")
    (tmp_path / "ours" / "metadata.json").symlink_to("/etc/hostname")
    assert "is not a checkpoint directory made by nucleus.criu" in _replace_problem(tmp_path / "ours")


# --- enclosing_checkpoint ---------------------------------------------------------------------


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


# --- Lock ---------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_removed(tmp_path):
    lock_path = str(tmp_path / ".ckpt.lock")
    with store.location(str(tmp_path / "ckpt")) as loc:
        with store.Lock(loc, timeout=5) as lock:
            assert lock.path == lock_path and os.path.exists(lock_path)
            assert stat.S_IMODE(os.stat(lock_path).st_mode) == 0o600
            with pytest.raises(CriuError, match="holds the lock .*ckpt.lock") as err:
                with store.Lock(loc, timeout=0.2):
                    pytest.fail("second lock acquired while the first is held")
            assert err.value.details["path"] == lock_path
        assert not os.path.lexists(lock_path)
        with store.Lock(loc, timeout=0.2):  # free again
            pass


def test_lock_waiter_gets_it_after_release(tmp_path):
    order = []
    held = threading.Event()

    def holder():
        with store.location(str(tmp_path / "ckpt")) as loc, store.Lock(loc, timeout=5):
            held.set()
            order.append("holder-in")
            threading.Event().wait(0.3)
            order.append("holder-out")

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(5)
    with store.location(str(tmp_path / "ckpt")) as loc, store.Lock(loc, timeout=5):
        order.append("waiter-in")
    thread.join()
    assert order == ["holder-in", "holder-out", "waiter-in"]
    assert not os.path.lexists(str(tmp_path / ".ckpt.lock"))


def test_lock_refuses_a_symlinked_lock_file_and_never_follows_it(tmp_path):
    (tmp_path / "elsewhere").write_text("precious")
    (tmp_path / ".ckpt.lock").symlink_to(tmp_path / "elsewhere")
    with store.location(str(tmp_path / "ckpt")) as loc:
        with pytest.raises(CriuError, match="Cannot open the lock file %s" % (tmp_path / ".ckpt.lock")):
            with store.Lock(loc, timeout=0.2):
                pass
    assert (tmp_path / "elsewhere").read_text() == "precious"
    assert os.path.islink(tmp_path / ".ckpt.lock")


@needs_root
def test_lock_refuses_a_lock_file_another_user_made(tmp_path):
    (tmp_path / ".ckpt.lock").write_text("")
    os.chown(tmp_path / ".ckpt.lock", OTHER_UID, OTHER_UID)
    with store.location(str(tmp_path / "ckpt")) as loc:
        with pytest.raises(CriuError, match="The lock file .* is owned by uid %d, not by uid 0" % OTHER_UID):
            with store.Lock(loc, timeout=0.2):
                pass


# --- Staging and publish --------------------------------------------------------------------------


def test_staging(tmp_path):
    with store.location(str(tmp_path / "ckpt")) as loc:
        staging = store.Staging(loc)
        try:
            assert os.path.dirname(staging.path) == str(tmp_path)
            assert staging.name.startswith(".ckpt.staging-") and staging.path == str(tmp_path / staging.name)
            assert stat.S_IMODE(os.stat(staging.path).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(os.path.join(staging.path, "images")).st_mode) == 0o700
            assert _real_of(staging.fd) == staging.path
            assert _real_of(staging.images_fd) == os.path.join(staging.path, "images")
            assert store.Staging(loc).name != staging.name
        finally:
            staging.remove()
        assert not os.path.lexists(staging.path) and staging.fd == -1


def _staged(loc, content):
    staging = store.Staging(loc)
    store.write_file(staging.fd, store.METADATA, content)
    return staging


def test_publish_new_dest(tmp_path):
    with store.location(str(tmp_path / "ckpt")) as loc:
        staging = _staged(loc, b"new")
        staging.publish()
    assert not os.path.exists(staging.path) and staging.fd == -1 and staging.images_fd == -1
    assert (tmp_path / "ckpt" / store.METADATA).read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_publish_replaces_existing_dest_without_litter(tmp_path):
    with store.location(str(tmp_path / "ckpt")) as loc:
        _staged(loc, b"old").publish()
        (tmp_path / "ckpt" / "images" / "pages-1.img").write_bytes(b"old pages")
        _staged(loc, b"new").publish()
    assert (tmp_path / "ckpt" / store.METADATA).read_bytes() == b"new"
    assert os.listdir(tmp_path / "ckpt" / "images") == []
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no .ckpt.old-* nor .ckpt.staging-*


def test_publish_over_an_empty_directory(tmp_path):
    (tmp_path / "ckpt").mkdir()
    with store.location(str(tmp_path / "ckpt")) as loc:
        _staged(loc, b"new").publish()
    assert (tmp_path / "ckpt" / store.METADATA).read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_removing_the_replaced_checkpoint_does_not_follow_symlinks(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("x")
    with store.location(str(tmp_path / "ckpt")) as loc:
        _staged(loc, b"old").publish()
        (tmp_path / "ckpt" / "images" / "link").symlink_to(tmp_path / "keep")
        _staged(loc, b"new").publish()
    assert (tmp_path / "keep" / "file").read_text() == "x"
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "keep"]


def test_remove_tree_does_not_follow_symlinks(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("x")
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "link").symlink_to(tmp_path / "keep")
    store.remove_tree(str(tmp_path / "gone"))
    store.remove_tree(str(tmp_path / "never-existed"))
    assert not os.path.lexists(tmp_path / "gone") and (tmp_path / "keep" / "file").exists()


def test_remove_litter(tmp_path):
    for name in (".ckpt.staging-0123abcd", ".ckpt.old-89abcdef", ".other.staging-00000000", "keep"):
        (tmp_path / name / "images").mkdir(parents=True)
    (tmp_path / ".ckpt.staging-file").write_text("not a directory")
    (tmp_path / ".ckpt.staging-link").symlink_to(tmp_path / "keep")
    with store.location(str(tmp_path / "ckpt")) as loc:
        store.remove_litter(loc)
    assert sorted(os.listdir(tmp_path)) == [".ckpt.staging-file", ".ckpt.staging-link", ".other.staging-00000000", "keep"]
    assert (tmp_path / "keep" / "images").is_dir()


@needs_root
def test_remove_litter_leaves_what_another_user_made(tmp_path):
    (tmp_path / ".ckpt.staging-0123abcd").mkdir()
    os.chown(tmp_path / ".ckpt.staging-0123abcd", OTHER_UID, OTHER_UID)
    with store.location(str(tmp_path / "ckpt")) as loc:
        store.remove_litter(loc)
    assert os.path.isdir(tmp_path / ".ckpt.staging-0123abcd")


# --- files under a directory fd -------------------------------------------------------------------


@pytest.mark.parametrize("replace", [False, True])
def test_write_file_mode_0600_even_with_permissive_umask(tmp_path, replace):
    old = os.umask(0)
    try:
        with dir_fd(tmp_path) as fd:
            store.write_file(fd, "metadata.json", b"{}", replace=replace)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "metadata.json").st_mode) == 0o600
    assert (tmp_path / "metadata.json").read_bytes() == b"{}"
    assert os.listdir(tmp_path) == ["metadata.json"]


def test_write_file_refuses_to_write_through_a_symlink(tmp_path):
    (tmp_path / "victim").write_bytes(b"precious")
    (tmp_path / "metadata.json").symlink_to(tmp_path / "victim")
    with dir_fd(tmp_path) as fd:
        with pytest.raises((OSError, CriuError)):
            store.write_file(fd, "metadata.json", b"evil")
    assert (tmp_path / "victim").read_bytes() == b"precious"


def test_write_file_refuses_to_overwrite_without_replace(tmp_path):
    (tmp_path / "metadata.json").write_bytes(b"old")
    with dir_fd(tmp_path) as fd:
        with pytest.raises(FileExistsError):
            store.write_file(fd, "metadata.json", b"new")
        store.write_file(fd, "metadata.json", b"new", replace=True)
    assert (tmp_path / "metadata.json").read_bytes() == b"new"


def test_write_file_replace_swaps_the_link_not_its_target(tmp_path):
    (tmp_path / "victim").write_bytes(b"precious")
    (tmp_path / "restored.json").symlink_to(tmp_path / "victim")
    (tmp_path / ".restored.json.tmp").symlink_to(tmp_path / "victim")
    with dir_fd(tmp_path) as fd:
        store.write_file(fd, "restored.json", b"new", replace=True)
    assert (tmp_path / "victim").read_bytes() == b"precious"
    assert not os.path.islink(tmp_path / "restored.json")
    assert (tmp_path / "restored.json").read_bytes() == b"new"


def test_write_file_goes_to_the_directory_the_fd_holds(tmp_path):
    """The fd pins the directory: one renamed away after it was opened still gets the file, not its replacement."""
    (tmp_path / "ckpt").mkdir()
    with dir_fd(tmp_path / "ckpt") as fd:
        os.rename(tmp_path / "ckpt", tmp_path / "moved")
        (tmp_path / "ckpt").mkdir()
        store.write_file(fd, "metadata.json", b"{}")
    assert os.listdir(tmp_path / "ckpt") == [] and os.listdir(tmp_path / "moved") == ["metadata.json"]


def test_read_small_file(tmp_path, monkeypatch):
    (tmp_path / "ok").write_bytes(b"0123456789")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    os.mkfifo(tmp_path / "fifo")
    with dir_fd(tmp_path) as fd:
        assert store.read_small_file(fd, "absent", "/x/absent") is None
        assert store.read_small_file(fd, "ok", "/x/ok") == b"0123456789"
        with pytest.raises(CriuError, match="/x/link is a symlink") as err:
            store.read_small_file(fd, "link", "/x/link")
        assert err.value.details == {"path": "/x/link"}
        with pytest.raises(CriuError, match="not a regular file"):
            store.read_small_file(fd, "fifo", "/x/fifo")  # must not block on the FIFO either
        monkeypatch.setattr(store, "MAX_SMALL_FILE", 9)
        with pytest.raises(CriuError, match="10 bytes, larger than"):
            store.read_small_file(fd, "ok", "/x/ok")


def test_read_small_file_refuses_directory(tmp_path):
    (tmp_path / "dir").mkdir()
    with dir_fd(tmp_path) as fd:
        with pytest.raises(CriuError, match="not a regular file"):
            store.read_small_file(fd, "dir", str(tmp_path / "dir"))


def test_fsync_dir_entries_flushes_regular_files_and_the_directory(tmp_path, monkeypatch):
    (tmp_path / "a.img").write_bytes(b"a")
    (tmp_path / "b.img").write_bytes(b"b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("/etc/hostname")
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(_real_of(fd)), real(fd)))
    with dir_fd(tmp_path) as fd:
        store.fsync_dir_entries(fd)
    assert sorted(flushed) == sorted([str(tmp_path), str(tmp_path / "a.img"), str(tmp_path / "b.img")])
    assert flushed[-1] == str(tmp_path)


@pytest.mark.parametrize("replace", [False, True])
def test_write_file_flushes_file_and_directory_unless_not_durable(tmp_path, monkeypatch, replace):
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(_real_of(fd)), real(fd)))
    with dir_fd(tmp_path) as fd:
        store.write_file(fd, "metadata.json", b"{}", replace=replace)
        assert flushed == [str(tmp_path / (".metadata.json.tmp" if replace else "metadata.json")), str(tmp_path)]
        del flushed[:]
        store.write_file(fd, "restored.json", b"[]", replace=replace, durable=False)
        assert flushed == []
    assert (tmp_path / "metadata.json").read_bytes() == b"{}" and (tmp_path / "restored.json").read_bytes() == b"[]"
    assert stat.S_IMODE(os.stat(tmp_path / "restored.json").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["metadata.json", "restored.json"]


@pytest.mark.parametrize("durable", [True, False])
def test_publish_flushes_the_parent_unless_not_durable(tmp_path, monkeypatch, durable):
    with store.location(str(tmp_path / "ckpt")) as loc:
        staging = _staged(loc, b"new")
        flushed = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(_real_of(fd)), real(fd)))
        staging.publish(durable=durable)
    assert flushed == ([str(tmp_path)] if durable else [])
    assert (tmp_path / "ckpt" / store.METADATA).read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_copy_file_does_not_flush(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "work" / "restore.log").write_text("the log")
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("a copied log is not flushed"))
    with dir_fd(tmp_path / "ckpt") as fd:
        assert store.copy_file(str(tmp_path / "work"), "restore.log", fd) is True
    assert (tmp_path / "ckpt" / "restore.log").read_text() == "the log"


def test_copy_file(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "work" / "restore.log").write_text("the log")
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "ckpt" / "restore.log").symlink_to(tmp_path / "victim")
    with dir_fd(tmp_path / "ckpt") as fd:
        assert store.copy_file(str(tmp_path / "work"), "restore.log", fd) is True
        assert store.copy_file(str(tmp_path / "work"), "stats-restore", fd) is False
    assert (tmp_path / "ckpt" / "restore.log").read_text() == "the log" and not os.path.islink(tmp_path / "ckpt" / "restore.log")
    assert (tmp_path / "victim").read_text() == "precious"
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["restore.log"]


def test_private_dir():
    with store.private_dir("nucleus-criu-test-") as path:
        assert os.path.dirname(path) == os.path.realpath("/tmp") and os.path.basename(path).startswith("nucleus-criu-test-")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700 and os.stat(path).st_uid == os.geteuid()
        with open(os.path.join(path, "restore.log"), "w") as handle:
            handle.write("x")
    assert not os.path.lexists(path)
    with pytest.raises(RuntimeError):
        with store.private_dir("nucleus-criu-test-") as path:
            raise RuntimeError("boom")
    assert not os.path.lexists(path)


@pytest.mark.parametrize("schema", [1, 2])
def test_metadata_of_a_checkpoint_made_here_parses(tmp_path, schema):
    metadata = make_checkpoint(tmp_path / "ckpt", schema=schema)
    assert metadata["schema_version"] == schema
    with _open(tmp_path / "ckpt") as opened:
        assert json.loads(opened.read(store.METADATA)) == metadata


def test_open_or_create_dir_makes_missing_parents_and_open_existing_dir_makes_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "var" / "lib" / "nucleus-criu" / "migrations")
    assert store.open_existing_dir(path, "Migration directory") is None
    assert os.listdir(tmp_path) == []
    asked = []
    real_statvfs = os.statvfs
    monkeypatch.setattr(store.os, "statvfs", lambda where: asked.append(where) or real_statvfs(where))
    assert store.free_bytes_for(path) > 0
    monkeypatch.undo()
    assert asked == [str(tmp_path)], "the estimate comes from the nearest existing ancestor (free bytes change meanwhile)"
    fd, real = store.open_or_create_dir(path, "Migration directory")
    os.close(fd)
    assert real == path and stat.S_IMODE(os.lstat(path).st_mode) == 0o700
    fd, again = store.open_existing_dir(path, "Migration directory")
    os.close(fd)
    assert again == path
