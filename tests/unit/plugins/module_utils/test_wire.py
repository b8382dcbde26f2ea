"""The migration's frames (_wire.Channel): image bytes sent from a file by sendfile arrive as the same frames as
bytes sent from a buffer, and the pipes to ssh are widened so that each end wakes up less often per byte."""

import errno
import fcntl
import os
import threading

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.migration import _wire as wire

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def _frames(send):
    """What ``send(channel)`` writes into a pipe, read back by a second Channel: (kind, body) of each frame."""
    read_fd, write_fd = os.pipe()
    received = []

    def drain():
        reader = wire.Channel(read_fd, read_fd)
        while True:
            try:
                kind, body = reader.receive(timeout=10)
            except wire.LinkError:
                return
            received.append((kind, body if kind == wire.MESSAGE else (body[0], body[1], bytes(body[2]))))

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        channel = wire.Channel(write_fd, write_fd)
        send(channel)
    finally:
        os.close(write_fd)
        thread.join(timeout=30)
        os.close(read_fd)
    return received, channel.bytes_sent


def test_a_chunk_sent_from_a_file_is_the_frame_sent_from_memory(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "pages-1.img").write_bytes(b"x" * 100 + data)
    fd = os.open(str(tmp_path / "pages-1.img"), os.O_RDONLY)
    try:
        from_file, sent_file = _frames(lambda channel: (channel.send_file_chunk("pages-1.img", 100, fd, len(data)), channel.send(sealed=True)))
    finally:
        os.close(fd)
    from_memory, sent_memory = _frames(lambda channel: (channel.send_chunk("pages-1.img", 100, data), channel.send(sealed=True)))
    assert from_file == from_memory == [(wire.CHUNK, ("pages-1.img", 100, data)), (wire.MESSAGE, {"sealed": True})]
    assert sent_file == sent_memory


def test_a_file_without_sendfile_is_read_and_written(tmp_path, monkeypatch):
    """A file system whose files cannot be spliced (sendfile: EINVAL) still sends the same bytes."""
    data = os.urandom(200 * 1024)
    (tmp_path / "core-1.img").write_bytes(data)

    def refuse(*_args):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(wire.os, "sendfile", refuse)
    fd = os.open(str(tmp_path / "core-1.img"), os.O_RDONLY)
    try:
        frames, _sent = _frames(lambda channel: channel.send_file_chunk("core-1.img", 0, fd, len(data)))
    finally:
        os.close(fd)
    assert frames == [(wire.CHUNK, ("core-1.img", 0, data))]


def test_a_file_shorter_than_its_chunk_breaks_the_link(tmp_path):
    """The frame's length is written first: a file that ends early must not leave a frame cut short unnoticed."""
    (tmp_path / "pages-1.img").write_bytes(b"short")
    fd = os.open(str(tmp_path / "pages-1.img"), os.O_RDONLY)
    try:
        with pytest.raises(wire.LinkError, match="ended at 5 bytes"):
            _frames(lambda channel: channel.send_file_chunk("pages-1.img", 0, fd, 4096))
    finally:
        os.close(fd)


def test_a_channel_widens_its_pipes():
    read_fd, write_fd = os.pipe()
    try:
        assert fcntl.fcntl(write_fd, F_GETPIPE_SZ) < wire.PIPE_BYTES
        wire.Channel(read_fd, write_fd)
        assert fcntl.fcntl(write_fd, F_GETPIPE_SZ) == wire.PIPE_BYTES
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_socket_is_left_as_it_is():
    import socket
    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire.Channel(ours.fileno(), ours.fileno())  # no F_SETPIPE_SZ on a socket, and no error
        ours.sendall(b"ok")
        assert theirs.recv(2) == b"ok"
