"""Fleet migration between two real ssh hosts, and a fault injected at every step.

host-a and host-b (scripts/testhosts.sh) are sshd instances in their own mount namespaces:
what one writes under /var/lib/nucleus-criu the other cannot see, and a process's mount
namespace tells which host it runs on. Each fault test asserts the promise of the role: the
workload still runs on the source with its memory intact, and nothing of it is on the target.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import typing as t

import pytest

from conftest import REPO, alive, free_port, pipe_max_size, proc_state, processes_running, read_state, wait_for

TESTHOSTS = os.path.join(REPO, "scripts", "testhosts.sh")
INVENTORY = os.path.join(REPO, "build", "testhosts", "inventory.ini")
KEY = os.path.join(REPO, "build", "testhosts", "id_ed25519")
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
ADDRESS = {"a": "127.0.0.2", "b": "127.0.0.3"}
MIGRATIONS = "/var/lib/nucleus-criu/migrations"
HOSTS_HAVE_BLAKE3 = subprocess.run(["/usr/bin/python3", "-c", "import blake3"], capture_output=True, check=False).returncode == 0


def host_pid(name: str) -> int:
    return int(subprocess.run(["bash", TESTHOSTS, "pid", name], capture_output=True, text=True, check=True).stdout)


def mount_ns(pid: int) -> str:
    return os.readlink("/proc/%d/ns/mnt" % pid)


def host_path(name: str, path: str) -> str:
    """``path`` as host ``name`` sees it, through its sshd's root in /proc."""
    return "/proc/%d/root%s" % (host_pid(name), path)


def on_host(name: str, command: str) -> str:
    argv = ["ssh", "-q", "-p", "2222", "-i", KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "root@%s" % ADDRESS[name], command]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def migrate(**extra: t.Any) -> subprocess.CompletedProcess:
    argv = [PLAYBOOK, "-i", INVENTORY, "nucleus.criu.migrate", "-e", json.dumps(extra)]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def hosts():
    subprocess.run(["bash", TESTHOSTS, "up"], check=True)
    yield
    subprocess.run(["bash", TESTHOSTS, "down"], check=True)


class Remote:
    """A workload started on host-a over ssh, in its own PID namespace."""

    def __init__(self, name: str, tmp: str, args: str = "", netns: bool = False) -> None:
        self.name = name
        self.state_file = os.path.join(tmp, name + ".state")
        self.pidfile = "/var/lib/nucleus-criu/%s.pid" % name
        program = "%s %s/demo/counter.py %s %s" % (sys.executable, REPO, self.state_file, args)
        if netns:
            inner = "sh -c 'ip link set lo up; exec %s'" % program
            namespaces = "--net --pid"
        else:
            inner, namespaces = program, "--pid"
        on_host("a", "setsid unshare %s --fork setsid %s </dev/null >/dev/null 2>&1 &" % (namespaces, inner))
        self.pid = wait_for(self._find, what="workload %s to start" % name)
        on_host("a", "echo %d > %s" % (self.pid, self.pidfile))
        # It writes its state only once its memory is filled: a second or more per GiB.
        wait_for(lambda: os.path.exists(self.state_file), timeout=120, what="workload %s to fill its memory" % name)
        wait_for(lambda: read_state(self.state_file)[1] > 5, what="workload %s to count" % name)

    def _find(self) -> t.Optional[int]:
        for pid in processes_running(self.state_file):
            with open("/proc/%d/status" % pid) as handle:
                if any(line.startswith("NSpid:") and line.split()[-1] == "1" for line in handle):
                    return pid
        return None

    def running(self) -> t.List[int]:
        """Live copies of the workload itself (the unshare that started it on host-a is not one)."""
        return [pid for pid in processes_running(self.state_file)
                if open("/proc/%d/comm" % pid).read().strip() != "unshare"]

    def stop(self) -> None:
        for pid in processes_running(self.state_file):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def remote(hosts, tmp_path):
    started: t.List[Remote] = []

    def start(name: str, args: str = "", netns: bool = False) -> Remote:
        workload = Remote(name, str(tmp_path), args, netns)
        started.append(workload)
        return workload

    yield start
    for workload in started:
        workload.stop()
        on_host("a", "rm -rf %s/%s %s/%s.migration.json" % (MIGRATIONS, workload.name, MIGRATIONS, workload.name))


def assert_rolled_back(result: subprocess.CompletedProcess, workload: Remote, step: str) -> None:
    """The play failed naming ``step``; the source runs on with its memory; nothing is left on host-b."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "failed at step %s" % step in output or "stopped at %s" % step in output, output
    assert alive(workload.pid) and proc_state(workload.pid) != "T", "the source must run again, not stay frozen"
    token, count = read_state(workload.state_file)
    wait_for(lambda: read_state(workload.state_file)[1] > count + 3, what="the source to keep counting")
    assert read_state(workload.state_file)[0] == token, "the source must resume its own memory, not restart"
    assert workload.running() == [workload.pid], "nothing of the workload may run elsewhere"
    assert not os.path.exists(host_path("b", "%s/%s" % (MIGRATIONS, workload.name))), "the target must be cleared"


def test_migrates_and_reruns_change_nothing(remote):
    workload = remote("single", "--mem 16")
    token, count = read_state(workload.state_file)
    result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="single")
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(on_host("a", "cat %s/single.migration.json" % MIGRATIONS))
    new_pid = int(record["target_pid"])
    assert mount_ns(new_pid) == mount_ns(host_pid("b")) != mount_ns(host_pid("a")), "it must run on host-b"
    assert not os.path.exists("/proc/%d" % workload.pid) or not alive(workload.pid), "the source must be gone"
    wait_for(lambda: read_state(workload.state_file)[1] > count + 3, what="the migrated copy to count on")
    assert read_state(workload.state_file)[0] == token
    assert int(record["image_bytes"]) > 16 << 20 and 0 < float(record["downtime_seconds"]) < 60, record
    # auto: blake3 only when both hosts' interpreters have it.
    assert record["hash_algorithm"] == ("blake3" if HOSTS_HAVE_BLAKE3 else "sha256"), record
    assert "downtime" in result.stdout and "single: host-a pid %d -> host-b pid %d" % (workload.pid, new_pid) in result.stdout

    again = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="single")
    assert again.returncode == 0 and "already" in again.stdout, again.stdout
    assert "changed=0" in again.stdout and not re.search(r"changed=[1-9]", again.stdout), again.stdout
    assert workload.running() == [new_pid], "a rerun must not migrate twice"


def test_list_form_migrates_two_workloads_in_one_run(remote):
    one, two = remote("first", "--mem 8"), remote("second", "--mem 8")
    tokens = {w.name: read_state(w.state_file)[0] for w in (one, two)}
    result = migrate(migrate_workloads=[
        {"name": w.name, "source": "host-a", "target": "host-b", "pidfile": w.pidfile} for w in (one, two)])
    assert result.returncode == 0, result.stdout + result.stderr
    for workload in (one, two):
        (pid,) = workload.running()
        assert pid != workload.pid and mount_ns(pid) == mount_ns(host_pid("b"))
        assert read_state(workload.state_file)[0] == tokens[workload.name]


def test_preflight_failure_touches_nothing(remote):
    """No usable criu on the target: stop before the workload is frozen."""
    workload = remote("nocriu")
    hide = ["nsenter", "-t", str(host_pid("b")), "-m", "mount", "-t", "tmpfs", "hidden-criu", "/usr/local/sbin"]
    subprocess.run(hide, check=True)
    try:
        result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="nocriu")
    finally:
        subprocess.run(["nsenter", "-t", str(host_pid("b")), "-m", "umount", "/usr/local/sbin"], check=True)
    assert "criu was not found" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "preflight")


def test_precopy_refused_at_preflight(remote):
    """These kernels lack soft-dirty tracking: iterative pre-copy is refused before the workload is touched."""
    workload = remote("precopy")
    result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile,
                     migrate_name="precopy", migrate_mode="precopy")
    assert "mem_dirty_track" in result.stdout and "host-a and host-b lack it" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "preflight")


@pytest.mark.skipif(HOSTS_HAVE_BLAKE3, reason="the test hosts' python3 has blake3")
def test_blake3_demanded_where_missing_refused_at_preflight(remote):
    workload = remote("noblake3")
    result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile,
                     migrate_name="noblake3", migrate_hash_algorithm="blake3")
    assert "migrate_hash_algorithm=blake3 needs the Python module blake3 on both hosts" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "preflight")


def test_transfer_failure_target_disk_full(remote):
    workload = remote("diskfull", "--mem 16")
    resize = ["nsenter", "-t", str(host_pid("b")), "-m", "mount", "-o", "remount,size=%s", "/var/lib/nucleus-criu"]
    subprocess.run([arg.replace("%s", "4m") for arg in resize], check=True)
    try:
        result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="diskfull")
    finally:
        subprocess.run([arg.replace("%s", "4g") for arg in resize], check=True)
    assert "No space left on device" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "transfer")


def _when_path_appears(path: str, action: t.Callable[[str], None]) -> threading.Thread:
    """Run ``action(path)`` as soon as ``path`` exists (a fault injected between two steps)."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if os.path.exists(path):
                action(path)
                return
            time.sleep(0.002)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_verify_failure_image_corrupted_in_transit(remote):
    workload = remote("corrupt", "--mem 8")

    def flip(path: str) -> None:
        with open(path, "r+b") as handle:
            handle.seek(4096)
            byte = handle.read(1)
            handle.seek(4096)
            handle.write(bytes([byte[0] ^ 0xFF]))

    watcher = _when_path_appears(host_path("b", "%s/corrupt/images/pages-1.img" % MIGRATIONS), flip)
    result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="corrupt")
    watcher.join(timeout=5)
    assert "pages-1.img: sha256 expected" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "verify")


def test_restore_failure_port_taken_on_target(remote):
    """The frozen source still holds its listening port, which is the target's too on this one-kernel setup."""
    workload = remote("porttaken", "--tcp %d" % free_port())
    result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="porttaken")
    assert "Address already in use" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "restore")


def test_target_unreachable_after_checkpoint(remote):
    workload = remote("unreachable", "--mem 8")
    target_ns = mount_ns(host_pid("b"))

    def cut_off_target(_path: str) -> None:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if open("/proc/%s/comm" % name).read().strip() == "sshd" and mount_ns(int(name)) == target_ns:
                        os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass

    watcher = _when_path_appears(host_path("a", "%s/unreachable/metadata.json" % MIGRATIONS), cut_off_target)
    try:
        result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile,
                         migrate_name="unreachable")
        watcher.join(timeout=5)
    finally:
        subprocess.run(["bash", TESTHOSTS, "up"], check=True)
    assert "UNREACHABLE" in result.stdout or "Connection refused" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "transfer")


def test_stale_pidfile_naming_a_reused_pid_is_refused(remote):
    """After a migration the source pidfile still names the old pid; if that pid is reused, refuse it."""
    workload = remote("reused")
    record = {"name": "reused", "source": "host-a", "target": "host-b", "source_pid": workload.pid,
              "source_starttime": 1, "target_pid": 1}
    on_host("a", "mkdir -p %s && echo '%s' > %s/reused.migration.json" % (MIGRATIONS, json.dumps(record), MIGRATIONS))
    result = migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile, migrate_name="reused")
    assert result.returncode != 0 and "now belongs to another process" in result.stdout, result.stdout
    assert alive(workload.pid) and proc_state(workload.pid) != "T" and workload.running() == [workload.pid]


# --- post-copy ---------------------------------------------------------------------------------------------

def postcopy(workload: Remote) -> subprocess.CompletedProcess:
    return migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile,
                   migrate_name=workload.name, migrate_mode="postcopy")


def _when_restored_lazily(name: str, action: t.Callable[[], None]) -> threading.Thread:
    """Run ``action`` once criu restore finished on host-b: the workload runs there while its pages still travel."""
    log = host_path("b", "%s/%s/restore.log" % (MIGRATIONS, name))

    def restored(path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(path, "rb") as handle:
                if b"Restore finished successfully" in handle.read():
                    action()
                    return
            time.sleep(0.002)
    return _when_path_appears(log, restored)


def _kill_processes_mentioning(*needles: str) -> None:
    for pid in processes_running(needles[0]):
        if all(needle in open("/proc/%d/cmdline" % pid).read() for needle in needles):
            os.kill(pid, signal.SIGKILL)


def test_postcopy_migrates_with_memory_following(remote, big_pipes):
    workload = remote("lazy", "--mem 64")
    token, count = read_state(workload.state_file)
    result = postcopy(workload)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads(on_host("a", "cat %s/lazy.migration.json" % MIGRATIONS))
    assert record["mode"] == "postcopy" and float(record["postcopy_transfer_seconds"]) > 0, record
    # Only the images without the memory travelled before the restore.
    assert int(record["image_bytes"]) < 8 << 20, record
    new_pid = int(record["target_pid"])
    assert mount_ns(new_pid) == mount_ns(host_pid("b")) and workload.running() == [new_pid]
    wait_for(lambda: read_state(workload.state_file)[1] > count + 3, what="the migrated copy to count on")
    assert read_state(workload.state_file)[0] == token
    # Both name ".lazy." in their command lines: the page server its staging dir, the ssh master its socket.
    assert wait_for(lambda: not processes_running("%s/.lazy." % MIGRATIONS), what="the page server and the ssh master to be gone")


def test_postcopy_link_dies_mid_transfer(remote, big_pipes):
    """The ssh tunnel carrying the pages dies after the restore: the target's copy is killed, the source resumes."""
    workload = remote("lazylink", "--mem 1024")
    watcher = _when_restored_lazily("lazylink", lambda: _kill_processes_mentioning(".lazylink.ssh", "-M"))
    result = postcopy(workload)
    watcher.join(timeout=5)
    assert "Post-copy failed: criu lazy-pages" in result.stdout, result.stdout
    assert "was killed so it never runs with missing memory" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "restore")


def test_postcopy_page_server_dies_mid_transfer(remote, big_pipes):
    """The source's criu dump dies while serving pages: the target's copy is killed, the source runs on."""
    workload = remote("lazyserver", "--mem 1024")
    watcher = _when_restored_lazily("lazyserver", lambda: _kill_processes_mentioning("%s/.lazyserver.staging" % MIGRATIONS, "--lazy-pages"))
    result = postcopy(workload)
    watcher.join(timeout=5)
    assert "Post-copy failed: criu lazy-pages" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "restore")


def test_postcopy_refused_when_pipes_are_too_small(remote):
    with pipe_max_size(1048576):
        workload = remote("lazysmall")
        result = postcopy(workload)
    assert "fs.pipe-max-size is 1048576 here" in result.stdout and "sysctl -w fs.pipe-max-size=4194304" in result.stdout, result.stdout
    assert_rolled_back(result, workload, "preflight")


@pytest.mark.parametrize("request_vars", [
    {"migrate_name": "has space", "migrate_pid": 4242},
    {"migrate_name": "x" * 60, "migrate_pid": 4242},
    {"migrate_name": "both", "migrate_pid": 4242, "migrate_pidfile": "/run/x.pid"},
    {"migrate_name": "neither"},
    {"migrate_name": "samehost", "migrate_pid": 4242, "migrate_target": "host-a"},
    {"migrate_name": "mode", "migrate_pid": 4242, "migrate_mode": "teleport"},
    {"migrate_name": "hash", "migrate_pid": 4242, "migrate_hash_algorithm": "md5"},
], ids=["name", "name-too-long-for-the-ssh-socket", "pid-and-pidfile", "no-pid", "same-host", "mode", "hash"])
def test_invalid_request_is_refused_before_any_host_is_touched(hosts, request_vars):
    result = migrate(**dict({"migrate_source": "host-a", "migrate_target": "host-b"}, **request_vars))
    assert result.returncode != 0 and "Invalid migration" in result.stdout, result.stdout
    assert "Preflight" not in result.stdout, "the plan must stop before any task reaches a host"
