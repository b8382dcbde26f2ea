# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The criu_migrate module's side of a live migration, driven by its source host, exactly once, whatever dies.

The module checks everything before it touches the workload (_preflight), journals the migration and hands it to a
driver it detaches from the controller (_driver), under which the worker runs the protocol (_worker). The commit
point is one journaled decision; before it, any failure, timeout or expired lease undoes the migration, after it the
source never runs again (_recovery). Rerunning the module reads the journals and finishes, reports or resolves; it
never starts a second migration of a workload whose migration is in flight or in doubt.
"""

from __future__ import annotations

import contextlib
import os
import time
import typing as t
import uuid

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migration_status as migration_status
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._requests import MigrateRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.storage._failpoint import failpoint
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import DriverLock, Journal, read_progress
from ansible_collections.nucleus.criu.plugins.module_utils.migration._migration_status import report
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Found, Kind
from ansible_collections.nucleus.criu.plugins.module_utils.migration._driver import WATCH_POLL, spawn, watch
from ansible_collections.nucleus.criu.plugins.module_utils.migration._preflight import preflight
from ansible_collections.nucleus.criu.plugins.module_utils.migration._recovery import finish_target_cleanup, resolve
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings, as_recorded, recordable, settings


def source_journal(dir_fd: int, directory: str, name: str) -> t.Optional[Journal]:
    """This host's journal of migration ``name`` as its source; None when there is none. A name is a migration's
    identity only with its role here: the journal of a migration this host received (a -> b, read on b by a b -> a run
    of the same name) is not this run's to resolve, and while it is unfinished the name is taken. A finished one
    (completed or aborted here) is history: the workload may move on, or back, under the same name."""
    journal = Journal.load(dir_fd, directory, name)
    if journal is None or journal.get("role") != "target":
        return journal
    if journal.get("outcome") in ("completed", "aborted"):
        return None
    source = journal.get("source")
    raise CriuError("This host is the target of the unfinished migration %s (id %s, from %s, phase %s): its journal %s is not "
                    "this run's to resolve. Finish that migration by rerunning it on its source (%s), then rerun this one; "
                    "or give this migration another name." % (name, journal.get("id"), source, journal.phase, journal.path, source),
                    path=journal.path)


def migrate(request: MigrateRequest, check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_migrate module's work: returns the module result."""
    key = integrity.load_key(request.hmac_key, request.hmac_key_file)
    s = settings(request, key)
    kind = kinds.asked(request.workload)
    if request.workload.pid is not None and request.workload.pid <= 1:
        procfs.require_checkpointable(request.workload.pid)  # bad input: refused before anything is written
    code = remote.payload()
    if check_mode:
        opened = store.open_existing_dir(s.directory, "Migration directory")
        if opened is None:  # no migration ever ran here: nothing to resolve, nothing to create
            return _would_migrate(request, s, code, kind, kind.look_up(request.workload, request.timeout))
    else:
        opened = store.open_or_create_dir(s.directory, "Migration directory")
    dir_fd, directory = opened
    s = s._replace(directory=directory)
    lock = DriverLock(dir_fd, s.name, create=not check_mode)
    deadline = time.monotonic() + request.wait_timeout
    if request.migration_id:
        return _follow(request.migration_id, s, code, dir_fd, directory, lock, deadline)
    stack = contextlib.ExitStack()
    try:
        running = _another_run(request, s, code, dir_fd, lock, deadline)
        if running is not None:
            return running
        found = kind.look_up(request.workload, request.timeout)
        settled, found = _settle_previous(request, s, code, kind, found, dir_fd, check_mode)
        if settled is not None:
            return settled
        if check_mode:
            return _would_migrate(request, s, code, kind, found)
        journal, s = _start(request, s, code, kind, found, dir_fd, stack)
        spawn(lock, journal, s, code)
        if not request.wait:
            return _running(journal, True)
        return report(watch(journal, lock, deadline, s, code), True, read_progress(dir_fd, directory, s.name))
    finally:
        stack.close()
        lock.release()
        os.close(dir_fd)


def _another_run(request: MigrateRequest, s: Settings, code: bytes, dir_fd: int, lock: DriverLock,
                 deadline: float) -> t.Optional[t.Dict[str, t.Any]]:
    """Take the migration's lock; None once held. Held elsewhere, it is the same migration run again while it runs (a
    second controller): it is waited for and reported, as a rerun does. Before its journal exists it is in its
    preflight: that ends soon, one way or the other."""
    while not lock.try_acquire():
        journal = source_journal(dir_fd, s.directory, s.name)
        if journal is not None and not request.wait:
            return _running(journal, False)
        if journal is not None:
            return report(watch(journal, lock, deadline, s, code), False, read_progress(dir_fd, s.directory, s.name))
        if time.monotonic() > deadline:
            raise CriuError("Another run of migration %s has held its lock for wait_timeout without writing a journal. "
                            "Rerun the same command to wait for it again." % s.name)
        time.sleep(WATCH_POLL)
    return None


def _settle_previous(request: MigrateRequest, s: Settings, code: bytes, kind: Kind, found: Found, dir_fd: int,
                     check_mode: bool) -> t.Tuple[t.Optional[t.Dict[str, t.Any]], Found]:
    """What an earlier migration of this name left (under its lock): rerun = recovery of an unfinished one, the clean-up
    a rolled-back one owes the target, or the report of a completed one of this very workload. The result when that
    is all this run does (else None), and the workload as it is afterwards."""
    journal = source_journal(dir_fd, s.directory, s.name)
    if journal is None:
        return None, found
    if journal.get("outcome") in (None, "in_doubt"):
        if check_mode:
            return {"changed": True, "actions": ["would resolve the unfinished migration %s (phase %s)"
                                                 % (journal.get("id"), journal.phase)]}, found
        # Finish or undo it from both journals. Undone, the workload runs on the source again, and this run migrates
        # it as asked.
        resolve(journal, as_recorded(s, journal), code)
        if journal.get("outcome") != "rolled_back":
            return report(journal, True, read_progress(dir_fd, s.directory, s.name)), found
        return None, kind.look_up(request.workload, request.timeout)
    if journal.get("outcome") == "rolled_back" and journal.get("target_cleanup") == "pending":
        if check_mode:
            return {"changed": True, "actions": ["would remove the stopped copy that the rolled-back migration %s left on "
                                                 "the target, then migrate anew" % journal.get("id")]}, found
        finish_target_cleanup(journal, as_recorded(s, journal), code)
    elif journal.get("outcome") == "completed":
        migrated = kinds.of(journal.data)
        if migrated.already_migrated(journal.data, found):
            return report(journal, False, read_progress(dir_fd, s.directory, s.name)), found
        if migrated.reused_pid(journal.data, found):
            pid = t.cast(int, found.pid)
            raise CriuError("pid %d was migrated to %s already (journal %s), and now belongs to another process (%s): the "
                            "pidfile still names the old pid. Refresh the pidfile, or remove the journal to migrate this "
                            "process." % (pid, journal.get("target", {}).get("label"), journal.path,
                                          procfs.process_state(pid).get("comm")), pid=pid)
    return None, found


def _start(request: MigrateRequest, s: Settings, code: bytes, kind: Kind, found: Found, dir_fd: int,
           stack: contextlib.ExitStack) -> t.Tuple[Journal, Settings]:
    """Claim the workload (one migration may freeze it), check both hosts, and write the "prepared" journal; the
    settings as the preflight fixed them (the hash algorithm both hosts have)."""
    found = kind.require(request.workload, found)
    pid = t.cast(int, found.pid)
    st = procfs.read_stat(pid)
    claim = DriverLock.for_workload(dir_fd, kind.claim_key({"pid": pid, "starttime": st.starttime if st else None},
                                                           kind.journal_identity(found)))
    if not claim.try_acquire():
        raise CriuError("%s is being migrated right now by another migration from this host (another name, another "
                        "controller): only one may freeze it. Wait for it to end (its journal is in %s), then rerun "
                        "this one if the workload is still here." % (kind.describe_found(found), s.directory), pid=pid)
    stack.callback(claim.release)  # the driver keeps its own copy of the claim for as long as it lives
    failpoint(s.name, "preflight")  # (tests: the window in which the migration is locked and has no journal yet)
    journal_id = str(uuid.uuid4())
    facts = preflight(s, code, kind, found, journal_id, request.criu_path, check_mode=False)
    s = s._replace(algorithm=facts["algorithm"])
    journal = Journal.create(
        dir_fd, s.directory, s.name, "prepared", id=journal_id, role="source", outcome=None, decision=None, mode=s.mode,
        source=os.uname().nodename, target={"label": s.target.label, "host": s.target.host}, lease_seconds=s.lease,
        criu_path=request.criu_path, algorithm=s.algorithm,
        process={"pid": pid, "starttime": st.starttime if st else None, "comm": st.comm if st else None, "tree": facts["tree"]},
        expected_bytes=facts["expected_bytes"], settings=recordable(s),
        image_seconds=facts.get("image_seconds"), **kind.journal_identity(found))
    return journal, s


def _would_migrate(request: MigrateRequest, s: Settings, code: bytes, kind: Kind, found: Found) -> t.Dict[str, t.Any]:
    """Check mode: every preflight check on both hosts, and what a real run would do; nothing is written anywhere."""
    found = kind.require(request.workload, found)
    facts = preflight(s, code, kind, found, str(uuid.uuid4()), request.criu_path, check_mode=True)
    image = "" if kind.image_to_send(found, facts["target"]) is None else ", sending its image first"
    what = kind.describe_found(found)
    return {"changed": True, "actions": ["would migrate %s to %s (%s mode%s)" % (what, s.target.label, s.mode, image)]}


def _follow(migration_id: str, s: Settings, code: bytes, dir_fd: int, directory: str, lock: DriverLock,
            deadline: float) -> t.Dict[str, t.Any]:
    """migration_id: wait for that migration's outcome (resolving it, should its driver have died) and report it, as
    the run that started it would have; never start another (a rolled-back one stays rolled back). Following changes
    nothing the migration would not have: the run that started it reported the change."""
    journal = source_journal(dir_fd, directory, s.name)
    if journal is None or journal.get("id") != migration_id:
        holds = "no journal" if journal is None else journal.get("id")
        raise CriuError("The journal of migration %s in %s is not that of migration id %s (it holds %s): there is nothing of it "
                        "to follow. Leave migration_id out to migrate." % (s.name, directory, migration_id, holds))
    return report(watch(journal, lock, deadline, s, code), False, read_progress(dir_fd, directory, s.name))


def _running(journal: Journal, changed: bool) -> t.Dict[str, t.Any]:
    """wait=false: the migration runs in its driver; where it stands now (criu_migration_info follows it)."""
    status = migration_status.describe(journal, read_progress(journal.dir_fd, journal.directory, journal.name), True)
    return {"changed": changed, "status": status, "msg": migration_status.summary(status)}
