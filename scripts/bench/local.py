# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The local rows: checkpoint, restore and verify on this machine, raw CRIU next to the module and the ad-hoc task.

Workloads are the tests' own (conftest.Workload: demo/counter.py in its own PID namespace); the ad-hoc tasks go
through the tests' run_module; the module's params come from _argspec (Spec.defaults), never written by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import typing as t

from bench import env
from bench.env import CRIU, MIB, BenchError, kill_and_wait, log, run_checked
from bench.summary import rotate
from conftest import Workload, alive, processes_running, run_module, wait_for
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT, RESTORE, VERIFY

TIMEOUT = 600  # the modules' timeout option: generous, a timing is not a test
PREFAULT = "import mmap, sys\nsize = int(sys.argv[1])\nwith mmap.mmap(-1, size) as area:\n    for offset in range(0, size, 4096):\n        area[offset] = 1\n"
CHECKPOINT_VARIANTS = ("raw", "raw_fsync", "module", "adhoc")
RESTORE_VARIANTS = ("raw", "module", "adhoc")


def start_timeout(mib: int) -> float:
    return 60 + mib / 10.0  # os.urandom of the ballast: ~0.3 s/GiB..10 s/GiB on this VM


def prefault(mib: int) -> None:
    """Touch and free 1.25x MIB of memory just before a timed step. On this VM (virtio-balloon free page reporting)
    memory freed a few seconds ago goes back to the host, and touching it again costs a host page fault per page:
    whichever step happened to find warm pages would win. A child process does it, so that no measured process
    inherits its peak RSS."""
    subprocess.run([env.PYTHON, "-c", PREFAULT, str((mib * 5 // 4 + 1) * MIB)], check=True, timeout=300)


def start_workload(state_file: str, mib: int) -> Workload:
    workload = Workload(state_file, ["--mem", str(mib)], pid_namespace=True)
    try:
        wait_for(lambda: os.path.exists(state_file), timeout=start_timeout(mib), what="%s to fill its memory" % state_file)
        workload.wait_count(2)
    except BaseException:
        stop_workload(workload)
        raise
    return workload


def stop_workload(workload: Workload) -> None:
    """Kill every copy of the workload (found by its state file in their command line, so never a pid reused by
    another process since), and collect the unshare that started it."""
    kill_and_wait(processes_running(workload.state_file))
    if workload.proc.poll() is None:
        workload.proc.kill()
    try:
        workload.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log("warning: the unshare of %s did not exit" % workload.state_file)


def raw_dump(pid: int, directory: str) -> float:
    """criu dump with the module's flags (no default config, -v4, nftables network lock), nothing else."""
    images = os.path.join(directory, "images")
    os.makedirs(images, mode=0o700)
    argv = [CRIU, "dump", "--no-default-config", "--tree", str(pid), "--images-dir", images, "--work-dir", directory,
            "--log-file", "dump.log", "-v4", "--network-lock", "nftables"]
    elapsed = run_checked(argv, "raw criu dump of %d (log %s/dump.log)" % (pid, directory))[0]
    if not os.path.isfile(os.path.join(images, "inventory.img")):
        raise BenchError("raw criu dump wrote no inventory.img in %s" % images)
    return elapsed


def fsync_images(directory: str) -> float:
    """Make a raw dump durable as the module makes its own: every image file, then the directories."""
    started = time.monotonic()
    images = os.path.join(directory, "images")
    for name in sorted(os.listdir(images)):
        fd = os.open(os.path.join(images, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for path in (images, directory):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.monotonic() - started


def raw_restore(directory: str) -> t.Tuple[float, int]:
    pidfile = os.path.join(directory, "restored.pid")
    argv = [CRIU, "restore", "--no-default-config", "--images-dir", os.path.join(directory, "images"), "--work-dir", directory,
            "--log-file", "restore.log", "-v4", "--restore-detached", "--pidfile", pidfile]
    elapsed = run_checked(argv, "raw criu restore of %s (log %s/restore.log)" % (directory, directory))[0]
    with open(pidfile, encoding="ascii") as handle:
        return elapsed, int(handle.read().strip())


def in_process(kind: str, params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The module's logic in a fresh interpreter (child.py): elapsed time of the call, its stats, the peak RSS."""
    # ru_maxrss counts the memory of the process image exec replaced, and a vfork'd child's is this benchmark's own
    # (tens of MiB): a shell in between forks the child from its own small image, so the child's figure is its own.
    argv = ["/bin/sh", "-c", '"$@"; exit $?', "sh", env.PYTHON, env.CHILD, env.COLLECTIONS, kind, json.dumps(dict(params))]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT + 60, check=False)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError("in-process %s gave no result (rc %d): %s" % (kind, proc.returncode, proc.stderr[-2000:])) from None
    if proc.returncode != 0 or "error" in result:
        raise BenchError("in-process %s failed: %s" % (kind, result.get("error") or proc.stderr[-2000:]))
    return result


def adhoc(module: str, args: t.Mapping[str, t.Any]) -> t.Tuple[float, t.Dict[str, t.Any]]:
    """``ansible localhost -m nucleus.criu.MODULE -a JSON`` (the tests' run_module): wall time and the task result."""
    started = time.monotonic()
    result = run_module(module, args)
    elapsed = time.monotonic() - started
    if result.get("failed"):
        raise BenchError("ad-hoc %s failed: %s" % (module, result.get("msg") or json.dumps(result)[-2000:]))
    return elapsed, result


def sha256_one_core(seconds: float = 0.5) -> float:
    """hashlib sha256 on one thread over a buffer in memory (no I/O): MiB/s, the ceiling of one core."""
    block = os.urandom(32 * MIB)
    digest = hashlib.sha256()
    count = 0
    started = time.monotonic()
    while count < 4 or time.monotonic() - started < seconds:
        digest.update(block)
        count += 1
    return count * 32 / (time.monotonic() - started)


def checkpoint_step(variant: str, pid: int, dest: str, algorithm: str, out: t.Dict[str, t.Any]) -> None:
    if variant == "raw":
        out["dump_raw_s"] = raw_dump(pid, dest)
    elif variant == "raw_fsync":
        out["dump_raw_fsync_dump_s"] = raw_dump(pid, dest)
        out["dump_raw_fsync_fsync_s"] = fsync_images(dest)
        out["dump_raw_fsync_s"] = out["dump_raw_fsync_dump_s"] + out["dump_raw_fsync_fsync_s"]
    elif variant == "module":
        result = in_process("checkpoint", CHECKPOINT.defaults(pid=pid, dest=dest, hash_algorithm=algorithm, timeout=TIMEOUT))
        stats = result.get("stats") or {}
        out.update(checkpoint_module_s=result["elapsed"], checkpoint_module_rss_kib=result["maxrss_kib"],
                   checkpoint_module_dump_s=stats.get("dump_seconds"), image_bytes=result["image_bytes"],
                   image_files=result["image_files"], checkpoint_algorithm=result["algorithm"])
    else:
        out["checkpoint_adhoc_s"] = adhoc("criu_checkpoint", {"pid": pid, "dest": dest, "hash_algorithm": algorithm,
                                                              "timeout": TIMEOUT})[0]


def restore_step(variant: str, src: str, out: t.Dict[str, t.Any]) -> int:
    """Restore ``src`` one way; the new pid."""
    if variant == "raw":
        out["restore_raw_s"], pid = raw_restore(src)
    elif variant == "module":
        result = in_process("restore", RESTORE.defaults(src=src, timeout=TIMEOUT))
        stats = result.get("stats") or {}
        out.update(restore_module_s=result["elapsed"], restore_module_rss_kib=result["maxrss_kib"],
                   restore_module_criu_s=stats.get("restore_seconds"), restore_module_verify_s=stats.get("verify_seconds"))
        pid = result["pid"]
    else:
        out["restore_adhoc_s"], task = adhoc("criu_restore", {"src": src, "timeout": TIMEOUT})
        pid = task["pid"]
    if not isinstance(pid, int) or not alive(pid):
        raise BenchError("the %s restore of %s reported pid %s, which is not running" % (variant, src, pid))
    return pid


def local_run(run_dir: str, mib: int, index: int, algorithm: str) -> t.Dict[str, t.Any]:
    """One run at MIB: checkpoint (raw, raw + fsync, module, ad-hoc), restore (raw, module, ad-hoc), verify."""
    base = os.path.join(run_dir, "local-%d-r%d" % (mib, index))
    ckpt = os.path.join(base, "ck")
    os.makedirs(ckpt, mode=0o700)
    out: t.Dict[str, t.Any] = {"size_mib": mib, "run": index, "cores": env.cores()}
    workloads: t.Dict[str, Workload] = {}
    try:
        for variant in CHECKPOINT_VARIANTS:
            workloads[variant] = start_workload(os.path.join(run_dir, "state", "local-%d-r%d-%s" % (mib, index, variant)), mib)
        os.sync()
        for variant in rotate(CHECKPOINT_VARIANTS, index):
            prefault(mib)
            checkpoint_step(variant, workloads[variant].pid, os.path.join(ckpt, variant), algorithm, out)
            workloads[variant].reap()
            os.sync()  # untimed: no step pays for the previous step's write-back
        shutil.rmtree(os.path.join(ckpt, "raw_fsync"))  # only its dump was measured
        for variant in rotate(RESTORE_VARIANTS, index):
            prefault(mib)
            kill_and_wait([restore_step(variant, os.path.join(ckpt, variant), out)])
        # Verify the module's own checkpoint (page cache warm, as for the restore that just read it).
        out["sha256_1core_mibps"] = sha256_one_core()
        path = os.path.join(ckpt, "module")
        result = in_process("verify", VERIFY.defaults(path=path, timeout=TIMEOUT))
        out.update(verify_module_s=result["elapsed"], verify_module_rss_kib=result["maxrss_kib"],
                   verify_module_mibps=result["image_bytes"] / MIB / result["elapsed"])
        out["verify_adhoc_s"] = adhoc("criu_verify", {"path": path, "timeout": TIMEOUT})[0]
    finally:
        for workload in workloads.values():
            stop_workload(workload)
        shutil.rmtree(base, ignore_errors=True)
    return out
