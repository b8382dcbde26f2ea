# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checkpoint a process tree into a checkpoint directory, idempotently and atomically."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import time
import typing as t
import uuid

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _container as container
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _follow as follow
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _lifecycle as lifecycle
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _podman as podman
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Dir


def require_timeout(timeout: float) -> None:
    if timeout <= 0:
        raise CriuError("timeout must be a positive number of seconds, got %s." % timeout)


def same_process(metadata: t.Mapping[str, t.Any], pid: int) -> bool:
    """Is the checkpoint at DEST of this very process (pid reuse and reboots ruled out)?"""
    recorded = metadata["process"]
    if recorded.get("pid") != pid or metadata["source"].get("boot_id") != procfs.boot_id():
        return False
    st = procfs.read_stat(pid)
    # A dump without leave_running ends the process: its absence is what a finished checkpoint looks like.
    return st is None or st.exited or st.starttime == recorded.get("starttime")


def subject(metadata: t.Mapping[str, t.Any]) -> str:
    """What a checkpoint holds, as messages name it: "process (pid 42, python3)" or "container (web, 1f2e3d4c5b6a)"."""
    if isinstance(metadata.get("container"), dict):
        return "container (%s, %s)" % (metadata["container"].get("name"), str(metadata["container"].get("id"))[:12])
    return "process (pid %s, %s)" % (metadata["process"].get("pid"), metadata["process"].get("comm"))


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


def dump_options(params: t.Mapping[str, t.Any], pid: int, st: procfs.ProcStat, tree: t.Sequence[int]) -> t.Dict[str, t.Any]:
    """The criu options recorded in metadata.json (a restore replays those criu needs again)."""
    options = criu_options.normalise(params, "dump")
    if options["shell_job"] is None:
        options["shell_job"] = procfs.needs_shell_job(pid, st, tree)
    options.update(leave_running=params["leave_running"], leave_stopped=params["leave_stopped"])
    return options


def resume_if_we_stopped(pid: int, st: procfs.ProcStat) -> str:
    """After a failed dump, make sure the workload runs as it did before; say what happened to it."""
    now = procfs.read_stat(pid)
    if now is None or now.starttime != st.starttime or now.exited:
        return "The process %d is gone: CRIU killed it before failing; restart it from its own supervisor." % pid
    if now.state == "T" and st.state != "T":
        procfs.kill_tree(pid, signal.SIGCONT)
        return "The process %d was left stopped by the failed dump and has been resumed (SIGCONT)." % pid
    return "The process %d is still running, untouched." % pid


def _keep_failed_log(staging: store.Staging) -> t.Optional[str]:
    """Move a failed dump's log beside DEST as .NAME.dump-failed.log (the staging directory goes away). Once
    published, the log is DEST's own."""
    if staging.fd < 0:
        return os.path.join(staging.loc.path, store.DUMP_LOG)
    name = ".%s.dump-failed.log" % staging.loc.name
    try:
        os.rename(store.DUMP_LOG, name, src_dir_fd=staging.fd, dst_dir_fd=staging.loc.parent_fd)
    except FileNotFoundError:
        return None
    return os.path.join(staging.loc.parent, name)


@contextlib.contextmanager
def staged(loc: store.Location) -> t.Iterator[store.Staging]:
    """A staging directory for one dump. Whatever fails inside, the staging directory goes away, the dump's log is
    kept beside DEST (.NAME.dump-failed.log) and the error names it; after a success, an old failed log goes."""
    staging = store.Staging(loc)
    try:
        yield staging
    except BaseException as exc:
        failed_log = _keep_failed_log(staging)
        if isinstance(exc, CriuError):
            exc.msg = exc.msg.replace(os.path.join(staging.path, store.DUMP_LOG), failed_log or "(none kept)")
            exc.details.update(path=loc.path, log=failed_log)
        raise
    finally:
        staging.remove()
    _forget_failed_log(loc)


def _forget_failed_log(loc: store.Location) -> None:
    """An earlier failure's log goes; anything else under that name (a directory, say) is not ours and stays."""
    try:
        os.unlink(".%s.dump-failed.log" % loc.name, dir_fd=loc.parent_fd)
    except OSError:
        pass


def failed_dump_fate(exc: BaseException, staging: t.Optional[store.Staging], loc: store.Location,
                     bring_back: t.Callable[[], str]) -> None:
    """What a failed dump does with its workload, said in ``exc``: before the checkpoint is published the workload runs
    again (``bring_back``); once it is published it never does, whatever fails after, or two copies could run."""
    if staging is not None and staging.published:
        fate = ("The checkpoint was published at %s before this failure, so the workload was not resumed beside it (it "
                "could then run twice): it is left as the dump left it. Restore it from %s, or remove %s and resume it."
                % (loc.path, loc.path, loc.path))
    else:
        fate = "%s No checkpoint was written to %s." % (bring_back(), loc.path)
    if isinstance(exc, CriuError):
        exc.msg = "%s %s" % (exc.msg, fate)


def describe(criu: t.Mapping[str, str], name: str, facts: t.Mapping[str, t.Any], options: t.Mapping[str, t.Any],
             algorithm: str, manifest: t.List[t.Dict[str, t.Any]],
             container_: t.Optional[t.Mapping[str, t.Any]] = None) -> t.Dict[str, t.Any]:
    """metadata.json of a fresh dump (``criu``: the path and version that dumped), with what its images need at restore
    beyond the dump's options; a container's checkpoint also records the container."""
    metadata = {
        "restore_needs": criu_options.images_need([entry["path"] for entry in manifest], options),
        "schema_version": integrity.SCHEMA_VERSION,
        "id": str(uuid.uuid4()),
        "name": name,
        "created_at": procfs.utc_now(),
        "source": procfs.host_facts(),
        "criu": dict(criu),
        "process": dict(facts),
        "options": dict(options),
        "manifest_algorithm": algorithm,
        "manifest_chunk_bytes": integrity.CHUNK_BYTES,
        "manifest": manifest,
    }
    if container_ is not None:
        metadata["container"] = dict(container_)
    return metadata


def seal(staging: store.Staging, metadata: t.Mapping[str, t.Any], key: t.Optional[bytes], durable: bool = True) -> None:
    """Write metadata.json and the signature into the staging directory, then (``durable``) flush it whole. A
    migration's checkpoints are not flushed: they serve that migration, whose journal is what survives a crash."""
    store.write_file(staging.fd, store.METADATA, integrity.canonical(metadata), durable=durable)
    if key is not None:
        store.write_file(staging.fd, store.SIGNATURE, (integrity.sign(metadata, key) + "\n").encode("ascii"), durable=durable)
    if durable:
        store.fsync_dir_entries(staging.fd)


def flushed_manifest(images_fd: int, algorithm: str,
                     hashed: t.Optional[t.Mapping[str, integrity.FileDigest]] = None) -> t.List[t.Dict[str, t.Any]]:
    """The manifest of freshly written images, once they are on disk: flushing them (I/O) overlaps hashing what is
    not hashed yet (CPU) instead of following it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as flusher:
        flushed = flusher.submit(store.fsync_dir_entries, images_fd)
        manifest = integrity.build_manifest(images_fd, algorithm, hashed)
        flushed.result()
    return manifest


def dump_result(metadata: t.Mapping[str, t.Any], frozen_at: str, dump_seconds: float, fsync_seconds: float,
                **engine_stats: t.Any) -> t.Dict[str, t.Any]:
    """The checkpoint as the task shows it, and where the time went (``engine_stats``: criu's or Podman's own)."""
    manifest = metadata["manifest"]
    return {
        "checkpoint": integrity.public(metadata),
        "stats": dict({
            "frozen_at": frozen_at,
            "dump_seconds": round(dump_seconds, 3),
            "fsync_seconds": round(fsync_seconds, 3),
            "image_bytes": sum(entry["size"] for entry in manifest),
            "image_files": len(manifest),
        }, **engine_stats),
    }


def _dump(runtime: CriuRuntime, pid: int, st: procfs.ProcStat, loc: store.Location, params: t.Mapping[str, t.Any],
          key: t.Optional[bytes], algorithm: str) -> t.Dict[str, t.Any]:
    """Dump into a staging dir, describe and sign it, then publish it as DEST in one rename.

    A dump that is to end the process leaves it stopped instead, and ends it only once the checkpoint is published:
    whatever fails before (a full disk writing the metadata, a signature, a rename), the workload runs on."""
    facts = procfs.process_facts(pid, st)
    options = dump_options(params, pid, st, facts["tree"])
    ending = not (options["leave_running"] or options["leave_stopped"])
    identity: t.List[t.List[int]] = []
    staging: t.Optional[store.Staging] = None
    try:
        with staged(loc) as staging:
            images = Dir(staging.images_fd, os.path.join(staging.path, store.IMAGES))
            with follow.ImageFollower(images.fd, images.path, algorithm) as follower:
                frozen_at = procfs.utc_now()
                dump_seconds = runtime.dump(pid, images, Dir(staging.fd, staging.path), dict(options, leave_stopped=True) if ending
                                            else options, params["timeout"]).duration
                hashed = follower.digests()
            criu_stats = criustats.read(staging.fd, store.DUMP_STATS)
            identity = procfs.tree_identity(pid)  # every process dumped, stopped now: no new child can appear
            flush_started = time.monotonic()
            manifest = flushed_manifest(images.fd, algorithm, hashed)
            metadata = describe(runtime.identity(), params["name"] or loc.name, facts, options, algorithm, manifest)
            seal(staging, metadata, key)
            staging.publish()
            fsync_seconds = time.monotonic() - flush_started
    except BaseException as exc:
        failed_dump_fate(exc, staging, loc, lambda: resume_if_we_stopped(pid, st))
        raise
    if ending:
        procfs.wait_gone(procfs.signal_identified(identity, signal.SIGKILL), timeout=10)
    return dump_result(metadata, frozen_at, dump_seconds, fsync_seconds, criu=criu_stats)


def _dump_container(engine: podman.Podman, found: t.Mapping[str, t.Any], loc: store.Location, params: t.Mapping[str, t.Any],
                    key: t.Optional[bytes], algorithm: str) -> t.Dict[str, t.Any]:
    """Podman's export into a staging dir, hashed, described, signed and published as DEST in one rename. Whatever
    fails once the checkpoint stopped the container, Podman's own copy of the checkpoint brings it back."""
    options = container.dump_options(params)
    recorded, facts = container.describe(engine, found, params["timeout"])
    staging: t.Optional[store.Staging] = None
    try:
        with staged(loc) as staging:
            frozen_at = procfs.utc_now()
            podman_stats, dump_seconds = container.export(engine, found, staging.images_fd, options, params["timeout"])
            flush_started = time.monotonic()
            manifest = flushed_manifest(staging.images_fd, algorithm)
            metadata = describe(recorded.pop("criu"), params["name"] or loc.name, facts, options, algorithm, manifest, recorded)
            seal(staging, metadata, key)
            staging.publish()
            fsync_seconds = time.monotonic() - flush_started
    except BaseException as exc:
        failed_dump_fate(exc, staging, loc, lambda: container.bring_back(engine, found, facts["starttime"], params["timeout"]))
        raise
    return dump_result(metadata, frozen_at, dump_seconds, fsync_seconds, podman=podman_stats)


def _checkpointable(params: t.Mapping[str, t.Any], found: t.Optional[t.Dict[str, t.Any]],
                    pid: t.Optional[int]) -> t.Tuple[str, t.Optional[procfs.ProcStat], t.Optional[CriuRuntime]]:
    """What would be dumped (in words), once everything a dump needs is known to be there; raises naming what is not.
    For a process also its stat and the criu that would dump it."""
    st = runtime = None
    if params["container"]:
        container.require_running(found, params["container"])
        what = "container %s" % params["container"]
    else:
        st = procfs.require_checkpointable(t.cast(int, pid))
        runtime = CriuRuntime.load(params["criu_path"])
        what = "pid %d (%s)" % (t.cast(int, pid), st.comm)
    host.require_privileges()
    return what, st, runtime


def _to_come(name: str, found: t.Optional[t.Mapping[str, t.Any]], pid: t.Optional[int],
             st: t.Optional[procfs.ProcStat]) -> t.Dict[str, t.Any]:
    """The checkpoint a dump would make, as check mode's diff shows it: of the container ``found``, else of the process
    ``pid`` (``st``), as _checkpointable saw them."""
    if found is not None:
        return diff_.new_checkpoint(name, found.get("pid"), container=found.get("name"))
    return diff_.new_checkpoint(name, pid, st.comm if st is not None else None)


def _unchanged(result: t.Dict[str, t.Any], path: str, existing: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The result when DEST already holds a checkpoint of this process: nothing to do, and a diff without a change."""
    shown = diff_.checkpoints({path: existing})
    return dict(result, changed=False, checkpoint=integrity.public(existing), actions=[], diff=diff_.diff(shown, shown))


def _pruning(paths: t.Iterable[str], keep: int, name: str, verb: str) -> t.List[str]:
    """The actions of ``keep``: one line per older checkpoint deleted (or, in check mode, to be deleted)."""
    return ["%s the older checkpoint %s (keep %d of %s)" % (verb, path, keep, name) for path in paths]


def checkpoint(params: t.Mapping[str, t.Any], check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_checkpoint module's work: returns the module result."""
    require_timeout(params["timeout"])
    if params["keep"] is not None and params["keep"] < 1:
        raise CriuError("keep must be 1 or more (the checkpoint just made is always kept), got %d." % params["keep"])
    if params["state"] == "absent":
        return lifecycle.delete(os.path.normpath(params["dest"]), params["timeout"], check_mode)
    if params["leave_running"] and params["leave_stopped"]:
        raise CriuError("leave_running and leave_stopped are mutually exclusive: after the dump the process either runs or stays stopped.")
    criu_options.normalise(params, "dump")  # refuses bad values and contradictions before anything is touched
    key = integrity.load_key(params["hmac_key"], params["hmac_key_file"])
    algorithm = integrity.choose_algorithm(params["hash_algorithm"])
    engine: t.Optional[podman.Podman] = None
    found: t.Optional[t.Dict[str, t.Any]] = None
    pid: t.Optional[int] = None
    if params["container"]:
        container.refuse_unsupported(params, "dump")
        engine = podman.Podman.load(params["timeout"])
        found = engine.inspect(params["container"], params["timeout"])

        def same(metadata: t.Mapping[str, t.Any]) -> bool:
            return container.same_container(metadata, found, params["container"])
        result: t.Dict[str, t.Any] = {"container": params["container"]}
    else:
        pid = procfs.resolve_pid(params["pid"], params["pidfile"])

        def same(metadata: t.Mapping[str, t.Any]) -> bool:
            return same_process(metadata, pid)
        result = {"pid": pid}
    dest = os.path.normpath(params["dest"])
    enclosing = store.enclosing_checkpoint(dest)
    if enclosing:
        raise CriuError("dest %s lies inside the checkpoint %s; writing there would corrupt it. Choose a path outside it." % (dest, enclosing), path=dest)
    name = params["name"] or os.path.basename(dest)
    with contextlib.ExitStack() as stack:
        try:
            loc = stack.enter_context(store.location(dest, make_parents=not check_mode))
        except safepath.MissingDirectory as missing:  # check mode only: a real run makes it
            what, st, _runtime = _checkpointable(params, found, pid)
            return dict(result, dest=dest, changed=True, actions=["would make %s and dump %s to %s" % (missing.path, what, dest)],
                        diff=diff_.diff({}, {dest: _to_come(name, found, pid, st)}))
        result["dest"] = loc.path
        if not params["force"]:
            existing = existing_checkpoint(loc, same, key, params["timeout"])
            if existing is not None:
                return _unchanged(result, loc.path, existing)
        else:
            problem = store.replace_problem(loc)
            if problem:
                raise CriuError("Refusing force=true on %s: %s" % (loc.path, problem), path=loc.path)
        exists = os.path.lexists(loc.path)
        what, st, runtime = _checkpointable(params, found, pid)
        action = "%s %s to %s" % ("replace the checkpoint with a dump of" if exists else "dump", what, loc.path)
        if check_mode:
            gone = lifecycle.surplus(loc, name, params["keep"], params["timeout"], key, procfs.utc_now()) if params["keep"] else {}
            before = dict(gone, **{loc.path: lifecycle.metadata_at(loc)})
            return dict(result, changed=True, actions=["would " + action] + _pruning(gone, params["keep"], name, "would delete"),
                        diff=diff_.diff(diff_.checkpoints(before), {loc.path: _to_come(name, found, pid, st)}))
        with store.Lock(loc, params["timeout"]):
            store.remove_litter(loc)
            if not params["force"]:
                existing = existing_checkpoint(loc, same, key, params["timeout"])
                if existing is not None:
                    return _unchanged(result, loc.path, existing)
            before = {loc.path: lifecycle.metadata_at(loc)}
            if params["container"]:
                result.update(_dump_container(t.cast(podman.Podman, engine), t.cast(t.Dict[str, t.Any], found), loc, params, key, algorithm))
            else:
                result.update(_dump(t.cast(CriuRuntime, runtime), t.cast(int, pid), t.cast(procfs.ProcStat, st), loc, params, key, algorithm))
        actions = [action[0].upper() + action[1:]]
        if params["keep"]:
            removed = lifecycle.prune(loc, name, params["keep"], params["timeout"], key)
            result["removed"] = list(removed)
            before.update(removed)
            actions += _pruning(removed, params["keep"], name, "Delete")
    return dict(result, changed=True, actions=actions,
                diff=diff_.diff(diff_.checkpoints(before), diff_.checkpoints({loc.path: result["checkpoint"]})))
