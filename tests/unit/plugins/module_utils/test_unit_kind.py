"""The systemd unit kind's pure parts (kinds/_unit.py) and the criu argv it relies on (_runtime); no systemd, no criu.
What systemd and criu do with them is tested on the systemd test machines (tests/integration/test_units.py)."""

import os
import socket

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _runtime as runtime
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Dir, State
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as registry
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _process as process
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _unit as unit
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils._requests import WorkloadRef


@pytest.mark.parametrize("given, expected", [("web", "web.service"), ("web.service", "web.service"),
                                             ("getty@tty1.service", "getty@tty1.service")])
def test_unit_names_are_services(given, expected):
    assert unit.require_unit_name(given) == expected


@pytest.mark.parametrize("given", ["web.socket", "../x.service", "a/b.service", "", "we b.service", "x$y.service", ".hidden"])
def test_other_names_are_refused(given):
    with pytest.raises(CriuError):
        unit.require_unit_name(given)


def test_a_request_naming_a_unit_is_of_the_unit_kind_and_a_checkpoint_recording_one_too():
    assert registry.asked(WorkloadRef(unit="web.service")).name == "unit"
    assert registry.asked(WorkloadRef(pid=42)).name == "process"
    assert registry.of({"unit": {"name": "web.service"}, "process": {}}).name == "unit"
    assert registry.of({"process": {}}).name == "process"


def test_stdout_and_stderr_share_one_inherited_stream_or_take_one_each():
    assert unit.inherit_map({"1": 77, "2": 77}) == {77: 1}
    assert unit.inherit_map({"1": 77, "2": 78}) == {77: 1, 78: 2}
    assert unit.inherit_map({"2": 78}) == {78: 2}
    assert unit.inherit_map({}) == {}


def test_stdio_sockets_of_this_process():
    left, right = socket.socketpair()
    inode = os.fstat(left.fileno()).st_ino
    saved = os.dup(2)
    try:
        os.dup2(left.fileno(), 2)
        found = unit.stdio_sockets(os.getpid())
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        left.close()
        right.close()
    assert found.get("2") == inode


def test_exec_lines_are_quoted_as_systemd_reads_them():
    assert unit.quote_exec(["/usr/sbin/criu", "fd[1]:socket:[5]", "a b", "100%", "$HOME", 'q"\\']) == \
        '"/usr/sbin/criu" "fd[1]:socket:[5]" "a b" "100%%" "$$HOME" "q\\"\\\\"'
    with pytest.raises(CriuError):
        unit.quote_exec(["a\nExecStartPost=/bin/evil"])


def test_cgroup_options_are_refused_for_a_unit():
    kind = unit.Unit()
    kind.refuse_unsupported({"manage_cgroups": None, "tcp_established": True}, "dump")
    with pytest.raises(CriuError, match="manage_cgroups"):
        kind.refuse_unsupported({"manage_cgroups": "soft"}, "dump")
    with pytest.raises(CriuError, match="cgroup_root"):
        kind.refuse_unsupported({"cgroup_root": ["/:/x"]}, "restore")


def test_a_unit_migrates_in_both_modes_and_tells_the_target_its_boot_choice():
    kind = unit.Unit()
    kind.refuse_migration("copy")
    kind.refuse_migration("postcopy")
    record = {"unit": {"name": "web.service", "enabled": "enabled", "control_group": "/system.slice/web.service"},
              "settings": {"unit_boot": "disable"}}
    assert kind.recorded_identity(record) == {"unit": {"name": "web.service", "enabled": "enabled", "boot": "disable"}}
    assert registry.of(kind.recorded_identity(record)).name == "unit", "the target's request picks the unit kind"
    assert kind.claim_key({"pid": 42, "starttime": 7}, record) == "unit-web.service", "one migration per unit, not per pid"


def test_a_lost_source_is_one_whose_every_frozen_process_is_gone():
    kind = unit.Unit()
    assert not kind.source_lost({"process": {"tree": [list(member) for member in procfs.tree_identity(os.getpid())]}})
    assert kind.source_lost({"process": {"tree": [[os.getpid(), 1]]}}), "the pid runs, but another process: lost"
    assert not kind.source_lost({"process": {"tree": []}}), "nothing frozen yet: nothing lost"
    assert not registry.of({"container": {"id": "f" * 64}}).source_lost({"process": {"tree": [[os.getpid(), 1]]}}), \
        "a container's checkpoint, kept by Podman, outlives its processes"


def test_a_migration_restore_leaves_the_copy_stopped_or_lazy():
    criu = CriuRuntime("/usr/sbin/criu", (4, 2, 1))
    stopped = criu.restore_command(Dir(7, "/x/images"), Dir(8, "/tmp/work"), {}, "/run/p.pid", {}, leave_stopped=True)
    assert "--leave-stopped" in stopped and "--lazy-pages" not in stopped
    criu = CriuRuntime("/usr/sbin/criu", (4, 2, 1))
    lazy = criu.restore_command(Dir(7, "/x/images"), Dir(8, "/tmp/work"), {}, "/run/p.pid", {}, lazy=True)
    assert "--lazy-pages" in lazy and "--leave-stopped" not in lazy


def test_external_sockets_are_marked_at_dump():
    assert runtime.external_unix_argv([5, 9]) == ["--external", "unix[5]", "--external", "unix[9]"]
    criu = CriuRuntime("/usr/sbin/criu", (4, 2, 1))
    argv = criu._dump_argv(42, Dir(7, "/x/images"), {"leave_stopped": True}, external_unix=[5])
    assert argv[-2:] == ["--external", "unix[5]"] and "--leave-stopped" in argv


def test_restore_command_reaches_our_fds_from_another_process():
    criu = CriuRuntime("/usr/sbin/criu", (4, 2, 1))
    argv = criu.restore_command(Dir(7, "/x/images"), Dir(8, "/tmp/work"), {"manage_cgroups": "ignore"}, "/tmp/work/unit.pid",
                                {10327975: 1})
    own = "/proc/%d/fd/" % os.getpid()
    assert argv[:2] == ["/usr/sbin/criu", "restore"]
    assert argv[argv.index("--images-dir") + 1] == own + "7" and argv[argv.index("--work-dir") + 1] == own + "8"
    assert argv[argv.index("--inherit-fd") + 1] == "fd[1]:socket:[10327975]"
    assert "--restore-detached" in argv and argv[argv.index("--pidfile") + 1] == "/tmp/work/unit.pid"
    assert "--manage-cgroups=ignore" in argv
    assert criu.state == State.RESTORING


def test_restore_finished_reads_criu_log(tmp_path):
    work = Dir(os.open(str(tmp_path), os.O_RDONLY), str(tmp_path))
    try:
        criu = CriuRuntime("/usr/sbin/criu", (4, 2, 1))
        criu.restore_command(Dir(7, "/x"), work, {}, "/tmp/p", {})
        (tmp_path / "restore.log").write_text("(00.1) Error (criu/files.c:1221): Unable to open fd=1 id=0xa\n")
        with pytest.raises(CriuError, match="Unable to open fd=1"):
            criu.restore_finished(work, 1)
        criu.restore_command(Dir(7, "/x"), work, {}, "/tmp/p", {})
        (tmp_path / "restore.log").write_text("(00.5) Restore finished successfully\n")
        assert criu.restore_finished(work, 0).log_path == str(tmp_path / "restore.log")
        assert criu.state == State.RESTORED
    finally:
        os.close(work.fd)


@pytest.mark.parametrize("asked, tcp, host_network, used", [
    ("nftables", False, True, "skip"),  # nothing to lock, and a table would be left behind
    ("nftables", True, True, "nftables"),  # connections to keep: criu's lock, as asked
    ("nftables", False, False, "nftables"),  # a network namespace of its own: locked whole, its table dies with it
    ("iptables", False, True, "iptables"),
    ("skip", True, True, "skip"),
])
def test_the_network_lock_a_dump_takes(asked, tcp, host_network, used):
    assert process.network_lock({"network_lock": asked, "tcp_established": tcp}, host_network) == used
