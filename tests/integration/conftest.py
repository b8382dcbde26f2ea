"""Fixtures for integration tests: real ansible, real criu, real processes this test started.

Every module call goes through the ``ansible`` command line, exactly as an operator runs it
ad hoc, and every workload is one the test started (never PID 1, never a process it did not
create); whatever is still running at teardown is killed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing as t

import pytest

# storage/_failpoint.FAILPOINTS: a host's (a test host has its own /run) steps armed by tests.
FAILPOINTS = "/run/nucleus-criu-failpoints"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
COUNTER = os.path.join(REPO, "demo", "counter.py")

HERE = os.path.dirname(os.path.abspath(__file__))


# Tests that change what the whole machine shares (its criu install, Podman's configuration, criu's plugin directory):
# they run alone, after the parallel run (scripts/test.sh).
SERIAL_MODULES = ("test_criu_role.py",)


def pytest_collection_modifyitems(items: t.List[pytest.Item]) -> None:
    """Mark every test under this directory (a ``pytestmark`` in a conftest marks nothing): ``integration``; ``hosts``
    when it needs the ssh test-host pair; ``machines`` when it needs the pair of systemd machines (machines.py);
    ``containers`` and ``role`` when it needs Podman prepared by the criu role; ``serial`` for whole modules that
    change the machine. All skip when not root."""
    skip = pytest.mark.skip(reason="integration tests checkpoint real processes and need root")
    for item in items:
        if not str(item.path).startswith(HERE + os.sep):
            continue
        item.add_marker(pytest.mark.integration)
        fixtures = getattr(item, "fixturenames", ())
        if "hosts" in fixtures:
            item.add_marker(pytest.mark.hosts)
        if "machine_pair" in fixtures:
            item.add_marker(pytest.mark.machines)
        if "container_host" in fixtures:
            item.add_marker(pytest.mark.containers)
            item.add_marker(pytest.mark.role)
        if item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)
            item.add_marker(pytest.mark.role)
        if os.geteuid() != 0:
            item.add_marker(skip)


def hosts_port() -> int:
    """This pytest process's test-host port: NUCLEUS_TEST_PORT (default 2222) for a serial run, and 100 more for
    each further xdist worker, so that each worker drives a pair of hosts of its own."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(os.environ.get("NUCLEUS_TEST_PORT", "2222")) + 100 * int(worker[2:])


@contextlib.contextmanager
def session_lock(tmp_path_factory: pytest.TempPathFactory, name: str) -> t.Iterator[str]:
    """A lock shared by every worker of this pytest session (their base temp directories share a parent), with a
    directory for what they share under it: one worker does a shared step while the others wait for it."""
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else tmp_path_factory.getbasetemp()
    path = os.path.join(str(shared), name)
    os.makedirs(path, exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)


# Tests that share something system-wide run on one xdist worker, one at a time (the groups, by node id prefix):
# the tests that set fs.pipe-max-size (post-copy needs it at 4 MiB, one test lowers it).
XDIST_GROUPS = {
    # One pair of machines (machines.py) for all of them, not one per worker.
    "machines": ("tests/integration/test_machines.py", "tests/integration/test_units.py"),
    # Three numbered hosts of their own (test_drain.py's fleet), booted once for all of them.
    "drain": ("tests/integration/test_drain.py",),
    "pipe-max-size": ("tests/integration/test_migration.py::test_postcopy", "tests/integration/test_migration.py::test_kill_matrix_postcopy"),
}


def xdist_group(nodeid: str) -> t.Optional[str]:
    return next((group for group, prefixes in XDIST_GROUPS.items() if nodeid.startswith(prefixes)), None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: t.Any) -> t.Any:
    """``--dist loadgroup``, with the groups above. pytest-xdist's own loadgroup does not group under pytest 9 (it
    renames ``item._nodeid``, which pytest 9 no longer reads), so the scheduler here decides by node id: a group's
    tests form one unit of work, every other test is a unit of its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    # pytest-xdist has no type information; imported only when it schedules.
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]  # pylint: disable=import-outside-toplevel

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid) or nodeid

    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def container_host(tmp_path_factory) -> str:
    """This machine made a container host by the criu role, once per session (whichever worker comes first), and the
    test image; returns the image."""
    with session_lock(tmp_path_factory, "container-host") as shared:
        done = os.path.join(shared, "done")
        if not os.path.exists(done):
            criu_role({"criu_containers": True})
            ensure_test_image()
            open(done, "w").close()
    return TEST_IMAGE


@pytest.fixture(scope="session")
def hosts():
    """This worker's pair of ssh test hosts (testhosts.Hosts), up for the whole session."""
    from testhosts import Hosts  # pylint: disable=import-outside-toplevel  # testhosts imports this module
    pair = Hosts(hosts_port())
    pair.up()
    yield pair
    pair.down()


@pytest.fixture(scope="session")
def machine_pair():
    """This worker's two machines (machines.Machines: systemd as PID 1, a network of their own, CRIU installed by the
    criu role over ssh), booted once for the session and torn down (processes, cgroups, links, disks) at its end."""
    from machines import Machines  # pylint: disable=import-outside-toplevel
    pair = Machines()
    pair.up()
    try:
        yield pair
    finally:
        pair.down()


@pytest.fixture
def machine_a(machine_pair):
    """machine-a, booted (again, if a test before left it down)."""
    if not machine_pair[0].running():
        machine_pair[0].boot()
    return machine_pair[0]


@pytest.fixture
def machine_b(machine_pair):
    """machine-b, booted (again, if a test before left it down)."""
    if not machine_pair[1].running():
        machine_pair[1].boot()
    return machine_pair[1]


@contextlib.contextmanager
def _armed(name: str, step: str) -> t.Iterator[str]:
    """Failpoint NAME.STEP armed inside the block (a process that reaches it waits there); yields its path, to which
    that process adds ``.reached``."""
    os.makedirs(FAILPOINTS, mode=0o700, exist_ok=True)
    armed = os.path.join(FAILPOINTS, "%s.%s" % (name, step))
    open(armed, "w").close()
    try:
        yield armed
    finally:
        for path in (armed, armed + ".reached"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def kill_checkpoint_at(args: t.Mapping[str, t.Any], name: str, step: str) -> None:
    """Run criu_checkpoint (``args``, DEST named ``name``) and kill the module where it reaches ``step``."""
    with _armed(name, step) as armed:
        module = subprocess.Popen([ANSIBLE, "localhost", "-m", "nucleus.criu.criu_checkpoint", "-a", json.dumps(dict(args))],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                  env=dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0"))
        try:
            stopped = wait_for(lambda: json.load(open(armed + ".reached"))["pid"], timeout=120, what="the module to reach " + step)
            os.kill(stopped, signal.SIGKILL)  # the module (criu is done), then ansible
            os.killpg(module.pid, signal.SIGKILL)
        finally:
            module.wait()


def checkpoint_held_at(args: t.Mapping[str, t.Any], name: str, step: str, meanwhile: t.Callable[[], t.Any]) -> t.Dict[str, t.Any]:
    """Run criu_checkpoint (``args``, DEST named ``name``), held where it reaches ``step`` until ``meanwhile`` has
    run; the task result."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with _armed(name, step) as armed:
            module = pool.submit(run_module, "criu_checkpoint", args)
            wait_for(lambda: os.path.exists(armed + ".reached") or module.done(), timeout=120, what="the module to reach " + step)
            assert not module.done(), module.result()
            meanwhile()
        return module.result()


def run_module(module: str, args: t.Mapping[str, t.Any], check: bool = False,
               env: t.Optional[t.Mapping[str, str]] = None, host: str = "localhost",
               inventory: t.Optional[str] = None, diff: bool = False) -> t.Dict[str, t.Any]:
    """Run ``ansible HOST -m nucleus.criu.MODULE -a JSON`` (``env``: extra environment; HOST from ``inventory``, by
    default localhost; ``check``: with ``--check``, ``diff``: with ``--diff``) and return the task result.

    The result is read from ansible-core's ``json`` stdout callback, not from the human output. (pytest-ansible's
    ``ansible_module`` fixture would run in-process, but its host management is deprecated upstream.)
    """
    env = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", **(env or {}))
    argv = [ANSIBLE, host, "-m", "nucleus.criu.%s" % module] + (["-a", json.dumps(dict(args))] if args else [])
    argv += ["-i", inventory] if inventory else []
    argv += ["--check"] if check else []
    argv += ["--diff"] if diff else []
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    try:
        result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"][host]
    except (LookupError, ValueError) as exc:
        raise AssertionError("ansible gave no JSON result (rc %d): %s %s" % (proc.returncode, proc.stdout, proc.stderr)) from exc
    result.setdefault("failed", False)
    return result


def criu_role(role_vars: t.Mapping[str, t.Any], *flags: str) -> str:
    """playbooks/criu.yml (the nucleus.criu.criu role) on localhost with ``role_vars``; returns its output."""
    argv = [PLAYBOOK, "-i", "localhost,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
            "-e", json.dumps(dict(role_vars)), "playbooks/criu.yml"] + list(flags)
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# Podman as the modules run it: the trusted criu directories first on PATH (runc executes the criu it finds there).
PODMAN_ENV = {"PATH": "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
TEST_IMAGE = "localhost/nucleus-criu-test:busybox"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman"] + list(args), env=PODMAN_ENV, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 or not check, "podman %s: %s" % (" ".join(args), proc.stderr)
    return proc


def ensure_test_image() -> str:
    """A container image made offline from Debian's busybox-static (no registry here), once."""
    if podman("image", "exists", TEST_IMAGE, check=False).returncode != 0:
        with tempfile.TemporaryDirectory() as rootfs:
            os.makedirs(os.path.join(rootfs, "bin"))
            os.makedirs(os.path.join(rootfs, "tmp"), mode=0o1777)
            shutil.copy("/bin/busybox", os.path.join(rootfs, "bin", "busybox"))
            for applet in ("sh", "sleep", "cat", "echo", "nc"):
                os.symlink("busybox", os.path.join(rootfs, "bin", applet))
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(["podman", "import", "-", TEST_IMAGE], stdin=tar.stdout, env=PODMAN_ENV, capture_output=True, check=True)
            assert tar.wait() == 0
    return TEST_IMAGE


def read_state(path: str) -> t.Tuple[str, int]:
    """The workload's "token count", retried while a write is in flight."""
    def parse() -> t.Tuple[str, int]:
        with open(path) as handle:
            token, count = handle.read().split()
        return token, int(count)
    return wait_for(parse, timeout=5, what="a complete state line in %s" % path)


def wait_for(predicate: t.Callable[[], t.Any], timeout: float = 10, what: str = "condition") -> t.Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s" % what)


def proc_state(pid: int) -> t.Optional[str]:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def gone(pid: int) -> bool:
    return not alive(pid)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Workload:
    """A counter process (optionally a tree, a TCP server, in its own PID namespace) started by the test."""

    def __init__(self, state_file: str, args: t.Sequence[str], pid_namespace: bool, program: str = COUNTER,
                 net_namespace: bool = False) -> None:
        self.state_file = state_file
        argv = [sys.executable, program, state_file] + list(args)
        if net_namespace:
            # Its own network namespace (loopback up): its sockets die with it, and a restore recreates them there.
            argv = ["unshare", "--pid", "--net", "--fork", "setsid", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'] + argv
        elif pid_namespace:
            argv = ["unshare", "--pid", "--fork", "setsid"] + argv
        # A working directory of its own: criu mounts a proc in a dumped task's working directory under one fixed
        # name, so two dumps at once (other workers' tests) of tasks sharing one collide. Its name holds nothing of
        # the arguments (a test passes a secret in one).
        cwd = tempfile.mkdtemp(prefix="cwd-", dir=os.path.dirname(state_file))
        # A session of its own: no shell job, and our own session is never part of the dump.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        self.pid = self.proc.pid
        if pid_namespace or net_namespace:
            self.pid = wait_for(lambda: self._only_child(self.proc.pid), what="namespace init")
        self.extra_pids: t.List[int] = []

    @staticmethod
    def _only_child(pid: int) -> t.Optional[int]:
        found = children(pid)
        return found[0] if found else None

    def state(self, suffix: str = "") -> t.Tuple[str, int]:
        return read_state(self.state_file + suffix)

    def wait_count(self, minimum: int, suffix: str = "") -> t.Tuple[str, int]:
        return wait_for(lambda: self.state(suffix)[1] >= minimum and self.state(suffix), what="count %d" % minimum)

    def reap(self) -> None:
        """Collect the original process once it is gone, so its PID is free for a same-host restore."""
        self.proc.wait(timeout=30)

    def copies(self) -> t.List[int]:
        """Live copies of the workload itself (not the unshare that started one in its own PID namespace)."""
        return [pid for pid in processes_running(self.state_file) if open("/proc/%d/comm" % pid).read().strip() != "unshare"]

    def adopt(self, pid: int) -> None:
        """Track a restored copy so teardown kills it (never 0 or 1: kill(0) would hit our own group)."""
        assert pid > 1, pid
        self.extra_pids.append(pid)

    def stop(self) -> None:
        # Restored children are orphans of init, not ours: find every copy by its state file too.
        for pid in self.extra_pids + [self.pid, self.proc.pid] + processes_running(self.state_file):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for pid in self.extra_pids:
            wait_for(functools.partial(gone, pid), what="pid %d to exit" % pid)


@pytest.fixture
def workloads(tmp_path):
    """Start workloads with ``workloads(*args, pid_namespace=False)``; all are killed at teardown."""
    started: t.List[Workload] = []

    def start(*args: str, pid_namespace: bool = False, minimum: int = 5, program: str = COUNTER,
              net_namespace: bool = False) -> Workload:
        workload = Workload(str(tmp_path / ("state-%d" % len(started))), args, pid_namespace, program, net_namespace)
        started.append(workload)
        workload.wait_count(minimum)
        return workload

    yield start
    for workload in started:
        workload.stop()


@pytest.fixture
def ckpt_dir(tmp_path):
    """A private (0700) parent for checkpoint directories."""
    path = tmp_path / "ckpts"
    path.mkdir(mode=0o700)
    return path


@contextlib.contextmanager
def pipe_max_size(size: int) -> t.Iterator[None]:
    """fs.pipe-max-size set to ``size`` for the duration (it is system-wide: tests run one at a time)."""
    path = "/proc/sys/fs/pipe-max-size"
    with open(path) as handle:
        original = handle.read().strip()
    with open(path, "w") as handle:
        handle.write(str(size))
    try:
        yield
    finally:
        with open(path, "w") as handle:
            handle.write(original)


@pytest.fixture
def big_pipes():
    """Post-copy needs fs.pipe-max-size >= 4 MiB on the source (see criu_info's page_server_problem)."""
    with pipe_max_size(4194304):
        yield


def tree_digest(path: str) -> t.Dict[str, bytes]:
    """Every file under ``path`` with its bytes, to prove a failed operation changed nothing."""
    found = {}
    for current, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(current, name)
            with open(full, "rb") as handle:
                found[os.path.relpath(full, path)] = handle.read()
    return found


def children(pid: int) -> t.List[int]:
    """The children of ``pid`` (none once it is gone)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def processes_running(needle: str) -> t.List[int]:
    """Live pids whose command line mentions ``needle`` (e.g. a workload's unique state file)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                cmdline = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        if needle in cmdline and alive(int(name)):
            found.append(int(name))
    return found
