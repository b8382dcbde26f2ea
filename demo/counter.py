"""A stateful workload for the demo and the tests: everything it reports lives only in its memory.

It picks a random token at start and counts; every tick it rewrites STATE_FILE with
"token count". A restore that really carried its memory continues the same token from
the same count; a restart would show a new token and count from 1.

Options: --children N (a process tree: N children, each with its own token and file
STATE_FILE.N), --tcp PORT (serve "next\\n" -> "token count\\n" on 127.0.0.1:PORT),
--tcp-client (with --tcp: a child holds one connection to that server and writes
"connection-token server-token count" to STATE_FILE.client), --mem MIB (hold MIB of
touched random memory), --unix-connect PATH (hold a unix stream connection, which CRIU
cannot dump).
"""

import argparse
import os
import socket
import sys
import time


def write_state(path, token, count):
    # Written in place at one size (the count right-aligned), never truncated or renamed: a dump may
    # catch the file open, and a restore needs the path to exist with the size criu saw, also while the
    # original runs on. Readers retry on a partial line.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, ("%s %12d\n" % (token, count)).encode(), 0)
    finally:
        os.close(fd)


def count_forever(path, tick, server=None):
    token = os.urandom(8).hex()
    count = 0
    conns = []
    while True:
        count += 1
        write_state(path, token, count)
        deadline = time.monotonic() + tick
        while time.monotonic() < deadline:
            if server is None:
                time.sleep(tick)
                break
            server.settimeout(0.01)
            try:
                conn = server.accept()[0]
                conns.append(conn)
            except OSError:
                pass
            for conn in list(conns):
                conn.settimeout(0.01)
                try:
                    data = conn.recv(64)
                except socket.timeout:
                    continue
                except OSError:
                    conns.remove(conn)
                    continue
                if not data:
                    conns.remove(conn)
                    continue
                conn.sendall(("%s %d\n" % (token, count)).encode())


def client_forever(path, port, tick):
    """One TCP connection for life: a broken connection ends this process, so a live client proves it survived."""
    token = os.urandom(8).hex()
    conn = socket.create_connection(("127.0.0.1", port), timeout=None)
    while True:
        conn.sendall(b"next\n")
        reply = conn.recv(128).decode().strip()
        if not reply:
            os._exit(1)
        with open(path, "w") as handle:
            handle.write("%s %s\n" % (token, reply))
        time.sleep(tick)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("state_file")
    parser.add_argument("--children", type=int, default=0)
    parser.add_argument("--tcp", type=int)
    parser.add_argument("--mem", type=int, default=0)
    parser.add_argument("--tcp-client", action="store_true")
    parser.add_argument("--unix-connect")
    parser.add_argument("--tick", type=float, default=0.05)
    args = parser.parse_args()
    ballast = bytearray(os.urandom(args.mem * 1024 * 1024)) if args.mem else None  # noqa: F841 (held on purpose)
    keep = None
    if args.unix_connect:
        keep = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        keep.connect(args.unix_connect)
    for index in range(1, args.children + 1):
        if os.fork() == 0:
            count_forever("%s.%d" % (args.state_file, index), args.tick)
            os._exit(0)
    server = None
    if args.tcp:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", args.tcp))
        server.listen(8)
        if args.tcp_client and os.fork() == 0:
            server.close()
            client_forever(args.state_file + ".client", args.tcp, args.tick)
    sys.stdin.close()
    count_forever(args.state_file, args.tick, server)
    return keep


if __name__ == "__main__":
    main()
