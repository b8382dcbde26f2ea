"""Diff mode (``--diff``) of criu_checkpoint and criu_restore, on real processes with real criu: the same task in check
mode, for real, then again, asserting the diff's before and after and changed / not changed each time.

A checkpoint shows by path (id, name, time, process, image bytes), an absent one as nothing; a restored copy as its
pid, checkpoint and time. Without ``--diff`` no diff is returned.
"""

from __future__ import annotations

import os
import signal
import typing as t

from conftest import gone, run_module, wait_for


def shown(made: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The checkpoint a dump made, as the diff must show it, from the task's own result."""
    checkpoint = made["checkpoint"]
    return {"id": checkpoint["id"], "name": checkpoint["name"], "created_at": checkpoint["created_at"],
            "pid": checkpoint["process"]["pid"], "comm": checkpoint["process"]["comm"], "image_bytes": made["stats"]["image_bytes"]}


def of_restore(src: str, before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """A restore's diff: the restored copy before and after, under a header naming the checkpoint."""
    header = "copy restored from %s" % src
    return {"before": before, "after": after, "before_header": header, "after_header": header}


def comm(pid: int) -> str:
    with open("/proc/%d/comm" % pid) as handle:
        return handle.read().strip()


def test_checkpoint_diff_check_real_again_then_force(workloads, ckpt_dir):
    workload = workloads()
    dest = str(ckpt_dir / "job")
    args = dict(pid=workload.pid, dest=dest, leave_running=True)
    to_come = {"name": "job", "pid": workload.pid, "comm": comm(workload.pid)}

    predicted = run_module("criu_checkpoint", args, check=True, diff=True)
    assert predicted["changed"] and predicted["diff"] == {"before": {}, "after": {dest: to_come}}, predicted
    assert not os.path.exists(dest), "check mode must make nothing"
    made = run_module("criu_checkpoint", args, diff=True)
    assert made["changed"] and made["diff"] == {"before": {}, "after": {dest: shown(made)}}, made
    for check in (True, False):
        again = run_module("criu_checkpoint", args, check=check, diff=True)
        assert not again["changed"] and again["diff"] == {"before": {dest: shown(made)}, "after": {dest: shown(made)}}, again
    assert "diff" not in run_module("criu_checkpoint", args), "a diff is returned only under --diff"

    forced = dict(args, force=True)
    predicted = run_module("criu_checkpoint", forced, check=True, diff=True)
    assert predicted["changed"] and predicted["diff"] == {"before": {dest: shown(made)}, "after": {dest: to_come}}, predicted
    replaced = run_module("criu_checkpoint", forced, diff=True)
    assert replaced["changed"] and replaced["diff"] == {"before": {dest: shown(made)}, "after": {dest: shown(replaced)}}, replaced
    assert replaced["checkpoint"]["id"] != made["checkpoint"]["id"]


def test_state_absent_diff(workloads, ckpt_dir):
    workload = workloads()
    dest = str(ckpt_dir / "job")
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest, leave_running=True))
    assert made["changed"], made
    args = dict(dest=dest, state="absent")
    for check in (True, False):
        deleted = run_module("criu_checkpoint", args, check=check, diff=True)
        assert deleted["changed"] and deleted["diff"] == {"before": {dest: shown(made)}, "after": {}}, deleted
    assert not os.path.exists(dest)
    for check in (True, False):
        again = run_module("criu_checkpoint", args, check=check, diff=True)
        assert not again["changed"] and again["diff"] == {"before": {}, "after": {}}, again


def test_keep_diff_shows_the_older_checkpoints_going(workloads, ckpt_dir):
    workload = workloads()
    older = [run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / ("job-%d" % index)), name="job",
                                                leave_running=True)) for index in (1, 2)]
    assert all(made["changed"] for made in older), older
    first, dest = str(ckpt_dir / "job-1"), str(ckpt_dir / "job-3")
    args = dict(pid=workload.pid, dest=dest, name="job", keep=2, leave_running=True)
    predicted = run_module("criu_checkpoint", args, check=True, diff=True)
    assert predicted["diff"] == {"before": {first: shown(older[0])},
                                 "after": {dest: {"name": "job", "pid": workload.pid, "comm": comm(workload.pid)}}}, predicted
    assert predicted["actions"][1:] == ["would delete the older checkpoint %s (keep 2 of job)" % first], predicted
    assert sorted(os.listdir(ckpt_dir)) == ["job-1", "job-2"]
    made = run_module("criu_checkpoint", args, diff=True)
    assert made["removed"] == [first] and made["diff"] == {"before": {first: shown(older[0])}, "after": {dest: shown(made)}}, made
    assert sorted(os.listdir(ckpt_dir)) == ["job-2", "job-3"]


def test_restore_diff_check_real_again(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True)
    dest = str(ckpt_dir / "job")
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest))
    assert made["changed"], made
    workload.reap()
    args = dict(src=dest)
    to_come = {"checkpoint_id": made["checkpoint"]["id"]}

    predicted = run_module("criu_restore", args, check=True, diff=True)
    assert predicted["changed"] and predicted["diff"] == of_restore(dest, {}, to_come), predicted
    restored = run_module("criu_restore", args, diff=True)
    assert restored["changed"] and not restored["failed"], restored
    workload.adopt(restored["pid"])
    copy = dict(to_come, pid=restored["pid"], restored_at=restored["restored"]["restored_at"])
    assert restored["diff"] == of_restore(dest, {}, copy), restored
    for check in (True, False):
        again = run_module("criu_restore", args, check=check, diff=True)
        assert not again["changed"] and again["diff"] == of_restore(dest, copy, copy), again
    assert "diff" not in run_module("criu_restore", args), "a diff is returned only under --diff"

    os.kill(restored["pid"], signal.SIGKILL)  # the copy this test restored: once it is gone, restoring shows it anew
    wait_for(lambda: gone(restored["pid"]), what="the restored copy to exit")
    predicted = run_module("criu_restore", args, check=True, diff=True)
    assert predicted["changed"] and predicted["diff"] == of_restore(dest, {}, to_come), predicted
