"""Reading CRIU's logs (_criulog)."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criulog as criulog
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT, MIGRATE

RLIMIT = "(00.000431) Error (criu/rlimit.c:24): rlimit: Can't setup RLIMIT_NOFILE for self"
LOG = """\
(00.000000) Version: 4.2 (gitid 0)
%s
(00.010000) Warn  (criu/net.c:1): something
(00.020000) Error (criu/files.c:1): first real error
(00.030000) Error (criu/cr-restore.c:2): Can't fork for 1234: File exists
(00.040000) Error (criu/cr-restore.c:3): Restoring FAILED.
""" % RLIMIT


@pytest.mark.parametrize("text, action, expected", [
    ("(01.2) Dumping finished successfully\n", "dump", True),
    ("(01.2) Restore finished successfully\n", "restore", True),
    ("(01.2) Dumping finished successfully\n", "restore", False),
    ("(01.2) Restore finished successfully\n", "dump", False),
    (RLIMIT + "\n(01.2) Dumping finished successfully\n", "dump", True),
    ("(01.2) Dumping FAILED.\n", "dump", False),
    ("", "dump", False),
])
def test_succeeded(text, action, expected):
    assert criulog.succeeded(text, action) is expected


def test_error_lines_skip_rlimit_and_keep_last():
    lines = criulog.error_lines(LOG)
    assert lines == [
        "(00.020000) Error (criu/files.c:1): first real error",
        "(00.030000) Error (criu/cr-restore.c:2): Can't fork for 1234: File exists",
        "(00.040000) Error (criu/cr-restore.c:3): Restoring FAILED.",
    ]
    assert criulog.error_lines(LOG, limit=2) == lines[-2:]
    assert criulog.error_lines(RLIMIT + "\n") == []


def test_error_lines_returns_only_the_last_n():
    text = "".join("Error (x.c:%d): e%d\n" % (i, i) for i in range(20))
    assert criulog.error_lines(text) == ["Error (x.c:%d): e%d" % (i, i) for i in range(15, 20)]


def test_error_lines_limit_zero_returns_nothing():
    assert criulog.error_lines(LOG, limit=0) == []


@pytest.mark.parametrize("line, needle", [
    ("Error (criu/cr-restore.c:2): Can't fork for 1234: File exists", "PID 1234 is already in use"),
    ("Error (x): Connected TCP socket, consider using --tcp-established option.", "tcp_established=true"),
    ("Error (x): A session leader of 77(77) is outside of its pid namespace", "unshare --pid --fork setsid"),
    ("Error (x): The root process 5 is not a session leader. Consider using --shell-job option", "shell_job=true"),
    ("Error (x): Can't dump half of stream unix connection.", "unix stream socket"),
    ("Error (x): iptables-restore failed", "nftables"),
    ("Error (criu/file-lock.c:110): Some file locks are hold by dumping tasks! You can try --file-locks to dump them.",
     "file_locks=true"),
    ("pie: 1: Error (criu/pie/parasite.c:828): can't get /proc fd", "working directories of their own"),
])
def test_hints(line, needle):
    found = criulog.hints([line])
    assert len(found) == 1 and needle in found[0]


def test_every_option_a_hint_names_is_one_a_checkpoint_and_a_migration_take():
    """A remedy names a module option; criu_migrate dumps as criu_checkpoint does, so both must have it."""
    named = {word for _pattern, hint in criulog._HINTS for word in re.findall(r"\b[a-z]+(?:_[a-z]+)+\b", hint)}
    assert {"ext_unix_sk", "ghost_limit", "file_locks", "skip_in_flight"} <= named
    for spec in (CHECKPOINT, MIGRATE):
        assert named <= set(spec.argument_spec), sorted(named - set(spec.argument_spec))


def test_hints_deduplicated_and_empty_for_unknown():
    line = "Error (x): Can't fork for 42: File exists"
    assert criulog.hints([line, line]) == criulog.hints([line])
    assert len(criulog.hints([line, line])) == 1
    assert criulog.hints(["Error (x): something new"]) == []


def test_read_tail_returns_only_the_end(tmp_path):
    path = tmp_path / "dump.log"
    path.write_bytes(b"HEAD\n" + b"x" * (3 * 1024 * 1024) + b"\nTAIL: Dumping finished successfully\n")
    tail = criulog.read_tail(str(path), max_bytes=1024)
    assert len(tail) == 1024
    assert tail.endswith("TAIL: Dumping finished successfully\n") and "HEAD" not in tail
    default = criulog.read_tail(str(path))
    assert len(default) == 512 * 1024 and "HEAD" not in default


def test_read_tail_small_and_missing(tmp_path):
    (tmp_path / "a.log").write_bytes(b"short \xff log")
    assert criulog.read_tail(str(tmp_path / "a.log")) == "short \ufffd log"
    assert criulog.read_tail(str(tmp_path / "missing.log")) == ""


_line = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=40),
    st.just(RLIMIT),
    st.builds(lambda s: "Error (%s): " % s, st.text(max_size=10)),
)


@settings(deadline=None, max_examples=200)
@given(lines=st.lists(_line, max_size=30), limit=st.integers(min_value=1, max_value=10))
def test_error_lines_property(lines, limit):
    found = criulog.error_lines("\n".join(lines), limit=limit)
    assert len(found) <= limit
    assert RLIMIT.strip() not in found
    assert all("Error (" in line and "RLIMIT_NOFILE for self" not in line for line in found)


def test_lazy_page_counts(tmp_path):
    log = tmp_path / "lazy-pages.log"
    log.write_bytes(b"(00.1) uffd: 1-1: UFFD transferred pages: (3/4)\n" + b"x" * 2000000 + b"\n"
                    b"(00.9) uffd: 1-2: UFFD transferred pages: (66545/66545)\n\xff\xfe not utf-8\n")
    assert criulog.lazy_page_counts(str(log)) == [(3, 4), (66545, 66545)]
    assert criulog.lazy_page_counts(str(tmp_path / "missing.log")) == []
