# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Podman, as the container modules run it: its discovery, its commands, and whether this host can checkpoint with it.

Podman checkpoints through its OCI runtime, and the runtime (runc) executes the ``criu`` it finds on its PATH,
which Podman passes on from its own environment. The modules therefore run Podman with a fixed environment whose
PATH lists the directories of the trusted criu paths in discovery's order: the criu a container checkpoint runs
is the one criu discovery validates.
"""

from __future__ import annotations

import glob
import json
import os
import re
import resource
import subprocess
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criulog as criulog
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

PODMAN_PATHS = ("/usr/bin/podman", "/usr/local/bin/podman")
ENVIRONMENT = {
    "PATH": ":".join([os.path.dirname(path) for path in binary.TRUSTED_PATHS] + ["/sbin", "/bin"]),
    "LANG": "C",
    "LC_ALL": "C",
}
# The drop-in the criu role writes (criu_containers: true); named in every remedy.
CONF_DROP_IN = "/etc/containers/containers.conf.d/60-nucleus-criu.conf"
# containers.conf files in the order Podman reads them, a later one overriding an earlier one's setting.
CONF_FILES = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
CONF_DIR = "/etc/containers/containers.conf.d"
ROLE_HINT = "The nucleus.criu.criu role prepares a host for containers with criu_containers: true."
INSTALL_HINT = "Install it (apt-get install --no-install-recommends podman runc). " + ROLE_HINT
CAP_SYS_RESOURCE = 24
# What Podman gives a container as root when containers.conf sets no default_ulimits.
PODMAN_DEFAULT_LIMIT = 1048576
PID_MAX = "/proc/sys/kernel/pid_max"
SYSTEMD_BOOTED = "/run/systemd/system"  # what sd_booted() looks at
# runc has criu read the file this annotation names (an image's annotations reach every container made from it), or
# RUNC_CRIU_CONFIG when there is none; an empty value means no file.
CRIU_CONFIG_ANNOTATION = "org.criu.config"
RUNC_CRIU_CONFIG = "/etc/criu/runc.conf"
CRIU_PLUGIN_DIR = "/usr/lib/criu"  # criu's compiled-in plugin directory
NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft")  # where netavark finds nft on Debian (its PATH)
# runc names criu's log when criu fails: "criu failed: ... log file: PATH".
_CRIU_LOG_RE = re.compile(r"log file: (/\S+\.log)")
_ULIMITS_RE = re.compile(r"^[ \t]*default_ulimits[ \t]*=[ \t]*\[(.*?)\]", re.MULTILINE | re.DOTALL)
_ULIMIT_RE = re.compile(r"[\"'](\w+)=(-?\d+)(?::(-?\d+))?[\"']")


# Podman's errors, translated into what the operator should do about them.
_HINTS = (
    (re.compile(r"name \S+ is in use|is already in use"),
     "A container of that name exists on this host: set container_name to another name, or remove that container "
     "(podman rm NAME) if it is the stopped original."),
    (re.compile(r"setting rlimit|setrlimit"),
     "The container asks for limits this host cannot grant: " + "set default_ulimits in %s. %s" % (CONF_DROP_IN, ROLE_HINT)),
    (re.compile(r"image not known|unable to find .*image"),
     "The container's image is not on this host; an export does not hold its base image. Load it first (podman load, "
     "podman pull or podman import under the same id)."),
    (re.compile(r"requested IP address \S+ is not available"),
     "Another container on this host holds the address the checkpoint records: free it, or restore with "
     "ignore_static_ip: true (criu_restore) to give the container a new one."),
    (re.compile(r"Network is unreachable"),
     "The container's network did not come back as it was: TCP connections restore on a bridge network, not with --network none."),
)


class PodmanError(CriuError):
    """A podman command failed; the message quotes podman and names the remedy when one is known."""


def run(argv: t.Sequence[str], timeout: float, pass_fds: t.Sequence[int] = (),
        on_spawn: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[str, float]:
    """Run a podman command (argv only, the modules' environment); its stdout and duration, or a PodmanError.
    ``on_spawn`` learns podman's pid before podman acts (a migration journals it: its recovery waits for it)."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=ENVIRONMENT, pass_fds=tuple(pass_fds))
    except OSError as exc:
        raise PodmanError("Cannot run %s: %s." % (argv[0], exc.strerror), path=argv[0]) from exc
    with proc:
        try:
            if on_spawn is not None:
                on_spawn(proc.pid)
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.communicate()
            raise PodmanError("%s did not finish within %ss (timeout)." % (" ".join(argv[:3]), timeout)) from exc
        except BaseException:
            proc.kill()
            raise
    if proc.returncode != 0:
        error = stderr.decode("utf-8", "replace").strip()[-1500:]
        hints = [hint for pattern, hint in _HINTS if pattern.search(error)]
        raise PodmanError("%s exited with %d: %s%s%s" % (" ".join(argv[:3]), proc.returncode, error, criu_reason(error),
                                                         "".join(" " + hint for hint in hints)), rc=proc.returncode)
    return stdout.decode("utf-8", "replace"), time.monotonic() - started


def criu_reason(error: str) -> str:
    """What criu's log says went wrong, when runc names the log: the log lives with the container, and a copy whose
    restore failed is removed (by criu_restore itself, or by a migration's abort), so the message must carry it."""
    match = _CRIU_LOG_RE.search(error)
    if match is None:
        return ""
    try:
        fd, _real = safepath.open_file(match.group(1), "criu's log", "")
    except (CriuError, OSError):
        return ""
    with os.fdopen(fd, "rb") as log:
        errors = criulog.error_lines(criulog.tail(log))
    return " criu: %s.%s" % (" | ".join(errors), "".join(" " + hint for hint in criulog.hints(errors))) if errors else ""


def stats_of(output: str) -> t.Dict[str, t.Any]:
    """Podman's --print-stats JSON, or an empty dict when it printed none (older Podman)."""
    try:
        stats = json.loads(output)
    except ValueError:
        return {}
    return stats if isinstance(stats, dict) else {}


def restore_flags(options: t.Mapping[str, t.Any]) -> t.List[str]:
    """Podman's restore flags for ``options``: the criu options it passes, and whether to give up the container's
    recorded address (``ignore_static_ip``) and MAC (``ignore_static_mac``) for new ones."""
    return criu_options.podman_flags(options) + [flag for name, flag in (
        ("ignore_static_ip", "--ignore-static-ip"), ("ignore_static_mac", "--ignore-static-mac")) if options.get(name)]


class Podman(t.NamedTuple):
    """The podman binary the modules run (its real path, checked) and its version."""

    path: str
    version: str

    @classmethod
    def load(cls, timeout: float) -> Podman:
        real = locate()
        output, _seconds = run([real, "--version"], timeout)
        return cls(real, output.strip().rsplit(" ", 1)[-1])

    def _inspected(self, name: str, timeout: float) -> t.Optional[t.Dict[str, t.Any]]:
        """Podman's own view of the container (``podman container inspect``), None when there is no container of that
        name or id."""
        try:
            output, _seconds = run([self.path, "container", "inspect", "--format", "json", "--", name], timeout)
        except PodmanError as exc:
            if "no such container" in exc.msg:
                return None
            raise
        return t.cast(t.Dict[str, t.Any], json.loads(output)[0])

    def inspect(self, name: str, timeout: float) -> t.Optional[t.Dict[str, t.Any]]:
        """The container's identity and state, None when there is no container of that name or id."""
        found = self._inspected(name, timeout)
        if found is None:
            return None
        state = found.get("State", {})
        running = state.get("Status") == "running"
        return {"id": found.get("Id"), "name": found.get("Name"), "state": state.get("Status"),
                "pid": (state.get("Pid") or None) if running else None,
                "image_id": found.get("Image"), "image_name": found.get("ImageName"), "runtime": found.get("OCIRuntime"),
                "criu_config": (found.get("Config") or {}).get("Annotations", {}).get(CRIU_CONFIG_ANNOTATION),
                "labels": (found.get("Config") or {}).get("Labels") or {}}

    def checkpoint(self, container_id: str, export_fd: int, options: t.Mapping[str, t.Any], timeout: float,
                   on_spawn: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[t.Dict[str, t.Any], float]:
        """Export a checkpoint of the container into the file open as ``export_fd`` (podman writes that very file); the
        container stops. ``--keep`` keeps the checkpoint in Podman's storage even when the export fails (a full disk):
        without it the container would be stopped with nothing to restore it from. Never ``--leave-running``: Podman
        archives the container's file changes after criu's dump, so a container left running would write newer files
        into the export than its memory knows (criu then refuses a file held open whose size changed)."""
        argv = [self.path, "container", "checkpoint", "--export", "/proc/self/fd/%d" % export_fd,
                "--compress", options["compress"], "--print-stats", "--keep"] + criu_options.podman_flags(options)
        output, seconds = run(argv + ["--", container_id], timeout, pass_fds=[export_fd], on_spawn=on_spawn)
        return stats_of(output), seconds

    def restore_in_place(self, container_id: str, options: t.Mapping[str, t.Any], timeout: float) -> None:
        """Bring a container back from the checkpoint Podman keeps in its own storage after an export, with the criu
        options it was checkpointed with (Podman does not remember them)."""
        run([self.path, "container", "restore"] + restore_flags(options) + ["--", container_id], timeout)

    def addresses(self, container_id: str, timeout: float) -> t.List[str]:
        """The container's IP addresses on its networks (a restore without its static address gets new ones)."""
        networks = ((self._inspected(container_id, timeout) or {}).get("NetworkSettings") or {}).get("Networks") or {}
        return sorted(network["IPAddress"] for network in networks.values() if network.get("IPAddress"))

    def restore_import(self, import_fd: int, name: t.Optional[str], options: t.Mapping[str, t.Any], timeout: float,
                       on_spawn: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[t.Dict[str, t.Any], float]:
        """Create and restore a container from the export open as ``import_fd``, named ``name`` (None: as it was)."""
        argv = [self.path, "container", "restore", "--import", "/proc/self/fd/%d" % import_fd, "--print-stats"]
        argv += ["--name", name] if name else []
        argv += restore_flags(options)
        output, seconds = run(argv, timeout, pass_fds=[import_fd], on_spawn=on_spawn)
        return stats_of(output), seconds

    def remove(self, container_id: str, timeout: float) -> bool:
        """Remove the container at once (no grace period: it is a copy that must not live, or an original that
        another host runs now); False when there was none."""
        if self.inspect(container_id, timeout) is None:
            return False
        run([self.path, "container", "rm", "--force", "--time", "0", "--", container_id], timeout)
        return True

    def save_image(self, image_id: str, archive_fd: int, timeout: float) -> None:
        """Write the image as a docker-archive (which keeps its id) into ``archive_fd``, a file or a pipe."""
        run([self.path, "image", "save", "--format", "docker-archive", "--output", "/proc/self/fd/%d" % archive_fd,
             "--", image_id], timeout, pass_fds=[archive_fd])

    def load_image(self, archive_fd: int, image_id: str, name: str, timeout: float) -> None:
        """Load the archive, and give the image ``name``: a restore finds a container's image by the name it was
        created from (an archive saved by id carries none)."""
        run([self.path, "image", "load", "--input", "/proc/self/fd/%d" % archive_fd], timeout, pass_fds=[archive_fd])
        if name:
            run([self.path, "image", "tag", image_id, name], timeout)

    def image_id(self, reference: str, timeout: float) -> t.Optional[str]:
        """The id of the image ``reference`` (a name or an id) names here, None when it names none."""
        try:
            output, _seconds = run([self.path, "image", "inspect", "--format", "{{.Id}}", "--", reference], timeout)
        except PodmanError as exc:
            if "image not known" in exc.msg or "unable to find" in exc.msg:
                return None
            raise
        return output.strip() or None


def locate() -> str:
    """The real path of the first of podman's trusted paths that exists (PATH is never searched: the modules run as
    root), once it and every directory and link on the way are root's alone."""
    path = next((path for path in PODMAN_PATHS if os.path.lexists(path)), None)
    if path is None:
        raise PodmanError("podman was not found in %s (PATH is never searched). %s" % (", ".join(PODMAN_PATHS), INSTALL_HINT))
    fd, real = safepath.open_file(path, "Container engine", INSTALL_HINT)
    try:
        safepath.require_trusted(os.fstat(fd), real, "Container engine", INSTALL_HINT)
    finally:
        os.close(fd)
    return real


def engine_info(path: str, timeout: float) -> t.Dict[str, t.Any]:
    """``podman info`` as JSON, run with the modules' environment (no caller's CONTAINERS_CONF, no PATH of theirs)."""
    output, _seconds = run([path, "info", "--format", "json"], timeout)
    try:
        return json.loads(output)
    except ValueError as exc:
        raise PodmanError("podman info printed no JSON: %s" % exc, path=path) from exc


def runtime_problem(name: str, version: str) -> str:
    """Whether the OCI runtime can checkpoint: runc always; crun only when built with CRIU (``+CRIU``)."""
    if name == "runc" or (name == "crun" and "+CRIU" in version):
        return ""
    why = "was built without CRIU support (its version lists no +CRIU)" if name == "crun" else "cannot checkpoint with CRIU"
    return ('Podman\'s OCI runtime here is %s, which %s. Install runc and set runtime = "runc" in the [engine] table '
            "of %s. %s" % (name or "(unknown)", why, CONF_DROP_IN, ROLE_HINT))


def conf_ulimits(paths: t.Sequence[str]) -> t.Dict[str, t.Tuple[int, int]]:
    """``default_ulimits`` as the last of ``paths`` that sets it has it: name -> (soft, hard)."""
    found: t.Optional[str] = None
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                match = _ULIMITS_RE.search(handle.read())
        except OSError:
            continue
        if match:
            found = match.group(1)
    limits: t.Dict[str, t.Tuple[int, int]] = {}
    for name, soft, hard in _ULIMIT_RE.findall(found or ""):
        limits[name] = (int(soft), int(hard or soft))
    return limits


def conf_paths() -> t.List[str]:
    return list(CONF_FILES) + sorted(glob.glob(os.path.join(CONF_DIR, "*.conf")))


def limit_ceilings() -> t.Dict[str, t.Optional[int]]:
    """The highest nofile and nproc a container can get without CAP_SYS_RESOURCE (None: unlimited). Podman lowers
    its own nproc hard limit to kernel.pid_max before it starts the runtime, so that bounds nproc too."""
    def hard(which: int) -> t.Optional[int]:
        value = resource.getrlimit(which)[1]
        return None if value == resource.RLIM_INFINITY else value

    nproc = hard(resource.RLIMIT_NPROC)
    try:
        with open(PID_MAX) as handle:
            pid_max = int(handle.read())
        nproc = pid_max if nproc is None else min(nproc, pid_max)
    except (OSError, ValueError):
        pass
    return {"nofile": hard(resource.RLIMIT_NOFILE), "nproc": nproc}


def ulimits_problem(configured: t.Mapping[str, t.Tuple[int, int]], ceilings: t.Mapping[str, t.Optional[int]],
                    cap_sys_resource: bool) -> str:
    """Without CAP_SYS_RESOURCE a container's nofile and nproc must fit under the ceilings, and Podman's own
    defaults (1048576) do not: every container would fail to start ("error setting rlimit ... not permitted")."""
    if cap_sys_resource:
        return ""
    wrong = []
    for name in ("nofile", "nproc"):
        ceiling = ceilings.get(name)
        given = configured.get(name)
        if given is None:
            if ceiling is not None and ceiling < PODMAN_DEFAULT_LIMIT:
                wrong.append("%s is not set (Podman's default %d is above %d)" % (name, PODMAN_DEFAULT_LIMIT, ceiling))
        elif ceiling is not None and max(given) > ceiling:
            wrong.append("%s=%d:%d is above %d" % (name, given[0], given[1], ceiling))
    if not wrong:
        return ""
    example = ", ".join('"%s=%s:%s"' % (name, ceilings[name], ceilings[name])
                        for name in ("nofile", "nproc") if ceilings.get(name) is not None)
    return ("The caller lacks CAP_SYS_RESOURCE, so a container cannot get limits above this host's (%s), and no "
            "container would start: %s. Set default_ulimits = [%s] in the [containers] table of %s. %s"
            % (", ".join("%s %s" % (name, ceilings.get(name) or "unlimited") for name in ("nofile", "nproc")),
               "; ".join(wrong), example, CONF_DROP_IN, ROLE_HINT))


def host_problems(host_info: t.Mapping[str, t.Any], systemd: bool, nft: t.Optional[str] = None) -> t.List[str]:
    """Settings that need systemd where it is not running, and a network backend without the tool it runs (``nft``:
    where nft is, None if nowhere)."""
    problems = []
    if host_info.get("networkBackend") == "netavark" and nft is None:
        problems.append("Podman's network backend netavark sets up a container's network with nft, which is not installed "
                        "here: no container with a network would start. Install nftables. %s" % ROLE_HINT)
    if host_info.get("cgroupManager") == "systemd" and not systemd:
        problems.append('Podman uses the systemd cgroup manager, but systemd is not running here: set cgroup_manager = '
                        '"cgroupfs" in the [engine] table of %s. %s' % (CONF_DROP_IN, ROLE_HINT))
    if host_info.get("eventLogger") == "journald" and not systemd:
        problems.append('Podman logs events to journald, which is not running here: set events_logger = "file" in the '
                        "[engine] table of %s. %s" % (CONF_DROP_IN, ROLE_HINT))
    return problems


def runtime_criu(timeout: float) -> t.Dict[str, t.Any]:
    """The criu the runtime will execute: the first on the modules' PATH, validated as criu discovery validates it."""
    facts: t.Dict[str, t.Any] = {"path": None, "version": None, "problem": ""}
    try:
        facts["path"] = binary.discover(None, env_path=ENVIRONMENT["PATH"])
        version = binary.probe_version(facts["path"], timeout=timeout)
        facts["version"] = binary.format_version(version)
        binary.require_supported(version, facts["path"])
    except CriuError as exc:
        facts["path"] = facts["path"] or exc.details.get("path")
        facts["problem"] = "The criu Podman's runtime would execute: %s" % exc.msg
    return facts


def container_facts(engine: str, timeout: float, caps: int) -> t.Dict[str, t.Any]:
    """Everything criu_info says about checkpointing containers with ``engine`` (``caps``: the caller's effective
    capabilities); ``usable`` when nothing is wrong."""
    facts: t.Dict[str, t.Any] = {"engine": engine, "path": None, "version": None, "usable": False, "problems": [],
                                 "limit_ceilings": limit_ceilings(), "cap_sys_resource": bool(caps >> CAP_SYS_RESOURCE & 1),
                                 "systemd": os.path.isdir(SYSTEMD_BOOTED)}
    try:
        facts["path"] = locate()
        info = engine_info(facts["path"], timeout)
    except CriuError as exc:
        facts["problems"].append(exc.msg)
        return facts
    host_info = info.get("host", {})
    runtime = host_info.get("ociRuntime", {})
    facts["version"] = info.get("version", {}).get("Version")
    runtime_version = runtime.get("version") or ""
    problem_of_runtime = runtime_problem(runtime.get("name") or "", runtime_version)
    facts["runtime"] = {"name": runtime.get("name"), "path": runtime.get("path"),
                        "version": runtime_version.splitlines()[0] if runtime_version else None,
                        "checkpoint": not problem_of_runtime}
    facts["criu"] = runtime_criu(timeout)
    facts["cgroup_manager"] = host_info.get("cgroupManager")
    facts["cgroup_version"] = host_info.get("cgroupVersion")
    facts["events_logger"] = host_info.get("eventLogger")
    configured = conf_ulimits(conf_paths())
    facts["default_ulimits"] = ["%s=%d:%d" % (name, soft, hard) for name, (soft, hard) in sorted(configured.items())]
    problems = [problem_of_runtime, facts["criu"]["problem"],
                ulimits_problem(configured, facts["limit_ceilings"], facts["cap_sys_resource"])]
    nft = next((path for path in NFT_PATHS if os.access(path, os.X_OK)), None)
    facts["problems"] = [problem for problem in problems if problem] + host_problems(host_info, facts["systemd"], nft)
    facts["usable"] = not facts["problems"]
    return facts
