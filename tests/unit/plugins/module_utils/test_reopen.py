"""The paths a restore reopens (_reopen): read from files.img without pycriu, then held to the chain rule."""

from __future__ import annotations

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _reopen as reopen
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import OTHER_UID, dir_fd, needs_root

# pycriu.images.dump of a FILES image: an O_APPEND log, a pipe, a directory (a cwd), and the log again (a second fd).
FILES_IMG = (b'\x19CVT810V.\x00\x00\x00\x08\x01\x10\x01\x1a(\x08\x01\x10\x81\x88\x02\x18\x00*\n\x08\x00\x10\x00\x18\x00 '
             b'\x00(\x002\x10/srv/app/app.log8\x02\x19\x00\x00\x00\x08\x02\x10\x02\x92\x01\x12\x08\x02\x10\x07\x18\x00"\n'
             b'\x08\x00\x10\x00\x18\x00 \x00(\x00$\x00\x00\x00\x08\x01\x10\x03\x1a\x1e\x08\x03\x10\x00\x18\x00*\n\x08\x00'
             b'\x10\x00\x18\x00 \x00(\x002\x08/srv/app8\x02,\x00\x00\x00\x08\x01\x10\x04\x1a&\x08\x04\x10\x00\x18\x00*\n'
             b'\x08\x00\x10\x00\x18\x00 \x00(\x002\x10/srv/app/app.log8\x02')


def test_the_paths_of_regular_files_and_directories_each_once(tmp_path):
    (tmp_path / "files.img").write_bytes(FILES_IMG)
    with dir_fd(tmp_path) as fd:
        assert reopen.recorded_paths(fd) == ["/srv/app/app.log", "/srv/app"]


def test_no_files_image_no_paths_and_a_broken_one_is_an_error(tmp_path):
    with dir_fd(tmp_path) as fd:
        assert reopen.recorded_paths(fd) == [], "a container's checkpoint holds Podman's export instead"
        (tmp_path / "files.img").write_bytes(FILES_IMG[:-5])
        with pytest.raises(CriuError, match="files.img cannot be read: an entry runs past the end of the file"):
            reopen.recorded_paths(fd)


@pytest.fixture
def tree(tmp_path):
    app = tmp_path / "app"
    app.mkdir(mode=0o755)
    (app / "app.log").write_text("")
    return app


def test_paths_under_directories_only_root_changes_are_fine(tree):
    euid = os.geteuid()
    for path in (tree / "app.log", tree, tree / "missing.log", tree / "gone" / "x.log", "/", "relative/path"):
        assert reopen.path_problem(str(path), euid) is None, path


def test_a_symlink_where_the_workload_had_a_file_is_refused(tree, tmp_path):
    os.unlink(tree / "app.log")
    os.symlink(str(tmp_path / "victim"), str(tree / "app.log"))
    problem = reopen.path_problem(str(tree / "app.log"), os.geteuid())
    assert problem.startswith("%s is a symlink now, and criu would follow it as root" % (tree / "app.log"))
    assert problem.endswith(reopen.REMEDY)


@needs_root
def test_a_directory_another_user_owns_on_the_way_is_refused(tree):
    os.chown(tree, OTHER_UID, OTHER_UID)
    problem = reopen.path_problem(str(tree / "app.log"), 0)
    assert "Directory %s is owned by uid %d" % (tree, OTHER_UID) in problem and problem.endswith(reopen.REMEDY)


@needs_root
def test_a_file_another_user_owns_in_a_shared_sticky_directory_is_refused(tree):
    os.chmod(tree, 0o1777)
    assert reopen.path_problem(str(tree / "app.log"), 0) is None, "root's own file: only root may swap it"
    os.chown(tree / "app.log", OTHER_UID, OTHER_UID)
    problem = reopen.path_problem(str(tree / "app.log"), 0)
    assert "is owned by uid %d in %s, a directory others can write" % (OTHER_UID, tree) in problem


def test_problems_lists_each_refused_path(tree, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    log = str(tree / "app.log").encode()
    entry = b"\x08\x01\x10\x01\x1a" + bytes([len(log) + 6]) + b"\x08\x01\x10\x00\x32" + bytes([len(log)]) + log + b"\x38\x02"
    (images / "files.img").write_bytes(FILES_IMG[:8] + len(entry).to_bytes(4, "little") + entry)
    with dir_fd(images) as fd:
        assert reopen.problems(fd) == []
        os.unlink(tree / "app.log")
        os.symlink("/etc/passwd", str(tree / "app.log"))
        (problem,) = reopen.problems(fd)
        assert "is a symlink now" in problem
