# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a checkpoint directory: lock, verify, restore exactly the verified bytes, and prove the task lives.

The checkpoint is reached through a checked directory chain and held by fd from before verification
until criu has read it, so the bytes criu restores are the bytes that were verified; criu works and
logs in a private directory, and never writes into the checkpoint.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _container as container
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _reopen as reopen
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _podman as podman
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _checkpoint as checkpoint_
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import HEALTH_DELAY, CriuRuntime, Dir, Run


RECORD_MAC = "hmac"


def recorded_restore(checkpoint: store.Checkpoint, metadata: t.Mapping[str, t.Any],
                     key: t.Optional[bytes]) -> t.Optional[t.Dict[str, t.Any]]:
    """restored.json, when it records a restore of THIS checkpoint on this boot. With a key, only a record signed with
    it counts: it decides that there is nothing to restore, and anyone who can write the checkpoint's storage could
    otherwise name any live process there (pid, start time, boot id and checkpoint id are all public)."""
    try:
        raw = checkpoint.read(store.RESTORED)
    except CriuError:
        return None
    record = signed_record(raw, key)
    if (record is None or record.get("boot_id") != procfs.boot_id() or not isinstance(record.get("pid"), int)
            or record.get("checkpoint_id") != metadata["id"]):
        return None
    return record


def signed_record(raw: t.Optional[bytes], key: t.Optional[bytes]) -> t.Optional[t.Dict[str, t.Any]]:
    """A restore record (restored.json's bytes) that parses and, with a key, carries that key's signature."""
    try:
        record = json.loads(raw.decode("utf-8")) if raw else None
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    mac = record.pop(RECORD_MAC, None)
    if key is not None and not (isinstance(mac, str) and hmac.compare_digest(mac.encode("ascii", "replace"),
                                                                             integrity.sign(record, key).encode("ascii"))):
        return None
    return record


def live_restore(checkpoint: store.Checkpoint, metadata: t.Mapping[str, t.Any],
                 key: t.Optional[bytes]) -> t.Optional[t.Dict[str, t.Any]]:
    """restored.json, when it names a live process restored from THIS checkpoint on this boot (nothing left to do)."""
    record = recorded_restore(checkpoint, metadata, key)
    return record if record and procfs.is_alive(record["pid"], record.get("starttime")) else None


def refusal(src: str, problems: t.List[str]) -> CriuError:
    return CriuError("Refusing to restore %s: %s. Nothing was restored; re-create the checkpoint or transfer it again."
                     % (src, listed(problems)), path=src, problems=problems)


def load_verified(checkpoint: store.Checkpoint, key: t.Optional[bytes], params: t.Mapping[str, t.Any]) -> integrity.Verdict:
    """The verdict on a checkpoint that passed verification, or a refusal listing every problem. Even unverified, a
    configured key is always enforced and the metadata must parse."""
    verdict = integrity.verify(checkpoint, key, params["require_signature"], params["skip_signature_check"],
                               timeout=params["timeout"], hashed=params["verify"])
    problems = verdict.problems + ([] if checkpoint.images_fd >= 0 or params["verify"] else ["images/ is missing"])
    if verdict.metadata is None or problems:
        raise refusal(checkpoint.path, problems)
    if verdict.metadata["options"].get("lazy_pages"):
        raise refusal(checkpoint.path, ["it is a post-copy checkpoint whose memory is still in its frozen source; only the "
                                        "migration that made it (nucleus.criu.criu_migrate) can restore it"])
    return verdict


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` through a checked directory chain (a root-owned symlink such as /var/run is fine)."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd, _real = safepath.open_dir(directory, "Pidfile directory", store.CHAIN_REMEDY)
    try:
        store.write_file(dir_fd, name, b"%d\n" % pid, replace=True)
    finally:
        os.close(dir_fd)


STOP_WAIT = 1.0
CONTAINER_ONLY = ("container_name", "ignore_static_ip", "ignore_static_mac")


def confirm_alive(pid: int, log_path: str, src: str, stopped: bool = False) -> procfs.ProcStat:
    """A restore can report success for a task that dies at once (e.g. an edited core image). A tree restored to stay
    stopped is checked until it is (criu sends its SIGSTOP while the task is still traced, so it stops before running
    a single instruction of its own, but criu may return a moment earlier); a running one a moment after criu."""
    if not stopped:
        time.sleep(HEALTH_DELAY)
    deadline = time.monotonic() + STOP_WAIT
    st = procfs.read_stat(pid)
    while stopped and st is not None and not st.exited and st.state != "T" and time.monotonic() < deadline:
        time.sleep(0.005)
        st = procfs.read_stat(pid)
    if st is None or st.exited or (stopped and st.state != "T"):
        if st is not None:
            procfs.kill_tree(pid)
        waited = STOP_WAIT if stopped else HEALTH_DELAY
        raise CriuError(
            "criu restore reported success but the restored process %d %s within %.1fs. The images in %s were not changed. "
            "Causes seen: a corrupted image restored with verify=false, or a parent-death signal (e.g. unshare --kill-child) "
            "that fires when criu exits. See %s." % (pid, "did not stop" if st and not st.exited else "became a zombie" if st else "exited",
                                                     waited, src, log_path),
            path=src, log=log_path, pid=pid,
        )
    return st


@contextlib.contextmanager
def logs_kept_in(checkpoint: store.Checkpoint, work: Dir) -> t.Iterator[None]:
    """criu logs into its private work dir; afterwards (success or not) its log and statistics are copied into the
    checkpoint, replacing whatever is there without following it, and errors point at the copy."""
    try:
        yield
    except CriuError as exc:
        _copy_logs(checkpoint, work)
        kept = os.path.join(checkpoint.path, store.RESTORE_LOG)
        exc.msg = exc.msg.replace(work.file(store.RESTORE_LOG), kept)
        if exc.details.get("log") == work.file(store.RESTORE_LOG):
            exc.details["log"] = kept
        raise
    _copy_logs(checkpoint, work)


def _copy_logs(checkpoint: store.Checkpoint, work: Dir) -> None:
    for name in (store.RESTORE_LOG, store.RESTORE_STATS):
        store.copy_file(work.path, name, checkpoint.fd)


def restore_tree(runtime: CriuRuntime, checkpoint: store.Checkpoint, options: t.Mapping[str, t.Any], timeout: float,
                 leave_stopped: bool = False, lazy: bool = False, pidfile: t.Optional[str] = None,
                 work: t.Optional[Dir] = None) -> t.Tuple[int, Run]:
    """Restore the verified images held open in ``checkpoint`` with ``options`` (_options.for_restore), criu working in
    a private directory (``work``: one the caller made, e.g. shared with lazy-pages; see CriuRuntime.restore)."""
    if pidfile:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
    with contextlib.ExitStack() as stack:
        if work is None:
            work_path = stack.enter_context(store.private_dir("nucleus-criu-restore-"))
            work_fd = safepath.open_dir(work_path, "Private work directory", store.CHAIN_REMEDY)[0]
            stack.callback(os.close, work_fd)
            work = Dir(work_fd, work_path)
        with logs_kept_in(checkpoint, work):
            pid, run = runtime.restore(Dir(checkpoint.images_fd, os.path.join(checkpoint.path, store.IMAGES)), work,
                                       options, timeout, lazy=lazy, leave_stopped=leave_stopped, pidfile=pidfile)
        criu_stats = criustats.read(work.fd, store.RESTORE_STATS)
    return pid, Run(run.duration, os.path.join(checkpoint.path, store.RESTORE_LOG), criu_stats)


def restore_record(checkpoint_id: str, pid: int, restored_at: str, **identity: t.Any) -> t.Dict[str, t.Any]:
    """restored.json's record of the copy a restore of the checkpoint made on this boot of this host; ``identity``
    tells that copy apart from whatever reuses its pid later (a process's starttime, a container's id and name)."""
    return dict(identity, pid=pid, boot_id=procfs.boot_id(), host=socket.gethostname(), checkpoint_id=checkpoint_id,
                restored_at=restored_at)


def save_record(checkpoint_fd: int, record: t.Mapping[str, t.Any], key: t.Optional[bytes]) -> None:
    """restored.json, signed with ``key`` when there is one (see recorded_restore)."""
    signed = dict(record, **{RECORD_MAC: integrity.sign(record, key)}) if key is not None else record
    store.write_file(checkpoint_fd, store.RESTORED, json.dumps(signed, sort_keys=True).encode("utf-8"), replace=True)


@contextlib.contextmanager
def opened(src: str, timeout: float, lock: bool) -> t.Iterator[store.Checkpoint]:
    """The checkpoint at ``src``, its chain checked, held by fd, and (``lock``) locked before it is verified."""
    with contextlib.ExitStack() as stack:
        try:
            loc = stack.enter_context(store.location(src))
            if lock:
                stack.enter_context(store.Lock(loc, timeout))
            checkpoint = stack.enter_context(store.open_checkpoint(loc))
        except CriuError as exc:
            raise refusal(src, [exc.msg]) from exc
        yield checkpoint


def record_pid(params: t.Mapping[str, t.Any], src: str, pid: int) -> None:
    """The restored workload's pid into the caller's pidfile; the workload runs whatever happens here."""
    if not params["pidfile"]:
        return
    try:
        write_pidfile(params["pidfile"], pid)
    except (CriuError, OSError) as exc:
        raise CriuError("The workload was restored and runs as pid %d (recorded in %s/%s), but its pidfile %s could not be "
                        "written: %s Fix the pidfile's directory, then write the pid there yourself."
                        % (pid, src, store.RESTORED, params["pidfile"], getattr(exc, "msg", exc)),
                        path=params["pidfile"], pid=pid) from exc


def restore_container(checkpoint: store.Checkpoint, verdict: integrity.Verdict, params: t.Mapping[str, t.Any],
                      key: t.Optional[bytes], check_mode: bool) -> t.Dict[str, t.Any]:
    """A container's checkpoint: Podman imports and restores the verified export, under ``container_name``."""
    metadata = t.cast(t.Dict[str, t.Any], verdict.metadata)
    src, timeout = checkpoint.path, params["timeout"]
    shown = integrity.public(metadata)
    container.refuse_unsupported(params, "restore")
    engine = podman.Podman.load(timeout)
    previous = recorded_restore(checkpoint, metadata, key)
    running = previous and engine.inspect(str(previous.get("container_id")), timeout)
    live = previous if running and running["state"] == "running" else None  # the copy an earlier restore made, running
    if running and live and not params["force"]:
        return {"changed": False, "src": src, "pid": running["pid"], "container": running, "checkpoint": shown,
                "restored": previous, "actions": [], "diff": diff_.restore(src, live, diff_.restored(live))}
    options = container.restore_options(metadata, params)
    name = container.restore_name(metadata, params, options["tcp_established"])
    problems = host.restore_problems(metadata) + container.restore_problems(engine, metadata, name, timeout)
    if problems:
        raise CriuError("Cannot restore %s on this host: %s." % (src, listed(problems)), path=src, problems=problems)
    host.require_privileges()
    action = "restore %s (checkpoint of container %s) as container %s" % (src, metadata["container"]["name"], name)
    if check_mode:
        return {"changed": True, "src": src, "pid": None, "checkpoint": shown, "actions": ["would " + action],
                "diff": diff_.restore(src, live, diff_.new_restore(metadata["id"], name))}
    restored, podman_stats, seconds = container.restore_export(engine, checkpoint.images_fd, name, metadata["container"]["name"],
                                                               options, timeout)
    record = restore_record(metadata["id"], restored["pid"], procfs.utc_now(), container_id=restored["id"],
                            container_name=restored["name"])
    save_record(checkpoint.fd, record, key)
    record_pid(params, src, restored["pid"])
    return {
        "changed": True, "src": src, "pid": restored["pid"], "container": restored, "checkpoint": shown, "restored": record,
        "stats": dict(verdict.stats(), restore_seconds=round(seconds, 3), podman=podman_stats), "actions": [action],
        "diff": diff_.restore(src, live, diff_.restored(record)),
    }


def restore(params: t.Mapping[str, t.Any], check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_restore module's work: returns the module result."""
    checkpoint_.require_timeout(params["timeout"])
    key = integrity.load_key(params["hmac_key"], params["hmac_key_file"])
    src = os.path.normpath(params["src"])
    with opened(src, params["timeout"], lock=not check_mode) as checkpoint:
        verdict = load_verified(checkpoint, key, params)
        metadata = t.cast(t.Dict[str, t.Any], verdict.metadata)
        if "container" in metadata:
            return restore_container(checkpoint, verdict, params, key, check_mode)
        given = [name for name in CONTAINER_ONLY if params.get(name)]
        if given:
            raise CriuError("%s applies to a container's checkpoint only, and %s is the checkpoint of a %s. Leave it out."
                            % (", ".join(given), src, checkpoint_.subject(metadata)), path=src)
        shown = integrity.public(metadata)
        previous = live_restore(checkpoint, metadata, key)
        if previous and not params["force"]:
            return {"changed": False, "src": src, "pid": previous["pid"], "checkpoint": shown, "restored": previous, "actions": [],
                    "diff": diff_.restore(src, previous, diff_.restored(previous))}
        problems = host.restore_problems(metadata) + reopen.problems(checkpoint.images_fd)
        if problems:
            raise CriuError("Cannot restore %s on this host: %s." % (src, listed(problems)), path=src, problems=problems)
        options = criu_options.for_restore(metadata, params)
        host.require_privileges()
        runtime = CriuRuntime.load(params["criu_path"])
        action = "restore %s (checkpoint of pid %s)" % (src, metadata["process"].get("pid"))
        if check_mode:
            return {"changed": True, "src": src, "pid": None, "checkpoint": shown, "actions": ["would " + action],
                    "diff": diff_.restore(src, previous, diff_.new_restore(metadata["id"]))}
        pid, run = restore_tree(runtime, checkpoint, options, params["timeout"])
        restored_at = procfs.utc_now()
        record = restore_record(metadata["id"], pid, restored_at, starttime=confirm_alive(pid, run.log_path, src).starttime)
        save_record(checkpoint.fd, record, key)
    record_pid(params, src, pid)
    return {
        "changed": True, "src": src, "pid": pid, "checkpoint": shown, "restored": record,
        "stats": dict(verdict.stats(), restore_seconds=round(run.duration, 3), criu=run.criu_stats), "actions": [action],
        "diff": diff_.restore(src, previous, diff_.restored(record)),
    }
