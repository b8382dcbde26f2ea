# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker: the protocol itself, from a "prepared" journal to a decision. It freezes the workload (through its
kind), streams the images to the target's agent while they are written, has the target verify, restore and vote,
and commits; any failure goes to recovery."""

from __future__ import annotations

import os
import time
import traceback
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _target as target_
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _wire as wire
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.storage._failpoint import failpoint
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import Daemon
from ansible_collections.nucleus.criu.plugins.module_utils.migration._recovery import cleanup_source, end_source, never_ran, resolve
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings


PROGRESS_EVERY = 0.25

SEND_CHUNK = 4 * 1024 * 1024


def send_rest(images_fd: int, hashed: t.Dict[str, integrity.FileDigest], algorithm: str,
              send: t.Callable[[str, int, memoryview, int], None]) -> t.Dict[str, integrity.FileDigest]:
    """Images criu wrote in one go (not followed while it wrote): hash and send each in one pass. An empty image,
    followed or not, goes as one empty chunk, so that the target creates it too: criu writes empty images (the
    iptables-N.img of a network namespace without rules, from iptables-save) and the manifest lists them."""
    buffer = bytearray(SEND_CHUNK)
    view = memoryview(buffer)
    for name in integrity.list_images(images_fd):
        if name in hashed:
            if hashed[name].size == 0:
                send(name, 0, memoryview(b""), -1)
            continue
        fd = integrity.open_image(images_fd, name)
        try:
            digester, offset = integrity.Digester(algorithm), 0
            while True:
                count = os.preadv(fd, [buffer], offset)
                if not count:
                    break
                digester.update(view[:count])
                send(name, offset, view[:count], fd)
                offset += count
            if offset == 0:
                send(name, 0, memoryview(b""), -1)
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

    def send_chunk(self, name: str, offset: int, data: memoryview, fd: t.Optional[int] = None) -> None:
        agent = t.cast(remote.Agent, self.agent)
        try:
            if fd is None or fd < 0 or not data:
                agent.channel.send_chunk(name, offset, data)
            else:  # the bytes just hashed, from the page cache (sendfile), not from our buffer
                agent.channel.send_file_chunk(name, offset, fd, len(data))
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
        cleanup_source(journal, s)
