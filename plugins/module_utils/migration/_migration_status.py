# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a migration is, read from the source's journal and progress file without touching either: what
criu_migration_info returns, and what criu_migrate returns when it does not wait.

Reading never takes the driver's lock (a look would otherwise stall a driver about to start) and never creates
the migration directory: a host where no migration ran answers that none exists.
"""

from __future__ import annotations

import datetime
import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._requests import MigrationInfoRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import DriverLock, Journal, read_progress, require_name

MIB = 1048576.0


def _seconds_between(start: t.Optional[str], end: t.Optional[str]) -> t.Optional[float]:
    if not start:
        return None
    begun = datetime.datetime.strptime(start, procfs.TIME_FORMAT)
    ended = datetime.datetime.strptime(end, procfs.TIME_FORMAT) if end else datetime.datetime.strptime(
        procfs.utc_now(), procfs.TIME_FORMAT)
    return round(max((ended - begun).total_seconds(), 0.0), 3)


def describe(journal: Journal, progress: t.Mapping[str, t.Any], driver_running: bool) -> t.Dict[str, t.Any]:
    """The migration as an operator follows it: phase, bytes sent of the expected total, rate, how long the workload
    has been frozen (until its copy ran), and the outcome once there is one. ``done``: there is an outcome and no
    driver is left to change it (in doubt, only a rerun can)."""
    data = journal.data
    outcome = data.get("outcome")
    frozen_until = data.get("running_at") or (None if outcome is None else data.get("history", [{}])[-1].get("at"))
    return {
        "id": data.get("id"), "name": data.get("name"), "role": data.get("role"), "mode": data.get("mode"),
        "phase": journal.phase, "outcome": outcome, "decision": data.get("decision"), "error": data.get("error"),
        "driver_running": driver_running, "done": outcome is not None and not driver_running,
        "step": progress.get("step"), "bytes_sent": progress.get("bytes_sent", 0), "expected_bytes": data.get("expected_bytes"),
        "rate_mib_s": progress.get("rate_mib_s"), "progress_at": progress.get("at"),
        "frozen_at": data.get("frozen_at"), "frozen_seconds": _seconds_between(data.get("frozen_at"), frozen_until),
        "downtime_seconds": data.get("downtime_seconds"), "image_bytes": data.get("image_bytes"),
        "checkpoint_id": data.get("checkpoint_id"), "source_pid": data.get("process", {}).get("pid"),
        "target_pid": data.get("target_pid"), "target": data.get("target"), "journal": journal.path,
    }


def report(journal: Journal, changed: bool, progress: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """criu_migrate's result from a journal that reached an outcome; a failed migration raises, saying where the
    workload runs and what to do."""
    data = journal.data
    migration = {key: data.get(key) for key in (
        "id", "name", "mode", "phase", "outcome", "decision", "frozen_at", "running_at", "downtime_seconds", "dump_seconds",
        "image_bytes", "transfer_seconds", "target_pid", "lazy_pages", "checkpoint_id", "target_cleanup", "error", "container",
        "unit", "image_seconds", "source_cleanup_error")}
    migration.update(source=data.get("source"), target=data.get("target"), source_pid=data.get("process", {}).get("pid"),
                     journal=journal.path, history=data.get("history"), progress=dict(progress))
    failure = failure_message(journal)
    if failure is not None:
        raise CriuError(failure, migration=migration)
    return {"changed": changed, "migration": migration}


def failure_message(journal: Journal) -> t.Optional[str]:
    """What an outcome other than completed means for the operator: where the workload runs and what to do. None for
    a completed migration, or one without an outcome yet."""
    data = journal.data
    outcome = data.get("outcome")
    if outcome in (None, "completed") or data.get("role") == "target":
        return None
    workload = kinds.of(data).describe_record(data)
    if outcome == "rolled_back":
        if data.get("target_cleanup") == "done":
            target_state = "; nothing of it remains on the target"
        elif "target_restored" in [entry["phase"] for entry in data.get("history", [])]:
            target_state = "; the target's stopped copy is removed by the next run (target unreachable now)"
        else:
            target_state = "; nothing was restored on the target (unreachable now), and the next run clears what it received"
        resumed_as = "; %s" % data["source_resumed_as"] if data.get("source_resumed_as") else ""
        return ("Migration of %s to %s failed in phase %s: %s Rolled back: the workload runs again on %s (%s) with its "
                "memory intact%s%s." % (data["name"], data["target"]["label"], _failed_phase(data), data.get("error"),
                                        data.get("source"), workload, resumed_as, target_state))
    return ("Migration of %s is in doubt: %s. Source %s: %s %s. Target %s: see its journal %s. Once the target is "
            "reachable, rerun the same command: it reads both journals and finishes or undoes the migration."
            % (data["name"], data.get("error"), data.get("source"), workload,
               _source_state(data), data["target"]["label"], journal.path))


def _source_state(data: t.Mapping[str, t.Any]) -> str:
    """How the source's copy is left while a migration is in doubt."""
    return kinds.of(data).frozen_state(data)


def _failed_phase(data: t.Mapping[str, t.Any]) -> str:
    phases = [entry["phase"] for entry in data.get("history", []) if entry["phase"] not in ("aborting", "rolled_back")]
    return phases[-1] if phases else "prepared"


def summary(migration: t.Mapping[str, t.Any]) -> str:
    """One line for a playbook's output: phase, MiB sent of the total, rate, seconds frozen."""
    total = migration.get("expected_bytes")
    sent = "%.1f%s MiB sent" % (migration.get("bytes_sent", 0) / MIB, " of ~%.1f" % (total / MIB) if total else "")
    parts = ["%s: %s" % (migration.get("name"), migration.get("outcome") or migration.get("phase")), sent]
    if migration.get("rate_mib_s"):
        parts.append("%s MiB/s" % migration["rate_mib_s"])
    if migration.get("frozen_seconds") is not None:
        parts.append("frozen %.1f s" % migration["frozen_seconds"])
    return ", ".join(parts)


def migration_info(request: MigrationInfoRequest) -> t.Dict[str, t.Any]:
    """The criu_migration_info module's work (it imports this module alone: a look every few seconds stays cheap)."""
    return read(os.path.normpath(request.migrate_dir), request.name,
                lambda dir_fd: DriverLock(dir_fd, request.name, create=False).held_elsewhere())


def read(directory: str, name: str, driver_running: t.Callable[[int], bool]) -> t.Dict[str, t.Any]:
    """criu_migration_info's result. ``driver_running(dir_fd)`` says whether a driver holds the migration's lock."""
    require_name(name)
    opened = store.open_existing_dir(directory, "Migration directory")
    if opened is None:
        return {"changed": False, "exists": False, "migration": {}, "msg": "No migration ever ran on this host (no %s)." % directory}
    dir_fd, real = opened
    journal = Journal.load(dir_fd, real, name)
    if journal is None:
        return {"changed": False, "exists": False, "migration": {}, "msg": "No migration named %s on this host." % name}
    migration = describe(journal, read_progress(dir_fd, real, name), driver_running(dir_fd))
    failure = failure_message(journal) if migration["done"] else None
    return {"changed": False, "exists": True, "migration": migration, "msg": failure or summary(migration)}
