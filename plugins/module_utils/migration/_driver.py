# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The detached driver of a migration: a lease keeper that outlives the controller, forks the worker, kills it when
the lease runs out before a decision, and resolves whatever it left undecided; and the module's wait for it."""

from __future__ import annotations

import os
import signal
import time

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import DriverLock, Journal
from ansible_collections.nucleus.criu.plugins.module_utils.migration._recovery import PRE_COMMIT, resolve
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings, as_recorded
from ansible_collections.nucleus.criu.plugins.module_utils.migration._worker import Worker


WATCH_POLL = 0.05


def _detach_stdio() -> None:
    """Nothing of the module's session (its stdout goes back to the controller) may be held by the driver."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _lease_ran_out(journal: Journal) -> bool:
    deadline = journal.get("lease_deadline")
    return bool(deadline) and journal.phase in PRE_COMMIT and time.monotonic() > deadline and journal.get("outcome") is None


def _keep_lease(worker: int, journal: Journal) -> None:
    """Wait for the worker; kill it if the lease runs out before the decision. The journal on disk tells, read again
    under the decision lock (a commit written meanwhile stands), and once more after the kill: what the worker wrote
    last is kept, never overwritten by an older copy. A worker that died by itself before a decision leaves its cause
    in the journal (it could not write one)."""
    while True:
        done, status = os.waitpid(worker, os.WNOHANG)
        if done:
            final = journal.reload()
            if final.get("outcome") is None and not final.get("error") and os.waitstatus_to_exitcode(status) != 0:
                final.record(final.phase, error=_worker_death(worker, status, final))
            return
        if _lease_ran_out(journal.reload()):
            with journal.exclusive(wait=False) as held:
                if held and _lease_ran_out(journal.reload()):
                    os.kill(worker, signal.SIGKILL)
                    os.waitpid(worker, 0)
                    final = journal.reload()
                    final.record(final.phase, error="the lease of %ss ran out before a decision" % final.get("lease_seconds"),
                                 lease_expired=True)
                    return
        time.sleep(WATCH_POLL)


def _worker_death(worker: int, status: int, journal: Journal) -> str:
    """What the lease keeper records for a worker that died without a word (it records its own failures)."""
    how = ("was killed by %s" % signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status)
           else "exited with status %d" % os.waitstatus_to_exitcode(status))
    when = "before a decision" if journal.get("decision") is None else "after the decision to %s" % journal.get("decision")
    return "the migration's worker (pid %d) %s in phase %s, %s" % (worker, how, journal.phase, when)


def _drive(journal: Journal, settings_: Settings, code: bytes) -> None:
    """The lease keeper: forks the worker, outlives it, and resolves whatever it left undecided."""
    worker = os.fork()
    if worker == 0:
        try:
            Worker(journal, settings_, code).run()
        finally:
            os._exit(0)  # pylint: disable=protected-access
    _keep_lease(worker, journal)
    current = Journal.load(journal.dir_fd, journal.directory, journal.name)
    if current is not None and current.get("outcome") is None:
        resolve(current, settings_, code)


def spawn(lock: DriverLock, journal: Journal, settings_: Settings, code: bytes) -> None:
    """Start the driver detached from this module (a new session, no inherited stdio): whatever happens to the
    controller, its connection or this module, the migration goes on to its decision. It inherits ``lock``."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                _detach_stdio()
                try:
                    _drive(journal, settings_, code)
                finally:
                    os._exit(0)  # pylint: disable=protected-access
        finally:
            os._exit(0)  # pylint: disable=protected-access
    os.waitpid(child, 0)
    lock.release()


def watch(journal: Journal, lock: DriverLock, deadline: float, settings_: Settings, code: bytes) -> Journal:
    """Wait until the driver has reached an outcome and exited (the lock is free again). A driver that died whole
    (keeper and worker) leaves the lock free and no outcome: nothing enforces the lease any more, so this run takes
    the lock and resolves the migration itself, as a rerun would, instead of waiting out ``deadline``."""
    while True:
        current = journal.reload()
        if not lock.held_elsewhere():
            if current.get("outcome") is None and lock.try_acquire():
                current = journal.reload()
                if current.get("outcome") is None:
                    resolve(current, as_recorded(settings_, current), code)
            if current.get("outcome") is not None:
                return current
        if time.monotonic() > deadline:
            raise CriuError("Migration of %s is still running in the background (phase %s) on this host. Rerun the same command "
                            "to wait for it again; nothing is lost meanwhile." % (journal.name, current.phase),
                            migration={"id": current.get("id"), "phase": current.phase, "journal": current.path})
        time.sleep(WATCH_POLL)
