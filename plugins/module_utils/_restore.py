# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a checkpoint directory: verify first, restore detached, and prove the task lives."""

from __future__ import annotations

import json
import os
import socket
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._checkpoint import require_port, require_timeout
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils._runtime import HEALTH_DELAY, CriuRuntime, Run


def live_restore(src: str, metadata: t.Mapping[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
    """restored.json, when it names a live process restored from THIS checkpoint on this boot (nothing left to do)."""
    try:
        raw = store.read_small_file(src, store.RESTORED)
        record = json.loads(raw.decode("utf-8")) if raw else None
    except (CriuError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("boot_id") != procfs.boot_id() or not isinstance(record.get("pid"), int)
            or record.get("checkpoint_id") != metadata["id"]):
        return None
    return record if procfs.is_alive(record["pid"], record.get("starttime")) else None


def load_verified(src: str, key: t.Optional[bytes], verify: bool, require_signature: bool) -> t.Dict[str, t.Any]:
    """Metadata of a checkpoint that passed verification, or a refusal listing every problem."""
    if verify:
        metadata, problems = integrity.verify(src, key, require_signature)
    else:
        # Even unverified, a configured key is always enforced and the metadata must parse.
        store.inspect_dir(src)
        raw = store.read_small_file(src, store.METADATA)
        if raw is None:
            raise CriuError("%s holds no checkpoint (metadata.json is missing). Check src." % src, path=src)
        metadata, problems = integrity.parse_metadata(raw)
        if metadata is not None:
            problems = integrity.check_signature(src, metadata, key, require_signature)
    if metadata is None or problems:
        raise CriuError(
            "Refusing to restore %s: %s. Nothing was restored; re-create the checkpoint or transfer it again."
            % (src, "; ".join(problems)),
            path=src, problems=problems,
        )
    return metadata


def _write_pidfile(path: str, pid: int) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    store.write_file(directory, name, b"%d\n" % pid, replace=True)


def _confirm_alive(pid: int, log_path: str, src: str) -> procfs.ProcStat:
    """A restore can report success for a task that dies at once (e.g. an edited core image)."""
    time.sleep(HEALTH_DELAY)
    st = procfs.read_stat(pid)
    if st is None or st.exited:
        if st is not None:
            procfs.kill_tree(pid)
        raise CriuError(
            "criu restore reported success but the restored process %d %s within %.1fs. The images in %s were not changed. "
            "Causes seen: a corrupted image restored with verify=false, or a parent-death signal (e.g. unshare --kill-child) "
            "that fires when criu exits. See %s." % (pid, "became a zombie" if st else "exited", HEALTH_DELAY, src, log_path),
            path=src, log=log_path, pid=pid,
        )
    return st


def require_matching_mode(src: str, metadata: t.Mapping[str, t.Any], lazy_pages_port: t.Optional[int]) -> None:
    """A post-copy checkpoint has no memory in its images, and a full one needs no page server."""
    lazy = bool(metadata["options"].get("lazy_pages"))
    if lazy and not lazy_pages_port:
        raise CriuError("%s is a post-copy checkpoint (lazy_pages): its memory is still in the frozen source. Give "
                        "lazy_pages_port, the local port that reaches the source's page server." % src, path=src)
    if lazy_pages_port and not lazy:
        raise CriuError("%s holds the full memory of its workload (not a lazy_pages checkpoint); drop lazy_pages_port." % src, path=src)


def _restore_lazily(runtime: CriuRuntime, src: str, metadata: t.Mapping[str, t.Any], port: int,
                    timeout: float) -> t.Tuple[int, Run, str, t.Dict[str, t.Any]]:
    """Post-copy: restore at once with memory fetched on demand, then wait until every page arrived.
    A page that never arrives is zero-filled by the kernel, so on any failure the restored tree is killed
    at once: it must never run on with holes in its memory (the frozen source still has it all)."""
    images = os.path.join(src, store.IMAGES)
    fetcher = runtime.start_lazy_pages(images, src, port, timeout)
    pid = None
    try:
        pid, run = runtime.restore(images, src, metadata["options"], timeout, lazy=True)
        restored_at = procfs.utc_now()
        started = time.monotonic()
        pages = runtime.finish_lazy_pages(fetcher, timeout)
        return pid, run, restored_at, {"lazy_pages": pages, "transfer_seconds": round(time.monotonic() - started, 3)}
    except BaseException as exc:
        if pid is not None:
            procfs.wait_gone(procfs.kill_tree(pid), timeout=5)
        fetcher.stop()
        if isinstance(exc, CriuError) and pid is not None:
            exc.msg += " The restored copy (pid %s) was killed so it never runs with missing memory." % pid
        raise


def restore(params: t.Mapping[str, t.Any], check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_restore module's work: returns the module result."""
    require_timeout(params["timeout"])
    require_port("lazy_pages_port", params["lazy_pages_port"])
    key = integrity.load_key(params["hmac_key"], params["hmac_key_file"])
    src = os.path.normpath(params["src"])
    if store.inspect_dir(src) is None:
        raise CriuError("No checkpoint at %s: the directory does not exist. Check src." % src, path=src)
    metadata = load_verified(src, key, params["verify"], params["require_signature"])
    require_matching_mode(src, metadata, params["lazy_pages_port"])
    previous = live_restore(src, metadata)
    if previous and not params["force"]:
        return {"changed": False, "src": src, "pid": previous["pid"], "checkpoint": metadata, "restored": previous, "actions": []}
    problems = host.restore_problems(metadata)
    if problems:
        raise CriuError("Cannot restore %s on this host: %s." % (src, "; ".join(problems)), path=src, problems=problems)
    host.require_privileges()
    runtime = CriuRuntime.load(params["criu_path"])
    action = "restore %s (checkpoint of pid %s)" % (src, metadata["process"].get("pid"))
    if check_mode:
        return {"changed": True, "src": src, "pid": None, "checkpoint": metadata, "actions": ["would " + action]}
    with store.DestLock(src, params["timeout"]):
        stats: t.Dict[str, t.Any] = {}
        if params["lazy_pages_port"]:
            pid, run, restored_at, stats = _restore_lazily(runtime, src, metadata, params["lazy_pages_port"], params["timeout"])
        else:
            pid, run = runtime.restore(os.path.join(src, store.IMAGES), src, metadata["options"], params["timeout"])
            restored_at = procfs.utc_now()
        st = _confirm_alive(pid, run.log_path, src)
        record = {
            "pid": pid,
            "starttime": st.starttime,
            "boot_id": procfs.boot_id(),
            "host": socket.gethostname(),
            "checkpoint_id": metadata["id"],
            "restored_at": restored_at,
        }
        store.write_file(src, store.RESTORED, json.dumps(record, sort_keys=True).encode("utf-8"), replace=True)
    if params["pidfile"]:
        _write_pidfile(params["pidfile"], pid)
    return {
        "changed": True, "src": src, "pid": pid, "checkpoint": metadata, "restored": record,
        "stats": dict(stats, restore_seconds=round(run.duration, 3)), "actions": [action],
    }
