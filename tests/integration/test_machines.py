"""The test machines themselves (tests/integration/machines.py): each test fails if the harness is broken.

Real systemd as each machine's PID 1, real sshd reached over the machines' own bridge, real CRIU installed by the
criu role, run by the modules over ssh.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import typing as t
import uuid

import pytest

from conftest import COUNTER, run_module, wait_for
from machines import Machine, global_sysctls


def system_state(machine: Machine) -> str:
    return machine.ssh("systemctl is-system-running", check=False).stdout.strip()


def main_pid(machine: Machine, unit: str) -> int:
    return int(machine.ssh("systemctl show -P MainPID %s" % unit).stdout)


def test_both_machines_boot_to_running(machine_a, machine_b):
    """systemd is each machine's PID 1 and reaches 'running': every unit it starts starts (none failed)."""
    for machine in (machine_a, machine_b):
        state = system_state(machine)
        assert state == "running", "%s is %s: %s" % (machine.name, state, machine.failed_units())
        assert machine.ssh("cat /proc/1/comm").stdout.strip() == "systemd"
        assert machine.ssh("systemctl is-active ssh.service systemd-journald.service dbus.service systemd-logind.service").stdout.split() == ["active"] * 4


def test_machines_are_distinct_hosts(machine_a, machine_b):
    """Own hostname, machine id, PID space and disk."""
    hostnames = [m.ssh("hostname").stdout.strip() for m in (machine_a, machine_b)]
    assert hostnames == ["machine-a", "machine-b"]
    assert os.uname().nodename not in hostnames
    ids = {m.ssh("cat /etc/machine-id").stdout.strip() for m in (machine_a, machine_b)}
    assert len(ids) == 2
    token = uuid.uuid4().hex
    machine_a.ssh("echo %s > /root/only-on-a" % token)
    assert machine_a.ssh("cat /root/only-on-a").stdout.strip() == token
    assert machine_b.ssh("test -e /root/only-on-a", check=False).returncode == 1
    assert not os.path.exists("/root/only-on-a")
    # The machine's PID 1 is its systemd, which this machine sees as machine.pid1.
    assert machine_a.pid1 != machine_b.pid1
    with open("/proc/%d/status" % machine_a.pid1) as handle:
        assert [line.split()[1:] for line in handle if line.startswith("NSpid:")] == [[str(machine_a.pid1), "1"]]


def test_a_reaches_b_over_the_bridge_and_nothing_outside(machine_a, machine_b):
    """machine-a reaches machine-b's sshd at its own address; there is no route out of the machines' subnet."""
    banner = machine_a.ssh("python3 -c \"import socket; print(socket.create_connection(('%s', 22), 5).recv(64).decode())\"" % machine_b.address)
    assert banner.stdout.startswith("SSH-2.0-OpenSSH"), banner
    assert machine_a.ssh("ip -4 route show default").stdout.strip() == ""
    outside = machine_a.ssh("ip route get 192.0.2.1", check=False)
    assert outside.returncode != 0 and "unreachable" in outside.stderr, outside


def test_criu_info_over_ssh_says_it_can_checkpoint(machine_pair):
    """The criu role installed CRIU into the machines (cached image): criu_info over ssh finds it usable."""
    for machine in machine_pair.machines:
        result = run_module("criu_info", {}, host=machine.name, inventory=machine_pair.inventory)
        assert not result["failed"], result
        assert result["criu"]["usable"], result["criu"]
        assert result["criu"]["path"].startswith("/opt/criu-forky/"), result["criu"]
        assert tuple(int(x) for x in result["criu"]["version"].split(".")[:2]) >= (4, 2)
        # The machine's own criu, not this machine's: the private tree lives on its disk.
        assert os.path.exists(machine.path("/opt/criu-forky/usr/sbin/criu"))


def test_restart_always_unit_is_restarted_by_systemd(machine_a):
    """systemd really manages services: a Restart=always unit's main process, SIGKILLed, is started again."""
    unit = "nucleus-sleeper.service"
    machine_a.ssh("printf '%%s\\n' '[Service]' 'ExecStart=/bin/sleep infinity' 'Restart=always' 'RestartSec=200ms' > /run/systemd/system/%s"
                  " && systemctl daemon-reload && systemctl start %s" % (unit, unit))
    try:
        first = main_pid(machine_a, unit)
        assert first > 1
        machine_a.ssh("kill -KILL %d" % first)
        second = wait_for(lambda: (main_pid(machine_a, unit) not in (0, first)) and main_pid(machine_a, unit), timeout=15,
                          what="a new MainPID of %s" % unit)
        assert machine_a.ssh("systemctl show -P NRestarts %s" % unit).stdout.strip() == "1"
        assert machine_a.ssh("systemctl is-active %s" % unit).stdout.strip() == "active"
        assert machine_a.ssh("cat /proc/%d/comm" % second).stdout.strip() == "sleep"
    finally:
        machine_a.ssh("systemctl stop %s; rm -f /run/systemd/system/%s; systemctl daemon-reload" % (unit, unit), check=False)


def test_crash_ends_every_process_and_reboot_keeps_the_disk(machine_b):
    """crash() kills the machine's PID 1 and with it every process of the machine at once; boot() brings it back from
    the same disk: a file written (and synced) before is there, /run is empty again."""
    token = uuid.uuid4().hex
    machine_b.ssh("mkdir -p /var/lib/nucleus-test && echo %s > /var/lib/nucleus-test/token && sync && echo up > /run/volatile" % token)
    machine_b.ssh("systemd-run --unit=nucleus-bystander /bin/sleep infinity")
    before = machine_b.processes()
    assert len(before) > 5, before  # systemd, journald, dbus, logind, sshd, the sleeper, ...
    old_pid1 = machine_b.pid1
    machine_b.crash()
    assert not [pid for pid in before if os.path.exists("/proc/%d" % pid)]
    assert machine_b.processes() == []
    assert not machine_b.running()
    with pytest.raises(OSError):  # nothing answers at its address any more
        socket.create_connection((machine_b.address, 22), timeout=1).close()
    machine_b.boot()
    assert machine_b.pid1 != old_pid1
    assert system_state(machine_b) == "running", machine_b.failed_units()
    assert machine_b.ssh("cat /var/lib/nucleus-test/token").stdout.strip() == token
    assert machine_b.ssh("test -e /run/volatile", check=False).returncode == 1
    assert machine_b.ssh("systemctl is-active nucleus-bystander", check=False).stdout.strip() == "inactive"


def test_machines_change_no_setting_of_this_kernel(machine_pair, machine_b):
    """Booting the machines, a clean shutdown and a boot again (systemd-sysctl, binfmt, modules, ... masked) leave this
    machine's kernel settings as they were before the first machine booted."""
    machine_b.reboot(clean=True)
    assert system_state(machine_b) == "running", machine_b.failed_units()
    before, after = machine_pair.sysctls_at_start, global_sysctls()
    assert len(before) > 100
    assert {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v} == {}


def test_checkpoint_and_restore_a_process_in_a_machine(machine_pair, machine_a):
    """A plain process started in machine-a is checkpointed and restored there by the modules over ssh: real CRIU on
    a host whose PID 1 is systemd, the restored process carrying on with its memory."""
    shutil.copy(COUNTER, machine_a.path("/root/counter.py"))
    state = "/root/counter.state"
    pid = int(machine_a.ssh("setsid python3 /root/counter.py %s </dev/null >/dev/null 2>&1 & echo $! > /run/counter.pid; cat /run/counter.pid"
                            % state).stdout)

    def count() -> t.Tuple[str, int]:
        token, number = machine_a.ssh("cat %s" % state).stdout.split()
        return token, int(number)

    wait_for(lambda: os.path.exists(machine_a.path(state)) and count()[1] >= 3, timeout=15, what="the counter to count")
    inventory = machine_pair.inventory
    dest = "/var/lib/ckpt/counter"
    machine_a.ssh("mkdir -p -m 0700 /var/lib/ckpt")
    made = run_module("criu_checkpoint", dict(pidfile="/run/counter.pid", dest=dest), host="machine-a", inventory=inventory)
    assert made["changed"] and not made["failed"], made
    token, frozen = count()
    assert machine_a.ssh("test -d /proc/%d" % pid, check=False).returncode == 1, "the checkpointed process still runs"
    time.sleep(0.5)
    assert count() == (token, frozen)
    # Its PID is free again once the machine's systemd reaped it: restore it there, from the verified checkpoint.
    restored = run_module("criu_restore", dict(src=dest, pidfile="/run/counter.pid"), host="machine-a", inventory=inventory)
    try:
        assert restored["changed"] and not restored["failed"], restored
        new_pid = restored["pid"]
        assert machine_a.ssh("cat /run/counter.pid").stdout.strip() == str(new_pid)
        carried = wait_for(lambda: count()[1] > frozen + 2 and count(), timeout=15, what="the restored counter to count on")
        assert carried[0] == token, "a new token: the process started afresh instead of being restored"
        assert machine_a.ssh("ps -o ppid= -p %d" % new_pid).stdout.strip() == "1"
    finally:
        machine_a.ssh("pkill -KILL -f /root/counter.py", check=False)
