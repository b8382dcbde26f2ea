# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One way to finish or undo a migration from its journal: the source's own copy of the workload (resumed or ended),
the target told the decision, and a decision that is never made twice. Any process may run it: the worker after a
failure, its lease keeper, a rerun of the module."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _target as target_
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal, workload_claim
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings


# Source phases before the decision; "committed" is the decision itself.
PRE_COMMIT = ("prepared", "freezing", "frozen", "target_restored", "pages_complete", "aborting")
# Undecided phases in which the source's copy was frozen.
FROZEN = ("freezing", "frozen", "target_restored", "pages_complete")


def _timeout(journal: Journal) -> float:
    return float((journal.get("settings") or {}).get("timeout") or 60.0)


def resume_source(journal: Journal) -> None:
    """Let the frozen source run on, with its memory intact, as its kind does it. Raises when that cannot be done.
    How it runs otherwise than before (a container under a new address) goes into the journal with its next record."""
    changed = kinds.of(journal.data).resume_source(journal.data, _timeout(journal))
    if changed:
        journal.data["source_resumed_as"] = changed


def end_source(journal: Journal) -> None:
    """The target runs the workload: the frozen source must never run again; what its kind could not clean up is
    kept in the journal."""
    problem = kinds.of(journal.data).end_source(journal.data, _timeout(journal))
    if problem:
        journal.data["source_cleanup_error"] = problem


def stop_criu(journal: Journal) -> None:
    """Stop a criu dump this migration started that still runs (mid-dump, or serving post-copy pages). Its tree is
    stopped first: a criu that dies releases the tree it holds, which would otherwise run again by itself. A
    container's checkpoint (Podman) is waited for instead: Podman holds the container until it is done, and a
    container stopped halfway could not be restored."""
    procfs.wait_identified_gone(journal.get("engine_process"), timeout=_timeout(journal))
    criu = journal.get("criu")
    if not criu or not procfs.is_alive(criu[0], criu[1]):
        return
    procfs.signal_identified(journal.get("process", {}).get("tree") or [], signal.SIGSTOP)
    procfs.wait_gone(procfs.kill_tree(criu[0]), timeout=10)


def _ask_target(settings_: Settings, code: bytes, journal: Journal, decision: str) -> t.Optional[t.Dict[str, t.Any]]:
    """The target's answer to a decision (commit, abort or query), None when it cannot be reached. A commit carries
    what the worker's decision does: the target's pidfile and whether it removes its checkpoint."""
    try:
        return remote.ask(settings_.target, code, settings_.link_timeout, cmd="resolve", decision=decision, id=journal.get("id"),
                          name=settings_.name, migrate_dir=settings_.directory, timeout=settings_.timeout,
                          key=settings_.key.hex() if settings_.key else None, pidfile=settings_.target_pidfile,
                          cleanup=settings_.cleanup in ("all", "target"))
    except CriuError as exc:
        journal.data["last_contact_error"] = exc.msg
        return None


def resolve(journal: Journal, settings_: Settings, code: bytes) -> None:
    """Finish or undo the migration in ``journal`` from the phase it reached; idempotent, any process may run it."""
    if journal.get("outcome") in ("completed", "rolled_back"):
        return
    if _runs_on_the_target(journal):
        # An abort would throw away the work its copy has done since: a recovery decides commit, as the worker would
        # have (under the decision lock: a lease keeper deciding at this moment decides abort, and first).
        with journal.exclusive():
            current = journal.reload()
            if _runs_on_the_target(current):
                current.record("committed", decision="commit")
        journal.data = journal.reload().data
        if journal.get("outcome") in ("completed", "rolled_back"):
            return
    if journal.get("decision") is None and journal.phase in FROZEN and kinds.of(journal.data).source_lost(journal.data):
        _commit_if_the_copy_is_whole(journal, settings_, code)
    if journal.phase in ("committed", "completed") or journal.get("decision") == "commit":
        answer = _ask_target(settings_, code, journal, "commit")
        if answer is not None and answer.get("state") == target_.NEVER_RAN:
            never_ran(journal)
        elif answer is not None and answer.get("state") == "completed":
            end_source(journal)
            journal.record("completed", outcome="completed", target_pid=answer.get("pid", journal.get("target_pid")),
                           **_recovered_timing(journal, answer.get("running_at")))
            cleanup_source(journal, settings_)
        else:
            journal.record("committed", outcome="in_doubt", error=_doubt(journal, answer, committed=True))
        return
    if journal.phase == "prepared":
        # Nothing was frozen; the target, which had not voted, has undone its part or will when asked.
        _ask_target(settings_, code, journal, "abort")
        try:
            kinds.of(journal.data).release(journal.data, _timeout(journal))
        except CriuError as exc:
            journal.record("prepared", outcome="in_doubt", decision="abort",
                           error="the migration was undone, but the source's workload could not be released: %s" % exc.msg)
            return
        journal.record("rolled_back", outcome="rolled_back", decision="abort")
        return
    journal.record("aborting", decision="abort")
    if kinds.of(journal.data).copy_waits_for_commit(journal.data):
        # The target's copy is stopped and only a commit resumes it (or is not restored yet): resuming the source
        # first is safe.
        stop_criu(journal)
        unresumed = _resume_problem(journal)
        answer = _ask_target(settings_, code, journal, "abort")
        cleanup = "done" if answer is not None and answer.get("state") in ("aborted", "absent") else "pending"
    else:
        # Post-copy, or a container (Podman cannot restore one stopped): the target's copy may be running. It is
        # killed first, while its pages still flow (a copy cut off from its page server would run on with zero-filled
        # memory); the source resumes only once that is confirmed.
        answer = _ask_target(settings_, code, journal, "abort")
        stop_criu(journal)
        if answer is None or answer.get("state") not in ("aborted", "absent"):
            journal.record("aborting", outcome="in_doubt", error=_doubt(journal, answer, committed=False))
            return
        unresumed, cleanup = _resume_problem(journal), "done"
    if unresumed:
        journal.record("aborting", outcome="in_doubt", target_cleanup=cleanup,
                       error="the migration was undone, but the source could not run again: %s" % unresumed)
        return
    journal.record("rolled_back", outcome="rolled_back", target_cleanup=cleanup)


def _commit_if_the_copy_is_whole(journal: Journal, settings_: Settings, code: bytes) -> None:
    """The source's frozen copy is lost (its host crashed, or it was killed): the target's copy, when whole and voted
    for, is all that is left of the workload's memory, and a recovery commits it rather than undo the migration for
    a source that can never run again."""
    answer = _ask_target(settings_, code, journal, "query")
    state = (answer or {}).get("state")
    if state == "pages_complete" or (state == "restored" and journal.get("mode") == "copy"):
        with journal.exclusive():
            current = journal.reload()
            if current.get("decision") is None:
                current.record("committed", decision="commit", source_lost=True)
        journal.data = journal.reload().data


def _runs_on_the_target(journal: Journal) -> bool:
    """The target's copy runs there already, voted for, undecided (a container: Podman cannot restore one stopped):
    unless its lease ran out, a recovery commits it."""
    return kinds.of(journal.data).runs_on_target_undecided(journal.data)


def never_ran(journal: Journal) -> None:
    """The commit found the target's stopped copy dead before it resumed it: the workload never ran there, so the
    source, frozen with its memory intact, runs again (exactly once still), rather than staying frozen for nothing."""
    problem = _resume_problem(journal)
    error = "the target's restored copy died while stopped, before the commit resumed it: it never ran there"
    if problem:
        journal.record("committed", outcome="in_doubt", error="%s, and the source could not run again: %s" % (error, problem))
        return
    journal.record("rolled_back", outcome="rolled_back", error=error, target_cleanup="done")


def _recovered_timing(journal: Journal, running_at: t.Optional[str]) -> t.Dict[str, t.Any]:
    """When the copy ran and the downtime, for a commit finished by a recovery: from the frozen_at and running_at
    wall-clock stamps of the two hosts (the worker measures it on one clock; a recovery has only these)."""
    frozen_at = journal.get("frozen_at")
    if journal.get("downtime_seconds") is not None or not (frozen_at and running_at):
        return {}
    started, resumed = (datetime.datetime.strptime(stamp, procfs.TIME_FORMAT) for stamp in (frozen_at, running_at))
    return {"running_at": running_at, "downtime_seconds": round((resumed - started).total_seconds(), 3)}


def finish_target_cleanup(journal: Journal, settings_: Settings, code: bytes) -> None:
    """A rolled-back migration whose target could not be told (its link was lost after the target voted) left a
    stopped copy there, in doubt on the target's side: the source's journal decided abort, so the target undoes it now.
    Unreachable still, the next preflight says so; the source runs meanwhile."""
    answer = _ask_target(settings_, code, journal, "abort")
    if answer is not None and answer.get("state") in ("aborted", "absent"):
        journal.record("rolled_back", target_cleanup="done")


def _resume_problem(journal: Journal) -> t.Optional[str]:
    """Resume the source; why it could not be, None when it runs again."""
    try:
        resume_source(journal)
    except CriuError as exc:
        return exc.msg
    return None


def _doubt(journal: Journal, answer: t.Optional[t.Dict[str, t.Any]], committed: bool) -> str:
    where = ("the target could not be reached (%s)" % journal.get("last_contact_error")) if answer is None else \
        "the target says %s" % (answer.get("error") or answer.get("state"))
    if committed:
        return ("the migration was committed but %s: the source stays frozen and is never resumed; the target's copy runs "
                "once the target is told" % where)
    return ("%s, so its copy may be running there: the source stays frozen until the target confirms its copy is gone"
            % where)


def cleanup_source(journal: Journal, settings_: Settings) -> None:
    """What the completed migration leaves on the source: its checkpoint (by ``cleanup``) and the claim on the
    workload, which is gone from here."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(workload_claim(kinds.of(journal.data).claim_key(journal.get("process") or {}, journal.data)),
                  dir_fd=journal.dir_fd)
    if settings_.cleanup in ("all", "source"):
        with store.location(os.path.join(settings_.directory, settings_.name)) as loc:
            if store.replace_problem(loc) is None:
                store.remove_tree(loc.path)
