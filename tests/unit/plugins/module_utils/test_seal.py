"""What a dump that leaves its tree stopped records beside DEST (_seal.note_stopping), and what a rerun does with it."""

import json
import os
import signal
import subprocess

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from .mu_helpers import wait_for


@pytest.fixture
def stopped():
    """A process of this test, stopped as criu's dump leaves a tree."""
    proc = subprocess.Popen(["sleep", "60"])
    os.kill(proc.pid, signal.SIGSTOP)
    wait_for(lambda: procfs.read_stat(proc.pid).state == "T")
    yield proc
    proc.kill()
    proc.wait()


def record(tmp_path, loc, pid, starttime):
    """What note_stopping writes, for a run that then died (its staging left beside DEST)."""
    staging = store.Staging(loc)
    seal_.note_stopping(loc, staging, pid, starttime, False)
    staging.close()
    return tmp_path / (".%s.stopped.json" % loc.name)


def test_a_rerun_resumes_the_tree_a_dead_run_left_stopped_and_forgets_it(tmp_path, stopped):
    with store.location(str(tmp_path / "ckpt")) as loc:
        path = record(tmp_path, loc, stopped.pid, procfs.read_stat(stopped.pid).starttime)
        assert json.loads(path.read_text())["pid"] == stopped.pid and oct(path.stat().st_mode & 0o777) == "0o600"
        actions = seal_.resume_what_a_dead_run_stopped(loc, 10)
    assert actions == ["Resumed pid %d and its 0 descendant(s), left stopped by a run that died after criu's dump into %s"
                       % (stopped.pid, tmp_path / "ckpt")]
    assert wait_for(lambda: procfs.read_stat(stopped.pid).state != "T") and not path.exists()


@pytest.mark.parametrize("damage", ["another process", "garbage", "a symlink"])
def test_a_record_that_names_no_tree_of_ours_resumes_nothing(tmp_path, stopped, damage):
    """A reused pid, a torn file or a link planted beside DEST: nothing is signalled, and the record goes (the link is
    never followed)."""
    with store.location(str(tmp_path / "ckpt")) as loc:
        path = record(tmp_path, loc, stopped.pid, procfs.read_stat(stopped.pid).starttime + (1 if damage == "another process" else 0))
        if damage == "garbage":
            path.write_text("{")
        elif damage == "a symlink":
            target = tmp_path / "elsewhere.json"
            target.write_text(path.read_text())
            path.unlink()
            path.symlink_to(target)
        assert seal_.resume_what_a_dead_run_stopped(loc, 10) == []
    assert procfs.read_stat(stopped.pid).state == "T" and not os.path.lexists(path)
