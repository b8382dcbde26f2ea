"""Two checkpoints racing to one DEST: exactly one wins, the other fails cleanly, the winner verifies."""

from __future__ import annotations

import concurrent.futures
import os

from conftest import alive, run_module


def test_race_to_the_same_dest(workloads, ckpt_dir):
    one, two = workloads("--mem", "16"), workloads("--mem", "16")
    dest = ckpt_dir / "contested"
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(
            lambda w: run_module("criu_checkpoint", dict(pid=w.pid, dest=str(dest), leave_running=True)), (one, two)))
    winners = [r for r in results if not r["failed"]]
    losers = [r for r in results if r["failed"]]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "another process" in losers[0]["msg"] and "force" in losers[0]["msg"], losers[0]
    verdict = run_module("criu_verify", dict(path=str(dest)))
    assert verdict["valid"] and verdict["checkpoint"]["id"] == winners[0]["checkpoint"]["id"]
    assert sorted(os.listdir(ckpt_dir)) == ["contested"], "no staging dir, lock file or old copy may remain"
    assert alive(one.pid) and alive(two.pid)
