# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checkpoint a process tree into a checkpoint directory, idempotently and atomically."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import typing as t
import uuid

from ansible_collections.nucleus.criu.plugins.module_utils import _follow as follow
from ansible_collections.nucleus.criu.plugins.module_utils import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils._runtime import LOOPBACK, CriuRuntime


def free_port() -> int:
    """A TCP port free on the loopback right now, for the page server (criu itself refuses port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def require_port(name: str, port: t.Optional[int]) -> None:
    if port is not None and not 0 <= port <= 65535:
        raise CriuError("%s must be a TCP port (1-65535, or 0 where a free one may be picked), got %d." % (name, port))


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


def existing_checkpoint(dest: str, pid: int, key: t.Optional[bytes]) -> t.Optional[t.Dict[str, t.Any]]:
    """The valid checkpoint of ``pid`` already at DEST, None when DEST is absent or empty; else a clear refusal."""
    if store.inspect_dir(dest) is None or not os.listdir(dest):
        return None
    metadata, problems = integrity.verify(dest, key)
    if metadata is None or problems:
        raise CriuError(
            "%s already exists but does not hold a valid checkpoint (%s). Set force=true to replace it, or choose another dest."
            % (dest, "; ".join(problems)),
            path=dest, problems=problems,
        )
    if not same_process(metadata, pid):
        raise CriuError(
            "%s already holds a checkpoint of another process (pid %s, %s). Set force=true to replace it, or choose another dest."
            % (dest, metadata["process"].get("pid"), " ".join(metadata["process"].get("cmdline", []))[:100]),
            path=dest,
        )
    return metadata


def dump_options(params: t.Mapping[str, t.Any], pid: int, st: procfs.ProcStat, tree: t.Sequence[int]) -> t.Dict[str, t.Any]:
    """The criu options recorded in metadata.json and re-applied at restore."""
    shell_job = params["shell_job"]
    return {
        "lazy_pages": params["lazy_pages"],
        "leave_running": params["leave_running"],
        "leave_stopped": params["leave_stopped"],
        "tcp_established": params["tcp_established"],
        "ext_unix_sk": params["ext_unix_sk"],
        "file_locks": params["file_locks"],
        "shell_job": procfs.needs_shell_job(pid, st, tree) if shell_job is None else shell_job,
        "network_lock": params["network_lock"],
    }


def _resume_if_we_stopped(pid: int, st: procfs.ProcStat) -> str:
    """After a failed dump, make sure the workload runs as it did before; say what happened to it."""
    now = procfs.read_stat(pid)
    if now is None or now.starttime != st.starttime or now.exited:
        return "The process %d is gone: CRIU killed it before failing; restart it from its own supervisor." % pid
    if now.state == "T" and st.state != "T":
        procfs.kill_tree(pid, signal.SIGCONT)
        return "The process %d was left stopped by the failed dump and has been resumed (SIGCONT)." % pid
    return "The process %d is still running, untouched." % pid


def _failed_log_path(dest: str) -> str:
    parent, name = os.path.split(os.path.normpath(dest))
    return os.path.join(parent, ".%s.dump-failed.log" % name)


def _dump(runtime: CriuRuntime, pid: int, st: procfs.ProcStat, dest: str, params: t.Mapping[str, t.Any],
          key: t.Optional[bytes], algorithm: str, port: int) -> t.Dict[str, t.Any]:
    """Dump into a staging dir, describe and sign it, then publish it as DEST in one rename. With lazy_pages the
    memory stays in the frozen tree, served from 127.0.0.1:``port`` by a criu that outlives this module."""
    facts = procfs.process_facts(pid, st)
    options = dump_options(params, pid, st, facts["tree"])
    staging = store.make_staging(dest)
    images = os.path.join(staging, store.IMAGES)
    failed_log = _failed_log_path(dest)
    page_server = None
    try:
        with follow.ImageFollower(images, algorithm) as follower:
            frozen_at = procfs.utc_now()
            if options["lazy_pages"]:
                page_server = runtime.start_lazy_dump(pid, images, staging, options, port, params["timeout"])
                dump_seconds = page_server.startup
            else:
                dump_seconds = runtime.dump(pid, images, staging, options, params["timeout"]).duration
            hashed = follower.digests()
        # Flushing the images to disk (I/O) overlaps hashing the small ones (CPU) instead of following it.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as flusher:
            flushed = flusher.submit(store.fsync_dir_entries, images)
            manifest = integrity.build_manifest(images, algorithm, hashed)
            flushed.result()
        metadata = {
            "schema_version": integrity.SCHEMA_VERSION,
            "id": str(uuid.uuid4()),
            "name": params["name"] or os.path.basename(os.path.normpath(dest)),
            "created_at": procfs.utc_now(),
            "source": procfs.host_facts(),
            "criu": {"path": runtime.path, "version": runtime.version_string},
            "process": facts,
            "options": options,
            "manifest_algorithm": algorithm,
            "manifest": manifest,
        }
        store.write_file(staging, store.METADATA, integrity.canonical(metadata))
        if key is not None:
            store.write_file(staging, store.SIGNATURE, (integrity.sign(metadata, key) + "\n").encode("ascii"))
        store.fsync_dir_entries(staging)
        store.publish(staging, dest)
    except BaseException as exc:
        if page_server is not None:
            # Its tracer gone, the tree runs on by itself; _resume_if_we_stopped covers the rest.
            page_server.stop()
        fate = _resume_if_we_stopped(pid, st)
        log = os.path.join(staging, store.DUMP_LOG)
        if os.path.isfile(log):
            os.replace(log, failed_log)
        store.remove_tree(staging)
        if isinstance(exc, CriuError):
            exc.msg = "%s %s No checkpoint was written to %s." % (exc.msg.replace(log, failed_log), fate, dest)
            exc.details.update(path=dest, log=failed_log if os.path.exists(failed_log) else None)
        raise
    if os.path.lexists(failed_log):
        os.unlink(failed_log)
    served = {"page_server": {"pid": page_server.proc.pid, "address": LOOPBACK, "port": port}} if page_server else {}
    return dict(served, **{
        "checkpoint": metadata,
        "stats": {
            "frozen_at": frozen_at,
            "dump_seconds": round(dump_seconds, 3),
            "image_bytes": sum(entry["size"] for entry in manifest),
            "image_files": len(manifest),
        },
    })


def checkpoint(params: t.Mapping[str, t.Any], check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_checkpoint module's work: returns the module result."""
    require_timeout(params["timeout"])
    if params["leave_running"] and params["leave_stopped"]:
        raise CriuError("leave_running and leave_stopped are mutually exclusive: after the dump the process either runs or stays stopped.")
    if params["lazy_pages"] and not params["leave_stopped"]:
        raise CriuError("lazy_pages needs leave_stopped=true: CRIU reports success even when the target vanished mid-transfer, "
                        "so only a source left stopped can be resumed if the post-copy restore fails.")
    require_port("page_server_port", params["page_server_port"])
    key = integrity.load_key(params["hmac_key"], params["hmac_key_file"])
    algorithm = integrity.choose_algorithm(params["hash_algorithm"])
    pid = procfs.resolve_pid(params["pid"], params["pidfile"])
    dest = os.path.normpath(params["dest"])
    store.check_parent(dest)
    enclosing = store.enclosing_checkpoint(dest)
    if enclosing:
        raise CriuError("dest %s lies inside the checkpoint %s; writing there would corrupt it. Choose a path outside it." % (dest, enclosing), path=dest)
    result: t.Dict[str, t.Any] = {"dest": dest, "pid": pid}
    if not params["force"]:
        existing = existing_checkpoint(dest, pid, key)
        if existing is not None:
            return dict(result, changed=False, checkpoint=existing, actions=[])
    st = procfs.require_checkpointable(pid)
    host.require_privileges()
    if params["lazy_pages"]:
        host.require_page_server()
    runtime = CriuRuntime.load(params["criu_path"])
    action = "%s pid %d (%s) to %s" % ("replace the checkpoint with a dump of" if os.path.lexists(dest) else "dump", pid, st.comm, dest)
    if check_mode:
        return dict(result, changed=True, actions=["would " + action])
    port = (params["page_server_port"] or free_port()) if params["lazy_pages"] else 0
    with store.DestLock(dest, params["timeout"]):
        if not params["force"]:
            existing = existing_checkpoint(dest, pid, key)
            if existing is not None:
                return dict(result, changed=False, checkpoint=existing, actions=[])
        result.update(_dump(runtime, pid, st, dest, params, key, algorithm, port))
    return dict(result, changed=True, actions=[action[0].upper() + action[1:]])
