# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The frames a migration's two hosts exchange over one ssh session: control messages and image bytes.

A frame is a 1-byte kind, a 4-byte big-endian length and that many bytes. MESSAGE frames carry one
JSON object; CHUNK frames carry bytes of one image at an offset, in order. Reads are bounded by a
deadline, so a link that silently drops packets is noticed instead of waited on forever.

Image bytes are the bulk of a migration, so they cost as little CPU as the kernel allows: the pipes to and from
ssh are widened (PIPE_BYTES: each end wakes up once per MiB, not once per 64 KiB), and a chunk that is in a file
goes from the page cache into the pipe by sendfile, never copied through a Python buffer.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import stat
import struct
import time
import typing as t

MESSAGE = 1
CHUNK = 2
MAX_FRAME = 8 * 1024 * 1024
_HEADER = struct.Struct(">BI")
_CHUNK_HEADER = struct.Struct(">HQ")
PIPE_BYTES = 1024 * 1024  # the default fs.pipe-max-size: what any process may ask for
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # (fcntl names it from Python 3.10)


def widen_pipe(fd: int) -> None:
    """Grow the pipe ``fd`` to PIPE_BYTES; a socket, a file, or a refusal (the user's pipe quota) leaves it as it is."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass


class LinkError(Exception):
    """The other host went away, answered nonsense, or said nothing in time."""


class Channel:
    """Frames over a pair of file descriptors (an ssh session's stdout and stdin)."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.bytes_sent = 0
        self._buffer = bytearray(1 << 16)
        for fd in sorted({read_fd, write_fd}):
            widen_pipe(fd)

    def write_raw(self, data: t.Union[bytes, memoryview]) -> None:
        """Bytes outside any frame (the agent's code, before the first frame)."""
        self._write(data)

    def _write(self, data: t.Union[bytes, memoryview]) -> None:
        self._write_all(data)
        self.bytes_sent += len(data)

    def _write_all(self, data: t.Union[bytes, memoryview]) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.write_fd, view)
            except (BrokenPipeError, ConnectionError) as exc:
                raise LinkError("the other host closed the connection (%s)" % exc.strerror) from exc
            view = view[written:]

    def send(self, **message: t.Any) -> None:
        body = json.dumps(message, sort_keys=True).encode("utf-8")
        self._write(_HEADER.pack(MESSAGE, len(body)) + body)

    def _chunk_header(self, name: str, offset: int, size: int) -> None:
        encoded = name.encode("utf-8")
        header = _CHUNK_HEADER.pack(len(encoded), offset) + encoded
        self._write(_HEADER.pack(CHUNK, len(header) + size) + header)

    def send_chunk(self, name: str, offset: int, data: t.Union[bytes, memoryview]) -> None:
        self._chunk_header(name, offset, len(data))
        self._write(data)

    def send_file_chunk(self, name: str, offset: int, fd: int, size: int) -> None:
        """send_chunk of the ``size`` bytes at ``offset`` of the file ``fd`` (the bytes the caller has just read and
        hashed there): sendfile moves them from the page cache into the pipe. Where the kernel cannot (EINVAL: a
        file system without splice), they are read and written. Should the file change in between, the target's
        digest of what it received no longer matches the manifest, which refuses the checkpoint: loud, never silent."""
        self._chunk_header(name, offset, size)
        done = 0
        while done < size:
            try:
                moved = os.sendfile(self.write_fd, fd, offset + done, size - done)
            except (BrokenPipeError, ConnectionError) as exc:
                raise LinkError("the other host closed the connection (%s)" % exc.strerror) from exc
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                data = os.pread(fd, size - done, offset + done)
                self._write_all(data)
                moved = len(data)
            if not moved:
                raise LinkError("%s ended at %d bytes while its chunk of %d at %d was being sent" % (name, offset + done, size, offset))
            done += moved
        self.bytes_sent += size

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
