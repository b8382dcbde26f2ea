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
