"""A systemd service as a workload (``unit``): checkpointed and restored on one systemd test machine, as the unit.

Real systemd as PID 1 (tests/integration/machines.py), real CRIU installed by the criu role, the modules run over ssh.
The service is a counter with ``Restart=always`` writing to the journal: it must never run twice, stay stopped after
a checkpoint that ends it (Restart= notwithstanding), come back as the unit's MainPID in its cgroup, carry on counting
and log to the unit's journal again; and a unit whose cgroup holds more than its main process tree is refused.
"""

from __future__ import annotations

import subprocess
import threading
import time
import typing as t

import pytest

from conftest import run_module, wait_for
from machines import Machine

UNIT = "nucleus-counter.service"
SCRIPT = "/root/unit-counter.py"
STATE = "/run/unit-counter.state"
# Counts in its memory; each line names a token drawn at start, so a fresh start is told apart from a restored copy.
COUNTER = """\
import os, sys, time, uuid
token = uuid.uuid4().hex[:12]
n = 0
while True:
    n += 1
    print("count %d token %s pid %d" % (n, token, os.getpid()), flush=True)
    with open("/run/unit-counter.state.tmp", "w") as f:
        f.write("%s %d %d\\n" % (token, n, os.getpid()))
    os.rename("/run/unit-counter.state.tmp", "/run/unit-counter.state")
    time.sleep(0.2)
"""


def ssh(machine: Machine, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """``command`` over ssh with stdin from /dev/null: an ssh that shares our stdin makes it non-blocking while it runs,
    and an ansible started meanwhile (run_module, while Watch samples) refuses to run."""
    proc = subprocess.run(machine.ssh_args + [command], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0 or not check, proc
    return proc


def unit_file(exec_start: str) -> str:
    return "\n".join(["[Unit]", "Description=nucleus.criu test counter", "[Service]", "ExecStart=%s" % exec_start,
                      "Restart=always", "RestartSec=200ms", "StandardOutput=journal", "StandardError=journal", ""])


def install(machine: Machine, exec_start: str) -> None:
    with open(machine.path(SCRIPT), "w") as handle:
        handle.write(COUNTER)
    with open(machine.path("/etc/systemd/system/%s" % UNIT), "w") as handle:
        handle.write(unit_file(exec_start))
    ssh(machine, "rm -f %s; systemctl daemon-reload && systemctl start %s" % (STATE, UNIT))


def remove(machine: Machine) -> None:
    ssh(machine, "systemctl stop %s; rm -rf /etc/systemd/system/%s /run/systemd/system/%s.d /var/lib/ckpt-unit; "
        "systemctl daemon-reload; systemctl reset-failed %s" % (UNIT, UNIT, UNIT, UNIT), check=False)


def show(machine: Machine, prop: str) -> str:
    return ssh(machine, "systemctl show -P %s %s" % (prop, UNIT)).stdout.strip()


def state(machine: Machine) -> t.Tuple[str, int, int]:
    token, count, pid = ssh(machine, "cat %s" % STATE).stdout.split()
    return token, int(count), int(pid)


def counters(machine: Machine) -> t.List[int]:
    """Every counter process on the machine, whoever started it."""
    out = ssh(machine, "pgrep -f '^/usr/bin/python3 %s$' || true" % SCRIPT).stdout
    return [int(pid) for pid in out.split()]


class Watch:
    """Counts the counter processes on a machine every 100 ms while it runs: the most ever seen at once."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.most = 0
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.most = max(self.most, len(counters(self.machine)))
            except (AssertionError, subprocess.TimeoutExpired):  # the machine is down or its sshd silent: no sample
                continue
            self.samples += 1
            time.sleep(0.1)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def counter_unit(machine_a):
    install(machine_a, "/usr/bin/python3 %s" % SCRIPT)
    ssh(machine_a, "mkdir -p -m 0700 /var/lib/ckpt-unit")
    try:
        wait_for(lambda: state(machine_a)[1] >= 3, timeout=15, what="the counter unit to count")
        yield machine_a
    finally:
        remove(machine_a)


def test_unit_checkpointed_then_restored_as_the_unit(machine_pair, counter_unit):
    machine = counter_unit
    inventory = machine_pair.inventory
    token, _count, pid = state(machine)
    assert int(show(machine, "MainPID")) == pid
    dest = "/var/lib/ckpt-unit/counter"
    # What a module killed midway would leave: a restore drop-in naming fds of a process long gone. It must go.
    ssh(machine, "mkdir -p /run/systemd/system/%s.d && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' "
        "> /run/systemd/system/%s.d/50-nucleus-criu-restore.conf && systemctl daemon-reload" % (UNIT, UNIT))
    predicted = run_module("criu_checkpoint", dict(unit=UNIT, dest=dest), check=True, host="machine-a", inventory=inventory)
    assert predicted["changed"] and not predicted["failed"], predicted
    assert int(show(machine, "MainPID")) == pid and show(machine, "ActiveState") == "active"
    assert ssh(machine, "ls /run/systemd/system/%s.d" % UNIT).stdout.split() == ["50-nucleus-criu-restore.conf"], "check mode changed it"
    with Watch(machine) as watch:
        made = run_module("criu_checkpoint", dict(unit=UNIT, dest=dest), host="machine-a", inventory=inventory)
        assert made["changed"] and not made["failed"], made
        assert made["unit"] == UNIT and made["pid"] == pid, made
        frozen = state(machine)
        # Ended through systemd: Restart=always (200 ms) does not bring it back, and the unit is stopped, not failed.
        time.sleep(1.5)
        assert counters(machine) == []
        assert state(machine) == frozen
        assert (show(machine, "ActiveState"), show(machine, "NRestarts")) == ("inactive", "0")
        assert ssh(machine, "ls /run/systemd/system/%s.d 2>/dev/null || true" % UNIT).stdout.strip() == "", "a drop-in was left"
        again = run_module("criu_checkpoint", dict(unit=UNIT, dest=dest), host="machine-a", inventory=inventory)
        assert not again["changed"] and not again["failed"], again

        restored = run_module("criu_restore", dict(src=dest), host="machine-a", inventory=inventory)
        assert restored["changed"] and not restored["failed"], restored
        new_pid = restored["pid"]
        assert restored["unit"] == UNIT
        # systemd manages it: active, the restored process as MainPID, in the unit's cgroup.
        assert show(machine, "ActiveState") == "active"
        assert int(show(machine, "MainPID")) == new_pid
        cgroups = ssh(machine, "cat /proc/%d/cgroup" % new_pid).stdout
        assert cgroups.strip() and all(line.endswith("/system.slice/%s" % UNIT) for line in cgroups.splitlines()
                                       if line.split(":")[1] in ("", "name=systemd")), cgroups
        # Its memory carried on: same token, counting on from where the checkpoint froze it.
        carried = wait_for(lambda: state(machine)[1] > frozen[1] + 3 and state(machine), timeout=15,
                           what="the restored counter to count on")
        assert carried[0] == token and carried[2] == new_pid, (carried, token)
        # Its lines go to the unit's journal again, from the restored process.
        later = "count %d token %s" % (frozen[1] + 2, token)
        wait_for(lambda: later in ssh(machine, "journalctl -u %s -o cat --no-pager" % UNIT).stdout, timeout=15,
                 what="the restored process's lines in journalctl -u %s" % UNIT)
        assert ssh(machine, "ls /run/systemd/system/%s.d 2>/dev/null || true" % UNIT).stdout.strip() == "", "a drop-in was left"
        assert show(machine, "Restart") == "always" and show(machine, "Type") == "simple"
        twice = run_module("criu_restore", dict(src=dest), host="machine-a", inventory=inventory)
        assert not twice["changed"] and not twice["failed"] and twice["pid"] == new_pid, twice
        time.sleep(1)
    assert watch.samples > 10 and watch.most == 1, "counter processes at once: %d" % watch.most

    # systemctl stop stops it (and Restart= does not bring it back); a start is a fresh one, as the unit file says.
    ssh(machine, "systemctl stop %s" % UNIT)
    time.sleep(1)
    assert counters(machine) == [] and show(machine, "ActiveState") == "inactive"
    ssh(machine, "systemctl start %s" % UNIT)
    fresh = wait_for(lambda: state(machine)[0] != token and state(machine), timeout=15, what="a fresh counter")
    assert fresh[2] == int(show(machine, "MainPID")) and counters(machine) == [fresh[2]]
    ssh(machine, "systemctl restart %s" % UNIT)
    again = wait_for(lambda: state(machine)[0] not in (token, fresh[0]) and state(machine), timeout=15, what="a restarted counter")
    assert again[2] == int(show(machine, "MainPID")) and counters(machine) == [again[2]]
    # A restore while the unit runs is refused, and touches nothing.
    refused = run_module("criu_restore", dict(src=dest, force=True), host="machine-a", inventory=inventory)
    assert refused["failed"] and "stop it first" in refused["msg"], refused
    assert int(show(machine, "MainPID")) == again[2] and counters(machine) == [again[2]]


def test_unit_with_processes_beside_its_main_tree_is_refused(machine_pair, machine_a):
    """A process the service left in its cgroup outside the main process's tree (a double fork) is named, and nothing
    is dumped: the unit runs on untouched."""
    install(machine_a, "/bin/sh -c '(setsid sleep 1000 &); exec /usr/bin/python3 %s'" % SCRIPT)
    ssh(machine_a, "mkdir -p -m 0700 /var/lib/ckpt-unit")
    try:
        wait_for(lambda: state(machine_a)[1] >= 3, timeout=15, what="the counter unit to count")
        main = int(show(machine_a, "MainPID"))
        extra = int(ssh(machine_a, "pgrep -x sleep -P 1 | head -1").stdout.split()[0])
        dest = "/var/lib/ckpt-unit/refused"
        result = run_module("criu_checkpoint", dict(unit=UNIT, dest=dest), host="machine-a", inventory=machine_pair.inventory)
        assert result["failed"], result
        assert "pid %d (sleep)" % extra in result["msg"] and UNIT in result["msg"], result["msg"]
        assert ssh(machine_a, "test -e %s" % dest, check=False).returncode == 1
        assert int(show(machine_a, "MainPID")) == main and show(machine_a, "ActiveState") == "active"
        before = state(machine_a)[1]
        wait_for(lambda: state(machine_a)[1] > before, timeout=15, what="the unit to count on")
    finally:
        remove(machine_a)
