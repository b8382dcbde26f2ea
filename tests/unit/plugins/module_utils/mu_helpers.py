"""Helpers shared by the module_utils unit tests (no root needed)."""

import contextlib
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
    from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity

    with dir_fd(images) as fd:
        return integrity.build_manifest(fd, algorithm, hashed)


@contextlib.contextmanager
def opened_checkpoint(path):
    """The checkpoint at ``path`` opened the way the modules open it (its chain checked, held by fd)."""
    from ansible_collections.nucleus.criu.plugins.module_utils import _store as store

    with store.location(str(path)) as loc, store.open_checkpoint(loc) as checkpoint:
        yield checkpoint


def verify_at(path, *args, **kwargs):
    """_integrity.verify of the checkpoint at ``path``: a Verdict(metadata, problems, unexpected)."""
    from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity

    with opened_checkpoint(path) as checkpoint:
        return integrity.verify(checkpoint, *args, **kwargs)


def metadata_for(manifest, **changes):
    """A metadata.json document with every required key, schema_version 1."""
    metadata = {
        "schema_version": 1, "id": "5b0c1f0e-3c51-4c1e-9d3c-3b1a0c5b6e11", "name": "job",
        "created_at": "2025-01-01T00:00:00.000000Z",
        "source": {"hostname": "a", "boot_id": "b", "arch": os.uname().machine},
        "criu": {"path": "/usr/sbin/criu", "version": "4.2.0"},
        "process": {"pid": 4242, "tree": [4242]}, "options": {"shell_job": False},
        "manifest_algorithm": "sha256", "manifest": manifest,
    }
    metadata.update(changes)
    return metadata


def write_metadata(dest, metadata, key=None):
    """Write metadata.json canonically, and checkpoint.hmac when ``key`` is given (else remove it)."""
    from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity

    with open(os.path.join(str(dest), "metadata.json"), "wb") as handle:
        handle.write(integrity.canonical(metadata))
    signature = os.path.join(str(dest), "checkpoint.hmac")
    if key is not None:
        with open(signature, "w") as handle:
            handle.write(integrity.sign(metadata, key) + "\n")
    elif os.path.lexists(signature):
        os.unlink(signature)


def make_checkpoint(dest, key=None, **changes):
    """A small valid checkpoint directory at ``dest``; returns its metadata."""
    images = os.path.join(str(dest), "images")
    os.makedirs(images, mode=0o700)
    with open(os.path.join(images, "inventory.img"), "wb") as handle:
        handle.write(b"inventory")
    metadata = metadata_for(manifest_of(images), **changes)
    write_metadata(str(dest), metadata, key)
    return metadata
