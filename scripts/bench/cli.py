# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""nucleus.criu against raw CRIU, side by side in one run. Run it through scripts/bench.sh.

For each workload size (demo/counter.py --mem N) and each of --runs runs, in an order that rotates from run to run:

  checkpoint  raw `criu dump` | raw dump + fsync of its images | criu_checkpoint in a fresh interpreter (time, stats,
              peak RSS) | the ad-hoc task (`ansible localhost -m nucleus.criu.criu_checkpoint`)
  restore     raw `criu restore -d` | criu_restore in a fresh interpreter | the ad-hoc task
  verify      criu_verify in a fresh interpreter (MiB/s) | one core of hashlib sha256, and the core count
  migration   a bare pipeline between two ssh test hosts (dump --leave-stopped, tar over one ssh connection opened
              before the clock, restore -d) | `ansible-playbook nucleus.criu.migrate` in copy mode | in post-copy mode
              (downtime from the source's journal)

then the fan-out: one migrate playbook with 1 and 4 workloads (one pair of hosts), and with --fanout N one workload on
each of N pairs of hosts against one pair, with a profile of the controller's CPU. Medians of the runs; every ratio is
computed within one run, then its median is reported. With --drain, issue 25's row on three test hosts of its own: one
migration, the same --drain-count workloads migrated one after another (one migrate playbook each), and their drain
(`ansible-playbook nucleus.criu.drain`) from host-1 onto host-2 and host-3 (bench/drain.py). With --containers,
Podman containers too: bare `podman container checkpoint --export` / `restore --import` against criu_checkpoint /
criu_restore, and (unless --local-only) a container's migration host-a -> host-b, bare Podman over ssh against the
migrate role (bench/containers.py).
Prints a table and writes a JSON file (rewritten after each step, "complete": false until the end).

Everything it starts (workloads, restored copies, ssh test hosts on NUCLEUS_BENCH_PORT, default 2288, and with
--fanout on NUCLEUS_BENCH_FANOUT_PORT, default 2301, with --drain on NUCLEUS_BENCH_DRAIN_PORT, default 2922, ssh
masters, playbooks) is killed or stopped before it exits, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import typing as t

from bench import cpuprof, env
from bench.env import BENCH_ROOT, POSTCOPY_PIPE_SIZE, BenchError, kill_and_wait, log
from bench.containers import container_run, load_image
from bench.drain import TARGET_SHARE, drain_run, forks_for, parallel_used
from bench.local import local_run
from bench.migration import Bench, fanout_run, migration_run
from bench.summary import drain_summary, fanout_summary, rotate, summarise, table, targets
from conftest import criu_role, pipe_max_size, processes_running
from testhosts import Fleet, Hosts

LIST_FANOUT = 4


def parse_args(argv: t.Optional[t.Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.sh", description=(__doc__ or "").split("\n\n", maxsplit=1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16,256,1024", help="workload sizes in MiB, comma separated (default 16,256,1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported (default 3)")
    parser.add_argument("--json", default=os.path.join(env.REPO, "build", "bench", "results.json"), help="where to write the results")
    parser.add_argument("--fanout", type=int, default=0, metavar="N",
                        help="also migrate one workload on each of N pairs of test hosts in one playbook run, against one pair")
    parser.add_argument("--fanout-mib", type=int, help="size of each workload in the fan-out runs (default: the smallest size)")
    parser.add_argument("--no-list-fanout", action="store_true", help="skip the 1-vs-4 workloads fan-out on one pair")
    parser.add_argument("--hash-algorithm", default="sha256", choices=["auto", "sha256", "blake3"],
                        help="criu_checkpoint's hash_algorithm in the module rows (default sha256, the module's default)")
    parser.add_argument("--migrate-hash-algorithm", choices=["auto", "sha256", "blake3"],
                        help="migrate_hash_algorithm for the role (default: the role's own default, auto)")
    parser.add_argument("--local-only", action="store_true", help="only the local rows: no ssh hosts, no migrations")
    parser.add_argument("--cpu-scope", default="machine", choices=["machine", "pair"],
                        help="whose CPU the migration rows count: every process on the machine (default; read it on a quiet "
                             "machine), or only the test host pair's and this benchmark's own (a machine that runs anything else)")
    parser.add_argument("--containers", default="", metavar="SIZES",
                        help="also Podman containers of these sizes in MiB (0: a small counter), bare Podman against the "
                             "modules, locally and migrating; prepares this host with the criu role's criu_containers "
                             "(default: none)")
    parser.add_argument("--containers-only", action="store_true", help="only the container rows (with --containers)")
    parser.add_argument("--drain", action="store_true",
                        help="also issue 25's row on 3 test hosts: the drain of --drain-count workloads host-1 -> host-2 + host-3 "
                             "against one migration and against the same workloads migrated one after another")
    parser.add_argument("--drain-only", action="store_true", help="only the drain row (with --drain): no pair of test hosts")
    parser.add_argument("--drain-count", type=int, default=8, help="workloads the drain row moves (default 8)")
    parser.add_argument("--drain-mib", type=int, default=256, help="memory of each workload of the drain row in MiB (default 256)")
    parser.add_argument("--drain-parallel", type=int, metavar="N", help="drain_parallel (default: the drain role's own)")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes takes integers in MiB, e.g. 16,256,1024")
    if not args.sizes or min(args.sizes) <= 0 or args.runs < 1 or args.fanout < 0 or args.fanout > 100:
        parser.error("--sizes must be positive, --runs at least 1, --fanout 0..100")
    try:
        args.containers = [int(s) for s in args.containers.split(",") if s.strip()]
    except ValueError:
        parser.error("--containers takes integers in MiB, e.g. 0,256")
    if args.containers_only and not args.containers:
        parser.error("--containers-only needs --containers SIZES")
    if args.drain_only and not args.drain:
        parser.error("--drain-only needs --drain")
    if args.drain and (args.local_only or (args.drain_only and (args.containers or args.containers_only))):
        parser.error("--drain needs the test hosts (not --local-only); --drain-only takes no --containers")
    if args.drain_count < 2 or args.drain_mib <= 0 or (args.drain_parallel is not None and args.drain_parallel < 0):
        parser.error("--drain-count must be at least 2 (two targets), --drain-mib positive, --drain-parallel 0 or more")
    if args.fanout_mib is None:
        args.fanout_mib = min(args.sizes)
    return args


def save(results: t.Dict[str, t.Any], path: str) -> None:
    """Write the results so far (complete: false until the end), so a failure late in a long run loses nothing."""
    results.setdefault("complete", False)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(path + ".tmp", path)


def fanout(hosts: Hosts, bench: Bench, kind: str, pairs_for: t.Callable[[int], t.List[t.Tuple[str, str]]], base: int, wide: int,
           args: argparse.Namespace) -> t.Dict[str, t.Any]:
    """``base`` against ``wide`` migrations in one playbook, --runs times in rotated order."""
    runs = []
    forks = max(5, wide)  # Ansible's default is 5: never let the forks be what serialises the wide run
    for index in range(args.runs):
        for count in rotate((base, wide), index):
            log("fan-out (%s): %d x %d MiB, run %d/%d" % (kind, count, args.fanout_mib, index + 1, args.runs))
            runs.append(fanout_run(hosts, bench, pairs_for(count), args.fanout_mib, index, kind, forks))
    data = dict(fanout_summary(runs, base, wide), runs=runs, forks=forks)
    wide_runs = [r for r in runs if r["count"] == wide and r.get("cpu_profile")]
    if wide_runs:  # the profile of the wide run whose wall time is the median one (the later one of two)
        wide_runs.sort(key=lambda r: r["wall_s"])
        data["cpu_profile"] = wide_runs[len(wide_runs) // 2]["cpu_profile"]
    return data


def stop_hosts(hosts: t.Optional[Hosts]) -> None:
    if hosts is None:
        return
    try:
        hosts.down()
    except Exception as exc:  # pylint: disable=broad-exception-caught  # cleaning up: report, go on
        log("warning: stopping the test hosts on port %d: %s" % (hosts.port, exc))


def measure_containers(args: argparse.Namespace, run_dir: str, results: t.Dict[str, t.Any], hosts: t.Optional[Hosts],
                       bench: Bench) -> None:
    """The container rows; with ``hosts``, container migrations between them too."""
    log("preparing this host for containers (the criu role, criu_containers: true)")
    criu_role({"criu_containers": True})
    if hosts is not None:
        hosts.up()  # again, after the fan-out's fleet
        load_image(hosts, run_dir)
    for mib in args.containers:
        runs = [container_run(run_dir, mib, index, hosts, bench) for index in range(args.runs)]
        results["containers"][str(mib)] = dict(summarise(runs), runs=runs)
        save(results, args.json)


def measure(args: argparse.Namespace, run_dir: str, results: t.Dict[str, t.Any], stack: contextlib.ExitStack) -> None:
    bench = Bench(run_dir, args.migrate_hash_algorithm)
    hosts: t.Optional[Hosts] = None
    if not args.local_only and not args.drain_only:
        log("ssh test hosts on port %d; fs.pipe-max-size %d for post-copy" % (env.PORT, POSTCOPY_PIPE_SIZE))
        stack.enter_context(pipe_max_size(POSTCOPY_PIPE_SIZE))
        hosts = Hosts(env.PORT)
        hosts.env["NUCLEUS_TESTHOSTS_PYTHON"] = env.PYTHON  # the venv's Python on the hosts: it has blake3
        stack.callback(stop_hosts, hosts)
        hosts.up()
        if args.cpu_scope == "pair":
            bench.cpu_scope = cpuprof.pair_scope([hosts.mount_ns("a"), hosts.mount_ns("b")], run_dir)
    if not args.containers_only and not args.drain_only:
        measure_processes(args, run_dir, results, stack, bench, hosts)
    if args.drain:
        measure_drain(args, results, stack, bench, hosts)
    if args.containers:
        measure_containers(args, run_dir, results, hosts, bench)


def measure_processes(args: argparse.Namespace, run_dir: str, results: t.Dict[str, t.Any], stack: contextlib.ExitStack,
                      bench: Bench, hosts: t.Optional[Hosts]) -> None:
    """The per-size rows (local, then migrations with ``hosts``) and the fan-out."""
    for mib in args.sizes:
        runs = []
        for index in range(args.runs):
            log("%d MiB, run %d/%d: checkpoint / restore / verify" % (mib, index + 1, args.runs))
            run = local_run(run_dir, mib, index, args.hash_algorithm)
            if hosts is not None:
                log("%d MiB, run %d/%d: migration (bare / copy / postcopy)" % (mib, index + 1, args.runs))
                run.update(migration_run(hosts, bench, mib, index))
            runs.append(run)
        results["sizes"][str(mib)] = dict(summarise(runs), runs=runs)
        save(results, args.json)
    if hosts is not None and not args.no_list_fanout:
        results["fanout"]["list"] = fanout(hosts, bench, "list", lambda count: [("a", "b")] * count, 1, LIST_FANOUT, args)
        save(results, args.json)
    if hosts is not None and args.fanout:
        hosts.down()  # one set of test hosts at a time: the fleet's sshds and tmpfs need the memory more
        fleet = Fleet(2 * args.fanout, env.FANOUT_PORT)
        fleet.env["NUCLEUS_TESTHOSTS_PYTHON"] = env.PYTHON
        log("%d pairs of ssh test hosts on port %d" % (args.fanout, env.FANOUT_PORT))
        stack.callback(stop_hosts, fleet)
        fleet.up()
        results["fanout"]["pairs"] = fanout(fleet, bench, "pairs", lambda count: [(str(2 * i + 1), str(2 * i + 2)) for i in range(count)],
                                            1, args.fanout, args)
        fleet.down()
        save(results, args.json)


def measure_drain(args: argparse.Namespace, results: t.Dict[str, t.Any], stack: contextlib.ExitStack, bench: Bench,
                  hosts: t.Optional[Hosts]) -> None:
    """Issue 25's row on three test hosts of its own port (the pair, if any, stopped first, as for the fan-out: one
    set of test hosts at a time); the results saved after each run."""
    if hosts is not None:
        hosts.down()
    fleet = Fleet(3, env.DRAIN_PORT)
    fleet.env["NUCLEUS_TESTHOSTS_PYTHON"] = env.PYTHON
    log("drain row: 3 ssh test hosts on port %d" % env.DRAIN_PORT)
    stack.callback(stop_hosts, fleet)
    fleet.up()
    config = {"count": args.drain_count, "mib": args.drain_mib, "parallel": parallel_used(args.drain_parallel),
              "parallel_from": "the role's default" if args.drain_parallel is None else "--drain-parallel",
              "forks": forks_for(args.drain_count, args.drain_parallel), "port": env.DRAIN_PORT, "target_share": TARGET_SHARE}
    runs: t.List[t.Dict[str, t.Any]] = []
    for index in range(args.runs):
        runs.append(drain_run(fleet, bench, args.drain_count, args.drain_mib, index, args.drain_parallel))
        results["drain"] = dict(drain_summary(runs), runs=runs, config=config)
        save(results, args.json)
    fleet.down()


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: run me as root (criu dump and restore need it): bash scripts/bench.sh")
    for path in (env.CRIU, env.ANSIBLE, env.PLAYBOOK, os.path.join(env.COLLECTIONS, "ansible_collections", "nucleus", "criu")):
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
    started = time.monotonic()
    config = {"sizes": args.sizes, "runs": args.runs, "fanout_mib": args.fanout_mib, "fanout_pairs": args.fanout, "port": env.PORT,
              "fanout_port": env.FANOUT_PORT, "hash_algorithm": args.hash_algorithm, "local_only": args.local_only,
              "migrate_hash_algorithm": args.migrate_hash_algorithm or "the role's default (auto)", "containers": args.containers,
              "cpu_scope": args.cpu_scope, "drain": args.drain, "drain_port": env.DRAIN_PORT}
    results: t.Dict[str, t.Any] = {"machine": env.machine(), "config": config, "sizes": {}, "fanout": {}, "containers": {}}
    try:
        with contextlib.ExitStack() as stack:
            try:
                measure(args, run_dir, results, stack)
            finally:
                # Before the hosts go (the stack): every workload and copy of this run names its state dir.
                kill_and_wait(processes_running(os.path.join(run_dir, "state") + "/"))
        results["targets"] = targets(results)
        with open("/proc/loadavg", encoding="ascii") as handle:
            results["machine"]["load_at_end"] = handle.read().split()[:3]
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        results["complete"] = True
        save(results, args.json)
        print(table(results))
        m = results["machine"]
        print("\n%s, %s CPUs (%s), %s GiB, kernel %s, Debian %s, %s, %s, commit %s%s; %.0f s; JSON: %s" % (
            m["date"], m["nproc"], m["cpu"], m["memory_gib"], m["kernel"], m["debian"], " ".join(m["criu"]), " ".join(m["ansible_core"]),
            m["commit"], " (with uncommitted changes)" if m["uncommitted_changes"] else "", results["elapsed_s"], args.json))
        if args.cpu_scope == "pair":
            print("CPU rows: the test host pair's processes and this benchmark's own only (--cpu-scope pair), not the whole machine's")
        return 0
    except BaseException as exc:
        results["error"] = str(exc) or type(exc).__name__
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        save(results, args.json)
        log("partial results in %s" % args.json)
        raise
    finally:
        # Whatever else names this run's directory: ssh masters (Ansible's and the bare pipeline's), playbooks.
        kill_and_wait(processes_running(run_dir + "/"))
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(BENCH_ROOT)


def run() -> None:
    try:
        sys.exit(main())
    except BenchError as exc:
        sys.exit("bench: FAILED: %s" % exc)
    except AssertionError as exc:  # the tests' helpers (wait_for, ...) report a timeout this way
        sys.exit("bench: FAILED: %s" % exc)
