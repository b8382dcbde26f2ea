# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CriuRuntime: the one way this collection runs criu dump, restore and check.

argv lists only (never a shell), the validated binary's real path, no configuration file and
a fixed minimal environment, directories handed over as fds that were checked, files created
0600, a timeout on every run, CRIU's log kept, and success judged by exit code plus the log's
success line and inventory.img; failures carry the log path and the last real ``Error`` lines.
"""

from __future__ import annotations

import contextlib
import enum
import os
import subprocess
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criulog as criulog
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

# What becomes of the tree once dumped: dump-only flags (the criu options themselves are in _options).
DUMP_ONLY_FLAGS = {
    "leave_running": "--leave-running",
    "leave_stopped": "--leave-stopped",
}
HEALTH_DELAY = 0.1
PAGE_SERVER_READY = "Reusing ps socket"
LAZY_PAGES_READY = "Waiting for incoming connections"
RESTORE_PIDFILE = "restore.pid"
READY_TAIL_BYTES = 64 * 1024
DAEMON_POLL = 0.005


class State(enum.Enum):
    NONE = "none"
    DUMPING = "dumping"
    DUMPED = "dumped"
    RESTORING = "restoring"
    RESTORED = "restored"


TRANSITIONS = {
    State.NONE: (State.DUMPING, State.RESTORING),
    State.DUMPING: (State.DUMPED, State.NONE),
    State.RESTORING: (State.RESTORED, State.NONE),
    State.DUMPED: (),
    State.RESTORED: (),
}


def can_transition(current: State, target: State) -> bool:
    return target in TRANSITIONS[current]


def option_argv(options: t.Mapping[str, t.Any], flags: t.Mapping[str, str]) -> t.List[str]:
    """criu flags for the boolean options that are on."""
    return [flag for name, flag in flags.items() if options.get(name)]


def external_unix_argv(inodes: t.Sequence[int]) -> t.List[str]:
    """criu flags marking unix sockets (by inode) as external to the dumped tree."""
    argv: t.List[str] = []
    for inode in inodes:
        argv += ["--external", "unix[%d]" % int(inode)]
    return argv


class Dir(t.NamedTuple):
    """A directory criu works in: the fd it is handed (checked by the caller) and its path, for messages and logs."""
    fd: int
    path: str

    @property
    def for_criu(self) -> str:
        """criu opens this path, which is the fd itself (passed to criu under the same number)."""
        return "/proc/self/fd/%d" % self.fd

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)


class Run(t.NamedTuple):
    duration: float
    log_path: str
    criu_stats: t.Dict[str, t.Any] = {}  # criu's own statistics file, when it could be read


class Daemon(t.NamedTuple):
    """A criu still running after it became ready: the post-copy page server or lazy-pages fetcher."""
    proc: subprocess.Popen
    startup: float
    log_path: str

    def stop(self) -> None:
        """Kill it and everything under it, then reap it. Once reaped its pid may be reused, so it is only
        signalled while poll() says it is ours (a child that exits meanwhile stays a zombie until waited for)."""
        if self.proc.poll() is None:
            _kill_criu_tree(self.proc.pid)
        self.proc.wait()


def _kill_criu_tree(criu_pid: int) -> None:
    """Kill criu and everything under it: a hung restore (e.g. truncated pages) leaves a spinning task there,
    and any helper still holding criu's stderr would keep us waiting."""
    procfs.wait_gone(procfs.kill_tree(criu_pid), timeout=5)


class CriuRuntime:
    """A validated criu binary and the state of the one operation this instance performs."""

    def __init__(self, path: str, version: t.Tuple[int, int, int]) -> None:
        self.path = path
        self.version = version
        self.state = State.NONE
        # Called with each criu's pid as soon as it runs: a migration journals it, so a recovery can find it.
        self.on_spawn: t.Optional[t.Callable[[int], None]] = None

    @classmethod
    def load(cls, criu_path: t.Optional[str] = None) -> CriuRuntime:
        """Discover and validate criu, refusing a version older than 4.2."""
        path = binary.discover(criu_path)
        version = binary.probe_version(path)
        binary.require_supported(version, path)
        return cls(path, version)

    @property
    def version_string(self) -> str:
        return binary.format_version(self.version)

    def identity(self) -> t.Dict[str, str]:
        """The criu a checkpoint's metadata names as the one that dumped it."""
        return {"path": self.path, "version": self.version_string}

    def _transition(self, target: State) -> None:
        if not can_transition(self.state, target):
            raise CriuError("Internal error: CRIU state cannot go from %s to %s." % (self.state.value, target.value))
        self.state = target

    def _command(self, action: str, argv: t.List[str], work: Dir) -> t.List[str]:
        """criu's argv: no configuration file, and plugins only from its work directory, which is ours and holds
        none (criu loads every .so in its plugin directory, /usr/lib/criu by default, into itself as root)."""
        return [self.path, action, binary.NO_DEFAULT_CONFIG, "--work-dir", work.for_criu, "--libdir", work.for_criu,
                "--log-file", "%s.log" % action, "-v4"] + argv

    def _spawn(self, full: t.List[str], stderr: int, fds: t.Sequence[int]) -> subprocess.Popen:
        """Start criu in a session of its own (neither a lost connection's SIGHUP nor our exit reaches it), with
        only ``fds`` inherited, nothing of our environment, and files it creates readable by root alone."""
        try:
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                    close_fds=True, pass_fds=tuple(fds), start_new_session=True,
                                    env=binary.ENVIRONMENT, umask=0o077)
        except OSError as exc:
            raise CriuError("Cannot execute %s: %s. %s" % (self.path, exc.strerror, binary.INSTALL_HINT), path=self.path) from exc
        if self.on_spawn is not None:
            try:
                self.on_spawn(proc.pid)
            except BaseException:
                _kill_criu_tree(proc.pid)
                proc.wait()
                raise
        return proc

    @staticmethod
    def _failure(action: str, returncode: int, log_path: str, stderr: bytes = b"") -> CriuError:
        """criu failed: its exit code, the log's real errors and the remedies we know for them."""
        errors = criulog.error_lines(criulog.read_tail(log_path))
        remedies = criulog.hints(errors)
        return CriuError(
            "criu %s failed (exit code %d). %s%sLog: %s. Last errors: %s"
            % (action, returncode, " ".join(remedies), " " if remedies else "", log_path,
               " | ".join(errors) or stderr.decode("utf-8", "replace").strip()[-500:] or "none"),
            log=log_path, errors=errors, rc=returncode,
        )

    @staticmethod
    def _timed_out(action: str, criu_pid: int, timeout: float, log_path: str) -> CriuError:
        _kill_criu_tree(criu_pid)
        return CriuError(
            "criu %s did not finish within %ss and was killed. See %s; raise timeout if the workload is large."
            % (action, timeout, log_path),
            log=log_path, errors=criulog.error_lines(criulog.read_tail(log_path)), timed_out=True,
        )

    def _run(self, action: str, argv: t.List[str], work: Dir, fds: t.Sequence[int], timeout: float) -> Run:
        """Run criu ``action``; raise CriuError with the log's explanation unless it succeeded."""
        log_path = work.file("%s.log" % action)
        started = time.monotonic()
        proc = self._spawn(self._command(action, argv, work), subprocess.PIPE, (work.fd,) + tuple(fds))
        try:
            stderr = proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            error = self._timed_out(action, proc.pid, timeout, log_path)
            proc.kill()
            proc.communicate()
            raise error from None  # (the error says it timed out)
        duration = time.monotonic() - started
        if proc.returncode == 0 and criulog.succeeded(criulog.read_tail(log_path), action):
            return Run(duration, log_path)
        raise self._failure(action, proc.returncode, log_path, stderr)

    def _start_daemon(self, action: str, argv: t.List[str], work: Dir, fds: t.Sequence[int], ready: str,
                      timeout: float) -> Daemon:
        """Start a criu that keeps serving after this call (post-copy); return once its log shows ``ready``."""
        log_path = work.file("%s.log" % action)
        started = time.monotonic()
        # No pipe: the daemon may outlive its caller, and writing to a closed pipe would kill it.
        proc = self._spawn(self._command(action, argv, work), subprocess.DEVNULL, (work.fd,) + tuple(fds))
        deadline = started + timeout
        while ready not in criulog.read_tail(log_path, READY_TAIL_BYTES):
            if proc.poll() is not None:
                raise self._failure(action, proc.returncode, log_path)
            if time.monotonic() > deadline:
                error = self._timed_out(action, proc.pid, timeout, log_path)
                proc.wait()
                raise error
            time.sleep(DAEMON_POLL)
        return Daemon(proc, time.monotonic() - started, log_path)

    def _dump_argv(self, pid: int, images: Dir, options: t.Mapping[str, t.Any], external_unix: t.Sequence[int] = ()) -> t.List[str]:
        return ["--tree", str(pid), "--images-dir", images.for_criu] + option_argv(options, DUMP_ONLY_FLAGS) + \
            criu_options.argv(options, "dump") + external_unix_argv(external_unix)

    @staticmethod
    def _require_inventory(images: Dir, log_path: str) -> None:
        try:
            os.stat("inventory.img", dir_fd=images.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise CriuError("criu dump reported success but wrote no inventory.img. Log: %s" % log_path, log=log_path) from None

    @contextlib.contextmanager
    def _dumping(self) -> t.Iterator[None]:
        """DUMPING while the block runs; DUMPED when it succeeds, back to NONE when it raises CriuError."""
        self._transition(State.DUMPING)
        try:
            yield
        except CriuError:
            self._transition(State.NONE)
            raise
        self._transition(State.DUMPED)

    def dump(self, pid: int, images: Dir, work: Dir, options: t.Mapping[str, t.Any], timeout: float,
             external_unix: t.Sequence[int] = ()) -> Run:
        """Dump the tree rooted at ``pid``; a dump without inventory.img is a failure whatever criu said.
        ``external_unix``: inodes of unix sockets the tree holds whose peers are outside it (a service's stream to
        journald), dumped as external: a restore must hand criu a socket for each (inherit_sockets)."""
        with self._dumping():
            run = self._run("dump", self._dump_argv(pid, images, options, external_unix), work, (images.fd,), timeout)
            self._require_inventory(images, run.log_path)
        return run

    def start_lazy_dump(self, pid: int, images: Dir, work: Dir, options: t.Mapping[str, t.Any],
                        page_socket: int, timeout: float, external_unix: t.Sequence[int] = ()) -> Daemon:
        """Post-copy dump: write every image but the lazy pages, then serve those over ``page_socket``, a connected
        socket whose other end only the target's criu lazy-pages reaches. Returns once the page server runs;
        criu keeps the tree frozen and serving until the pages are fetched or it is stopped."""
        argv = self._dump_argv(pid, images, options, external_unix) + ["--lazy-pages", "--ps-socket", str(page_socket)]
        with self._dumping():
            daemon = self._start_daemon("dump", argv, work, (images.fd, page_socket), PAGE_SERVER_READY, timeout)
            self._require_inventory(images, daemon.log_path)
        return daemon

    def start_lazy_pages(self, images: Dir, work: Dir, page_socket: int, timeout: float) -> Daemon:
        """The target's end of post-copy: fetch pages over ``page_socket`` from the source's page server."""
        argv = ["--page-server", "--ps-socket", str(page_socket), "--images-dir", images.for_criu]
        return self._start_daemon("lazy-pages", argv, work, (images.fd, page_socket), LAZY_PAGES_READY, timeout)

    def restore(self, images: Dir, work: Dir, options: t.Mapping[str, t.Any], timeout: float,
                lazy: bool = False, leave_stopped: bool = False, pidfile: t.Optional[str] = None) -> t.Tuple[int, Run]:
        """Restore detached (``lazy``: memory from a running lazy-pages daemon; ``leave_stopped``: the tree stays
        stopped until SIGCONT; ``pidfile``: where criu writes the new pid, default its work dir); on timeout kill
        criu AND the tree it was restoring, so nothing is orphaned."""
        self._transition(State.RESTORING)
        pidfile = pidfile or work.file(RESTORE_PIDFILE)
        argv = ["--images-dir", images.for_criu, "--restore-detached", "--pidfile", pidfile]
        argv += criu_options.argv(options, "restore") + (["--lazy-pages"] if lazy else []) + (["--leave-stopped"] if leave_stopped else [])
        try:
            run = self._run("restore", argv, work, (images.fd,), timeout)
            with open(pidfile) as handle:
                pid = procfs.parse_pidfile(handle.read())
            if pid is None:
                raise CriuError("criu restore succeeded but wrote no valid pidfile. Log: %s" % run.log_path, log=run.log_path)
        except (CriuError, OSError) as exc:
            self._transition(State.NONE)
            if isinstance(exc, CriuError):
                raise
            raise CriuError("criu restore wrote no pidfile (%s). Log: %s" % (exc, work.file("restore.log"))) from exc
        self._transition(State.RESTORED)
        return pid, run

    def restore_command(self, images: Dir, work: Dir, options: t.Mapping[str, t.Any], pidfile: str,
                        inherit_sockets: t.Mapping[int, int], leave_stopped: bool = False, lazy: bool = False) -> t.List[str]:
        """criu restore's argv for another process to run while this one holds ``images`` and ``work`` open (a
        service manager's ExecStart: the restored tree is then its child, in its cgroup). The directories are this
        process's fds, reached through /proc/PID/fd; ``inherit_sockets`` maps a socket inode recorded at the dump
        (external_unix) to the fd of that process which replaces it. The caller confirms the result with
        restore_finished."""
        self._transition(State.RESTORING)
        own = "/proc/%d/fd/%%d" % os.getpid()
        argv = [self.path, "restore", binary.NO_DEFAULT_CONFIG, "--work-dir", own % work.fd, "--libdir", own % work.fd,
                "--log-file", "restore.log", "-v4", "--images-dir", own % images.fd, "--restore-detached", "--pidfile", pidfile]
        for inode, fd in sorted(inherit_sockets.items()):
            argv += ["--inherit-fd", "fd[%d]:socket:[%d]" % (int(fd), int(inode))]
        return argv + criu_options.argv(options, "restore") + (["--lazy-pages"] if lazy else []) + (["--leave-stopped"] if leave_stopped else [])

    def restore_finished(self, work: Dir, returncode: int) -> Run:
        """The end of a restore another process ran (restore_command): raise with criu's log unless it succeeded."""
        log_path = work.file("restore.log")
        if returncode == 0 and criulog.succeeded(criulog.read_tail(log_path), "restore"):
            self._transition(State.RESTORED)
            return Run(0.0, log_path)
        self._transition(State.NONE)
        raise self._failure("restore", returncode, log_path)

    @staticmethod
    def finish_lazy_pages(daemon: Daemon, timeout: float) -> int:
        """Wait until lazy-pages has fetched every page of the restored tree; returns their number. Its exit code alone
        proves nothing, since a page server that vanished looks like a clean end; only fetched == total does."""
        try:
            returncode = daemon.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            error = CriuRuntime._timed_out("lazy-pages", daemon.proc.pid, timeout, daemon.log_path)
            daemon.proc.wait()
            raise error from None  # (the error says it timed out)
        counts = criulog.lazy_page_counts(daemon.log_path)
        fetched, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if returncode == 0 and counts and all(done == wanted for done, wanted in counts):
            return total
        errors = criulog.error_lines(criulog.read_tail(daemon.log_path))
        progress = "fetched %d of %d pages" % (fetched, total) if counts else "stopped before every page had arrived"
        raise CriuError(
            "Post-copy failed: criu lazy-pages %s (exit code %d); the source's page server or the link to it went away. "
            "Log: %s. Last errors: %s" % (progress, returncode, daemon.log_path, " | ".join(errors) or "none"),
            log=daemon.log_path, errors=errors, rc=returncode, pages_fetched=fetched, pages_total=total,
        )

    def check(self, *feature: str, timeout: float = 60) -> t.Tuple[bool, str]:
        """``criu check`` (rc 0: this kernel supports what dump and restore need), or with a feature name
        (e.g. mem_dirty_track, uffd-noncoop) ``criu check --feature NAME``; returns (passed, output)."""
        argv = [self.path, "check", binary.NO_DEFAULT_CONFIG] + (["--feature"] + list(feature) if feature else [])
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False,
                                  env=binary.ENVIRONMENT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        return proc.returncode == 0, (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
