"""criu's statistics files read without pycriu: the bytes below were written by CRIU's own pycriu
(images.dump of a StatsEntry), and the parser must give back exactly what pycriu put in."""

from __future__ import annotations

import io
import os
import sys

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats

# pycriu.images.dump({"magic": "STATS", "entries": [{"dump": {...}}]}) with every dump counter set.
STATS_DUMP = (b"@Y\x10U\x063\tW%\x00\x00\x00\n#\x08\x8d\x01\x10\xb4\xc6\x11\x18\xbf% \xa7\x19(\x97\x0e0\x008\xb6\r@"
              b"\x00H\x00P\x08X\x08`\x00h\x00p\x00")
DUMP_COUNTERS = {"freezing_time": 141, "frozen_time": 287540, "memdump_time": 4799, "memwrite_time": 3239,
                 "pages_scanned": 1815, "pages_skipped_parent": 0, "pages_written": 1718, "irmap_resolve": 0,
                 "pages_lazy": 0, "page_pipes": 8, "page_pipe_bufs": 8, "shpages_scanned": 0,
                 "shpages_skipped_parent": 0, "shpages_written": 0}
STATS_RESTORE = b"@Y\x10U\x063\tW\x11\x00\x00\x00\x12\x0f\x08\x00\x10\x00\x18\xb4\x10 \xf8\xb4\x0b(\x80\x80\x04"
RESTORE_COUNTERS = {"pages_compared": 0, "pages_skipped_cow": 0, "forking_time": 2100, "restore_time": 187000,
                    "pages_restored": 65536}
PYCRIU = "/opt/criu-forky/usr/lib/python3/dist-packages"


def test_parse_gives_every_counter_criu_wrote():
    assert criustats.parse(STATS_DUMP) == DUMP_COUNTERS
    assert criustats.parse(STATS_RESTORE) == RESTORE_COUNTERS


def test_parse_agrees_with_pycriu_on_what_it_encodes():
    if not os.path.isdir(os.path.join(PYCRIU, "pycriu")):
        pytest.skip("no pycriu at %s" % PYCRIU)
    pytest.importorskip("google.protobuf")
    sys.path.insert(0, PYCRIU)
    try:
        from pycriu import images  # pylint: disable=import-outside-toplevel
    finally:
        sys.path.remove(PYCRIU)
    counters = {"freezing_time": 1, "frozen_time": 2 ** 31, "memdump_time": 3, "memwrite_time": 4,
                "pages_scanned": 2 ** 40, "pages_skipped_parent": 6, "pages_written": 7, "pages_lazy": 9}
    out = io.BytesIO()
    images.dump({"magic": "STATS", "entries": [{"dump": counters}, {"restore": dict(RESTORE_COUNTERS, restore_time=5)}]},
                out)
    assert criustats.parse(out.getvalue()) == dict(counters, **dict(RESTORE_COUNTERS, restore_time=5))


def test_unknown_fields_of_a_newer_criu_are_skipped():
    # field 15 (varint), field 16 (fixed64), field 17 (fixed32) and field 18 (bytes) inside the dump message,
    # and a field 3 (bytes) in the entry: a newer criu's additions, skipped, not misread.
    extra = b"\x78\x05" + b"\x81\x01" + b"\x00" * 8 + b"\x8d\x01" + b"\x00" * 4 + b"\x92\x01\x02ab"
    dump = b"\x08\x0a" + extra
    entry = b"\x0a" + bytes([len(dump)]) + dump + b"\x1a\x01z"
    data = STATS_DUMP[:8] + len(entry).to_bytes(4, "little") + entry
    assert criustats.parse(data) == {"freezing_time": 10}


@pytest.mark.parametrize("data, words", [
    (b"", "not a criu stats image"),
    (b"\x01stats", "not a criu stats image"),
    (STATS_DUMP[:4] + b"\x00\x00\x00\x00" + STATS_DUMP[8:], "not a criu stats image"),
    (STATS_DUMP[:10], "truncated entry size"),
    (STATS_DUMP[:-3], "runs past the end of the file"),
    (STATS_DUMP[:8] + b"\x02\x00\x00\x00\x08\xff", "truncated or overlong varint"),
    (STATS_DUMP[:8] + b"\x02\x00\x00\x00\x0a\x05", "runs past the end of its message"),
    (STATS_DUMP[:8] + b"\x01\x00\x00\x00\x0b", "unknown wire type 3"),
    (STATS_DUMP[:8] + b"\x0b\x00\x00\x00\x08" + b"\xff" * 10, "truncated or overlong varint"),
], ids=["empty", "junk", "wrong-magic", "short-size", "short-entry", "short-varint", "short-field", "wire-type",
        "overlong-varint"])
def test_parse_refuses_what_is_not_a_stats_image(data, words):
    with pytest.raises(ValueError, match=words):
        criustats.parse(data)


def _dir_fd(path):
    return os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)


def test_read_a_stats_file(tmp_path):
    (tmp_path / "stats-dump").write_bytes(STATS_DUMP)
    fd = _dir_fd(tmp_path)
    try:
        assert criustats.read(fd, "stats-dump") == DUMP_COUNTERS
        assert criustats.read(fd, "stats-restore") == {"unavailable": "criu wrote no stats-restore"}
    finally:
        os.close(fd)


def test_read_says_why_it_cannot(tmp_path):
    (tmp_path / "elsewhere").write_bytes(STATS_DUMP)
    (tmp_path / "stats-dump").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "stats-restore").mkdir()
    (tmp_path / "big").write_bytes(STATS_DUMP + b"\x00" * criustats.MAX_BYTES)
    (tmp_path / "junk").write_bytes(b"\xff not an image")
    os.mkfifo(tmp_path / "fifo")
    fd = _dir_fd(tmp_path)
    try:
        assert criustats.read(fd, "stats-dump")["unavailable"].startswith("stats-dump cannot be read: ")
        assert criustats.read(fd, "stats-restore") == {"unavailable": "stats-restore is not a regular file"}
        assert criustats.read(fd, "fifo") == {"unavailable": "fifo is not a regular file"}
        assert criustats.read(fd, "big") == {"unavailable": "big cannot be read: larger than %d bytes" % criustats.MAX_BYTES}
        assert criustats.read(fd, "junk") == {"unavailable": "junk cannot be read: not a criu stats image"}
    finally:
        os.close(fd)
