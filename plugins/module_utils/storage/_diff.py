# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a task shows under Ansible's diff mode (``--diff``): the state it found and the state it left, or would leave
in check mode, as two small dicts.

Only what tells one checkpoint (or restored copy) from another is shown, never a whole metadata.json: its manifest
would drown the change, and its process's arguments may hold secrets. An absent thing is an empty dict, as
community.crypto shows an absent key. The modules build the diff always (it is cheap); ``_module.run_module`` returns it
only under ``--diff``.
"""

from __future__ import annotations

import typing as t


def diff(before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any], header: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """A result's ``diff``: equal dicts when nothing changed (or would change). ``header`` names what is compared when
    the dicts do not (Ansible prints it beside "before" and "after")."""
    shown: t.Dict[str, t.Any] = {"before": dict(before), "after": dict(after)}
    if header is not None:
        shown.update(before_header=header, after_header=header)
    return shown


def _picked(mapping: object, *keys: str, **renamed: str) -> t.Dict[str, t.Any]:
    """The ``keys`` of ``mapping`` (and the values of ``renamed``, shown under their argument's name) that hold a
    string or a number. The metadata shown may not be verified yet (a checkpoint about to be replaced or deleted):
    whatever else it holds is left out rather than trusted."""
    if not isinstance(mapping, dict):
        return {}
    wanted = dict({key: key for key in keys}, **renamed)
    return {shown: mapping[key] for shown, key in wanted.items()
            if isinstance(mapping.get(key), (str, int)) and not isinstance(mapping.get(key), bool)}


def checkpoint(metadata: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """A checkpoint as a diff shows it (from its metadata.json): its id, name and time, what it holds and its size."""
    shown = _picked(metadata, "id", "name", "created_at")
    if isinstance(metadata.get("container"), dict):
        shown.update(_picked(metadata["container"], container="name"))
        shown.update(_picked(metadata.get("process"), "pid"))
    else:
        shown.update(_picked(metadata.get("process"), "pid", "comm"))
    manifest = metadata.get("manifest")
    if isinstance(manifest, list):
        shown["image_bytes"] = sum(entry["size"] for entry in manifest
                                   if isinstance(entry, dict) and isinstance(entry.get("size"), int))
    return shown


def new_checkpoint(name: str, pid: t.Optional[int], comm: t.Optional[str] = None,
                   container: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """In check mode, the checkpoint a dump would make, as far as it is known before the dump: its name and what it
    would hold. Its id, time and size come with the dump, so they are left out (the diff shows them going)."""
    shown: t.Dict[str, t.Any] = {"name": name}
    if container is not None:
        shown["container"] = container
    if pid is not None:
        shown["pid"] = pid
    if comm is not None and container is None:
        shown["comm"] = comm
    return shown


def checkpoints(found: t.Mapping[str, t.Optional[t.Mapping[str, t.Any]]]) -> t.Dict[str, t.Dict[str, t.Any]]:
    """Checkpoint directories by path, each as ``checkpoint`` shows it; a path holding none (None) is left out. Paths
    are the keys so that a task touching more than DEST (``keep`` deleting older checkpoints) shows each one."""
    return {path: checkpoint(metadata) for path, metadata in found.items() if metadata is not None}


def restored(record: t.Optional[t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    """The copy a restore made (restored.json's record): its pid, checkpoint and time, and a container's name. None
    (no live copy) shows as absent."""
    if record is None:
        return {}
    return _picked(record, "pid", "checkpoint_id", "restored_at", container="container_name")


def new_restore(checkpoint_id: str, container: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """In check mode, the copy a restore would make: of which checkpoint, as which container. Its pid and time come
    with the restore."""
    shown = {"checkpoint_id": checkpoint_id}
    if container is not None:
        shown["container"] = container
    return shown


def restore(src: str, live: t.Optional[t.Mapping[str, t.Any]], after: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """A restore's diff: the copy of the checkpoint at ``src`` that ran before (``live``: its record, None when none
    does) and ``after``; the header names ``src``, which neither dict does."""
    return diff(restored(live), after, "copy restored from %s" % src)
