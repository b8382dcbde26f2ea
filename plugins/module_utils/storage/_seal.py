# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fresh checkpoint, whatever the kind of workload: staged, described, hashed, signed, then published at DEST in
one rename; a failure leaves no half checkpoint, keeps the dump's log beside DEST and says what became of the
workload."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import stat
import typing as t
import uuid

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError


def _keep_failed_log(staging: store.Staging) -> t.Optional[str]:
    """Move a failed dump's log beside DEST as .NAME.dump-failed.log (the staging directory goes away). Once
    published, the log is DEST's own."""
    if staging.fd < 0:
        return os.path.join(staging.loc.path, store.DUMP_LOG)
    name = ".%s.dump-failed.log" % staging.loc.name
    try:
        os.rename(store.DUMP_LOG, name, src_dir_fd=staging.fd, dst_dir_fd=staging.loc.parent_fd)
    except FileNotFoundError:
        return None
    return os.path.join(staging.loc.parent, name)


@contextlib.contextmanager
def staged(loc: store.Location) -> t.Iterator[store.Staging]:
    """A staging directory for one dump. Whatever fails inside, the staging directory goes away, the dump's log is
    kept beside DEST (.NAME.dump-failed.log) and the error names it; after a success, an old failed log goes."""
    staging = store.Staging(loc)
    try:
        yield staging
    except BaseException as exc:
        failed_log = _keep_failed_log(staging)
        if isinstance(exc, CriuError):
            exc.msg = exc.msg.replace(os.path.join(staging.path, store.DUMP_LOG), failed_log or "(none kept)")
            exc.details.update(path=loc.path, log=failed_log)
        raise
    finally:
        staging.remove()
    _forget_failed_log(loc)


def _forget_failed_log(loc: store.Location) -> None:
    """An earlier failure's log goes; anything else under that name (a directory, say) is not ours and stays."""
    try:
        os.unlink(".%s.dump-failed.log" % loc.name, dir_fd=loc.parent_fd)
    except OSError:
        pass


def _stopped_record(loc: store.Location) -> str:
    return ".%s.stopped.json" % loc.name


def note_stopping(loc: store.Location, staging: store.Staging, subject: t.Mapping[str, t.Any]) -> None:
    """Before a dump that stops its workload, beside DEST (flushed): what a rerun needs to bring it back (``subject``:
    what the kind records, see Kind.resume_stopped) should this run die before the checkpoint is published. A rerun
    that dumped the stopped workload instead would make a checkpoint that restores it stopped."""
    record = json.dumps(dict(subject, staging=staging.name))
    fd = os.open(_stopped_record(loc), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, store.FILE_MODE,
                 dir_fd=loc.parent_fd)
    try:
        os.write(fd, record.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(loc.parent_fd)


def forget_stopping(loc: store.Location) -> None:
    """The workload is running again, ended, or left stopped as asked: nothing for a rerun to bring back."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_stopped_record(loc), dir_fd=loc.parent_fd)


def read_stopped(loc: store.Location) -> t.Optional[t.Dict[str, t.Any]]:
    """The record a run that died left (note_stopping), when it is a regular file of this user's and whole; its
    ``staging`` is the name of that run's staging directory beside DEST, or None."""
    try:
        fd = os.open(_stopped_record(loc), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=loc.parent_fd)
    except OSError:  # none, or not a file of ours to read (a symlink is never followed)
        return None
    try:
        st = os.fstat(fd)
        record = json.loads(os.read(fd, 4096).decode("utf-8")) if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() else None
    except ValueError:
        record = None
    finally:
        os.close(fd)
    if not isinstance(record, dict):
        return None
    staging = str(record.get("staging") or "")
    record["staging"] = staging if staging.startswith(".") and "/" not in staging else None
    return record


def failed_dump_fate(exc: BaseException, staging: t.Optional[store.Staging], loc: store.Location,
                     bring_back: t.Callable[[], str]) -> None:
    """What a failed dump does with its workload, said in ``exc``: before the checkpoint is published the workload runs
    again (``bring_back``); once it is published it never does, whatever fails after, or two copies could run."""
    if staging is not None and staging.published:
        fate = ("The checkpoint was published at %s before this failure, so the workload was not resumed beside it (it "
                "could then run twice): it is left as the dump left it. Restore it from %s, or remove %s and resume it."
                % (loc.path, loc.path, loc.path))
    else:
        fate = "%s No checkpoint was written to %s." % (bring_back(), loc.path)
    if isinstance(exc, CriuError):
        exc.msg = "%s %s" % (exc.msg, fate)


def describe(criu: t.Mapping[str, str], name: str, facts: t.Mapping[str, t.Any], options: t.Mapping[str, t.Any],
             algorithm: str, manifest: t.List[t.Dict[str, t.Any]],
             container_: t.Optional[t.Mapping[str, t.Any]] = None) -> t.Dict[str, t.Any]:
    """metadata.json of a fresh dump (``criu``: the path and version that dumped), with what its images need at restore
    beyond the dump's options; a container's checkpoint also records the container."""
    metadata = {
        "restore_needs": criu_options.images_need([entry["path"] for entry in manifest], options),
        "schema_version": integrity.SCHEMA_VERSION,
        "id": str(uuid.uuid4()),
        "name": name,
        "created_at": procfs.utc_now(),
        "source": procfs.host_facts(),
        "criu": dict(criu),
        "process": dict(facts),
        "options": dict(options),
        "manifest_algorithm": algorithm,
        "manifest_chunk_bytes": integrity.CHUNK_BYTES,
        "manifest": manifest,
    }
    if container_ is not None:
        metadata["container"] = dict(container_)
    return metadata


def seal(staging: store.Staging, metadata: t.Mapping[str, t.Any], key: t.Optional[bytes], durable: bool = True) -> None:
    """Write metadata.json and the signature into the staging directory, then (``durable``) flush it whole. A
    migration's checkpoints are not flushed: they serve that migration, whose journal is what survives a crash."""
    store.write_file(staging.fd, store.METADATA, integrity.canonical(metadata), durable=durable)
    if key is not None:
        store.write_file(staging.fd, store.SIGNATURE, (integrity.sign(metadata, key) + "\n").encode("ascii"), durable=durable)
    if durable:
        store.fsync_dir_entries(staging.fd)


def flushed_manifest(images_fd: int, algorithm: str,
                     hashed: t.Optional[t.Mapping[str, integrity.FileDigest]] = None) -> t.List[t.Dict[str, t.Any]]:
    """The manifest of freshly written images, once they are on disk: flushing them (I/O) overlaps hashing what is
    not hashed yet (CPU) instead of following it."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as flusher:
        flushed = flusher.submit(store.fsync_dir_entries, images_fd)
        manifest = integrity.build_manifest(images_fd, algorithm, hashed)
        flushed.result()
    return manifest


def dump_result(metadata: t.Mapping[str, t.Any], frozen_at: str, dump_seconds: float, fsync_seconds: float,
                **engine_stats: t.Any) -> t.Dict[str, t.Any]:
    """The checkpoint as the task shows it, and where the time went (``engine_stats``: criu's or Podman's own)."""
    manifest = metadata["manifest"]
    return {
        "checkpoint": integrity.public(metadata),
        "stats": dict({
            "frozen_at": frozen_at,
            "dump_seconds": round(dump_seconds, 3),
            "fsync_seconds": round(fsync_seconds, 3),
            "image_bytes": sum(entry["size"] for entry in manifest),
            "image_files": len(manifest),
        }, **engine_stats),
    }
