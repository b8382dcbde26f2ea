"""A workload that needs one particular criu option to be checkpointed and restored (tests only).

    option_workload.py STATE MODE [ARG]

It keeps a random token and a count in memory and rewrites STATE ("token count") every 0.1 s, like
demo/counter.py; STATE.info holds what the mode's resource looks like now, so a test can tell that
the resource came back (or was closed) across a restore. Modes:

  closed-tcp       a TCP connection over the loopback whose both ends were shut down (sockets kept open)
  established-tcp  a live TCP connection over the loopback, both ends in this process (info: open|closed)
  listen PORT      a listening socket that never accepts (a client outside the tree makes it in-flight)
  link-remap DIR   a file opened by a name that was then unlinked while another hard link keeps it
  ghost DIR        a 4 MiB file opened, then deleted (its contents exist only through the open fd)
  append FILE      FILE kept open for appending, a line written to it every 0.1 s (as a service's log)
  flock FILE       FILE held under an exclusive flock (info: locked|unlocked, asked through another open of FILE)
  unix-dgram PATH  a datagram socket connected to PATH, bound by a process outside the tree (as a logger's /dev/log),
                   the count sent to it every 0.1 s (info: sent|error)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import sys
import time
import typing as t

HELD: t.List[t.Any] = []  # what the mode's resource is held by, for the process's whole life


def write(path: str, text: str) -> None:
    """Whole or not at all: a reader never sees the file truncated and not yet written (an empty info read as a
    resource gone). A temporary name per write: a restored copy running beside its original writes the same path."""
    temporary = "%s.%s.tmp" % (path, os.urandom(4).hex())
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def loopback_pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    accepted = server.accept()[0]
    HELD.extend([server, client, accepted])
    return server, client, accepted


def closed_tcp(_arg: str) -> t.Callable[[], str]:
    _server, client, accepted = loopback_pair()
    client.shutdown(socket.SHUT_RDWR)
    accepted.shutdown(socket.SHUT_RDWR)
    time.sleep(0.2)
    return lambda: ""


def established_tcp(_arg: str) -> t.Callable[[], str]:
    _server, client, accepted = loopback_pair()
    client.setblocking(False)

    def info() -> str:
        try:
            client.send(b"x")
            accepted.recv(16)
            return "open"
        except OSError:
            return "closed"
    return info


def listen(port: str) -> t.Callable[[], str]:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(port)))
    server.listen(8)
    HELD.append(server)
    return lambda: ""


def link_remap(directory: str) -> t.Callable[[], str]:
    first, second = os.path.join(directory, "file"), os.path.join(directory, "other-name")
    write(first, "linked contents\n")
    os.link(first, second)
    handle = open(first)  # pylint: disable=consider-using-with
    os.unlink(first)
    HELD.append(handle)

    def info() -> str:
        handle.seek(0)
        return handle.read().strip()
    return info


def ghost(directory: str) -> t.Callable[[], str]:
    path = os.path.join(directory, "ghost")
    with open(path, "wb") as out:
        out.write(os.urandom(4 << 20))
    handle = open(path, "rb")  # pylint: disable=consider-using-with
    os.unlink(path)
    HELD.append(handle)

    def info() -> str:
        handle.seek(0)
        return hashlib.sha256(handle.read()).hexdigest()
    return info


def append(path: str) -> t.Callable[[], str]:
    handle = open(path, "a")  # pylint: disable=consider-using-with
    HELD.append(handle)

    def info() -> str:
        handle.write("appended by the workload\n")
        handle.flush()
        return ""
    return info


def flock(path: str) -> t.Callable[[], str]:
    handle = open(path, "a")  # pylint: disable=consider-using-with
    fcntl.flock(handle, fcntl.LOCK_EX)
    HELD.append(handle)

    def info() -> str:
        with open(path) as other:  # another open file description: the lock excludes it while it is held
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "locked"
            return "unlocked"
    return info


def unix_dgram(path: str) -> t.Callable[[], str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(path)
    HELD.append(sock)

    def info() -> str:
        try:
            sock.send(b"tick")
            return "sent"
        except OSError:
            return "error"
    return info


MODES = {"closed-tcp": closed_tcp, "established-tcp": established_tcp, "listen": listen, "link-remap": link_remap,
         "ghost": ghost, "append": append, "flock": flock,
         "unix-dgram": unix_dgram}


def main() -> None:
    state, mode = sys.argv[1], sys.argv[2]
    info = MODES[mode](sys.argv[3] if len(sys.argv) > 3 else "")
    token = os.urandom(8).hex()
    count = 0
    while True:
        count += 1
        write(state, "%s %d\n" % (token, count))
        write(state + ".info", info() + "\n")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
