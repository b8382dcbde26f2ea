# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A container's checkpoint: Podman's export, held in the same staged, hashed, signed checkpoint directory as a
process's images, and restored from exactly the verified bytes.

Podman writes the export into a file this module created and holds open (``/proc/self/fd/N``), and reads it back at
restore through an fd opened before verification: the export is never reached by a path someone could swap.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import stat
import threading
import time
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _podman as podman
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Daemon
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Found, Freezer, Kind, Landing, Metadata, Record, TargetJournal, Workload
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _follow as follow
from ansible_collections.nucleus.criu.plugins.module_utils.storage._failpoint import failpoint
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _restored as restored_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed
from ansible_collections.nucleus.criu.plugins.module_utils._requests import CheckpointRequest, CriuChoices, RestoreRequest, WorkloadRef

EXPORT = integrity.CONTAINER_EXPORT
RUNC_CONFIG_REMEDY = ("runc has criu read it as root for every container that names no configuration of its own: keep it "
                      "root's, or remove it.")
PLUGIN_REMEDY = "criu loads every .so there into itself as root when runc runs it for a container: keep it root's, or remove it."
# The criu options Podman passes on for a container; every other one is refused rather than silently dropped.
RESTORE_OPTIONS = criu_options.PODMAN_PASSES + ("ignore_static_ip", "ignore_static_mac")


def podman_engine(timeout: float) -> podman.Podman:
    """Podman, found as criu_info finds it (a trusted binary, its version checked): the one place a container's
    engine is made (the ``engine`` option names no other yet)."""
    return podman.Podman.load(timeout)


def refuse_unsupported(criu: CriuChoices, at: str, leave_stopped: bool = False) -> None:
    """A criu option Podman cannot pass for a container, set to anything but its default, is an error naming it,
    never ignored. ``at``: "dump", "restore" or "migrate"."""
    given = [option.name for option in criu_options.OPTIONS if option.applies(at) and not option.podman
             and criu.get(option.name) not in (None, option.spec(at).get("default"))]
    if at == "dump" and leave_stopped:
        given.append("leave_stopped")
    if given:
        them = "it" if len(given) == 1 else "them"
        raise CriuError("%s cannot be used with a container: Podman does not pass %s to criu. Leave %s out (Podman takes "
                        "%s for a container)." % (", ".join(given), them, them,
                                                  ", ".join(RESTORE_OPTIONS if at == "restore" else criu_options.PODMAN_PASSES)))


def require_running(found: t.Optional[t.Mapping[str, t.Any]], name: str) -> t.Mapping[str, t.Any]:
    """The container to checkpoint (as inspected), which must exist, run, and give criu no configuration of its own."""
    if found is None:
        raise CriuError("There is no container %s on this host (podman ps -a lists them). Check the name, or the host." % name)
    if found["state"] != "running" or not found["pid"]:
        raise CriuError("Container %s is %s: only a running container can be checkpointed. Start it (podman start %s), or "
                        "restore it from its checkpoint." % (name, found["state"], name))
    refuse_criu_config(found)
    return found


def refuse_criu_config(found: t.Mapping[str, t.Any]) -> None:
    """criu takes its configuration from nucleus.criu alone. runc has it read the file a container's org.criu.config
    annotation names (an image's annotations reach every container made from it), else /etc/criu/runc.conf; a
    configuration can run any program as root (action-script), at the dump and at every restore of the export."""
    named = found.get("criu_config")
    if named:
        image = found.get("image_name") or found.get("image_id")
        raise CriuError("Container %s (image %s) names a criu configuration file in its %s annotation (%s): runc would have "
                        "criu read it as root at the checkpoint and at every restore, and a configuration can run any "
                        "program (action-script). Recreate the container with --annotation %s= (empty: no file), or from "
                        "an image without that annotation."
                        % (found["name"], image, podman.CRIU_CONFIG_ANNOTATION, named, podman.CRIU_CONFIG_ANNOTATION),
                        container=found["name"])
    problems = runc_criu_problems(with_config=named is None)
    if problems:
        raise CriuError(listed(problems) + ".")


def runc_criu_problems(with_config: bool = True) -> t.List[str]:
    """Why what runc has criu load on its own cannot be trusted (another user could change it): criu's plugin
    directory (every .so there is loaded into criu; runc cannot point it elsewhere, as nucleus.criu does for its own
    criu runs) and (``with_config``) /etc/criu/runc.conf, read for a container that names no configuration."""
    problems = [_plugin_dir_problem()]
    if with_config:
        problems.append(_runc_config_problem())
    return [problem for problem in problems if problem]


def _runc_config_problem() -> t.Optional[str]:
    def check(fd: int, real: str) -> None:
        safepath.require_trusted(os.fstat(fd), real, "criu configuration for runc", RUNC_CONFIG_REMEDY)
    return _untrusted(lambda: safepath.open_file(podman.RUNC_CRIU_CONFIG, "criu configuration for runc", RUNC_CONFIG_REMEDY),
                      check)


def _plugin_dir_problem() -> t.Optional[str]:
    def check(fd: int, real: str) -> None:
        for name in safepath.listdir(fd):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise CriuError("criu plugin %s is a symlink. %s" % (os.path.join(real, name), PLUGIN_REMEDY))
            safepath.require_trusted(st, os.path.join(real, name), "criu plugin", PLUGIN_REMEDY)
    return _untrusted(lambda: safepath.open_dir(podman.CRIU_PLUGIN_DIR, "criu plugin directory", PLUGIN_REMEDY), check)


def _untrusted(opened: t.Callable[[], t.Tuple[int, str]], check: t.Callable[[int, str], None]) -> t.Optional[str]:
    """Why what ``opened`` reaches (by the chain rule) fails ``check``; None when it passes, or is absent."""
    try:
        fd, real = opened()
    except (FileNotFoundError, safepath.MissingDirectory):
        return None
    except CriuError as exc:
        return exc.msg
    try:
        check(fd, real)
    except CriuError as exc:
        return exc.msg
    finally:
        os.close(fd)
    return None


def same_container(metadata: t.Mapping[str, t.Any], found: t.Optional[t.Mapping[str, t.Any]], name: str) -> bool:
    """Is the checkpoint at DEST of this container? After a dump without leave_running it has exited, or is gone."""
    recorded = metadata.get("container")
    if not isinstance(recorded, dict):
        return False
    if found is None:
        return recorded.get("name") == name
    return recorded.get("id") == found["id"]


def dump_options(criu: CriuChoices, leave_running: bool, compress: str) -> t.Dict[str, t.Any]:
    """What the checkpoint records it was made with: the criu options Podman passes, and Podman's own."""
    options: t.Dict[str, t.Any] = {name: bool(criu.get(name)) for name in criu_options.PODMAN_PASSES}
    options.update(leave_running=leave_running, leave_stopped=False, compress=compress)
    return options


def export(engine: podman.Podman, found: t.Mapping[str, t.Any], images_fd: int, options: t.Mapping[str, t.Any],
           timeout: float, on_spawn: t.Optional[t.Callable[[int], None]] = None) -> t.Tuple[t.Dict[str, t.Any], float]:
    """Podman's export into images/export.tar, a file created here (0600, never an existing one)."""
    fd = os.open(EXPORT, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE, dir_fd=images_fd)
    try:
        return engine.checkpoint(found["id"], fd, options, timeout, on_spawn=on_spawn)
    finally:
        os.close(fd)


SETTLE_SECONDS = 10.0
# Podman (CNI host-local) refusing a restore the address it recorded: another container holds it now.
ADDRESS_TAKEN = re.compile(r"requested IP address (\S+) is not available")


def restore_kept(engine: podman.Podman, container_id: str, options: t.Mapping[str, t.Any], timeout: float) -> t.Optional[str]:
    """Restore a container stopped by a checkpoint in place, from the copy Podman keeps in its own storage
    (``--keep``), once Podman has seen it stop (its state lags its main process by a moment: it refuses a restore
    until then). Stopped, it holds no address in Podman's address book: should another container have been given it
    meanwhile, it comes back under a new one rather than stay stopped. Raises Podman's reason when it cannot run
    again; returns None, or the words for its new address."""
    deadline = time.monotonic() + SETTLE_SECONDS
    taken: t.Optional[str] = None
    while True:
        try:
            engine.restore_in_place(container_id, options, timeout)
            break
        except CriuError as exc:
            if "running or paused" in exc.msg and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if taken is not None:
                raise CriuError("its address %s was given to another container while it was stopped, and with a new "
                                "one: %s" % (taken, exc.msg)) from exc
            address = ADDRESS_TAKEN.search(exc.msg)
            if address is None:
                raise
            taken = address.group(1)
            options = dict(options, ignore_static_ip=True)
    if taken is None:
        return None
    return ("it came back with the address %s: its own, %s, was given to another container while it was stopped"
            % (", ".join(engine.addresses(container_id, timeout)) or "none", taken))


def bring_back(engine: podman.Podman, found: t.Mapping[str, t.Any], starttime: int, options: t.Mapping[str, t.Any],
               timeout: float) -> str:
    """After a failed checkpoint, make sure the container runs as before; say what happened to it."""
    if procfs.is_alive(found["pid"], starttime):
        return "The container %s is still running, untouched." % found["name"]
    running = engine.inspect(found["id"], timeout)
    if running is not None and running["state"] == "running":
        return "The container %s runs again, restored in place from the checkpoint." % found["name"]
    try:
        readdressed = restore_kept(engine, found["id"], options, timeout)
    except CriuError as exc:
        return ("The container %s was stopped by the checkpoint and could not be brought back: %s Run podman container "
                "restore %s." % (found["name"], exc.msg, found["id"]))
    return ("The container %s was brought back from Podman's own copy of the checkpoint (podman container restore)%s."
            % (found["name"], "; " + readdressed if readdressed else ""))


def run_on(engine: podman.Podman, found: t.Mapping[str, t.Any], options: t.Mapping[str, t.Any],
           timeout: float) -> t.Optional[str]:
    """leave_running for a container: it was stopped for a consistent export (see Podman.checkpoint) and runs on from
    the same memory, restored in place, before the export is hashed: the hashing is not downtime. A warning when it
    runs on under a new address."""
    try:
        readdressed = restore_kept(engine, found["id"], options, timeout)
    except CriuError as exc:
        raise CriuError("The container %s was stopped for its export and could not be restored in place: %s"
                        % (found["name"], exc.msg)) from exc
    return "The container %s runs on, but %s." % (found["name"], readdressed) if readdressed else None


def resume(engine: podman.Podman, recorded: t.Mapping[str, t.Any], options: t.Mapping[str, t.Any],
           timeout: float) -> t.Optional[str]:
    """A migration's source container runs again, with its memory: untouched if it still runs, else restored in
    place from Podman's own copy of the checkpoint. Raises when it cannot be; says so when it has a new address."""
    found = engine.inspect(recorded["id"], timeout)
    if found is None:
        raise CriuError("The source container %s (%s) is gone from this host: nothing here can bring it back."
                        % (recorded["name"], recorded["id"][:12]))
    if found["state"] == "running":
        return None
    try:
        return restore_kept(engine, recorded["id"], options, timeout)
    except CriuError as exc:
        raise CriuError("The source container %s could not be restored in place: %s Run podman container restore %s."
                        % (recorded["name"], exc.msg, recorded["id"])) from exc


def remove_half_made(engine: podman.Podman, name: str, failure: CriuError, timeout: float) -> None:
    """After a failed restore: the name was free at the preflight, so what holds it now is this restore's copy, dead or
    half started. Left there, it would run beside a retry's copy, or block it under the same name. Should the removal
    fail too, ``failure`` (the restore's own reason, which stays the error) says so."""
    try:
        engine.remove(name, timeout)
    except CriuError as removal:
        failure.msg += (" The half-made container %s could not be removed either (%s): remove it (podman rm --force %s) "
                        "before a retry." % (name, removal.msg.rstrip(". "), name))


def identity(found: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """What a migration's journal keeps of a container: enough to find it again, its image for the target, and its
    labels (a drain's rerun finds by them the containers an earlier run moved away)."""
    return {key: found[key] for key in ("id", "name", "image_id", "image_name", "labels")}


def describe(engine: podman.Podman, found: t.Mapping[str, t.Any], timeout: float) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any]]:
    """What metadata.json records about the container (``container``) and its main process (``process``), before
    the dump: afterwards the process may be gone."""
    pid = found["pid"]
    st = procfs.read_stat(pid)
    if st is None:
        raise CriuError("The main process %d of container %s is gone; is the container still running?" % (pid, found["name"]))
    criu = podman.runtime_criu(timeout)
    if criu["problem"]:
        raise CriuError(criu["problem"])
    container = {"engine": "podman", "engine_version": engine.version, "runtime": found["runtime"], "id": found["id"],
                 "name": found["name"], "image_id": found["image_id"], "image_name": found["image_name"]}
    return dict(container, criu={"path": criu["path"], "version": criu["version"]}), procfs.process_facts(pid, st)


def restore_options(metadata: t.Mapping[str, t.Any], tcp_established: bool = False, ignore_static_ip: bool = False,
                    ignore_static_mac: bool = False) -> t.Dict[str, bool]:
    """What Podman's restore is told: the criu options the dump recorded (tcp_established also when asked now), and
    the caller's choice of a new address for a copy beside the original."""
    recorded = metadata["options"]
    return {"tcp_established": bool(recorded.get("tcp_established") or tcp_established),
            "file_locks": bool(recorded.get("file_locks")),
            "ignore_static_ip": ignore_static_ip, "ignore_static_mac": ignore_static_mac}


def restore_name(metadata: t.Mapping[str, t.Any], container_name: t.Optional[str], tcp_established: bool) -> str:
    """The restored container's name: ``container_name``, else the checkpointed one's. Podman keeps established TCP
    connections only under the container's own name (it refuses --tcp-established with --name)."""
    name = container_name or metadata["container"]["name"]
    if tcp_established and name != metadata["container"]["name"]:
        raise CriuError("Container %s holds established TCP connections, which Podman restores only under the container's own "
                        "name: leave container_name out, and remove the stopped original first (podman rm %s) or restore on "
                        "another host." % (metadata["container"]["name"], metadata["container"]["name"]))
    return name


def restore_problems(engine: podman.Podman, metadata: t.Mapping[str, t.Any], name: t.Optional[str],
                     timeout: float) -> t.List[str]:
    """Why this host cannot restore the container checkpoint (under ``name``, when given); empty when it can."""
    problems, _present = image_problems(engine, metadata["container"], False, timeout)
    problems += runc_criu_problems()
    if name is not None and engine.inspect(name, timeout) is not None:
        problems.append("a container named %s exists on this host: set container_name to another name, or remove that "
                        "container (podman rm %s) if it is the stopped original" % (name, name))
    return problems


def restore_export(engine: podman.Podman, images_fd: int, name: str, recorded_name: str, options: t.Mapping[str, t.Any],
                   timeout: float, on_spawn: t.Optional[t.Callable[[int], None]] = None
                   ) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any], float]:
    """Import and restore the verified export held open under ``images_fd``; the new container and Podman's stats."""
    fd = os.open(EXPORT, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=images_fd)
    try:
        stats, seconds = engine.restore_import(fd, None if name == recorded_name else name, options, timeout, on_spawn=on_spawn)
    finally:
        os.close(fd)
    restored = engine.inspect(name, timeout)
    if restored is None or restored["state"] != "running" or not restored["pid"]:
        raise CriuError("podman container restore reported success, but container %s is %s." % (
            name, restored["state"] if restored else "not there"))
    return restored, stats, seconds


def image_problems(engine: podman.Podman, recorded: t.Mapping[str, t.Any], transfer_image: bool,
                   timeout: float) -> t.Tuple[t.List[str], bool]:
    """Why the container's image is not usable here, and whether it is here under its name (Podman's restore finds
    it by the name the container was created from, and would pull a missing one). A missing image is no problem when
    a migration brings it (``transfer_image``); a name that means another image here always is."""
    named = engine.image_id(recorded["image_name"] or recorded["image_id"], timeout)
    present = named == recorded["image_id"]
    if named is not None and not present:
        return ["the name %s means another image here (%s), not the container's (%s), and a restore would use it: re-tag "
                "or remove it here" % (recorded["image_name"], named[:12], recorded["image_id"][:12])], False
    if not present and not transfer_image:
        return ["the container's image %s (%s) is not here, and a checkpoint does not hold it: load it here first (podman "
                "save on the source, podman load and podman tag here), or let the migration send it (transfer_image)"
                % (recorded["image_name"], recorded["image_id"][:12])], False
    return [], present


def target_problems(engine: podman.Podman, recorded: t.Mapping[str, t.Any], transfer_image: bool,
                    timeout: float) -> t.Tuple[t.List[str], bool]:
    """Why a migration of the container ``recorded`` cannot land on this host, and whether its image is here."""
    problems, present = image_problems(engine, recorded, transfer_image, timeout)
    problems += runc_criu_problems()
    if engine.inspect(recorded["name"], timeout) is not None:
        problems.append("a container named %s exists here: remove it (podman rm %s) or migrate to another host"
                        % (recorded["name"], recorded["name"]))
    return problems, present


def ready_engine(engine: str, timeout: float, caps: int) -> t.Tuple[t.Optional[podman.Podman], t.List[str]]:
    """Podman as criu_info finds it here, and every problem criu_info names; None when it cannot even be asked about
    images and containers (missing, or running no runtime)."""
    facts = podman.container_facts(engine, timeout, caps)
    if facts["path"] is None or not facts.get("runtime"):
        return None, facts["problems"]
    return podman.Podman(facts["path"], facts["version"]), facts["problems"]


def host_problems(metadata: t.Mapping[str, t.Any], timeout: float, caps: int) -> t.List[str]:
    """Why this host cannot restore the container checkpoint: Podman's readiness, and the image."""
    engine, problems = ready_engine(metadata["container"].get("engine", "podman"), timeout, caps)
    return problems + (restore_problems(engine, metadata, None, timeout) if engine is not None else [])


class ContainerWorkload(Workload):
    """The container named ``name``, as Podman inspected it (``found``: None when there is none)."""

    def __init__(self, name: str, engine: podman.Podman, found: t.Optional[t.Dict[str, t.Any]]) -> None:
        self.name = name
        self.engine = engine
        self.found = found

    @property
    def what(self) -> str:
        return "container %s" % self.name

    def result(self) -> t.Dict[str, t.Any]:
        return {"container": self.name}

    def is_in(self, metadata: Metadata) -> bool:
        return same_container(metadata, self.found, self.name)

    def require_checkpointable(self, criu_path: t.Optional[str]) -> None:
        require_running(self.found, self.name)

    def to_come(self, name: str) -> t.Dict[str, t.Any]:
        found = self.found or {}
        return diff_.new_checkpoint(name, found.get("pid"), container=found.get("name"))

    def dump(self, loc: store.Location, request: CheckpointRequest, key: t.Optional[bytes],
             algorithm: str) -> t.Dict[str, t.Any]:
        """Podman's export into a staging dir, hashed, described, signed and published as DEST in one rename. Whatever
        fails once the checkpoint stopped the container, Podman's own copy of the checkpoint brings it back."""
        engine, found = self.engine, t.cast(t.Dict[str, t.Any], self.found)
        options = dump_options(request.criu, request.leave_running, request.compress)
        recorded, facts = describe(engine, found, request.timeout)
        staging: t.Optional[store.Staging] = None
        try:
            with seal_.staged(loc) as staging:
                seal_.note_stopping(loc, staging, {"container": identity(found), "options": options})
                frozen_at = procfs.utc_now()
                podman_stats, dump_seconds = export(engine, found, staging.images_fd, options, request.timeout)
                failpoint(loc.name, "dumped")  # tests stop a checkpoint here, the container stopped, nothing published
                readdressed = run_on(engine, found, options, request.timeout) if request.leave_running else None
                flush_started = time.monotonic()
                manifest = seal_.flushed_manifest(staging.images_fd, algorithm)
                metadata = seal_.describe(recorded.pop("criu"), request.name or loc.name, facts, options, algorithm, manifest,
                                          recorded)
                seal_.seal(staging, metadata, key)
                staging.publish()
                fsync_seconds = time.monotonic() - flush_started
        except BaseException as exc:
            seal_.failed_dump_fate(exc, staging, loc,
                                   lambda: bring_back(engine, found, facts["starttime"], options, request.timeout))
            seal_.forget_stopping(loc)
            raise
        seal_.forget_stopping(loc)
        result = seal_.dump_result(metadata, frozen_at, dump_seconds, fsync_seconds, podman=podman_stats)
        return dict(result, warnings=[readdressed]) if readdressed else result


def _recorded(record: Record) -> t.Dict[str, t.Any]:
    return t.cast(t.Dict[str, t.Any], record.get("container"))


class Container(Kind):
    """A Podman container: Podman checkpoints it (runc runs criu) into one export, and imports it again."""

    name = "container"

    def asked(self, ref: WorkloadRef) -> bool:
        return bool(ref.container)

    def holds(self, metadata: Metadata) -> bool:
        """A checkpoint, a source journal or a request records the container; a target journal its copy's id."""
        return isinstance(metadata.get("container"), dict) or bool(metadata.get("container_id"))

    def subject(self, metadata: Metadata) -> str:
        return "container (%s, %s)" % (metadata["container"].get("name"), str(metadata["container"].get("id"))[:12])

    def host_info(self, engine: t.Optional[str], timeout: float, caps: int) -> t.Dict[str, t.Any]:
        """With ``engine`` (podman): whether it can checkpoint containers here (see _podman.container_facts)."""
        return {"containers": podman.container_facts(engine, timeout, caps)} if engine else {}

    def engine_record(self, metadata: Metadata) -> t.Optional[t.Dict[str, t.Any]]:
        return {key: metadata["container"].get(key) for key in ("engine", "name", "id", "image_name")}

    def inspect_unavailable(self) -> t.Optional[str]:
        return ("a container's checkpoint: criu's images are inside Podman's export (images/export.tar), which is not "
                "unpacked to be parsed")

    def refuse_unsupported(self, criu: CriuChoices, at: str, leave_stopped: bool = False) -> None:
        refuse_unsupported(criu, at, leave_stopped)

    def find(self, ref: WorkloadRef, timeout: float) -> Workload:
        engine = podman_engine(timeout)
        name = t.cast(str, ref.container)
        return ContainerWorkload(name, engine, engine.inspect(name, timeout))

    def restore(self, checkpoint: store.Checkpoint, verdict: t.Any, request: RestoreRequest,
                key: t.Optional[bytes], check_mode: bool) -> t.Dict[str, t.Any]:
        """Podman imports and restores the verified export, under ``container_name``."""
        metadata = t.cast(t.Dict[str, t.Any], verdict.metadata)
        src, timeout = checkpoint.path, request.timeout
        shown = integrity.public(metadata)
        if request.unit:
            raise CriuError("unit applies to a unit's checkpoint only, and %s is the checkpoint of container %s. Leave it out."
                            % (src, metadata["container"].get("name")), path=src)
        refuse_unsupported(request.criu, "restore")
        engine = podman_engine(timeout)
        previous = restored_.recorded_restore(checkpoint, metadata, key)
        running = previous and engine.inspect(str(previous.get("container_id")), timeout)
        live = previous if running and running["state"] == "running" else None  # the copy an earlier restore made, running
        if running and live and not request.force:
            return {"changed": False, "src": src, "pid": running["pid"], "container": running, "checkpoint": shown,
                    "restored": previous, "actions": [], "diff": diff_.restore(src, live, diff_.restored(live))}
        options = restore_options(metadata, bool(request.criu.get("tcp_established")), request.ignore_static_ip,
                                  request.ignore_static_mac)
        name = restore_name(metadata, request.container_name, options["tcp_established"])
        problems = host.restore_problems(metadata) + restore_problems(engine, metadata, name, timeout)
        if problems:
            raise CriuError("Cannot restore %s on this host: %s." % (src, listed(problems)), path=src, problems=problems)
        host.require_privileges()
        action = "restore %s (checkpoint of container %s) as container %s" % (src, metadata["container"]["name"], name)
        if check_mode:
            return {"changed": True, "src": src, "pid": None, "checkpoint": shown, "actions": ["would " + action],
                    "diff": diff_.restore(src, live, diff_.new_restore(metadata["id"], name))}
        try:
            restored, podman_stats, seconds = restore_export(engine, checkpoint.images_fd, name, metadata["container"]["name"],
                                                             options, timeout)
        except CriuError as exc:
            remove_half_made(engine, name, exc, timeout)
            raise
        record = restored_.restore_record(metadata["id"], restored["pid"], procfs.utc_now(), container_id=restored["id"],
                                          container_name=restored["name"])
        restored_.save_record(checkpoint.fd, record, key)
        restored_.record_pid(request.pidfile, src, restored["pid"])
        return {
            "changed": True, "src": src, "pid": restored["pid"], "container": restored, "checkpoint": shown, "restored": record,
            "stats": dict(verdict.stats(), restore_seconds=round(seconds, 3), podman=podman_stats), "actions": [action],
            "diff": diff_.restore(src, live, diff_.restored(record)),
        }

    def host_problems(self, metadata: Metadata, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        return host_problems(metadata, timeout, caps)

    # --- a migration, on its source ---------------------------------------------------------------------------
    def refuse_migration(self, mode: str) -> None:
        if mode != "copy":
            raise CriuError("mode=%s cannot migrate a container: Podman restores a container whole, not lazily. Use mode=copy."
                            % mode)

    def look_up(self, ref: WorkloadRef, timeout: float) -> Found:
        found = podman_engine(timeout).inspect(t.cast(str, ref.container), timeout)
        return Found(found["pid"] if found and found["state"] == "running" else None, found)

    def require(self, ref: WorkloadRef, found: Found) -> Found:
        return Found(require_running(found.engine_view, t.cast(str, ref.container))["pid"], found.engine_view)

    def describe_found(self, found: Found) -> str:
        return "container %s" % t.cast(t.Dict[str, t.Any], found.engine_view)["name"]

    def describe_record(self, record: Record) -> str:
        return "container %s" % _recorded(record)["name"]

    def frozen_state(self, record: Record) -> str:
        return "stopped by its checkpoint, which Podman keeps (never restored here while in doubt)"

    def journal_identity(self, found: Found) -> t.Dict[str, t.Any]:
        return {"container": identity(t.cast(t.Dict[str, t.Any], found.engine_view))}

    def recorded_identity(self, record: Record) -> t.Dict[str, t.Any]:
        return {"container": _recorded(record)}

    def already_migrated(self, record: Record, found: Found) -> bool:
        """Gone (removed at the commit) or still it, stopped (its removal failed). The same container running here
        again came back since: it migrates anew."""
        view = found.engine_view
        return view is None or (view["id"] == _recorded(record)["id"] and view["state"] != "running")

    def reused_pid(self, record: Record, found: Found) -> bool:
        return False

    def claim_key(self, process: t.Mapping[str, t.Any], record: Record) -> str:
        return "container-%s" % _recorded(record)["id"]

    def source_problems(self, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        return list(podman.container_facts("podman", timeout, caps)["problems"])

    def target_problems(self, facts: t.Mapping[str, t.Any]) -> t.List[str]:
        return ["on the target: %s" % problem for problem in facts["workload"]["problems"]]

    def image_to_send(self, found: Found, target_facts: t.Mapping[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
        if target_facts["workload"]["image_present"]:
            return None
        view = t.cast(t.Dict[str, t.Any], found.engine_view)
        return {"image_id": view["image_id"], "image_name": view["image_name"]}

    def save_image(self, image: t.Mapping[str, t.Any], fd: int, timeout: float) -> None:
        podman_engine(timeout).save_image(image["image_id"], fd, timeout)

    def load_image(self, image: t.Mapping[str, t.Any], fd: int, timeout: float) -> None:
        """A docker-archive, which keeps the image's id."""
        engine = podman_engine(timeout)
        engine.load_image(fd, image["image_id"], image["image_name"], timeout)
        if engine.image_id(image["image_name"] or image["image_id"], timeout) != image["image_id"]:
            raise CriuError("podman load took the image the source sent, but %s is not image %s here afterwards."
                            % (image["image_name"] or "its id", image["image_id"][:12]))

    def freeze(self, freezer: Freezer, staging: store.Staging, pid: int) -> t.Tuple[t.Dict[str, t.Any], float]:
        """Podman checkpoints the container (it stops; Podman keeps a copy to restore it in place from) into the
        export, which streams to the target while Podman writes it."""
        engine = podman_engine(freezer.timeout)
        recorded = _recorded(freezer.journal_data())
        found = engine.inspect(recorded["id"], freezer.timeout)
        if found is None or found["pid"] != pid:
            raise CriuError("Container %s was stopped, restarted or removed since the preflight; nothing was migrated."
                            % recorded["name"])
        described, facts = describe(engine, found, freezer.timeout)
        options = dump_options(freezer.criu, False, "none")

        def checkpointing(podman_pid: int) -> None:
            freezer.note(engine_process=procfs.tree_identity(podman_pid)[0])
            freezer.reached("checkpointing")  # Podman has the container from here

        freezer.start_freeze(pid)
        images_path = os.path.join(staging.path, store.IMAGES)
        with follow.ImageFollower(staging.images_fd, images_path, freezer.algorithm, on_chunk=freezer.send_chunk,
                                  write_back=False, followed=follow.FOLLOWED_EXPORT) as follower:
            podman_stats, dump_seconds = export(engine, found, staging.images_fd, options, freezer.timeout, on_spawn=checkpointing)
            hashed = follower.digests()
        freezer.note(podman=podman_stats)
        manifest = freezer.manifest(staging.images_fd, hashed)
        criu = described.pop("criu")
        return seal_.describe(criu, freezer.name, facts, options, freezer.algorithm, manifest, described), dump_seconds

    def resume_stopped(self, record: Record, loc: store.Location, timeout: float) -> t.List[str]:
        """Stopped by Podman's checkpoint, it is restored in place from Podman's own copy, with its criu options."""
        recorded = _recorded(record) or {}
        engine = podman_engine(timeout)
        found = engine.inspect(str(recorded.get("id")), timeout) if recorded.get("id") else None
        if found is None or found["state"] == "running":
            return []
        try:
            readdressed = restore_kept(engine, found["id"], record.get("options") or {}, timeout)
        except CriuError as exc:
            raise CriuError("Container %s was stopped by a checkpoint run into %s that died before publishing it, and "
                            "could not be restored in place: %s Run podman container restore %s."
                            % (found["name"], loc.path, exc.msg, found["id"]), path=loc.path) from exc
        return ["Restored container %s in place, stopped by a run that died after Podman's checkpoint into %s%s"
                % (found["name"], loc.path, "; " + readdressed if readdressed else "")]

    def resume_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """Restored in place from the checkpoint Podman keeps, with the criu options it was frozen with."""
        return resume(podman_engine(timeout), _recorded(record), (record.get("settings") or {}).get("criu") or {}, timeout)

    def end_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """Stopped by its checkpoint, it is removed with the copy Podman keeps, so that no restore can bring it back."""
        try:
            podman_engine(timeout).remove(_recorded(record)["id"], timeout)
        except CriuError as exc:
            return exc.msg
        return None

    def copy_waits_for_commit(self, record: Record) -> bool:
        # Podman cannot restore a container stopped: once the whole export was sent, the target's copy may run.
        return not record.get("sealed_sent")

    def runs_on_target_undecided(self, record: Record) -> bool:
        """Restored and voted for, it runs there while the source's copy is stopped by its checkpoint; unless its lease
        ran out, a recovery commits it."""
        return (record.get("phase") == "target_restored" and record.get("decision") is None
                and record.get("outcome") is None and not record.get("lease_expired"))

    # --- a migration, on its target ----------------------------------------------------------------------------
    def target_preflight(self, request: t.Mapping[str, t.Any], can_restore: bool) -> t.Optional[t.Dict[str, t.Any]]:
        """Whether Podman here can restore it (runtime, criu, limits), its image, its name."""
        recorded = request["container"]
        timeout = float(request["timeout"])
        engine, problems = ready_engine("podman", timeout, host.effective_caps())
        if engine is None or not can_restore:
            return {"problems": problems, "image_present": False}
        landing, present = target_problems(engine, recorded, bool(request.get("transfer_image")), timeout)
        return {"problems": problems + landing, "image_present": present}

    def prepare_landing(self, request: t.Mapping[str, t.Any], timeout: float) -> podman.Podman:
        """Podman, once it can take the container (its image here under its name, its name free): checked before the
        source freezes anything, not in the downtime. Podman refuses a restore itself should that change meanwhile."""
        recorded = request["container"]
        engine = podman_engine(timeout)
        problems, _present = target_problems(engine, recorded, False, timeout)
        if problems:
            raise CriuError("Cannot restore container %s on this host: %s." % (recorded["name"], listed(problems)), problems=problems)
        return engine

    def land(self, landing: Landing, journal: TargetJournal, runtime: CriuRuntime, opened: store.Checkpoint,
             metadata: Metadata, page_conn: t.Optional[socket.socket],
             stack: contextlib.ExitStack) -> t.Tuple[int, t.Optional[Daemon]]:
        """Podman imports and restores the verified export under the container's own name and id. Podman cannot leave
        a restored container stopped: the copy runs from here, as a post-copy one does, and the source container stays
        stopped until the decision; an abort removes this copy before the source runs again."""
        recorded = metadata["container"]
        announced = landing.request.get("container") or {}
        if landing.prepared is None or recorded.get("id") != announced.get("id"):
            raise CriuError("The checkpoint holds container %s, not the container this migration announced (%s)."
                            % (recorded.get("name"), announced.get("name")))
        engine = landing.prepared
        journal.record("restoring", container_id=recorded["id"], container_name=recorded["name"], timeout=landing.timeout)
        options = restore_options(metadata)
        restoring = threading.Event()

        def importing(podman_pid: int) -> None:
            journal.record("restoring", engine_process=procfs.tree_identity(podman_pid)[0])
            if landing.source_fd is not None:
                threading.Thread(target=_kill_when_the_source_leaves, daemon=True,
                                 args=(landing.source_fd, journal.get("engine_process"), restoring)).start()
            landing.reached("importing")  # Podman creates the container from here

        try:
            restored, podman_stats, seconds = restore_export(engine, opened.images_fd, recorded["name"], recorded["name"],
                                                             options, landing.timeout, on_spawn=importing)
        finally:
            restoring.set()
        journal.data["running_since"] = time.monotonic()
        journal.record("restoring", restore_seconds=round(seconds, 3), podman=podman_stats)
        return t.cast(int, restored["pid"]), None

    def remove_landed(self, record: Record, timeout: float) -> t.List[int]:
        """Podman's restore keeps the container's id: whatever runs under it here is this migration's copy. A restore
        still running (its agent died) would create it after a look: it is waited for first."""
        procfs.wait_identified_gone(record.get("engine_process"), timeout=timeout)
        victims: t.List[int] = []
        try:
            podman_engine(timeout).remove(record["container_id"], timeout)
        finally:
            # A restore killed on its timeout may have started the container already, under a conmon Podman has no
            # record of (podman rm finds nothing): the copy runs there until its monitor and everything under it go.
            for monitor in procfs.processes_with_argument("conmon", record["container_id"]):
                victims += procfs.kill_tree(monitor)
        return victims

    def copy_stopped_until_commit(self, record: Record) -> bool:
        return False

    def landed_identity(self, record: Record) -> t.Dict[str, t.Any]:
        return {"container_id": record.get("container_id"), "container_name": record.get("container_name")}


def _kill_when_the_source_leaves(source_fd: int, engine_process: t.Sequence[int], restoring: threading.Event) -> None:
    """While Podman restores (it may take minutes), nothing reads the source's session. A source that left (its lease
    ran out, it decided to abort) waits for this host to confirm its copy is gone before its own container runs again,
    and this host's decision lock is held until the restore ends: so its hang-up kills podman at once, the restore
    fails, and the abort that follows removes whatever it started."""
    poller = select.poll()
    poller.register(source_fd, select.POLLRDHUP)  # a hang-up (POLLHUP, POLLERR) is always reported
    while not restoring.is_set():
        if poller.poll(100):
            procfs.signal_identified([engine_process], signal.SIGKILL)
            return
