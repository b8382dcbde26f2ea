# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A systemd service: its main process and that process's children, checkpointed and restored as the unit.

What makes it a unit rather than a bare process tree (measured on systemd 252 with criu 4.2.1):

- its stdout and stderr are stream sockets to journald, whose other end no dump can hold: the dump marks them
  external (``--external unix[INODE]``) and records their inodes;
- it is restored by the unit itself: a runtime drop-in makes the unit ``Type=forking`` with ``PIDFile=`` and an
  ``ExecStart=+`` that runs criu restore (``--restore-detached``), which hands the restored tree the journald stream
  systemd gave that ExecStart (``--inherit-fd fd[1]:socket:[INODE]``) and leaves it in the unit's cgroup
  (``--manage-cgroups ignore``: criu's own, which is the unit's). systemd makes the restored root its MainPID; the
  drop-in is removed afterwards, so ``systemctl restart`` starts the service as its unit file says;
- a dump that ends it ends it through systemd, so ``Restart=`` never brings it back: a runtime drop-in
  (``KillSignal=SIGKILL``, ``SuccessExitStatus=SIGKILL``, ``Restart=no``, ``ExecStop=`` cleared) and ``systemctl
  stop``, which kills the frozen tree without letting it run a single instruction; the unit ends ``inactive``;
- its cgroup must hold the main process tree and nothing else (a daemon's double-forked helper, a leftover of
  ExecStartPre): anything more is refused, named.

A migration moves it as the unit: both hosts hold it (a runtime ``Restart=no`` drop-in) from the freeze to the
decision, so that neither systemd starts a fresh copy should one die meanwhile; the source's start at boot is disabled
before the dump (journaled first; an abort enables it again) and, with ``unit_boot: move`` (the default), enabled on
the target at the commit; the target restores it as criu_restore does, stopped until the commit (copy) or running
with its memory following (post-copy), and an abort stops it there through systemd before the source runs again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _reopen as reopen
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Daemon, Dir, Run
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Found, Freezer, Landing, Metadata, Record, TargetJournal, Workload
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._process import CONTAINER_RESTORE_OPTIONS, Process, ProcessTree, freeze_tree
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _restored as restored_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils._requests import CheckpointRequest, CriuChoices, RestoreRequest, WorkloadRef

SYSTEMCTL_PATHS = ("/usr/bin/systemctl", "/bin/systemctl")
SYSTEMCTL_REMEDY = "systemctl runs as root to manage the unit: keep it and its directories root's."
RUNTIME_UNITS = "/run/systemd/system"
UNIT_CONFIG = "/etc/systemd/system"  # where systemctl enable and disable change symlinks
BOOT_LINK_DIRS = (".wants", ".requires", ".upholds")
RESTORE_DROP_IN = "50-nucleus-criu-restore.conf"
END_DROP_IN = "50-nucleus-criu-end.conf"
HOLD_DROP_IN = "50-nucleus-criu-hold.conf"
# While a migration is undecided, neither host's systemd may start the service anew should its copy die.
HOLD = ["Restart=no"]
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "ControlGroup", "Restart")
# criu options that would take the restored tree out of the cgroup systemd gave the unit.
CGROUP_OPTIONS = ("manage_cgroups", "cgroup_root")
STDIO = (1, 2)
# What the unit's Environment= could hand criu's ExecStart that changes the code it runs as root: removed.
LOADER_VARIABLES = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "LD_DEBUG", "LD_PROFILE", "GCONV_PATH",
                    "MALLOC_CONF", "GLIBC_TUNABLES")


def systemctl_path() -> str:
    """systemctl, which must be root's: it is run as root."""
    real = safepath.trusted_program(SYSTEMCTL_PATHS, "systemctl", SYSTEMCTL_REMEDY)
    if real is not None:
        return real
    raise CriuError("No systemctl on this host (looked at %s): a unit needs systemd. Checkpoint its process with pid instead."
                    % ", ".join(SYSTEMCTL_PATHS))


def systemctl(*argv: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run([systemctl_path()] + list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"})
    except subprocess.TimeoutExpired:
        raise CriuError("systemctl %s did not finish within %ss." % (" ".join(argv), timeout)) from None
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-500:]
        raise CriuError("systemctl %s failed (exit code %d): %s" % (" ".join(argv), proc.returncode, output))
    return proc


def require_unit_name(name: str) -> str:
    """A service's full name: "web" is "web.service"; only services have a main process."""
    if "/" in name or name.startswith(".") or not name or any(ch.isspace() or ch in "\\%$\"'" for ch in name):
        raise CriuError("unit %r is not a unit name: give a service, e.g. web.service." % name)
    if "." not in name:
        name += ".service"
    if not name.endswith(".service"):
        raise CriuError("unit %s is not a service: only a service has a main process to checkpoint. Give NAME.service." % name)
    return name


def show(name: str, timeout: float) -> t.Dict[str, str]:
    """The unit's properties systemd reports (PROPERTIES)."""
    out = systemctl("show", "--no-pager", "-p", ",".join(PROPERTIES), "--", name, timeout=timeout).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("LoadState") in ("not-found", "bad-setting", "error", "masked"):
        raise CriuError("Unit %s is %s on this host (systemctl status %s says why)." % (name, props.get("LoadState"), name))
    return props


def main_pid(props: t.Mapping[str, str]) -> int:
    try:
        return int(props.get("MainPID") or 0)
    except ValueError:
        return 0


def _cgroup_path(pid: int) -> t.Optional[str]:
    """A process's cgroup as systemd names it: the name=systemd hierarchy (hybrid, legacy), else the unified one."""
    try:
        with open("/proc/%d/cgroup" % pid) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    paths = dict((line.split(":", 2)[1], line.split(":", 2)[2]) for line in lines if line.count(":") >= 2)
    return paths.get("name=systemd", paths.get(""))


def cgroup_members(control_group: str) -> t.List[int]:
    """Every process in ``control_group`` or below it."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            path = _cgroup_path(int(entry))
            if path is not None and (path == control_group or path.startswith(control_group.rstrip("/") + "/")):
                members.append(int(entry))
    return sorted(members)


def refuse_extras(name: str, control_group: str, tree: t.Sequence[int]) -> None:
    """The unit's cgroup must hold the main process tree alone: a process outside it would run on untouched (or be
    killed with the unit) and never be restored."""
    extras = [pid for pid in cgroup_members(control_group) if pid not in set(tree)]
    if extras:
        named = ["pid %d (%s)" % (pid, st.comm if st else "?") for pid, st in ((pid, procfs.read_stat(pid)) for pid in extras)]
        raise CriuError("Unit %s holds processes outside its main process tree (%s): %s. A checkpoint would leave them behind. "
                        "Make the service keep every process under its main process, or stop them first."
                        % (name, ", ".join(str(pid) for pid in tree), listed(named)), unit=name, extra_pids=extras)


def stdio_sockets(pid: int) -> t.Dict[str, int]:
    """The socket inodes the main process's stdout and stderr are (journald's streams), by fd."""
    found: t.Dict[str, int] = {}
    for fd in STDIO:
        try:
            target = os.readlink("/proc/%d/fd/%d" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            found[str(fd)] = int(target[len("socket:["):-1])
    return found


def inherit_map(stdio: t.Mapping[str, int]) -> t.Dict[int, int]:
    """Which fd of criu's ExecStart (the unit's fresh stdout and stderr) replaces each recorded stream."""
    mapping: t.Dict[int, int] = {}
    for fd in STDIO:
        inode = stdio.get(str(fd))
        if inode is not None and inode not in mapping:
            mapping[int(inode)] = fd
    return mapping


def quote_exec(argv: t.Sequence[str]) -> str:
    """A command line as a unit file's Exec*= reads it."""
    quoted = []
    for arg in argv:
        if any(ch in arg for ch in "\n\r"):
            raise CriuError("Internal error: a newline in a unit's command line.")
        arg = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
        quoted.append('"%s"' % arg)
    return " ".join(quoted)


def _drop_in_dir(name: str) -> str:
    return os.path.join(RUNTIME_UNITS, name + ".d")


def write_drop_in(name: str, file_name: str, lines: t.Sequence[str]) -> str:
    """A runtime drop-in (gone at the next boot, and removed by the caller once it served)."""
    directory = _drop_in_dir(name)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, real = safepath.open_dir(directory, "Runtime drop-in directory", SYSTEMCTL_REMEDY)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file_name, dir_fd=fd)
        out = os.open(file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
        with os.fdopen(out, "w") as handle:
            handle.write("# Written by nucleus.criu for one operation; removed when it ends.\n[Service]\n" + "\n".join(lines) + "\n")
    finally:
        os.close(fd)
    return os.path.join(real, file_name)


def remove_drop_in(name: str, file_names: t.Union[str, t.Sequence[str]], timeout: float) -> None:
    for file_name in [file_names] if isinstance(file_names, str) else file_names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_drop_in_dir(name), file_name))
    with contextlib.suppress(OSError):
        os.rmdir(_drop_in_dir(name))  # only when empty: other drop-ins stay
    systemctl("daemon-reload", timeout=timeout)


def clear_stale(name: str, timeout: float) -> None:
    """Remove this collection's drop-ins a module killed midway left behind: an end drop-in would keep Restart= off,
    and a restore drop-in names fds of a process that is gone (its pid, reused, could hold other directories)."""
    stale = [file_name for file_name in (RESTORE_DROP_IN, END_DROP_IN, HOLD_DROP_IN)
             if os.path.lexists(os.path.join(_drop_in_dir(name), file_name))]
    for file_name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_drop_in_dir(name), file_name))
    if stale:
        with contextlib.suppress(OSError):
            os.rmdir(_drop_in_dir(name))
        systemctl("daemon-reload", timeout=timeout)


def end_unit(name: str, identity: t.Sequence[t.Sequence[int]], timeout: float) -> None:
    """Stop the unit whose frozen tree was just checkpointed, so that nothing of it runs again and Restart= does not
    start it: SIGKILL straight away (the tree never runs another instruction, no ExecStop talks to it), counted as a
    clean exit, no restart. The unit is left inactive; the drop-in goes."""
    write_drop_in(name, END_DROP_IN, ["KillMode=control-group", "KillSignal=SIGKILL", "SendSIGHUP=no", "SuccessExitStatus=SIGKILL",
                                      "Restart=no", "ExecStop=", "ExecReload="])
    try:
        systemctl("daemon-reload", timeout=timeout)
        systemctl("stop", "--", name, timeout=timeout)
    finally:
        # Should systemd have failed to stop it, it is killed here while Restart=no still holds, and only then does
        # the unit get its own settings back.
        procfs.wait_gone(procfs.signal_identified(identity, signal.SIGKILL), timeout=10)
        remove_drop_in(name, (END_DROP_IN, HOLD_DROP_IN, RESTORE_DROP_IN), timeout)


def start_restored(runtime: CriuRuntime, checkpoint: store.Checkpoint, options: t.Mapping[str, t.Any], stdio: t.Mapping[str, int],
                   name: str, timeout: float, work: Dir, pidfile: str, leave_stopped: bool = False, lazy: bool = False,
                   hold: bool = False) -> t.Tuple[int, Run]:
    """systemctl start with the restore drop-in: criu (its ExecStart) restores the tree with the journald streams
    systemd just opened for the unit; the unit's MainPID must be the tree criu restored. A migration's copy (``hold``)
    keeps the restore drop-in, and so Restart=no, until its decision (release_hold, or end_unit): a copy that dies
    meanwhile must not come back as a fresh start (and no second daemon-reload lengthens the downtime)."""
    argv = runtime.restore_command(Dir(checkpoint.images_fd, os.path.join(checkpoint.path, store.IMAGES)), work, options, pidfile,
                                   inherit_map(stdio), leave_stopped=leave_stopped, lazy=lazy)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pidfile)
    write_drop_in(name, RESTORE_DROP_IN, [
        "Type=forking", "PIDFile=%s" % pidfile, "GuessMainPID=no", "Restart=no", "RemainAfterExit=no",
        "TimeoutStartSec=%d" % max(1, int(timeout)), "UMask=0077", "UnsetEnvironment=%s" % " ".join(LOADER_VARIABLES),
        "ExecStart=", "ExecStart=+" + quote_exec(argv)])
    started = time.monotonic()
    try:
        with restored_.logs_kept_in(checkpoint, work):
            try:
                systemctl("daemon-reload", timeout=timeout)
                returncode = systemctl("start", "--", name, timeout=timeout + 10, check=False).returncode
            finally:
                if not hold:
                    remove_drop_in(name, RESTORE_DROP_IN, timeout)
            runtime.restore_finished(work, returncode)
        duration = time.monotonic() - started
        with open(pidfile) as handle:
            pid = procfs.parse_pidfile(handle.read())
    except BaseException:
        with contextlib.suppress(CriuError):
            end_unit(name, [], timeout)
        raise
    props = show(name, timeout)
    if pid is None or main_pid(props) != pid:
        with contextlib.suppress(CriuError):
            end_unit(name, [], timeout)
        raise CriuError("criu restored %s as unit %s, but systemd's MainPID is %s (criu's pidfile says %s); the unit "
                        "was stopped again." % (checkpoint.path, name, props.get("MainPID"), pid), path=checkpoint.path)
    criu_stats = criustats.read(work.fd, store.RESTORE_STATS)
    return pid, Run(duration, os.path.join(checkpoint.path, store.RESTORE_LOG), criu_stats)


def release_hold(name: str, timeout: float) -> None:
    """The unit's own settings again: a migration's hold gone (on the source the hold drop-in, on the target the
    restore drop-in it kept)."""
    held = [file_name for file_name in (HOLD_DROP_IN, RESTORE_DROP_IN) if os.path.lexists(os.path.join(_drop_in_dir(name), file_name))]
    if held:
        remove_drop_in(name, held, timeout)


def enablement(name: str, timeout: float) -> str:
    """What systemctl is-enabled says: only "enabled" starts the unit at boot through its [Install] section."""
    return systemctl("is-enabled", "--", name, timeout=timeout, check=False).stdout.strip() or "unknown"


def set_boot_start(name: str, enable: bool, timeout: float) -> None:
    """Enable or disable the unit's start at boot, and make it durable now: a host that crashes a moment later must
    boot with it. systemctl changes symlinks in /etc/systemd/system and its .wants/.requires directories: those
    directories are synced, not the whole host (a sync of every filesystem can take seconds on a busy host)."""
    systemctl("enable" if enable else "disable", "--no-reload", "--", name, timeout=timeout)
    links = sorted(os.path.join(UNIT_CONFIG, entry) for entry in os.listdir(UNIT_CONFIG) if entry.endswith(BOOT_LINK_DIRS))
    for directory in [UNIT_CONFIG] + links:
        with contextlib.suppress(OSError):
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class ServiceTree(ProcessTree):
    """The main process tree of a running service: dumped as a process tree is, with its journald streams external,
    and ended through systemd."""

    def __init__(self, name: str, props: t.Mapping[str, str]) -> None:
        super().__init__(main_pid(props))
        self.name = name
        self.props = dict(props)
        self.stdio: t.Dict[str, int] = {}

    @property
    def what(self) -> str:
        return "unit %s (pid %d%s)" % (self.name, self.pid, ", %s" % self.st.comm if self.st else "")

    def result(self) -> t.Dict[str, t.Any]:
        return {"unit": self.name, "pid": self.pid or None}

    def is_in(self, metadata: Metadata) -> bool:
        """Of this unit, and of the instance running now; with none running, of the one a dump on this boot ended."""
        unit, process = metadata.get("unit") or {}, metadata.get("process") or {}
        if unit.get("name") != self.name or metadata["source"].get("boot_id") != procfs.boot_id():
            return False
        if self.pid:
            st = procfs.read_stat(self.pid)
            return self.pid == process.get("pid") and st is not None and st.starttime == process.get("starttime")
        return not procfs.is_alive(int(process.get("pid") or 0), process.get("starttime"))

    def require_checkpointable(self, criu_path: t.Optional[str]) -> None:
        if self.props.get("ActiveState") != "active" or not self.pid:
            raise CriuError("Unit %s is %s (%s), with no main process: only a running service can be checkpointed. Start it "
                            "(systemctl start %s), or restore it from its checkpoint."
                            % (self.name, self.props.get("ActiveState"), self.props.get("SubState"), self.name), unit=self.name)
        self.st = procfs.require_checkpointable(self.pid)
        self._refuse_extras()
        self.runtime = CriuRuntime.load(criu_path)

    def to_come(self, name: str) -> t.Dict[str, t.Any]:
        return dict(diff_.new_checkpoint(name, self.pid, self.st.comm if self.st is not None else None), unit=self.name)

    def dump(self, loc: store.Location, request: CheckpointRequest, key: t.Optional[bytes],
             algorithm: str) -> t.Dict[str, t.Any]:
        """As a process tree's dump (left stopped until the checkpoint is published), with the journald streams
        external; a dump that ends it then stops the unit (end_unit)."""
        clear_stale(self.name, request.timeout)
        self._refuse_extras()  # again, under DEST's lock: a process may have joined the unit since
        self.stdio = stdio_sockets(self.pid)
        return dict(super().dump(loc, request, key, algorithm), unit=self.name)

    def _refuse_extras(self) -> None:
        refuse_extras(self.name, self.props.get("ControlGroup") or "", [self.pid] + procfs.descendants(self.pid))

    def external_unix(self) -> t.Sequence[int]:
        return sorted(set(self.stdio.values()))

    def recorded(self) -> t.Dict[str, t.Any]:
        return {"unit": {"name": self.name, "control_group": self.props.get("ControlGroup"), "stdio": self.stdio}}

    def end(self, identity: t.Sequence[t.Sequence[int]], timeout: float) -> None:
        end_unit(self.name, identity, timeout)


class Unit(Process):
    """A systemd service's main process tree, checkpointed and restored as the unit."""

    name = "unit"

    def asked(self, ref: WorkloadRef) -> bool:
        return bool(ref.unit)

    def holds(self, metadata: Metadata) -> bool:
        return isinstance(metadata.get("unit"), dict)

    def subject(self, metadata: Metadata) -> str:
        return "unit %s (pid %s, %s)" % (_recorded(metadata).get("name"), metadata["process"].get("pid"),
                                         metadata["process"].get("comm"))

    def refuse_unsupported(self, criu: CriuChoices, at: str, leave_stopped: bool = False) -> None:
        given = [name for name in CGROUP_OPTIONS if criu.get(name) not in (None, [], "")]
        if given:
            raise CriuError("%s cannot be used with a unit: its processes live in the cgroup systemd gives the unit. Leave %s out."
                            % (", ".join(given), "it" if len(given) == 1 else "them"))

    def find(self, ref: WorkloadRef, timeout: float) -> Workload:
        name = require_unit_name(t.cast(str, ref.unit))
        return ServiceTree(name, show(name, timeout))

    def restore(self, checkpoint: store.Checkpoint, verdict: t.Any, request: RestoreRequest,
                key: t.Optional[bytes], check_mode: bool) -> t.Dict[str, t.Any]:
        """The unit restores it: criu runs as its ExecStart (a runtime drop-in, removed afterwards)."""
        metadata = t.cast(t.Dict[str, t.Any], verdict.metadata)
        src, timeout = checkpoint.path, request.timeout
        recorded = _recorded(metadata)
        given = [name for name in CONTAINER_RESTORE_OPTIONS if getattr(request, name)]
        if given:
            raise CriuError("%s applies to a container's checkpoint only, and %s is the checkpoint of %s. Leave it out."
                            % (", ".join(given), src, self.subject(metadata)), path=src)
        self.refuse_unsupported(request.criu, "restore")
        name = require_unit_name(request.unit or recorded.get("name") or "")
        if name != recorded.get("name"):
            raise CriuError("%s is the checkpoint of unit %s, not %s: a unit is restored as itself. Leave unit out, or give %s."
                            % (src, recorded.get("name"), name, recorded.get("name")), path=src)
        shown = integrity.public(metadata)
        if not check_mode:
            clear_stale(name, timeout)
        props = show(name, timeout)
        previous = restored_.live_restore(checkpoint, metadata, key)
        if previous and previous.get("pid") == main_pid(props) and not request.force:
            return {"changed": False, "src": src, "pid": previous["pid"], "unit": name, "checkpoint": shown, "restored": previous,
                    "actions": [], "diff": diff_.restore(src, previous, diff_.restored(previous))}
        problems = host.restore_problems(metadata) + reopen.problems(checkpoint.images_fd)
        if props.get("ActiveState") in ("active", "activating", "reloading", "deactivating"):
            problems.append("unit %s is %s (MainPID %s): stop it first (systemctl stop %s), or leave the running one be"
                            % (name, props.get("ActiveState"), props.get("MainPID"), name))
        if problems:
            raise CriuError("Cannot restore %s on this host: %s." % (src, listed(problems)), path=src, problems=problems)
        options = dict(criu_options.for_restore(metadata, request.criu), manage_cgroups="ignore", cgroup_root=None)
        host.require_privileges()
        runtime = CriuRuntime.load(request.criu_path)
        action = "restore %s (checkpoint of unit %s, pid %s) as unit %s" % (src, name, metadata["process"].get("pid"), name)
        if check_mode:
            return {"changed": True, "src": src, "pid": None, "unit": name, "checkpoint": shown, "actions": ["would " + action],
                    "diff": diff_.restore(src, previous, diff_.new_restore(metadata["id"]))}
        pid, run = self._start_restored(runtime, checkpoint, options, recorded.get("stdio") or {}, name, timeout)
        record = restored_.restore_record(metadata["id"], pid, procfs.utc_now(), unit=name,
                                          starttime=restored_.confirm_alive(pid, run.log_path, src).starttime)
        restored_.save_record(checkpoint.fd, record, key)
        restored_.record_pid(request.pidfile, src, pid)
        return {
            "changed": True, "src": src, "pid": pid, "unit": name, "checkpoint": shown, "restored": record,
            "stats": dict(verdict.stats(), restore_seconds=round(run.duration, 3), criu=run.criu_stats), "actions": [action],
            "diff": diff_.restore(src, previous, diff_.restored(record)),
        }

    @staticmethod
    def _start_restored(runtime: CriuRuntime, checkpoint: store.Checkpoint, options: t.Mapping[str, t.Any],
                        stdio: t.Mapping[str, int], name: str, timeout: float) -> t.Tuple[int, Run]:
        with contextlib.ExitStack() as stack:
            work_path = stack.enter_context(store.private_dir("nucleus-criu-restore-"))
            work_fd = safepath.open_dir(work_path, "Private work directory", store.CHAIN_REMEDY)[0]
            stack.callback(os.close, work_fd)
            work = Dir(work_fd, work_path)
            return start_restored(runtime, checkpoint, options, stdio, name, timeout, work, work.file("unit.pid"))

    def host_problems(self, metadata: Metadata, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        problems = list(host.criu_facts(criu_path)["problems"])
        try:
            systemctl_path()
        except CriuError as exc:
            problems.append(exc.msg)
        return problems

    # --- a migration, on its source ---------------------------------------------------------------------------
    # A process tree's migration (Process), as the unit: found by name, dumped with its journald streams external,
    # held (Restart=no) on both hosts until the decision, ended through systemd, and its start at boot moved.
    def refuse_migration(self, mode: str) -> None:
        return None  # copy and post-copy

    def look_up(self, ref: WorkloadRef, timeout: float) -> Found:
        name = require_unit_name(t.cast(str, ref.unit))
        props = dict(show(name, timeout), Id=name)
        pid = main_pid(props) if props.get("ActiveState") == "active" else 0
        return Found(pid or None, props)

    def require(self, ref: WorkloadRef, found: Found) -> Found:
        props = t.cast(t.Dict[str, str], found.engine_view)
        if found.pid is None:
            raise CriuError("Unit %s is %s (%s), with no main process: only a running service can be migrated. Start it "
                            "(systemctl start %s) first." % (props["Id"], props.get("ActiveState"), props.get("SubState"), props["Id"]),
                            unit=props["Id"])
        refuse_extras(props["Id"], props.get("ControlGroup") or "", [found.pid] + procfs.descendants(found.pid))
        return found

    def describe_found(self, found: Found) -> str:
        return "unit %s (pid %d)" % (t.cast(t.Dict[str, str], found.engine_view)["Id"], t.cast(int, found.pid))

    def journal_identity(self, found: Found) -> t.Dict[str, t.Any]:
        props = t.cast(t.Dict[str, str], found.engine_view)
        return {"unit": {"name": props["Id"], "control_group": props.get("ControlGroup"),
                         "enabled": enablement(props["Id"], 60)}}

    def recorded_identity(self, record: Record) -> t.Dict[str, t.Any]:
        unit = _recorded(record)
        return {"unit": {"name": unit.get("name"), "enabled": unit.get("enabled"), "boot": _boot(record)}}

    def reused_pid(self, record: Record, found: Found) -> bool:
        return False  # a unit is found by its name, never by a pid

    def claim_key(self, process: t.Mapping[str, t.Any], record: Record) -> str:
        return "unit-%s" % _recorded(record).get("name")

    def source_problems(self, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        CriuRuntime.load(criu_path)
        systemctl_path()  # raises, naming the problem
        return []

    def target_problems(self, facts: t.Mapping[str, t.Any]) -> t.List[str]:
        return ["on the target: %s" % problem for problem in facts["workload"]["problems"]]

    def freeze(self, freezer: Freezer, staging: store.Staging, pid: int) -> t.Tuple[t.Dict[str, t.Any], float]:
        """Held first (Restart=no: a source copy that died now must not start again while the target restores it),
        and its boot start disabled (journaled first: an abort enables it again)."""
        record = freezer.journal_data()
        unit = _recorded(record)
        name, timeout = unit["name"], freezer.timeout
        stdio = stdio_sockets(pid)
        # Before the freeze window opens (not in the downtime); a migration undone from here calls release().
        disable = _boot(record) in ("move", "disable") and unit.get("enabled") == "enabled"
        freezer.note(unit=dict(unit, boot_disabled=disable, held=True))
        write_drop_in(name, HOLD_DROP_IN, HOLD)
        systemctl("daemon-reload", timeout=timeout)
        if disable:
            set_boot_start(name, False, timeout)
        return freeze_tree(freezer, staging, pid, external_unix=sorted(set(stdio.values())),
                           recorded={"unit": {"name": name, "control_group": unit.get("control_group"), "stdio": stdio}})

    def resume_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """The frozen tree runs on as the unit's MainPID; the unit's Restart= and boot start are its own again."""
        super().resume_source(record, timeout)
        self.release(record, timeout)
        return None

    def release(self, record: Record, timeout: float) -> None:
        """The unit's own Restart= and boot start again. A source whose copy was lost meanwhile (its host crashed,
        its process was killed) did not get the unit started again, by its boot or by Restart=, because the migration
        held both: it is started now, as they would have."""
        unit = _recorded(record)
        name = unit.get("name")
        if not name:
            return
        release_hold(name, timeout)
        if unit.get("boot_disabled"):
            set_boot_start(name, True, timeout)
        props = show(name, timeout)
        if self.source_lost(record) and props.get("ActiveState") in ("inactive", "failed") and (
                unit.get("boot_disabled") or props.get("Restart") != "no"):
            systemctl("start", "--", name, timeout=timeout)

    def end_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """The unit stops here (SIGKILL, no restart) and stays stopped: its boot start went at the freeze."""
        try:
            end_unit(_recorded(record)["name"], (record.get("process") or {}).get("tree") or [], timeout)
        except CriuError as exc:
            return exc.msg
        return None

    # --- a migration, on its target ----------------------------------------------------------------------------
    def target_preflight(self, request: t.Mapping[str, t.Any], can_restore: bool) -> t.Optional[t.Dict[str, t.Any]]:
        """The unit must be installed here, as on the source, and not running."""
        return {"problems": _landing_problems(request["unit"]["name"], float(request["timeout"]))}

    def prepare_landing(self, request: t.Mapping[str, t.Any], timeout: float) -> t.Any:
        problems = _landing_problems(request["unit"]["name"], timeout)
        if problems:
            raise CriuError("Cannot take unit %s here: %s." % (request["unit"]["name"], listed(problems)))
        return None

    def land(self, landing: Landing, journal: TargetJournal, runtime: CriuRuntime, opened: store.Checkpoint,
             metadata: Metadata, page_conn: t.Optional[socket.socket],
             stack: contextlib.ExitStack) -> t.Tuple[int, t.Optional[Daemon]]:
        """The unit restores it (its ExecStart runs criu): stopped until the commit (copy), or running with its memory
        still at the source (post-copy); held (Restart=no) until the decision."""
        recorded = _recorded(metadata)
        name = require_unit_name(recorded.get("name") or "")
        options = dict(criu_options.for_restore(metadata, landing.restore_options), manage_cgroups="ignore", cgroup_root=None)
        work_path = stack.enter_context(store.private_dir("nucleus-criu-unit-"))
        work = Dir(safepath.open_dir(work_path, "Private work directory", store.CHAIN_REMEDY)[0], work_path)
        stack.callback(os.close, work.fd)
        fetcher = None
        if page_conn is not None:
            # lazy-pages and restore share a work directory: restore finds the fetcher through its socket there.
            fetcher = runtime.start_lazy_pages(Dir(opened.images_fd, os.path.join(opened.path, store.IMAGES)), work,
                                               page_conn.fileno(), landing.timeout)
            stack.callback(fetcher.stop)
            page_conn.close()
            journal.record("received", lazy_log=fetcher.log_path, lazy_pages_daemon=procfs.tree_identity(fetcher.proc.pid)[0])
        journal.record("restoring", unit=dict(landing.request["unit"]))  # from here an abort stops the unit
        pid, run = start_restored(runtime, opened, options, recorded.get("stdio") or {}, name, landing.timeout, work,
                                  landing.restore_pidfile, leave_stopped=fetcher is None, lazy=fetcher is not None, hold=True)
        if fetcher is not None:
            journal.data["running_since"] = time.monotonic()
        restored_.confirm_alive(pid, run.log_path, opened.path, stopped=fetcher is None)
        return pid, fetcher

    def committed(self, record: Record, timeout: float) -> None:
        """The copy runs as the unit with the unit's own Restart= again; its boot start moved here (``boot: move``)."""
        unit = _recorded(record)
        release_hold(unit["name"], timeout)
        if unit.get("boot") == "move" and unit.get("enabled") == "enabled" and enablement(unit["name"], timeout) != "enabled":
            set_boot_start(unit["name"], True, timeout)

    def landed_identity(self, record: Record) -> t.Dict[str, t.Any]:
        return {"unit": _recorded(record).get("name")}

    def remove_landed(self, record: Record, timeout: float) -> t.List[int]:
        """The unit stops here (SIGKILL, no restart) when it runs this migration's copy: its MainPID is the copy, or its
        restore drop-in (kept until the decision) is still there, or it is still starting it (the agent died
        mid-restore). A unit this migration did not start is left alone."""
        name = _recorded(record).get("name")
        if not name:
            return []
        props = show(name, timeout)
        tree = record.get("tree") or []
        ours = (props.get("ActiveState") in ("activating", "deactivating") or bool(tree and main_pid(props) == tree[0][0])
                or os.path.lexists(os.path.join(_drop_in_dir(name), RESTORE_DROP_IN)))
        if ours:
            end_unit(name, tree, timeout)
        else:
            release_hold(name, timeout)
        return []


def _recorded(metadata: Metadata) -> t.Mapping[str, t.Any]:
    return metadata.get("unit") or {}


def _boot(record: Record) -> str:
    return (record.get("settings") or {}).get("unit_boot") or "move"


def _landing_problems(name: str, timeout: float) -> t.List[str]:
    """Why unit ``name`` cannot be restored here: no systemd, not installed, or running already (a second copy)."""
    try:
        systemctl_path()
        props = show(name, timeout)
    except CriuError as exc:
        return [exc.msg.rstrip(".")]
    if props.get("ActiveState") in ("active", "activating", "reloading", "deactivating"):
        return ["unit %s is %s here (MainPID %s): a migration would run it twice. Stop it (systemctl stop %s) or migrate "
                "to another host" % (name, props.get("ActiveState"), props.get("MainPID"), name)]
    return []
