"""Helpers shared by the module_utils unit tests (no root needed)."""

import contextlib
import hashlib
import mmap
import os
import shutil
import time

import pytest

IS_ROOT = os.geteuid() == 0
# An euid that is "not root" but still accepts files this test run creates:
# as root our files are root-owned (accepted for any euid); otherwise they are ours.
NONROOT_EUID = os.geteuid() or 1234
# A uid that is neither root nor the caller (nobody on Debian); files are chowned to it to play "another user".
OTHER_UID = 65534
# A signing key long enough for load_key (at least 16 bytes).
KEY = b"0123456789abcdef0123456789abcdef"
# A real ELF executable: what validate_binary accepts (its loader is the system's, it names no library dirs).
REAL_ELF = os.path.realpath("/bin/true")

# Small stand-ins for _integrity's WINDOW and CHUNK_BYTES (the ``small_chunks`` fixture installs them): mmap offsets
# stay multiples of the allocation granularity, and a chunk spans several windows, as with the real 8 and 64 MiB.
SMALL_WINDOW = 4 * mmap.ALLOCATIONGRANULARITY
SMALL_CHUNK = 4 * SMALL_WINDOW

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to chown files to another uid")


def write_exe(path, text="#!/bin/sh\necho 'Version: 4.2.1'\n", mode=0o755):
    """Write an executable script at ``path`` (its directory is created 0755) and return it as str.

    validate_binary refuses scripts: tests that run one as criu use the ``scripts_as_elf`` fixture."""
    path = str(path)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, mode)
    return path


def write_elf(path, mode=0o755, source=REAL_ELF):
    """Copy a real ELF executable (``/bin/true`` by default) to ``path`` with ``mode`` (its directory is created
    0755) and return it as str: what the trust-policy tests validate."""
    path = str(path)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    shutil.copyfile(source, path)
    os.chmod(path, mode)
    return path


def wait_for(predicate, timeout=5.0):
    """Poll ``predicate`` until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def open_dir(path):
    """An fd of the directory ``path`` (the caller closes it)."""
    return os.open(str(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@contextlib.contextmanager
def dir_fd(path):
    """An fd of the directory ``path`` for the duration of the block."""
    fd = open_dir(path)
    try:
        yield fd
    finally:
        os.close(fd)


def manifest_of(images, algorithm="sha256", hashed=None):
    """build_manifest of the images directory at ``images`` (a path)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity

    with dir_fd(images) as fd:
        return integrity.build_manifest(fd, algorithm, hashed)


@contextlib.contextmanager
def opened_checkpoint(path):
    """The checkpoint at ``path`` opened the way the modules open it (its chain checked, held by fd)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store

    with store.location(str(path)) as loc, store.open_checkpoint(loc) as checkpoint:
        yield checkpoint


def verify_at(path, *args, **kwargs):
    """_integrity.verify of the checkpoint at ``path``: a Verdict(metadata, problems, unexpected, seconds, bytes)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity

    with opened_checkpoint(path) as checkpoint:
        return integrity.verify(checkpoint, *args, **kwargs)


def whole_file_manifest_of(images, algorithm="sha256"):
    """A schema 1 manifest of the images directory at ``images``: one whole-file digest per image, computed here
    (with hashlib or blake3 directly, not with the code under test)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity

    manifest = []
    for name in sorted(os.listdir(str(images))):
        with open(os.path.join(str(images), name), "rb") as handle:
            data = handle.read()
        digest = integrity._blake3.blake3(data).hexdigest() if algorithm == "blake3" else hashlib.sha256(data).hexdigest()
        manifest.append({"path": name, "size": len(data), algorithm: digest})
    return manifest


def chunk_digests(data, chunk_bytes, algorithm="sha256"):
    """The digest of every ``chunk_bytes`` slice of ``data`` (one, of the empty string, when it is empty), computed
    independently of the code under test."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity

    new = integrity._blake3.blake3 if algorithm == "blake3" else hashlib.sha256
    return [new(data[offset:offset + chunk_bytes]).hexdigest() for offset in range(0, max(len(data), 1), chunk_bytes)]


def metadata_for(manifest, **changes):
    """A metadata.json document with every required key, schema_version 2 (chunked manifest) unless changed."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity

    metadata = {
        "schema_version": 2, "id": "5b0c1f0e-3c51-4c1e-9d3c-3b1a0c5b6e11", "name": "job",
        "created_at": "2025-01-01T00:00:00.000000Z",
        "source": {"hostname": "a", "boot_id": "b", "arch": os.uname().machine},
        "criu": {"path": "/usr/sbin/criu", "version": "4.2.0"},
        "process": {"pid": 4242, "tree": [4242]}, "options": {"shell_job": False},
        "manifest_algorithm": "sha256", "manifest_chunk_bytes": integrity.CHUNK_BYTES, "manifest": manifest,
    }
    metadata.update(changes)
    return metadata


def v1_metadata_for(manifest, **changes):
    """A schema_version 1 metadata.json document (whole-file digests, no manifest_chunk_bytes), as checkpoints made
    before chunked manifests hold."""
    metadata = metadata_for(manifest, schema_version=1)
    del metadata["manifest_chunk_bytes"]
    metadata.update(changes)
    return metadata


def write_metadata(dest, metadata, key=None):
    """Write metadata.json canonically, and checkpoint.hmac when ``key`` is given (else remove it)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity

    with open(os.path.join(str(dest), "metadata.json"), "wb") as handle:
        handle.write(integrity.canonical(metadata))
    signature = os.path.join(str(dest), "checkpoint.hmac")
    if key is not None:
        with open(signature, "w") as handle:
            handle.write(integrity.sign(metadata, key) + "\n")
    elif os.path.lexists(signature):
        os.unlink(signature)


def make_checkpoint(dest, key=None, schema=2, **changes):
    """A small valid checkpoint directory at ``dest``; returns its metadata. ``schema=1`` makes one as nucleus.criu
    made them before chunked manifests (whole-file digests)."""
    images = os.path.join(str(dest), "images")
    os.makedirs(images, mode=0o700)
    with open(os.path.join(images, "inventory.img"), "wb") as handle:
        handle.write(b"inventory")
    if schema == 1:
        metadata = v1_metadata_for(whole_file_manifest_of(images), **changes)
    else:
        metadata = metadata_for(manifest_of(images), **changes)
    write_metadata(str(dest), metadata, key)
    return metadata
