# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checkpoint a process tree into a checkpoint directory, idempotently and atomically."""

from __future__ import annotations

import contextlib
import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Workload
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _lifecycle as lifecycle
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._requests import CheckpointRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed


def require_timeout(timeout: float) -> None:
    if timeout <= 0:
        raise CriuError("timeout must be a positive number of seconds, got %s." % timeout)


def subject(metadata: t.Mapping[str, t.Any]) -> str:
    """What a checkpoint holds, as messages name it: "process (pid 42, python3)" or "container (web, 1f2e3d4c5b6a)"."""
    return kinds.of(metadata).subject(metadata)


def existing_checkpoint(loc: store.Location, same: t.Callable[[t.Mapping[str, t.Any]], bool], key: t.Optional[bytes],
                        timeout: float) -> t.Optional[t.Dict[str, t.Any]]:
    """The valid checkpoint already at DEST of what ``same`` recognises, None when DEST is absent or empty; else a
    clear refusal."""
    opened = store.Checkpoint.open(loc)
    if opened is None:
        return None
    with opened:
        if not opened.entries():
            return None
        verdict = integrity.verify(opened, key, timeout=timeout)
    if verdict.metadata is None or verdict.problems:
        raise CriuError(
            "%s already exists but does not hold a valid checkpoint (%s). Set force=true to replace it, or choose another dest."
            % (loc.path, listed(verdict.problems)),
            path=loc.path, problems=verdict.problems,
        )
    metadata = verdict.metadata
    if not same(metadata):
        raise CriuError("%s already holds a checkpoint of another %s. Set force=true to replace it, or choose another dest."
                        % (loc.path, subject(metadata)), path=loc.path)
    return metadata


def _unchanged(result: t.Dict[str, t.Any], path: str, existing: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The result when DEST already holds a checkpoint of this process: nothing to do, and a diff without a change."""
    shown = diff_.checkpoints({path: existing})
    return dict(result, changed=False, checkpoint=integrity.public(existing), actions=[], diff=diff_.diff(shown, shown))


def _finished(workload: Workload, result: t.Dict[str, t.Any], path: str, existing: t.Mapping[str, t.Any],
              timeout: float, check_mode: bool) -> t.Dict[str, t.Any]:
    """DEST holds a checkpoint of this workload: nothing to do, unless the run that published it died before it ended
    the workload (left stopped), which is then ended, as the checkpoint says it is."""
    unchanged = _unchanged(result, path, existing)
    action = workload.left_stopped(existing)
    if action is None:
        return unchanged
    if not check_mode:
        workload.end_left_stopped(timeout)
    return dict(unchanged, changed=True, actions=["would " + action if check_mode else action[0].upper() + action[1:]])


def _bring_back_stopped(loc: store.Location, timeout: float) -> t.List[str]:
    """A run into DEST that died between stopping its workload and publishing left it stopped (its record beside
    DEST): it runs again before anything looks at it, as after a failed dump. What was done, in words."""
    if seal_.read_stopped(loc) is None:
        return []
    with store.Lock(loc, timeout):
        stopped = seal_.read_stopped(loc)  # again, under the lock: a run that held it may have finished meanwhile
        resumed = kinds.of(stopped).resume_stopped(stopped, loc, timeout) if stopped else []
        seal_.forget_stopping(loc)
    return resumed


def _pruning(paths: t.Iterable[str], keep: t.Optional[int], name: str, verb: str) -> t.List[str]:
    """The actions of ``keep``: one line per older checkpoint deleted (or, in check mode, to be deleted)."""
    return ["%s the older checkpoint %s (keep %s of %s)" % (verb, path, keep, name) for path in paths]


def _checkpointable(workload: Workload, criu_path: t.Optional[str]) -> str:
    """What would be dumped (in words), once everything a dump needs is known to be there; raises naming what is not."""
    workload.require_checkpointable(criu_path)
    host.require_privileges()
    return workload.what


def checkpoint(request: CheckpointRequest, check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_checkpoint module's work: returns the module result."""
    require_timeout(request.timeout)
    if request.keep is not None and request.keep < 1:
        raise CriuError("keep must be 1 or more (the checkpoint just made is always kept), got %d." % request.keep)
    if request.state == "absent":
        return lifecycle.delete(os.path.normpath(request.dest), request.timeout, check_mode)
    if request.leave_running and request.leave_stopped:
        raise CriuError("leave_running and leave_stopped are mutually exclusive: after the dump the process either runs or stays stopped.")
    criu_options.normalise(request.criu, "dump")  # refuses bad values and contradictions before anything is touched
    key = integrity.load_key(request.hmac_key, request.hmac_key_file)
    algorithm = integrity.choose_algorithm(request.hash_algorithm)
    kind = kinds.asked(request.workload)
    kind.refuse_unsupported(request.criu, "dump", request.leave_stopped)
    workload = kind.find(request.workload, request.timeout)
    result = workload.result()
    dest = os.path.normpath(request.dest)
    enclosing = store.enclosing_checkpoint(dest)
    if enclosing:
        raise CriuError("dest %s lies inside the checkpoint %s; writing there would corrupt it. Choose a path outside it." % (dest, enclosing), path=dest)
    name = request.name or os.path.basename(dest)
    with contextlib.ExitStack() as stack:
        try:
            loc = stack.enter_context(store.location(dest, make_parents=not check_mode))
        except safepath.MissingDirectory as missing:  # check mode only: a real run makes it
            what = _checkpointable(workload, request.criu_path)
            return dict(result, dest=dest, changed=True, actions=["would make %s and dump %s to %s" % (missing.path, what, dest)],
                        diff=diff_.diff({}, {dest: workload.to_come(name)}))
        result["dest"] = loc.path
        existing = None
        if not request.force:
            existing = existing_checkpoint(loc, workload.is_in, key, request.timeout)
            if existing is not None and (check_mode or workload.left_stopped(existing) is None):
                return _finished(workload, result, loc.path, existing, request.timeout, check_mode)
        else:
            problem = store.replace_problem(loc)
            if problem:
                raise CriuError("Refusing force=true on %s: %s" % (loc.path, problem), path=loc.path)
        # With a published checkpoint of it at DEST, what is left is to end it (_finished, below), never to resume it.
        resumed = [] if check_mode or existing is not None else _bring_back_stopped(loc, request.timeout)
        if resumed:
            workload = kind.find(request.workload, request.timeout)  # as it runs again
        exists = os.path.lexists(loc.path)
        what = _checkpointable(workload, request.criu_path)
        action = "%s %s to %s" % ("replace the checkpoint with a dump of" if exists else "dump", what, loc.path)
        if check_mode:
            gone = lifecycle.surplus(loc, name, request.keep, request.timeout, key, procfs.utc_now()) if request.keep else {}
            before = dict(gone, **{loc.path: lifecycle.metadata_at(loc)})
            return dict(result, changed=True, actions=["would " + action] + _pruning(gone, request.keep, name, "would delete"),
                        diff=diff_.diff(diff_.checkpoints(before), {loc.path: workload.to_come(name)}))
        with store.Lock(loc, request.timeout):
            if not request.force:
                existing = existing_checkpoint(loc, workload.is_in, key, request.timeout)
                if existing is not None:
                    finished = _finished(workload, result, loc.path, existing, request.timeout, check_mode)
                    seal_.forget_stopping(loc)
                    return finished
            store.remove_litter(loc)
            before = {loc.path: lifecycle.metadata_at(loc)}
            result.update(workload.dump(loc, request, key, algorithm))
        actions = resumed + [action[0].upper() + action[1:]]
        if request.keep:
            removed = lifecycle.prune(loc, name, request.keep, request.timeout, key)
            result["removed"] = list(removed)
            before.update(removed)
            actions += _pruning(removed, request.keep, name, "Delete")
    return dict(result, changed=True, actions=actions,
                diff=diff_.diff(diff_.checkpoints(before), diff_.checkpoints({loc.path: result["checkpoint"]})))
