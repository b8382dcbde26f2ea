# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A live migration driven by its source host, exactly once, whatever dies.

The module checks everything before it touches the workload (the target over ssh as the migration
will reach it, its criu, architecture and free space), journals the migration, and hands it to a
driver it detaches from the controller: a lease keeper and, under it, the worker that freezes the
workload, streams its images to this collection's agent on the target while criu writes them,
has the target verify and restore them (stopped), decides, and only then lets one copy run.

The commit point is one journaled decision. Before it, any failure, timeout or expired lease
resumes the source and has the target remove its copy; after it, the source is never resumed.
A host that cannot know the outcome stays in doubt and says so. Rerunning the module reads the
journals and finishes, reports or resolves; it never starts a second migration of a workload
whose migration is in flight or in doubt.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import signal
import time
import traceback
import typing as t
import uuid

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migration_status as migration_status
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _target as target_
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _wire as wire
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import DriverLock, Journal, failpoint, read_progress, require_name, workload_claim
from ansible_collections.nucleus.criu.plugins.module_utils.migration._migration_status import report
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import Daemon
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Found, Kind

# Source phases before the decision; "committed" is the decision itself.
PRE_COMMIT = ("prepared", "freezing", "frozen", "target_restored", "pages_complete", "aborting")
WATCH_POLL = 0.05
PROGRESS_EVERY = 0.25
SEND_CHUNK = 4 * 1024 * 1024
# Dumped images are at least the resident memory; leave room for the rest.
SPACE_MARGIN = 1.1
SPACE_EXTRA = 64 * 1024 * 1024


class Settings(t.NamedTuple):
    """What a migration needs, fixed when it starts and kept in the journal for its recovery."""

    name: str
    directory: str
    target: remote.SshTarget
    mode: str
    lease: float
    timeout: float
    key: t.Optional[bytes]
    algorithm: str
    criu: t.Mapping[str, t.Any]  # the criu options, by module option name (_options.OPTIONS), as given
    target_pidfile: t.Optional[str]
    cleanup: str
    transfer_image: bool = False

    @property
    def link_timeout(self) -> float:
        """How long a silent link is waited on (keepalives notice a dead one sooner)."""
        return max(self.timeout, 30.0)


def settings(params: t.Mapping[str, t.Any], key: t.Optional[bytes]) -> Settings:
    name = require_name(params["name"])
    kind = kinds.asked(params)
    kind.refuse_migration(params["mode"])
    criu = {option.name: params[option.name] for option in criu_options.OPTIONS}
    criu_options.normalise(criu, "migrate")  # a bad value is refused before anything runs
    kind.refuse_unsupported(params, "migrate")
    for option in ("lease", "timeout"):
        if params[option] <= 0:
            raise CriuError("%s must be a positive number of seconds, got %s." % (option, params[option]))
    try:
        extra_args = tuple(shlex.split(params["ssh_extra_args"] or ""))
    except ValueError as exc:
        raise CriuError("ssh_extra_args %r cannot be split like a shell would: %s. Fix its quoting." % (params["ssh_extra_args"], exc)) from exc
    target = remote.SshTarget(host=params["target"], port=params["ssh_port"], user=params["ssh_user"],
                              key_file=params["ssh_key_file"], extra_args=extra_args,
                              python=params["target_python"], connect_timeout=params["ssh_connect_timeout"],
                              compress=params["compress"])
    return Settings(name, os.path.normpath(params["migrate_dir"]), target, params["mode"], float(params["lease"]),
                    float(params["timeout"]), key, params["hash_algorithm"], criu,
                    params["target_pidfile"], params["cleanup"], params["transfer_image"])


# --- the source's own copy of the workload ---------------------------------------------------------------

def _timeout(journal: Journal) -> float:
    return float((journal.get("settings") or {}).get("timeout") or 60.0)


def resume_source(journal: Journal) -> None:
    """Let the frozen source run on, with its memory intact, as its kind does it. Raises when that cannot be done."""
    kinds.of(journal.data).resume_source(journal.data, _timeout(journal))


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


# --- recovery: one way to finish or undo a migration from its journal -------------------------------------

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
    if journal.phase in ("committed", "completed") or journal.get("decision") == "commit":
        answer = _ask_target(settings_, code, journal, "commit")
        if answer is not None and answer.get("state") == target_.NEVER_RAN:
            never_ran(journal)
        elif answer is not None and answer.get("state") == "completed":
            end_source(journal)
            journal.record("completed", outcome="completed", target_pid=answer.get("pid", journal.get("target_pid")),
                           **_recovered_timing(journal, answer.get("running_at")))
            _cleanup_source(journal, settings_)
        else:
            journal.record("committed", outcome="in_doubt", error=_doubt(journal, answer, committed=True))
        return
    if journal.phase == "prepared":
        # Nothing was frozen; the target, which had not voted, has undone its part or will when asked.
        _ask_target(settings_, code, journal, "abort")
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


def _cleanup_source(journal: Journal, settings_: Settings) -> None:
    """What the completed migration leaves on the source: its checkpoint (by ``cleanup``) and the claim on the
    workload, which is gone from here."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(workload_claim(kinds.of(journal.data).claim_key(journal.get("process") or {}, journal.data)),
                  dir_fd=journal.dir_fd)
    if settings_.cleanup in ("all", "source"):
        with store.location(os.path.join(settings_.directory, settings_.name)) as loc:
            if store.replace_problem(loc) is None:
                store.remove_tree(loc.path)


# --- the worker: the protocol itself --------------------------------------------------------------------

def send_rest(images_fd: int, hashed: t.Dict[str, integrity.FileDigest], algorithm: str,
              send: t.Callable[[str, int, memoryview], None]) -> t.Dict[str, integrity.FileDigest]:
    """Images criu wrote in one go (not followed while it wrote): hash and send each in one pass. An empty image,
    followed or not, goes as one empty chunk, so that the target creates it too: criu writes empty images (the
    iptables-N.img of a network namespace without rules, from iptables-save) and the manifest lists them."""
    for name in integrity.list_images(images_fd):
        if name in hashed:
            if hashed[name].size == 0:
                send(name, 0, memoryview(b""))
            continue
        fd = integrity.open_image(images_fd, name)
        try:
            digester, offset = integrity.Digester(algorithm), 0
            while True:
                data = os.pread(fd, SEND_CHUNK, offset)
                if not data:
                    break
                digester.update(data)
                send(name, offset, memoryview(data))
                offset += len(data)
            if offset == 0:
                send(name, 0, memoryview(b""))
            hashed[name] = digester.result()
        finally:
            os.close(fd)
    return hashed


def _why_the_send_broke(agent: remote.Agent, exc: wire.LinkError) -> CriuError:
    """A send that broke: the target may have said why before it went (its migrate_dir full, its criu refused), and
    that, not the broken pipe it left behind, is what the operator must read."""
    try:
        agent.answer(2.0)
    except CriuError as reason:
        return reason
    return agent.failure("the session with nucleus.criu's agent broke (%s)" % exc, exc)


class Worker:
    """Runs one migration from its "prepared" journal to a decision, in the detached driver."""

    def __init__(self, journal: Journal, settings_: Settings, code: bytes) -> None:
        self.journal = journal
        self.settings = settings_
        self.code = code
        self.agent: t.Optional[remote.Agent] = None
        self.relay: t.Optional[remote.Agent] = None
        self.daemon: t.Optional[Daemon] = None
        self._progress_at = 0.0
        self._started = 0.0
        self._downtime: t.Optional[float] = None

    def run(self) -> None:
        try:
            self._protocol()
        except BaseException as exc:  # pylint: disable=broad-exception-caught
            self.journal.record(self.journal.phase, error=getattr(exc, "msg", None) or "%s: %s" % (type(exc).__name__, exc),
                                traceback=traceback.format_exc()[-4000:])
            # The control session goes (the target then stops waiting for us); post-copy's page relay stays until
            # the target's copy is gone.
            if self.agent is not None:
                self.agent.close(kill=True)
            resolve(self.journal, self.settings, self.code)
        finally:
            for session in (self.agent, self.relay):
                if session is not None:
                    session.close(kill=True)

    def _request(self) -> t.Dict[str, t.Any]:
        s = self.settings
        return {"cmd": "receive", "id": self.journal.get("id"), "name": s.name, "migrate_dir": s.directory, "mode": s.mode,
                "algorithm": s.algorithm, "timeout": s.timeout, "link_timeout": s.link_timeout,
                "decision_timeout": s.lease + s.link_timeout, "source": os.uname().nodename,
                "key": s.key.hex() if s.key else None, **kinds.of(self.journal.data).recorded_identity(self.journal.data),
                "restore_options": {option.name: s.criu[option.name] for option in criu_options.OPTIONS if option.restore_choice}}

    def _progress(self, step: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._progress_at < PROGRESS_EVERY:
            return
        self._progress_at = now
        sent = self.agent.channel.bytes_sent if self.agent else 0
        elapsed = max(now - self._started, 1e-6)
        self.journal.progress(step=step, bytes_sent=sent, rate_mib_s=round(sent / elapsed / 1048576, 1))

    def _protocol(self) -> None:
        s, journal = self.settings, self.journal
        journal.record("prepared", driver=procfs.tree_identity(os.getpid())[0])
        self.agent = remote.Agent(s.target, self.code, self._request())
        ready = self.agent.answer(s.link_timeout)
        if s.mode == "postcopy":
            self.relay = remote.Agent(s.target, self.code, {"cmd": "relay", "id": journal.get("id"), "name": s.name,
                                                            "migrate_dir": s.directory, "timeout": s.timeout},
                                      socket_io=True)
            self.relay.sock.settimeout(s.link_timeout)  # type: ignore[union-attr]
            if self.relay.sock.recv(1) != target_.RELAY_READY:  # type: ignore[union-attr]
                raise self.relay.failure("the post-copy page relay did not connect to %s" % ready.get("pages_socket"))
            self.relay.sock.setblocking(True)  # type: ignore[union-attr]
        pid, starttime = journal.get("process")["pid"], journal.get("process")["starttime"]
        if not procfs.is_alive(pid, starttime):
            raise CriuError("The workload (pid %d) exited before it could be frozen; nothing was migrated." % pid)
        with store.location(os.path.join(s.directory, s.name)) as loc, store.Lock(loc, s.timeout):
            store.remove_litter(loc)
            with seal_.staged(loc) as staging:
                metadata, dump_seconds = kinds.of(journal.data).freeze(self, staging, pid)
                self._vote(staging, metadata, dump_seconds)
        self._decide()

    # --- what the workload's kind borrows to freeze it (kinds._kind.Freezer) --------------------------------
    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def timeout(self) -> float:
        return self.settings.timeout

    @property
    def algorithm(self) -> str:
        return self.settings.algorithm

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def criu(self) -> t.Mapping[str, t.Any]:
        return self.settings.criu

    def journal_data(self) -> t.Mapping[str, t.Any]:
        return self.journal.data

    def note(self, **fields: t.Any) -> None:
        self.journal.record(self.journal.phase, **fields)

    def reached(self, step: str) -> None:
        failpoint(self.journal.name, step)

    def start_freeze(self, pid: int) -> None:
        """The freeze window opens: no Ansible task boundary from here to the decision."""
        s, journal = self.settings, self.journal
        self._started = time.monotonic()
        process = dict(journal.get("process"), tree=procfs.tree_identity(pid))
        journal.record("freezing", process=process, frozen_at=procfs.utc_now(), lease_deadline=self._started + s.lease,
                       boot_id=procfs.boot_id())

    def lazy_dump(self, start: t.Callable[[int], Daemon]) -> float:
        self.daemon = start(self.relay.sock.fileno())  # type: ignore[union-attr]
        return self.daemon.startup

    def send_chunk(self, name: str, offset: int, data: memoryview) -> None:
        agent = t.cast(remote.Agent, self.agent)
        try:
            agent.channel.send_chunk(name, offset, data)
        except wire.LinkError as exc:
            raise _why_the_send_broke(agent, exc) from exc
        if not self._progress_at:
            failpoint(self.journal.name, "transferring")  # the first bytes are on their way
        self._progress("transfer")

    def manifest(self, images_fd: int, hashed: t.Dict[str, integrity.FileDigest]) -> t.List[t.Dict[str, t.Any]]:
        """Send what was not followed while it was written; the manifest of everything sent."""
        hashed = send_rest(images_fd, hashed, self.settings.algorithm, self.send_chunk)
        return [integrity.manifest_entry(name, hashed[name]) for name in sorted(hashed)]

    def _vote(self, staging: store.Staging, metadata: t.Dict[str, t.Any], dump_seconds: float) -> None:
        """Seal the checkpoint on both hosts; the target verifies, restores and votes."""
        s, journal = self.settings, self.journal
        manifest = metadata["manifest"]
        # From here the target may restore; a container's copy then runs (see resolve).
        journal.record(journal.phase, sealed_sent=True)
        self.agent.channel.send(sealed=True, metadata=integrity.canonical(metadata).decode("ascii"),  # type: ignore[union-attr]
                                signature=integrity.sign(metadata, s.key) if s.key else None)
        journal.record("frozen", dump_seconds=round(dump_seconds, 3), checkpoint_id=metadata["id"],
                       image_bytes=sum(e["size"] for e in manifest), transfer_seconds=round(time.monotonic() - self._started, 3))
        self._progress("verify", force=True)
        seal_.seal(staging, metadata, s.key, durable=False)
        staging.publish(durable=False)
        self.agent.answer(s.link_timeout + s.timeout)  # type: ignore[union-attr]  # verified
        restored = self.agent.answer(s.link_timeout + s.timeout)  # type: ignore[union-attr]
        if restored.get("running_for") is not None:
            # Post-copy or a container: the workload runs on the target from here (its memory may still follow).
            self._downtime = time.monotonic() - self._started - restored["running_for"]
        journal.record("target_restored", target_pid=restored["pid"])
        if s.mode == "postcopy":
            complete = self.agent.answer(max(1.0, journal.get("lease_deadline") - time.monotonic()))  # type: ignore[union-attr]
            journal.record("pages_complete", lazy_pages=complete.get("pages"))

    def _decide(self) -> None:
        s, journal = self.settings, self.journal
        with journal.exclusive():  # a lease keeper that finds the lease run out either kills us before this or sees it
            journal.record("committed", decision="commit")  # ---- the commit point ----
        self.agent.channel.send(decision="commit", pidfile=s.target_pidfile,  # type: ignore[union-attr]
                                cleanup=s.cleanup in ("all", "target"))
        done = self.agent.answer(s.link_timeout)  # type: ignore[union-attr]
        if done.get("done") == target_.NEVER_RAN:
            never_ran(journal)
            return
        downtime = self._downtime if self._downtime is not None else time.monotonic() - self._started - done["running_for"]
        end_source(journal)
        if self.daemon is not None:
            self.daemon.stop()
        journal.record("completed", outcome="completed", target_pid=done["pid"], running_at=done["running_at"],
                       downtime_seconds=round(downtime, 3))
        self._progress("done", force=True)
        _cleanup_source(journal, s)


# --- the detached driver: a lease keeper and its worker ----------------------------------------------------

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


# --- the module's side: decide, preflight, start, watch, report -------------------------------------------

PREFLIGHT_STOP = "Migration of %s stopped at preflight, before touching the workload: %s"


def _preflight(settings_: Settings, code: bytes, kind: Kind, found: Found, journal_id: str, criu_path: t.Optional[str],
               check_mode: bool) -> t.Dict[str, t.Any]:
    """Everything that can be known before the freeze, on both hosts; raises naming what would fail. An image the
    target lacks (a container's) is sent first when ``transfer_image`` asks for it (never in check mode)."""
    try:
        facts = _check_both_hosts(settings_, code, kind, found, journal_id, criu_path)
        image = kind.image_to_send(found, facts["target"])
        if image is not None and not check_mode:
            facts["image_seconds"] = _send_image(settings_, code, journal_id, kind, found, image)
        return facts
    except CriuError as exc:
        if not exc.msg.startswith(PREFLIGHT_STOP % (settings_.name, "")):
            exc.msg = PREFLIGHT_STOP % (settings_.name, exc.msg)
        raise


def _check_both_hosts(settings_: Settings, code: bytes, kind: Kind, found: Found, journal_id: str,
                      criu_path: t.Optional[str]) -> t.Dict[str, t.Any]:
    host.require_privileges()
    problems = kind.source_problems(criu_path, settings_.timeout, host.effective_caps())
    pid = t.cast(int, found.pid)
    st = procfs.require_checkpointable(pid)
    if st.state == "T":
        raise CriuError(_stopped_source(settings_, code, pid, journal_id), pid=pid)
    if settings_.mode == "postcopy":
        host.require_page_server()
    tree = procfs.tree_identity(pid)
    expected = int(procfs.resident_bytes(member[0] for member in tree) * SPACE_MARGIN) + SPACE_EXTRA
    try:
        facts = remote.ask(settings_.target, code, settings_.link_timeout, cmd="preflight", id=journal_id, name=settings_.name,
                           migrate_dir=settings_.directory, timeout=settings_.timeout, transfer_image=settings_.transfer_image,
                           **kind.journal_identity(found))
    except CriuError as exc:
        raise CriuError("the source cannot run nucleus.criu on the target over ssh as the migration would (check ssh_user, "
                        "ssh_port, ssh_key_file, ssh_extra_args and target_python): %s" % exc.msg, target=settings_.target.label) from exc
    problems += list(facts["criu"]["problems"]) + ([facts["privilege_problem"]] if not facts["can_restore"] else [])
    problems += kind.target_problems(facts)
    if facts["arch"] != os.uname().machine:
        problems.append("the target is %s, the source %s: migrate only between hosts of one architecture" % (facts["arch"], os.uname().machine))
    if facts["free_bytes"] < expected:
        problems.append("%s has %d MiB free, the checkpoint needs about %d MiB: free space there or choose another migrate_dir"
                        % (settings_.directory, facts["free_bytes"] >> 20, expected >> 20))
    if settings_.algorithm == "auto":
        both = [name for name in integrity.available_algorithms() if name in facts["hash_algorithms"]]
        settings_ = settings_._replace(algorithm="blake3" if "blake3" in both else integrity.DEFAULT_ALGORITHM)
    elif settings_.algorithm not in integrity.available_algorithms():
        integrity.choose_algorithm(settings_.algorithm)  # raises, naming what this host lacks
    if settings_.algorithm not in facts["hash_algorithms"]:
        problems.append("the target's Python lacks %s (it has %s): %s"
                        % (settings_.algorithm, ", ".join(facts["hash_algorithms"]), integrity.BLAKE3_HINT))
    if settings_.mode == "postcopy" and not facts["criu"].get("lazy_pages"):
        problems.append("the target's kernel cannot restore lazily (criu check --feature uffd-noncoop fails): use mode=copy")
    other = facts.get("journal")
    if other and other.get("outcome") in (None, "in_doubt"):
        problems.append("the target holds an unfinished migration of %s (id %s, phase %s): resolve it first by rerunning the "
                        "migration that started it" % (settings_.name, other.get("id"), other.get("phase")))
    if problems:
        raise CriuError("%s." % listed(problems), problems=problems)
    return {"tree": tree, "expected_bytes": expected, "target": facts, "algorithm": settings_.algorithm}


def _stopped_source(settings_: Settings, code: bytes, pid: int, journal_id: str) -> str:
    """Why a stopped process with no journal here is not migrated, and what to do: asked of the target first. A lost
    (or damaged and moved aside) journal may have frozen it, and the target may run its copy: "resume it" would then
    run the workload twice."""
    try:
        facts = remote.ask(settings_.target, code, settings_.link_timeout, cmd="preflight", id=journal_id, name=settings_.name,
                           migrate_dir=settings_.directory, timeout=settings_.timeout, transfer_image=False, container=None)
        other = facts.get("journal")
    except CriuError as exc:
        return ("pid %d is stopped (state T), this host has no journal of migration %s, and the target could not be asked whether "
                "it holds one (%s). Do not resume it before you know: if a migration froze it, the target may run its copy. "
                "Rerun once the target is reachable." % (pid, settings_.name, exc.msg))
    if other is None:
        return ("pid %d is stopped (state T) and no migration of %s explains it, on this host or on the target: a checkpoint of "
                "a stopped process restores stopped. Resume it (kill -CONT %d) if it should run, then migrate it."
                % (pid, settings_.name, pid))
    if other.get("outcome") == "completed":
        return ("pid %d is stopped (state T) and this host has no journal of migration %s, but the target's journal says that "
                "migration (id %s) completed: its copy runs there, and pid %d is most likely its frozen source, whose journal "
                "was lost here. Do not resume it (the workload would run twice): end it (kill -KILL %d) once you have checked "
                "the copy on the target." % (pid, settings_.name, other.get("id"), pid, pid))
    return ("pid %d is stopped (state T) and this host has no journal of migration %s, but the target holds that migration "
            "(id %s, phase %s, outcome %s): pid %d is most likely its frozen source, whose journal was lost here, with the "
            "decision it held. Do not resume it while the target holds the migration; see the target's journal in %s."
            % (pid, settings_.name, other.get("id"), other.get("phase"), other.get("outcome") or "none yet", pid, settings_.directory))


def _send_image(settings_: Settings, code: bytes, journal_id: str, kind: Kind, found: Found,
                image: t.Mapping[str, t.Any]) -> float:
    """The workload's image to the target (a container's: podman save here, podman load there), before anything is
    frozen: a checkpoint holds the container's changes, never its image. Its seconds."""
    started = time.monotonic()
    dir_fd, _path = store.open_or_create_dir(settings_.directory, "Migration directory")
    name = target_.image_archive_name(settings_.name)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE, dir_fd=dir_fd)
        try:
            kind.save_image(image, fd, settings_.timeout)
            agent = remote.Agent(settings_.target, code, {"cmd": "load_image", "id": journal_id, "name": settings_.name,
                                                          "migrate_dir": settings_.directory, "timeout": settings_.timeout,
                                                          "link_timeout": settings_.link_timeout, "image_id": image["image_id"],
                                                          "image_name": image["image_name"], **kind.journal_identity(found)})
            try:
                agent.answer(settings_.link_timeout)
                offset = 0
                while True:
                    data = os.pread(fd, SEND_CHUNK, offset)
                    if not data:
                        break
                    agent.channel.send_chunk("image.tar", offset, data)
                    offset += len(data)
                agent.channel.send(sealed=True, size=offset)
                agent.answer(settings_.link_timeout + settings_.timeout)
            finally:
                agent.close(kill=True)
        finally:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
    except (CriuError, wire.LinkError) as exc:
        raise CriuError("the container's image %s could not be sent to the target: %s"
                        % (image["image_name"], getattr(exc, "msg", exc))) from exc
    finally:
        os.close(dir_fd)
    return round(time.monotonic() - started, 3)


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
                    resolve(current, _as_recorded(settings_, current), code)
            if current.get("outcome") is not None:
                return current
        if time.monotonic() > deadline:
            raise CriuError("Migration of %s is still running in the background (phase %s) on this host. Rerun the same command "
                            "to wait for it again; nothing is lost meanwhile." % (journal.name, current.phase),
                            migration={"id": current.get("id"), "phase": current.phase, "journal": current.path})
        time.sleep(WATCH_POLL)


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


def migrate(params: t.Mapping[str, t.Any], check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_migrate module's work: returns the module result."""
    key = integrity.load_key(params["hmac_key"], params["hmac_key_file"])
    s = settings(params, key)
    kind = kinds.asked(params)
    if params["pid"] is not None and params["pid"] <= 1:
        procfs.require_checkpointable(params["pid"])  # bad input: refused before anything is written
    code = remote.payload()
    if check_mode:
        opened = store.open_existing_dir(s.directory, "Migration directory")
        if opened is None:  # no migration ever ran here: nothing to resolve, nothing to create
            return _would_migrate(params, s, code, kind, kind.look_up(params))
    else:
        opened = store.open_or_create_dir(s.directory, "Migration directory")
    dir_fd, directory = opened
    s = s._replace(directory=directory)
    lock = DriverLock(dir_fd, s.name, create=not check_mode)
    deadline = time.monotonic() + params["wait_timeout"]
    if params["migration_id"]:
        return _follow(params["migration_id"], s, code, dir_fd, directory, lock, deadline)
    stack = contextlib.ExitStack()
    try:
        while not lock.try_acquire():
            # The same migration, run again while it runs (a second controller): wait for it and report it, as a
            # rerun does. Before its journal exists it is in its preflight: that ends soon, one way or the other.
            journal = source_journal(dir_fd, directory, s.name)
            if journal is not None and not params["wait"]:
                return _running(journal, False)
            if journal is not None:
                return report(watch(journal, lock, deadline, s, code), False, read_progress(dir_fd, directory, s.name))
            if time.monotonic() > deadline:
                raise CriuError("Another run of migration %s has held its lock for wait_timeout without writing a journal. "
                                "Rerun the same command to wait for it again." % s.name)
            time.sleep(WATCH_POLL)
        journal = source_journal(dir_fd, directory, s.name)
        found = kind.look_up(params)
        if journal is not None and journal.get("outcome") in (None, "in_doubt"):
            if check_mode:
                return {"changed": True, "actions": ["would resolve the unfinished migration %s (phase %s)" % (journal.get("id"), journal.phase)]}
            # Rerun = recovery: finish or undo it from both journals. Undone, the workload runs on the source again,
            # and this run migrates it as asked.
            resolve(journal, _as_recorded(s, journal), code)
            if journal.get("outcome") != "rolled_back":
                return report(journal, True, read_progress(dir_fd, directory, s.name))
            found = kind.look_up(params)
        elif journal is not None and journal.get("outcome") == "rolled_back" and journal.get("target_cleanup") == "pending":
            if check_mode:
                return {"changed": True, "actions": ["would remove the stopped copy that the rolled-back migration %s left on "
                                                     "the target, then migrate anew" % journal.get("id")]}
            finish_target_cleanup(journal, _as_recorded(s, journal), code)
        elif journal is not None and journal.get("outcome") == "completed":
            migrated = kinds.of(journal.data)
            if migrated.already_migrated(journal.data, found):
                return report(journal, False, read_progress(dir_fd, directory, s.name))
            if migrated.reused_pid(journal.data, found):
                pid = t.cast(int, found.pid)
                raise CriuError("pid %d was migrated to %s already (journal %s), and now belongs to another process (%s): the "
                                "pidfile still names the old pid. Refresh the pidfile, or remove the journal to migrate this "
                                "process." % (pid, journal.get("target", {}).get("label"), journal.path,
                                              procfs.process_state(pid).get("comm")), pid=pid)
        if check_mode:
            return _would_migrate(params, s, code, kind, found)
        found = kind.require(params, found)
        pid = t.cast(int, found.pid)
        st = procfs.read_stat(pid)
        what = kind.describe_found(found)
        claim = DriverLock.for_workload(dir_fd, kind.claim_key({"pid": pid, "starttime": st.starttime if st else None},
                                                               kind.journal_identity(found)))
        if not claim.try_acquire():
            raise CriuError("%s is being migrated right now by another migration from this host (another name, another "
                            "controller): only one may freeze it. Wait for it to end (its journal is in %s), then rerun "
                            "this one if the workload is still here." % (what, directory), pid=pid)
        stack.callback(claim.release)  # the driver keeps its own copy of the claim for as long as it lives
        failpoint(s.name, "preflight")  # (tests: the window in which the migration is locked and has no journal yet)
        journal_id = str(uuid.uuid4())
        facts = _preflight(s, code, kind, found, journal_id, params["criu_path"], check_mode=False)
        s = s._replace(algorithm=facts["algorithm"])
        journal = Journal.create(
            dir_fd, directory, s.name, "prepared", id=journal_id, role="source", outcome=None, decision=None, mode=s.mode,
            source=os.uname().nodename, target={"label": s.target.label, "host": s.target.host}, lease_seconds=s.lease,
            criu_path=params["criu_path"], algorithm=s.algorithm,
            process={"pid": pid, "starttime": st.starttime if st else None, "comm": st.comm if st else None, "tree": facts["tree"]},
            expected_bytes=facts["expected_bytes"], settings=_recordable(s),
            image_seconds=facts.get("image_seconds"), **kind.journal_identity(found))
        spawn(lock, journal, s, code)
        if not params["wait"]:
            return _running(journal, True)
        return report(watch(journal, lock, deadline, s, code), True, read_progress(dir_fd, directory, s.name))
    finally:
        stack.close()
        lock.release()
        os.close(dir_fd)


def _would_migrate(params: t.Mapping[str, t.Any], s: Settings, code: bytes, kind: Kind, found: Found) -> t.Dict[str, t.Any]:
    """Check mode: every preflight check on both hosts, and what a real run would do; nothing is written anywhere."""
    found = kind.require(params, found)
    facts = _preflight(s, code, kind, found, str(uuid.uuid4()), params["criu_path"], check_mode=True)
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


def _recordable(s: Settings) -> t.Dict[str, t.Any]:
    """The settings a recovery needs, as the journal keeps them (never the key: a recovery needs none)."""
    return {"mode": s.mode, "lease": s.lease, "timeout": s.timeout, "cleanup": s.cleanup, "target_pidfile": s.target_pidfile}


def _as_recorded(s: Settings, journal: Journal) -> Settings:
    """``s`` with what the migration in ``journal`` was started with (a recovery finishes it as it was asked)."""
    recorded = journal.get("settings") or {}
    return s._replace(**{key: recorded[key] for key in ("mode", "lease", "timeout", "cleanup", "target_pidfile") if key in recorded})
