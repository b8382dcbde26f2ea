"""What an ELF executable makes the loader run besides itself: PT_INTERP and DT_RPATH/DT_RUNPATH (_elf)."""

import os
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _elf as elf
from .mu_helpers import REAL_ELF, write_elf, write_exe

PATCHELF = shutil.which("patchelf")
needs_patchelf = pytest.mark.skipif(PATCHELF is None, reason="patchelf is not installed")
BASE = 0x400000
# Built files end right after their string table, as patchelf leaves them.
PADDING = 0


def read(path, origin=None):
    fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return elf.read_elf(fd, os.path.dirname(str(path)) if origin is None else origin)
    finally:
        os.close(fd)


def build_elf(is64=True, little=True, interpreter=None, rpath=None, runpath=None, strtab_vaddr=None, dynamic=True):
    """A minimal ELF image: header, program headers (PT_INTERP when ``interpreter``, one PT_LOAD mapping the whole file
    at BASE, PT_DYNAMIC when ``dynamic``), the interpreter, a string table and the dynamic section."""
    e = "<" if little else ">"
    ehdr = struct.Struct(e + ("16sHHIQQQIHHHHHH" if is64 else "16sHHIIIIIHHHHHH"))
    phdr = struct.Struct(e + ("IIQQQQQQ" if is64 else "IIIIIIII"))
    dyn = struct.Struct(e + ("qQ" if is64 else "iI"))
    strings, tags = b"\0", []
    for tag, value in ((elf.DT_RPATH, rpath), (elf.DT_RUNPATH, runpath)):
        if value is not None:
            tags.append((tag, len(strings)))
            strings += value.encode("utf-8", "surrogateescape") + b"\0"
    interp = interpreter.encode("utf-8", "surrogateescape") + b"\0" if interpreter is not None else b""
    phnum = 1 + (interp != b"") + dynamic
    interp_off = ehdr.size + phnum * phdr.size
    strtab_off = interp_off + len(interp)
    dynamic_off = strtab_off + len(strings)
    entries = [(elf.DT_STRTAB, BASE + strtab_off if strtab_vaddr is None else strtab_vaddr)] + tags + [(elf.DT_NULL, 0)]
    dynamic_bytes = b"".join(dyn.pack(tag, value) for tag, value in entries)
    total = dynamic_off + len(dynamic_bytes) + PADDING

    def ph(p_type, offset, size):
        if is64:
            return phdr.pack(p_type, 4, offset, BASE + offset, BASE + offset, size, size, 8)
        return phdr.pack(p_type, offset, BASE + offset, BASE + offset, size, size, 4, 4)

    headers = []
    if interp:
        headers.append(ph(elf.PT_INTERP, interp_off, len(interp)))
    headers.append(ph(elf.PT_LOAD, 0, total))
    if dynamic:
        headers.append(ph(elf.PT_DYNAMIC, dynamic_off, len(dynamic_bytes)))
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1]) + b"\0" * 9
    header = ehdr.pack(ident, 2, 62, 1, BASE, ehdr.size, 0, 0, ehdr.size, phdr.size, phnum, 0, 0, 0)
    return header + b"".join(headers) + interp + strings + dynamic_bytes + b"\0" * PADDING


def write_bytes(path, data):
    with open(str(path), "wb") as handle:
        handle.write(data)
    return str(path)


def patched(tmp_path, *args, pad=True):
    path = write_elf(tmp_path / "opt" / "bin" / "criu")
    subprocess.run([PATCHELF] + list(args) + [path], check=True, capture_output=True)
    if pad:
        with open(path, "ab") as handle:
            handle.write(b"\0" * 8192)
    return path


# --- real binaries ----------------------------------------------------------------------------


def test_bin_true_has_an_interpreter_and_no_library_dirs():
    found = read(REAL_ELF)
    assert found.library_dirs == []
    assert found.interpreter and os.path.isabs(found.interpreter) and os.path.exists(found.interpreter)
    assert "ld" in os.path.basename(found.interpreter)


def test_the_loader_itself_has_no_interpreter():
    loader = os.path.realpath(read(REAL_ELF).interpreter)
    assert read(loader) == elf.Elf(None, [])


@needs_patchelf
def test_patched_interpreter_and_origin_rpath(tmp_path):
    path = patched(tmp_path, "--set-interpreter", "/opt/criu/lib/ld.so.2", "--force-rpath", "--set-rpath", "$ORIGIN/../lib")
    origin = str(tmp_path / "opt" / "bin")
    assert read(path) == elf.Elf("/opt/criu/lib/ld.so.2", [origin + "/../lib"])
    assert read(path, origin="/elsewhere") == elf.Elf("/opt/criu/lib/ld.so.2", ["/elsewhere/../lib"])


@needs_patchelf
def test_runpath_braced_origin_and_several_dirs(tmp_path):
    path = patched(tmp_path, "--set-rpath", "${ORIGIN}/lib::/usr/lib/extra:$ORIGIN/lib")  # DT_RUNPATH
    origin = str(tmp_path / "opt" / "bin")
    assert read(path).library_dirs == [origin + "/lib", "/usr/lib/extra"]


@needs_patchelf
def test_patched_binary_as_patchelf_leaves_it(tmp_path):
    path = patched(tmp_path, "--set-interpreter", "/opt/criu/lib/ld.so.2", "--force-rpath", "--set-rpath", "$ORIGIN/../lib",
                   pad=False)
    assert read(path) == elf.Elf("/opt/criu/lib/ld.so.2", [str(tmp_path / "opt" / "bin") + "/../lib"])


# --- built images: both classes, both byte orders ----------------------------------------------


@pytest.mark.parametrize("is64", [True, False])
@pytest.mark.parametrize("little", [True, False])
def test_built_elf_of_every_class_and_byte_order(tmp_path, is64, little):
    path = write_bytes(tmp_path / "criu", build_elf(is64, little, "/lib/ld.so", rpath="$ORIGIN/a:/b", runpath="/c:/b"))
    assert read(path, origin="/o") == elf.Elf("/lib/ld.so", ["/o/a", "/b", "/c"])


def test_static_binary_names_nothing(tmp_path):
    assert read(write_bytes(tmp_path / "criu", build_elf(dynamic=False))) == elf.Elf(None, [])


def test_dynamic_section_without_paths(tmp_path):
    assert read(write_bytes(tmp_path / "criu", build_elf(interpreter="/lib/ld.so"))) == elf.Elf("/lib/ld.so", [])


def test_strtab_outside_every_segment_is_not_elf(tmp_path):
    path = write_bytes(tmp_path / "criu", build_elf(rpath="/x", strtab_vaddr=0x10))
    with pytest.raises(elf.NotElf, match="outside every loaded segment"):
        read(path)


# --- not ELF ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    (b"#!/bin/sh\necho 'Version: 4.2.1'\n", "not an ELF file"),
    (b"", "truncated"),
    (b"\x7fEL", "truncated"),
    (b"MZ" + b"\0" * 100, "not an ELF file"),
    (b"\x7fELF\x03\x01\x01" + b"\0" * 100, "unknown ELF class or byte order"),
    (b"\x7fELF\x02\x03\x01" + b"\0" * 100, "unknown ELF class or byte order"),
])
def test_non_elf_raises_not_elf(tmp_path, data, message):
    with pytest.raises(elf.NotElf, match=message):
        read(write_bytes(tmp_path / "file", data))


def test_script_raises_not_elf(tmp_path):
    with pytest.raises(elf.NotElf):
        read(write_exe(tmp_path / "bin" / "criu"))


def test_truncated_copy_of_a_real_binary_raises_not_elf(tmp_path):
    with open(REAL_ELF, "rb") as handle:
        head = handle.read(100)
    with pytest.raises(elf.NotElf, match="truncated"):
        read(write_bytes(tmp_path / "criu", head))


def test_implausible_header_size_raises_not_elf(tmp_path):
    data = bytearray(build_elf(interpreter="/lib/ld.so"))
    # PT_INTERP's p_filesz (the first program header, right after the 64-byte ELF header) claims 1 GiB.
    struct.pack_into("<Q", data, 64 + 32, 1 << 30)
    with pytest.raises(elf.NotElf, match="implausible"):
        read(write_bytes(tmp_path / "criu", bytes(data)))


def test_huge_offset_raises_not_elf(tmp_path):
    data = bytearray(build_elf())
    struct.pack_into("<Q", data, 32, (1 << 64) - 1)  # e_phoff
    with pytest.raises(elf.NotElf):
        read(write_bytes(tmp_path / "criu", bytes(data)))


# --- properties -------------------------------------------------------------------------------

_path_text = st.text(st.characters(codec="utf-8", exclude_characters="\0:"), min_size=1, max_size=30)


@settings(deadline=None, max_examples=100)
@given(is64=st.booleans(), little=st.booleans(), interpreter=st.none() | _path_text,
       rpath=st.none() | st.lists(_path_text, min_size=1, max_size=3), runpath=st.none() | st.lists(_path_text, min_size=1, max_size=3))
def test_read_elf_reads_back_what_was_built(tmp_path_factory, is64, little, interpreter, rpath, runpath):
    path = tmp_path_factory.mktemp("elf") / "criu"
    write_bytes(path, build_elf(is64, little, interpreter, ":".join(rpath) if rpath else None, ":".join(runpath) if runpath else None))
    expected = []
    for entry in (rpath or []) + (runpath or []):
        entry = entry.replace("${ORIGIN}", "/o").replace("$ORIGIN", "/o")
        if entry not in expected:
            expected.append(entry)
    assert read(path, origin="/o") == elf.Elf(interpreter, expected)


@settings(deadline=None, max_examples=300)
@given(little=st.booleans(), body=st.binary(min_size=0, max_size=600))
def test_arbitrary_32_bit_header_is_elf_or_not_elf(tmp_path_factory, little, body):
    """Whatever follows a 32-bit ident, read_elf returns an Elf or raises NotElf, nothing else."""
    path = tmp_path_factory.mktemp("elf") / "criu"
    write_bytes(path, b"\x7fELF\x01" + (b"\x01" if little else b"\x02") + b"\x01" + b"\0" * 9 + body)
    try:
        found = read(path)
    except elf.NotElf:
        return
    assert isinstance(found, elf.Elf) and all(isinstance(d, str) for d in found.library_dirs)
