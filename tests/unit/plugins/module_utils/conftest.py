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


@pytest.fixture
def scripts_as_elf(monkeypatch):
    """Let validate_binary accept a fake criu *script*: a file starting with "#!" reads as an ELF that names
    no loader and no library directories; anything else is read for real (so real ELFs are still checked)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
    from ansible_collections.nucleus.criu.plugins.module_utils.criu import _elf as elf

    real = elf.read_elf

    def read_elf(fd, origin):
        if os.pread(fd, 2, 0) == b"#!":
            return elf.Elf(None, [])
        return real(fd, origin)

    monkeypatch.setattr(binary.elf, "read_elf", read_elf)
    return read_elf


@pytest.fixture
def small_chunks(monkeypatch):
    """Shrink _integrity's mapping window and manifest chunk to SMALL_WINDOW and SMALL_CHUNK (so a few hundred KiB
    span many chunks), for the manifests built, the metadata written by mu_helpers and every Digester made without an
    explicit chunk size (its default is bound when the class is defined, so the class is replaced by a subclass)."""
    from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
    from .mu_helpers import SMALL_CHUNK, SMALL_WINDOW

    real = integrity.Digester

    class SmallDigester(real):
        def __init__(self, algorithm, chunk_bytes=SMALL_CHUNK):
            super().__init__(algorithm, chunk_bytes)

    monkeypatch.setattr(integrity, "WINDOW", SMALL_WINDOW)
    monkeypatch.setattr(integrity, "CHUNK_ALIGN", SMALL_WINDOW)
    monkeypatch.setattr(integrity, "CHUNK_BYTES", SMALL_CHUNK)
    monkeypatch.setattr(integrity, "Digester", SmallDigester)
    return SMALL_CHUNK
