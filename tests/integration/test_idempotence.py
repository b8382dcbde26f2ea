"""Idempotence and check mode beyond the quartet.

The quartet of community.crypto's integration tests (check mode, for real, again in check mode,
again for real, asserting changed / not changed each time, then force) lives in the ansible-test
integration targets, tests/integration/targets/criu_* (scripts/integration.sh).
"""

from __future__ import annotations

import os
import subprocess
import time

from conftest import alive, run_module, tree_digest, wait_for


def test_checkpoint_of_another_process_needs_force(workloads, ckpt_dir):
    one, two = workloads(), workloads()
    dest = ckpt_dir / "shared"
    assert run_module("criu_checkpoint", dict(pid=one.pid, dest=str(dest), leave_running=True))["changed"]
    before = tree_digest(str(dest))
    refused = run_module("criu_checkpoint", dict(pid=two.pid, dest=str(dest), leave_running=True))
    assert refused.get("failed") and "another process" in refused["msg"] and "force" in refused["msg"], refused
    assert tree_digest(str(dest)) == before


def test_restore_writes_pidfile(workloads, ckpt_dir, tmp_path):
    workload = workloads(pid_namespace=True)
    dest = ckpt_dir / "pidfile"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest)))["changed"]
    pidfile = tmp_path / "restored.pid"
    restored = run_module("criu_restore", dict(src=str(dest), pidfile=str(pidfile)))
    workload.adopt(restored["pid"])
    assert pidfile.read_text().strip() == str(restored["pid"])


def test_leave_running_keeps_the_process(workloads, ckpt_dir):
    workload = workloads(minimum=5)
    start = workload.state()
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "lr"), leave_running=True))["changed"]
    assert alive(workload.pid)
    wait_for(lambda: workload.state()[1] > start[1] + 3, what="the counter to keep going")


def test_default_dump_ends_the_process(workloads, ckpt_dir):
    workload = workloads()
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "end")))["changed"]
    workload.reap()
    assert not alive(workload.pid)


def test_leave_stopped_freezes_until_sigcont(workloads, ckpt_dir):
    workload = workloads(minimum=5)
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "ls"), leave_stopped=True))["changed"]
    frozen = workload.state()
    assert open("/proc/%d/stat" % workload.pid).read().rpartition(")")[2].split()[0] == "T"
    time.sleep(0.5)  # ten of the counter's 0.05 s ticks: a running counter would have moved
    assert workload.state() == frozen, "a stopped process must not count"
    os.kill(workload.pid, 18)  # SIGCONT
    wait_for(lambda: workload.state()[1] > frozen[1] and workload.state()[0] == frozen[0], what="the counter to resume")


def test_rerun_after_tampering_is_refused_not_reported_unchanged(workloads, ckpt_dir):
    """The 'already restored' answer is only given for a checkpoint that still verifies."""
    workload = workloads(pid_namespace=True)
    dest = ckpt_dir / "tampered-later"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest)))["changed"]
    first = run_module("criu_restore", dict(src=str(dest)))
    workload.adopt(first["pid"])
    pages = max((dest / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[0] ^= 0xFF
    pages.write_bytes(bytes(data))
    again = run_module("criu_restore", dict(src=str(dest)))
    assert again["failed"] and "sha256 expected" in again["msg"], again


def test_info_reports_what_criu_check_says():
    info = run_module("criu_info", {})
    for feature in ("mem_dirty_track", "uffd-noncoop", "network_lock_nftables"):
        rc = subprocess.run([info["criu"]["path"], "check", "--feature", feature], capture_output=True, check=False).returncode
        assert (feature in info["criu"]["missing_features"]) == (rc != 0), (feature, info["criu"])
    assert info["criu"]["dirty_tracking"] == ("mem_dirty_track" not in info["criu"]["missing_features"])
    assert info["kernel"] == os.uname().release and info["can_checkpoint"] is True


def test_checkpoint_makes_missing_parents_only_for_real(workloads, ckpt_dir):
    """dest under directories that do not exist yet (a fresh host's /var/lib/criu/NAME): check mode says it would make
    them and makes nothing; a real run makes them root-only (0700) and checkpoints; a rerun changes nothing."""
    workload = workloads()
    parent = ckpt_dir / "var" / "lib" / "criu"
    dest = parent / "job"
    args = dict(pid=workload.pid, dest=str(dest), leave_running=True)
    predicted = run_module("criu_checkpoint", args, check=True)
    (action,) = predicted["actions"]
    assert predicted["changed"] and action.startswith("would make %s and dump pid %d (" % (ckpt_dir / "var", workload.pid)), predicted
    assert action.endswith(") to %s" % dest), predicted
    assert os.listdir(ckpt_dir) == [], "check mode must make nothing"
    made = run_module("criu_checkpoint", args)
    assert made["changed"] and made["checkpoint"]["name"] == "job", made
    for directory in (ckpt_dir / "var", ckpt_dir / "var" / "lib", parent):
        st = os.lstat(directory)
        assert (st.st_uid, oct(st.st_mode & 0o7777)) == (0, "0o700"), (directory, oct(st.st_mode))
    assert not run_module("criu_checkpoint", args)["changed"]
