"""/proc facts (_procfs), exercised on processes the test starts itself."""

import os
import re
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import OTHER_UID, needs_root, wait_for

STAT = "4242 (%s) S 100 4242 4242 34817 4242 4194560 1 0 0 0 2 3 0 0 20 0 1 0 987654 1000 100 18446744073709551615"


@pytest.mark.parametrize("comm", ["sleep", "my prog", "a) b (c", "x)", ")) ((", ""])
def test_parse_stat_with_hostile_comm(comm):
    st = procfs.parse_stat(STAT % comm)
    assert st == procfs.ProcStat(pid=4242, comm=comm, state="S", ppid=100, pgid=4242, sid=4242,
                                 tty_nr=34817, flags=4194560, starttime=987654)


def test_parse_stat_of_self_matches_os():
    st = procfs.read_stat(os.getpid())
    assert st.pid == os.getpid() and st.ppid == os.getppid()
    assert st.pgid == os.getpgrp() and st.sid == os.getsid(0) and st.state in "RS"


@pytest.mark.parametrize("text, expected", [
    ("1234\n", 1234),
    ("  5678  \n", 5678),
    ("1", 1),
    ("4194304", 4194304),
    ("Error code: 255 (EPERM)", None),
    ("restored successfully pid=5678", None),
    ("", None),
    ("   \n", None),
    ("no pid here", None),
    ("0", None),
    ("-5", None),
    ("+5", None),
    ("12a", None),
    ("12 34", None),
    ("1_000", None),
    ("4194305", None),
    ("99999999999999999999999", None),
    ("\u0661\u0662", None),  # Arabic-Indic digits
    ("\u00b2", None),  # superscript two: str.isdigit() is True
    ("１２", None),  # fullwidth digits
])
def test_parse_pidfile_strict(text, expected):
    assert procfs.parse_pidfile(text) == expected


@settings(deadline=None, max_examples=200)
@given(st.text(max_size=30))
def test_parse_pidfile_only_accepts_ascii_digits(text):
    pid = procfs.parse_pidfile(text)
    if not re.fullmatch(r"\s*[0-9]+\s*", text):
        assert pid is None
    else:
        assert pid is None or pid == int(text.strip())


@settings(deadline=None, max_examples=200)
@given(n=st.integers(min_value=1, max_value=4194304),
       pad=st.tuples(st.sampled_from(["", " ", "\n", "\t "]), st.sampled_from(["", "\n", " \n", "\r\n"])))
def test_parse_pidfile_round_trip(n, pad):
    assert procfs.parse_pidfile(pad[0] + str(n) + pad[1]) == n


@pytest.mark.parametrize("content", [b"4242\n", b" 4242 "])
def test_read_pidfile_accepts_digits(tmp_path, content):
    (tmp_path / "pid").write_bytes(content)
    assert procfs.read_pidfile(str(tmp_path / "pid")) == 4242


@pytest.mark.parametrize("content", [b"", b"\n", b"garbage", b"Error code: 255", b"12\x0034", b"\xff\xfe12"])
def test_read_pidfile_refuses_garbage(tmp_path, content):
    (tmp_path / "pid").write_bytes(content)
    with pytest.raises(CriuError, match="does not hold a pid"):
        procfs.read_pidfile(str(tmp_path / "pid"))


def test_read_pidfile_refuses_garbage_after_64_bytes(tmp_path):
    (tmp_path / "pid").write_bytes(b"4242" + b" " * 64 + b"Error code: 255")
    with pytest.raises(CriuError, match="does not hold a pid"):
        procfs.read_pidfile(str(tmp_path / "pid"))


def test_read_pidfile_follows_trusted_symlinks_and_refuses_missing(tmp_path):
    (tmp_path / "real").write_bytes(b"4242\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert procfs.read_pidfile(str(tmp_path / "link")) == 4242
    with pytest.raises(CriuError, match="Cannot read pidfile .*missing: it does not exist") as err:
        procfs.read_pidfile(str(tmp_path / "missing"))
    assert err.value.details == {"path": str(tmp_path / "missing")}
    with pytest.raises(CriuError, match="gone does not exist"):
        procfs.read_pidfile(str(tmp_path / "gone" / "pid"))


def test_read_pidfile_refuses_fifo_and_directory(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CriuError, match="pidfile .*fifo is not a regular file"):
        procfs.read_pidfile(str(tmp_path / "fifo"))  # and does not block on it
    with pytest.raises(CriuError, match="not a regular file"):
        procfs.read_pidfile(str(tmp_path))


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_read_pidfile_refuses_a_pidfile_others_can_write(tmp_path, mode):
    (tmp_path / "pid").write_bytes(b"4242\n")
    os.chmod(tmp_path / "pid", mode)
    with pytest.raises(CriuError, match="pidfile .*pid is writable by group/others .*another user could point it at any process"):
        procfs.read_pidfile(str(tmp_path / "pid"))


def test_read_pidfile_refuses_an_untrusted_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "pid").write_bytes(b"4242\n")
    os.chmod(tmp_path / "run", 0o777)
    with pytest.raises(CriuError, match="Directory %s is writable by group/others.*keep the pidfile where only root" % (tmp_path / "run")):
        procfs.read_pidfile(str(tmp_path / "run" / "pid"))


@needs_root
def test_read_pidfile_refuses_a_pidfile_or_link_of_another_user(tmp_path):
    (tmp_path / "pid").write_bytes(b"4242\n")
    (tmp_path / "link").symlink_to(tmp_path / "pid")
    os.lchown(tmp_path / "link", OTHER_UID, OTHER_UID)
    with pytest.raises(CriuError, match="Symlink .*link is owned by uid %d" % OTHER_UID):
        procfs.read_pidfile(str(tmp_path / "link"))
    os.chown(tmp_path / "pid", OTHER_UID, OTHER_UID)
    with pytest.raises(CriuError, match="pidfile .*pid is owned by uid %d" % OTHER_UID):
        procfs.read_pidfile(str(tmp_path / "pid"))


def test_is_alive_own_pid_and_starttime():
    me = procfs.read_stat(os.getpid())
    assert procfs.is_alive(os.getpid())
    assert procfs.is_alive(os.getpid(), me.starttime)
    assert not procfs.is_alive(os.getpid(), me.starttime + 1)


def test_is_alive_reaped_and_zombie_child():
    child = subprocess.Popen(["true"])
    pid = child.pid
    try:
        assert wait_for(lambda: getattr(procfs.read_stat(pid), "state", "") == "Z")
        assert procfs.read_stat(pid) is not None and not procfs.is_alive(pid)  # zombie
    finally:
        child.wait()
    assert not procfs.is_alive(pid)  # reaped


def _tree(spawn):
    """sh -> (sleep, sh -> sleep): a three-level tree of four processes the test owns."""
    root = spawn(["sh", "-c", "sleep 60 & sh -c 'sleep 60 & wait' & wait"])
    children = wait_for(lambda: len(procfs.descendants(root.pid)) == 3 and procfs.children_map())
    assert children, "tree did not come up"
    return root, children


def test_descendants_and_children_map(spawn):
    root, children = _tree(spawn)
    direct = sorted(children[root.pid])
    assert len(direct) == 2
    below = procfs.descendants(root.pid, children)
    assert len(below) == 3 and root.pid not in below
    assert sorted(below[:2]) == direct  # parents before children
    for pid in below:
        assert pid in children.get(procfs.read_stat(pid).ppid, [])
    assert procfs.descendants(below[-1]) == []


def test_kill_tree_and_wait_gone(spawn):
    root = _tree(spawn)[0]
    victims = procfs.kill_tree(root.pid)
    assert victims[0] == root.pid and len(victims) == 4
    assert procfs.wait_gone(victims, timeout=5) == []


def test_process_facts_of_a_child(spawn):
    child = spawn(["sleep", "60"])
    # /proc/PID/cmdline is empty for a moment while the child execs: wait for it.
    assert wait_for(lambda: procfs._read_text("/proc/%d/cmdline" % child.pid).startswith("sleep"))
    st = procfs.read_stat(child.pid)
    facts = procfs.process_facts(child.pid, st)
    assert facts["pid"] == child.pid and facts["comm"] == "sleep" and facts["starttime"] == st.starttime
    assert facts["cmdline"] == ["sleep", "60"] and facts["tree"] == [child.pid]
    assert facts["exe"] == os.path.realpath(subprocess.check_output(["sh", "-c", "command -v sleep"], text=True).strip())
    assert facts["cwd"] == os.getcwd()
    assert facts["pid_namespace_init"] is False


def test_ancestors_include_self_and_parent():
    chain = procfs.ancestors(os.getpid())
    assert chain[:2] == [os.getpid(), os.getppid()]


@pytest.mark.parametrize("pid", [1, 0, -3])
def test_require_checkpointable_refuses_init_and_non_pids(pid):
    with pytest.raises(CriuError, match="Refusing to checkpoint pid %d: it is init" % pid):
        procfs.require_checkpointable(pid)


def test_require_checkpointable_refuses_self():
    with pytest.raises(CriuError, match="this module or one of its ancestors"):
        procfs.require_checkpointable(os.getpid())
    if os.getppid() > 1:
        with pytest.raises(CriuError, match="this module or one of its ancestors"):
            procfs.require_checkpointable(os.getppid())


def test_require_checkpointable_refuses_missing_pid():
    pid_max = int(open("/proc/sys/kernel/pid_max").read())
    with pytest.raises(CriuError, match="No process with pid %d exists" % (pid_max + 1)):
        procfs.require_checkpointable(pid_max + 1)


def test_require_checkpointable_refuses_zombie():
    child = subprocess.Popen(["true"])
    try:
        assert wait_for(lambda: getattr(procfs.read_stat(child.pid), "state", "") == "Z")
        with pytest.raises(CriuError, match="zombie"):
            procfs.require_checkpointable(child.pid)
    finally:
        child.wait()


def _a_kernel_thread():
    for name in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
        if name.isdigit():
            st = procfs.read_stat(int(name))
            if st and st.flags & procfs.PF_KTHREAD:
                return st
    return None


def test_require_checkpointable_refuses_kernel_thread():
    st = _a_kernel_thread()
    if st is None:
        pytest.skip("no kernel thread visible in this pid namespace")
    with pytest.raises(CriuError, match="kernel thread"):
        procfs.require_checkpointable(st.pid)


def test_require_checkpointable_accepts_a_workload(spawn):
    child = spawn(["sleep", "60"])
    st = procfs.require_checkpointable(child.pid)
    assert st.pid == child.pid


def test_require_checkpointable_with_synthetic_stat(monkeypatch):
    stats = {
        500: procfs.ProcStat(500, "kworker/0:1", "I", 2, 0, 0, 0, procfs.PF_KTHREAD, 1),
        600: procfs.ProcStat(600, "dead", "X", os.getpid(), 600, 600, 0, 0, 1),
        700: procfs.ProcStat(700, "job", "S", 1, 700, 700, 0, 0, 1),
    }
    real = procfs.read_stat
    monkeypatch.setattr(procfs, "read_stat", lambda pid: stats.get(pid) or real(pid))
    with pytest.raises(CriuError, match="kernel thread"):
        procfs.require_checkpointable(500)
    with pytest.raises(CriuError, match="zombie"):
        procfs.require_checkpointable(600)
    assert procfs.require_checkpointable(700) == stats[700]


def _stat(tty=0, sid=10, pgid=10):
    return procfs.ProcStat(pid=10, comm="job", state="S", ppid=1, pgid=pgid, sid=sid, tty_nr=tty, flags=0, starttime=5)


@pytest.mark.parametrize("st, tree, expected", [
    (_stat(), [10, 11], False),  # own session and group, no tty: a daemon
    (_stat(tty=34816), [10, 11], True),  # has a controlling terminal
    (_stat(sid=3), [10, 11], True),  # session leader outside the tree
    (_stat(pgid=3), [10, 11], True),  # process group leader outside the tree
    (_stat(sid=11, pgid=11), [10, 11], False),  # leaders inside the tree
])
def test_needs_shell_job(st, tree, expected):
    assert procfs.needs_shell_job(10, st, tree) is expected


def test_host_facts_and_boot_id():
    facts = procfs.host_facts()
    assert facts["kernel"] == os.uname().release and facts["arch"] == os.uname().machine
    assert re.fullmatch(r"[0-9a-f-]{36}", procfs.boot_id())
    assert facts["boot_id"] == procfs.boot_id()


def test_resolve_pid(tmp_path):
    assert procfs.resolve_pid(42, None) == 42
    (tmp_path / "pid").write_text("77\n")
    assert procfs.resolve_pid(None, str(tmp_path / "pid")) == 77


def test_process_state_of_self_and_of_a_missing_pid():
    me = procfs.process_state(os.getpid())
    assert me["alive"] and me["exists"] and me["starttime"] == procfs.read_stat(os.getpid()).starttime
    missing = procfs.process_state(int(open("/proc/sys/kernel/pid_max").read()) + 1)
    assert missing == {"pid": missing["pid"], "exists": False, "alive": False}


# The processes the fakes below know: pid -> parent (10 the root of a tree, 99 another process's).
PARENTS = {10: 1, 11: 10, 12: 11, 99: 1}


def fake_cgroups(monkeypatch, tmp_path, proc_cgroup: str, layout: dict, controllers: str = "") -> None:
    """A cgroup tree under tmp_path (``layout``: relative directory -> (cgroup.procs, memory.stat)) and the
    /proc/PID/cgroup every pid reads; the resident pages of every pid are 1 MiB; the processes are PARENTS'."""
    monkeypatch.setattr(procfs, "CGROUP_ROOT", str(tmp_path))
    monkeypatch.setattr(procfs, "read_stat", lambda pid: procfs.parse_stat(
        "%d (x) S %d 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0" % (pid, PARENTS[pid])) if pid in PARENTS else None)
    (tmp_path / "cgroup.controllers").write_text(controllers)
    for directory, (procs, stat) in layout.items():
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
        (tmp_path / directory / "cgroup.procs").write_text("".join("%d\n" % pid for pid in procs))
        (tmp_path / directory / "memory.stat").write_text(stat)
    real = procfs._read_text
    monkeypatch.setattr(procfs, "_read_text", lambda path, default="": (
        proc_cgroup if re.match(r"/proc/\d+/cgroup$", path) else "VmRSS:\t1024 kB\n" if path.endswith("/status") else real(path, default)))


V1 = "4:memory:/libpod_parent/ctr\n1:cpu:/libpod_parent/ctr\n0::/libpod_parent/ctr\n"
V1_STAT = "cache 1\nrss 1\ntotal_cache 33554432\ntotal_rss 1048576\ntotal_shmem 0\n"


def test_a_tree_with_a_memory_cgroup_of_its_own_holds_its_page_cache_too(monkeypatch, tmp_path):
    fake_cgroups(monkeypatch, tmp_path, V1, {"memory/libpod_parent/ctr": ([10, 11], V1_STAT)})
    assert procfs.held_bytes([10, 11]) == 33554432 + 1048576


def test_a_cgroup_shared_with_other_processes_says_nothing_of_the_trees_part(monkeypatch, tmp_path):
    fake_cgroups(monkeypatch, tmp_path, V1, {"memory/libpod_parent/ctr": ([10, 99], V1_STAT)})
    assert procfs.held_bytes([10]) == 1048576
    fake_cgroups(monkeypatch, tmp_path, V1, {"memory/libpod_parent/ctr": ([10], V1_STAT), "memory/libpod_parent/ctr/sub": ([99], "")})
    assert procfs.held_bytes([10]) == 1048576, "a process in a cgroup below it is charged there too"


def test_the_root_cgroup_is_never_a_workloads_own(monkeypatch, tmp_path):
    fake_cgroups(monkeypatch, tmp_path, "4:memory:/\n0::/\n", {"memory": ([10], V1_STAT)})
    assert procfs.held_bytes([10]) == 1048576


def test_cgroup_v2_adds_anon_and_file_where_memory_is_a_controller(monkeypatch, tmp_path):
    stat = "anon 2097152\nfile 4194304\nkernel 999999\n"
    fake_cgroups(monkeypatch, tmp_path, "0::/system.slice/x.service\n", {"system.slice/x.service": ([10], stat)}, "cpu memory pids")
    assert procfs.held_bytes([10]) == 6291456
    fake_cgroups(monkeypatch, tmp_path, "0::/system.slice/x.service\n", {"system.slice/x.service": ([10], stat)}, "cpu pids")
    assert procfs.held_bytes([10]) == 1048576, "no memory controller there: nothing charged"


def test_resident_pages_win_when_the_cgroup_charges_less(monkeypatch, tmp_path):
    fake_cgroups(monkeypatch, tmp_path, V1, {"memory/libpod_parent/ctr": ([10, 11, 12], "total_rss 4096\ntotal_cache 0\n")})
    assert procfs.held_bytes([10, 11, 12]) == 3 * 1048576


def test_a_process_the_tree_forked_or_reaped_while_it_was_listed_is_still_its_own(monkeypatch, tmp_path):
    """12 forked by 11 after the tree [10, 11] was listed, 13 already reaped: the cgroup is still the tree's."""
    fake_cgroups(monkeypatch, tmp_path, V1, {"memory/libpod_parent/ctr": ([10, 11, 12, 13], V1_STAT)})
    assert procfs.held_bytes([10, 11]) == 33554432 + 1048576
