"""Fixtures for the module_utils unit tests."""

import os
import subprocess

import pytest


@pytest.fixture
def spawn():
    """Start processes the test owns; kill and reap every one of them afterwards."""
    started = []

    def _spawn(argv, **kwargs):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        if proc.returncode is not None:
            continue
        try:
            os.killpg(proc.pid, 9)  # the session/group we created for it, nothing else
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait(timeout=10)
