"""The nucleus.criu.criu role installs a working criu from nothing, proves it, and is idempotent.

It installs into a private prefix of its own (a second tree and link), so the criu the rest
of the suite uses is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import PLAYBOOK, REPO, criu_role, ensure_test_image, pipe_max_size, podman, run_module

TREE = "/opt/criu-roletest"
LINK = "/usr/local/sbin/criu-roletest"
WORKDIR = "/var/cache/nucleus-criu-roletest"


CONTAINERS_CONF = "/etc/containers/containers.conf.d/60-nucleus-criu.conf"
# The kernel's initial PID namespace always has this inode (PROC_PID_INIT_INO).
IN_INITIAL_PID_NAMESPACE = os.stat("/proc/self/ns/pid").st_ino == 0xEFFFFFFC
PREFIX = {"criu_private_tree": TREE, "criu_link_path": LINK, "criu_workdir": WORKDIR}


def run_role(*flags, role_vars=None):
    """playbooks/criu.yml on localhost, by default into the test's own prefix; returns its output."""
    return criu_role(PREFIX if role_vars is None else role_vars, *flags)


@pytest.fixture
def clean_prefix():
    def remove():
        for path in (TREE, WORKDIR):
            shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(LINK):
            os.unlink(LINK)
    remove()
    yield
    remove()


def test_role_installs_proves_and_is_idempotent(clean_prefix):
    predicted = run_role("--check")
    assert "changed=0" not in predicted and not os.path.lexists(LINK), "check mode must predict and change nothing"
    first = run_role()
    assert "changed=0" not in first, first
    # A root-owned link to the criu ELF itself (its loader and libraries inside the tree), not a wrapper script.
    assert os.lstat(LINK).st_uid == 0 and os.readlink(LINK) == TREE + "/usr/sbin/criu"
    with open(LINK, "rb") as handle:
        assert handle.read(4) == b"\x7fELF"
    check = subprocess.run([LINK, "check"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert subprocess.run([LINK, "--version"], capture_output=True, text=True, check=True).stdout.startswith("Version: 4.")
    again = run_role()
    assert "changed=0" in again and "failed=0" in again, again


def test_role_prepares_a_post_copy_source(tmp_path):
    """criu_postcopy_source: fs.pipe-max-size raised now and kept in a sysctl.d file; check mode predicts it."""
    sysctl_file = tmp_path / "60-nucleus-criu-postcopy.conf"
    # The criu the rest of the suite uses (already installed): only the post-copy part has work to do.
    role_vars = {"criu_postcopy_source": True, "criu_sysctl_file": str(sysctl_file)}

    def role(*flags):
        return run_role(*flags, role_vars=role_vars)

    with pipe_max_size(1048576):
        predicted = role("--check")
        assert "changed=0" not in predicted and not sysctl_file.exists()
        assert open("/proc/sys/fs/pipe-max-size").read().strip() == "1048576", "check mode must not change the sysctl"
        assert "changed=0" not in role()
        assert open("/proc/sys/fs/pipe-max-size").read().strip() == "4194304"
        assert "fs.pipe-max-size = 4194304" in sysctl_file.read_text()
        again = role()
        assert "changed=0" in again and "failed=0" in again, again


def test_role_refuses_an_os_family_it_cannot_install_on(clean_prefix):
    """On a host that needs criu, an unsupported OS family fails before apt is touched, naming what is supported."""
    argv = [PLAYBOOK, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
            "-e", json.dumps(dict(PREFIX, criu_supported_os_families=["RedHat"])), "playbooks/criu.yml"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "installs criu with apt and dpkg, on the OS families RedHat" in proc.stdout, proc.stdout
    assert "(Debian family)" in proc.stdout and "which criu they offer" not in proc.stdout, proc.stdout
    assert not os.path.lexists(TREE) and not os.path.lexists(LINK)


def test_role_prepares_a_container_host():
    """criu_containers: Podman and runc installed, a containers.conf drop-in that makes them work here (runc; this host's
    limits when it withholds CAP_SYS_RESOURCE), proven by criu_info; check mode predicts; a rerun changes nothing.
    Without the drop-in criu_info names the problem, and it is real: no container starts (but in a nested PID namespace,
    where Podman caps a container's limits at its own)."""
    role_vars = {"criu_containers": True}
    criu_role(role_vars)  # Podman installed (a no-op when it is)
    # As on a fresh host: Debian's podman makes no containers.conf.d (refused if it holds more than the role's file).
    assert os.listdir(os.path.dirname(CONTAINERS_CONF)) == [os.path.basename(CONTAINERS_CONF)]
    shutil.rmtree(os.path.dirname(CONTAINERS_CONF))
    before = run_module("criu_info", {"engine": "podman"})["containers"]
    assert before["path"] == "/usr/bin/podman" and before["runtime"]["name"] == "runc", before
    assert before["criu"]["version"].startswith("4.") and not before["criu"]["problem"], before
    if not before["cap_sys_resource"]:
        assert not before["usable"] and any("CAP_SYS_RESOURCE" in p and CONTAINERS_CONF in p for p in before["problems"]), before
        started = podman("run", "--rm", ensure_test_image(), "sh", "-c", "exit 0", check=False)
        if IN_INITIAL_PID_NAMESPACE:
            assert started.returncode != 0 and "rlimit" in started.stderr, started.stderr
        else:  # Podman in a nested PID namespace (scripts/fresh.sh) gives containers this process's own limits
            assert started.returncode == 0, started.stderr

    predicted = criu_role(role_vars, "--check")
    assert "changed=0" not in predicted and not os.path.exists(os.path.dirname(CONTAINERS_CONF)), predicted
    assert "changed=0" not in criu_role(role_vars)
    assert os.stat(os.path.dirname(CONTAINERS_CONF)).st_mode & 0o7777 == 0o755
    written = open(CONTAINERS_CONF).read()
    assert 'runtime = "runc"' in written, written
    after = run_module("criu_info", {"engine": "podman"})["containers"]
    assert after["usable"] and after["problems"] == [], after
    if not after["cap_sys_resource"]:
        ceilings = after["limit_ceilings"]
        assert after["default_ulimits"] == ["nofile=%d:%d" % (ceilings["nofile"], ceilings["nofile"]),
                                            "nproc=%d:%d" % (ceilings["nproc"], ceilings["nproc"])], after
    assert podman("run", "--rm", ensure_test_image(), "sh", "-c", "exit 0").returncode == 0
    again = criu_role(role_vars)
    assert "changed=0" in again and "failed=0" in again, again
    # As the guide writes it on the command line: -e criu_containers=true is the string "true".
    as_typed = criu_role({}, "-e", "criu_containers=true")
    assert "changed=0" in as_typed and "failed=0" in as_typed and "checkpoints with runc" in as_typed, as_typed
