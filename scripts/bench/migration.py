# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration rows, over the tests' ssh test hosts (testhosts.Hosts, testhosts.Fleet) and their workloads
(testhosts.RemoteOn): the migrate role in copy and post-copy mode against a bare dump / transfer / restore
pipeline, and the fan-out of one playbook over many workloads or many pairs of hosts.

The role's figures come from the source's journal (downtime_seconds, dump_seconds, its phase history): nothing
of the product is patched or timed from outside but the playbook's wall time.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
import typing as t

from bench import cpuprof, env
from bench.env import CRIU, BenchError, kill_and_wait
from bench.summary import between, cpu_profile, per_gib, phase_durations, rotate
from conftest import alive, proc_state, processes_running
from testhosts import ADDRESS, Hosts, RemoteOn
from ansible_collections.nucleus.criu.plugins.module_utils.migration._remote import CIPHER_PREFERENCE

PLAYBOOK_TIMEOUT = 1800
BARE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bare.py")
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"]


class Bench:
    """What every migration row needs: the run directory and Ansible's environment for this run."""

    def __init__(self, run_dir: str, migrate_hash_algorithm: t.Optional[str]) -> None:
        self.run_dir = run_dir
        self.state_dir = os.path.join(run_dir, "state")
        self.control_dir = os.path.join(run_dir, "cp")  # Ansible's ssh ControlPersist sockets: private to this run
        os.makedirs(self.control_dir, mode=0o700, exist_ok=True)
        self.algorithm = migrate_hash_algorithm
        self.logs = 0
        self.cpu_scope: t.Optional[t.Callable[[int, str], bool]] = None  # --cpu-scope pair: cpuprof.pair_scope

    def ansible_env(self, forks: int) -> t.Dict[str, str]:
        return dict(os.environ, ANSIBLE_SSH_CONTROL_PATH_DIR=self.control_dir, ANSIBLE_FORKS=str(forks), ANSIBLE_NOCOLOR="1",
                    ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")


def host_name(name: str) -> str:
    """Inventory name of test host ``name`` ("a" -> host-a, "3" -> host-3)."""
    return "host-%s" % name


def start_workload(hosts: Hosts, host: str, name: str, bench: Bench, mib: int) -> RemoteOn:
    return RemoteOn(hosts, host, name, bench.state_dir, "--mem %d" % mib, fill_timeout=60 + mib / 10.0)


def stop_workload(workload: RemoteOn) -> None:
    kill_and_wait(processes_running(workload.state_file))


def playbook(hosts: Hosts, bench: Bench, extra: t.Mapping[str, t.Any], what: str, forks: int = 5,
             profile: bool = False) -> t.Tuple[float, t.Optional[t.Dict[str, t.Any]]]:
    """Run ``ansible-playbook -i INVENTORY nucleus.criu.migrate -e EXTRA`` (the tests' argv); its wall time and, with
    ``profile``, where the controller's CPU went. The playbook and all it forked are killed if it overruns."""
    wall, found, _output = run_playbook(bench, hosts.playbook_argv(**extra), what, forks=forks, profile=profile)
    return wall, found


def run_playbook(bench: Bench, argv: t.Sequence[str], what: str, forks: int = 5, profile: bool = False,
                 extra_env: t.Optional[t.Mapping[str, str]] = None) -> t.Tuple[float, t.Optional[t.Dict[str, t.Any]], str]:
    """Run the ansible-playbook ``argv``: its wall time, with ``profile`` where the controller's CPU went, and its
    standard output (stderr goes to a file of its own, so that a json callback's document stays parseable). The
    playbook and all it forked are killed if it overruns."""
    bench.logs += 1
    log_path = os.path.join(bench.run_dir, "playbook-%03d.log" % bench.logs)
    busy_before = cpuprof.machine_busy_s()
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as output, open(log_path + ".stderr", "w", encoding="utf-8") as errors:
        proc = subprocess.Popen(list(argv), cwd=env.REPO, env=dict(bench.ansible_env(forks), **(extra_env or {})),
                                stdin=subprocess.DEVNULL, stdout=output, stderr=errors, start_new_session=True)
    sampler = cpuprof.Sampler(proc.pid, bench.control_dir).start() if profile else None
    usage = None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > PLAYBOOK_TIMEOUT:
                raise BenchError("%s ran over %ss (log %s)" % (what, PLAYBOOK_TIMEOUT, log_path))
            time.sleep(0.02)
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if sampler is not None:
            sampler.stop()
    wall = time.monotonic() - started
    busy = cpuprof.machine_busy_s() - busy_before
    with open(log_path, encoding="utf-8") as handle:
        text = handle.read()
    if proc.returncode != 0:
        with open(log_path + ".stderr", encoding="utf-8") as handle:
            both = text + handle.read()
        fatal = [line for line in both.splitlines() if line.startswith(("fatal:", "failed:", "ERROR!"))]
        raise BenchError("%s failed (rc %d, log %s): %s" % (what, proc.returncode, log_path, "\n".join(fatal)[-3000:] or both[-2000:]))
    found = None
    if sampler is not None and usage is not None:
        tree_cpu = usage.ru_utime + usage.ru_stime
        seen: t.Dict[t.Any, t.Tuple[str, float]] = dict(sampler.tree_seen())
        masters = sampler.masters_cpu_s()
        if masters:
            seen[("masters", 0)] = ("ssh ControlPersist masters (daemonized)", masters)
        found = cpu_profile(seen, tree_cpu + masters, wall, busy, env.cores())
        found["samples"] = sampler.samples
    return wall, found, text


def journal_of(hosts: Hosts, host: str, name: str) -> t.Dict[str, t.Any]:
    journal = hosts.journal(host, name)
    if journal is None:
        raise BenchError("no journal of %s on host-%s after its migration" % (name, host))
    if journal.get("outcome") != "completed":
        raise BenchError("migration %s did not complete: outcome %s, phase %s, error %s" % (
            name, journal.get("outcome"), journal.get("phase"), journal.get("error")))
    return journal


def check_moved(hosts: Hosts, workload: RemoteOn, source: str, target: str) -> None:
    on_target, on_source = workload.running_on(target), workload.running_on(source)
    if not on_target or on_source or alive(workload.pid):
        raise BenchError("after its migration, %s runs on host-%s as %s and on host-%s as %s (source pid %d %s)" % (
            workload.name, target, on_target, source, on_source, workload.pid, "alive" if alive(workload.pid) else "gone"))


def migrate(hosts: Hosts, bench: Bench, moves: t.Sequence[t.Tuple[RemoteOn, str, str]], mode: str, what: str,
            forks: int = 5, profile: bool = False) -> t.Tuple[float, t.List[t.Dict[str, t.Any]], t.Optional[t.Dict[str, t.Any]]]:
    """One list-form playbook run migrating each (workload, source, target); wall time, source journals, CPU profile."""
    items = [{"name": w.name, "source": host_name(s), "target": host_name(d), "pid": w.pid} for w, s, d in moves]
    extra: t.Dict[str, t.Any] = {"migrate_workloads": items, "migrate_mode": mode}
    if bench.algorithm:
        extra["migrate_hash_algorithm"] = bench.algorithm
    wall, found = playbook(hosts, bench, extra, what, forks=forks, profile=profile)
    journals = [journal_of(hosts, source, w.name) for w, source, _target in moves]
    for workload, source, target in moves:
        check_moved(hosts, workload, source, target)
    return wall, journals, found


def role_row(hosts: Hosts, bench: Bench, workload: RemoteOn, mode: str) -> t.Dict[str, t.Any]:
    """The migrate role, host-a -> host-b, one workload (list form): downtime and phases from the source's journal;
    the CPU the whole machine spent meanwhile (both hosts and the controller), by category."""
    sampler = cpuprof.MachineSampler(bench.cpu_scope).start()
    try:
        wall, journals, _profile = migrate(hosts, bench, [(workload, "a", "b")], mode,
                                           "ansible-playbook nucleus.criu.migrate (%s, %s)" % (mode, workload.name))
    finally:
        sampler.stop()
    journal = journals[0]
    history = journal.get("history") or []
    out = {"%s_downtime_s" % mode: float(journal["downtime_seconds"]), "%s_playbook_s" % mode: wall,
           "%s_dump_s" % mode: journal.get("dump_seconds"), "%s_transfer_s" % mode: journal.get("transfer_seconds"),
           "%s_image_bytes" % mode: journal.get("image_bytes"), "%s_phases" % mode: phase_durations(history),
           "%s_algorithm" % mode: journal.get("algorithm"),
           "%s_cpu_s" % mode: sampler.busy_s, "%s_cpu_by" % mode: sampler.by_category(),
           "%s_frozen_to_restored_s" % mode: between(history, "frozen", "target_restored")}
    if mode == "postcopy":
        out["postcopy_pages_s"] = between(history, "target_restored", "pages_complete")
    return out


def bare_dir(tag: str) -> str:
    """The bare pipeline's own directory, on the filesystem that holds the role's migrate_dir."""
    return "/var/lib/nucleus-criu-bench/%s" % tag


def run_bare(hosts: Hosts, spec: t.Mapping[str, t.Any]) -> t.Dict[str, float]:
    """bare.py on host-a with ``spec`` and an ssh argv to host-b (its session opened before the clock), the target's
    directory made first; its time stamps."""
    q = shlex.quote
    ssh = ["ssh", "-p", str(hosts.port), "-i", hosts.key] + SSH_OPTS + ["-o", CIPHER_PREFERENCE, "-o", "ControlPath=none", "-T",
                                                                        "root@%s" % ADDRESS["b"]]
    hosts.run("b", "mkdir -p -m 0700 %s" % q(spec["dir"]))
    try:
        output = hosts.run("a", "%s %s %s" % (q(env.PYTHON), q(BARE), q(json.dumps(dict(spec, ssh=ssh)))))
    except subprocess.CalledProcessError as exc:
        raise BenchError("bare pipeline failed on host-a (rc %d): %s %s" % (exc.returncode, exc.stdout[-1000:], exc.stderr[-1000:])) from None
    return json.loads(output.splitlines()[-1])


def bare_row(hosts: Hosts, bench: Bench, workload: RemoteOn, tag: str) -> t.Dict[str, t.Any]:
    """bare.py on host-a: one ssh session host-a -> host-b opened before the clock; criu dump --leave-stopped, tar into
    that session, which unpacks and runs criu restore -d on host-b; timed on host-a from the dump's start to the
    session's return, as the role's driver times its downtime on the source."""
    q = shlex.quote
    directory = bare_dir(tag)
    hosts.run("a", "mkdir -p -m 0700 %s/images" % q(directory))
    sampler = cpuprof.MachineSampler(bench.cpu_scope)
    try:
        sampler.start()
        try:
            stamps = run_bare(hosts, {"criu": CRIU, "pid": workload.pid, "dir": directory})
        finally:
            sampler.stop()
        with open(hosts.path("b", "%s/restored.pid" % directory), encoding="ascii") as handle:
            new_pid = int(handle.read().strip())
        if not alive(new_pid) or proc_state(workload.pid) != "T":
            raise BenchError("bare pipeline: restored pid %d %s; source pid %d in state %s" % (
                new_pid, "running" if alive(new_pid) else "gone", workload.pid, proc_state(workload.pid)))
        kill_and_wait([workload.pid])  # the commit: the frozen source goes
    finally:
        stop_workload(workload)
        for host in ("a", "b"):
            hosts.run(host, "rm -rf %s" % q(directory), check=False)
    return {"bare_downtime_s": stamps["t3"] - stamps["t0"], "bare_dump_s": stamps["t1"] - stamps["t0"],
            "bare_transfer_s": stamps["t2"] - stamps["t1"], "bare_restore_s": stamps["t3"] - stamps["t2"],
            "bare_cpu_s": sampler.busy_s, "bare_cpu_by": sampler.by_category()}


MIGRATION_VARIANTS = ("bare", "copy", "postcopy")


def migration_run(hosts: Hosts, bench: Bench, mib: int, index: int) -> t.Dict[str, t.Any]:
    """One run at MIB: bare pipeline, role copy, role postcopy, in an order that rotates from run to run."""
    out: t.Dict[str, t.Any] = {"size_mib": mib, "run": index}
    workloads: t.Dict[str, RemoteOn] = {}
    try:
        for variant in MIGRATION_VARIANTS:
            workloads[variant] = start_workload(hosts, "a", "%s-%d-r%d" % (variant, mib, index), bench, mib)
        for variant in rotate(MIGRATION_VARIANTS, index):
            workload = workloads[variant]
            if variant == "bare":
                out.update(bare_row(hosts, bench, workload, workload.name))
            else:
                out.update(role_row(hosts, bench, workload, variant))
            stop_workload(workload)
    finally:
        for workload in workloads.values():
            stop_workload(workload)
    for variant in MIGRATION_VARIANTS:
        out["%s_cpu_s_per_gib" % variant] = per_gib(out.get("%s_cpu_s" % variant), mib)
    return out


def fanout_run(hosts: Hosts, bench: Bench, pairs: t.Sequence[t.Tuple[str, str]], mib: int, index: int, kind: str,
               forks: int) -> t.Dict[str, t.Any]:
    """One playbook run migrating one workload per (source, target) in ``pairs`` (a pair may repeat: many workloads
    from one source): wall time, each downtime, the controller's CPU profile."""
    count = len(pairs)
    workloads: t.List[RemoteOn] = []
    try:
        for number, (source, _target) in enumerate(pairs):
            workloads.append(start_workload(hosts, source, "fan-%s%d-%d-r%d" % (kind, count, number, index), bench, mib))
        moves = [(w, s, d) for w, (s, d) in zip(workloads, pairs)]
        what = "ansible-playbook nucleus.criu.migrate (%s, %d workload(s))" % (kind, count)
        wall, journals, found = migrate(hosts, bench, moves, "copy", what, forks=forks, profile=True)
    finally:
        for workload in workloads:
            stop_workload(workload)
    if found is not None:
        found["what"] = "%d workload(s), %d fork(s)" % (count, forks)
    return {"count": count, "run": index, "size_mib": mib, "wall_s": wall, "forks": forks, "cpu_profile": found,
            "downtimes_s": [float(j["downtime_seconds"]) for j in journals]}
