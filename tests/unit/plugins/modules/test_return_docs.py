"""Docs that match, without root: the comparison of a result with RETURN (return_docs.py) finds what it must, and
criu_migrate's result, built by the code that builds it, is documented key by key. The other modules run for real in
tests/integration/test_return_docs.py."""

import os

import pytest
import yaml

from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migrate as migrate
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings
from ansible_collections.nucleus.criu.plugins.module_utils.migration._worker import Worker
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migration_status as migration_status
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal, read_progress
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._container import identity
from ..module_utils.mu_helpers import dir_fd
from .return_docs import return_doc, undocumented

DOC = yaml.safe_load("""
name: {description: x, returned: always, type: str}
sizes: {description: x, returned: always, type: list, elements: int}
items:
  description: x
  returned: always
  type: list
  elements: dict
  contains:
    path: {description: x, type: str}
    owner:
      description: x
      type: dict
      contains:
        uid: {description: x, type: int}
stats: {description: x, returned: sometimes, type: dict}
""")


def test_what_the_comparison_finds():
    result = {"changed": False, "invocation": {}, "_ansible_no_log": False, "name": "a", "sizes": [1, "2"],
              "items": [{"path": "/x", "owner": {"uid": 0, "gid": 0}}, {"path": 3, "extra": True}],
              "stats": {"seconds": 1.0}, "surprise": 1}
    assert undocumented(result, DOC) == [
        "items[].owner.gid: returned, not in RETURN",
        "items[].extra: returned, not in RETURN",
        "items[].path: documented as str, returned 3 (int)",
        "sizes[]: documented as int, returned '2' (str)",
        "stats: returns keys (seconds) but is documented without contains",
        "surprise: returned, not in RETURN",
    ]
    assert undocumented(dict(result, stats={"seconds": 1.0}), DOC, whole=["stats"])[-1] == "surprise: returned, not in RETURN"
    assert undocumented({"name": "a", "items": []}, DOC) == ["sizes: documented as always returned, missing"]
    assert undocumented({"failed": True, "msg": "no"}, DOC) == [], "a failure need not return what success always does"
    assert undocumented({"name": None, "sizes": [], "items": [], "flag": True}, dict(DOC, flag={"type": "int"})) == [
        "flag: documented as int, returned True (bool)"]


def test_every_module_has_a_return_doc_to_compare_with():
    modules = sorted(name[:-3] for name in os.listdir(os.path.join(os.path.dirname(migrate.__file__), "..", "..", "modules"))
                     if name.endswith(".py") and not name.startswith("_"))
    assert modules == ["criu_checkpoint", "criu_checkpoint_info", "criu_drain_facts", "criu_info", "criu_migrate",
                       "criu_migration_info", "criu_restore", "criu_verify"]
    for module in modules:
        assert isinstance(return_doc(module), dict) and return_doc(module), module


@pytest.mark.parametrize("outcome", ["completed", "rolled_back", "in_doubt"])
def test_every_key_of_a_migration_result_is_documented(tmp_path, outcome):
    """criu_migrate's result as report() makes it from a journal and the progress file the driver writes: a container's
    migration, with its history, on success and in a failure's details."""
    container = identity({"id": "f" * 64, "name": "web", "image_id": "b" * 64, "image_name": "localhost/web:1",
                          "state": "running", "pid": 4242, "runtime": "runc", "criu_config": None,
                          "labels": {"app": "web"}})
    with dir_fd(tmp_path) as fd:
        journal = Journal.create(os.dup(fd), str(tmp_path), "web", "prepared", id="1", role="source", outcome=None,
                                 mode="copy", source="a", process={"pid": 4242, "tree": [4242]}, container=container,
                                 target={"label": "root@b:22", "host": "b"}, image_seconds=1.5)
        journal.record("freezing", frozen_at="2026-11-30T10:00:00.000000Z")
        settings = Settings("web", str(tmp_path), remote.SshTarget("b"), "copy", 60.0, 60.0, None, "sha256", {},
                            None, "all")
        Worker(journal, settings, b"")._progress("transfer", force=True)  # pylint: disable=protected-access
        journal.record("completed" if outcome == "completed" else "rolled_back", outcome=outcome, decision="commit",
                       target_pid=4343, running_at="2026-11-30T10:00:01.000000Z", downtime_seconds=1.0, dump_seconds=0.2,
                       image_bytes=1 << 20, transfer_seconds=0.5, checkpoint_id="2", error=None, target_cleanup="done")
        progress = read_progress(fd, str(tmp_path), "web")
    assert progress, "the driver's progress was read back"
    try:
        result = migrate.report(journal, True, progress)
    except CriuError as exc:
        result = dict(exc.details, failed=True, msg=exc.msg)
    assert result["migration"]["progress"] and result["migration"]["history"] and result["migration"]["container"], result
    assert undocumented(result, return_doc("criu_migrate"), whole=["migration.container.labels"]) == []


def test_a_migration_in_check_mode_is_documented():
    assert undocumented({"changed": True, "actions": ["would migrate pid 4242 to b (copy mode)"]}, return_doc("criu_migrate")) == []


@pytest.mark.parametrize("outcome", [None, "completed", "rolled_back"])
def test_a_migration_followed_as_it_goes_is_documented(tmp_path, outcome):
    """criu_migration_info's result, and criu_migrate's with wait=false (its status is what criu_migration_info returns
    as migration), from a journal and the progress file the driver writes: while it runs, and after."""
    with dir_fd(tmp_path) as fd:
        journal = Journal.create(os.dup(fd), str(tmp_path), "web", "prepared", id="1", role="source", outcome=None,
                                 mode="copy", source="a", process={"pid": 4242, "tree": [4242]}, container=None,
                                 target={"label": "root@b:22", "host": "b"}, expected_bytes=1 << 20)
        journal.record("freezing", frozen_at="2026-11-30T10:00:00.000000Z")
        settings = Settings("web", str(tmp_path), remote.SshTarget("b"), "copy", 60.0, 60.0, None, "sha256", {},
                            None, "all")
        Worker(journal, settings, b"")._progress("transfer", force=True)  # pylint: disable=protected-access
        if outcome is not None:
            journal.record(outcome, outcome=outcome, decision="commit" if outcome == "completed" else "abort", target_pid=4343,
                           running_at="2026-11-30T10:00:01.000000Z", downtime_seconds=1.0, image_bytes=1 << 20,
                           checkpoint_id="2", error=None if outcome == "completed" else "the target said no",
                           target_cleanup="done")
        followed = migration_status.read(str(tmp_path), "web", lambda _fd: outcome is None)
        started = migrate._running(journal, True)  # pylint: disable=protected-access
    assert followed["exists"] and followed["migration"]["done"] is (outcome is not None), followed
    info_doc = return_doc("criu_migration_info")
    assert undocumented(followed, info_doc) == []
    assert undocumented(started, return_doc("criu_migrate"), whole=["status"]) == []
    assert undocumented(started["status"], info_doc["migration"]["contains"]) == []
    if outcome == "rolled_back":
        assert "Rolled back" in followed["msg"], followed


def test_no_migration_to_follow_is_documented(tmp_path):
    for directory in (str(tmp_path), str(tmp_path / "never-made")):
        assert undocumented(migration_status.read(directory, "web", lambda _fd: False), return_doc("criu_migration_info")) == []


def test_every_key_of_a_drain_facts_result_is_documented(tmp_path, monkeypatch):
    """criu_drain_facts on a source (a process this test started, a pidfile that names none, an earlier migration's
    journal) and on a target, built by the code that builds them, against its RETURN."""
    import subprocess  # pylint: disable=import-outside-toplevel
    from ansible_collections.nucleus.criu.plugins.module_utils.drain import _facts as drain_facts
    from ansible_collections.nucleus.criu.plugins.module_utils._argspec import DRAIN_FACTS

    doc = return_doc("criu_drain_facts")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "gone.pid"
        pidfile.write_text("4194304\n")
        monkeypatch.setattr(drain_facts, "_journal", lambda directory, name: {
            "exists": True, "id": "x", "role": "source", "phase": "completed", "outcome": "completed", "driver_running": False,
            "target": "root@b:22", "target_host": "b", "source_pid": 4194304, "target_pid": 7, "downtime_seconds": 0.5,
            "image_bytes": 10, "error": None} if name == "gone" else {"exists": False})
        request = DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="source", workloads=[
            {"name": "live", "pid": sleeper.pid, "pidfile": None, "container": None, "unit": None, "mode": None},
            {"name": "gone", "pid": None, "pidfile": str(pidfile), "container": None, "unit": None, "mode": None}]))
        source = drain_facts.drain_facts(request)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [w["state"] for w in source["source"]["workloads"]] == ["running", "moved"], source
    assert undocumented(source, doc) == []
    monkeypatch.setattr(drain_facts, "mem_available", lambda: 1 << 30)
    target = drain_facts.drain_facts(DRAIN_FACTS.request(DRAIN_FACTS.defaults(role="target")))
    assert undocumented(target, doc) == []
