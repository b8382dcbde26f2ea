"""Checkpoints with a life cycle: delete one (state=absent), keep the newest N of a name, list them, read
what they hold and what criu measured. Check mode and idempotence as community.crypto tests them: the same
task in check mode, for real, then again in both, asserting changed / not changed each time."""

from __future__ import annotations

import json
import os

import pytest

from conftest import run_module

KEY = "lifecycle-test-key-0123456789abcdef"


@pytest.fixture
def running(workloads):
    return workloads("--mem", "4")


def quartet(module, args, first_changed=True):
    """check mode, real, check mode again, real again: changed, changed, not, not."""
    results = [run_module(module, args, check=True), run_module(module, args),
               run_module(module, args, check=True), run_module(module, args)]
    for result in results:
        assert not result["failed"], result
    assert [r["changed"] for r in results] == [first_changed, first_changed, False, False], results
    return results


def test_state_absent_quartet(running, ckpt_dir):
    dest = ckpt_dir / "ck"
    assert run_module("criu_checkpoint", dict(pid=running.pid, dest=str(dest), leave_running=True))["changed"]
    check = run_module("criu_checkpoint", dict(dest=str(dest), state="absent"), check=True)
    assert check["changed"] and dest.exists() and "would delete" in check["actions"][0], check
    quartet_results = [run_module("criu_checkpoint", dict(dest=str(dest), state="absent")),
                       run_module("criu_checkpoint", dict(dest=str(dest), state="absent"), check=True),
                       run_module("criu_checkpoint", dict(dest=str(dest), state="absent"))]
    assert [r["changed"] for r in quartet_results] == [True, False, False], quartet_results
    assert not dest.exists() and os.listdir(str(ckpt_dir)) == []


def test_state_absent_refuses_what_is_not_a_checkpoint(ckpt_dir):
    other = ckpt_dir / "notes"
    other.mkdir(mode=0o700)
    (other / "keep.txt").write_text("mine\n")
    result = run_module("criu_checkpoint", dict(dest=str(other), state="absent"))
    assert result["failed"] and "is not a checkpoint directory made by nucleus.criu" in result["msg"], result
    assert (other / "keep.txt").read_text() == "mine\n"


def test_keep_the_newest_of_a_name(running, ckpt_dir):
    foreign = ckpt_dir / "job-0"
    foreign.mkdir(mode=0o700)
    (foreign / "data").write_text("not a checkpoint\n")
    other_name = ckpt_dir / "other"
    assert run_module("criu_checkpoint", dict(pid=running.pid, dest=str(other_name), leave_running=True))["changed"]
    made = []
    for index in range(1, 5):
        dest = str(ckpt_dir / ("job-%d" % index))
        result = run_module("criu_checkpoint", dict(pid=running.pid, dest=dest, name="job", keep=2, leave_running=True))
        assert result["changed"], result
        made.append(dest)
        if index >= 3:
            assert result["removed"] == [made[index - 3]], result
    assert sorted(os.listdir(str(ckpt_dir))) == ["job-0", "job-3", "job-4", "other"]
    assert (foreign / "data").exists()


def test_checkpoint_info_lists_verifies_and_details(running, ckpt_dir):
    for name in ("a", "b"):
        assert run_module("criu_checkpoint", dict(pid=running.pid, dest=str(ckpt_dir / name), hmac_key=KEY,
                                                  leave_running=True))["changed"]
    (ckpt_dir / "junk").mkdir(mode=0o700)
    pages = max((ckpt_dir / "b" / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[100] ^= 0xFF
    pages.write_bytes(bytes(data))

    listed = quartet("criu_checkpoint_info", dict(path=str(ckpt_dir)), first_changed=False)[0]
    assert [c["name"] for c in listed["checkpoints"]] == ["b", "a"], listed  # newest first, junk left out
    first = listed["checkpoints"][1]
    assert first["signed"] and first["process"]["pid"] == running.pid and first["size_bytes"] > 4 << 20, first
    assert "valid" not in first and "cmdline" not in json.dumps(listed), first

    only = run_module("criu_checkpoint_info", dict(path=str(ckpt_dir), name="a", details=True, hmac_key=KEY))
    (entry,) = only["checkpoints"]
    assert entry["valid"] and entry["problems"] == [], entry
    details = entry["details"]
    assert "unavailable" not in details, details
    assert details["processes"][0]["comm"] == "python" and details["memory_bytes"] >= 4 << 20, details
    assert details["files"].get("REG", 0) > 0, details

    verified = run_module("criu_checkpoint_info", dict(path=str(ckpt_dir), verify=True, details=True, hmac_key=KEY))
    tampered = [c for c in verified["checkpoints"] if c["name"] == "b"][0]
    assert not tampered["valid"] and any("sha256 expected" in p for p in tampered["problems"]), tampered
    assert "does not verify" in tampered["details"]["unavailable"], tampered


def test_criu_statistics_in_the_results(workloads, ckpt_dir):
    workload = workloads("--mem", "8")
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "ck")))
    criu = made["stats"]["criu"]
    assert "unavailable" not in criu, criu
    assert criu["pages_written"] * 4096 >= 8 << 20 and criu["frozen_time"] > 0, criu
    assert made["stats"]["fsync_seconds"] >= 0
    workload.reap()
    verified = run_module("criu_verify", dict(path=str(ckpt_dir / "ck")))
    assert verified["stats"]["verify_bytes"] == made["stats"]["image_bytes"] and verified["stats"]["verify_seconds"] > 0
    restored = run_module("criu_restore", dict(src=str(ckpt_dir / "ck")))
    workload.adopt(restored["pid"])
    stats = restored["stats"]
    assert stats["verify_bytes"] == made["stats"]["image_bytes"] and stats["restore_seconds"] > 0, stats
    assert "unavailable" not in stats["criu"] and stats["criu"]["pages_restored"] > 0, stats
