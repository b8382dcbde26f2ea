# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The target's side of a migration: this collection's own code, sent by the source and run over ssh.

``receive`` takes the images as the source's criu writes them, digests every byte as it writes it into a
private staging directory, verifies manifest and signature, restores with the same code and checks as
criu_restore, and votes: the copy stays stopped (post-copy: runs until every page arrived) until the
source's decision. Commit resumes it; abort kills it and removes every trace. A target that loses the
source after voting never guesses: its journal says "in doubt" and its copy stays stopped until the
source's recovery tells it the outcome (``resolve``). Every phase is journaled before it acts.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
import traceback
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criulog as criulog
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _reopen as reopen
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _restored as restored_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _wire as wire
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils.storage._failpoint import failpoint
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import HEALTH_DELAY, CriuRuntime, Daemon

# Target phases, in order. After "restored" the target has voted: only the source's decision ends it.
VOTED = ("restored", "pages_complete", "committed", "aborting")
NEVER_RAN = "never_ran"  # a commit's answer: the stopped copy died before it was resumed
RELAY_READY = b"\x01"
RELAY_BUFFER = 1 << 20


def pages_socket_name(name: str) -> str:
    return ".%s.pages.sock" % name


def restore_pidfile_name(name: str) -> str:
    return ".%s.restore.pid" % name


def image_archive_name(name: str) -> str:
    return ".%s.image.tar" % name


class Context:
    """One request's view of the target's migration directory, the workload's checkpoint and its journal."""

    def __init__(self, request: t.Mapping[str, t.Any]) -> None:
        self.request = request
        self.name = request["name"]
        self.id = request["id"]
        self.dir_fd, self.directory = store.open_or_create_dir(request["migrate_dir"], "Migration directory")
        self.timeout = float(request["timeout"])
        # The restore choices the migration was given (manage_cgroups, cgroup_root); the rest replays the dump's.
        self.restore_options: t.Mapping[str, t.Any] = request.get("restore_options") or {}
        self.key = bytes.fromhex(request["key"]) if request.get("key") else None  # signs restored.json
        self.prepared: t.Any = None  # what the workload's kind made ready before the freeze (Podman, for a container)
        self.source_fd: t.Optional[int] = None  # the source's session (receive): its hang-up is watched while Podman restores

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.directory, self.name)

    @property
    def restore_pidfile(self) -> str:
        return os.path.join(self.directory, restore_pidfile_name(self.name))

    def journal(self) -> t.Optional[Journal]:
        return Journal.load(self.dir_fd, self.directory, self.name)

    def reached(self, step: str) -> None:
        failpoint(self.name, step)


def failed_log_name(name: str) -> str:
    return ".%s.restore-failed.log" % name


def _remove_checkpoint(ctx: Context, keep_log: bool = False) -> None:
    """Remove what this migration left here; an aborted restore's log is kept aside (.NAME.restore-failed.log)."""
    with store.location(ctx.checkpoint_path) as loc:
        store.remove_litter(loc)
        if os.path.lexists(loc.path):
            problem = store.replace_problem(loc)
            if problem is None:
                try:
                    if not keep_log:
                        raise FileNotFoundError()
                    os.rename(os.path.join(loc.name, store.RESTORE_LOG), failed_log_name(ctx.name),
                              src_dir_fd=loc.parent_fd, dst_dir_fd=loc.parent_fd)
                except OSError:
                    pass
                store.remove_tree(loc.path)
    for leftover in (pages_socket_name(ctx.name), restore_pidfile_name(ctx.name)):
        try:
            os.unlink(leftover, dir_fd=ctx.dir_fd)
        except FileNotFoundError:
            pass


def _kill_restored(journal: Journal) -> None:
    """Kill whatever this migration restored here: the tree it recorded, a criu restore still running (and the tree
    it was building), and a tree whose pid criu wrote after the agent that started it died."""
    # The kind first: a unit's copy is stopped through systemd, before a killed tree or fetcher could make it restart.
    victims = kinds.of(journal.data).remove_landed(journal.data, journal.get("timeout") or 60.0)
    for daemon in (journal.get("criu"), journal.get("lazy_pages_daemon")):
        if daemon and procfs.is_alive(daemon[0], daemon[1]):
            victims += procfs.kill_tree(daemon[0])
    victims += procfs.signal_identified(journal.get("tree") or [], signal.SIGKILL)
    try:
        raw = store.read_small_file(journal.dir_fd, restore_pidfile_name(journal.name), "")
        pid = procfs.parse_pidfile(raw.decode("ascii", "replace")) if raw else None
    except CriuError:
        pid = None
    started = journal.get("restore_started_ticks")
    if pid is not None and started is not None:
        st = procfs.read_stat(pid)
        if st is not None and st.starttime >= started:
            victims += procfs.kill_tree(pid)
    if started is not None:
        # The agent that restored is a subreaper: a task a killed criu left half-restored is its child now.
        for orphan in procfs.children_since(started):
            victims += procfs.kill_tree(orphan)
    procfs.wait_gone(victims, timeout=10)


def abort(ctx: Context, journal: Journal, reason: str) -> None:
    """Undo everything this migration did here; idempotent."""
    journal.record("aborting", error=reason)
    _kill_restored(journal)
    _remove_checkpoint(ctx, keep_log=True)
    journal.record("aborted", outcome="aborted")


def commit(ctx: Context, journal: Journal, decision: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """Let the restored copy run; idempotent. Recorded before it acts, so a crash here is finished by a rerun. A
    stopped copy (copy mode) that died before this resumed it never ran: that is said (``never_ran``), and the source,
    whose memory is intact, may run again instead of staying frozen for a copy that is gone."""
    if journal.phase != "committed":
        journal.record("committed", decision="commit", cleanup=bool(decision.get("cleanup")), pidfile=decision.get("pidfile"))
    tree = journal.get("tree") or []
    kind = kinds.of(journal.data)
    if kind.copy_stopped_until_commit(journal.data) and tree and not procfs.is_alive(*tree[0]):
        if journal.get("outcome") is None:
            _kill_restored(journal)
            _remove_checkpoint(ctx, keep_log=True)
            journal.record("committed", outcome="aborted", never_ran=True,
                           error="the restored copy (pid %d) died while stopped, before the commit resumed it: it never ran "
                                 "here" % tree[0][0])
        return {"done": NEVER_RAN}
    procfs.signal_identified(tree, signal.SIGCONT)
    resumed = time.monotonic()
    running_at = procfs.utc_now()
    pid, starttime = tree[0]
    time.sleep(HEALTH_DELAY)
    st = procfs.read_stat(pid)
    if st is None or st.exited or st.starttime != starttime:
        journal.record("committed", outcome="in_doubt", error="the restored copy (pid %d) died before it could run" % pid)
        raise CriuError("The restored copy (pid %d) died before it could run: the source stays frozen, never resumed; "
                        "see %s and decide by hand." % (pid, journal.path))
    if os.path.isdir(ctx.checkpoint_path):
        with store.location(ctx.checkpoint_path) as loc, store.open_checkpoint(loc) as opened:
            identity = kind.landed_identity(journal.data)
            restored_.save_record(opened.fd, restored_.restore_record(journal.get("checkpoint_id"), pid, running_at,
                                                                      starttime=starttime, **identity), ctx.key)
    if journal.get("pidfile"):
        restored_.write_pidfile(journal.get("pidfile"), pid)
    kind.committed(journal.data, ctx.timeout)
    if journal.get("cleanup"):
        _remove_checkpoint(ctx)
    journal.record("completed", outcome="completed", running_at=running_at)
    # How long ago the copy started running: the source subtracts it from the downtime it measures.
    return {"done": "completed", "pid": pid, "running_at": running_at, "running_for": time.monotonic() - resumed}


class _Receiver:
    """Images as they arrive: each written into the staging directory and digested in the same pass."""

    def __init__(self, staging: store.Staging, algorithm: str) -> None:
        self.staging = staging
        self.algorithm = algorithm
        self.files: t.Dict[str, t.Tuple[int, t.Any, int]] = {}
        self.bytes = 0

    def chunk(self, name: str, offset: int, data: memoryview) -> None:
        if integrity.manifest_path_problem(name) or "/" in name:
            raise CriuError("The source sent an image named %r, which no checkpoint holds." % name)
        if name not in self.files:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE,
                         dir_fd=self.staging.images_fd)
            self.files[name] = (fd, integrity.Digester(self.algorithm), 0)
        fd, digest, size = self.files[name]
        if offset != size:
            raise CriuError("The source sent bytes of %s at offset %d, expected %d." % (name, offset, size))
        view = data
        while view:
            view = view[os.write(fd, view):]
        digest.update(data)
        self.files[name] = (fd, digest, size + len(data))
        self.bytes += len(data)

    def digests(self) -> t.Dict[str, integrity.FileDigest]:
        return {name: digester.result() for name, (_fd, digester, _size) in self.files.items()}

    def close(self) -> None:
        for fd, _digest, _size in self.files.values():
            os.close(fd)
        self.files = {}


def _receive_images(channel: wire.Channel, staging: store.Staging, request: t.Mapping[str, t.Any],
                    key: t.Optional[bytes], link_timeout: float) -> t.Dict[str, t.Any]:
    """Take image chunks until the source seals the checkpoint; verify what arrived; return its metadata."""
    receiver = _Receiver(staging, request["algorithm"])
    try:
        while True:
            kind, body = channel.receive(link_timeout)
            if kind == wire.CHUNK:
                receiver.chunk(*body)
                continue
            if body.get("abort"):
                raise CriuError("The source aborted the migration: %s" % body.get("reason"))
            if body.get("sealed"):
                break
            raise CriuError("Unexpected message from the source while receiving: %r" % sorted(body))
    finally:
        digests = receiver.digests()
        receiver.close()
    raw = body["metadata"].encode("utf-8")
    metadata, problems = integrity.parse_metadata(raw)
    if metadata is None:
        raise restored_.refusal(staging.loc.path, problems)
    signature = body.get("signature")
    problems = integrity.signature_problems(None if signature is None else signature.encode("ascii"), metadata, key,
                                            bool(key), False)
    problems += integrity.received_problems(metadata, digests)
    if problems:
        raise restored_.refusal(staging.loc.path, problems)
    seal_.seal(staging, metadata, key, durable=False)
    return metadata


def _accept_pages(listener: socket.socket, timeout: float) -> socket.socket:
    """The source's page relay: one connection, from root (the directory is root-only; checked anyway)."""
    listener.settimeout(timeout)
    try:
        conn, _addr = listener.accept()
    except socket.timeout:
        raise CriuError("The source's page relay did not connect within %ss." % timeout) from None
    uid = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    if int.from_bytes(uid[4:8], sys.byteorder) != 0:
        conn.close()
        raise CriuError("A process that is not root connected to the page socket; refusing it.")
    conn.setblocking(True)
    return conn


def _restore(ctx: Context, journal: Journal, runtime: CriuRuntime, opened: store.Checkpoint, metadata: t.Mapping[str, t.Any],
             page_conn: t.Optional[socket.socket], stack: contextlib.ExitStack) -> t.Tuple[int, t.Optional[Daemon]]:
    """Restore the verified checkpoint: stopped (copy), or running with its memory still at the source (post-copy,
    the lazy-pages fetcher and its work directory then live as long as ``stack``)."""
    problems = host.restore_problems(metadata) + reopen.problems(opened.images_fd)
    if problems:
        raise CriuError("Cannot restore %s on this host: %s." % (opened.path, listed(problems)), problems=problems)
    return kinds.of(metadata).land(ctx, journal, runtime, opened, metadata, page_conn, stack)


def receive(channel: wire.Channel, request: t.Mapping[str, t.Any]) -> None:
    ctx = Context(request)
    ctx.source_fd = channel.read_fd
    key = ctx.key
    link_timeout = float(request["link_timeout"])
    with store.location(ctx.checkpoint_path) as loc, store.Lock(loc, ctx.timeout):
        previous = ctx.journal()
        if previous is not None and previous.get("outcome") in (None, "in_doubt"):
            raise CriuError("Another migration of %s (id %s) is unfinished here, in phase %s: its copy may be here. "
                            "Rerun the migration that started it to resolve it first (journal: %s)."
                            % (ctx.name, previous.get("id"), previous.phase, previous.path))
        journal = Journal.create(ctx.dir_fd, ctx.directory, ctx.name, "receiving", id=ctx.id, role="target", outcome=None,
                                 mode=request["mode"], source=request.get("source"), tree=None, criu=None)
        listener = None
        try:
            store.remove_litter(loc)
            problem = store.replace_problem(loc)
            if problem:
                raise CriuError("Cannot receive into %s: %s" % (loc.path, problem))
            if request["mode"] == "postcopy":
                listener = _listen(ctx)
            # Everything that needs no images is done before the source freezes anything.
            host.require_privileges()
            runtime = CriuRuntime.load(None)
            ctx.prepared = kinds.of(request).prepare_landing(request, ctx.timeout)
            channel.send(ready=True, pages_socket=os.path.join(ctx.directory, pages_socket_name(ctx.name)) if listener else None,
                         free_bytes=store.free_bytes(ctx.dir_fd))
            staging = store.Staging(loc)
            try:
                metadata = _receive_images(channel, staging, request, key, link_timeout)
                staging.publish(durable=False)
            finally:
                staging.remove()
            # The agent's own start: any process with a later start time that criu's pidfile names is this restore's.
            own = procfs.read_stat(os.getpid())
            if own is None:  # (Linux always lets a process read its own stat; without it no abort could be sure)
                raise CriuError("Cannot read /proc/%d/stat, this restore agent's own start time." % os.getpid())
            journal.record("received", checkpoint_id=metadata["id"], restore_started_ticks=own.starttime)
            channel.send(verified=True)
            page_conn = _accept_pages(listener, link_timeout) if listener else None
            with store.open_checkpoint(loc) as opened, contextlib.ExitStack() as stack:
                pid, fetcher = _restore(ctx, journal, runtime, opened, metadata, page_conn, stack)
                tree = procfs.tree_identity(pid)
                journal.record("restored", tree=tree, restored_at=procfs.utc_now())
                if tree:  # also beside the checkpoint: an abort finds the copy by it should this journal be lost
                    restored_.save_record(opened.fd, restored_.restore_record(
                        metadata["id"], pid, journal.get("restored_at"), starttime=tree[0][1], tree=tree, migration_id=ctx.id), ctx.key)
                since = journal.get("running_since")
                channel.send(restored=True, pid=pid, running_for=None if since is None else time.monotonic() - since)
                if fetcher is not None:
                    try:
                        pages = CriuRuntime.finish_lazy_pages(fetcher, ctx.timeout)
                    except CriuError:
                        procfs.wait_gone(procfs.signal_identified(journal.get("tree"), signal.SIGKILL), timeout=10)
                        raise
                    journal.record("pages_complete", lazy_pages=pages)
                    channel.send(complete=True, pages=pages)
        except wire.LinkError as exc:
            if journal.phase in VOTED:
                journal.record(journal.phase, outcome="in_doubt", error="lost the source after voting (%s)" % exc)
                return
            abort(ctx, journal, "lost the source (%s)" % exc)
            raise
        except (CriuError, OSError) as exc:
            # Before the vote, or a post-copy copy whose pages did not all arrive: it must not live.
            abort(ctx, journal, getattr(exc, "msg", None) or str(exc))
            if isinstance(exc, CriuError):
                exc.msg = exc.msg.replace(os.path.join(ctx.checkpoint_path, store.RESTORE_LOG),
                                          os.path.join(ctx.directory, failed_log_name(ctx.name)))
            raise
        finally:
            if listener is not None:
                listener.close()
        _await_decision(ctx, journal, channel, link_timeout=float(request["decision_timeout"]))


def _listen(ctx: Context) -> socket.socket:
    name = pages_socket_name(ctx.name)
    try:
        os.unlink(name, dir_fd=ctx.dir_fd)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(ctx.directory, name))
    listener.listen(1)
    return listener


def _await_decision(ctx: Context, journal: Journal, channel: wire.Channel, link_timeout: float) -> None:
    """Voted: wait for the source's decision. Losing the source now leaves us in doubt, never guessing."""
    try:
        decision = channel.message(link_timeout)
    except wire.LinkError as exc:
        journal.record(journal.phase, outcome="in_doubt", error="lost the source before its decision (%s)" % exc)
        return
    if decision.get("decision") == "commit":
        channel.send(**commit(ctx, journal, decision))
    else:
        abort(ctx, journal, decision.get("reason") or "the source aborted")
        channel.send(done="aborted")


def resolve(channel: wire.Channel, request: t.Mapping[str, t.Any]) -> None:
    """Tell this host the outcome the source decided (commit or abort), or ask it where it stands (query)."""
    ctx = Context(request)
    with store.location(ctx.checkpoint_path) as loc, store.Lock(loc, ctx.timeout):
        journal = ctx.journal()
        if journal is not None and journal.get("id") == ctx.id and journal.get("role") != "target":
            # The same migration's source journal (a run in the other direction under its name sent this): never
            # the decision of this host's own migration.
            channel.send(state="not_target", error="this host is the source of migration %s (id %s), not its target"
                         % (ctx.name, ctx.id))
            return
        if journal is None or journal.get("id") != ctx.id:
            if journal is None and request["decision"] == "abort":
                _abort_unjournaled(ctx, loc)
            channel.send(state="absent", other=None if journal is None else {"id": journal.get("id"), "phase": journal.phase})
            return
        decision = request["decision"]
        if journal.get("outcome") in ("completed", "aborted"):
            channel.send(state=NEVER_RAN if journal.get("never_ran") else journal.get("outcome"), phase=journal.phase)
            return
        if decision == "query":
            channel.send(state=_query(journal), phase=journal.phase, tree_alive=procfs.alive_identified(journal.get("tree") or []))
            return
        if decision == "commit" and journal.phase in VOTED[:3]:
            # A recovery's commit carries what the source's decision would have: the pidfile and the clean-up.
            done = commit(ctx, journal, dict(journal.data, **{key: request[key] for key in ("pidfile", "cleanup") if key in request}))
            channel.send(state="completed" if done["done"] == "completed" else NEVER_RAN, **done)
            return
        if decision == "commit":
            channel.send(state=_query(journal), phase=journal.phase, error="the target never restored this migration's copy")
            return
        abort(ctx, journal, "the source decided to abort")
        channel.send(state="aborted", phase=journal.phase)


def _abort_unjournaled(ctx: Context, loc: store.Location) -> None:
    """An abort for a migration whose journal is gone from here (deleted, a disk replaced) while its copy may still
    be here, stopped: the restore record beside its checkpoint names the copy (pid and start time) and the migration;
    when it is this migration's (and signed with its key, when there is one), the copy is killed and the checkpoint
    removed."""
    opened = store.Checkpoint.open(loc)
    if opened is None:
        return
    try:
        record = restored_.signed_record(opened.read(store.RESTORED), ctx.key)
    finally:
        opened.close()
    if record is None or record.get("migration_id") != ctx.id or record.get("boot_id") != procfs.boot_id():
        return
    procfs.wait_gone(procfs.signal_identified(record.get("tree") or [], signal.SIGKILL), timeout=10)
    _remove_checkpoint(ctx, keep_log=True)


def _query(journal: Journal) -> str:
    """Where a migration stands here without acting: for post-copy, whether every page arrived."""
    if journal.phase == "restored" and journal.get("mode") == "postcopy":
        counts = criulog.lazy_page_counts(journal.get("lazy_log") or "")
        if counts and all(done == wanted for done, wanted in counts) and procfs.alive_identified(journal.get("tree") or []):
            journal.record("pages_complete", lazy_pages=sum(wanted for _done, wanted in counts))
            return "pages_complete"
        return "restored_incomplete"
    return journal.phase


def preflight(channel: wire.Channel, request: t.Mapping[str, t.Any]) -> None:
    """Everything the source must know before it freezes anything. It only looks: a preflight (and so a check-mode
    migration) creates nothing here, not even the migration directory."""
    timeout = float(request["timeout"])
    opened = store.open_existing_dir(request["migrate_dir"], "Migration directory")
    journal = None
    if opened is None:
        free = store.free_bytes_for(request["migrate_dir"])
    else:
        dir_fd, directory = opened
        try:
            journal = Journal.load(dir_fd, directory, request["name"])
            free = store.free_bytes(dir_fd)
        finally:
            os.close(dir_fd)
    can, why = host.can_checkpoint()
    channel.send(
        criu=host.criu_facts(None, timeout), arch=os.uname().machine, can_restore=can, privilege_problem=why,
        free_bytes=free, hash_algorithms=integrity.available_algorithms(),
        journal=None if journal is None else {"id": journal.get("id"), "phase": journal.phase, "outcome": journal.get("outcome")},
        python=sys.version.split()[0], workload=kinds.of(request).target_preflight(request, can),
    )


def load_image(channel: wire.Channel, request: t.Mapping[str, t.Any]) -> None:
    """Take a container image the source saved (a docker-archive, which keeps the image's id) and load it; it must
    then be here under the id the source asked for."""
    ctx = Context(request)
    name = image_archive_name(ctx.name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=ctx.dir_fd)
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE, dir_fd=ctx.dir_fd)
    try:
        channel.send(ready=True, free_bytes=store.free_bytes(ctx.dir_fd))
        while True:
            kind, body = channel.receive(float(request["link_timeout"]))
            if kind == wire.MESSAGE:
                break
            _name, offset, view = body
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        if not body.get("sealed"):
            raise CriuError("The source stopped sending the image: %s" % (body.get("reason") or "no reason given"))
        kinds.of(request).load_image(request, fd, ctx.timeout)
    finally:
        os.close(fd)
        os.unlink(name, dir_fd=ctx.dir_fd)
    channel.send(loaded=True)


def relay(_channel: wire.Channel, request: t.Mapping[str, t.Any]) -> None:
    """Join this ssh session's stdin/stdout to the receiving agent's root-only page socket, byte for byte."""
    ctx = Context(request)
    path = os.path.join(ctx.directory, pages_socket_name(ctx.name))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    os.write(1, RELAY_READY)
    pairs = {0: sock.fileno(), sock.fileno(): 1}
    while pairs:
        for fd in select.select(list(pairs), [], [])[0]:
            data = os.read(fd, RELAY_BUFFER)
            if not data:
                if fd == 0:
                    sock.shutdown(socket.SHUT_WR)
                else:
                    os.close(1)
                del pairs[fd]
                continue
            view = memoryview(data)
            while view:
                view = view[os.write(pairs[fd], view):]


COMMANDS = {"preflight": preflight, "receive": receive, "resolve": resolve, "relay": relay, "load_image": load_image}


def main() -> None:
    """Entry point of the agent (see _remote.BOOTSTRAP): one request from stdin, answers on stdout."""
    channel = wire.Channel(0, 1)
    sys.stdout = sys.stderr  # stdout carries frames only: a stray print must not corrupt them
    try:
        request = channel.message(timeout=120)
        COMMANDS[request["cmd"]](channel, request)
    except wire.LinkError:
        raise SystemExit(1) from None
    except CriuError as exc:
        _report(channel, exc.msg, {k: v for k, v in exc.details.items() if isinstance(v, (str, int, float, list, type(None)))})
    except Exception as exc:  # pylint: disable=broad-exception-caught
        traceback.print_exc()
        _report(channel, "Unexpected %s on the target: %s" % (type(exc).__name__, exc), {})


def _report(channel: wire.Channel, message: str, details: t.Dict[str, t.Any]) -> None:
    try:
        channel.send(error=message, details=details)
    except wire.LinkError:
        pass
    raise SystemExit(1)
