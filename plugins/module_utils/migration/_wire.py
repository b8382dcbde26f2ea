# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The frames a migration's two hosts exchange over one ssh session: control messages and image bytes.

A frame is a 1-byte kind, a 4-byte big-endian length and that many bytes. MESSAGE frames carry one
JSON object; CHUNK frames carry bytes of one image at an offset, in order. Reads are bounded by a
deadline, so a link that silently drops packets is noticed instead of waited on forever.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
import typing as t

MESSAGE = 1
CHUNK = 2
MAX_FRAME = 8 * 1024 * 1024
_HEADER = struct.Struct(">BI")
_CHUNK_HEADER = struct.Struct(">HQ")


class LinkError(Exception):
    """The other host went away, answered nonsense, or said nothing in time."""


class Channel:
    """Frames over a pair of file descriptors (an ssh session's stdout and stdin)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.bytes_sent = 0
        self._buffer = bytearray(1 << 16)

    def write_raw(self, data: t.Union[bytes, memoryview]) -> None:
        """Bytes outside any frame (the agent's code, before the first frame)."""
        self._write(data)

    def _write(self, data: t.Union[bytes, memoryview]) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.write_fd, view)
            except (BrokenPipeError, ConnectionError) as exc:
                raise LinkError("the other host closed the connection (%s)" % exc.strerror) from exc
            view = view[written:]
        self.bytes_sent += len(data)

    def send(self, **message: t.Any) -> None:
        body = json.dumps(message, sort_keys=True).encode("utf-8")
        self._write(_HEADER.pack(MESSAGE, len(body)) + body)

    def send_chunk(self, name: str, offset: int, data: t.Union[bytes, memoryview]) -> None:
        encoded = name.encode("utf-8")
        header = _CHUNK_HEADER.pack(len(encoded), offset) + encoded
        self._write(_HEADER.pack(CHUNK, len(header) + len(data)) + header)
        self._write(data)

    def _read_into(self, view: memoryview, deadline: t.Optional[float]) -> None:
        """Fill ``view`` from the link (no intermediate copies: image chunks are large)."""
        while view:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.read_fd], [], [], remaining)[0]:
                    raise LinkError("nothing arrived in time (the link or the other host is stuck)")
            count = os.readv(self.read_fd, [view])
            if not count:
                raise LinkError("the other host closed the connection")
            view = view[count:]

    def _read_exactly(self, size: int, deadline: t.Optional[float]) -> memoryview:
        if len(self._buffer) < size:
            self._buffer = bytearray(size)
        view = memoryview(self._buffer)[:size]
        self._read_into(view, deadline)
        return view

    def receive(self, timeout: t.Optional[float] = None) -> t.Tuple[int, t.Any]:
        """The next frame: (MESSAGE, dict) or (CHUNK, (name, offset, bytes valid until the next receive))."""
        deadline = None if timeout is None else time.monotonic() + timeout
        kind, length = _HEADER.unpack(bytes(self._read_exactly(_HEADER.size, deadline)))
        if length > MAX_FRAME + 1024:
            raise LinkError("a frame of %d bytes is larger than any this protocol sends" % length)
        # The body is valid until the next receive(): it lives in the channel's buffer.
        body = self._read_exactly(length, deadline)
        if kind == MESSAGE:
            try:
                message = json.loads(bytes(body).decode("utf-8"))
            except ValueError as exc:
                raise LinkError("a message was not JSON: %s" % exc) from exc
            if not isinstance(message, dict):
                raise LinkError("a message was not a JSON object")
            return kind, message
        if kind == CHUNK:
            name_length, offset = _CHUNK_HEADER.unpack_from(body)
            start = int(_CHUNK_HEADER.size)
            end = start + int(name_length)
            name = bytes(body[start:end]).decode("utf-8")
            return kind, (name, offset, body[end:])
        raise LinkError("unknown frame kind %d" % kind)

    def message(self, timeout: t.Optional[float] = None) -> t.Dict[str, t.Any]:
        """The next frame, which must be a message."""
        kind, body = self.receive(timeout)
        if kind != MESSAGE:
            raise LinkError("expected a message, got image bytes")
        return body
