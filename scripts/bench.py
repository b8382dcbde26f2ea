# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nucleus.criu against raw CRIU, side by side in one run (issue 5). Run it through scripts/bench.sh.

For each workload size (touched random memory, demo/counter.py --mem N) and each of --runs runs:

  checkpoint  raw `criu dump` | criu_checkpoint in-process (the module_utils call, timed, with its peak RSS)
              | the whole ad-hoc task (`ansible localhost -m nucleus.criu.criu_checkpoint`)
  restore     raw `criu restore --restore-detached` | criu_restore in-process (verify + restore + health
              check) | the ad-hoc task
  verify      criu_verify in-process (MiB/s) | one thread of hashlib sha256 over the same files
  migration   the downtime (source frozen -> target running) of `ansible-playbook nucleus.criu.migrate`
              between two ssh hosts | a bare pipeline over the same hosts (ssh dump --leave-stopped,
              ssh rsync, ssh restore) | the same playbook with migrate_mode=postcopy (fs.pipe-max-size is
              raised to 4 MiB for the run, then put back)

then the wall time of one migrate run with 1, 2 and 4 workloads (list form, all from host-a; with --split
also 2 and 4 split over host-a and host-b as sources). Medians of the runs; every ratio is computed within one run,
then the median of those ratios is reported. Prints a table and writes a JSON file.

Everything it starts (workloads in their own PID namespace, restored copies, a private pair of ssh test
hosts on NUCLEUS_BENCH_PORT, default 2288) is killed or stopped before it exits, whatever happens.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)
PYTHON = sys.executable
ANSIBLE = os.path.join(VENV_BIN, "ansible")
PLAYBOOK = os.path.join(VENV_BIN, "ansible-playbook")
COUNTER = os.path.join(REPO, "demo", "counter.py")
COLLECTIONS = os.path.join(REPO, "build", "collections")
TESTHOSTS = os.path.join(REPO, "scripts", "testhosts.sh")
CRIU = "/usr/local/sbin/criu"
BENCH_ROOT = "/var/tmp/nucleus-bench"
PORT = int(os.environ.get("NUCLEUS_BENCH_PORT", "2288"))
HOSTS_DIR = os.path.join(REPO, "build", "testhosts-%d" % PORT)
INVENTORY = os.path.join(HOSTS_DIR, "inventory.ini")
KEY = os.path.join(HOSTS_DIR, "id_ed25519")
ADDRESS = {"a": "127.0.0.2", "b": "127.0.0.3"}
HOSTNAME = {"a": "host-a", "b": "host-b"}
REMOTE_BASE = "/var/lib/nucleus-criu"
MIGRATIONS = REMOTE_BASE + "/migrations"
MIB = 1024 * 1024
PIPE_MAX_SIZE = "/proc/sys/fs/pipe-max-size"
POSTCOPY_PIPE_SIZE = 4 * MIB
SSH_HOST_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "LogLevel=ERROR"]
ANSIBLE_ENV = dict(os.environ, ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
ANSIBLE_CP_DIR = [""]  # ansible's ssh ControlPersist sockets: private to this bench run (set in main)

# Run in a fresh interpreter: import the module's logic, time the one call, report the process's peak RSS.
# Phase timers wrap the functions the module calls (when they exist), to show where its time goes.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.nucleus.criu.plugins.module_utils import _binary, _checkpoint, _integrity, _procfs, _restore, _runtime, _store, _verify
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
phases = {}
def timed(owner, attr, label):
    fn = getattr(owner, attr, None)
    if fn is None:
        return
    def wrapper(*args, **kwargs):
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[label] = phases.get(label, 0.0) + time.monotonic() - t0
    setattr(owner, attr, wrapper)
for owner, attr, label in [
        (_binary, "discover", "criu discover"), (_binary, "probe_version", "criu --version"),
        (_runtime.CriuRuntime, "dump", "criu dump"), (_runtime.CriuRuntime, "restore", "criu restore"),
        (_procfs, "process_facts", "process facts"), (_checkpoint, "existing_checkpoint", "existing checkpoint"),
        (_integrity, "build_manifest", "manifest (hash)"), (_integrity, "check_images", "hash images (verify)"),
        (_integrity, "verify", "verify total"), (_store, "fsync_dir_entries", "fsync"), (_store, "publish", "publish"),
        (_restore, "_confirm_alive", "health check"), (_store, "make_staging", "staging dir")]:
    timed(owner, attr, label)
kind, params = sys.argv[2], json.loads(sys.argv[3])
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    if kind == "checkpoint":
        result = _checkpoint.checkpoint(params, False)
    elif kind == "restore":
        result = _restore.restore(params, False)
    else:
        result = _verify.verify(params)
except CriuError as exc:
    print(json.dumps({"error": exc.msg}))
    sys.exit(1)
elapsed = time.monotonic() - t0
print(json.dumps({"elapsed": elapsed, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "maxrss_before_call_kib": rss_before, "pid": result.get("pid"), "changed": result.get("changed"),
                  "stats": result.get("stats"), "phases": phases,
                  "image_bytes": sum(e["size"] for e in (result.get("checkpoint") or {}).get("manifest", []))}))
"""


_T0 = time.monotonic()


def log(msg: str) -> None:
    print("bench: [%5.0fs] %s" % (time.monotonic() - _T0, msg), file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --- processes -------------------------------------------------------------------------------------

def cmdline(pid: int) -> str:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def proc_state(pid: int) -> t.Optional[str]:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def pids_with(needle: str) -> t.List[int]:
    """Live pids (not this one) whose command line mentions ``needle``: a path unique to this bench run."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid() and needle in cmdline(int(name)) and alive(int(name)):
            found.append(int(name))
    return found


def ns_init(pid: int) -> bool:
    try:
        with open("/proc/%d/status" % pid) as handle:
            return any(line.startswith("NSpid:") and line.split()[-1] == "1" and len(line.split()) > 2 for line in handle)
    except OSError:
        return False


def wait_for(predicate: t.Callable[[], t.Any], timeout: float, what: str) -> t.Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, ValueError, IndexError):  # e.g. a state line caught mid-write
            value = None
        if value:
            return value
        time.sleep(0.02)
    raise BenchError("timed out after %ss waiting for %s" % (timeout, what))


def kill_pids(pids: t.Iterable[int]) -> None:
    """SIGKILL (a PID-namespace init ignores SIGTERM) and wait until they are gone."""
    pids = list(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            wait_for(lambda pid=pid: not alive(pid), 30, "pid %d to exit" % pid)
        except BenchError as exc:
            log("warning: %s" % exc)


def read_count(state_file: str) -> int:
    with open(state_file) as handle:
        return int(handle.read().split()[1])


def start_timeout(mib: int) -> float:
    return 60 + mib / 10.0  # os.urandom of the ballast: ~0.3 s/GiB..10 s/GiB here


class Local:
    """A counter holding MIB of touched random memory, in its own PID namespace on this machine."""

    def __init__(self, state_file: str, mib: int) -> None:
        self.state_file = state_file
        argv = ["unshare", "--pid", "--fork", "setsid", PYTHON, COUNTER, state_file, "--mem", str(mib)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.pid = wait_for(lambda: next((p for p in pids_with(state_file) if ns_init(p)), None), 30,
                            "the namespace init of %s" % state_file)
        self.mib = mib

    def ready(self) -> None:
        wait_for(lambda: read_count(self.state_file) >= 2, start_timeout(self.mib), "%s to count" % self.state_file)

    def stop(self) -> None:
        kill_pids(pids_with(self.state_file))
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# --- ssh test hosts ----------------------------------------------------------------------------------

class Hosts:
    """The private pair of ssh test hosts (scripts/testhosts.sh on PORT); one shared ssh master per host."""

    def __init__(self, run_dir: str) -> None:
        self.control = os.path.join(run_dir, "cm-%C")
        self.started = False

    def up(self) -> None:
        # The hosts run the modules with this venv's Python, which has blake3: migrate_hash_algorithm=auto uses it.
        env = dict(os.environ, NUCLEUS_TESTHOSTS_PORT=str(PORT), NUCLEUS_TESTHOSTS_PYTHON=sys.executable)
        self.started = True
        subprocess.run(["bash", TESTHOSTS, "up"], env=env, check=True, stdout=subprocess.DEVNULL)

    def down(self) -> None:
        # Close every ssh master first (ours and ansible's, which live in our run dir): an open session would
        # keep the old host's mount namespace alive, and a later run would talk to that stale host.
        sockets = [self.argv(name, None, ["-O", "exit"]) for name in ADDRESS]
        if os.path.isdir(ANSIBLE_CP_DIR[0]):
            sockets += [["ssh", "-o", "ControlPath=%s" % os.path.join(ANSIBLE_CP_DIR[0], s), "-O", "exit", "x"]
                        for s in os.listdir(ANSIBLE_CP_DIR[0])]
        for argv in sockets:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=30)
        if self.started:
            env = dict(os.environ, NUCLEUS_TESTHOSTS_PORT=str(PORT))
            subprocess.run(["bash", TESTHOSTS, "down"], env=env, check=False)

    def argv(self, name: str, command: t.Optional[str], extra: t.Sequence[str] = ()) -> t.List[str]:
        argv = ["ssh", "-p", str(PORT), "-i", KEY] + SSH_HOST_OPTS + [
            "-o", "ControlMaster=auto", "-o", "ControlPath=%s" % self.control, "-o", "ControlPersist=300"]
        argv += list(extra) + ["root@%s" % ADDRESS[name]]
        return argv + ([command] if command is not None else [])

    def run(self, name: str, command: str, check: bool = True, timeout: float = 600, retry: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command on host NAME; an ssh failure (rc 255) is retried unless the call is timed (retry=False)."""
        for attempt in range(3 if retry else 1):
            proc = subprocess.run(self.argv(name, command), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            if proc.returncode != 255:
                break
            log("ssh to host-%s failed (rc 255, attempt %d): %s" % (name, attempt + 1, proc.stderr.strip()[-300:]))
            time.sleep(1)
        if check and proc.returncode != 0:
            raise BenchError("on host-%s, `%s` failed (rc %d): %s" % (name, command, proc.returncode,
                                                                      (proc.stdout + proc.stderr).strip()[-1000:]))
        return proc


class Remote:
    """A counter started on a test host over ssh, in its own PID namespace (as tests/integration/test_migration.py)."""

    def __init__(self, hosts: Hosts, host: str, name: str, state_dir: str, mib: int) -> None:
        self.name = name
        self.host = host
        self.state_file = os.path.join(state_dir, name + ".state")
        self.mib = mib
        program = "%s %s %s --mem %d" % (PYTHON, COUNTER, self.state_file, mib)
        hosts.run(host, "setsid unshare --pid --fork setsid %s </dev/null >/dev/null 2>&1 &" % program, retry=False)
        self.pid = wait_for(lambda: next((p for p in pids_with(self.state_file) if ns_init(p)), None), 30,
                            "workload %s to start" % name)

    def ready(self) -> None:
        wait_for(lambda: read_count(self.state_file) > 5, start_timeout(self.mib), "workload %s to count" % self.name)

    def copies(self) -> t.List[int]:
        """Running copies of the workload (namespace inits: the original and any restored one)."""
        return [p for p in pids_with(self.state_file) if ns_init(p)]

    def stop(self) -> None:
        kill_pids(pids_with(self.state_file))


# --- measurements --------------------------------------------------------------------------------------

def timed_run(argv: t.Sequence[str], what: str, timeout: float = 900, **kwargs: t.Any) -> t.Tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          check=False, **kwargs)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        fatal = [line for line in output.splitlines() if line.startswith(("fatal:", "failed:", "ERROR!"))]
        raise BenchError("%s failed (rc %d): %s" % (what, proc.returncode, "\n".join(fatal)[-3000:] or output.strip()[-2000:]))
    return elapsed, proc


PREFAULT = "import mmap, sys\nsize = int(sys.argv[1])\nwith mmap.mmap(-1, size) as area:\n    for offset in range(0, size, 4096):\n        area[offset] = 1\n"


def prefault(mib: int) -> None:
    """Touch and free 1.25x MIB of memory just before a timed step. On this VM (virtio-balloon free page
    reporting) memory freed a few seconds ago is handed back to the host, and touching it again costs a host
    page fault per page (2 GiB: 4.5 s cold, 2.1 s warm): whichever step happened to find warm pages won.
    Every step now starts on memory freed a moment ago. A child process does it, so that no measured
    process inherits its peak RSS (ru_maxrss survives fork and exec)."""
    subprocess.run([PYTHON, "-c", PREFAULT, str((mib * 5 // 4 + 1) * MIB)], check=True, timeout=300)


def raw_dump(pid: int, directory: str) -> float:
    images = os.path.join(directory, "images")
    os.makedirs(images, mode=0o700)
    argv = [CRIU, "dump", "--tree", str(pid), "--images-dir", images, "--work-dir", directory,
            "--log-file", "dump.log", "-v4", "--network-lock", "nftables"]
    elapsed = timed_run(argv, "raw criu dump of %d (log %s/dump.log)" % (pid, directory))[0]
    if not os.path.isfile(os.path.join(images, "inventory.img")):
        raise BenchError("raw criu dump wrote no inventory.img in %s" % images)
    return elapsed


def raw_restore(directory: str) -> t.Tuple[float, int]:
    pidfile = os.path.join(directory, "restored.pid")
    argv = [CRIU, "restore", "--images-dir", os.path.join(directory, "images"), "--work-dir", directory,
            "--log-file", "restore.log", "-v4", "--restore-detached", "--pidfile", pidfile]
    elapsed = timed_run(argv, "raw criu restore of %s (log %s/restore.log)" % (directory, directory))[0]
    with open(pidfile) as handle:
        return elapsed, int(handle.read().strip())


def in_process(kind: str, params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The module's logic in a fresh interpreter: elapsed time of the call and the process's peak RSS."""
    proc = subprocess.run([PYTHON, "-c", CHILD, COLLECTIONS, kind, json.dumps(dict(params))], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900, check=False)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError("in-process %s gave no result (rc %d): %s" % (kind, proc.returncode, proc.stderr[-2000:]))
    if proc.returncode != 0 or "error" in result:
        raise BenchError("in-process %s failed: %s" % (kind, result.get("error") or proc.stderr[-2000:]))
    return result


def adhoc(module: str, args: t.Mapping[str, t.Any]) -> t.Tuple[float, t.Dict[str, t.Any]]:
    """`ansible localhost -m nucleus.criu.MODULE -a JSON`: wall time and the task result."""
    argv = [ANSIBLE, "localhost", "-m", "nucleus.criu.%s" % module, "-a", json.dumps(dict(args))]
    elapsed, proc = timed_run(argv, "ansible localhost -m nucleus.criu.%s" % module, cwd=REPO, env=ANSIBLE_ENV)
    match = re.search(r"^localhost \| ([A-Z]+)!? => ", proc.stdout, re.MULTILINE)
    if not match or match.group(1) == "FAILED":
        raise BenchError("ad-hoc %s failed: %s" % (module, proc.stdout[-2000:]))
    return elapsed, json.loads(proc.stdout[match.end():])


HASH_ALGORITHM = ["auto"]  # criu_checkpoint's hash_algorithm for every module run (set in main)


def checkpoint_params(pid: int, dest: str) -> t.Dict[str, t.Any]:
    return {"pid": pid, "pidfile": None, "dest": dest, "name": None, "leave_running": False, "leave_stopped": False,
            "tcp_established": False, "ext_unix_sk": False, "file_locks": False, "shell_job": None,
            "network_lock": "nftables", "force": False, "criu_path": None, "timeout": 600, "hmac_key": None,
            "hmac_key_file": None, "hash_algorithm": HASH_ALGORITHM[0], "lazy_pages": False, "page_server_port": 0}


def restore_params(src: str) -> t.Dict[str, t.Any]:
    return {"src": src, "verify": True, "require_signature": False, "pidfile": None, "force": False,
            "criu_path": None, "timeout": 600, "hmac_key": None, "hmac_key_file": None, "lazy_pages_port": None}


def verify_params(path: str) -> t.Dict[str, t.Any]:
    return {"path": path, "require_signature": False, "check_host": False, "criu_path": None, "hmac_key": None,
            "hmac_key_file": None}


def sha256_ceiling(images: str) -> t.Tuple[float, int]:
    """One thread of hashlib sha256 over every image file, 1 MiB blocks: (seconds, bytes)."""
    buf = bytearray(MIB)
    view = memoryview(buf)
    total = 0
    started = time.monotonic()
    for name in sorted(os.listdir(images)):
        digest = hashlib.sha256()
        with open(os.path.join(images, name), "rb", buffering=0) as handle:
            while True:
                count = handle.readinto(buf)
                if not count:
                    break
                digest.update(view[:count])
                total += count
        digest.hexdigest()
    return time.monotonic() - started, total


def rotate(items: t.Sequence[str], index: int) -> t.List[str]:
    shift = index % len(items)
    return list(items[shift:]) + list(items[:shift])


def local_run(run_dir: str, mib: int, index: int) -> t.Dict[str, t.Any]:
    """One run of checkpoint, restore and verify at MIB: raw, in-process module and ad-hoc task side by side."""
    base = os.path.join(run_dir, "local-%d-r%d" % (mib, index))
    ckpt = os.path.join(base, "ck")
    os.makedirs(ckpt, mode=0o700)
    variants = ("raw", "module", "adhoc")
    workloads = {v: Local(os.path.join(run_dir, "state", "local-%d-r%d-%s" % (mib, index, v)), mib) for v in variants}
    out: t.Dict[str, t.Any] = {"size_mib": mib, "run": index}
    restored: t.List[int] = []
    try:
        for workload in workloads.values():
            workload.ready()
        os.sync()
        # Checkpoint: the three side by side, in an order that rotates from run to run.
        for variant in rotate(variants, index):
            dest = os.path.join(ckpt, variant)
            pid = workloads[variant].pid
            prefault(mib)
            if variant == "raw":
                out["dump_raw_s"] = raw_dump(pid, dest)
            elif variant == "module":
                result = in_process("checkpoint", checkpoint_params(pid, dest))
                out["checkpoint_module_s"] = result["elapsed"]
                out["checkpoint_module_rss_kib"] = result["maxrss_kib"]
                out["checkpoint_module_criu_dump_s"] = (result.get("stats") or {}).get("dump_seconds")
                out["checkpoint_module_phases"] = result["phases"]
                out["image_bytes"] = result["image_bytes"]
            else:
                out["checkpoint_adhoc_s"] = adhoc("criu_checkpoint", {"pid": pid, "dest": dest, "hash_algorithm": HASH_ALGORITHM[0]})[0]
            workloads[variant].proc.wait(timeout=30)
            os.sync()  # untimed: no step pays for the previous step's write-back
        # Restore, same rotation; each variant restores its own checkpoint, then the copy is killed.
        for variant in rotate(variants, index):
            src = os.path.join(ckpt, variant)
            prefault(mib)
            if variant == "raw":
                out["restore_raw_s"], pid = raw_restore(src)
            elif variant == "module":
                result = in_process("restore", restore_params(src))
                out["restore_module_s"] = result["elapsed"]
                out["restore_module_rss_kib"] = result["maxrss_kib"]
                out["restore_module_criu_restore_s"] = (result.get("stats") or {}).get("restore_seconds")
                out["restore_module_phases"] = result["phases"]
                pid = result["pid"]
            else:
                out["restore_adhoc_s"], task = adhoc("criu_restore", {"src": src})
                pid = task["pid"]
            restored.append(pid)
            if not alive(pid):
                raise BenchError("the %s restore of %s reported pid %d, which is not running" % (variant, src, pid))
            kill_pids([pid])
        # Verify: one thread of sha256 vs the module, on the module's checkpoint (warm cache for both).
        images = os.path.join(ckpt, "module", "images")
        seconds, total = sha256_ceiling(images)
        out["sha256_1thread_mibps"] = total / MIB / seconds
        result = in_process("verify", verify_params(os.path.join(ckpt, "module")))
        out["verify_module_s"] = result["elapsed"]
        out["verify_module_mibps"] = result["image_bytes"] / MIB / result["elapsed"]
        out["verify_module_rss_kib"] = result["maxrss_kib"]
        out["verify_adhoc_s"] = adhoc("criu_verify", {"path": os.path.join(ckpt, "module")})[0]
    finally:
        kill_pids([p for p in restored if alive(p)])
        for workload in workloads.values():
            workload.stop()
        shutil.rmtree(base, ignore_errors=True)
    return out


def profile(stdout: str, name: str) -> t.Dict[str, float]:
    """The profile_tasks recap of a playbook run, task name -> seconds (the workload name stripped)."""
    tasks: t.Dict[str, float] = {}
    recap = stdout.split("TASKS RECAP", 1)[-1]
    for line in recap.splitlines():
        match = re.match(r"^(.*?) -{2,} *(\d+\.\d+)s$", line.strip())
        if match:
            label = match.group(1).replace(" | %s" % name, "").replace("nucleus.criu.migrate : ", "").strip()
            tasks[label] = tasks.get(label, 0.0) + float(match.group(2))
    return tasks


def playbook(extra: t.Mapping[str, t.Any], what: str) -> t.Tuple[float, str]:
    env = dict(ANSIBLE_ENV, ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks",
               PROFILE_TASKS_TASK_OUTPUT_LIMIT="200")
    argv = [PLAYBOOK, "-i", INVENTORY, "nucleus.criu.migrate", "-e", json.dumps(dict(extra))]
    elapsed, proc = timed_run(argv, what, cwd=REPO, env=env)
    return elapsed, proc.stdout


def read_record(hosts: Hosts, host: str, name: str) -> t.Dict[str, t.Any]:
    path = "%s/%s.migration.json" % (MIGRATIONS, name)
    record = json.loads(hosts.run(host, "cat %s" % path).stdout)
    hosts.run(host, "rm -f %s" % path)
    return record


def role_migration(hosts: Hosts, workload: Remote, mode: str) -> t.Tuple[float, str, t.Dict[str, t.Any]]:
    """One-item list-form run of the migrate role host-a -> host-b in ``mode``: wall time, output, its record."""
    item = {"name": workload.name, "source": "host-a", "target": "host-b", "pid": workload.pid}
    elapsed, stdout = playbook({"migrate_workloads": [item], "migrate_mode": mode},
                               "ansible-playbook nucleus.criu.migrate %s (%s)" % (mode, workload.name))
    record = read_record(hosts, "a", workload.name)
    if alive(workload.pid) or not workload.copies():
        raise BenchError("after the %s migration, %s is not running on host-b alone" % (mode, workload.name))
    return elapsed, stdout, record


def migration_run(hosts: Hosts, run_dir: str, mib: int, index: int) -> t.Dict[str, t.Any]:
    """The migrate role's downtime vs a bare dump/rsync/restore pipeline over the same two ssh hosts."""
    state_dir = os.path.join(run_dir, "state")
    bare_name, role_name, lazy_name = "bare-%d-r%d" % (mib, index), "role-%d-r%d" % (mib, index), "postcopy-%d-r%d" % (mib, index)
    workloads = {"bare": Remote(hosts, "a", bare_name, state_dir, mib), "role": Remote(hosts, "a", role_name, state_dir, mib),
                 "postcopy": Remote(hosts, "a", lazy_name, state_dir, mib)}
    bare_dir = "%s/bench-bare/%s" % (REMOTE_BASE, bare_name)
    out: t.Dict[str, t.Any] = {"size_mib": mib, "run": index}
    try:
        for workload in workloads.values():
            workload.ready()
        order = rotate(("bare", "role", "postcopy"), index)
        for variant in order:
            workload = workloads[variant]
            if variant == "bare":
                out.update(bare_pipeline(hosts, workload, bare_dir))
            elif variant == "role":
                # The list form with one item: the same run also serves as "1 migration" of the parallel table.
                elapsed, stdout, record = role_migration(hosts, workload, "copy")
                out["role_downtime_s"] = float(record["downtime_seconds"])
                out["role_playbook_s"] = elapsed
                out["role_tasks"] = profile(stdout, role_name)
            else:
                elapsed, _stdout, record = role_migration(hosts, workload, "postcopy")
                out["postcopy_downtime_s"] = float(record["downtime_seconds"])
                out["postcopy_transfer_s"] = float(record["postcopy_transfer_seconds"])
                out["postcopy_playbook_s"] = elapsed
            workload.stop()
    finally:
        for workload in workloads.values():
            workload.stop()
        for name in (role_name, lazy_name):
            hosts.run("a", "rm -rf %s %s/%s %s/%s.migration.json" % (bare_dir, MIGRATIONS, name, MIGRATIONS, name), check=False)
            hosts.run("b", "rm -rf %s %s/%s" % (bare_dir, MIGRATIONS, name), check=False)
    return out


def bare_pipeline(hosts: Hosts, workload: Remote, directory: str) -> t.Dict[str, float]:
    """ssh A criu dump --leave-stopped; ssh A rsync to B; ssh B criu restore -d. Downtime: before the dump -> restore returned."""
    q = shlex.quote
    hosts.run("a", "mkdir -p -m 0700 %s/images" % q(directory))
    hosts.run("b", "mkdir -p -m 0700 %s" % q(os.path.dirname(directory)))
    rsh = "ssh -p %d -i %s %s" % (PORT, KEY, " ".join(SSH_HOST_OPTS))
    dump = "%s dump --tree %d --images-dir %s/images --work-dir %s --log-file dump.log -v4 --network-lock nftables --leave-stopped" % (
        CRIU, workload.pid, q(directory), q(directory))
    rsync = "rsync -a --rsh %s %s/ root@%s:%s/" % (q(rsh), q(directory), ADDRESS["b"], q(directory))
    restore = "%s restore --images-dir %s/images --work-dir %s --log-file restore.log -v4 --restore-detached --pidfile %s/restored.pid" % (
        CRIU, q(directory), q(directory), q(directory))
    t0 = time.monotonic()
    hosts.run("a", dump, retry=False)
    t1 = time.monotonic()
    hosts.run("a", rsync, retry=False)
    t2 = time.monotonic()
    hosts.run("b", restore, retry=False)
    t3 = time.monotonic()
    new_pid = int(hosts.run("b", "cat %s/restored.pid" % q(directory)).stdout)
    if not alive(new_pid) or proc_state(workload.pid) != "T":
        raise BenchError("bare pipeline: restored pid %d running: %s; source state %s"
                         % (new_pid, alive(new_pid), proc_state(workload.pid)))
    kill_pids([workload.pid])  # commit: the frozen source goes
    return {"bare_downtime_s": t3 - t0, "bare_dump_s": t1 - t0, "bare_rsync_s": t2 - t1, "bare_restore_s": t3 - t2}


def parallel_run(hosts: Hosts, run_dir: str, count: int, mib: int, index: int, split: bool) -> t.Dict[str, t.Any]:
    """Wall time of one migrate run with COUNT workloads (list form); split: half of them go host-b -> host-a."""
    state_dir = os.path.join(run_dir, "state")
    kind = "split" if split else "list"
    workloads = []
    for i in range(count):
        source = "b" if split and i % 2 else "a"
        workloads.append(Remote(hosts, source, "par-%s%d-%d-r%d" % (kind, count, i, index), state_dir, mib))
    out: t.Dict[str, t.Any] = {"count": count, "size_mib": mib, "run": index, "split": split}
    try:
        for workload in workloads:
            workload.ready()
        items = [{"name": w.name, "source": HOSTNAME[w.host], "target": HOSTNAME["b" if w.host == "a" else "a"],
                  "pid": w.pid} for w in workloads]
        out["wall_s"] = playbook({"migrate_workloads": items}, "ansible-playbook nucleus.criu.migrate (%d %s)" % (count, kind))[0]
        out["downtimes_s"] = [float(read_record(hosts, w.host, w.name)["downtime_seconds"]) for w in workloads]
    finally:
        for workload in workloads:
            workload.stop()
            other = "b" if workload.host == "a" else "a"
            hosts.run(workload.host, "rm -rf %s/%s %s/%s.migration.json" % (MIGRATIONS, workload.name, MIGRATIONS, workload.name), check=False)
            hosts.run(other, "rm -rf %s/%s" % (MIGRATIONS, workload.name), check=False)
    return out


# --- summary ---------------------------------------------------------------------------------------------

def median(values: t.Iterable[t.Optional[float]]) -> t.Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


RATIOS = {
    "checkpoint_module_vs_raw": lambda r: r["checkpoint_module_s"] / r["dump_raw_s"],
    "checkpoint_adhoc_vs_raw": lambda r: r["checkpoint_adhoc_s"] / r["dump_raw_s"],
    "restore_module_vs_raw": lambda r: r["restore_module_s"] / r["restore_raw_s"],
    "restore_adhoc_vs_raw": lambda r: r["restore_adhoc_s"] / r["restore_raw_s"],
    "verify_vs_sha256_1thread": lambda r: r["verify_module_mibps"] / r["sha256_1thread_mibps"],
    "downtime_role_vs_bare": lambda r: r["role_downtime_s"] / r["bare_downtime_s"],
    "downtime_role_minus_bare_s": lambda r: r["role_downtime_s"] - r["bare_downtime_s"],
    "downtime_postcopy_vs_bare": lambda r: r["postcopy_downtime_s"] / r["bare_downtime_s"],
}


def _ratio_or_none(ratio: t.Callable[[t.Dict[str, t.Any]], float], run: t.Dict[str, t.Any]) -> t.Optional[float]:
    """A ratio of this run, or None when a run skipped one side of it (--local-only)."""
    try:
        return ratio(run)
    except KeyError:
        return None


def summarise(runs: t.List[t.Dict[str, t.Any]]) -> t.Dict[str, t.Any]:
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)} - {"run", "size_mib"})
    summary = {"median": {k: median(r.get(k) for r in runs) for k in keys}, "ratios": {}}
    for name, ratio in RATIOS.items():
        summary["ratios"][name] = median(_ratio_or_none(ratio, r) for r in runs)
    for field in ("checkpoint_module_phases", "restore_module_phases", "role_tasks"):
        labels = sorted({label for r in runs for label in r.get(field, {})})
        summary["median"][field] = {label: median(r.get(field, {}).get(label) for r in runs) for label in labels}
    return summary


def targets(results: t.Dict[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """Issue 5's targets, judged on this run's ratios."""
    sizes = results["sizes"]
    big = str(max(int(s) for s in sizes))
    found = []

    def add(name: str, measured: t.Optional[float], limit: float, unit: str = "x") -> None:
        found.append({"target": name, "measured": measured, "limit": limit, "unit": unit,
                      "met": measured is not None and measured <= limit})

    ratios = sizes[big]["ratios"]
    add("criu_checkpoint <= 1.25x raw dump at %s MiB" % big, ratios["checkpoint_module_vs_raw"], 1.25)
    add("criu_restore <= 1.3x raw restore at %s MiB" % big, ratios["restore_module_vs_raw"], 1.3)
    for size, data in sizes.items():
        add("migration downtime <= bare + 1.0 s at %s MiB" % size, data["ratios"]["downtime_role_minus_bare_s"], 1.0, "s")
    add("migration downtime <= 1.5x bare at %s MiB" % big, ratios["downtime_role_vs_bare"], 1.5)
    par = results["parallel"].get("list", {})
    if "4" in par and "1" in par:
        add("4 parallel migrations <= 1.5x one (list form, one source)", par["ratio_4_vs_1"], 1.5)
    split = results["parallel"].get("split", {})
    if "4" in split:
        add("4 parallel migrations <= 1.5x one (split over two sources)", split["ratio_4_vs_1"], 1.5)
    rss = max(filter(None, [sizes[big]["median"].get("checkpoint_module_rss_kib"), sizes[big]["median"].get("verify_module_rss_kib"),
                            sizes[big]["median"].get("restore_module_rss_kib")]), default=None)
    add("module peak RSS < 100 MiB (checkpoint, verify, restore at %s MiB)" % big, rss / 1024 if rss else None, 100, "MiB")
    return found


def fmt(value: t.Optional[float], spec: str = "%.3f") -> str:
    return "-" if value is None else spec % value


def table(results: t.Dict[str, t.Any]) -> str:
    lines = []
    sizes = results["sizes"]
    cols = list(sizes)
    head = "| %-44s | " % "median of %d run(s)" % results["config"]["runs"] + " | ".join("%10s" % ("%s MiB" % c) for c in cols) + " |"
    lines += [head, "|" + "-" * 46 + "|" + "|".join("-" * 12 for col in cols) + "|"]
    rows = [
        ("image size (MiB)", lambda s: fmt((s["median"].get("image_bytes") or 0) / MIB, "%.1f")),
        ("raw criu dump (s)", lambda s: fmt(s["median"].get("dump_raw_s"))),
        ("criu_checkpoint, module (s)", lambda s: fmt(s["median"].get("checkpoint_module_s"))),
        ("criu_checkpoint, ad-hoc task (s)", lambda s: fmt(s["median"].get("checkpoint_adhoc_s"))),
        ("  ratio module / raw dump", lambda s: fmt(s["ratios"]["checkpoint_module_vs_raw"], "%.2fx")),
        ("  ratio ad-hoc / raw dump", lambda s: fmt(s["ratios"]["checkpoint_adhoc_vs_raw"], "%.2fx")),
        ("raw criu restore (s)", lambda s: fmt(s["median"].get("restore_raw_s"))),
        ("criu_restore, module (s)", lambda s: fmt(s["median"].get("restore_module_s"))),
        ("criu_restore, ad-hoc task (s)", lambda s: fmt(s["median"].get("restore_adhoc_s"))),
        ("  ratio module / raw restore", lambda s: fmt(s["ratios"]["restore_module_vs_raw"], "%.2fx")),
        ("  ratio ad-hoc / raw restore", lambda s: fmt(s["ratios"]["restore_adhoc_vs_raw"], "%.2fx")),
        ("criu_verify, module (MiB/s)", lambda s: fmt(s["median"].get("verify_module_mibps"), "%.0f")),
        ("sha256, one thread (MiB/s)", lambda s: fmt(s["median"].get("sha256_1thread_mibps"), "%.0f")),
        ("  ratio verify / sha256 ceiling", lambda s: fmt(s["ratios"]["verify_vs_sha256_1thread"], "%.2fx")),
        ("criu_verify, ad-hoc task (s)", lambda s: fmt(s["median"].get("verify_adhoc_s"))),
        ("migration downtime, bare pipeline (s)", lambda s: fmt(s["median"].get("bare_downtime_s"))),
        ("  bare: dump / rsync / restore (s)", lambda s: "/".join(fmt(s["median"].get(k), "%.2f") for k in ("bare_dump_s", "bare_rsync_s", "bare_restore_s"))),
        ("migration downtime, migrate role (s)", lambda s: fmt(s["median"].get("role_downtime_s"))),
        ("  ratio role / bare", lambda s: fmt(s["ratios"]["downtime_role_vs_bare"], "%.2fx")),
        ("  role - bare (s)", lambda s: fmt(s["ratios"]["downtime_role_minus_bare_s"], "%+.2f")),
        ("migrate playbook wall time (s)", lambda s: fmt(s["median"].get("role_playbook_s"), "%.1f")),
        ("migration downtime, postcopy role (s)", lambda s: fmt(s["median"].get("postcopy_downtime_s"))),
        ("  ratio postcopy / bare", lambda s: fmt(s["ratios"]["downtime_postcopy_vs_bare"], "%.2fx")),
        ("  pages fetched after the restore (s)", lambda s: fmt(s["median"].get("postcopy_transfer_s"))),
        ("postcopy playbook wall time (s)", lambda s: fmt(s["median"].get("postcopy_playbook_s"), "%.1f")),
        ("peak RSS checkpoint module (MiB)", lambda s: fmt((s["median"].get("checkpoint_module_rss_kib") or 0) / 1024, "%.1f")),
        ("peak RSS verify module (MiB)", lambda s: fmt((s["median"].get("verify_module_rss_kib") or 0) / 1024, "%.1f")),
        ("peak RSS restore module (MiB)", lambda s: fmt((s["median"].get("restore_module_rss_kib") or 0) / 1024, "%.1f")),
    ]
    for label, cell in rows:
        lines.append("| %-44s | " % label + " | ".join("%10s" % cell(sizes[c]) for c in cols) + " |")
    par = results["parallel"]
    title = "parallel migrations, %d MiB each (wall s)" % results["config"]["parallel_mib"]
    lines += ["", "| %-44s | %10s | %10s | %10s | %10s |" % (title, "1", "2", "4", "4 / 1"),
              "|" + "-" * 46 + "|" + "|".join(["-" * 12] * 4) + "|"]
    for kind, label in (("list", "list form, all host-a -> host-b"), ("split", "split: a -> b and b -> a")):
        if kind not in par:
            continue
        data = par[kind]
        cells = [fmt(data.get(str(n), {}).get("median_wall_s"), "%.1f") for n in (1, 2, 4)]
        lines.append("| %-44s | %10s | %10s | %10s | %10s |" % (label, cells[0], cells[1], cells[2], fmt(data.get("ratio_4_vs_1"), "%.2fx")))
    lines += ["", "targets (issue 5):"]
    for target in results["targets"]:
        unit = target["unit"]
        lines.append("  [%s] %-66s measured %s" % ("met" if target["met"] else "NOT met", target["target"],
                                                   fmt(target["measured"], "%.2f" + ("" if unit == "x" else " ") + unit)))
    return "\n".join(lines)


def machine() -> t.Dict[str, t.Any]:
    def output(argv: t.Sequence[str]) -> str:
        try:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False).stdout.strip()
        except OSError:
            return ""
    with open("/proc/meminfo") as handle:
        mem_kib = int(handle.readline().split()[1])
    try:
        with open("/etc/debian_version") as handle:
            debian = handle.read().strip()
    except OSError:
        debian = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "debian": debian,
        "criu": output([CRIU, "--version"]).splitlines()[0:1],
        "ansible_core": output([ANSIBLE, "--version"]).splitlines()[0:1],
        "python": platform.python_version(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), None),
        "checkpoint_fs": output(["findmnt", "-n", "-o", "FSTYPE", "-T", BENCH_ROOT]),
        # What was measured: the collection is used from this working tree (build/collections links to it).
        "commit": output(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]),
        "uncommitted_changes": output(["git", "-C", REPO, "status", "--short", "--", "plugins", "roles", "playbooks"]).splitlines(),
    }


def save(results: t.Dict[str, t.Any], path: str) -> None:
    """Write the results so far (complete: false until the end), so a failure late in a long run loses nothing."""
    results.setdefault("complete", False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(path + ".tmp", path)


# --- main --------------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,256,1024", help="workload sizes in MiB, comma separated (default 16,256,1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported (default 3)")
    parser.add_argument("--json", default=os.path.join(REPO, "build", "bench", "results.json"), help="where to write the results")
    parser.add_argument("--parallel-mib", type=int, help="size of each workload in the parallel runs (default: the smallest size)")
    parser.add_argument("--hash-algorithm", default="auto", choices=["auto", "sha256", "blake3"],
                        help="criu_checkpoint's hash_algorithm in the module rows (default auto: blake3 when installed)")
    parser.add_argument("--local-only", action="store_true", help="only the module rows: no ssh hosts, no migrations")
    parser.add_argument("--split", action="store_true",
                        help="also time 2 and 4 parallel migrations split over both hosts as sources (a -> b and b -> a)")
    args = parser.parse_args()
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes integers in MiB, e.g. 16,256,1024")
    if not args.sizes or min(args.sizes) <= 0 or args.runs < 1:
        parser.error("--sizes must be positive and --runs at least 1")
    if args.parallel_mib is None:
        args.parallel_mib = min(args.sizes)
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run me as root (criu dump and restore need it): bash scripts/bench.sh")
    for path in (CRIU, ANSIBLE, PLAYBOOK, os.path.join(COLLECTIONS, "ansible_collections", "nucleus", "criu")):
        if not os.path.exists(path):
            sys.exit("bench: %s is missing: run bash scripts/setup.sh (bash scripts/bench.sh does)" % path)

    def terminate(signum: int, _frame: t.Any) -> None:
        raise SystemExit("bench: stopped by signal %d" % signum)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    os.makedirs(BENCH_ROOT, mode=0o700, exist_ok=True)
    os.chmod(BENCH_ROOT, 0o700)
    run_dir = tempfile.mkdtemp(prefix="r", dir=BENCH_ROOT)
    os.makedirs(os.path.join(run_dir, "state"), mode=0o700)
    hosts = Hosts(run_dir)
    ANSIBLE_CP_DIR[0] = os.path.join(run_dir, "cp")
    os.makedirs(ANSIBLE_CP_DIR[0], mode=0o700)
    ANSIBLE_ENV["ANSIBLE_SSH_CONTROL_PATH_DIR"] = ANSIBLE_CP_DIR[0]
    HASH_ALGORITHM[0] = args.hash_algorithm
    with open(PIPE_MAX_SIZE) as handle:
        pipe_max_size = handle.read().strip()
    started = time.monotonic()
    config = {"sizes": args.sizes, "runs": args.runs, "parallel_mib": args.parallel_mib, "port": PORT,
              "hash_algorithm": args.hash_algorithm, "local_only": args.local_only}
    results: t.Dict[str, t.Any] = {"machine": machine(), "config": config, "sizes": {}, "parallel": {}}
    try:
        if not args.local_only:
            log("ssh test hosts on port %d; fs.pipe-max-size %d for post-copy" % (PORT, POSTCOPY_PIPE_SIZE))
            with open(PIPE_MAX_SIZE, "w") as handle:
                handle.write(str(POSTCOPY_PIPE_SIZE))
            hosts.up()
        for mib in args.sizes:
            runs = []
            for index in range(args.runs):
                log("%d MiB, run %d/%d: checkpoint / restore / verify" % (mib, index + 1, args.runs))
                run = local_run(run_dir, mib, index)
                if not args.local_only:
                    log("%d MiB, run %d/%d: migration" % (mib, index + 1, args.runs))
                    run.update(migration_run(hosts, run_dir, mib, index))
                runs.append(run)
            results["sizes"][str(mib)] = dict(summarise(runs), runs=runs)
            save(results, args.json)
        for split in (False, True):
            if args.local_only or (split and not args.split):
                continue
            kind = "split" if split else "list"
            data: t.Dict[str, t.Any] = {}
            for count in ((2, 4) if split else (1, 2, 4)):
                runs = []
                if count == 1 and str(args.parallel_mib) in results["sizes"]:
                    # Already measured: the migration runs at this size were one-item list-form playbooks.
                    runs = [{"count": 1, "size_mib": args.parallel_mib, "run": r["run"], "split": False, "wall_s": r["role_playbook_s"],
                             "downtimes_s": [r["role_downtime_s"]], "from": "the migration run at this size"}
                            for r in results["sizes"][str(args.parallel_mib)]["runs"]]
                for index in range(args.runs if not runs else 0):
                    log("parallel (%s): %d x %d MiB, run %d/%d" % (kind, count, args.parallel_mib, index + 1, args.runs))
                    runs.append(parallel_run(hosts, run_dir, count, args.parallel_mib, index, split))
                data[str(count)] = {"runs": runs, "median_wall_s": median(r["wall_s"] for r in runs),
                                    "median_max_downtime_s": median(max(r["downtimes_s"]) for r in runs)}
            results["parallel"][kind] = data
            save(results, args.json)
        one = results["parallel"].get("list", {}).get("1", {}).get("runs", [])
        for kind, data in results["parallel"].items():
            if "4" in data:
                # Within one run index: the 4-workload wall time over the 1-workload one of the same index.
                data["ratio_4_vs_1"] = median(four["wall_s"] / single["wall_s"] for four, single in zip(data["4"]["runs"], one))
            if "1" not in data:
                data["1"] = results["parallel"]["list"]["1"]
        results["targets"] = targets(results)
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        results["complete"] = True
        save(results, args.json)
        print(table(results))
        print("\n%s, %s CPUs, %s GiB, kernel %s, Debian %s, %s, %s; %.0f s; JSON: %s" % (
            results["machine"]["date"], results["machine"]["nproc"], results["machine"]["memory_gib"],
            results["machine"]["kernel"], results["machine"]["debian"], " ".join(results["machine"]["criu"]),
            " ".join(results["machine"]["ansible_core"]), results["elapsed_s"], args.json))
        return 0
    except BaseException as exc:
        results["error"] = str(exc) or type(exc).__name__
        save(results, args.json)
        log("partial results in %s" % args.json)
        raise
    finally:
        with open(PIPE_MAX_SIZE, "w") as handle:
            handle.write(pipe_max_size)
        # Everything this run started mentions run_dir in its command line: workloads, restored copies, ssh masters.
        kill_pids(pids_with(os.path.join(run_dir, "state") + "/"))
        hosts.down()
        kill_pids(pids_with(run_dir + "/"))
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            os.rmdir(BENCH_ROOT)
        except OSError:
            pass


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit("bench: FAILED: %s" % exc)
