# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where things are, and the import paths the runners need: the integration tests' helpers
(tests/integration: conftest.py, testhosts.py) and the collection (build/collections). Import this module
before ``conftest``, ``testhosts`` or ``ansible_collections``."""

from __future__ import annotations

import datetime
import os
import platform
import signal
import subprocess
import sys
import time
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TESTS = os.path.join(REPO, "tests", "integration")
COLLECTIONS = os.path.join(REPO, "build", "collections")
for _path in (COLLECTIONS, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

PYTHON = sys.executable
VENV_BIN = os.path.dirname(sys.executable)
ANSIBLE = os.path.join(VENV_BIN, "ansible")
PLAYBOOK = os.path.join(VENV_BIN, "ansible-playbook")
CRIU = "/usr/local/sbin/criu"
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
BENCH_ROOT = "/var/tmp/nucleus-bench"
PORT = int(os.environ.get("NUCLEUS_BENCH_PORT", "2288"))
FANOUT_PORT = int(os.environ.get("NUCLEUS_BENCH_FANOUT_PORT", "2301"))
DRAIN_PORT = int(os.environ.get("NUCLEUS_BENCH_DRAIN_PORT", "2922"))
MIB = 1024 * 1024
POSTCOPY_PIPE_SIZE = 4 * MIB

_T0 = time.monotonic()


def log(msg: str) -> None:
    print("bench: [%5.0fs] %s" % (time.monotonic() - _T0, msg), file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


def cores() -> int:
    return len(os.sched_getaffinity(0))


def kill_and_wait(pids: t.Iterable[int], timeout: float = 30) -> None:
    """SIGKILL (a PID-namespace init ignores SIGTERM) and wait until they are gone."""
    from conftest import alive  # pylint: disable=import-outside-toplevel
    pids = [p for p in pids if p > 1]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = [p for p in pids if alive(p)]
    if left:
        log("warning: pids %s still alive %ss after SIGKILL" % (left, timeout))


def run_checked(argv: t.Sequence[str], what: str, timeout: float = 900, **kwargs: t.Any) -> t.Tuple[float, subprocess.CompletedProcess]:
    """Run ``argv``; its wall time and the completed process, or BenchError with the end of its output."""
    started = time.monotonic()
    proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        fatal = [line for line in output.splitlines() if line.startswith(("fatal:", "failed:", "ERROR!"))]
        raise BenchError("%s failed (rc %d): %s" % (what, proc.returncode, "\n".join(fatal)[-3000:] or output.strip()[-2000:]))
    return elapsed, proc


def machine() -> t.Dict[str, t.Any]:
    def output(argv: t.Sequence[str]) -> str:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False).stdout.strip()
        except OSError:
            return ""
    with open("/proc/meminfo", encoding="ascii") as handle:
        mem_kib = int(handle.readline().split()[1])
    try:
        with open("/etc/debian_version", encoding="ascii") as handle:
            debian: t.Optional[str] = handle.read().strip()
    except OSError:
        debian = None
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), None)
    with open("/proc/loadavg", encoding="ascii") as handle:
        load = handle.read().split()[:3]
    with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as handle:
        pipe_max = int(handle.read())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cores_usable": cores(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "debian": debian,
        "cpu": cpu,
        "load_at_start": load,
        "pipe_max_size_at_start": pipe_max,
        "criu": output([CRIU, "--version"]).splitlines()[0:1],
        "ansible_core": output([ANSIBLE, "--version"]).splitlines()[0:1],
        "python": platform.python_version(),
        "checkpoint_fs": output(["findmnt", "-n", "-o", "FSTYPE", "-T", "/var/tmp"]),
        # What was measured: the collection is used from this working tree (build/collections links to it).
        "commit": output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
        "uncommitted_changes": output(["git", "-C", REPO, "status", "--short", "--", "plugins", "roles", "playbooks"]).splitlines(),
    }
