"""A drain's plan, second round and report from criu_drain_facts' results (drain/_plan.py), and the facts' own pure
parts (drain/_facts.py): names, discovery by pidfile, a target's capacity."""

import json
import os
import time

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.drain import _facts as facts
from ansible_collections.nucleus.criu.plugins.module_utils.drain import _plan as plan_
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import FORMAT as JOURNAL_FORMAT
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import DRAIN_FACTS
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs

MIB = plan_.MIB


def found(name, mib, state="running", movable=True, problem="", kind="process", migration=None, mode="copy"):
    return {"name": name, "kind": kind, "mode": mode, "workload": {"pidfile": "/run/%s.pid" % name}, "memory_bytes": mib * MIB,
            "state": state, "movable": movable, "problem": problem, "migration": migration or {"exists": False}}


SOURCE = {"arch": "x86_64", "workloads": [
    found("big", 300), found("small", 10), found("odd", 5, movable=False, problem="it is stopped"),
    found("gone", 0, state="moved", movable=False,
          migration={"exists": True, "target": "127.0.0.3:22", "downtime_seconds": 0.5, "image_bytes": 1000, "target_host": "127.0.0.3"}),
]}
TARGETS = {
    "host-b": {"arch": "x86_64", "capacity_bytes": 400 * MIB, "usable": True, "lazy_pages": True},
    "host-c": {"arch": "x86_64", "capacity_bytes": 150 * MIB, "usable": True, "lazy_pages": True},
}


def test_plan_from_facts():
    result = plan_.drain_plan(SOURCE, TARGETS, "host-a", given=[{"name": "big", "tcp_established": True, "pidfile": "/x"}],
                              parallel=1, addresses={"host-b": "127.0.0.3", "host-c": ""})
    assert [(m["name"], m["target"], m["wave"]) for m in result["migrations"]] == [("big", "host-b", 0), ("small", "host-c", 1)]
    big = result["migrations"][0]
    assert big["source"] == "host-a" and big["pidfile"] == "/run/big.pid" and big["tcp_established"] is True
    assert result["unplaced"] == [{"workload": "odd", "reason": "it is stopped"}]
    assert result["moved_already"] == [{"workload": "gone", "target": "host-b", "downtime_seconds": 0.5, "image_bytes": 1000}]
    assert result["batches"] == [1, 1] and result["free_bytes"] == {"host-b": 100 * MIB, "host-c": 140 * MIB}
    assert "wave 0: big -> host-b (300.0 MiB, copy)" in result["lines"]


def test_replan_and_report():
    first = plan_.drain_plan(SOURCE, dict(TARGETS, **{"host-d": {"arch": "x86_64", "capacity_bytes": 20 * MIB}}), "host-a")
    assert {m["name"]: m["target"] for m in first["migrations"]} == {"big": "host-b", "small": "host-c"}
    outcomes = [{"name": "big", "target": "host-b", "outcome": "moved", "downtime_seconds": 1.5, "image_bytes": 300 * MIB},
                {"name": "small", "target": "host-c", "outcome": "rolled_back", "why": "host-c died"}]
    retry = plan_.drain_replan(first, outcomes, SOURCE, dict(TARGETS, **{"host-d": {"arch": "x86_64", "capacity_bytes": 20 * MIB}}),
                               "host-a")
    assert [(m["name"], m["target"]) for m in retry["migrations"]] == [("small", "host-b")]  # b has 100 MiB left, d 20
    assert "host-c: out of this drain (a migration onto it failed)" in retry["lines"]
    assert not any(line.startswith("room left on host-c") for line in retry["lines"])
    final = {"workloads": [found("big", 0, state="moved"), found("small", 0, state="moved"), found("odd", 5, movable=False),
                           found("gone", 0, state="moved")]}
    again = [{"name": "small", "target": "host-b", "outcome": "moved", "downtime_seconds": 0.2, "image_bytes": 10 * MIB}]
    report = plan_.drain_report(first, outcomes, final, retry, again)
    by_name = {r["name"]: r for r in report["workloads"]}
    assert by_name["big"]["outcome"] == "moved" and by_name["big"]["target"] == "host-b"
    assert by_name["small"]["target"] == "host-b" and "placed again after rolled_back on host-c (host-c died)" in by_name["small"]["why"]
    assert by_name["gone"]["why"] == "moved by an earlier run"
    assert by_name["odd"]["outcome"] == "not_moved" and report["left_on_source"] == ["odd"] and not report["emptied"]
    assert report["lines"][-1] == "left on the source: odd"


def test_report_of_a_run_that_never_reported():
    first = plan_.drain_plan(SOURCE, TARGETS, "host-a")
    final = {"workloads": [found("big", 300), found("small", 10, state="in_flight")]}
    report = plan_.drain_report(first, [], final)
    assert {r["name"]: r["outcome"] for r in report["workloads"]} == {"big": "not_run", "small": "not_run"}
    assert report["left_on_source"] == ["big", "small"]


def test_migration_names_of_discovered_workloads():
    assert facts.migration_name("web@1.service") == "web-1.service"
    assert facts.migration_name("..x") == "x" and facts.migration_name("///") == "workload"


def test_discovery_by_pidfile_dedupes_and_keeps_given_names(tmp_path):
    for name in ("a", "b"):
        (tmp_path / ("%s.pid" % name)).write_text("1\n")
    request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(
        role="source", workloads=[{"name": "first", "pidfile": str(tmp_path / "a.pid"), "mode": None}],
        discover={"pidfiles": [str(tmp_path / "*.pid")], "container_labels": [], "units": []}, migrate_dir=str(tmp_path / "none")))
    items = facts._discover(request)  # pylint: disable=protected-access
    assert [(i["name"], i["found_by"]) for i in items] == [("first", "given"), ("b", "pidfile %s/*.pid" % tmp_path)]


def test_a_given_workload_names_exactly_one_thing():
    request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="source", workloads=[{"name": "x", "pid": 1, "pidfile": "/a"}]))
    with pytest.raises(CriuError, match="exactly one of"):
        facts._discover(request)  # pylint: disable=protected-access


def test_target_capacity_is_available_less_reserve_capped(monkeypatch):
    monkeypatch.setattr(facts, "mem_available", lambda: 1000 * MIB)
    monkeypatch.setattr(facts.host, "criu_facts", lambda *a: {"usable": True, "problems": [], "version": "4.2", "lazy_pages": True})
    monkeypatch.setattr(facts.host, "can_checkpoint", lambda: (True, ""))
    request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="target"))
    assert facts.drain_facts(request)["target"]["capacity_bytes"] == (1000 - 256) * MIB
    capped = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="target", capacity_mib=100, reserve_mib=0))
    result = facts.drain_facts(capped)["target"]
    assert result["capacity_bytes"] == 100 * MIB and result["usable"] and result["podman"] is None
    with pytest.raises(CriuError, match="role=source only"):
        facts.drain_facts(DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="target", workloads=[{"name": "x", "pid": 5}])))


def test_mem_available_reads_meminfo():
    if os.path.exists(facts.MEMINFO):
        assert facts.mem_available() > 0


def test_a_stopped_process_is_reported_not_movable():
    import signal  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        os.kill(sleeper.pid, signal.SIGSTOP)
        while procfs.read_stat(sleeper.pid).state != "T":  # (a signal is delivered a moment later)
            time.sleep(0.001)
        request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="source", migrate_dir="/nonexistent/nucleus-criu-test"))
        item = {"name": "held", "pid": sleeper.pid, "mode": "copy", "found_by": "given"}
        found = facts._measure(item, request, "")  # pylint: disable=protected-access
    finally:
        sleeper.kill()
        sleeper.wait()
    assert found["state"] == "running" and not found["movable"] and "is stopped (state T)" in found["problem"], found
    assert found["memory_bytes"] > 0 and found["processes"] == 1


def test_discovery_of_containers_by_label_and_services_by_pattern(monkeypatch, tmp_path):
    """What podman ps and systemctl list-units answer, made workloads (both faked: no Podman, no systemd here)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    calls = []

    def podman_run(argv, timeout):
        calls.append(argv)
        return ("web\ndb\n" if "label=tier=front" in argv else ""), 0.1

    monkeypatch.setattr(facts.podman.Podman, "load", classmethod(lambda cls, timeout: cls("/usr/bin/podman", "4.3.1")))
    monkeypatch.setattr(facts.podman, "run", podman_run)
    listed = ("worker@1.service loaded active running Worker 1\nworker@2.service loaded active running Worker 2\n"
              "ssh.service loaded active running OpenBSD Secure Shell server\n")
    monkeypatch.setattr(facts.unit_kind, "systemctl", lambda *argv, **kw: subprocess.CompletedProcess(argv, 0, listed, ""))
    request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="source", migrate_dir=str(tmp_path), discover={
        "pidfiles": [], "container_labels": ["tier=front", "none"], "units": ["worker@*", "ssh"]}))
    items = facts._discover(request)  # pylint: disable=protected-access
    assert [(i["name"], {k: i[k] for k in facts.REF_KEYS if k in i}) for i in items] == [
        ("db", {"container": "db"}), ("web", {"container": "web"}), ("worker-1", {"unit": "worker@1.service"}),
        ("worker-2", {"unit": "worker@2.service"}), ("ssh", {"unit": "ssh.service"})]
    assert calls[0] == ["/usr/bin/podman", "ps", "--filter", "label=tier=front", "--format", "{{.Names}}"]


def test_a_rerun_finds_the_containers_and_services_an_earlier_run_moved_by_their_journals(monkeypatch, tmp_path):
    """Moved away, they are in neither podman ps nor list-units: their completed journals, matched by the labels and
    patterns discovery asks for, name them (one running here again is found as such, once)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    monkeypatch.setattr(facts.podman.Podman, "load", classmethod(lambda cls, timeout: cls("/usr/bin/podman", "4.3.1")))
    monkeypatch.setattr(facts.podman, "run", lambda argv, timeout: ("db\n" if "label=tier=front" in argv else "", 0.1))
    monkeypatch.setattr(facts.unit_kind, "systemctl", lambda *argv, **kw: subprocess.CompletedProcess(argv, 0, "", ""))
    write_journal(tmp_path, "web", role="source", outcome="completed", container={"name": "web", "labels": {"tier": "front"}})
    write_journal(tmp_path, "db", role="source", outcome="completed", container={"name": "db", "labels": {"tier": "front"}})
    write_journal(tmp_path, "cache", role="source", outcome="completed", container={"name": "cache", "labels": {"tier": "back"}})
    write_journal(tmp_path, "old", role="source", outcome="completed", container={"name": "old"})
    write_journal(tmp_path, "keyed", role="source", outcome="completed", container={"name": "keyed", "labels": {"drain": ""}})
    write_journal(tmp_path, "worker-1", role="source", outcome="completed", unit={"name": "worker@1.service"})
    write_journal(tmp_path, "cron", role="source", outcome="completed", unit={"name": "cron.service"})
    write_journal(tmp_path, "back", role="source", outcome="rolled_back", unit={"name": "worker@2.service"})
    write_journal(tmp_path, "landed", role="target", outcome="completed", container={"name": "in", "labels": {"tier": "front"}})
    request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="source", migrate_dir=str(tmp_path), discover={
        "pidfiles": [], "container_labels": ["tier=front", "drain"], "units": ["worker@*"]}))
    items = facts._discover(request)  # pylint: disable=protected-access
    assert [(i["name"], {k: i[k] for k in facts.REF_KEYS if k in i}, i["found_by"]) for i in items] == [
        ("db", {"container": "db"}, "label tier=front"),
        ("keyed", {"container": "keyed"}, "label drain"),
        ("web", {"container": "web"}, "label tier=front"),
        ("worker-1", {"unit": "worker@1.service"}, "unit worker@*")]


def write_journal(directory, name, **data):
    (directory / ("%s.journal.json" % name)).write_text(json.dumps(dict({"format": JOURNAL_FORMAT, "name": name, "phase": "frozen",
                                                                        "history": []}, **data)))


def test_unfinished_migrations_from_this_host_are_found_whatever_discovery_sees(tmp_path):
    """A container its migration stopped is not in podman ps, a unit not in list-units --state=running: their
    journals on the source name them, so the drain resolves them (given and discovered names come first)."""
    write_journal(tmp_path, "ctr", role="source", outcome=None, mode="postcopy", container={"name": "web", "id": "abc"})
    write_journal(tmp_path, "svc", role="source", outcome="in_doubt", unit={"name": "worker@1.service"})
    write_journal(tmp_path, "proc", role="source", outcome=None, process={"pid": 4242})
    write_journal(tmp_path, "given", role="source", outcome=None, process={"pid": 99})
    write_journal(tmp_path, "done", role="source", outcome="completed", process={"pid": 7})
    write_journal(tmp_path, "back", role="source", outcome="rolled_back", process={"pid": 8})
    write_journal(tmp_path, "landed", role="target", outcome=None, process={"pid": 9})
    (tmp_path / "broken.journal.json").write_text("{")
    request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="source", migrate_dir=str(tmp_path),
                                                       workloads=[{"name": "given", "pid": 99, "mode": None}]))
    items = facts._discover(request)  # pylint: disable=protected-access
    assert [(i["name"], {k: i[k] for k in facts.REF_KEYS if k in i}, i["mode"], i["found_by"]) for i in items] == [
        ("given", {"pid": 99}, "copy", "given"),
        ("ctr", {"container": "web"}, "postcopy", facts.UNFINISHED),
        ("proc", {"pid": 4242}, "copy", facts.UNFINISHED),
        ("svc", {"unit": "worker@1.service"}, "copy", facts.UNFINISHED)]
