"""criu binary discovery, the trust policy, and version checks (_binary)."""

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import IS_ROOT, NONROOT_EUID, needs_root, write_exe

OWNER = os.geteuid()  # owns every file this test creates: 0 when run as root


@pytest.fixture
def trusted(tmp_path, monkeypatch):
    """Three trusted locations under tmp, in the real search order; none exists yet."""
    paths = tuple(str(tmp_path / d / "criu") for d in ("usr-local-sbin", "usr-sbin", "usr-bin"))
    monkeypatch.setattr(binary, "TRUSTED_PATHS", paths)
    return paths


def test_trusted_paths_search_usr_local_sbin_first():
    assert binary.TRUSTED_PATHS == ("/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu")


@pytest.mark.parametrize("present, expected", [((0, 1, 2), 0), ((1, 2), 1), ((2,), 2), ((0, 2), 0)])
def test_discovery_order(trusted, present, expected):
    for index in present:
        write_exe(trusted[index])
    assert binary.discover(euid=OWNER, env_path="") == trusted[expected]


def test_path_never_searched_as_root(trusted, tmp_path):
    path_dir = tmp_path / "pathdir"
    write_exe(path_dir / "criu")
    with pytest.raises(CriuError, match="not found") as err:
        binary.discover(euid=0, env_path=str(path_dir))
    assert "PATH is never searched as root" in err.value.msg
    assert binary.candidate_paths(0, str(path_dir)) == list(trusted)


def test_path_searched_after_trusted_paths_when_not_root(trusted, tmp_path):
    path_dir = tmp_path / "pathdir"
    in_path = write_exe(path_dir / "criu")
    env_path = os.pathsep.join(["relative/dir", str(tmp_path / "empty"), str(path_dir)])
    assert binary.candidate_paths(NONROOT_EUID, env_path)[:3] == list(trusted)
    assert "relative/dir/criu" not in binary.candidate_paths(NONROOT_EUID, env_path)
    assert binary.discover(euid=NONROOT_EUID, env_path=env_path) == in_path
    write_exe(trusted[2])
    assert binary.discover(euid=NONROOT_EUID, env_path=env_path) == trusted[2]


def test_not_found_message_mentions_path_for_non_root(trusted):
    with pytest.raises(CriuError, match="or PATH"):
        binary.discover(euid=NONROOT_EUID, env_path="")


def test_first_existing_candidate_failing_is_an_error_not_skipped(trusted):
    write_exe(trusted[0], mode=0o775)
    write_exe(trusted[1])
    with pytest.raises(CriuError, match="writable by group/others") as err:
        binary.discover(euid=OWNER, env_path="")
    assert err.value.details["path"] == trusted[0]


def test_explicit_criu_path_is_validated(trusted, tmp_path):
    bad = write_exe(tmp_path / "mine" / "criu", mode=0o777)
    write_exe(trusted[0])
    with pytest.raises(CriuError, match="writable by group/others"):
        binary.discover(criu_path=bad, euid=OWNER)


@pytest.mark.parametrize("mode", [0o755, 0o700, 0o500])
def test_secure_binary_accepted(tmp_path, mode):
    path = write_exe(tmp_path / "bin" / "criu", mode=mode)
    assert binary.validate_binary(path, euid=NONROOT_EUID) == path


@pytest.mark.parametrize("mode, message", [
    (0o775, "writable by group/others"),
    (0o757, "writable by group/others"),
    (0o777, "writable by group/others"),
    (0o644, "not executable"),
    (0o600, "not executable"),
])
def test_insecure_binary_refused(tmp_path, mode, message):
    path = write_exe(tmp_path / "bin" / "criu", mode=mode)
    with pytest.raises(CriuError, match=message):
        binary.validate_binary(path, euid=NONROOT_EUID)


@pytest.mark.parametrize("dir_mode", [0o775, 0o757, 0o777])
def test_writable_parent_directory_refused(tmp_path, dir_mode):
    path = write_exe(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", dir_mode)
    with pytest.raises(CriuError, match="directory .* is writable by group/others") as err:
        binary.validate_binary(path, euid=NONROOT_EUID)
    assert err.value.details["path"] == str(tmp_path / "bin")


def test_sticky_world_writable_root_directory_accepted(tmp_path):
    if not IS_ROOT:
        pytest.skip("a root-owned sticky directory can only be made by root")
    path = write_exe(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", 0o1777)
    assert binary.validate_binary(path, euid=0) == path


@needs_root
def test_sticky_world_writable_directory_of_another_user_refused(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", 0o1777)
    os.chown(tmp_path / "bin", 4321, 4321)
    with pytest.raises(CriuError, match="owned by uid 4321"):
        binary.validate_binary(path, euid=0)


def test_root_owned_binary_accepted_for_any_euid():
    real = os.path.realpath("/bin/sh")
    assert os.stat(real).st_uid == 0
    assert binary.validate_binary(real, euid=1234) == real


@needs_root
def test_binary_owned_by_another_user_refused(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu")
    os.chown(path, 4321, 4321)
    with pytest.raises(CriuError, match="criu binary .* is owned by uid 4321, not root or uid 0"):
        binary.validate_binary(path, euid=0)
    assert binary.validate_binary(path, euid=4321) == path


def test_owner_mismatch_refused_via_euid(tmp_path):
    """Without root: our files are owned by us, so a different euid sees another user's file."""
    if IS_ROOT:
        pytest.skip("root-owned files are trusted by every euid")
    path = write_exe(tmp_path / "bin" / "criu")
    with pytest.raises(CriuError, match="owned by uid %d" % os.geteuid()):
        binary.validate_binary(path, euid=os.geteuid() + 1)


def test_directory_is_not_a_regular_file(tmp_path):
    (tmp_path / "bin" / "criu").mkdir(parents=True)
    with pytest.raises(CriuError, match="not a regular file"):
        binary.validate_binary(str(tmp_path / "bin" / "criu"), euid=NONROOT_EUID)


@pytest.mark.parametrize("path", ["criu", "bin/criu", "./criu", ""])
def test_relative_criu_path_refused(path):
    with pytest.raises(CriuError, match="not absolute"):
        binary.validate_binary(path, euid=0)


def test_missing_binary_refused(tmp_path):
    with pytest.raises(CriuError, match="Cannot inspect criu binary"):
        binary.validate_binary(str(tmp_path / "nope"), euid=NONROOT_EUID)


def test_symlink_to_good_binary_accepted(tmp_path):
    target = write_exe(tmp_path / "lib" / "criu" / "criu")
    (tmp_path / "sbin").mkdir(mode=0o755)
    link = tmp_path / "sbin" / "criu"
    link.symlink_to(target)
    assert binary.validate_binary(str(link), euid=NONROOT_EUID) == target
    assert binary.discover(criu_path=str(link), euid=NONROOT_EUID) == str(link)


def test_symlink_into_group_writable_directory_refused(tmp_path):
    target = write_exe(tmp_path / "lib" / "criu")
    os.chmod(tmp_path / "lib", 0o775)
    (tmp_path / "sbin").mkdir(mode=0o755)
    link = tmp_path / "sbin" / "criu"
    link.symlink_to(target)
    with pytest.raises(CriuError, match="writable by group/others") as err:
        binary.validate_binary(str(link), euid=NONROOT_EUID)
    assert err.value.details["path"] == str(tmp_path / "lib")


def test_symlink_to_writable_binary_refused(tmp_path):
    target = write_exe(tmp_path / "lib" / "criu", mode=0o777)
    (tmp_path / "sbin").mkdir(mode=0o755)
    (tmp_path / "sbin" / "criu").symlink_to(target)
    with pytest.raises(CriuError, match="writable by group/others"):
        binary.validate_binary(str(tmp_path / "sbin" / "criu"), euid=NONROOT_EUID)


@pytest.mark.parametrize("text, expected", [
    ("Version: 4.2.1\n", (4, 2, 1)),
    ("Version: 4.2\nGitID: v4.2\n", (4, 2, 0)),
    ("Version: 3.17.1\nGitID: v3.17.1-3-g0bb7b6f\n", (3, 17, 1)),
    ("criu wrapper banner\nVersion: 5.0\n", (5, 0, 0)),
])
def test_parse_version(text, expected):
    assert binary.parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "garbage", "criu 4.2.1", "Version: four", "GitID: v4.2"])
def test_parse_version_garbage(text):
    with pytest.raises(CriuError, match="Cannot parse the output of criu --version"):
        binary.parse_version(text)


@pytest.mark.parametrize("version", [(4, 1, 1), (4, 1, 0), (3, 19, 0), (0, 0, 0)])
def test_require_supported_refuses_old(version):
    with pytest.raises(CriuError) as err:
        binary.require_supported(version, "/usr/sbin/criu")
    text = binary.format_version(version)
    assert text in err.value.msg and "/usr/sbin/criu" in err.value.msg
    assert "nucleus.criu.criu role" in err.value.msg and ">= 4.2" in err.value.msg
    assert err.value.details == {"path": "/usr/sbin/criu", "version": text}


@pytest.mark.parametrize("version", [(4, 2, 0), (4, 2, 1), (4, 3, 0), (5, 0, 0), (10, 0, 0)])
def test_require_supported_accepts_new(version):
    assert binary.require_supported(version, "/usr/sbin/criu") is None


def test_probe_version_runs_the_binary(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu", '#!/bin/sh\n[ "$1" = --version ] || exit 9\nprintf "Version: 4.2.3\\nGitID: v4.2.3\\n"\n')
    assert binary.probe_version(path) == (4, 2, 3)


def test_probe_version_nonzero_exit(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu", "#!/bin/sh\necho broken loader >&2\nexit 3\n")
    with pytest.raises(CriuError, match="exited with 3: broken loader"):
        binary.probe_version(path)


def test_probe_version_unparsable_output(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu", "#!/bin/sh\necho hello\n")
    with pytest.raises(CriuError, match="Cannot parse"):
        binary.probe_version(path)


def test_probe_version_timeout(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu", "#!/bin/sh\nexec sleep 5\n")
    with pytest.raises(CriuError, match="Cannot run"):
        binary.probe_version(path, timeout=0.3)


def test_probe_version_not_executable(tmp_path):
    with pytest.raises(CriuError, match="Cannot run"):
        binary.probe_version(str(tmp_path / "missing"))
