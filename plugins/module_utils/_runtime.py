# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CriuRuntime: the one way this collection runs criu dump, restore and check.

argv lists only (never a shell), a timeout on every run, CRIU's log kept, and success
judged by exit code plus the log's success line and inventory.img; failures carry the
log path and the last real ``Error`` lines.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import tempfile
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils import _criulog as criulog
from ansible_collections.nucleus.criu.plugins.module_utils import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

# Options recorded at dump that restore must repeat, as criu flags.
SHARED_FLAGS = {
    "tcp_established": "--tcp-established",
    "ext_unix_sk": "--ext-unix-sk",
    "file_locks": "--file-locks",
    "shell_job": "--shell-job",
}
DUMP_ONLY_FLAGS = {
    "leave_running": "--leave-running",
    "leave_stopped": "--leave-stopped",
}
HEALTH_DELAY = 0.1


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


class Run(t.NamedTuple):
    duration: float
    log_path: str


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

    @classmethod
    def load(cls, criu_path: t.Optional[str] = None) -> "CriuRuntime":
        """Discover and validate criu, refusing a version older than 4.2."""
        path = binary.discover(criu_path)
        version = binary.probe_version(path)
        binary.require_supported(version, path)
        return cls(path, version)

    @property
    def version_string(self) -> str:
        return binary.format_version(self.version)

    def _transition(self, target: State) -> None:
        if not can_transition(self.state, target):
            raise CriuError("Internal error: CRIU state cannot go from %s to %s." % (self.state.value, target.value))
        self.state = target

    def _run(self, action: str, argv: t.List[str], work_dir: str, timeout: float) -> Run:
        """Run criu ``action``; raise CriuError with the log's explanation unless it succeeded."""
        log_name = "%s.log" % action
        log_path = os.path.join(work_dir, log_name)
        full = [self.path, action, "--work-dir", work_dir, "--log-file", log_name, "-v4"] + argv
        started = time.monotonic()
        try:
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    close_fds=True, start_new_session=True)
        except OSError as exc:
            raise CriuError("Cannot execute %s: %s. %s" % (self.path, exc.strerror, binary.INSTALL_HINT), path=self.path) from exc
        try:
            stderr = proc.communicate(timeout=timeout)[1]
        except subprocess.TimeoutExpired:
            _kill_criu_tree(proc.pid)
            proc.kill()
            proc.communicate()
            raise CriuError(
                "criu %s did not finish within %ss and was killed. See %s; raise timeout if the workload is large."
                % (action, timeout, log_path),
                log=log_path, errors=criulog.error_lines(criulog.read_tail(log_path)), timed_out=True,
            )
        duration = time.monotonic() - started
        text = criulog.read_tail(log_path)
        if proc.returncode == 0 and criulog.succeeded(text, action):
            return Run(duration, log_path)
        errors = criulog.error_lines(text)
        remedies = criulog.hints(errors)
        raise CriuError(
            "criu %s failed (exit code %d). %s%sLog: %s. Last errors: %s"
            % (action, proc.returncode, " ".join(remedies), " " if remedies else "", log_path,
               " | ".join(errors) or stderr.decode("utf-8", "replace").strip()[-500:] or "none"),
            log=log_path, errors=errors, rc=proc.returncode,
        )

    def dump(self, pid: int, images_dir: str, work_dir: str, options: t.Mapping[str, t.Any], timeout: float) -> Run:
        """Dump the tree rooted at ``pid``; a dump without inventory.img is a failure whatever criu said."""
        self._transition(State.DUMPING)
        argv = ["--tree", str(pid), "--images-dir", images_dir]
        argv += option_argv(options, dict(DUMP_ONLY_FLAGS, **SHARED_FLAGS))
        if options.get("network_lock"):
            # Restore reuses the method recorded in the images, so only dump takes it.
            argv += ["--network-lock", options["network_lock"]]
        try:
            run = self._run("dump", argv, work_dir, timeout)
            if not os.path.isfile(os.path.join(images_dir, "inventory.img")):
                raise CriuError("criu dump reported success but wrote no inventory.img. Log: %s" % run.log_path, log=run.log_path)
        except CriuError:
            self._transition(State.NONE)
            raise
        self._transition(State.DUMPED)
        return run

    def restore(self, images_dir: str, work_dir: str, options: t.Mapping[str, t.Any], timeout: float) -> t.Tuple[int, Run]:
        """Restore detached; on timeout kill criu AND the tree it was restoring, so nothing is orphaned."""
        self._transition(State.RESTORING)
        pid_dir = tempfile.mkdtemp(prefix="nucleus-criu-restore-")
        pidfile = os.path.join(pid_dir, "pid")
        argv = ["--images-dir", images_dir, "--restore-detached", "--pidfile", pidfile]
        argv += option_argv(options, SHARED_FLAGS)
        try:
            run = self._run("restore", argv, work_dir, timeout)
            with open(pidfile, "r") as handle:
                pid = procfs.parse_pidfile(handle.read())
            if pid is None:
                raise CriuError("criu restore succeeded but wrote no valid pidfile. Log: %s" % run.log_path, log=run.log_path)
        except (CriuError, OSError) as exc:
            self._transition(State.NONE)
            if isinstance(exc, CriuError):
                raise
            raise CriuError("criu restore wrote no pidfile (%s). Log: %s" % (exc, os.path.join(work_dir, "restore.log"))) from exc
        finally:
            shutil.rmtree(pid_dir, ignore_errors=True)
        self._transition(State.RESTORED)
        return pid, run

    def check(self, *feature: str, timeout: float = 60) -> t.Tuple[bool, str]:
        """``criu check`` (rc 0: this kernel supports what dump and restore need), or with a feature name
        (e.g. mem_dirty_track, uffd-noncoop) ``criu check --feature NAME``; returns (passed, output)."""
        argv = [self.path, "check"] + (["--feature"] + list(feature) if feature else [])
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, str(exc)
        return proc.returncode == 0, (proc.stdout + proc.stderr).decode("utf-8", "replace").strip()
