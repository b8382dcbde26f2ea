"""Can this host checkpoint, and restore a given checkpoint? (_host)"""

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _info as info_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import KEY, metadata_for, write_exe

GOOD = ('#!/bin/sh\n[ "$1" = --no-default-config ] && [ "$2" = --version ] && { echo "Version: 4.2"; exit 0; }\n'
        '[ "$1" = check ] && [ "$2" = --no-default-config ] || exit 9\n'
        '[ "$3" = --feature ] && { [ "$4" = mem_dirty_track ]; exit $?; }\necho "Looks good."\n')

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


def test_criu_facts_usable_and_too_old(tmp_path, scripts_as_elf):
    good = write_exe(tmp_path / "good" / "criu", GOOD)
    facts = host.criu_facts(good)
    assert facts["usable"] is True and facts["path"] == good and facts["version"] == "4.2.0" and facts["problems"] == []
    assert facts["check"] is True and facts["check_output"] == "Looks good."
    assert facts["dirty_tracking"] is True and facts["lazy_pages"] is False
    assert facts["missing_features"] == [name for name in host.FEATURES if name != "mem_dirty_track"]
    old = write_exe(tmp_path / "old" / "criu", '#!/bin/sh\necho "Version: 4.1.1"\n')
    facts = host.criu_facts(old)
    assert facts["usable"] is False and facts["version"] == "4.1.1" and facts["path"] == old
    assert "too old" in facts["problems"][0]
    broken = write_exe(tmp_path / "broken" / "criu",
                       '#!/bin/sh\n[ "$2" = --version ] && { echo "Version: 4.2"; exit 0; }\necho "no kernel support" >&2\nexit 1\n')
    facts = host.criu_facts(broken)
    assert facts["usable"] is False and facts["problems"] == ["criu check failed on this kernel: no kernel support"]


def test_criu_facts_report_the_real_path(tmp_path, scripts_as_elf):
    good = write_exe(tmp_path / "opt" / "criu", GOOD)
    (tmp_path / "sbin").mkdir(mode=0o755)
    (tmp_path / "sbin" / "criu").symlink_to(good)
    assert host.criu_facts(str(tmp_path / "sbin" / "criu"))["path"] == good


def test_criu_facts_of_an_untrusted_or_missing_binary(tmp_path):
    script = write_exe(tmp_path / "bin" / "criu", GOOD)
    facts = host.criu_facts(script)
    assert facts["usable"] is False and facts["path"] == script and "not an ELF executable" in facts["problems"][0]
    facts = host.criu_facts(str(tmp_path / "missing"))
    assert facts["usable"] is False and "does not exist" in facts["problems"][0]


@pytest.mark.parametrize("hmac_key, file_data, expected", [
    (None, None, {"given": False, "usable": False, "problem": ""}),
    (KEY.decode(), None, {"given": True, "usable": True, "bytes": len(KEY), "problem": ""}),
    (None, KEY + b"\n", {"given": True, "usable": True, "bytes": len(KEY), "problem": ""}),
])
def test_key_facts(tmp_path, hmac_key, file_data, expected):
    key_file = None
    if file_data is not None:
        key_file = str(tmp_path / "key")
        (tmp_path / "key").write_bytes(file_data)
        os.chmod(key_file, 0o600)
    assert info_.key_facts(hmac_key, key_file) == expected


@pytest.mark.parametrize("hmac_key, hmac_key_file, problem", [
    ("", None, "hmac_key is empty"),
    ("sekrit-key", None, "at least 16 bytes"),
    (None, "/nonexistent/key", "does not exist"),
])
def test_key_facts_problems(hmac_key, hmac_key_file, problem):
    facts = info_.key_facts(hmac_key, hmac_key_file)
    assert facts == {"given": True, "usable": False, "problem": facts["problem"]} and problem in facts["problem"]
    assert "sekrit" not in repr(facts)  # never the key itself


def test_info(tmp_path, scripts_as_elf, spawn):
    good = write_exe(tmp_path / "good" / "criu", GOOD)
    child = spawn(["sleep", "60"])
    result = info_.info(argspec.INFO.request(argspec.INFO.defaults(criu_path=good, pid=child.pid, hmac_key=KEY.decode())))
    assert result["changed"] is False and result["criu"]["usable"] is True and result["criu"]["path"] == good
    assert result["kernel"] == os.uname().release and result["arch"] == os.uname().machine
    assert result["can_checkpoint"] is host.can_checkpoint()[0] and result["privilege_problem"] == host.can_checkpoint()[1]
    assert result["hash_algorithms"] == integrity.available_algorithms()
    assert result["page_server_problem"] == host.page_server_problem()
    assert result["signing_key"] == {"given": True, "usable": True, "bytes": len(KEY), "problem": ""}
    assert result["process"]["pid"] == child.pid
    assert KEY.decode() not in repr(result)


def test_info_without_process_nor_criu(tmp_path):
    result = info_.info(argspec.INFO.request(argspec.INFO.defaults(criu_path=str(tmp_path / "missing"))))
    assert "process" not in result and result["criu"]["usable"] is False
    assert result["signing_key"] == {"given": False, "usable": False, "problem": ""}


@pytest.mark.parametrize("size, problem", [(1048576, True), (4194304, False), (8388608, False)])
def test_page_server_problem_names_the_sysctl(tmp_path, monkeypatch, size, problem):
    sysctl = tmp_path / "pipe-max-size"
    sysctl.write_text("%d\n" % size)
    monkeypatch.setattr(host, "PIPE_MAX_SIZE", str(sysctl))
    found = host.page_server_problem()
    assert bool(found) is problem
    if problem:
        assert "fs.pipe-max-size is 1048576 here" in found and "sysctl -w fs.pipe-max-size=4194304" in found
        with pytest.raises(CriuError, match="post-copy migration: fs.pipe-max-size") as err:
            host.require_page_server()
        assert err.value.details["path"] == str(sysctl)
    else:
        host.require_page_server()
