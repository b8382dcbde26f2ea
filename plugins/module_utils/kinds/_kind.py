# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A kind of workload (a process tree, a Podman container, ...): everything that differs between kinds, behind
one interface, so that checkpoint, restore and the migration protocol never ask which kind they hold.

A kind is one module in this folder with a subclass of ``Kind``, registered in ``_registry.KINDS``.
"""

from __future__ import annotations

import abc
import contextlib
import socket
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils._requests import CheckpointRequest, CriuChoices, RestoreRequest, WorkloadRef
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Daemon
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.storage._integrity import FileDigest

Metadata = t.Mapping[str, t.Any]
Record = t.Mapping[str, t.Any]  # a migration journal's data on its source


class Freezer(t.Protocol):
    """What a migration's worker lends a kind's freeze: its settings, its journal and its link to the target."""

    @property
    def name(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    @property
    def algorithm(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def criu(self) -> t.Mapping[str, t.Any]:
        """The criu options, by module option name, as the migration was given them."""

    def journal_data(self) -> Record: ...

    def note(self, **fields: t.Any) -> None:
        """Record ``fields`` in the journal, in the phase it is in."""

    def start_freeze(self, pid: int) -> None:
        """The freeze window opens (journaled, with the tree about to be frozen)."""

    def send_chunk(self, name: str, offset: int, data: memoryview, fd: t.Optional[int] = None) -> None:
        """Send ``data``, the bytes at ``offset`` of image ``name`` (also at ``offset`` of the open file ``fd``, when
        given: they are sent from there, without a copy)."""

    def manifest(self, images_fd: int, hashed: t.Dict[str, FileDigest]) -> t.List[t.Dict[str, t.Any]]:
        """Send what was not streamed while written; the manifest of everything sent."""

    def lazy_dump(self, start: t.Callable[[int], t.Any]) -> float:
        """Post-copy: start criu's lazy dump on the page relay's socket (``start(fd)``); its startup seconds."""

    def reached(self, step: str) -> None:
        """A step tests may stop the migration at (a failpoint)."""


class Found(t.NamedTuple):
    """A migration's workload as looked up: its root pid (None when none runs) and, for kinds that have one, what
    their engine says of it (a container as Podman inspects it)."""

    pid: t.Optional[int]
    engine_view: t.Optional[t.Dict[str, t.Any]] = None


class TargetJournal(t.Protocol):
    """A migration's journal on its target, as a kind's landing writes to it."""

    data: t.Dict[str, t.Any]

    @property
    def phase(self) -> str: ...

    def get(self, key: str, default: t.Any = None) -> t.Any: ...

    def record(self, phase: str, **fields: t.Any) -> None: ...


class Landing(t.Protocol):
    """What the target's agent lends a kind to restore a migration's copy."""

    request: t.Mapping[str, t.Any]
    timeout: float
    restore_options: t.Mapping[str, t.Any]  # the migration's restore-time choices (manage_cgroups, cgroup_root)
    prepared: t.Any  # what the kind's prepare_landing returned
    source_fd: t.Optional[int]  # the source's session: its hang-up means the source left

    @property
    def restore_pidfile(self) -> str:
        """Where criu writes the restored root's pid (an abort finds the copy by it)."""

    def reached(self, step: str) -> None:
        """A step tests may stop the migration at (a failpoint)."""


class Workload(abc.ABC):
    """One workload of a kind, as found on this host when a module looked it up."""

    @property
    @abc.abstractmethod
    def what(self) -> str:
        """The workload in messages: "pid 42 (python3)", "container web"."""

    @abc.abstractmethod
    def result(self) -> t.Dict[str, t.Any]:
        """What names it in a module's result ({"pid": 42}, {"container": "web"})."""

    @abc.abstractmethod
    def is_in(self, metadata: Metadata) -> bool:
        """Is the checkpoint ``metadata`` describes of this very workload (after a dump that ended it, too)?"""

    @abc.abstractmethod
    def require_checkpointable(self, criu_path: t.Optional[str]) -> None:
        """Raise naming what a dump of it lacks (it is gone, stopped, untrusted, no criu, ...)."""

    @abc.abstractmethod
    def to_come(self, name: str) -> t.Dict[str, t.Any]:
        """The checkpoint a dump would make, as check mode's diff shows it."""

    @abc.abstractmethod
    def dump(self, loc: store.Location, request: CheckpointRequest, key: t.Optional[bytes],
             algorithm: str) -> t.Dict[str, t.Any]:
        """Dump into a staging directory and publish it as ``loc``; the checkpoint and stats for the result."""

    def left_stopped(self, metadata: Metadata) -> t.Optional[str]:
        """What is left to do (in words) when the checkpoint ``metadata`` describes, of this workload, was published by
        a run that died before it ended the workload; None when nothing is."""
        return None

    def end_left_stopped(self, timeout: float) -> None:
        """Do what left_stopped names (only called when it names something)."""
        raise NotImplementedError(self.what)


class Kind(abc.ABC):
    """The operations that differ by kind; one instance per kind, stateless."""

    name: str

    # --- which kind ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def asked(self, ref: WorkloadRef) -> bool:
        """Does a module's request name a workload of this kind?"""

    @abc.abstractmethod
    def holds(self, metadata: Metadata) -> bool:
        """Is ``metadata`` (a checkpoint's, or a migration journal's) of this kind?"""

    @abc.abstractmethod
    def subject(self, metadata: Metadata) -> str:
        """What the checkpoint holds, as messages name it: "process (pid 42, python3)"."""

    def host_info(self, engine: t.Optional[str], timeout: float, caps: int) -> t.Dict[str, t.Any]:
        """What criu_info reports of this host for this kind, beyond criu itself (asked for ``engine``)."""
        return {}

    def engine_record(self, metadata: Metadata) -> t.Optional[t.Dict[str, t.Any]]:
        """What an engine recorded of the workload, as a listing shows it (a container's engine, name, id, image);
        None for a kind that has no engine."""
        return None

    def inspect_unavailable(self) -> t.Optional[str]:
        """Why criu's parser cannot read this kind's images in place; None when it can."""
        return None

    # --- checkpoint and restore ----------------------------------------------------------------------------
    @abc.abstractmethod
    def refuse_unsupported(self, criu: CriuChoices, at: str, leave_stopped: bool = False) -> None:
        """Raise naming an option this kind cannot honour at ``at`` ("dump", "restore", "migrate")."""

    @abc.abstractmethod
    def find(self, ref: WorkloadRef, timeout: float) -> Workload:
        """The workload ``ref`` names, as it is now (raises when it cannot even be looked up)."""

    @abc.abstractmethod
    def restore(self, checkpoint: store.Checkpoint, verdict: t.Any, request: RestoreRequest,
                key: t.Optional[bytes], check_mode: bool) -> t.Dict[str, t.Any]:
        """Restore the verified checkpoint (or say, in check mode, what would be); the module result."""

    @abc.abstractmethod
    def host_problems(self, metadata: Metadata, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        """Why this host cannot restore the checkpoint, beyond what every kind checks (arch, busy pids)."""

    # --- a migration, on its source ---------------------------------------------------------------------------
    @abc.abstractmethod
    def refuse_migration(self, mode: str) -> None:
        """Raise when this kind cannot migrate in ``mode``."""

    @abc.abstractmethod
    def look_up(self, ref: WorkloadRef, timeout: float) -> Found:
        """The workload a migration is asked to move, as it is now: None parts where there is none running."""

    @abc.abstractmethod
    def require(self, ref: WorkloadRef, found: Found) -> Found:
        """``found``, which must run now; raises explaining what it is instead."""

    @abc.abstractmethod
    def describe_found(self, found: Found) -> str:
        """The workload a migration moves, in messages: "pid 42", "container web"."""

    @abc.abstractmethod
    def describe_record(self, record: Record) -> str:
        """The workload a migration journal ``record`` moved, in messages: "pid 42", "container web"."""

    @abc.abstractmethod
    def frozen_state(self, record: Record) -> str:
        """How the source's copy is left while its migration is in doubt."""

    @abc.abstractmethod
    def journal_identity(self, found: Found) -> t.Dict[str, t.Any]:
        """What the migration's journal records to find the workload again (beyond its process)."""

    @abc.abstractmethod
    def recorded_identity(self, record: Record) -> t.Dict[str, t.Any]:
        """journal_identity, read back from the journal ``record`` (what the target's requests carry)."""

    @abc.abstractmethod
    def already_migrated(self, record: Record, found: Found) -> bool:
        """Is ``found`` the very workload the completed migration ``record`` moved (so nothing is left to do)?"""

    @abc.abstractmethod
    def reused_pid(self, record: Record, found: Found) -> bool:
        """Does ``found`` hold the pid the completed migration ``record`` moved, now another workload's?"""

    @abc.abstractmethod
    def claim_key(self, process: t.Mapping[str, t.Any], record: Record) -> str:
        """What the workload is on this host, whatever a migration calls it (one migration may freeze it)."""

    @abc.abstractmethod
    def source_problems(self, criu_path: t.Optional[str], timeout: float, caps: int) -> t.List[str]:
        """Why this host cannot freeze a workload of this kind (raises for a missing criu)."""

    @abc.abstractmethod
    def target_problems(self, facts: t.Mapping[str, t.Any]) -> t.List[str]:
        """What the target's preflight found against this kind."""

    def image_to_send(self, found: Found, target_facts: t.Mapping[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
        """The image (``image_id``, ``image_name``) the target lacks and the migration sends before the freeze; None
        for a kind whose checkpoint holds everything (a process tree's files are the host's own)."""
        return None

    def save_image(self, image: t.Mapping[str, t.Any], fd: int, timeout: float) -> None:
        """Write ``image`` (one image_to_send returned) into ``fd``, as the target's load_image reads it."""
        raise NotImplementedError("a %s has no image to send" % self.name)

    def load_image(self, image: t.Mapping[str, t.Any], fd: int, timeout: float) -> None:
        """On the target: load ``image`` (``image_id``, ``image_name``) from ``fd``, as save_image wrote it; it must be
        here under its id afterwards."""
        raise NotImplementedError("a %s has no image to load" % self.name)

    @abc.abstractmethod
    def freeze(self, freezer: Freezer, staging: store.Staging, pid: int) -> t.Tuple[t.Dict[str, t.Any], float]:
        """Freeze and dump the workload while its images stream to the target; its metadata and dump seconds."""

    def resume_stopped(self, record: Record, loc: store.Location, timeout: float) -> t.List[str]:
        """Bring back the workload a checkpoint run into ``loc`` stopped before it died, the checkpoint unpublished
        (``record``: what its dump noted, _seal.note_stopping); what was done, in words."""
        return []

    @abc.abstractmethod
    def resume_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """Let the frozen source run on with its memory; raise when it cannot. How it runs otherwise than before, if
        it does (a container under a new address), in words."""

    def release(self, record: Record, timeout: float) -> None:
        """Undo what a migration did to the source's workload before its freeze (a unit's hold and boot start), when
        it is undone before anything was frozen."""
        return None

    @abc.abstractmethod
    def end_source(self, record: Record, timeout: float) -> t.Optional[str]:
        """The target runs it now: the source must never run again. What could not be cleaned up, if anything."""

    def source_lost(self, record: Record) -> bool:
        """Can the source's frozen copy never run again (its host rebooted, its frozen tree was killed)? A recovery
        then commits a whole copy on the target instead of undoing the migration."""
        return False

    @abc.abstractmethod
    def copy_waits_for_commit(self, record: Record) -> bool:
        """Does the target's copy stay stopped until a commit (so the source may resume first on an abort)?"""

    @abc.abstractmethod
    def runs_on_target_undecided(self, record: Record) -> bool:
        """Does the target's copy already run, voted for, with no decision yet (a recovery then commits)?"""

    # --- a migration, on its target ----------------------------------------------------------------------------
    @abc.abstractmethod
    def target_preflight(self, request: t.Mapping[str, t.Any], can_restore: bool) -> t.Optional[t.Dict[str, t.Any]]:
        """What the source's preflight must know of this host for this kind (None when nothing), its problems listed."""

    @abc.abstractmethod
    def prepare_landing(self, request: t.Mapping[str, t.Any], timeout: float) -> t.Any:
        """Make sure, before the source freezes anything, that this host can take the workload; what land needs."""

    @abc.abstractmethod
    def land(self, landing: Landing, journal: TargetJournal, runtime: CriuRuntime, opened: store.Checkpoint,
             metadata: Metadata, page_conn: t.Optional[socket.socket],
             stack: contextlib.ExitStack) -> t.Tuple[int, t.Optional[Daemon]]:
        """Restore the verified checkpoint as the migration's copy: stopped until the commit where the kind can (see
        copy_stopped_until_commit); its root pid, and post-copy's page fetcher (which lives as long as ``stack``)."""

    def committed(self, record: Record, timeout: float) -> None:
        """The copy runs here for good (the commit resumed it): what the kind does beyond letting it run."""
        return None

    @abc.abstractmethod
    def remove_landed(self, record: Record, timeout: float) -> t.List[int]:
        """Remove this kind's own trace of the copy (beyond its process tree, which the agent kills); the pids that
        must go."""

    @abc.abstractmethod
    def copy_stopped_until_commit(self, record: Record) -> bool:
        """Does the copy on the target wait, stopped, for the commit (so that one dead meanwhile never ran)?"""

    @abc.abstractmethod
    def landed_identity(self, record: Record) -> t.Dict[str, t.Any]:
        """What tells the copy apart from whatever reuses its pid later, for its restore record (beyond starttime)."""
