"""A migration followed as it goes: criu_migrate with wait=false returns once its driver runs, and
criu_migration_info reports its phase, bytes and frozen time until the outcome, reading and changing nothing."""

from __future__ import annotations

import os
import re
import time
import typing as t

from conftest import read_state, run_module
from testhosts import MIGRATIONS, Hosts
from test_migration import LEASE, assert_migrated, remote  # noqa: F401  # pylint: disable=unused-import


def info(hosts: Hosts, name: str, check: bool = False, migrate_dir: str = MIGRATIONS) -> t.Dict[str, t.Any]:
    return run_module("criu_migration_info", dict(name=name, migrate_dir=migrate_dir), check=check, host="host-a",
                      inventory=hosts.inventory)


def test_wait_false_returns_while_it_runs_and_migration_info_follows_it_to_the_end(hosts, remote):  # noqa: F811
    workload = remote("followed", "--mem 384")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "transferring", workload.name)  # held there until migration_info has seen it run
    started = hosts.migrate_module(workload, lease=LEASE, wait=False)
    assert started["changed"] and not started.get("failed"), started
    status = started["status"]
    assert status["driver_running"] and not status["done"] and status["outcome"] is None, status
    assert status["name"] == workload.name and status["source_pid"] == workload.pid and status["role"] == "source"
    assert "migration" not in started, "no outcome is reported before there is one"

    seen: t.List[t.Dict[str, t.Any]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        polled = info(hosts, workload.name)
        assert polled["exists"] and not polled["changed"], polled
        seen.append(polled["migration"])
        if polled["migration"]["done"]:
            break
        hosts.clear_failpoints("a")
        time.sleep(0.3)
    final = seen[-1]
    assert final["done"] and final["outcome"] == "completed" and not final["driver_running"], final
    assert final["target_pid"] and final["downtime_seconds"] is not None and final["frozen_seconds"] >= final["downtime_seconds"] - 0.5
    assert final["bytes_sent"] >= 384 << 20 and final["image_bytes"] >= 384 << 20, final
    running = [entry for entry in seen if not entry["done"]]
    assert running, "the migration must be seen while it runs"
    assert [entry["bytes_sent"] for entry in seen] == sorted(entry["bytes_sent"] for entry in seen), "bytes only grow"
    assert_migrated(workload, token, count)

    again = hosts.migrate_module(workload, lease=LEASE, wait=False)
    assert not again["changed"] and again["migration"]["outcome"] == "completed", again
    followed = hosts.migrate_module(workload, lease=LEASE, migration_id=status["id"])
    assert followed["migration"]["outcome"] == "completed" and followed["migration"]["id"] == status["id"], followed
    assert not followed["changed"], "following changes nothing: the run that started it said so"
    other = hosts.migrate_module(workload, lease=LEASE, migration_id="not-" + status["id"])
    assert other["failed"] and "nothing of it to follow" in other["msg"], other


def test_migration_info_of_nothing_creates_nothing(hosts):
    missing_dir = "/var/lib/nucleus-criu-never-made/migrations"
    for check in (True, False):
        none_here = info(hosts, "nothing", check=check, migrate_dir=missing_dir)
        assert not none_here["changed"] and not none_here["exists"] and none_here["migration"] == {}, none_here
        assert "No migration ever ran" in none_here["msg"]
    assert not os.path.lexists(hosts.path("a", os.path.dirname(missing_dir)))
    holding_others = "/run/nucleus-test-migrations"  # a migration directory with no journal of that name
    hosts.run("a", "mkdir -p -m 0700 %s" % holding_others)
    unknown = info(hosts, "never-migrated", migrate_dir=holding_others)
    assert not unknown["exists"] and "No migration named never-migrated" in unknown["msg"], unknown
    bad = info(hosts, "../etc")
    assert bad["failed"] and "must be 1-100 letters" in bad["msg"], bad


def test_the_role_prints_the_phase_and_bytes_as_the_migration_goes(hosts, remote):  # noqa: F811
    workload = remote("shown", "--mem 512")
    token, count = read_state(workload.state_file)
    result = hosts.migrate(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile,
                           migrate_name=workload.name, migrate_lease=LEASE, migrate_poll_interval=1)
    assert result.returncode == 0, result.stdout + result.stderr
    looks = re.findall(r"^  shown: (\w+), ([\d.]+) of ~([\d.]+) MiB sent", result.stdout, re.MULTILINE)
    assert len(looks) >= 2 and looks[-1][0] == "completed", result.stdout
    assert [phase for phase, _sent, _total in looks if phase != "completed"], "a look while it ran: " + result.stdout
    sent = [float(mib) for _phase, mib, _total in looks]
    assert sent == sorted(sent) and sent[-1] >= 512, sent
    assert_migrated(workload, token, count)
