# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""CRIU's image files read by a few lines of protobuf wire format, without pycriu or protobuf.

An image is two magics (a common one and the image's own) followed by size-prefixed messages
(criu/include/magic.h, images/*.proto). The few fields nucleus.criu needs at every dump and restore
(statistics, the paths a restore reopens) are read here: importing pycriu and protobuf into each module
run costs megabytes of memory and tens of milliseconds, and pycriu stays for checkpoint details only.
"""

from __future__ import annotations

import struct
import typing as t


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


def fields(data: bytes) -> t.Iterator[t.Tuple[int, t.Union[int, bytes]]]:
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


def entries(data: bytes, magics: t.Tuple[int, int], kind: str) -> t.Iterator[bytes]:
    """The messages of an image of ``kind``, which starts with ``magics``."""
    if len(data) < 8 or struct.unpack("<II", data[:8]) != magics:
        raise ValueError("not a criu %s image" % kind)
    pos = 8
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated entry size")
        (size,) = struct.unpack("<I", data[pos:pos + 4])
        pos += 4
        if pos + size > len(data):
            raise ValueError("an entry runs past the end of the file")
        yield data[pos:pos + size]
        pos += size
