# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every kind's restore shares: criu restoring the verified images held open in a checkpoint from a private
work directory, its logs copied into the checkpoint, proof that the copy lives, and restored.json, the (signed)
record of the copy a restore made."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import socket
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
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


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` through a checked directory chain (a root-owned symlink such as /var/run is fine)."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd, _real = safepath.open_dir(directory, "Pidfile directory", store.CHAIN_REMEDY)
    try:
        store.write_file(dir_fd, name, b"%d\n" % pid, replace=True)
    finally:
        os.close(dir_fd)


STOP_WAIT = 1.0


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


def record_pid(pidfile: t.Optional[str], src: str, pid: int) -> None:
    """The restored workload's pid into the caller's ``pidfile``; the workload runs whatever happens here."""
    if not pidfile:
        return
    try:
        write_pidfile(pidfile, pid)
    except (CriuError, OSError) as exc:
        raise CriuError("The workload was restored and runs as pid %d (recorded in %s/%s), but its pidfile %s could not be "
                        "written: %s Fix the pidfile's directory, then write the pid there yourself."
                        % (pid, src, store.RESTORED, pidfile, getattr(exc, "msg", exc)),
                        path=pidfile, pid=pid) from exc


def refusal(src: str, problems: t.List[str]) -> CriuError:
    return CriuError("Refusing to restore %s: %s. Nothing was restored; re-create the checkpoint or transfer it again."
                     % (src, listed(problems)), path=src, problems=problems)
