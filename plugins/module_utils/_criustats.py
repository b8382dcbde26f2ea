# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""criu's statistics files (stats-dump, stats-restore), read without pycriu or protobuf.

Every checkpoint and restore reports them, so they are parsed here by a few lines of protobuf wire format
instead of importing pycriu and protobuf into each module run (megabytes of memory and tens of milliseconds);
pycriu stays for checkpoint details only (_inspect). The layout is CRIU's images/stats.proto.
"""

from __future__ import annotations

import os
import stat
import struct
import typing as t

MAGIC_SERVICE = 1427134784  # IMG_SERVICE: the first magic of a service image (criu/include/magic.h)
MAGIC_STATS = 1460220678
MAX_BYTES = 1 << 16  # a stats file is a few dozen bytes
# StatsEntry field -> (sub-message field number -> counter name); every counter is a varint.
FIELDS: t.Dict[int, t.Dict[int, str]] = {
    1: {1: "freezing_time", 2: "frozen_time", 3: "memdump_time", 4: "memwrite_time", 5: "pages_scanned",
        6: "pages_skipped_parent", 7: "pages_written", 8: "irmap_resolve", 9: "pages_lazy", 10: "page_pipes",
        11: "page_pipe_bufs", 12: "shpages_scanned", 13: "shpages_skipped_parent", 14: "shpages_written"},
    2: {1: "pages_compared", 2: "pages_skipped_cow", 3: "forking_time", 4: "restore_time", 5: "pages_restored"},
}


def _varint(data: bytes, pos: int) -> t.Tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> t.Iterator[t.Tuple[int, t.Union[int, bytes]]]:
    """(field number, value) of a protobuf message: varints as ints, length-delimited fields as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("a field runs past the end of its message")
            yield number, data[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise ValueError("a fixed-size field runs past the end of its message")
        else:
            raise ValueError("unknown wire type %d" % wire)


def parse(data: bytes) -> t.Dict[str, int]:
    """The counters of a stats image: two magics, then size-prefixed StatsEntry messages."""
    if len(data) < 8 or struct.unpack("<II", data[:8]) != (MAGIC_SERVICE, MAGIC_STATS):
        raise ValueError("not a criu stats image")
    found: t.Dict[str, int] = {}
    pos = 8
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated entry size")
        (size,) = struct.unpack("<I", data[pos:pos + 4])
        pos += 4
        if pos + size > len(data):
            raise ValueError("an entry runs past the end of the file")
        for number, body in _fields(data[pos:pos + size]):
            names = FIELDS.get(number)
            if names is None or not isinstance(body, bytes):
                continue
            for counter, value in _fields(body):
                if counter in names and isinstance(value, int):
                    found[names[counter]] = value
        pos += size
    return found


def read(dir_fd: int, name: str) -> t.Dict[str, t.Any]:
    """criu's statistics file ``name`` in ``dir_fd`` as {counter: value} (times in microseconds), or
    {"unavailable": why}. Never follows a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return {"unavailable": "criu wrote no %s" % name}
    except OSError as exc:
        return {"unavailable": "%s cannot be read: %s" % (name, exc.strerror)}
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return {"unavailable": "%s is not a regular file" % name}
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    try:
        if len(data) > MAX_BYTES:
            raise ValueError("larger than %d bytes" % MAX_BYTES)
        return parse(data)
    except ValueError as exc:
        return {"unavailable": "%s cannot be read: %s" % (name, exc)}
