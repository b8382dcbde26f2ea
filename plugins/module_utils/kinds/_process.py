# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The process tree: a root pid (or pidfile) and every descendant, dumped and restored by criu itself."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _netlock as netlock
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _reopen as reopen
from ansible_collections.nucleus.criu.plugins.module_utils.storage._failpoint import failpoint
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Found, Freezer, Kind, Landing, Metadata, Record, TargetJournal, Workload
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _follow as follow
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _restored as restored_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils._requests import CheckpointRequest, CriuChoices, RestoreRequest, WorkloadRef
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Daemon, Dir

# Options of other kinds' restores, refused on a process's checkpoint rather than ignored.
CONTAINER_RESTORE_OPTIONS = ("container_name", "ignore_static_ip", "ignore_static_mac")
OTHER_KINDS_RESTORE_OPTIONS = CONTAINER_RESTORE_OPTIONS + ("unit",)


def same_process(metadata: Metadata, pid: int) -> bool:
    """Is the checkpoint at DEST of this very process (pid reuse and reboots ruled out)?"""
    recorded = metadata["process"]
    if recorded.get("pid") != pid or metadata["source"].get("boot_id") != procfs.boot_id():
        return False
    st = procfs.read_stat(pid)
    # A dump without leave_running ends the process: its absence is what a finished checkpoint looks like.
    return st is None or st.exited or st.starttime == recorded.get("starttime")


def dump_options(criu: CriuChoices, leave_running: bool, leave_stopped: bool, pid: int, st: procfs.ProcStat,
                 tree: t.Sequence[int]) -> t.Dict[str, t.Any]:
    """The criu options recorded in metadata.json (a restore replays those criu needs again): the caller's ``criu``
    choices, and what becomes of the tree after the dump (``leave_running``, ``leave_stopped``)."""
    options = criu_options.normalise(criu, "dump")
    if options["shell_job"] is None:
        options["shell_job"] = procfs.needs_shell_job(pid, st, tree)
    options.update(leave_running=leave_running, leave_stopped=leave_stopped)
    options["network_lock"] = network_lock(options, shares_our_network(pid))
    return options


def network_lock(options: t.Mapping[str, t.Any], host_network: bool) -> str:
    """The lock criu takes: none for a tree in this host's network namespace with no TCP connection to keep. There
    criu's nftables lock only locks connections, yet it creates a table ("inet CRIU-<run id>") that a dump which does
    not leave the tree running never removes (criu keeps it for the restore): one table left on the host per
    checkpoint or migration, each walked by every packet the host sends or receives from then on."""
    if options["network_lock"] == "nftables" and host_network and not options.get("tcp_established"):
        return "skip"
    return options["network_lock"]


def shares_our_network(pid: int) -> bool:
    """Is ``pid`` in this process's network namespace (the host's, as the module runs)?"""
    try:
        return os.stat("/proc/%d/ns/net" % pid).st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False


def resume_if_we_stopped(pid: int, st: procfs.ProcStat) -> str:
    """After a failed dump, make sure the workload runs as it did before; say what happened to it."""
    now = procfs.read_stat(pid)
    if now is None or now.starttime != st.starttime or now.exited:
        return "The process %d is gone: CRIU killed it before failing; restart it from its own supervisor." % pid
    if now.state == "T" and st.state != "T":
        procfs.kill_tree(pid, signal.SIGCONT)
        return "The process %d was left stopped by the failed dump and has been resumed (SIGCONT)." % pid
    return "The process %d is still running, untouched." % pid


def run_again(tree: t.Sequence[t.Sequence[int]], tcp_kept: bool, criu_run_id: t.Optional[str], timeout: float) -> None:
    """SIGCONT to exactly the processes of ``tree`` ([pid, starttime] each) that a dump left stopped, once their TCP
    connections are out of criu's hands (else they stay dead: netlock); should that fail, they run anyway and the error
    says so."""
    try:
        alive = procfs.alive_identified(tree)
        if alive and (tcp_kept or criu_run_id):
            netlock.release(alive, criu_run_id, timeout)
    finally:
        procfs.signal_identified(tree, signal.SIGCONT)


class ProcessTree(Workload):
    """The tree rooted at ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.st: t.Optional[procfs.ProcStat] = None
        self.runtime: t.Optional[CriuRuntime] = None

    @property
    def what(self) -> str:
        return "pid %d (%s)" % (self.pid, self.st.comm) if self.st else "pid %d" % self.pid

    def result(self) -> t.Dict[str, t.Any]:
        return {"pid": self.pid}

    def is_in(self, metadata: Metadata) -> bool:
        return same_process(metadata, self.pid)

    def require_checkpointable(self, criu_path: t.Optional[str]) -> None:
        self.st = procfs.require_checkpointable(self.pid)
        self.runtime = CriuRuntime.load(criu_path)

    def to_come(self, name: str) -> t.Dict[str, t.Any]:
        return diff_.new_checkpoint(name, self.pid, self.st.comm if self.st is not None else None)

    def dump(self, loc: store.Location, request: CheckpointRequest, key: t.Optional[bytes],
             algorithm: str) -> t.Dict[str, t.Any]:
        """Dump into a staging dir, describe and sign it, then publish it as DEST in one rename.

        A dump that is to end the process leaves it stopped instead, and ends it only once the checkpoint is
        published: whatever fails before (a full disk writing the metadata, a signature, a rename), the workload
        runs on."""
        pid, st, runtime = self.pid, t.cast(procfs.ProcStat, self.st), t.cast(CriuRuntime, self.runtime)
        facts = procfs.process_facts(pid, st)
        options = dump_options(request.criu, request.leave_running, request.leave_stopped, pid, st, facts["tree"])
        ending = not (options["leave_running"] or options["leave_stopped"])
        identity: t.List[t.List[int]] = []
        staging: t.Optional[store.Staging] = None
        try:
            with seal_.staged(loc) as staging:
                if not options["leave_running"]:
                    seal_.note_stopping(loc, staging, {"process": {"pid": pid, "starttime": st.starttime},
                                                       "tcp_established": bool(options.get("tcp_established"))})
                images = Dir(staging.images_fd, os.path.join(staging.path, store.IMAGES))
                with follow.ImageFollower(images.fd, images.path, algorithm) as follower:
                    frozen_at = procfs.utc_now()
                    dump_seconds = runtime.dump(pid, images, Dir(staging.fd, staging.path),
                                                dict(options, leave_stopped=True) if ending else options, request.timeout,
                                                external_unix=self.external_unix()).duration
                    hashed = follower.digests()
                failpoint(loc.name, "dumped")  # tests stop a checkpoint here, its tree stopped, nothing published
                criu_stats = criustats.read(staging.fd, store.DUMP_STATS)
                identity = procfs.tree_identity(pid)  # every process dumped, stopped now: no new child can appear
                flush_started = time.monotonic()
                manifest = seal_.flushed_manifest(images.fd, algorithm, hashed)
                metadata = seal_.describe(runtime.identity(), request.name or loc.name, facts, options, algorithm, manifest)
                metadata.update(self.recorded())
                seal_.seal(staging, metadata, key)
                staging.publish()
                fsync_seconds = time.monotonic() - flush_started
        except BaseException as exc:
            seal_.failed_dump_fate(exc, staging, loc, lambda: resume_if_we_stopped(pid, st))
            seal_.forget_stopping(loc)
            raise
        failpoint(loc.name, "published")  # tests stop a checkpoint here, published, its tree not ended yet
        if ending:
            self.end(identity, request.timeout)
        seal_.forget_stopping(loc)
        return seal_.dump_result(metadata, frozen_at, dump_seconds, fsync_seconds, criu=criu_stats)

    def external_unix(self) -> t.Sequence[int]:
        """Inodes of unix sockets the tree holds whose peers are outside it, dumped as external (see CriuRuntime.dump)."""
        return ()

    def recorded(self) -> t.Dict[str, t.Any]:
        """What metadata.json records of the workload beyond its process tree."""
        return {}

    def end(self, identity: t.Sequence[t.Sequence[int]], timeout: float) -> None:
        """End the tree a published checkpoint holds (``identity``: every process dumped, still stopped)."""
        procfs.wait_gone(procfs.signal_identified(identity, signal.SIGKILL), timeout=10)

    def left_stopped(self, metadata: Metadata) -> t.Optional[str]:
        """A dump that ends its tree publishes the checkpoint, then ends the tree it left stopped: a run that died in
        between left this very tree stopped, which its checkpoint says is gone."""
        options, process = metadata.get("options") or {}, metadata.get("process") or {}
        st = procfs.read_stat(self.pid)
        if options.get("leave_running") or options.get("leave_stopped") or st is None or st.exited or st.state != "T" \
                or st.starttime != process.get("starttime"):
            return None
        return "end %s, which a run that died after publishing its checkpoint left stopped" % self.what

    def end_left_stopped(self, timeout: float) -> None:
        self.end(procfs.tree_identity(self.pid), timeout)


def freeze_tree(freezer: Freezer, staging: store.Staging, pid: int, external_unix: t.Sequence[int] = (),
                recorded: t.Optional[t.Mapping[str, t.Any]] = None) -> t.Tuple[t.Dict[str, t.Any], float]:
    """criu dumps the tree (left stopped) while its images stream to the target; its metadata (with ``recorded``, a
    kind's own record) and dump seconds."""
    record = freezer.journal_data()
    runtime = CriuRuntime.load(record.get("criu_path"))
    runtime.on_spawn = lambda criu_pid: freezer.note(criu=procfs.tree_identity(criu_pid)[0])
    st = t.cast(procfs.ProcStat, procfs.read_stat(pid))
    options = dump_options(freezer.criu, False, True, pid, st, [member[0] for member in _tree(record)])
    options["lazy_pages"] = freezer.mode == "postcopy"
    images = Dir(staging.images_fd, os.path.join(staging.path, store.IMAGES))
    work = Dir(staging.fd, staging.path)
    facts = procfs.process_facts(pid, st)
    freezer.start_freeze(pid)
    with follow.ImageFollower(images.fd, images.path, freezer.algorithm, on_chunk=freezer.send_chunk,
                              write_back=False) as follower:
        if freezer.mode == "postcopy":
            dump_seconds = freezer.lazy_dump(
                lambda relay_fd: runtime.start_lazy_dump(pid, images, work, options, relay_fd, freezer.timeout, external_unix))
        else:
            dump_seconds = runtime.dump(pid, images, work, options, freezer.timeout, external_unix=external_unix).duration
        hashed = follower.digests()
    if options["tcp_established"] or options["network_lock"] != "skip":  # what a rollback releases (resume_source)
        freezer.note(criu_run_id=netlock.run_id(work.file(store.DUMP_LOG)), tcp_kept=bool(options["tcp_established"]))
    manifest = freezer.manifest(images.fd, hashed)
    metadata = seal_.describe(runtime.identity(), freezer.name, facts, options, freezer.algorithm, manifest)
    metadata.update(recorded or {})
    return metadata, dump_seconds


def _tree(record: Record) -> t.List[t.List[int]]:
    return (record.get("process") or {}).get("tree") or []


class Process(Kind):
    """A process tree: what every checkpoint without another kind's record holds."""

    name = "process"

    def asked(self, ref: WorkloadRef) -> bool:
        return ref.pid is not None or bool(ref.pidfile)

    def holds(self, metadata: Metadata) -> bool:
        return True  # the kind of last resort (see _registry)

    def subject(self, metadata: Metadata) -> str:
        return "process (pid %s, %s)" % (metadata["process"].get("pid"), metadata["process"].get("comm"))

    def refuse_unsupported(self, criu: CriuChoices, at: str, leave_stopped: bool = False) -> None:
        return None  # criu takes every option

    def find(self, ref: WorkloadRef, timeout: float) -> Workload:
        return ProcessTree(procfs.resolve_pid(ref.pid, ref.pidfile))

    def restore(self, checkpoint: store.Checkpoint, verdict: t.Any, request: RestoreRequest,
                key: t.Optional[bytes], check_mode: bool) -> t.Dict[str, t.Any]:
        """criu restores the tree, detached; the copy must be alive a moment later."""
        metadata = t.cast(t.Dict[str, t.Any], verdict.metadata)
        src = checkpoint.path
        given = [name for name in OTHER_KINDS_RESTORE_OPTIONS if getattr(request, name)]
        if given:
            raise CriuError("%s applies to a container's or a unit's checkpoint only, and %s is the checkpoint of a %s. Leave it out."
                            % (", ".join(given), src, self.subject(metadata)), path=src)
        shown = integrity.public(metadata)
        previous = restored_.live_restore(checkpoint, metadata, key)
        if previous and not request.force:
            return {"changed": False, "src": src, "pid": previous["pid"], "checkpoint": shown, "restored": previous, "actions": [],
                    "diff": diff_.restore(src, previous, diff_.restored(previous))}
        problems = host.restore_problems(metadata) + reopen.problems(checkpoint.images_fd)
        if problems:
            raise CriuError("Cannot restore %s on this host: %s." % (src, listed(problems)), path=src, problems=problems)
        options = criu_options.for_restore(metadata, request.criu)
        host.require_privileges()
        runtime = CriuRuntime.load(request.criu_path)
        action = "restore %s (checkpoint of pid %s)" % (src, metadata["process"].get("pid"))
        if check_mode:
            return {"changed": True, "src": src, "pid": None, "checkpoint": shown, "actions": ["would " + action],
                    "diff": diff_.restore(src, previous, diff_.new_restore(metadata["id"]))}
        pid, run = restored_.restore_tree(runtime, checkpoint, options, request.timeout)
        restored_at = procfs.utc_now()
        record = restored_.restore_record(metadata["id"], pid, restored_at,
                                          starttime=restored_.confirm_alive(pid, run.log_path, src).starttime)
        restored_.save_record(checkpoint.fd, record, key)
        restored_.record_pid(request.pidfile, src, pid)
        return {
            "changed": True, "src": src, "pid": pid, "checkpoint": shown, "restored": record,
            "stats": dict(verdict.stats(), restore_seconds=round(run.duration, 3), criu=run.criu_stats), "actions": [action],
            "diff": diff_.restore(src, previous, diff_.restored(record)),
        }

    def host_problems(self, metadata: Metadata, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        return list(host.criu_facts(criu_path)["problems"])

    # --- a migration, on its source ---------------------------------------------------------------------------
    def refuse_migration(self, mode: str) -> None:
        return None  # copy and post-copy

    def look_up(self, ref: WorkloadRef, timeout: float) -> Found:
        try:
            return Found(procfs.resolve_pid(ref.pid, ref.pidfile))
        except CriuError:
            return Found(None)

    def require(self, ref: WorkloadRef, found: Found) -> Found:
        # No pid when the workload was looked up: the pidfile is read again, and names no process (raises) or, if
        # one started since, that one.
        return found if found.pid is not None else Found(procfs.resolve_pid(ref.pid, ref.pidfile))

    def describe_found(self, found: Found) -> str:
        return "pid %d" % t.cast(int, found.pid)

    def describe_record(self, record: Record) -> str:
        return "pid %s" % (record.get("process") or {}).get("pid")

    def frozen_state(self, record: Record) -> str:
        return "frozen" if procfs.alive_identified(_tree(record)) else "gone"

    def journal_identity(self, found: Found) -> t.Dict[str, t.Any]:
        return {}

    def recorded_identity(self, record: Record) -> t.Dict[str, t.Any]:
        return {}

    def already_migrated(self, record: Record, found: Found) -> bool:
        process, pid = record.get("process") or {}, found.pid
        if pid is None or not procfs.is_alive(pid):
            return True
        st = procfs.read_stat(pid)
        return pid == process.get("pid") and st is not None and st.starttime == process.get("starttime")

    def reused_pid(self, record: Record, found: Found) -> bool:
        return found.pid is not None and found.pid == (record.get("process") or {}).get("pid")

    def claim_key(self, process: t.Mapping[str, t.Any], record: Record) -> str:
        return "pid-%s-%s" % (process.get("pid"), process.get("starttime"))

    def source_problems(self, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        CriuRuntime.load(criu_path)  # raises, naming why there is no criu to trust
        return []

    def target_problems(self, facts: t.Mapping[str, t.Any]) -> t.List[str]:
        return []

    def freeze(self, freezer: Freezer, staging: store.Staging, pid: int) -> t.Tuple[t.Dict[str, t.Any], float]:
        return freeze_tree(freezer, staging, pid)

    def resume_stopped(self, record: Record, loc: store.Location, timeout: float) -> t.List[str]:
        """The tree runs again, as a failed dump's does: its TCP connections out of criu's hands, then SIGCONT."""
        process = record.get("process") or {}
        pid = process.get("pid")
        st = procfs.read_stat(pid) if isinstance(pid, int) else None
        if st is None or st.exited or st.starttime != process.get("starttime") or st.state != "T":
            return []
        pid = t.cast(int, pid)
        tree = procfs.tree_identity(pid)
        staging = record.get("staging")
        run_id = netlock.run_id(os.path.join(loc.parent, staging, store.DUMP_LOG)) if staging else None
        run_again(tree, bool(record.get("tcp_established")), run_id, timeout)
        return ["Resumed pid %d and its %d descendant(s), left stopped by a run that died after criu's dump into %s"
                % (pid, len(tree) - 1, loc.path)]

    def resume_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """The frozen tree runs again (run_again), as it was."""
        run_again(_tree(record), bool(record.get("tcp_kept")), record.get("criu_run_id"), timeout)
        return None

    def end_source(self, record: Record, timeout: float) -> t.Optional[str]:
        procfs.wait_gone(procfs.signal_identified(_tree(record), signal.SIGKILL), timeout=10)
        return None

    def source_lost(self, record: Record) -> bool:
        """Every process frozen is gone: killed, or this host rebooted (criu's frozen tree dies with it)."""
        tree = _tree(record)
        return bool(tree) and not procfs.alive_identified(tree)

    def copy_waits_for_commit(self, record: Record) -> bool:
        return record.get("mode") == "copy"  # criu restores it stopped; post-copy's runs at once

    def runs_on_target_undecided(self, record: Record) -> bool:
        return False

    # --- a migration, on its target ----------------------------------------------------------------------------
    def target_preflight(self, request: t.Mapping[str, t.Any], can_restore: bool) -> t.Optional[t.Dict[str, t.Any]]:
        return None

    def prepare_landing(self, request: t.Mapping[str, t.Any], timeout: float) -> t.Any:
        return None

    def land(self, landing: Landing, journal: TargetJournal, runtime: CriuRuntime, opened: store.Checkpoint,
             metadata: Metadata, page_conn: t.Optional[socket.socket],
             stack: contextlib.ExitStack) -> t.Tuple[int, t.Optional[Daemon]]:
        """criu restores the tree stopped (copy), or running with its memory still at the source (post-copy: the
        lazy-pages fetcher and its work directory live as long as ``stack``)."""

        def restoring(criu_pid: int) -> None:
            journal.record("restoring", criu=procfs.tree_identity(criu_pid)[0])

        procfs.become_subreaper()
        options = criu_options.for_restore(metadata, landing.restore_options)
        if page_conn is None:
            runtime.on_spawn = restoring
            pid, run = restored_.restore_tree(runtime, opened, options, landing.timeout, leave_stopped=True,
                                              pidfile=landing.restore_pidfile)
            restored_.confirm_alive(pid, run.log_path, opened.path, stopped=True)
            return pid, None
        # lazy-pages and restore share a work directory: restore finds the fetcher through its socket there.
        work_path = stack.enter_context(store.private_dir("nucleus-criu-lazy-"))
        work = Dir(safepath.open_dir(work_path, "Private work directory", store.CHAIN_REMEDY)[0], work_path)
        stack.callback(os.close, work.fd)
        fetcher = runtime.start_lazy_pages(Dir(opened.images_fd, os.path.join(opened.path, store.IMAGES)), work,
                                           page_conn.fileno(), landing.timeout)
        stack.callback(fetcher.stop)
        page_conn.close()
        journal.record("received", lazy_log=fetcher.log_path, lazy_pages_daemon=procfs.tree_identity(fetcher.proc.pid)[0])
        runtime.on_spawn = restoring
        pid, run = restored_.restore_tree(runtime, opened, options, landing.timeout, lazy=True, pidfile=landing.restore_pidfile,
                                          work=work)
        journal.data["running_since"] = time.monotonic()
        restored_.confirm_alive(pid, run.log_path, opened.path)
        return pid, fetcher

    def remove_landed(self, record: Record, timeout: float) -> t.List[int]:
        return []

    def copy_stopped_until_commit(self, record: Record) -> bool:
        return record.get("mode") == "copy"

    def landed_identity(self, record: Record) -> t.Dict[str, t.Any]:
        return {}
