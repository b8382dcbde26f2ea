"""Helpers shared by the module_utils unit tests (no root needed)."""

import os
import time

import pytest

IS_ROOT = os.geteuid() == 0
# An euid that is "not root" but still accepts files this test run creates:
# as root our files are root-owned (accepted for any euid); otherwise they are ours.
NONROOT_EUID = os.geteuid() or 1234

needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root to chown files to another uid")


def write_exe(path, text="#!/bin/sh\necho 'Version: 4.2.1'\n", mode=0o755):
    """Write an executable script at ``path`` (its directory is created 0755) and return it as str."""
    path = str(path)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w") as handle:
        handle.write(text)
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
    """Write metadata.json canonically, and checkpoint.hmac when ``key`` is given."""
    from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity

    with open(os.path.join(dest, "metadata.json"), "wb") as handle:
        handle.write(integrity.canonical(metadata))
    if key is not None:
        with open(os.path.join(dest, "checkpoint.hmac"), "w") as handle:
            handle.write(integrity.sign(metadata, key) + "\n")


def make_checkpoint(dest, key=None, **changes):
    """A small valid checkpoint directory at ``dest``; returns its metadata."""
    from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity

    images = os.path.join(str(dest), "images")
    os.makedirs(images, mode=0o700)
    with open(os.path.join(images, "inventory.img"), "wb") as handle:
        handle.write(b"inventory")
    metadata = metadata_for(integrity.build_manifest(images, "sha256"), **changes)
    write_metadata(str(dest), metadata, key)
    return metadata
