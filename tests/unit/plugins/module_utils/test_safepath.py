"""Reaching a path safely: every directory and symlink on the way checked, then used by fd (_safepath)."""

import os
import stat
import threading

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import IS_ROOT, OTHER_UID, needs_root

REMEDY = "Do the right thing."
needs_root_sticky = pytest.mark.skipif(not IS_ROOT, reason="a root-owned sticky directory can only be made by root")


def fake_stat(mode, uid=0):
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


def real_of(fd):
    return os.readlink("/proc/self/fd/%d" % fd)


@pytest.fixture
def tree(tmp_path):
    """tmp/a/b (0755 dirs) holding the file f ("in b") and tmp/f ("top"); returns tmp_path."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    os.chmod(tmp_path / "a", 0o755)
    os.chmod(tmp_path / "a" / "b", 0o755)
    (tmp_path / "a" / "b" / "f").write_text("in b")
    (tmp_path / "a" / "f").write_text("in a")
    (tmp_path / "f").write_text("top")
    return tmp_path


def read_through(path):
    fd, real = safepath.open_file(str(path), "file", REMEDY)
    with os.fdopen(fd) as handle:
        return handle.read(), real


# --- entry_problem / require_trusted -------------------------------------------------------------


@pytest.mark.parametrize("mode, uid, euid, problem", [
    (stat.S_IFREG | 0o644, 0, 1234, None),
    (stat.S_IFREG | 0o600, 1234, 1234, None),
    (stat.S_IFREG | 0o664, 0, 1234, "is writable by group/others (mode 0664)"),
    (stat.S_IFREG | 0o646, 0, 0, "is writable by group/others (mode 0646)"),
    (stat.S_IFREG | 0o644, 4321, 1234, "is owned by uid 4321, not root or uid 1234"),
    (stat.S_IFDIR | 0o755, 0, 0, None),
    (stat.S_IFDIR | 0o1777, 0, 1234, None),
    (stat.S_IFDIR | 0o1770, 0, 1234, None),
    (stat.S_IFDIR | 0o1777, 1234, 1234, "is writable by group/others (mode 1777)"),
    (stat.S_IFDIR | 0o777, 0, 0, "is writable by group/others (mode 0777)"),
    (stat.S_IFREG | 0o1777, 0, 0, "is writable by group/others (mode 1777)"),  # sticky means nothing on a file
    (stat.S_IFLNK | 0o777, 0, 1234, None),  # a symlink's mode is meaningless; its owner is what counts
    (stat.S_IFLNK | 0o777, 4321, 1234, "is owned by uid 4321"),
])
def test_entry_problem(mode, uid, euid, problem):
    found = safepath.entry_problem(fake_stat(mode, uid), euid)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_require_trusted_names_the_fix():
    with pytest.raises(CriuError, match="Thing /x is owned by uid 4321, .*Fix it \\(chown root /x\\) or: %s" % REMEDY) as err:
        safepath.require_trusted(fake_stat(stat.S_IFREG | 0o644, 4321), "/x", "Thing", REMEDY, euid=0)
    assert err.value.details == {"path": "/x"}
    with pytest.raises(CriuError, match="Fix it \\(chmod go-w /x\\)"):
        safepath.require_trusted(fake_stat(stat.S_IFDIR | 0o775), "/x", "Thing", REMEDY, euid=0)
    safepath.require_trusted(fake_stat(stat.S_IFDIR | 0o755), "/x", "Thing", REMEDY, euid=0)


# --- walk --------------------------------------------------------------------------------------


def test_walk_returns_the_parent_fd_real_dir_and_name(tree):
    where = safepath.walk(str(tree / "a" / "b" / "f"), REMEDY)
    try:
        assert where.real_dir == str(tree / "a" / "b") and where.name == "f"
        assert real_of(where.dir_fd) == str(tree / "a" / "b")
    finally:
        os.close(where.dir_fd)


def test_walk_to_a_missing_final_entry(tree):
    where = safepath.walk(str(tree / "a" / "new"), REMEDY)
    os.close(where.dir_fd)
    assert (where.real_dir, where.name) == (str(tree / "a"), "new")


@pytest.mark.parametrize("path", ["relative/path", "", "a"])
def test_walk_refuses_relative_paths(path):
    with pytest.raises(CriuError, match="is not an absolute path"):
        safepath.walk(path, REMEDY)


@pytest.mark.parametrize("path", ["/", "//", "/./"])
def test_walk_refuses_the_root_directory(path):
    with pytest.raises(CriuError, match="names the root directory"):
        safepath.walk(path, REMEDY)


def test_walk_missing_intermediate_directory_is_an_error(tree):
    """Named as missing, with the remedy for a missing directory (not the chain rule's, which is not the cause)."""
    with pytest.raises(safepath.MissingDirectory) as err:
        safepath.walk(str(tree / "a" / "gone" / "f"), REMEDY)
    assert err.value.msg == ("%s does not exist. Create it (owned by root, mode 0700 or 0755) or give a path under an "
                             "existing directory." % (tree / "a" / "gone"))
    assert err.value.details["path"] == err.value.path == str(tree / "a" / "gone")
    assert not os.path.lexists(tree / "a" / "gone")


def test_walk_makes_missing_directories_root_only(tree):
    where = safepath.walk(str(tree / "a" / "new" / "deeper" / "f"), REMEDY, make_missing=True)
    try:
        assert (where.real_dir, where.name) == (str(tree / "a" / "new" / "deeper"), "f")
        assert real_of(where.dir_fd) == str(tree / "a" / "new" / "deeper")
    finally:
        os.close(where.dir_fd)
    for made in (tree / "a" / "new", tree / "a" / "new" / "deeper"):
        assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700
    assert not os.path.lexists(tree / "a" / "new" / "deeper" / "f"), "the final entry is the caller's"


def test_open_dir_makes_the_directory_and_its_parents(tree):
    fd, real = safepath.open_dir(str(tree / "x" / "y"), "Dir", REMEDY, make_missing=True)
    os.close(fd)
    assert real == str(tree / "x" / "y") and stat.S_IMODE(os.lstat(real).st_mode) == 0o700
    fd, again = safepath.open_dir(real, "Dir", REMEDY, make_missing=True)  # there already: opened, not an error
    os.close(fd)
    assert again == real


def test_made_directories_never_go_through_a_symlink(tree, tmp_path_factory):
    """A symlink where a missing directory would be made is refused (the walk follows none it was not given), and
    nothing is made at the place it points to."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.chmod(elsewhere, 0o777)
    os.symlink(str(elsewhere), str(tree / "a" / "link"))
    with pytest.raises(CriuError, match="writable by group/others"):
        safepath.open_dir(str(tree / "a" / "link" / "made"), "Dir", REMEDY, make_missing=True)
    assert os.listdir(elsewhere) == []


def test_nothing_is_made_under_a_directory_others_can_write(tree):
    os.chmod(tree / "a", 0o777)
    with pytest.raises(CriuError, match="writable by group/others"):
        safepath.open_dir(str(tree / "a" / "new" / "d"), "Dir", REMEDY, make_missing=True)
    assert not os.path.lexists(tree / "a" / "new")


def test_walk_through_a_file_is_an_error(tree):
    with pytest.raises(CriuError, match="%s is not a directory" % (tree / "f")):
        safepath.walk(str(tree / "f" / "x"), REMEDY)


@needs_root
def test_directory_owned_by_another_uid_refused(tree):
    os.chown(tree / "a", OTHER_UID, OTHER_UID)
    for call in (lambda p: safepath.walk(p, REMEDY), lambda p: safepath.open_dir(p, "Dir", REMEDY),
                 lambda p: safepath.open_file(p, "file", REMEDY)):
        with pytest.raises(CriuError, match="Directory %s is owned by uid %d, not root or uid 0" % (tree / "a", OTHER_UID)) as err:
            call(str(tree / "a" / "b" / "f"))
        assert "chown root %s" % (tree / "a") in err.value.msg and err.value.details["path"] == str(tree / "a")


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_group_or_other_writable_directory_refused(tree, mode):
    os.chmod(tree / "a", mode)
    for call in (lambda p: safepath.walk(p, REMEDY), lambda p: safepath.open_file(p, "file", REMEDY)):
        with pytest.raises(CriuError, match="Directory %s is writable by group/others \\(mode %04o\\)" % (tree / "a", mode)) as err:
            call(str(tree / "a" / "b" / "f"))
        assert "chmod go-w %s" % (tree / "a") in err.value.msg and REMEDY in err.value.msg


def test_writable_final_directory_refused_by_open_dir(tree):
    os.chmod(tree / "a" / "b", 0o777)
    with pytest.raises(CriuError, match="Images %s is writable by group/others" % (tree / "a" / "b")):
        safepath.open_dir(str(tree / "a" / "b"), "Images", REMEDY)


@needs_root_sticky
def test_root_owned_sticky_directory_accepted(tree):
    os.chmod(tree / "a", 0o1777)
    assert read_through(tree / "a" / "b" / "f") == ("in b", str(tree / "a" / "b" / "f"))
    fd, real = safepath.open_dir(str(tree / "a"), "Dir", REMEDY)
    os.close(fd)
    assert real == str(tree / "a")


@needs_root
def test_sticky_directory_owned_by_the_caller_refused(tree):
    os.chmod(tree / "a", 0o1777)
    os.chown(tree / "a", 4321, 4321)
    with pytest.raises(CriuError, match="is writable by group/others \\(mode 1777\\)"):
        safepath.walk(str(tree / "a" / "b" / "f"), REMEDY, euid=4321)


# --- symlinks ------------------------------------------------------------------------------------


def test_trusted_symlink_followed_and_real_path_returned(tree):
    (tree / "link").symlink_to(tree / "a" / "b")
    assert read_through(tree / "link" / "f") == ("in b", str(tree / "a" / "b" / "f"))
    fd, real = safepath.open_dir(str(tree / "link"), "Dir", REMEDY)
    try:
        assert real == str(tree / "a" / "b") and real_of(fd) == real
    finally:
        os.close(fd)


def test_relative_symlink_and_symlink_to_a_file(tree):
    (tree / "a" / "rel").symlink_to("b/f")
    (tree / "a" / "up").symlink_to("../f")
    assert read_through(tree / "a" / "rel") == ("in b", str(tree / "a" / "b" / "f"))
    assert read_through(tree / "a" / "up") == ("top", str(tree / "f"))


def test_final_symlink_not_followed_when_asked(tree):
    (tree / "link").symlink_to(tree / "a" / "b")
    where = safepath.walk(str(tree / "link"), REMEDY, follow_final=False)
    os.close(where.dir_fd)
    assert (where.real_dir, where.name) == (str(tree), "link")
    where = safepath.walk(str(tree / "link"), REMEDY)
    os.close(where.dir_fd)
    assert (where.real_dir, where.name) == (str(tree / "a"), "b")


def test_dotdot_after_a_symlink_is_relative_to_its_target(tree):
    """As for the kernel: link/.. is the parent of the link's target, not the directory holding the link."""
    (tree / "link").symlink_to(tree / "a" / "b")
    assert read_through(str(tree / "link") + "/../f") == ("in a", str(tree / "a" / "f"))
    assert read_through(str(tree / "a" / "b") + "/../../f") == ("top", str(tree / "f"))


def test_dotdot_above_root_stays_at_root():
    fd, real = safepath.open_dir("/../../tmp", "Dir", REMEDY)
    os.close(fd)
    assert real == "/tmp"


@needs_root
def test_symlink_owned_by_another_uid_refused(tree):
    link = tree / "link"
    link.symlink_to(tree / "a" / "b")
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(CriuError, match="Symlink %s is owned by uid %d" % (link, OTHER_UID)) as err:
        safepath.open_file(str(link / "f"), "file", REMEDY)
    assert err.value.details["path"] == str(link)
    with pytest.raises(CriuError, match="Symlink %s is owned by uid %d" % (link, OTHER_UID)):
        safepath.open_dir(str(link), "Dir", REMEDY)
    where = safepath.walk(str(link), REMEDY, follow_final=False)  # not followed: not judged
    os.close(where.dir_fd)


def test_symlink_into_an_untrusted_directory_refused(tree):
    (tree / "a" / "b").chmod(0o777)
    (tree / "link").symlink_to(tree / "a" / "b" / "f")
    with pytest.raises(CriuError, match="Directory %s is writable" % (tree / "a" / "b")):
        safepath.open_file(str(tree / "link"), "file", REMEDY)


def test_symlink_loop_refused(tree):
    (tree / "x").symlink_to("y")
    (tree / "y").symlink_to("x")
    with pytest.raises(CriuError, match="too many levels of symlinks"):
        safepath.open_file(str(tree / "x"), "file", REMEDY)
    (tree / "self").symlink_to("self")
    with pytest.raises(CriuError, match="too many levels of symlinks"):
        safepath.open_dir(str(tree / "self"), "Dir", REMEDY)


def test_long_symlink_chains(tree):
    """A chain of MAX_SYMLINKS hops resolves; one more is refused."""
    previous = "a/b/f"
    for index in range(safepath.MAX_SYMLINKS):
        (tree / ("l%d" % index)).symlink_to(previous)
        previous = "l%d" % index
    assert read_through(tree / previous) == ("in b", str(tree / "a" / "b" / "f"))
    (tree / "one-more").symlink_to(previous)
    with pytest.raises(CriuError, match="too many levels of symlinks"):
        read_through(tree / "one-more")


def test_dangling_symlink_is_missing(tree):
    (tree / "dangling").symlink_to(tree / "a" / "nowhere")
    with pytest.raises(FileNotFoundError):
        safepath.open_file(str(tree / "dangling"), "file", REMEDY)


# --- open_dir / open_file -----------------------------------------------------------------------


def test_missing_final_entry_raises_file_not_found(tree):
    with pytest.raises(FileNotFoundError):
        safepath.open_dir(str(tree / "a" / "missing"), "Dir", REMEDY)
    with pytest.raises(FileNotFoundError):
        safepath.open_file(str(tree / "a" / "missing"), "file", REMEDY)


def test_open_dir_refuses_a_file(tree):
    with pytest.raises(CriuError, match="Dir %s is not a directory" % (tree / "f")):
        safepath.open_dir(str(tree / "f"), "Dir", REMEDY)


def test_open_file_refuses_a_directory_and_a_fifo(tree):
    with pytest.raises(CriuError, match="file %s is not a regular file" % (tree / "a")):
        safepath.open_file(str(tree / "a"), "file", REMEDY)
    os.mkfifo(tree / "fifo")
    with pytest.raises(CriuError, match="is not a regular file"):
        safepath.open_file(str(tree / "fifo"), "file", REMEDY)  # O_NONBLOCK: never hangs on a FIFO


def test_open_file_leaves_the_file_itself_to_the_caller(tree):
    os.chmod(tree / "f", 0o666)
    assert read_through(tree / "f")[0] == "top"


def test_open_file_with_write_flags(tree):
    fd, real = safepath.open_file(str(tree / "a" / "f"), "file", REMEDY, flags=os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    assert (tree / "a" / "f").read_text() == "new" and real == str(tree / "a" / "f")


def test_no_fd_leaks(tree):
    (tree / "link").symlink_to(tree / "a" / "b")
    os.chmod(tree / "a" / "b", 0o777)
    before = sorted(os.listdir("/proc/self/fd"))
    for _attempt in range(3):
        with pytest.raises(CriuError):
            safepath.open_file(str(tree / "link" / "f"), "file", REMEDY)
        with pytest.raises(FileNotFoundError):
            safepath.open_dir(str(tree / "missing"), "Dir", REMEDY)
        fd, _real = safepath.open_dir(str(tree / "a"), "Dir", REMEDY)
        os.close(fd)
    assert sorted(os.listdir("/proc/self/fd")) == before


# --- listdir / reopen_dir -------------------------------------------------------------------------


def test_reopen_dir_is_an_independent_description(tree):
    fd, _real = safepath.open_dir(str(tree / "a"), "Dir", REMEDY)
    try:
        other = safepath.reopen_dir(fd)
        assert other != fd and real_of(other) == str(tree / "a")
        os.close(other)
        assert sorted(safepath.listdir(fd)) == ["b", "f"]
        assert sorted(safepath.listdir(fd)) == ["b", "f"]  # listing did not consume fd's offset
    finally:
        os.close(fd)


def test_listdir_from_many_threads_at_once(tmp_path):
    names = {"file-%04d" % index for index in range(600)}
    for name in names:
        (tmp_path / name).touch()
    fd, _real = safepath.open_dir(str(tmp_path), "Dir", REMEDY)
    results, start = [], threading.Barrier(8)

    def lister():
        start.wait()
        for _round in range(15):
            results.append(set(safepath.listdir(fd)))

    threads = [threading.Thread(target=lister) for _thread in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        os.close(fd)
    assert len(results) == 8 * 15 and all(found == names for found in results)


# --- check_name ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "x" * 200, "é" * 100])
def test_check_name_accepts_up_to_200_bytes(name):
    safepath.check_name(name, "/var/lib/criu/" + name)


@pytest.mark.parametrize("name", ["x" * 201, "x" * 255, "é" * 101])
def test_check_name_refuses_longer_names(name):
    with pytest.raises(CriuError, match="accepts at most 200 .*Choose a shorter name") as err:
        safepath.check_name(name, "/var/lib/criu/" + name)
    assert err.value.details == {"path": "/var/lib/criu/" + name}


def test_check_name_reports_the_length_in_bytes():
    with pytest.raises(CriuError, match="is 202 bytes long"):
        safepath.check_name("é" * 101, "/var/lib/criu/x")
