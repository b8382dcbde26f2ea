"""A systemd service migrated as the unit between two machines whose PID 1 is systemd (tests/integration/machines.py),
by the migrate role, exactly once: a counter with ``Restart=always`` logging to the journal, enabled on machine-a and
installed (not enabled) on machine-b.

Exactly once is checked where systemd could break it: no second counter on either machine at any moment while it
migrates (sampled every 100 ms), none after the source's systemd boots again (an enabled unit starts at boot), none
from ``Restart=`` when the source's copy is ended; an abort leaves the source's unit active with its original
MainPID; a crash of the source machine (its PID 1 killed) before or after the commit loses nothing the copy holds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import typing as t

import pytest

from conftest import FAILPOINTS, PLAYBOOK, REPO, wait_for
from machines import Machine
from test_units import COUNTER, SCRIPT, STATE, UNIT, Watch, counters, remove, show, ssh, state

MIGRATIONS = "/var/lib/nucleus-criu/migrations"  # criu_migrate's default migrate_dir
MIGRATE_KEY = "/root/.ssh/migrate_ed25519"  # machine-a's key for machine-b, as an operator sets it up
LEASE = 30
pytestmark = pytest.mark.xdist_group("machines")

UNIT_FILE = "\n".join(["[Unit]", "Description=nucleus.criu test counter", "[Service]", "ExecStart=/usr/bin/python3 %s" % SCRIPT,
                       "Restart=always", "RestartSec=200ms", "StandardOutput=journal", "StandardError=journal",
                       "[Install]", "WantedBy=multi-user.target", ""])


class Pair:
    """The two machines as the migrate role sees them: machine-a the source, machine-b the target."""

    def __init__(self, machines: t.Any) -> None:
        self.a: Machine = machines[0]
        self.b: Machine = machines[1]
        self.inventory = machines.inventory

    def machine(self, name: str) -> Machine:
        return {"a": self.a, "b": self.b}[name]

    def playbook_argv(self, **extra: t.Any) -> t.List[str]:
        variables = dict(migrate_source="machine-a", migrate_target="machine-b", migrate_unit=UNIT, migrate_name="counter",
                         migrate_ssh_key_file=MIGRATE_KEY, migrate_lease=LEASE, **extra)
        return [PLAYBOOK, "-i", self.inventory, "nucleus.criu.migrate", "-e", json.dumps(variables)]

    def migrate(self, **extra: t.Any) -> subprocess.CompletedProcess:
        return subprocess.run(self.playbook_argv(**extra), cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
                              stdin=subprocess.DEVNULL)

    def start_migrate(self, log: str, **extra: t.Any) -> subprocess.Popen:
        with open(log, "w") as handle:
            return subprocess.Popen(self.playbook_argv(**extra), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def journal(self, name: str) -> t.Optional[t.Dict[str, t.Any]]:
        try:
            with open(self.machine(name).path("%s/counter.journal.json" % MIGRATIONS)) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def settled(self, timeout: float = 180) -> t.Dict[str, t.Any]:
        def done() -> t.Optional[t.Dict[str, t.Any]]:
            journal = self.journal("a")
            if journal is None or journal.get("outcome") is None:
                return None
            driver = self.a.run("flock -n %s/.counter.driver.lock true" % MIGRATIONS, check=False) if self.a.running() else None
            return journal if driver is None or driver.returncode == 0 else None
        return wait_for(done, timeout=timeout, what="the unit's migration to settle")

    def arm(self, name: str, phase: str) -> None:
        self.machine(name).run("mkdir -p -m 0700 %s && touch %s/counter.%s" % (FAILPOINTS, FAILPOINTS, phase))

    def reached(self, name: str, phase: str) -> int:
        """The pid (in the machine's PID namespace) that stopped at ``phase``."""
        marker = "%s/counter.%s.reached" % (FAILPOINTS, phase)
        return wait_for(lambda: json.loads(self.machine(name).run("cat %s 2>/dev/null || true" % marker).stdout or "null"),
                        timeout=120, what="the migration to reach %s on machine-%s" % (phase, name))["pid"]

    def clear_failpoints(self, name: str) -> None:
        if self.machine(name).running():
            self.machine(name).run("rm -rf %s" % FAILPOINTS)

    def silence_link(self, name: str) -> t.List[int]:
        """SIGSTOP every sshd of machine ``name`` (host pids): its link goes silent, packets accepted, nothing answers."""
        machine = self.machine(name)
        sshds = []
        for pid in machine.processes():
            try:
                with open("/proc/%d/comm" % pid) as handle:
                    if handle.read().strip() == "sshd":
                        sshds.append(pid)
            except OSError:
                continue
        for pid in sshds:
            os.kill(pid, signal.SIGSTOP)
        return sshds

    def counters(self) -> t.Dict[str, t.List[int]]:
        return {name: counters(self.machine(name)) for name in ("a", "b")}


class BothWatched:
    """Counter processes on both machines, sampled together: the most ever seen at once, on either."""

    def __init__(self, pair: Pair) -> None:
        self.watches = [Watch(pair.a), Watch(pair.b)]

    def __enter__(self) -> BothWatched:
        for watch in self.watches:
            watch.__enter__()
        return self

    def __exit__(self, *exc: t.Any) -> None:
        for watch in self.watches:
            watch.__exit__(*exc)

    @property
    def most(self) -> t.Tuple[int, int]:
        return self.watches[0].most, self.watches[1].most


@pytest.fixture
def pair(machine_pair, machine_a, machine_b):
    """The counter unit enabled and running on machine-a, installed (disabled, stopped) on machine-b; machine-a holds
    a key machine-b accepts (the operator's part, as ssh between fleet hosts always is)."""
    both = Pair(machine_pair)
    with open(machine_pair[0].key) as handle:
        private = handle.read()
    for machine in (both.a, both.b):
        with open(machine.path(SCRIPT), "w") as handle:
            handle.write(COUNTER)
        with open(machine.path("/etc/systemd/system/%s" % UNIT), "w") as handle:
            handle.write(UNIT_FILE)
        ssh(machine, "rm -rf %s %s /var/lib/nucleus-criu; systemctl daemon-reload" % (STATE, FAILPOINTS))
    with open(both.a.path(MIGRATE_KEY), "w") as handle:
        handle.write(private)
    os.chmod(both.a.path(MIGRATE_KEY), 0o600)
    ssh(both.a, "systemctl enable --now %s" % UNIT)
    wait_for(lambda: state(both.a)[1] >= 3, timeout=15, what="the counter unit to count")
    try:
        yield both
    finally:
        for machine in (both.a, both.b):
            if machine.running():
                both.clear_failpoints("a" if machine is both.a else "b")
                ssh(machine, "systemctl disable %s" % UNIT, check=False)
                remove(machine)
                ssh(machine, "rm -rf /var/lib/nucleus-criu %s" % MIGRATE_KEY, check=False)


def runs_on_b_continued(pair: Pair, token: str, count: int) -> int:
    """The counter runs on machine-b alone, as its unit's MainPID, counting on from ``count`` with the same memory
    (``token``), and logs to machine-b's journal under the unit; its pid there."""
    carried = wait_for(lambda: state(pair.b)[1] > count + 3 and state(pair.b), timeout=30, what="the counter to count on machine-b")
    assert carried[0] == token, "a fresh start, not the migrated memory: %s vs %s" % (carried, token)
    assert show(pair.b, "ActiveState") == "active" and int(show(pair.b, "MainPID")) == carried[2]
    assert pair.counters() == {"a": [], "b": [carried[2]]}
    later = "count %d token %s" % (carried[1], token)
    wait_for(lambda: later in ssh(pair.b, "journalctl -u %s -o cat --no-pager" % UNIT).stdout, timeout=15,
             what="the migrated counter's lines in machine-b's journal")
    assert ssh(pair.b, "ls /run/systemd/system/%s.d 2>/dev/null || true" % UNIT).stdout.strip() == "", "a drop-in was left"
    assert show(pair.b, "Restart") == "always", "the unit's own Restart= again"
    return carried[2]


def source_stays_down(pair: Pair) -> None:
    """machine-a's unit is inactive and disabled, and its systemd starting again (a crash and a boot) brings no
    second counter."""
    assert show(pair.a, "ActiveState") in ("inactive", "failed") and pair.counters()["a"] == []
    assert ssh(pair.a, "systemctl is-enabled %s" % UNIT, check=False).stdout.strip() == "disabled"
    pair.a.reboot()
    time.sleep(2)  # RestartSec and boot-time jobs had their chance
    booted = ssh(pair.a, "systemctl is-system-running --wait", check=False)
    assert booted.stdout.strip() in ("running", "degraded"), (booted, pair.a.failed_units())
    assert pair.counters()["a"] == [] and show(pair.a, "ActiveState") == "inactive", (pair.counters(), show(pair.a, "ActiveState"))


@pytest.mark.parametrize("mode", ["copy", "postcopy"])
def test_a_service_migrates_exactly_once_and_runs_as_the_unit_on_the_target(pair, mode):
    token, _count, _pid = state(pair.a)
    with BothWatched(pair) as watched:
        result = pair.migrate(migrate_mode=mode)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        frozen = pair.journal("a")
        assert frozen["outcome"] == "completed" and frozen["unit"]["name"] == UNIT, frozen
        b_pid = runs_on_b_continued(pair, token, state(pair.a)[1])
        time.sleep(1)
    assert watched.most == (1, 1), "counters at once on (machine-a, machine-b): %s" % (watched.most,)
    assert frozen["unit"]["enabled"] == "enabled" and frozen["unit"]["boot_disabled"], frozen["unit"]
    assert ssh(pair.b, "systemctl is-enabled %s" % UNIT, check=False).stdout.strip() == "enabled", "its boot start moved"
    print("downtime (%s): %.3f s" % (mode, frozen["downtime_seconds"]))

    again = pair.migrate(migrate_mode=mode)
    recap = again.stdout.split("PLAY RECAP")[-1]
    assert again.returncode == 0 and re.search(r"changed=[1-9]", recap) is None, "a completed migration is reported, not redone: " + recap
    source_stays_down(pair)
    assert pair.counters() == {"a": [], "b": [b_pid]}

    # systemd manages it on machine-b: stop stops it (Restart= does not bring it back), restart starts a fresh one.
    ssh(pair.b, "systemctl stop %s" % UNIT)
    time.sleep(1)
    assert pair.counters()["b"] == [] and show(pair.b, "ActiveState") == "inactive"
    ssh(pair.b, "systemctl restart %s" % UNIT)
    fresh = wait_for(lambda: state(pair.b)[0] != token and state(pair.b), timeout=15, what="a fresh counter on machine-b")
    assert fresh[2] == int(show(pair.b, "MainPID")) and pair.counters()["b"] == [fresh[2]]


def test_a_service_that_is_running_on_the_target_is_not_migrated(pair):
    """A second copy is refused at the preflight: the unit already runs on machine-b; nothing is frozen."""
    ssh(pair.b, "systemctl start %s" % UNIT)
    _token, _count, pid = state(pair.a)
    result = pair.migrate()
    assert result.returncode != 0 and "a migration would run it twice" in result.stdout, result.stdout[-3000:]
    assert int(show(pair.a, "MainPID")) == pid and show(pair.a, "ActiveState") == "active"
    assert ssh(pair.a, "systemctl is-enabled %s" % UNIT, check=False).stdout.strip() == "enabled"


def test_a_drain_finds_the_service_by_pattern_and_moves_it_once(pair):
    """The drain playbook empties machine-a of the services a pattern finds (sshd, journald and the rest do not
    match): the counter migrates as the unit, exactly once, and the report says so; the rerun moves nothing, and says
    where the unit went."""
    token, _count, _pid = state(pair.a)
    variables = dict(drain_source="machine-a", drain_targets=["machine-b"], drain_discover={"units": ["nucleus-*"]},
                     drain_reserve_mib=0, migrate_ssh_key_file=MIGRATE_KEY, migrate_lease=LEASE)
    argv = [PLAYBOOK, "-i", pair.inventory, "nucleus.criu.drain", "-e", json.dumps(variables)]
    with BothWatched(pair) as watched:
        drained = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL)
        assert drained.returncode == 0, drained.stdout[-4000:] + drained.stderr[-2000:]
        assert re.search(r'"nucleus-counter: moved -> machine-b, [^"]*downtime', drained.stdout), drained.stdout[-4000:]
        runs_on_b_continued(pair, token, state(pair.a)[1])
        time.sleep(1)
    assert watched.most == (1, 1), "counters at once on (machine-a, machine-b): %s" % (watched.most,)
    with open(pair.a.path("%s/nucleus-counter.journal.json" % MIGRATIONS)) as handle:
        journal = json.load(handle)
    assert journal["outcome"] == "completed" and journal["unit"]["name"] == UNIT, journal
    # The rerun: the unit left machine-a with its migration (systemd runs it there no more); its journal, matching the
    # pattern, has the report say where it went, and nothing moves.
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900, check=False, stdin=subprocess.DEVNULL)
    recap = again.stdout.split("PLAY RECAP")[-1]
    assert again.returncode == 0 and "machine-a holds none of the workloads asked for" in again.stdout, again.stdout[-4000:]
    assert re.search(r'"nucleus-counter: moved -> machine-b[^"]*\(moved by an earlier run\)"', again.stdout), again.stdout[-4000:]
    assert re.search(r"changed=[1-9]", recap) is None, recap
    source_stays_down(pair)


# (who, on which machine the step is reached, the step, the outcome): the kill matrix's actor classes once each, and
# the source machine crashing (its PID 1 killed, then booted again) before and after the commit.
UNIT_MATRIX = [
    ("controller", "a", "target_restored", "completed"),
    ("driver", "a", "target_restored", "rolled_back"),
    ("target", "b", "restored", "rolled_back"),
    ("link", "b", "restored", "rolled_back"),  # the vote lost: machine-b keeps its stopped, held copy until the rerun
    ("crash", "a", "target_restored", "completed"),  # the source's copy died with its machine: the target's is kept
    ("crash", "a", "committed", "completed"),
    # Held and its boot start disabled, not frozen yet, and nothing whole on the target: the rerun undoes it, starts the
    # unit the crash ended (its boot no longer would), and migrates that fresh instance: the memory went with the crash.
    ("crash", "a", "freezing", "started again"),
]


@pytest.mark.parametrize("who, host, phase, outcome", UNIT_MATRIX, ids=["-".join(row[:3]) for row in UNIT_MATRIX])
def test_unit_kill_matrix(pair, tmp_path, who, host, phase, outcome):
    token, _count, pid = state(pair.a)
    pair.arm(host, phase)
    controller = pair.start_migrate(str(tmp_path / "controller.log"))
    with BothWatched(pair) as watched:
        stopped = pair.reached(host, phase)
        first_id = pair.journal("a")["id"]
        silenced: t.List[int] = []
        if who in ("controller", "crash"):
            os.killpg(controller.pid, signal.SIGKILL)  # (a crashed source: the operator's run dies with it)
        if who == "crash":
            pair.a.crash()
        elif who == "link":
            silenced = pair.silence_link("b")
        elif who != "controller":
            pair.machine(host).run("kill -KILL %d" % stopped)
        pair.clear_failpoints(host)
        if silenced:
            # machine-a notices the silent link by itself (ssh keepalives) and decides; then the link comes back.
            wait_for(lambda: (pair.journal("a") or {}).get("outcome"), timeout=120, what="the source to decide")
            for sshd in silenced:
                os.kill(sshd, signal.SIGCONT)
        if who == "crash":
            pair.a.boot()
            assert pair.counters()["a"] == [], "the source machine's boot started the unit: its boot start was not disabled"
            rerun = pair.migrate()
            assert rerun.returncode == 0, (rerun.stdout[-3000:], pair.journal("a"))
        journal = pair.settled()
        with open(tmp_path / "controller.log") as handle:
            told = handle.read()
        controller.wait(timeout=300)
        if outcome == "started again":
            # The crashed migration rolled back; the rerun then migrated the unit it started again, as a new migration.
            assert journal["outcome"] == "completed" and journal["id"] != first_id, journal
            fresh = wait_for(lambda: state(pair.b)[1] > 3 and state(pair.b), timeout=30, what="the counter on machine-b")
            assert fresh[0] != token and pair.counters() == {"a": [], "b": [fresh[2]]}
            token = fresh[0]
        elif outcome == "completed":
            assert journal["outcome"] == outcome, (journal, told[-2000:])
            runs_on_b_continued(pair, token, 0)
        else:
            assert journal["outcome"] == outcome, (journal, told[-2000:])
            # Rolled back: the source's unit runs the original process again, its Restart= and boot start its own.
            assert wait_for(lambda: pair.counters()["a"] == [pid], timeout=30, what="the source's counter to run again")
            assert int(show(pair.a, "MainPID")) == pid and show(pair.a, "ActiveState") == "active"
            assert state(pair.a)[0] == token
            if who == "link":
                # Its copy stays on machine-b, stopped and held (Restart=no), until a rerun tells machine-b the decision.
                assert journal["target_cleanup"] == "pending", journal
                held = pair.counters()["b"]
                assert len(held) == 1 and pair.b.run("ps -o stat= -p %d" % held[0]).stdout.strip().startswith("T")
                assert show(pair.b, "Restart") == "no"
            else:
                assert pair.counters()["b"] == [] and show(pair.b, "ActiveState") in ("inactive", "failed")
            assert ssh(pair.a, "systemctl is-enabled %s" % UNIT, check=False).stdout.strip() == "enabled"
            assert ssh(pair.b, "systemctl is-enabled %s" % UNIT, check=False).stdout.strip() == "disabled"
            assert ssh(pair.a, "ls /run/systemd/system/%s.d 2>/dev/null || true" % UNIT).stdout.strip() == ""
            assert show(pair.a, "Restart") == "always"
        time.sleep(1)
    assert max(watched.most) == 1, "counters at once on (machine-a, machine-b): %s" % (watched.most,)
    rerun = pair.migrate()
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    runs_on_b_continued(pair, token, 0)
    source_stays_down(pair)
