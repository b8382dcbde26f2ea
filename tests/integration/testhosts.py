"""The ssh test hosts (scripts/testhosts.sh) seen from a test or the benchmark: workloads started on host-a,
files and journals read through each host's own mount namespace, failpoints armed there, playbooks run.

host-a and host-b share the kernel (PID space, /proc, /tmp) and differ in their mount namespace: what one
writes under /run or /var/lib the other cannot see, and a process's mount namespace tells which host
it runs on.
"""

from __future__ import annotations

import json
import os
import fcntl
import signal
import subprocess
import sys
import typing as t

from conftest import FAILPOINTS, REPO, proc_state, processes_running, read_state, run_module, wait_for

TESTHOSTS = os.path.join(REPO, "scripts", "testhosts.sh")
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
COUNTER = os.path.join(REPO, "demo", "counter.py")
ADDRESS = {"a": "127.0.0.2", "b": "127.0.0.3"}
MIGRATIONS = "/var/lib/nucleus-criu/migrations"  # criu_migrate's default migrate_dir
DISK = "/run/testhost-disk"  # the tmpfs that holds what a host writes to /var/lib


class Hosts:
    """One pair of test hosts on ``port`` (each test module or the benchmark may run its own pair)."""

    def __init__(self, port: int = 2222) -> None:
        self.port = port
        self.dir = os.path.join(REPO, "build", "testhosts" if port == 2222 else "testhosts-%d" % port)
        self.env = dict(os.environ, NUCLEUS_TESTHOSTS_PORT=str(port))

    @property
    def inventory(self) -> str:
        return os.path.join(self.dir, "inventory.ini")

    @property
    def key(self) -> str:
        return os.path.join(self.dir, "id_ed25519")

    def up(self) -> None:
        subprocess.run(["bash", TESTHOSTS, "up"], check=True, env=self.env)

    def down(self) -> None:
        subprocess.run(["bash", TESTHOSTS, "down"], check=True, env=self.env)

    def sshd(self, name: str) -> int:
        """Pid of host ``name``'s listening sshd (its mount namespace is the host's)."""
        return int(subprocess.run(["bash", TESTHOSTS, "pid", name], capture_output=True, text=True, check=True, env=self.env).stdout)

    def path(self, name: str, path: str) -> str:
        """``path`` as host ``name`` sees it, through its sshd's root in /proc."""
        return "/proc/%d/root%s" % (self.sshd(name), path)

    def mount_ns(self, name: str) -> str:
        return mount_ns(self.sshd(name))

    def run(self, name: str, command: str, check: bool = True) -> str:
        argv = ["ssh", "-q", "-p", str(self.port), "-i", self.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "root@%s" % ADDRESS[name], command]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120).stdout

    def processes_running(self, needle: str) -> t.List[int]:
        """Live pids on either host of this pair whose command line mentions ``needle`` (other workers' pairs run
        the same programs)."""
        ours = {self.mount_ns("a"), self.mount_ns("b")}
        found = []
        for pid in processes_running(needle):
            try:
                if mount_ns(pid) in ours:
                    found.append(pid)
            except OSError:
                pass
        return found

    def sshd_processes(self, name: str) -> t.List[int]:
        """Every sshd of host ``name`` (the listener and one per session): what carries its link."""
        ns = self.mount_ns(name)
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if open("/proc/%s/comm" % entry).read().strip() == "sshd" and mount_ns(int(entry)) == ns:
                        found.append(int(entry))
                except OSError:
                    pass
        return found

    def freeze_link(self, name: str) -> t.List[int]:
        """Stop every sshd of host ``name``: its link goes silent (packets are accepted, nothing answers)."""
        pids = self.sshd_processes(name)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw_link(pids: t.Iterable[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    # --- migrations -----------------------------------------------------------------------------------

    def playbook_argv(self, **extra: t.Any) -> t.List[str]:
        return [PLAYBOOK, "-i", self.inventory, "nucleus.criu.migrate", "-e", json.dumps(extra)]

    def migrate(self, **extra: t.Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.playbook_argv(**extra), cwd=REPO, capture_output=True, text=True, timeout=900, check=False)

    def migrate_module(self, workload: Remote, **args: t.Any) -> t.Dict[str, t.Any]:
        """criu_migrate run ad hoc on host-a (as an operator tries it first), moving ``workload`` to host-b."""
        return run_module("criu_migrate", dict(
            name=workload.name, pidfile=workload.pidfile, target=ADDRESS["b"], ssh_port=self.port, ssh_key_file=self.key,
            ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null", **args),
            host="host-a", inventory=self.inventory)

    def start_migrate(self, log: str, **extra: t.Any) -> subprocess.Popen:
        """ansible-playbook in a session of its own (its workers share its process group), output to ``log``."""
        with open(log, "w") as handle:
            return subprocess.Popen(self.playbook_argv(**extra), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    @staticmethod
    def kill_controller(proc: subprocess.Popen) -> None:
        """SIGKILL ansible-playbook and every worker it forked (they share its process group)."""
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def journal(self, name: str, workload: str) -> t.Optional[t.Dict[str, t.Any]]:
        try:
            with open(self.path(name, "%s/%s.journal.json" % (MIGRATIONS, workload))) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def settled(self, workload: str, timeout: float = 180) -> t.Dict[str, t.Any]:
        """The source's journal once its migration reached an outcome and its driver exited."""
        def done() -> t.Optional[t.Dict[str, t.Any]]:
            journal = self.journal("a", workload)
            if journal is None or journal.get("outcome") is None:
                return None
            lock = self.path("a", "%s/.%s.driver.lock" % (MIGRATIONS, workload))
            return journal if not driver_alive(lock) else None
        return wait_for(done, timeout=timeout, what="migration %s to settle" % workload)

    def arm(self, name: str, phase: str, workload: t.Optional[str] = None) -> str:
        """Make host ``name`` stop at ``phase`` (of ``workload``, or of every migration) until released."""
        directory = self.path(name, FAILPOINTS)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        path = os.path.join(directory, phase if workload is None else "%s.%s" % (workload, phase))
        open(path, "w").close()
        return path

    def reached(self, name: str, workload: str, phase: str, timeout: float = 120) -> int:
        """Pid of the process that stopped at ``phase``, once it did."""
        marker = self.path(name, "%s/%s.%s.reached" % (FAILPOINTS, workload, phase))
        return wait_for(lambda: json.load(open(marker))["pid"], timeout=timeout, what="%s to reach %s on host-%s" % (workload, phase, name))

    def clear_failpoints(self, name: str) -> None:
        directory = self.path(name, FAILPOINTS)
        for entry in os.listdir(directory) if os.path.isdir(directory) else ():
            os.unlink(os.path.join(directory, entry))


def mount_ns(pid: int) -> str:
    return os.readlink("/proc/%d/ns/mnt" % pid)


def driver_alive(lock: str) -> bool:
    """Is a migration driver holding its lock file (the kernel drops the lock when the driver dies)?"""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


class Remote:
    """A counter workload started on host-a over ssh, in its own PID (and optionally network) namespace."""

    def __init__(self, hosts: Hosts, name: str, tmp: str, args: str = "", netns: bool = False, program: str = COUNTER,
                 own_session: bool = True, cwd: t.Optional[str] = None) -> None:
        """``program`` STATE ARGS in its own PID namespace on host-a, in a session of its own unless ``own_session`` is
        false (its session leader is then outside the tree: a dump needs shell_job), in ``cwd`` (default: a directory
        of its own; criu mounts a proc in the dumped task's working directory under one fixed name, so two dumps at
        once of tasks in one directory collide)."""
        self.hosts = hosts
        cwd = cwd or os.path.join(tmp, name + ".cwd")
        os.makedirs(cwd, exist_ok=True)
        self.name = name
        self.state_file = os.path.join(tmp, name + ".state")
        self.pidfile = "/run/%s.pid" % name
        command = "%s %s %s %s" % (sys.executable, program, self.state_file, args)
        if netns:
            inner = "sh -c 'ip link set lo up; exec %s%s'" % ("setsid " if own_session else "", command)
            namespaces = "--net --pid"
        else:
            inner, namespaces = ("setsid " if own_session else "") + command, "--pid"
        hosts.run("a", "%ssetsid unshare %s --fork %s </dev/null >/dev/null 2>&1 &" % (
            "cd %s; " % cwd, namespaces, inner))
        self.pid = wait_for(self._find, what="workload %s to start" % name)
        hosts.run("a", "echo %d > %s" % (self.pid, self.pidfile))
        # It writes its state only once its memory is filled: a second or more per GiB.
        wait_for(lambda: os.path.exists(self.state_file), timeout=120, what="workload %s to fill its memory" % name)
        wait_for(lambda: read_state(self.state_file)[1] > 5, what="workload %s to count" % name)

    def _find(self) -> t.Optional[int]:
        for pid in processes_running(self.state_file):
            with open("/proc/%d/status" % pid) as handle:
                if any(line.startswith("NSpid:") and line.split()[-1] == "1" for line in handle):
                    return pid
        return None

    def copies(self) -> t.List[int]:
        """Every copy of the workload itself that exists (running or stopped; not the unshare that started it)."""
        return [pid for pid in processes_running(self.state_file) if open("/proc/%d/comm" % pid).read().strip() != "unshare"]

    def running_on(self, host: str) -> t.List[int]:
        """Copies running (not stopped) on ``host``."""
        ns = self.hosts.mount_ns(host)
        return [pid for pid in self.copies() if mount_ns(pid) == ns and proc_state(pid) not in ("T", "t")]

    def counts_on(self, token: str, count: int) -> None:
        """The workload carries on from its own memory: same token, counting past ``count``."""
        wait_for(lambda: read_state(self.state_file)[1] > count + 2, timeout=30, what="%s to count on" % self.name)
        assert read_state(self.state_file)[0] == token, "the workload must resume its own memory, not restart"

    def stop(self) -> None:
        for pid in processes_running(self.state_file):
            os.kill(pid, signal.SIGKILL)


# --- more hosts: the benchmark's fan-out ---------------------------------------------------------------

class Fleet(Hosts):
    """``count`` numbered test hosts on ``port`` (``testhosts.sh up N``): host-1 .. host-N on 127.0.0.2 ..
    127.0.0.(N+1), each in its own mount namespace with its private tmpfs. Host names here are "1" .. "N"."""

    def __init__(self, count: int, port: int) -> None:
        super().__init__(port)
        self.count = count

    @property
    def names(self) -> t.List[str]:
        return [str(index) for index in range(1, self.count + 1)]

    @staticmethod
    def address(name: str) -> str:
        return "127.0.0.%d" % (int(name) + 1)

    def up(self) -> None:
        subprocess.run(["bash", TESTHOSTS, "up", str(self.count)], check=True, env=self.env)

    def run(self, name: str, command: str, check: bool = True) -> str:
        argv = ["ssh", "-q", "-p", str(self.port), "-i", self.key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "root@%s" % self.address(name), command]
        return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=120).stdout


class RemoteOn(Remote):
    """A counter workload like Remote, started on any host of ``hosts`` (a pair's "a" or "b", a fleet's "1" .. "N"),
    with ``fill_timeout`` seconds to fill its memory, in a working directory of its own: criu mounts a proc in the
    dumped task's working directory under one fixed name, so two dumps at once of tasks in one directory collide
    (the hosts share this machine's files; real hosts would not)."""

    def __init__(self, hosts: Hosts, host: str, name: str, tmp: str, args: str = "",  # pylint: disable=super-init-not-called
                 fill_timeout: float = 120) -> None:
        self.hosts = hosts
        self.host = host
        self.name = name
        self.state_file = os.path.join(tmp, name + ".state")
        self.pidfile = "/run/%s.pid" % name
        program = "%s %s/demo/counter.py %s %s" % (sys.executable, REPO, self.state_file, args)
        cwd = os.path.join(tmp, name + ".cwd")
        os.makedirs(cwd, exist_ok=True)
        hosts.run(host, "cd %s; setsid unshare --pid --fork setsid %s </dev/null >/dev/null 2>&1 &" % (cwd, program))
        self.pid = wait_for(self._find, what="workload %s to start" % name)
        hosts.run(host, "echo %d > %s" % (self.pid, self.pidfile))
        wait_for(lambda: os.path.exists(self.state_file), timeout=fill_timeout, what="workload %s to fill its memory" % name)
        wait_for(lambda: read_state(self.state_file)[1] > 5, what="workload %s to count" % name)
