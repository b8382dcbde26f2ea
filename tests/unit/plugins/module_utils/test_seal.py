"""What a dump that stops its workload records beside DEST (_seal.note_stopping), and what a rerun does with it."""

import json
import os
import signal
import subprocess

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
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


def noted(tmp_path, loc, pid, starttime):
    """What a process tree's dump notes, for a run that then died (its staging left beside DEST)."""
    staging = store.Staging(loc)
    seal_.note_stopping(loc, staging, {"process": {"pid": pid, "starttime": starttime}, "tcp_established": False})
    staging.close()
    return tmp_path / (".%s.stopped.json" % loc.name)


def resume(loc):
    record = seal_.read_stopped(loc)
    return kinds.of(record).resume_stopped(record, loc, 10) if record else None


def test_a_rerun_resumes_the_tree_a_dead_run_left_stopped(tmp_path, stopped):
    with store.location(str(tmp_path / "ckpt")) as loc:
        path = noted(tmp_path, loc, stopped.pid, procfs.read_stat(stopped.pid).starttime)
        record = json.loads(path.read_text())
        assert record["process"]["pid"] == stopped.pid and record["staging"].startswith(".ckpt.staging-")
        assert path.stat().st_mode & 0o777 == 0o600
        assert resume(loc) == ["Resumed pid %d and its 0 descendant(s), left stopped by a run that died after criu's dump "
                               "into %s" % (stopped.pid, tmp_path / "ckpt")]
    assert wait_for(lambda: procfs.read_stat(stopped.pid).state != "T")


@pytest.mark.parametrize("damage, read", [("another process", True), ("garbage", False), ("a symlink", False)])
def test_a_record_that_names_no_tree_of_ours_resumes_nothing(tmp_path, stopped, damage, read):
    """A reused pid, a torn file or a link planted beside DEST: nothing is signalled (the link is never followed)."""
    with store.location(str(tmp_path / "ckpt")) as loc:
        starttime = procfs.read_stat(stopped.pid).starttime
        path = noted(tmp_path, loc, stopped.pid, starttime + (1 if damage == "another process" else 0))
        if damage == "garbage":
            path.write_text("{")
        elif damage == "a symlink":
            target = tmp_path / "elsewhere.json"
            target.write_text(path.read_text())
            path.unlink()
            path.symlink_to(target)
        assert resume(loc) == ([] if read else None)
        seal_.forget_stopping(loc)
    assert procfs.read_stat(stopped.pid).state == "T" and not os.path.lexists(path)
