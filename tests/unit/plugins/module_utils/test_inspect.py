"""criu's statistics and what a checkpoint holds, read with pycriu (_inspect); pycriu is a fake package here, except
for one real parse with the pycriu that ships with this host's criu (when it is there)."""

import importlib.util
import json
import os
import re
import sys
import textwrap

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.operations import _inspect as inspect_
from .mu_helpers import make_checkpoint, needs_root, OTHER_UID, opened_checkpoint

REAL_CRIU = "/opt/criu-forky/usr/sbin/criu"

# A stand-in for pycriu.images: load() reads an "image" written as JSON (by _image below).
FAKE_IMAGES = '''
import json


def load(handle):
    return json.loads(handle.read().decode("utf-8"))
'''


@pytest.fixture(autouse=True)
def fresh_pycriu(monkeypatch):
    """Every test starts with no pycriu loaded (neither cached by _inspect nor imported), and leaves none behind;
    nothing writes bytecode next to a package it imports."""
    def forget():
        for name in [name for name in sys.modules if name == "pycriu" or name.startswith("pycriu.")]:
            del sys.modules[name]

    forget()
    monkeypatch.setattr(inspect_, "_loaded", {})
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    before = list(sys.path)
    monkeypatch.setattr(sys, "path", list(before))  # the real pycriu appends its images/ directory: undone afterwards
    yield
    forget()
    added = [entry for entry in sys.path if entry not in before]
    assert not [entry for entry in added if entry.endswith("dist-packages")], "load() removes the directory it put first"


def _prefix(tmp_path, images=FAKE_IMAGES, init=""):
    """A criu installation under tmp_path/usr: sbin/criu (never run) and a pycriu package beside it; returns the
    criu path."""
    package = tmp_path / "usr" / "lib" / "python3" / "dist-packages" / "pycriu"
    (package / "images").mkdir(parents=True)
    (package / "__init__.py").write_text(init)
    (package / "images" / "__init__.py").write_text(textwrap.dedent(images))
    (tmp_path / "usr" / "sbin").mkdir()
    return str(tmp_path / "usr" / "sbin" / "criu")


def _package(criu_path):
    return os.path.join(os.path.dirname(os.path.dirname(criu_path)), "lib", "python3", "dist-packages", "pycriu")


def _image(directory, name, document):
    with open(os.path.join(str(directory), name), "w") as handle:
        json.dump(document, handle)


# --- load -----------------------------------------------------------------------------------------


def test_package_dir_is_beside_criu():
    assert inspect_._package_dir("/usr/sbin/criu") == "/usr/lib/python3/dist-packages"
    assert inspect_._package_dir("/opt/nucleus-criu/sbin/criu") == "/opt/nucleus-criu/lib/python3/dist-packages"


def test_load_imports_pycriu_beside_criu_once(tmp_path):
    criu = _prefix(tmp_path)
    images, why = inspect_.load(criu)
    assert why == "" and images.__file__ == os.path.join(_package(criu), "images", "__init__.py")
    assert inspect_.load(criu) == (images, "")
    assert inspect_.load("/elsewhere/sbin/criu") == (images, "")  # loaded once per run, from the criu first given


def test_load_says_when_pycriu_is_not_installed(tmp_path):
    (tmp_path / "usr" / "lib" / "python3" / "dist-packages").mkdir(parents=True)
    criu = str(tmp_path / "usr" / "sbin" / "criu")
    assert inspect_.load(criu) == (None, "pycriu is not installed beside %s (the nucleus.criu.criu role installs it)" % criu)
    assert inspect_._loaded == {} and "pycriu" not in sys.modules


def test_load_says_when_pycriu_images_is_missing(tmp_path):
    criu = _prefix(tmp_path)
    os.unlink(os.path.join(_package(criu), "images", "__init__.py"))
    os.rmdir(os.path.join(_package(criu), "images"))
    assert inspect_.load(criu) == (None, "pycriu is not installed beside %s (the nucleus.criu.criu role installs it)" % criu)


def test_load_says_when_pycriu_is_not_installed_and_neither_is_its_directory(tmp_path):
    (tmp_path / "usr" / "sbin").mkdir(parents=True)
    criu = str(tmp_path / "usr" / "sbin" / "criu")
    images, why = inspect_.load(criu)
    assert images is None and why == "pycriu is not installed beside %s (the nucleus.criu.criu role installs it)" % criu


def _writable_package(criu):
    os.chmod(_package(criu), 0o777)


def _writable_images(criu):
    os.chmod(os.path.join(_package(criu), "images"), 0o777)


def _writable_module(criu):
    os.chmod(os.path.join(_package(criu), "images", "__init__.py"), 0o666)


def _writable_init(criu):
    os.chmod(os.path.join(_package(criu), "__init__.py"), 0o646)


def _writable_dist_packages(criu):
    os.chmod(os.path.dirname(_package(criu)), 0o777)


@pytest.mark.parametrize("weaken, words", [
    (_writable_package, "pycriu directory .*/pycriu is writable by group/others"),
    (_writable_images, "pycriu (file|directory) .*/pycriu/images is writable by group/others"),
    (_writable_module, "pycriu file .*/pycriu/images/__init__.py is writable by group/others"),
    (_writable_init, "pycriu file .*/pycriu/__init__.py is writable by group/others"),
    (_writable_dist_packages, "dist-packages is writable by group/others"),
])
def test_load_refuses_a_package_others_could_change_without_importing_it(tmp_path, weaken, words):
    marker = tmp_path / "imported"
    criu = _prefix(tmp_path, init="open(%r, 'w').close()\n" % str(marker))
    weaken(criu)
    images, why = inspect_.load(criu)
    assert images is None and why.startswith("pycriu cannot be trusted: ")
    assert re.search(words, why), why
    assert not marker.exists() and "pycriu" not in sys.modules and inspect_._loaded == {}


@needs_root
def test_load_refuses_a_package_file_of_another_user(tmp_path):
    criu = _prefix(tmp_path)
    os.chown(os.path.join(_package(criu), "images", "__init__.py"), OTHER_UID, OTHER_UID)
    images, why = inspect_.load(criu)
    assert images is None and "owned by uid %d" % OTHER_UID in why and why.startswith("pycriu cannot be trusted: ")


def test_load_never_runs_bytecode_others_could_change(tmp_path):
    criu = _prefix(tmp_path, images=FAKE_IMAGES + "ORIGIN = 'checked source'\n")
    source = os.path.join(_package(criu), "images", "__init__.py")
    st = os.stat(source)
    forged = compile(FAKE_IMAGES + "ORIGIN = 'forged bytecode'\n", source, "exec")
    cache = os.path.join(_package(criu), "images", "__pycache__")
    os.mkdir(cache, 0o755)
    pyc = importlib.util.cache_from_source(source)
    assert os.path.dirname(pyc) == cache
    with open(pyc, "wb") as handle:
        handle.write(importlib._bootstrap_external._code_to_timestamp_pyc(forged, int(st.st_mtime), st.st_size))
    os.chmod(pyc, 0o666)  # anyone may rewrite it
    images, why = inspect_.load(criu)
    assert images is None and why.startswith("pycriu cannot be trusted: ") and "__pycache__" in why, why


def test_load_refuses_a_module_linked_to_a_file_others_could_change(tmp_path):
    criu = _prefix(tmp_path)
    (tmp_path / "open").mkdir()
    target = tmp_path / "open" / "images.py"
    os.rename(os.path.join(_package(criu), "images", "__init__.py"), target)
    os.chmod(target, 0o666)
    os.symlink(str(target), os.path.join(_package(criu), "images", "__init__.py"))
    images, why = inspect_.load(criu)
    assert images is None and why.startswith("pycriu cannot be trusted: ") and "is a symlink" in why, why


def test_load_says_when_pycriu_cannot_be_imported(tmp_path):
    criu = _prefix(tmp_path, images="raise ImportError('No module named google.protobuf')\n")
    images, why = inspect_.load(criu)
    assert images is None
    assert why == "pycriu cannot be imported by %s (No module named google.protobuf): install python3-protobuf" % sys.executable
    assert inspect_._loaded == {}


# --- inspect --------------------------------------------------------------------------------------


def test_inspect_summarises_processes_files_and_sockets(tmp_path):
    criu = _prefix(tmp_path)
    make_checkpoint(tmp_path / "ckpt")
    images = tmp_path / "ckpt" / "images"
    _image(images, "pstree.img", {"entries": [{"pid": 10, "ppid": 0, "threads": [10, 11]}, {"pid": 12, "ppid": 10}]})
    _image(images, "core-10.img", {"entries": [{"tc": {"comm": "app"}}]})
    _image(images, "core-12.img", {"entries": [{}]})
    _image(images, "pagemap-10.img", {"entries": [{"pages_id": 1}, {"nr_pages": 3}, {"nr_pages": 2}]})
    _image(images, "pagemap-12.img", {"entries": [{"pages_id": 2}]})
    _image(images, "files.img", {"entries": [{"type": "REG"}, {"type": "REG"}, {"type": "PIPE"}, {"type": "INETSK"},
                                             {"type": "UNIXSK"}, {"type": "UNIXSK"}, {}]})
    with opened_checkpoint(tmp_path / "ckpt") as checkpoint:
        found = inspect_.inspect(criu, checkpoint, 60)
    page = inspect_.PAGE_SIZE
    assert found == {
        "processes": [{"pid": 10, "ppid": 0, "threads": 2, "comm": "app", "memory_bytes": 5 * page},
                      {"pid": 12, "ppid": 10, "threads": 0, "comm": None, "memory_bytes": 0}],
        "files": {"REG": 2, "PIPE": 1, "?": 1}, "sockets": {"INETSK": 1, "UNIXSK": 2}, "memory_bytes": 5 * page}


def test_inspect_of_images_that_cannot_be_read_says_why(tmp_path):
    criu = _prefix(tmp_path)
    make_checkpoint(tmp_path / "ckpt")
    _image(tmp_path / "ckpt" / "images", "pstree.img", {"entries": [{"pid": 10, "ppid": 0}]})  # no core-10.img
    with opened_checkpoint(tmp_path / "ckpt") as checkpoint:
        found = inspect_.inspect(criu, checkpoint, 60)
    assert list(found) == ["unavailable"] and found["unavailable"].startswith("the images cannot be read: ")


def test_inspect_of_images_past_the_budget_parses_nothing_more(tmp_path, monkeypatch):
    """An unsigned checkpoint may hold anything: a 64 MiB files.img once took 42 s and 3.2 GiB as root in pycriu. The
    images parsed are bounded in bytes (kilobytes in a real checkpoint) and in time."""
    criu = _prefix(tmp_path)
    make_checkpoint(tmp_path / "ckpt")
    images = tmp_path / "ckpt" / "images"
    _image(images, "pstree.img", {"entries": [{"pid": 10, "ppid": 0}]})
    _image(images, "core-10.img", {"entries": [{"tc": {"comm": "app"}}]})
    _image(images, "pagemap-10.img", {"entries": [{"pages_id": 1}]})
    _image(images, "files.img", {"entries": [{"type": "REG"}]})
    with open(images / "files.img", "ab") as handle:
        handle.truncate(inspect_.Budget.MAX_BYTES + 1)
    with opened_checkpoint(tmp_path / "ckpt") as checkpoint:
        found = inspect_.inspect(criu, checkpoint, 60)
        assert found == {"unavailable": "the images cannot be read: files.img would take the images parsed past 8 MiB "
                                        "(real ones are kilobytes): not parsed"}
        timed_out = inspect_.inspect(criu, checkpoint, -1)
        assert timed_out == {"unavailable": "the images cannot be read: the timeout ran out before pstree.img"}


def test_inspect_without_pycriu_says_why(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    (tmp_path / "usr" / "lib" / "python3" / "dist-packages").mkdir(parents=True)
    criu = str(tmp_path / "usr" / "sbin" / "criu")
    with opened_checkpoint(tmp_path / "ckpt") as checkpoint:
        assert inspect_.inspect(criu, checkpoint, 60) == {
            "unavailable": "pycriu is not installed beside %s (the nucleus.criu.criu role installs it)" % criu}
