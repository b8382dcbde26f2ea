"""CriuRuntime against a fake criu script (_runtime); never the real criu."""

import os
import socket
import stat
import sys
import time

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _runtime as runtime
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Dir, State
from .mu_helpers import open_dir, wait_for, write_exe

RLIMIT = "(00.000100) Error (criu/rlimit.c:24): rlimit: Can't setup RLIMIT_NOFILE for self"
DUMP_OK = "(00.500000) Dumping finished successfully"
RESTORE_OK = "(00.500000) Restore finished successfully"

# The fake parses criu's argv the way _command builds it ([action, --no-default-config, --work-dir DIR,
# --log-file NAME, -v4, ...], directories as /proc/self/fd/N, which the fake reaches because it inherits
# those fds), records its argv, environment, umask and open fds, creates inventory.img in the images dir / the
# pidfile (a relative one in the work dir, as criu does) when told to, then writes $FAKE_DIR/log.txt as the log into
# the work dir (last: a daemon's log line tells the runtime the images are there), greets the --ps-socket, then
# exits with $(cat rc).
# hang=N: sleep N seconds with a background child (its pid in $FAKE_DIR/child) that
# inherits criu's stdio; hang_exec=N: become `sleep N` (no child).
FAKE = r"""#!/bin/sh
fake=%(fake)s
printf '%%s\n' "$@" > "$fake/argv"
env > "$fake/env"
umask > "$fake/umask"
ls /proc/$$/fd > "$fake/fds"
action=$1; shift
while [ $# -gt 0 ]; do
  case "$1" in
    --work-dir) wd=$2; shift ;;
    --log-file) log=$2; shift ;;
    --images-dir) images=$2; shift ;;
    --pidfile) pidfile=$2; shift ;;
    --ps-socket) ps=$2; shift ;;
  esac
  shift
done
[ -f "$fake/inventory" ] && : > "$images/inventory.img"
case "$pidfile" in /*) ;; ?*) pidfile="$wd/$pidfile" ;; esac
[ -f "$fake/pid" ] && [ -n "$pidfile" ] && cat "$fake/pid" > "$pidfile"
cat "$fake/log.txt" > "$wd/$log"
[ -n "$ps" ] && %(python)s -c 'import os, sys; os.write(int(sys.argv[1]), b"page server %%s" %% sys.argv[2].encode())' "$ps" "$action"
[ -f "$fake/hang_exec" ] && exec sleep "$(cat "$fake/hang_exec")"
if [ -f "$fake/hang" ]; then
  sleep "$(cat "$fake/hang")" &
  echo $! > "$fake/child"
  sleep "$(cat "$fake/hang")"
fi
echo "stderr from fake criu" >&2
exit $(cat "$fake/rc")
"""


class Fake:
    def __init__(self, root):
        self.dir = str(root / "fake")
        os.makedirs(self.dir)
        self.path = write_exe(root / "bin" / "criu", FAKE % {"fake": self.dir, "python": sys.executable})
        work = str(root / "work")
        images = os.path.join(work, "images")
        os.makedirs(images)
        self.work = Dir(open_dir(work), work)
        self.images = Dir(open_dir(images), images)
        self.set(rc=0, log=[])

    def close(self):
        os.close(self.work.fd)
        os.close(self.images.fd)

    def set(self, rc=None, log=None, **flags):
        if rc is not None:
            self._write("rc", str(rc))
        if log is not None:
            self._write("log.txt", "".join(line + "\n" for line in log))
        for name, value in flags.items():
            if value is None or value is False:
                if os.path.exists(os.path.join(self.dir, name)):
                    os.unlink(os.path.join(self.dir, name))
            else:
                self._write(name, "" if value is True else str(value))
        return self

    def _write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as handle:
            handle.write(text)

    def _read(self, name):
        with open(os.path.join(self.dir, name)) as handle:
            return handle.read()

    def argv(self):
        return self._read("argv").splitlines()

    def env(self):
        return dict(line.split("=", 1) for line in self._read("env").splitlines())

    def umask(self):
        return int(self._read("umask").strip(), 8)

    def fds(self):
        return {int(name) for name in self._read("fds").split()}

    def head(self, action, log=None):
        """The argv every criu run starts with (after the binary itself)."""
        work = self.work.for_criu
        return [action, "--no-default-config", "--work-dir", work, "--libdir", work, "--log-file", "%s.log" % (log or action), "-v4"]

    def runtime(self):
        return CriuRuntime(self.path, (4, 2, 0))


@pytest.fixture
def fake(tmp_path):
    made = Fake(tmp_path)
    yield made
    made.close()


# --- state machine (the seed's test_checkpoint_state_transitions) ------------

@pytest.mark.parametrize("current, target, allowed", [
    (State.NONE, State.DUMPING, True),
    (State.DUMPING, State.DUMPED, True),
    (State.NONE, State.RESTORING, True),
    (State.RESTORING, State.RESTORED, True),
    (State.DUMPING, State.NONE, True),  # abort
    (State.RESTORING, State.NONE, True),  # abort
    (State.NONE, State.DUMPED, False),
    (State.NONE, State.RESTORED, False),
    (State.DUMPED, State.RESTORING, False),
    (State.RESTORED, State.DUMPING, False),
    (State.DUMPING, State.RESTORED, False),
    (State.RESTORING, State.DUMPED, False),
    (State.DUMPED, State.NONE, False),
    (State.NONE, State.NONE, False),
])
def test_state_transitions(current, target, allowed):
    assert runtime.can_transition(current, target) is allowed


def test_invalid_transition_raises():
    rt = CriuRuntime("/usr/sbin/criu", (4, 2, 0))
    with pytest.raises(CriuError, match="cannot go from none to dumped"):
        rt._transition(State.DUMPED)
    assert rt.state is State.NONE


@pytest.mark.parametrize("options, flags, expected", [
    ({}, runtime.DUMP_ONLY_FLAGS, []),
    ({"leave_running": True, "shell_job": True}, runtime.DUMP_ONLY_FLAGS, ["--leave-running"]),
    ({"leave_stopped": True, "leave_running": False}, runtime.DUMP_ONLY_FLAGS, ["--leave-stopped"]),
])
def test_option_argv(options, flags, expected):
    assert runtime.option_argv(options, flags) == expected


# --- Dir ------------------------------------------------------------------------------------------

def test_dir_names_its_fd_for_criu_and_its_path_for_people():
    work = Dir(7, "/var/tmp/work")
    assert work.for_criu == "/proc/self/fd/7" and work.file("dump.log") == "/var/tmp/work/dump.log"


# --- _run: success is exit code AND success line --------------------------------

def test_run_success_despite_harmless_error_line(fake):
    fake.set(rc=0, log=[RLIMIT, DUMP_OK])
    run = fake.runtime()._run("dump", ["--tree", "1"], fake.work, (), 10)
    assert run.log_path == os.path.join(fake.work.path, "dump.log") and run.duration >= 0
    assert fake.argv() == fake.head("dump") + ["--tree", "1"]


def test_run_hands_criu_the_fds_a_fixed_environment_and_umask_077(fake, monkeypatch):
    monkeypatch.setenv("CRIU_CONFIG_FILE", "/tmp/evil.conf")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    fake.set(rc=0, log=[DUMP_OK])
    stray = os.open(fake.dir, os.O_RDONLY | os.O_DIRECTORY)  # inheritable, but not passed
    os.set_inheritable(stray, True)
    try:
        fake.runtime()._run("dump", [], fake.work, (fake.images.fd,), 10)
    finally:
        os.close(stray)
    env = fake.env()
    assert {name: env.get(name) for name in binary.ENVIRONMENT} == binary.ENVIRONMENT
    assert "CRIU_CONFIG_FILE" not in env and "LD_PRELOAD" not in env
    assert set(env) - set(binary.ENVIRONMENT) <= {"PWD", "SHLVL", "_", "OLDPWD"}
    assert fake.umask() == 0o077
    assert stat.S_IMODE(os.stat(os.path.join(fake.work.path, "dump.log")).st_mode) == 0o600  # written by "criu"
    assert {fake.work.fd, fake.images.fd} <= fake.fds() and stray not in fake.fds()


def test_run_criu_in_a_session_of_its_own(fake):
    fake.set(rc=0, log=[DUMP_OK], hang_exec=30)
    rt = fake.runtime()
    daemon = rt._start_daemon("dump", [], fake.work, (), "Dumping finished", 10)
    try:
        assert os.getsid(daemon.proc.pid) == daemon.proc.pid, "a session of its own: no SIGHUP from a lost connection"
    finally:
        daemon.stop()
    assert daemon.proc.returncode is not None


def test_run_rc0_without_success_line_fails(fake):
    fake.set(rc=0, log=[RLIMIT, "(00.1) Warn: nothing"])
    with pytest.raises(CriuError, match="criu dump failed \\(exit code 0\\)") as err:
        fake.runtime()._run("dump", [], fake.work, (), 10)
    assert err.value.details["rc"] == 0 and err.value.details["errors"] == []
    assert "stderr from fake criu" in err.value.msg  # no Error line: stderr explains


def test_run_nonzero_exit_fails_even_with_success_line(fake):
    fake.set(rc=1, log=[RLIMIT, "(00.2) Error (criu/a.c:1): first", "(00.3) Error (criu/b.c:2): Can't fork for 4242: File exists", DUMP_OK])
    with pytest.raises(CriuError) as err:
        fake.runtime()._run("dump", [], fake.work, (), 10)
    log = os.path.join(fake.work.path, "dump.log")
    assert "exit code 1" in err.value.msg and log in err.value.msg
    assert "Can't fork for 4242: File exists" in err.value.msg and "PID 4242 is already in use" in err.value.msg
    assert "RLIMIT" not in err.value.msg
    assert err.value.details["log"] == log and err.value.details["rc"] == 1
    assert err.value.details["errors"][-1].endswith("Can't fork for 4242: File exists")


def test_run_missing_binary(tmp_path, fake):
    rt = CriuRuntime(str(tmp_path / "nope"), (4, 2, 0))
    with pytest.raises(CriuError, match="Cannot execute .*nope") as err:
        rt._run("dump", [], fake.work, (), 10)
    assert err.value.details["path"] == str(tmp_path / "nope")


def test_restore_timeout_kills_criu_and_its_tree(fake):
    fake.set(rc=0, log=["(00.1) Error (criu/x.c:1): stuck"], hang=30)
    rt = fake.runtime()
    started = time.monotonic()
    with pytest.raises(CriuError, match="did not finish within 0.5s and was killed") as err:
        rt.restore(fake.images, fake.work, {}, timeout=0.5)
    assert time.monotonic() - started < 10
    assert err.value.details["timed_out"] is True
    assert err.value.details["log"] == os.path.join(fake.work.path, "restore.log")
    assert err.value.details["errors"] == ["(00.1) Error (criu/x.c:1): stuck"]
    child = int(open(os.path.join(fake.dir, "child")).read())
    assert wait_for(lambda: not procfs.is_alive(child), timeout=2), "the restored tree survived the timeout"
    assert rt.state is State.NONE


def test_dump_timeout(fake):
    fake.set(rc=0, log=[], hang_exec=30)
    rt = fake.runtime()
    started = time.monotonic()
    with pytest.raises(CriuError, match="criu dump did not finish within 0.5s") as err:
        rt.dump(4242, fake.images, fake.work, {}, timeout=0.5)
    assert time.monotonic() - started < 5
    assert err.value.details["timed_out"] is True and rt.state is State.NONE


def _kill_recorded_child(fake):
    """The fake's background sleep, which this test started, if it is still running."""
    path = os.path.join(fake.dir, "child")
    if os.path.exists(path):
        pid = int(open(path).read())
        st = procfs.read_stat(pid)
        if st is not None and st.comm == "sleep":
            os.kill(pid, 9)


def test_dump_timeout_is_bounded_when_criu_has_a_child(fake):
    fake.set(rc=0, log=[], hang=3)
    started = time.monotonic()
    try:
        with pytest.raises(CriuError):
            fake.runtime().dump(4242, fake.images, fake.work, {}, timeout=0.5)
        child = int(open(os.path.join(fake.dir, "child")).read())
        assert time.monotonic() - started < 2 and not procfs.is_alive(child)
    finally:
        _kill_recorded_child(fake)


# --- dump() and restore() -------------------------------------------------------

def test_dump_success(fake):
    fake.set(rc=0, log=[DUMP_OK], inventory=True)
    rt = fake.runtime()
    run = rt.dump(4242, fake.images, fake.work, {"shell_job": True, "leave_running": True, "network_lock": "nftables"}, timeout=10)
    assert rt.state is State.DUMPED and run.log_path == os.path.join(fake.work.path, "dump.log")
    argv = fake.argv()
    assert argv[:9] == fake.head("dump")
    assert argv[9:13] == ["--tree", "4242", "--images-dir", fake.images.for_criu]
    assert set(argv[13:]) == {"--leave-running", "--shell-job", "--network-lock=nftables"}
    assert os.path.isfile(os.path.join(fake.images.path, "inventory.img")), "criu wrote through the images fd"
    with pytest.raises(CriuError, match="cannot go from dumped to dumping"):
        rt.dump(4242, fake.images, fake.work, {}, timeout=10)


def test_dump_without_inventory_is_a_failure(fake):
    fake.set(rc=0, log=[DUMP_OK], inventory=False)
    rt = fake.runtime()
    with pytest.raises(CriuError, match="wrote no inventory.img") as err:
        rt.dump(4242, fake.images, fake.work, {}, timeout=10)
    assert err.value.details["log"] == os.path.join(fake.work.path, "dump.log")
    assert rt.state is State.NONE


def test_dump_failure_resets_state(fake):
    fake.set(rc=1, log=["Error (x): boom"], inventory=True)
    rt = fake.runtime()
    with pytest.raises(CriuError, match="boom"):
        rt.dump(4242, fake.images, fake.work, {}, timeout=10)
    assert rt.state is State.NONE


def test_restore_reads_pidfile_from_the_work_dir(fake):
    fake.set(rc=0, log=[RLIMIT, RESTORE_OK], pid="31337\n")
    rt = fake.runtime()
    pid, run = rt.restore(fake.images, fake.work, {"shell_job": True, "leave_running": True}, timeout=10)
    assert pid == 31337 and rt.state is State.RESTORED and run.log_path == os.path.join(fake.work.path, "restore.log")
    argv = fake.argv()
    assert argv[:9] == fake.head("restore")
    assert argv[9:13] == ["--images-dir", fake.images.for_criu, "--restore-detached", "--pidfile"]
    # criu writes the pidfile into its work dir (a relative --pidfile is relative to --work-dir)
    assert argv[13] in (runtime.RESTORE_PIDFILE, fake.work.file(runtime.RESTORE_PIDFILE))
    assert argv[14:] == ["--shell-job"]  # leave_running is dump-only
    assert open(fake.work.file(runtime.RESTORE_PIDFILE)).read() == "31337\n"
    assert {fake.work.fd, fake.images.fd} <= fake.fds()


def test_restore_leave_stopped_and_lazy(fake):
    fake.set(rc=0, log=[RESTORE_OK], pid=4343)
    pid, _run = fake.runtime().restore(fake.images, fake.work, {"tcp_established": True}, timeout=10, lazy=True, leave_stopped=True)
    assert pid == 4343 and fake.argv()[14:] == ["--tcp-established", "--lazy-pages", "--leave-stopped"]


def test_restore_writes_a_given_pidfile(fake, tmp_path):
    fake.set(rc=0, log=[RESTORE_OK], pid="4444\n")
    pidfile = str(tmp_path / "app.pid")
    pid, _run = fake.runtime().restore(fake.images, fake.work, {}, timeout=10, pidfile=pidfile)
    assert pid == 4444 and fake.argv()[12:14] == ["--pidfile", pidfile] and fake.argv()[14:] == []
    assert open(pidfile).read() == "4444\n" and not os.path.exists(fake.work.file(runtime.RESTORE_PIDFILE))


def test_dump_and_restore_argv_of_every_option(fake):
    fake.set(rc=0, log=[DUMP_OK], inventory=True)
    options = {"tcp_established": False, "tcp_close": True, "skip_in_flight": True, "ext_unix_sk": True, "file_locks": True,
               "shell_job": True, "link_remap": True, "ghost_limit": 2 << 20, "network_lock": "iptables",
               "manage_cgroups": "full", "leave_stopped": True, "leave_running": False}
    fake.runtime().dump(4242, fake.images, fake.work, options, timeout=10)
    assert fake.argv()[13:] == ["--leave-stopped", "--tcp-close", "--skip-in-flight", "--ext-unix-sk", "--file-locks",
                                "--shell-job", "--link-remap", "--ghost-limit=2097152", "--network-lock=iptables",
                                "--manage-cgroups=full"]
    fake.set(rc=0, log=[RESTORE_OK], pid=4343)
    # a restore repeats what criu needs again and takes its own choices; dump-only options are never passed
    fake.runtime().restore(fake.images, fake.work, dict(options, cgroup_root=["/machine/a", "cpu:/machine/b"]), timeout=10)
    assert fake.argv()[14:] == ["--tcp-close", "--ext-unix-sk", "--file-locks", "--shell-job", "--manage-cgroups=full",
                                "--cgroup-root", "/machine/a", "--cgroup-root", "cpu:/machine/b"]


@pytest.mark.parametrize("pid, message", [
    (None, "wrote no pidfile"),
    ("", "wrote no valid pidfile"),
    ("Error code: 255", "wrote no valid pidfile"),
    ("0", "wrote no valid pidfile"),
])
def test_restore_bad_pidfile(fake, pid, message):
    fake.set(rc=0, log=[RESTORE_OK], pid=pid)
    rt = fake.runtime()
    with pytest.raises(CriuError, match=message):
        rt.restore(fake.images, fake.work, {}, timeout=10)
    assert rt.state is State.NONE


def test_restore_failure(fake):
    fake.set(rc=1, log=["(0.1) Error (criu/cr-restore.c:1): Can't fork for 77: File exists"], pid="31337")
    rt = fake.runtime()
    with pytest.raises(CriuError, match="PID 77 is already in use"):
        rt.restore(fake.images, fake.work, {}, timeout=10)
    assert rt.state is State.NONE


def test_check_and_feature(tmp_path):
    path = write_exe(tmp_path / "bin" / "criu", '#!/bin/sh\n[ "$1" = check ] || exit 5\n[ "$2" = --no-default-config ] || exit 6\n'
                     '[ "$3" = --feature ] && { [ "$4" = mem_dirty_track ]; exit $?; }\necho "Looks good."\n')
    rt = CriuRuntime(path, (4, 2, 0))
    assert rt.check() == (True, "Looks good.")
    assert rt.check("mem_dirty_track")[0] is True and rt.check("uffd-noncoop")[0] is False
    assert CriuRuntime(str(tmp_path / "nope"), (4, 2, 0)).check()[0] is False
    assert CriuRuntime(str(tmp_path / "nope"), (4, 2, 0)).check("x")[0] is False


def test_check_runs_with_the_fixed_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CRIU_CONFIG_FILE", "/tmp/evil.conf")
    path = write_exe(tmp_path / "bin" / "criu", '#!/bin/sh\n[ -z "$CRIU_CONFIG_FILE" ] && [ "$PATH" = "%s" ] || exit 3\n'
                     % binary.ENVIRONMENT["PATH"])
    assert CriuRuntime(path, (4, 2, 0)).check()[0] is True


def test_load_validates_and_checks_version(tmp_path, scripts_as_elf):
    good = write_exe(tmp_path / "good" / "criu", "#!/bin/sh\necho 'Version: 4.2.1'\n")
    rt = CriuRuntime.load(good)
    assert rt.path == good and rt.version == (4, 2, 1) and rt.version_string == "4.2.1" and rt.state is State.NONE
    old = write_exe(tmp_path / "old" / "criu", "#!/bin/sh\necho 'Version: 4.1.1'\n")
    with pytest.raises(CriuError, match="criu 4.1.1 .* is too old"):
        CriuRuntime.load(old)
    writable = write_exe(tmp_path / "writable" / "criu", "#!/bin/sh\necho 'Version: 4.2.1'\n", mode=0o777)
    with pytest.raises(CriuError, match="writable by group/others"):
        CriuRuntime.load(writable)


def test_load_runs_the_real_path_of_a_link(tmp_path, scripts_as_elf):
    good = write_exe(tmp_path / "opt" / "criu", "#!/bin/sh\necho 'Version: 4.2.1'\n")
    (tmp_path / "sbin").mkdir(mode=0o755)
    (tmp_path / "sbin" / "criu").symlink_to(good)
    assert CriuRuntime.load(str(tmp_path / "sbin" / "criu")).path == good


def test_load_refuses_a_script_for_real(tmp_path):
    script = write_exe(tmp_path / "bin" / "criu", "#!/bin/sh\necho 'Version: 4.2.1'\n")
    with pytest.raises(CriuError, match="not an ELF executable"):
        CriuRuntime.load(script)


# --- post-copy daemons ------------------------------------------------------------

LISTENING = "(00.058874) Reusing ps socket 5"


@pytest.fixture
def page_socket():
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_start_lazy_dump_returns_once_the_page_server_runs(fake, page_socket):
    ours, theirs = page_socket
    fake.set(rc=0, log=[LISTENING], inventory=True, hang_exec=30)
    rt = fake.runtime()
    daemon = rt.start_lazy_dump(4242, fake.images, fake.work, {"leave_stopped": True}, theirs.fileno(), timeout=10)
    try:
        assert daemon.proc.poll() is None, "the page server must keep running after the call"
        assert rt.state is State.DUMPED and daemon.log_path == os.path.join(fake.work.path, "dump.log")
        argv = fake.argv()
        assert argv[:9] == fake.head("dump")
        assert argv[9:13] == ["--tree", "4242", "--images-dir", fake.images.for_criu]
        assert argv[13:] == ["--leave-stopped", "--lazy-pages", "--ps-socket", str(theirs.fileno())]
        assert ours.recv(64) == b"page server dump", "criu inherits the page socket under the same number"
        assert os.getsid(daemon.proc.pid) == daemon.proc.pid, "a session of its own: no SIGHUP from a lost connection"
    finally:
        daemon.stop()
    assert daemon.proc.returncode is not None


def test_start_lazy_dump_without_inventory_is_a_failure(fake, page_socket):
    fake.set(rc=0, log=[LISTENING], inventory=False, hang_exec=30)
    rt = fake.runtime()
    with pytest.raises(CriuError, match="wrote no inventory.img"):
        rt.start_lazy_dump(4242, fake.images, fake.work, {}, page_socket[1].fileno(), timeout=10)
    assert rt.state is State.NONE


def test_start_lazy_dump_that_exits_before_serving(fake, page_socket):
    fake.set(rc=1, log=["(00.1) Error (criu/page-pipe.c:418): page-pipe: tee: 65536: Operation not permitted"])
    rt = fake.runtime()
    with pytest.raises(CriuError, match="criu dump failed \\(exit code 1\\).*Operation not permitted"):
        rt.start_lazy_dump(4242, fake.images, fake.work, {}, page_socket[1].fileno(), timeout=10)
    assert rt.state is State.NONE


def test_start_lazy_pages_returns_once_it_waits_for_connections(fake, page_socket):
    ours, theirs = page_socket
    fake.set(rc=0, log=["(00.01) " + runtime.LAZY_PAGES_READY], hang_exec=30)
    daemon = fake.runtime().start_lazy_pages(fake.images, fake.work, theirs.fileno(), timeout=10)
    try:
        assert daemon.proc.poll() is None and daemon.log_path == os.path.join(fake.work.path, "lazy-pages.log")
        assert fake.argv() == fake.head("lazy-pages") + ["--page-server", "--ps-socket", str(theirs.fileno()),
                                                         "--images-dir", fake.images.for_criu]
        assert ours.recv(64) == b"page server lazy-pages"
    finally:
        daemon.stop()


def test_start_lazy_pages_that_never_gets_ready_is_killed(fake, page_socket):
    fake.set(rc=0, log=["(00.01) nothing yet"], hang_exec=30)
    started = time.monotonic()
    with pytest.raises(CriuError, match="criu lazy-pages did not finish within 0.3s") as err:
        fake.runtime().start_lazy_pages(fake.images, fake.work, page_socket[1].fileno(), timeout=0.3)
    assert time.monotonic() - started < 5 and err.value.details["timed_out"]
    assert fake.argv()[9:] == ["--page-server", "--ps-socket", str(page_socket[1].fileno()), "--images-dir", fake.images.for_criu]


def test_daemon_stop_kills_and_reaps(spawn):
    proc = spawn(["sleep", "30"])
    daemon = runtime.Daemon(proc, 0.0, "/nonexistent.log")
    daemon.stop()
    assert proc.returncode is not None
    daemon.stop()  # already reaped: nothing is signalled, nothing fails


def _lazy_daemon(tmp_path, argv, lines):
    import subprocess
    log = tmp_path / "lazy-pages.log"
    log.write_text("".join(line + "\n" for line in lines))
    return runtime.Daemon(subprocess.Popen(argv), 0.0, str(log))


@pytest.mark.parametrize("argv, lines, message", [
    (["true"], ["uffd: 1-1: UFFD transferred pages: (10/10)", "uffd: 1-2: UFFD transferred pages: (5/9)"],
     "fetched 15 of 19 pages \\(exit code 0\\)"),
    (["false"], ["uffd: 1-1: UFFD transferred pages: (10/10)"], "fetched 10 of 10 pages \\(exit code 1\\)"),
    (["false"], ["(00.1) Error (criu/page-xfer.c:1660): page-xfer: Remote side closed connection"],
     "stopped before every page had arrived \\(exit code 1\\).*Remote side closed connection"),
    (["true"], [], "stopped before every page had arrived \\(exit code 0\\)"),
])
def test_finish_lazy_pages_failures(tmp_path, argv, lines, message):
    with pytest.raises(CriuError, match="Post-copy failed: criu lazy-pages " + message):
        CriuRuntime.finish_lazy_pages(_lazy_daemon(tmp_path, argv, lines), timeout=10)


def test_finish_lazy_pages_success_counts_every_process(tmp_path):
    lines = ["uffd: 1-1: UFFD transferred pages: (10/10)", "noise", "uffd: 1-7: UFFD transferred pages: (66545/66545)"]
    assert CriuRuntime.finish_lazy_pages(_lazy_daemon(tmp_path, ["true"], lines), timeout=10) == 66555


def test_finish_lazy_pages_timeout_kills_the_fetcher(tmp_path):
    daemon = _lazy_daemon(tmp_path, ["sleep", "30"], [])
    with pytest.raises(CriuError, match="criu lazy-pages did not finish within 0.2s"):
        CriuRuntime.finish_lazy_pages(daemon, timeout=0.2)
    assert daemon.proc.poll() is not None
