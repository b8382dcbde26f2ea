"""Can this host checkpoint, and restore a given checkpoint? (_host)"""

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import metadata_for, write_exe

PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def test_effective_caps_matches_proc():
    status = open("/proc/self/status").read()
    assert host.effective_caps() == int(status.split("CapEff:")[1].split()[0], 16)


@pytest.mark.parametrize("caps, ok", [
    (0, False),
    (1 << host.CAP_SYS_PTRACE, False),
    (1 << host.CAP_SYS_ADMIN, False),
    (1 << host.CAP_SYS_PTRACE | 1 << host.CAP_SYS_ADMIN, True),
    (1 << host.CAP_SYS_PTRACE | 1 << host.CAP_CHECKPOINT_RESTORE, True),
    ((1 << 41) - 1, True),
])
def test_can_checkpoint(monkeypatch, caps, ok):
    monkeypatch.setattr(host, "effective_caps", lambda: caps)
    verdict, reason = host.can_checkpoint()
    assert verdict is ok and (reason == "") is ok
    if not ok:
        assert "become: true" in reason
        with pytest.raises(CriuError, match="lacks the capabilities"):
            host.require_privileges()


def test_busy_pids():
    process = {"pid": os.getpid(), "tree": [os.getpid(), PID_MAX + 1, "x"]}
    assert host.busy_pids({"process": process}) == [os.getpid()]
    assert host.busy_pids({"process": dict(process, pid_namespace_init=True)}) == []


def test_restore_problems():
    free = metadata_for([], process={"pid": PID_MAX + 1, "tree": [PID_MAX + 1]})
    assert host.restore_problems(free) == []
    other_arch = dict(free, source={"arch": "s390x-not-this"})
    assert "made on s390x-not-this" in host.restore_problems(other_arch)[0]
    busy = dict(free, process={"pid": os.getpid(), "tree": [os.getpid()]})
    assert "PIDs %d of the checkpointed tree are in use" % os.getpid() in host.restore_problems(busy)[0]


def test_criu_facts_usable_and_too_old(tmp_path):
    good = write_exe(tmp_path / "good" / "criu", '#!/bin/sh\ncase "$1" in --version) echo "Version: 4.2";; check) '
                     '[ "$2" = --feature ] && exit 1; echo "Looks good.";; esac\n')
    facts = host.criu_facts(good)
    assert facts["usable"] is True and facts["path"] == good and facts["version"] == "4.2.0" and facts["problems"] == []
    assert facts["lazy_pages"] is False and facts["dirty_tracking"] is False
    old = write_exe(tmp_path / "old" / "criu", '#!/bin/sh\necho "Version: 4.1.1"\n')
    facts = host.criu_facts(old)
    assert facts["usable"] is False and facts["version"] == "4.1.1" and facts["path"] == old
    assert "too old" in facts["problems"][0]
    broken = write_exe(tmp_path / "broken" / "criu",
                       '#!/bin/sh\n[ "$1" = --version ] && { echo "Version: 4.2"; exit 0; }\necho "no kernel support" >&2\nexit 1\n')
    facts = host.criu_facts(broken)
    assert facts["usable"] is False and facts["problems"] == ["criu check failed on this kernel: no kernel support"]


@pytest.mark.parametrize("size, problem", [(1048576, True), (4194304, False), (8388608, False)])
def test_page_server_problem_names_the_sysctl(tmp_path, monkeypatch, size, problem):
    sysctl = tmp_path / "pipe-max-size"
    sysctl.write_text("%d\n" % size)
    monkeypatch.setattr(host, "PIPE_MAX_SIZE", str(sysctl))
    found = host.page_server_problem()
    assert bool(found) is problem
    if problem:
        assert "fs.pipe-max-size is 1048576 here" in found and "sysctl -w fs.pipe-max-size=4194304" in found
        with pytest.raises(CriuError, match="Cannot checkpoint with lazy_pages: fs.pipe-max-size") as err:
            host.require_page_server()
        assert err.value.details["path"] == str(sysctl)
    else:
        host.require_page_server()
