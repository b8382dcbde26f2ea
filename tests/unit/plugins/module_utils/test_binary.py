"""criu binary discovery, the trust policy, and version checks (_binary)."""

import os
import shutil
import subprocess

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _elf as elf
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import IS_ROOT, NONROOT_EUID, OTHER_UID, REAL_ELF, needs_root, write_elf, write_exe

OWNER = os.geteuid()  # owns every file this test creates: 0 when run as root
PATCHELF = shutil.which("patchelf")
needs_patchelf = pytest.mark.skipif(PATCHELF is None, reason="patchelf is not installed")


@pytest.fixture
def trusted(tmp_path, monkeypatch):
    """Three trusted locations under tmp, in the real search order; none exists yet."""
    paths = tuple(str(tmp_path / d / "criu") for d in ("usr-local-sbin", "usr-sbin", "usr-bin"))
    monkeypatch.setattr(binary, "TRUSTED_PATHS", paths)
    return paths


def patchelf(path, *args):
    subprocess.run([PATCHELF] + list(args) + [str(path)], check=True, capture_output=True)


def test_trusted_paths_search_usr_local_sbin_first():
    assert binary.TRUSTED_PATHS == ("/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu")


@pytest.mark.parametrize("present, expected", [((0, 1, 2), 0), ((1, 2), 1), ((2,), 2), ((0, 2), 0)])
def test_discovery_order(trusted, present, expected):
    for index in present:
        write_elf(trusted[index])
    assert binary.discover(euid=OWNER, env_path="") == trusted[expected]


def test_path_never_searched_as_root(trusted, tmp_path):
    path_dir = tmp_path / "pathdir"
    write_elf(path_dir / "criu")
    with pytest.raises(CriuError, match="not found") as err:
        binary.discover(euid=0, env_path=str(path_dir))
    assert "PATH is never searched as root" in err.value.msg
    assert binary.candidate_paths(0, str(path_dir)) == list(trusted)


def test_path_searched_after_trusted_paths_when_not_root(trusted, tmp_path):
    path_dir = tmp_path / "pathdir"
    in_path = write_elf(path_dir / "criu")
    env_path = os.pathsep.join(["relative/dir", str(tmp_path / "empty"), str(path_dir)])
    assert binary.candidate_paths(NONROOT_EUID, env_path)[:3] == list(trusted)
    assert "relative/dir/criu" not in binary.candidate_paths(NONROOT_EUID, env_path)
    assert binary.discover(euid=NONROOT_EUID, env_path=env_path) == in_path
    write_elf(trusted[2])
    assert binary.discover(euid=NONROOT_EUID, env_path=env_path) == trusted[2]


def test_not_found_message_mentions_path_for_non_root(trusted):
    with pytest.raises(CriuError, match="or PATH"):
        binary.discover(euid=NONROOT_EUID, env_path="")


def test_first_existing_candidate_failing_is_an_error_not_skipped(trusted):
    write_elf(trusted[0], mode=0o775)
    write_elf(trusted[1])
    with pytest.raises(CriuError, match="writable by group/others") as err:
        binary.discover(euid=OWNER, env_path="")
    assert err.value.details["path"] == trusted[0]


def test_first_candidate_being_a_script_is_an_error_not_skipped(trusted):
    write_exe(trusted[0])
    write_elf(trusted[1])
    with pytest.raises(CriuError, match="is not an ELF executable") as err:
        binary.discover(euid=OWNER, env_path="")
    assert err.value.details["path"] == trusted[0]


def test_explicit_criu_path_is_validated(trusted, tmp_path):
    bad = write_elf(tmp_path / "mine" / "criu", mode=0o777)
    write_elf(trusted[0])
    with pytest.raises(CriuError, match="writable by group/others"):
        binary.discover(criu_path=bad, euid=OWNER)
    assert binary.discover(criu_path=write_elf(tmp_path / "good" / "criu"), euid=OWNER) == str(tmp_path / "good" / "criu")


@pytest.mark.parametrize("mode", [0o755, 0o700, 0o500])
def test_secure_binary_accepted(tmp_path, mode):
    path = write_elf(tmp_path / "bin" / "criu", mode=mode)
    assert binary.validate_binary(path, euid=NONROOT_EUID) == path


@pytest.mark.parametrize("mode, message", [
    (0o775, "writable by group/others"),
    (0o757, "writable by group/others"),
    (0o777, "writable by group/others"),
    (0o644, "not executable"),
    (0o600, "not executable"),
])
def test_insecure_binary_refused(tmp_path, mode, message):
    path = write_elf(tmp_path / "bin" / "criu", mode=mode)
    with pytest.raises(CriuError, match=message):
        binary.validate_binary(path, euid=NONROOT_EUID)


@pytest.mark.parametrize("text", ["#!/bin/sh\necho 'Version: 4.2.1'\n", "#!/usr/bin/env python3\n", "\x7fELF", "", "MZ\x90\x00"])
def test_script_or_other_non_elf_refused(tmp_path, text):
    path = write_exe(tmp_path / "bin" / "criu", text)
    with pytest.raises(CriuError, match="criu binary .* is not an ELF executable .*a script or wrapper") as err:
        binary.validate_binary(path, euid=NONROOT_EUID)
    assert err.value.details["path"] == path


@pytest.mark.parametrize("dir_mode", [0o775, 0o757, 0o777])
def test_writable_parent_directory_refused(tmp_path, dir_mode):
    path = write_elf(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", dir_mode)
    with pytest.raises(CriuError, match="Directory .* is writable by group/others") as err:
        binary.validate_binary(path, euid=NONROOT_EUID)
    assert err.value.details["path"] == str(tmp_path / "bin")
    assert "chmod go-w %s" % (tmp_path / "bin") in err.value.msg


def test_sticky_world_writable_root_directory_accepted(tmp_path):
    if not IS_ROOT:
        pytest.skip("a root-owned sticky directory can only be made by root")
    path = write_elf(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", 0o1777)
    assert binary.validate_binary(path, euid=0) == path


@needs_root
def test_sticky_world_writable_directory_of_another_user_refused(tmp_path):
    path = write_elf(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", 0o1777)
    os.chown(tmp_path / "bin", 4321, 4321)
    with pytest.raises(CriuError, match="owned by uid 4321"):
        binary.validate_binary(path, euid=0)


@needs_root
def test_sticky_world_writable_directory_of_the_caller_refused(tmp_path):
    """The sticky bit only protects entries when root owns the directory: its owner can still rename them."""
    path = write_elf(tmp_path / "bin" / "criu")
    os.chmod(tmp_path / "bin", 0o1777)
    os.chown(tmp_path / "bin", 4321, 4321)
    with pytest.raises(CriuError, match="writable by group/others \\(mode 1777\\)"):
        binary.validate_binary(path, euid=4321)


def test_root_owned_binary_accepted_for_any_euid():
    real = os.path.realpath("/bin/sh")
    assert os.stat(real).st_uid == 0
    assert binary.validate_binary(real, euid=1234) == real


def test_the_real_path_is_returned_for_a_system_binary():
    assert binary.validate_binary("/bin/true", euid=1234) == REAL_ELF


@needs_root
def test_binary_owned_by_another_user_refused(tmp_path):
    path = write_elf(tmp_path / "bin" / "criu")
    os.chown(path, 4321, 4321)
    with pytest.raises(CriuError, match="criu binary .* is owned by uid 4321, not root or uid 0") as err:
        binary.validate_binary(path, euid=0)
    assert "chown root %s" % path in err.value.msg
    assert binary.validate_binary(path, euid=4321) == path


def test_owner_mismatch_refused_via_euid(tmp_path):
    """Without root: our files are owned by us, so a different euid sees another user's file."""
    if IS_ROOT:
        pytest.skip("root-owned files are trusted by every euid")
    path = write_elf(tmp_path / "bin" / "criu")
    with pytest.raises(CriuError, match="owned by uid %d" % os.geteuid()):
        binary.validate_binary(path, euid=os.geteuid() + 1)


def test_directory_is_not_a_regular_file(tmp_path):
    (tmp_path / "bin" / "criu").mkdir(parents=True)
    with pytest.raises(CriuError, match="not a regular file"):
        binary.validate_binary(str(tmp_path / "bin" / "criu"), euid=NONROOT_EUID)


def test_fifo_is_not_a_regular_file_and_does_not_block(tmp_path):
    (tmp_path / "bin").mkdir()
    os.mkfifo(tmp_path / "bin" / "criu", 0o755)
    with pytest.raises(CriuError, match="not a regular file"):
        binary.validate_binary(str(tmp_path / "bin" / "criu"), euid=NONROOT_EUID)


@pytest.mark.parametrize("path", ["criu", "bin/criu", "./criu", ""])
def test_relative_criu_path_refused(path):
    with pytest.raises(CriuError, match="not absolute"):
        binary.validate_binary(path, euid=0)


def test_missing_binary_refused(tmp_path):
    with pytest.raises(CriuError, match="criu binary .*nope does not exist") as err:
        binary.validate_binary(str(tmp_path / "nope"), euid=NONROOT_EUID)
    assert "nucleus.criu.criu role" in err.value.msg
    with pytest.raises(CriuError, match="does not exist"):
        binary.validate_binary(str(tmp_path / "missing-dir" / "criu"), euid=NONROOT_EUID)


def test_symlink_to_good_binary_accepted_and_resolved(tmp_path):
    target = write_elf(tmp_path / "lib" / "criu" / "criu")
    (tmp_path / "sbin").mkdir(mode=0o755)
    link = tmp_path / "sbin" / "criu"
    link.symlink_to(target)
    assert binary.validate_binary(str(link), euid=NONROOT_EUID) == target
    assert binary.discover(criu_path=str(link), euid=NONROOT_EUID) == target


def test_relative_symlink_resolved(tmp_path):
    target = write_elf(tmp_path / "opt" / "criu" / "sbin" / "criu")
    (tmp_path / "sbin").mkdir(mode=0o755)
    (tmp_path / "sbin" / "criu").symlink_to("../opt/criu/sbin/criu")
    assert binary.validate_binary(str(tmp_path / "sbin" / "criu"), euid=NONROOT_EUID) == target


def test_discover_returns_the_real_path_of_a_linked_candidate(trusted, tmp_path):
    target = write_elf(tmp_path / "private" / "criu")
    os.makedirs(os.path.dirname(trusted[0]), mode=0o755)
    os.symlink(target, trusted[0])
    assert binary.discover(euid=OWNER, env_path="") == target


def test_symlink_into_group_writable_directory_refused(tmp_path):
    target = write_elf(tmp_path / "lib" / "criu")
    os.chmod(tmp_path / "lib", 0o775)
    (tmp_path / "sbin").mkdir(mode=0o755)
    link = tmp_path / "sbin" / "criu"
    link.symlink_to(target)
    with pytest.raises(CriuError, match="writable by group/others") as err:
        binary.validate_binary(str(link), euid=NONROOT_EUID)
    assert err.value.details["path"] == str(tmp_path / "lib")


def test_symlink_to_writable_binary_refused(tmp_path):
    target = write_elf(tmp_path / "lib" / "criu", mode=0o777)
    (tmp_path / "sbin").mkdir(mode=0o755)
    (tmp_path / "sbin" / "criu").symlink_to(target)
    with pytest.raises(CriuError, match="writable by group/others"):
        binary.validate_binary(str(tmp_path / "sbin" / "criu"), euid=NONROOT_EUID)


@needs_root
def test_symlink_owned_by_another_user_refused(tmp_path):
    target = write_elf(tmp_path / "lib" / "criu")
    (tmp_path / "sbin").mkdir(mode=0o755)
    link = tmp_path / "sbin" / "criu"
    link.symlink_to(target)
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(CriuError, match="Symlink .*sbin/criu is owned by uid %d" % OTHER_UID):
        binary.validate_binary(str(link), euid=0)


# --- the ELF's loader and library directories ---------------------------------------------------


def _patched(tmp_path, *args, pad=True):
    """A copy of /bin/true at tmp/opt/bin/criu changed by patchelf. ``pad`` appends zeros after it, so that no
    string patchelf moved to the end of the file lies within 4096 bytes of its end."""
    path = write_elf(tmp_path / "opt" / "bin" / "criu")
    patchelf(path, *args)
    if pad:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 8192)
    return path


def _loader_copy(directory, mode=0o755):
    """A copy of the system's dynamic loader in ``directory``; returns its path."""
    with open(REAL_ELF, "rb") as handle:
        interpreter = elf.read_elf(handle.fileno(), os.path.dirname(REAL_ELF)).interpreter
    return write_elf(os.path.join(str(directory), os.path.basename(interpreter)), mode=mode, source=os.path.realpath(interpreter))


@needs_patchelf
def test_loader_in_a_trusted_place_accepted(tmp_path):
    loader = _loader_copy(tmp_path / "opt" / "lib")
    path = _patched(tmp_path, "--set-interpreter", loader)
    assert binary.validate_binary(path, euid=NONROOT_EUID) == path


@needs_patchelf
@pytest.mark.parametrize("dir_mode, file_mode", [(0o775, 0o755), (0o755, 0o777)])
def test_loader_another_user_can_change_refused(tmp_path, dir_mode, file_mode):
    loader = _loader_copy(tmp_path / "opt" / "lib", mode=file_mode)
    os.chmod(tmp_path / "opt" / "lib", dir_mode)
    path = _patched(tmp_path, "--set-interpreter", loader)
    with pytest.raises(CriuError, match="writable by group/others"):
        binary.validate_binary(path, euid=NONROOT_EUID)


@needs_patchelf
def test_loader_in_a_missing_directory_refused(tmp_path):
    path = _patched(tmp_path, "--set-interpreter", str(tmp_path / "gone" / "ld.so"))
    with pytest.raises(CriuError, match="gone does not exist"):
        binary.validate_binary(path, euid=NONROOT_EUID)


@needs_patchelf
def test_missing_loader_refused_with_criu_error(tmp_path):
    (tmp_path / "opt" / "lib").mkdir(parents=True, mode=0o755)
    path = _patched(tmp_path, "--set-interpreter", str(tmp_path / "opt" / "lib" / "ld.so"))
    with pytest.raises(CriuError, match="ld.so"):
        binary.validate_binary(path, euid=NONROOT_EUID)


@needs_patchelf
def test_library_dirs_every_file_checked(tmp_path):
    lib = tmp_path / "opt" / "lib"
    lib.mkdir(parents=True, mode=0o755)
    (lib / "libc.so.6").write_bytes(b"not really")
    os.chmod(lib / "libc.so.6", 0o644)
    path = _patched(tmp_path, "--force-rpath", "--set-rpath", "$ORIGIN/../lib")
    assert binary.validate_binary(path, euid=NONROOT_EUID) == path
    os.chmod(lib / "libc.so.6", 0o666)
    with pytest.raises(CriuError, match="Library file of criu .*libc.so.6 is writable by group/others") as err:
        binary.validate_binary(path, euid=NONROOT_EUID)
    assert err.value.details["path"] == str(lib / "libc.so.6")
    os.chmod(lib / "libc.so.6", 0o644)
    os.chmod(lib, 0o777)
    with pytest.raises(CriuError, match="Library directory of criu .*lib is writable by group/others"):
        binary.validate_binary(path, euid=NONROOT_EUID)


@needs_patchelf
@needs_root
def test_library_symlink_owned_by_another_user_refused(tmp_path):
    """Every entry of a library directory counts, a symlink (which the loader follows) too."""
    lib = tmp_path / "opt" / "lib"
    lib.mkdir(parents=True, mode=0o755)
    (lib / "libc.so.6").symlink_to("/nonexistent/libc.so.6")
    os.lchown(lib / "libc.so.6", OTHER_UID, OTHER_UID)
    path = _patched(tmp_path, "--set-rpath", "$ORIGIN/../lib")  # DT_RUNPATH
    with pytest.raises(CriuError, match="Library file of criu .*libc.so.6 is owned by uid %d" % OTHER_UID):
        binary.validate_binary(path, euid=0)


@needs_patchelf
def test_missing_library_dir_is_not_a_crash(tmp_path):
    path = _patched(tmp_path, "--force-rpath", "--set-rpath", "$ORIGIN/../nolib")
    try:
        assert binary.validate_binary(path, euid=NONROOT_EUID) == path
    except CriuError as exc:
        assert "nolib" in exc.msg


@needs_patchelf
def test_patchelfed_binary_accepted_without_padding(tmp_path):
    lib = tmp_path / "opt" / "lib"
    lib.mkdir(parents=True, mode=0o755)
    path = _patched(tmp_path, "--force-rpath", "--set-rpath", "$ORIGIN/../lib", pad=False)
    assert binary.validate_binary(path, euid=NONROOT_EUID) == path


# --- versions ---------------------------------------------------------------------------------


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


def test_probe_version_runs_the_binary_without_configuration(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu", '#!/bin/sh\n[ "$1" = --no-default-config ] && [ "$2" = --version ] '
                     '&& [ $# = 2 ] || exit 9\nprintf "Version: 4.2.3\\nGitID: v4.2.3\\n"\n')
    assert binary.probe_version(path) == (4, 2, 3)


def test_probe_version_runs_with_the_fixed_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CRIU_CONFIG_FILE", "/tmp/evil.conf")
    monkeypatch.setenv("PATH", str(tmp_path / "evil") + os.pathsep + os.environ.get("PATH", ""))
    env_file = tmp_path / "env"
    path = write_exe(tmp_path / "bin" / "criu", "#!/bin/sh\nenv > %s\necho 'Version: 4.2.0'\n" % env_file)
    assert binary.probe_version(path) == (4, 2, 0)
    seen = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert "CRIU_CONFIG_FILE" not in seen
    assert {name: seen.get(name) for name in binary.ENVIRONMENT} == binary.ENVIRONMENT
    assert set(seen) - set(binary.ENVIRONMENT) <= {"PWD", "SHLVL", "_", "OLDPWD"}


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
