# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checkpoints as managed objects: list them, delete one, keep the newest N of a name.

Only directories this collection made (a readable metadata.json, owned by root or the caller, reached
through a checked chain) are ever listed as checkpoints or deleted; anything else is left alone.
"""

from __future__ import annotations

import datetime
import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _inspect as inspect_
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._requests import CheckpointInfoRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.system._procfs import TIME_FORMAT


def delete(dest: str, timeout: float, check_mode: bool) -> t.Dict[str, t.Any]:
    """criu_checkpoint state=absent: remove the checkpoint at ``dest`` if it is one this collection made."""
    with store.location(dest) as loc:
        result: t.Dict[str, t.Any] = {"dest": loc.path}
        if not os.path.lexists(loc.path):
            return dict(result, changed=False, actions=[], diff=diff_.diff({}, {}))
        problem = store.replace_problem(loc, empty_ok=False)
        if problem:
            raise CriuError("Refusing to delete %s: %s" % (loc.path, problem.replace("force replaces", "state=absent deletes")),
                            path=loc.path)
        result["diff"] = diff_.diff(diff_.checkpoints({loc.path: metadata_at(loc)}), {})
        action = "delete the checkpoint %s" % loc.path
        if check_mode:
            return dict(result, changed=True, actions=["would " + action])
        with store.Lock(loc, timeout):
            _remove(loc)
    return dict(result, changed=True, actions=[action[0].upper() + action[1:]])


def metadata_at(loc: store.Location) -> t.Optional[t.Dict[str, t.Any]]:
    """metadata.json of the checkpoint at ``loc`` as it reads, unverified (it only shows what a task is about to replace
    or delete), or None when there is none to read."""
    try:
        opened = store.Checkpoint.open(loc)
    except CriuError:
        return None
    if opened is None:
        return None
    with opened:
        return _metadata(opened)


def _remove(loc: store.Location) -> None:
    store.remove_litter(loc)
    store.remove_tree(loc.path)
    try:
        os.unlink(".%s.dump-failed.log" % loc.name, dir_fd=loc.parent_fd)
    except FileNotFoundError:
        pass
    os.fsync(loc.parent_fd)


def _age(created_at: object) -> t.Optional[float]:
    if not isinstance(created_at, str):  # missing, or not what criu_checkpoint writes
        return None
    try:
        created = datetime.datetime.strptime(created_at, TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    return round((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds(), 3)


def describe(opened: store.Checkpoint, metadata: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """One checkpoint as criu_checkpoint_info lists it (never its command-line arguments)."""
    process = metadata.get("process", {})
    return {
        "path": opened.path,
        "id": metadata.get("id"),
        "name": metadata.get("name"),
        "created_at": metadata.get("created_at"),
        "age_seconds": _age(metadata.get("created_at")),
        "process": {"pid": process.get("pid"), "comm": process.get("comm")},
        "source": {key: metadata.get("source", {}).get(key) for key in ("hostname", "arch", "kernel")},
        "criu_version": metadata.get("criu", {}).get("version"),
        "schema_version": metadata.get("schema_version"),
        "size_bytes": sum(entry.get("size", 0) for entry in metadata.get("manifest", []) if isinstance(entry, dict)),
        "signed": store.SIGNATURE in opened.entries(),
        "options": {key: value for key, value in metadata.get("options", {}).items() if value not in (None, False, [])},
        "container": kinds.of(metadata).engine_record(metadata),
    }


def _targets(directory: str) -> t.List[str]:
    """``directory`` itself when it is a checkpoint, else every entry directly in it (FileNotFoundError if missing)."""
    fd, real = safepath.open_dir(directory, "Directory", store.CHAIN_REMEDY)
    try:
        names = sorted(name for name in safepath.listdir(fd) if not name.startswith("."))
    finally:
        os.close(fd)
    if store.METADATA in names and store.IMAGES in names:
        return [real]
    return [os.path.join(real, name) for name in names]


def _candidates(targets: t.Iterable[str]) -> t.Iterator[t.Tuple[store.Location, store.Checkpoint]]:
    """Each of ``targets`` that is a checkpoint directory, opened while the caller looks at it."""
    for path in targets:
        try:
            safepath.check_name(os.path.basename(path), path)
        except CriuError:
            continue  # longer than any checkpoint's name: not one, and no reason to stop at the others
        with store.location(path) as loc:
            try:
                opened = store.Checkpoint.open(loc)
            except CriuError:
                continue
            if opened is None:
                continue
            with opened:
                yield loc, opened


def _metadata(opened: store.Checkpoint) -> t.Optional[t.Dict[str, t.Any]]:
    try:
        raw = opened.read(store.METADATA)
    except CriuError:
        return None
    return integrity.parse_metadata(raw)[0] if raw else None


def details(criu_path: str, opened: store.Checkpoint, entry: t.Mapping[str, t.Any], timeout: float) -> t.Dict[str, t.Any]:
    """What a checkpoint holds, read by criu's own parser from images that verified, within a budget (_inspect)."""
    if not entry["valid"]:
        return {"unavailable": "it does not verify, so its images are not parsed"}
    unavailable = kinds.of(entry).inspect_unavailable()
    if unavailable:
        return {"unavailable": unavailable}
    return inspect_.inspect(criu_path, opened, timeout)


def listing(request: CheckpointInfoRequest) -> t.Dict[str, t.Any]:
    """The criu_checkpoint_info module's work: every checkpoint under ``path``, newest first. Details are read from
    the images only of a checkpoint that verifies (a parser fed forged images runs as root)."""
    verify = request.verify or request.details
    key = integrity.load_key(request.hmac_key, request.hmac_key_file) if verify else None
    criu_path = binary.discover(request.criu_path) if request.details else ""
    path = os.path.normpath(request.path)
    found: t.List[t.Dict[str, t.Any]] = []
    try:
        targets = _targets(path)
    except FileNotFoundError:
        return {"changed": False, "path": path, "exists": False, "checkpoints": found}
    for _loc, opened in _candidates(targets):
        metadata = _metadata(opened)
        if metadata is None or (request.name and metadata.get("name") != request.name):
            continue
        entry = describe(opened, metadata)
        if verify:
            verdict = integrity.verify(opened, key, skip_signature_check=key is None, timeout=request.timeout)
            entry.update(valid=not verdict.problems, problems=verdict.problems)
        if request.details:
            entry["details"] = details(criu_path, opened, entry, request.timeout)
        found.append(entry)
    found.sort(key=lambda item: item["created_at"] or "", reverse=True)
    return {"changed": False, "path": path, "exists": True, "checkpoints": found}


def surplus(loc: store.Location, name: str, keep: int, timeout: float, key: t.Optional[bytes],
            to_come: t.Optional[str] = None) -> t.Dict[str, t.Dict[str, t.Any]]:
    """The checkpoints of ``name`` beside ``loc`` beyond the ``keep`` newest (the one at ``loc`` counts, and stays), by
    path, with their metadata: what ``prune`` deletes. Only checkpoints count whose metadata verifies, with their
    images/, and signed with ``key`` when there is one: a directory anyone else made (a far-future created_at, say)
    would otherwise push out the genuine ones. ``to_come``: in check mode, the created_at of the dump still to be made
    at ``loc``, which counts instead of what ``loc`` holds now."""
    siblings: t.List[t.Tuple[str, str, t.Dict[str, t.Any]]] = [] if to_come is None else [(to_come, loc.path, {})]
    for other, opened in _candidates(_targets(loc.parent)):
        if to_come is not None and other.path == loc.path:
            continue
        metadata = _metadata(opened)
        if metadata is None or metadata.get("name") != name:
            continue
        if other.path != loc.path and (opened.images_fd < 0 or integrity.verify(
                opened, key, skip_signature_check=key is None, timeout=timeout, hashed=False).problems):
            continue
        siblings.append((metadata.get("created_at") or "", other.path, metadata))
    siblings.sort(key=lambda sibling: (sibling[0], sibling[1]), reverse=True)
    return {path: metadata for _created, path, metadata in siblings[keep:] if path != loc.path}


def prune(loc: store.Location, name: str, keep: int, timeout: float, key: t.Optional[bytes]) -> t.Dict[str, t.Dict[str, t.Any]]:
    """Delete the checkpoints ``surplus`` names (each one only if force could replace it); returns those deleted, by
    path, with their metadata."""
    removed = {}
    for path, metadata in surplus(loc, name, keep, timeout, key).items():
        with store.location(path) as other:
            if store.replace_problem(other) is None:
                with store.Lock(other, timeout):
                    _remove(other)
                removed[path] = metadata
    return removed
