# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an ELF executable makes the kernel and the dynamic loader run besides itself.

Validating criu alone is not enough: the loader named in PT_INTERP and the libraries found through
DT_RPATH/DT_RUNPATH run inside it as root too. This reads those two facts from the file, nothing more.
"""

from __future__ import annotations

import os
import struct
import typing as t

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 5, 15, 29
_MAX_HEADER_BYTES = 1 << 20


class NotElf(ValueError):
    """The file is not an ELF executable this module can read."""


class Elf(t.NamedTuple):
    interpreter: t.Optional[str]
    library_dirs: t.List[str]


class _Layout(t.NamedTuple):
    header: struct.Struct
    program_header: struct.Struct
    dynamic: struct.Struct


def _layout(ident: bytes) -> _Layout:
    if ident[:4] != b"\x7fELF":
        raise NotElf("not an ELF file")
    endian = {1: "<", 2: ">"}.get(ident[5])
    if endian is None or ident[4] not in (1, 2):
        raise NotElf("unknown ELF class or byte order")
    if ident[4] == 2:
        return _Layout(struct.Struct(endian + "16xHHIQQQIHHHHHH"), struct.Struct(endian + "IIQQQQQQ"), struct.Struct(endian + "qQ"))
    return _Layout(struct.Struct(endian + "16xHHIIIIIHHHHHH"), struct.Struct(endian + "IIIIIIII"), struct.Struct(endian + "iI"))


def _read(fd: int, offset: int, size: int, exact: bool = True) -> bytes:
    """``size`` bytes at ``offset`` (fewer at the end of the file unless ``exact``); NotElf for impossible values."""
    if size < 0 or size > _MAX_HEADER_BYTES or not 0 <= offset <= os.fstat(fd).st_size:
        raise NotElf("implausible ELF offset %d or size %d" % (offset, size))
    data = os.pread(fd, size, offset)
    if exact and len(data) != size:
        raise NotElf("truncated ELF file")
    return data


def _program_headers(fd: int, layout: _Layout) -> t.List[t.Tuple[int, int, int, int]]:
    """(type, offset, vaddr, filesz) of every program header."""
    fields = layout.header.unpack(_read(fd, 0, layout.header.size))
    phoff, phentsize, phnum = fields[4], fields[8], fields[9]
    is64 = layout.program_header.size == 56
    headers = []
    for index in range(phnum):
        raw = layout.program_header.unpack(_read(fd, phoff + index * phentsize, layout.program_header.size))
        if is64:
            p_type, _flags, offset, vaddr, _paddr, filesz = raw[:6]
        else:
            p_type, offset, vaddr, _paddr, filesz = raw[:5]
        headers.append((p_type, offset, vaddr, filesz))
    return headers


def _string(fd: int, offset: int) -> str:
    """The NUL-terminated string at ``offset`` (patchelf puts the string table at the very end of the file)."""
    data = _read(fd, offset, 4096, exact=False)
    if b"\0" not in data:
        raise NotElf("unterminated string in the ELF string table")
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def read_elf(fd: int, origin: str) -> Elf:
    """The loader and the library search directories of the ELF open at ``fd`` (``$ORIGIN`` = ``origin``)."""
    layout = _layout(_read(fd, 0, 16))
    headers = _program_headers(fd, layout)
    interpreter = None
    for p_type, offset, _vaddr, filesz in headers:
        if p_type == PT_INTERP:
            interpreter = _read(fd, offset, filesz).rstrip(b"\0").decode("utf-8", "surrogateescape")
    dynamic = [(offset, filesz) for p_type, offset, _vaddr, filesz in headers if p_type == PT_DYNAMIC]
    if not dynamic:
        return Elf(interpreter, [])
    entries = {}
    raw = _read(fd, dynamic[0][0], dynamic[0][1])
    paths = []
    for start in range(0, len(raw) - layout.dynamic.size + 1, layout.dynamic.size):
        tag, value = layout.dynamic.unpack_from(raw, start)
        if tag == DT_NULL:
            break
        if tag in (DT_RPATH, DT_RUNPATH):
            paths.append(value)
        entries[tag] = value
    if not paths or DT_STRTAB not in entries:
        return Elf(interpreter, [])
    strtab = _file_offset(headers, entries[DT_STRTAB])
    dirs: t.List[str] = []
    for path_offset in paths:
        for entry in _string(fd, strtab + path_offset).split(":"):
            entry = entry.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            if entry and entry not in dirs:
                dirs.append(entry)
    return Elf(interpreter, dirs)


def _file_offset(headers: t.Sequence[t.Tuple[int, int, int, int]], vaddr: int) -> int:
    for p_type, offset, start, filesz in headers:
        if p_type == PT_LOAD and start <= vaddr < start + filesz:
            return vaddr - start + offset
    raise NotElf("DT_STRTAB lies outside every loaded segment")
