# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""criu's statistics files (stats-dump, stats-restore), read without pycriu or protobuf (_protowire).

Every checkpoint and restore reports them. The layout is CRIU's images/stats.proto.
"""

from __future__ import annotations

import os
import stat
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _protowire as protowire

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


def parse(data: bytes) -> t.Dict[str, int]:
    """The counters of a stats image: two magics, then size-prefixed StatsEntry messages."""
    found: t.Dict[str, int] = {}
    for entry in protowire.entries(data, (MAGIC_SERVICE, MAGIC_STATS), "stats"):
        for number, body in protowire.fields(entry):
            names = FIELDS.get(number)
            if names is None or not isinstance(body, bytes):
                continue
            for counter, value in protowire.fields(body):
                if counter in names and isinstance(value, int):
                    found[names[counter]] = value
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
