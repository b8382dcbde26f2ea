"""Fleet migration between two real ssh hosts: exactly once, whatever dies, whenever it dies.

Every kill happens at exactly one step of the protocol: the host that reaches it stops at a failpoint
(a root-only file in its migration directory, see plugins/module_utils/migration/_journal.py) and says which process
stopped there; the test kills that process, or the controller, or freezes the target's link, then lets the
migration go on. After each: exactly one running copy of the workload with its memory intact, no frozen
source past the lease, journals that say what happened, and a rerun of the same command that reports or
finishes instead of acting twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import typing as t

import pytest

from conftest import alive, children, free_port, pipe_max_size, processes_running, proc_state, read_state, run_module, wait_for
from testhosts import DISK, MIGRATIONS, Hosts, Remote, mount_ns

HOSTS_HAVE_BLAKE3 = subprocess.run(["/usr/bin/python3", "-c", "import blake3"], capture_output=True, check=False).returncode == 0
LEASE = 60


@pytest.fixture
def remote(hosts, tmp_path):
    started: t.List[Remote] = []

    def start(name: str, args: str = "--mem 8", netns: bool = False) -> Remote:
        workload = Remote(hosts, name, str(tmp_path), args, netns)
        started.append(workload)
        return workload

    yield start
    for host in ("a", "b"):
        hosts.clear_failpoints(host)
    for workload in started:
        workload.stop()
        for host in ("a", "b"):
            hosts.run(host, "rm -rf %s/%s %s/%s.* %s/.%s.*" % (MIGRATIONS, workload.name, MIGRATIONS, workload.name,
                                                               MIGRATIONS, workload.name), check=False)


def single(workload: Remote, **extra: t.Any) -> t.Dict[str, t.Any]:
    return dict(dict(migrate_source="host-a", migrate_target="host-b", migrate_pidfile=workload.pidfile,
                     migrate_name=workload.name, migrate_lease=LEASE), **extra)


def recap_changed(output: str) -> int:
    return sum(int(n) for n in re.findall(r"^migration-\S+ +: .*changed=(\d+)", output, re.MULTILINE))


def assert_migrated(workload: Remote, token: str, count: int) -> int:
    """One copy, running on host-b, carrying on from its own memory; nothing left on host-a."""
    (pid,) = wait_for(lambda: workload.running_on("b"), what="%s to run on host-b" % workload.name)
    assert workload.copies() == [pid], "exactly one copy may exist"
    workload.counts_on(token, count)
    return pid


def assert_rolled_back(workload: Remote, token: str, count: int) -> None:
    """The source runs again with its memory; no copy exists anywhere else."""
    assert wait_for(lambda: workload.running_on("a") == [workload.pid], what="the source to run again")
    assert workload.copies() == [workload.pid], "nothing of the workload may exist elsewhere"
    workload.counts_on(token, count)


def test_fresh_hosts_check_mode_writes_nothing_and_the_default_migrate_dir_is_made(hosts, remote):
    """On hosts where nucleus.criu never ran (no /var/lib/nucleus-criu): criu_migrate in check mode, refused or
    predicting, leaves no file or directory on either host; for real, the default migrate_dir is made with its
    missing parent, root-only, on both hosts."""
    hosts.down()
    hosts.up()  # each host starts without /var/lib/nucleus-criu, as a user's does
    product_dir = os.path.dirname(MIGRATIONS)
    nothing_written: t.Dict[str, t.List[str]] = {"a": [], "b": []}

    def written() -> t.Dict[str, t.List[str]]:
        return {host: sorted(os.listdir(hosts.path(host, product_dir))) if os.path.lexists(hosts.path(host, product_dir))
                else [] for host in ("a", "b")}

    assert written() == nothing_written and not os.path.lexists(hosts.path("a", product_dir))
    workload = remote("fresh")
    ad_hoc = dict(name=workload.name, target="127.0.0.3", ssh_port=hosts.port, ssh_key_file=hosts.key,
                  ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null")
    refused = run_module("criu_migrate", dict(ad_hoc, pid=1), check=True, host="host-a", inventory=hosts.inventory)
    assert refused["failed"] and "Refusing to checkpoint pid 1" in refused["msg"], refused
    predicted = run_module("criu_migrate", dict(ad_hoc, pidfile=workload.pidfile), check=True, host="host-a",
                           inventory=hosts.inventory)
    assert predicted["changed"] and predicted["actions"] == [
        "would migrate pid %d to 127.0.0.3:%d (copy mode)" % (workload.pid, hosts.port)], predicted
    assert written() == nothing_written, "check mode must write nothing on either host"
    assert workload.running_on("a") == [workload.pid]

    token, count = read_state(workload.state_file)
    result = hosts.migrate(**single(workload))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_migrated(workload, token, count)
    for host in ("a", "b"):
        for directory in (product_dir, MIGRATIONS):
            st = os.lstat(hosts.path(host, directory))
            assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700), (host, directory, oct(st.st_mode))


def test_migrates_and_a_rerun_reports_without_acting(hosts, remote):
    workload = remote("single", "--mem 16")
    token, count = read_state(workload.state_file)
    result = hosts.migrate(**single(workload))
    assert result.returncode == 0, result.stdout + result.stderr
    journal = hosts.journal("a", "single")
    assert journal["outcome"] == "completed" and journal["phase"] == "completed", journal
    new_pid = assert_migrated(workload, token, count)
    assert journal["target_pid"] == new_pid and mount_ns(new_pid) == hosts.mount_ns("b") != hosts.mount_ns("a")
    assert journal["image_bytes"] > 16 << 20 and 0 < journal["downtime_seconds"] < 30, journal
    assert "single: host-a pid %d -> host-b pid %d" % (workload.pid, new_pid) in result.stdout, result.stdout
    target = hosts.journal("b", "single")
    assert target["id"] == journal["id"] and target["outcome"] == "completed", target
    assert [h["phase"] for h in journal["history"]].index("committed") < [h["phase"] for h in journal["history"]].index("completed")

    again = hosts.migrate(**single(workload))
    assert again.returncode == 0 and recap_changed(again.stdout) == 0, again.stdout
    assert "migrated already" in again.stdout, again.stdout
    assert workload.copies() == [new_pid], "a rerun must not migrate twice"


def test_migrates_a_workload_in_its_own_network_namespace(hosts, remote):
    """criu writes the namespace's firewall (iptables-N.img, ip6tables-N.img) with iptables-save: empty when the
    namespace has no rules, and an empty image must reach the target too. (Needs iptables on the host, as every
    Podman host has; tests/integration/test_containers.py installs it before this file runs.)"""
    workload = remote("netns", "--mem 8", netns=True)
    token, count = read_state(workload.state_file)
    result = hosts.migrate(**single(workload))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_migrated(workload, token, count)


def test_list_form_migrates_two_workloads_in_one_run_each_in_its_own_mode(hosts, remote):
    one, two = remote("first"), remote("second")
    states = {w.name: read_state(w.state_file) for w in (one, two)}
    result = hosts.migrate(migrate_mode="copy", migrate_workloads=[
        {"name": one.name, "source": "host-a", "target": "host-b", "pidfile": one.pidfile},
        {"name": two.name, "source": "host-a", "target": "host-b", "pidfile": two.pidfile, "mode": "postcopy"}])
    assert result.returncode == 0, result.stdout + result.stderr
    for workload in (one, two):
        assert_migrated(workload, *states[workload.name])
    assert {w.name: hosts.journal("a", w.name)["mode"] for w in (one, two)} == {one.name: "copy", two.name: "postcopy"}


# --- preflight: nothing is touched ---------------------------------------------------------------------

def assert_untouched(result: subprocess.CompletedProcess, workload: Remote, words: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "stopped at preflight, before touching the workload" in output and words in output, output
    assert proc_state(workload.pid) not in ("T", "t") and workload.copies() == [workload.pid]


def test_preflight_no_criu_on_the_target(hosts, remote):
    workload = remote("nocriu")
    hide = ["nsenter", "-t", str(hosts.sshd("b")), "-m", "mount", "-t", "tmpfs", "hidden-criu", "/usr/local/sbin"]
    subprocess.run(hide, check=True)
    try:
        result = hosts.migrate(**single(workload))
    finally:
        subprocess.run(["nsenter", "-t", str(hosts.sshd("b")), "-m", "umount", "/usr/local/sbin"], check=True)
    assert_untouched(result, workload, "criu was not found")


def test_preflight_target_without_room(hosts, remote):
    workload = remote("noroom", "--mem 32")
    resize = ["nsenter", "-t", str(hosts.sshd("b")), "-m", "mount", "-o", "remount,size=%s", DISK]
    subprocess.run([arg.replace("%s", "8m") for arg in resize], check=True)
    try:
        result = hosts.migrate(**single(workload))
    finally:
        subprocess.run([arg.replace("%s", "4g") for arg in resize], check=True)
    assert_untouched(result, workload, "MiB free, the checkpoint needs about")


def test_preflight_target_unreachable(hosts, remote):
    workload = remote("unreachable")
    result = hosts.migrate(**single(workload, migrate_ssh_port=1))
    assert_untouched(result, workload, "Connection refused")


@pytest.mark.skipif(HOSTS_HAVE_BLAKE3, reason="the test hosts' python3 has blake3")
def test_preflight_blake3_missing_on_the_target(hosts, remote):
    workload = remote("noblake3")
    result = hosts.migrate(**single(workload, migrate_hash_algorithm="blake3"))
    assert result.returncode != 0 and "blake3" in result.stdout, result.stdout
    assert workload.copies() == [workload.pid] and proc_state(workload.pid) not in ("T", "t")


def test_stopped_source_is_refused_unless_a_journal_explains_it(hosts, remote):
    workload = remote("stopped")
    os.kill(workload.pid, signal.SIGSTOP)
    try:
        result = hosts.migrate(**single(workload))
    finally:
        os.kill(workload.pid, signal.SIGCONT)
    assert_untouched(result, workload, "is stopped (state T) and no migration of stopped explains it, on this host or on the target")


def test_restore_failure_on_the_target_rolls_back(hosts, remote):
    """The frozen source still holds its listening port, which is the target's too on this one-kernel setup."""
    workload = remote("porttaken", "--tcp %d" % free_port())
    token, count = read_state(workload.state_file)
    result = hosts.migrate(**single(workload))
    assert result.returncode != 0 and "Address already in use" in result.stdout, result.stdout
    assert "Rolled back: the workload runs again" in result.stdout and "nothing of it remains on the target" in result.stdout
    assert_rolled_back(workload, token, count)
    assert not os.path.exists(hosts.path("b", "%s/porttaken" % MIGRATIONS)), "the target must be cleared"
    assert hosts.journal("b", "porttaken")["outcome"] == "aborted"


def test_reused_pid_named_by_a_stale_pidfile_is_refused(hosts, remote):
    """After a migration the source pidfile still names the old pid; once another process has it, it is not migrated."""
    workload = remote("reused")
    token, count = read_state(workload.state_file)
    assert hosts.migrate(**single(workload)).returncode == 0
    assert_migrated(workload, token, count)
    impostor = remote("impostor")
    hosts.run("a", "echo %d > %s" % (impostor.pid, workload.pidfile))
    journal = hosts.journal("a", "reused")
    journal_path = hosts.path("a", "%s/reused.journal.json" % MIGRATIONS)
    with open(journal_path) as handle:
        text = handle.read()
    with open(journal_path, "w") as handle:  # the completed migration's source pid is now the impostor's
        handle.write(text.replace('"pid": %d' % workload.pid, '"pid": %d' % impostor.pid))
    result = hosts.migrate(**single(workload))
    assert result.returncode != 0 and "now belongs to another process" in result.stdout, result.stdout
    assert impostor.copies() == [impostor.pid] and journal["id"] == hosts.journal("a", "reused")["id"]


# --- the kill matrix -----------------------------------------------------------------------------------

# (who is killed, on which host the step is reached, the step, the outcome the journals must settle on): one case per
# actor and phase class (before the freeze; frozen, criu running; voted; decided). What resolve decides from every
# phase and answer is tested as data in tests/unit/plugins/module_utils/test_resolve_table.py.
COPY_MATRIX = [
    ("controller", "a", "prepared", "completed"),
    ("controller", "a", "transferring", "completed"),
    ("controller", "a", "target_restored", "completed"),
    ("controller", "a", "committed", "completed"),
    ("driver", "a", "transferring", "rolled_back"),  # criu still dumping
    ("driver", "a", "target_restored", "rolled_back"),
    ("driver", "a", "committed", "completed"),
    ("target", "b", "restoring", "rolled_back"),  # criu restoring
    ("target", "b", "restored", "rolled_back"),
    ("target", "b", "committed", "completed"),
    ("link", "a", "transferring", "rolled_back"),
    ("link", "b", "restored", "rolled_back"),  # the vote lost: the target keeps its stopped copy until the rerun
    ("link", "a", "committed", "in_doubt"),
]


def matrix(rows: t.Sequence[t.Tuple[str, str, str, str]]) -> t.List[t.Any]:
    """A kill matrix's rows as test cases: a cut link waits out ssh's keepalives, so those rows are slow."""
    return [pytest.param(*row, id="-".join(row[:3:2] + (row[2],)), marks=[pytest.mark.slow] if row[0] == "link" else [])
            for row in rows]


def kill_at(hosts: Hosts, name: str, migrate_vars: t.Mapping[str, t.Any], tmp_path, who: str, host: str,
            phase: str) -> subprocess.Popen:
    """Start migration ``name`` (the playbook's ``migrate_vars``), stop it at ``phase`` on ``host``, kill ``who``, and
    let it go on."""
    hosts.arm(host, phase, name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **migrate_vars)
    stopped = hosts.reached(host, name, phase)
    frozen_link = []
    if who == "controller":
        hosts.kill_controller(controller)
    elif who == "link":
        frozen_link = hosts.freeze_link("b")
    else:
        os.kill(stopped, signal.SIGKILL)
    hosts.clear_failpoints(host)
    if frozen_link:
        # The source notices the silent link by itself (ssh keepalives), decides, then the link comes back.
        wait_for(lambda: (hosts.journal("a", name) or {}).get("outcome"), timeout=120, what="the source to decide")
        hosts.thaw_link(frozen_link)
    return controller


def finish(controller: subprocess.Popen) -> None:
    try:
        controller.wait(timeout=300)
    except subprocess.TimeoutExpired:
        Hosts.kill_controller(controller)


@pytest.mark.parametrize("who, host, phase, outcome", matrix(COPY_MATRIX))
def test_kill_matrix_copy(hosts, remote, tmp_path, who, host, phase, outcome):
    workload = remote("k-%s-%s" % (who, phase.replace("_", "-")))
    token, count = read_state(workload.state_file)
    target_pidfile = "/run/%s.target.pid" % workload.name
    controller = kill_at(hosts, workload.name, single(workload, migrate_target_pidfile=target_pidfile), tmp_path, who, host,
                         phase)
    journal = hosts.settled(workload.name)
    finish(controller)
    assert journal["outcome"] == outcome, journal
    if outcome == "completed":
        pid = assert_migrated(workload, token, count)
        # However it was finished (by the worker, or by a recovery), the commit does all a commit does.
        assert journal["downtime_seconds"] is not None and journal["running_at"], journal
        assert open(hosts.path("b", target_pidfile)).read().strip() == str(pid)
        assert not os.path.lexists(hosts.path("b", "%s/%s" % (MIGRATIONS, workload.name))), "cleanup=all removes it"
    elif (who, phase) == ("link", "restored"):
        # The target voted, and never heard the decision: its copy stays stopped (in doubt there) until a rerun tells it.
        assert outcome == "rolled_back" and journal["target_cleanup"] == "pending", journal
        assert wait_for(lambda: workload.running_on("a") == [workload.pid], what="the source to run again")
        assert workload.running_on("b") == [] and [proc_state(pid) for pid in workload.copies() if pid != workload.pid] == ["T"]
    elif outcome == "rolled_back":
        assert_rolled_back(workload, token, count)
        assert journal["decision"] == "abort" and "committed" not in [h["phase"] for h in journal["history"]], journal
        if who == "driver":  # the worker could not say why it stopped: its lease keeper does
            assert "was killed by SIGKILL in phase" in journal["error"], journal
        if (who, phase) == ("link", "transferring"):  # the target never restored anything: no stopped copy to speak of
            told = open(tmp_path / "controller.log").read()
            assert "nothing was restored on the target" in told and "stopped copy" not in told, told
    else:
        # Committed, the target unreachable: the source is never resumed, the target's copy is not running either.
        assert proc_state(workload.pid) == "T" and workload.running_on("a") == [] and workload.running_on("b") == []
        assert "never resumed" in journal["error"], journal
    # The journals say what happened, on both hosts.
    assert [h["phase"] for h in journal["history"]][0] == "prepared", journal

    rerun = hosts.migrate(**single(workload))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_migrated(workload, token, count)
    if outcome == "completed":
        assert recap_changed(rerun.stdout) == 0, "a completed migration is reported, not redone: " + rerun.stdout
    target = hosts.journal("b", workload.name)
    assert target["outcome"] == "completed" and target["id"] == hosts.journal("a", workload.name)["id"], target


def test_controller_killed_while_the_source_is_frozen_leaves_no_frozen_source(hosts, remote, tmp_path):
    """The report that started it all, without failpoints: the controller dies the moment the source is frozen."""
    workload = remote("frozenkill", "--mem 256")
    token, count = read_state(workload.state_file)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload))
    wait_for(lambda: proc_state(workload.pid) in ("T", "t"), timeout=60, what="the source to be frozen")
    hosts.kill_controller(controller)
    journal = hosts.settled(workload.name, timeout=LEASE + 60)
    assert journal["outcome"] in ("completed", "rolled_back"), journal
    if journal["outcome"] == "completed":
        assert_migrated(workload, token, count)
    else:
        assert_rolled_back(workload, token, count)
    rerun = hosts.migrate(**single(workload))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_migrated(workload, token, count)


@pytest.mark.slow
def test_lease_runs_out_and_the_hosts_roll_back_by_themselves(hosts, remote, tmp_path):
    """The worker is stuck (stopped at a step) with no controller: the lease keeper rolls back when it runs out."""
    workload = remote("lease")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "frozen", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload, migrate_lease=8))
    hosts.reached("a", workload.name, "frozen")
    hosts.kill_controller(controller)
    journal = hosts.settled(workload.name, timeout=60)
    assert journal["outcome"] == "rolled_back" and "lease of 8" in journal["error"], journal
    hosts.clear_failpoints("a")
    assert_rolled_back(workload, token, count)


def test_multi_workload_run_under_a_controller_kill(hosts, remote, tmp_path):
    one, two = remote("multi1"), remote("multi2")
    states = {w.name: read_state(w.state_file) for w in (one, two)}
    plan = dict(migrate_workloads=[{"name": w.name, "source": "host-a", "target": "host-b", "pidfile": w.pidfile} for w in (one, two)],
                migrate_lease=LEASE)
    hosts.arm("a", "target_restored")
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **plan)
    hosts.reached("a", "multi1", "target_restored")
    hosts.reached("a", "multi2", "target_restored")
    hosts.kill_controller(controller)
    hosts.clear_failpoints("a")
    for workload in (one, two):
        assert hosts.settled(workload.name)["outcome"] == "completed"
        assert_migrated(workload, *states[workload.name])
    rerun = hosts.migrate(**plan)
    assert rerun.returncode == 0 and recap_changed(rerun.stdout) == 0, rerun.stdout


def test_multi_workload_run_with_one_driver_killed(hosts, remote, tmp_path):
    one, two = remote("mixed1"), remote("mixed2")
    states = {w.name: read_state(w.state_file) for w in (one, two)}
    plan = dict(migrate_workloads=[{"name": w.name, "source": "host-a", "target": "host-b", "pidfile": w.pidfile} for w in (one, two)],
                migrate_lease=LEASE)
    hosts.arm("a", "frozen", "mixed1")
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **plan)
    os.kill(hosts.reached("a", "mixed1", "frozen"), signal.SIGKILL)
    hosts.clear_failpoints("a")
    finish(controller)
    assert hosts.settled("mixed1")["outcome"] == "rolled_back" and hosts.settled("mixed2")["outcome"] == "completed"
    assert_rolled_back(one, *states["mixed1"])
    assert_migrated(two, *states["mixed2"])
    rerun = hosts.migrate(**plan)
    assert rerun.returncode == 0, rerun.stdout
    for workload in (one, two):
        assert_migrated(workload, *states[workload.name])


# --- post-copy -----------------------------------------------------------------------------------------

def test_postcopy_migrates_with_memory_following(hosts, remote, big_pipes):
    workload = remote("lazy", "--mem 64")
    token, count = read_state(workload.state_file)
    result = hosts.migrate(**single(workload, migrate_mode="postcopy"))
    assert result.returncode == 0, result.stdout + result.stderr
    journal = hosts.journal("a", "lazy")
    assert journal["mode"] == "postcopy" and journal["lazy_pages"] > (64 << 20) // 4096, journal
    assert journal["image_bytes"] < 8 << 20, "only the images without the memory travel while frozen: %s" % journal
    assert_migrated(workload, token, count)
    assert wait_for(lambda: not hosts.processes_running("--lazy-pages"), what="the page server to end")


def listening_tcp_inodes() -> t.Set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> t.Set[str]:
    found = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def test_postcopy_page_channel_has_no_listening_socket(hosts, remote, tmp_path, big_pipes):
    """While the pages travel, no criu on either host listens anywhere: the two criu ends hold a socket pair
    joined through ssh, so no local process can read the frozen memory or send the page server a request."""
    workload = remote("lazyquiet", "--mem 64")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "target_restored", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload, migrate_mode="postcopy"))
    hosts.reached("a", workload.name, "target_restored")
    criu = [pid for pid in hosts.processes_running("criu") if "criu" in open("/proc/%d/cmdline" % pid).read().split("\0")[0]]
    listening = listening_tcp_inodes()
    assert criu and all(not socket_inodes(pid) & listening for pid in criu), "a criu listens on a TCP port"
    hosts.clear_failpoints("a")
    finish(controller)
    assert hosts.settled(workload.name)["outcome"] == "completed"
    assert_migrated(workload, token, count)


def test_a_driver_killed_whole_is_resolved_by_the_waiting_task(hosts, remote, tmp_path):
    """One SIGKILL to the driver's whole session (lease keeper and worker, the workload frozen): nothing enforces the
    lease any more, so the task that waits for the outcome notices within seconds and resolves the migration itself,
    instead of waiting out wait_timeout (1800 s) with the workload frozen."""
    workload = remote("driver-whole")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "frozen", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload))
    worker = hosts.reached("a", workload.name, "frozen")
    os.killpg(os.getpgid(worker), signal.SIGKILL)  # the driver's session: keeper, worker (and a criu, if any)
    hosts.clear_failpoints("a")
    try:
        controller.wait(timeout=60)
    except subprocess.TimeoutExpired:
        Hosts.kill_controller(controller)
        raise AssertionError("the task did not notice its driver died") from None
    output = open(tmp_path / "controller.log").read()
    assert controller.returncode != 0 and "Rolled back: the workload runs again on" in output, output
    assert hosts.journal("a", workload.name)["outcome"] == "rolled_back"
    assert_rolled_back(workload, token, count)


def test_a_damaged_or_lost_source_journal_asks_the_target_before_any_advice(hosts, remote):
    """The source's journal damaged (truncated), then lost, after its migration completed, and a stopped process under
    its pidfile (as the frozen source would be had the target run its copy unheard): the damaged journal stops the run
    with a remedy, not "Unexpected ValueError"; without it, the run asks the target, which ran the copy, and says not
    to resume the stopped process (the old advice, kill -CONT, would run the workload twice)."""
    workload = remote("lostjournal")
    token, count = read_state(workload.state_file)
    assert hosts.migrate(**single(workload)).returncode == 0
    assert_migrated(workload, token, count)
    frozen = remote("lostjournal-source")
    os.kill(frozen.pid, signal.SIGSTOP)
    journal_path = "%s/%s.journal.json" % (MIGRATIONS, workload.name)
    hosts.run("a", "echo %d > %s && truncate -s 100 %s" % (frozen.pid, workload.pidfile, journal_path))
    damaged = hosts.migrate(**single(workload))
    assert damaged.returncode != 0 and "is damaged or not a nucleus.criu migration journal" in damaged.stdout, damaged.stdout
    assert "mv %s %s.damaged" % (journal_path, journal_path) in damaged.stdout
    hosts.run("a", "mv %s %s.damaged" % (journal_path, journal_path))
    lost = hosts.migrate(**single(workload))
    output = lost.stdout + lost.stderr
    assert lost.returncode != 0 and "the target's journal says that migration" in output and "Do not resume it" in output, output
    assert proc_state(frozen.pid) == "T" and frozen.copies() == [frozen.pid]
    assert_migrated(workload, token, count)


def test_a_target_disk_that_fills_up_during_the_transfer_is_named(hosts, remote, tmp_path):
    """The target's migrate_dir fills up while the images travel: the failure names the target's own words (No space
    left on device), not the broken pipe its end left behind, and the source runs on."""
    workload = remote("fulldisk", "--mem 32")
    token, count = read_state(workload.state_file)
    disk = "/run/fulldisk"  # host-b's migrate_dir on a disk of its own: a tmpfs of 160 MiB (the preflight wants ~115)
    directory = disk + "/migrations"
    hosts.run("b", "mkdir %s && mount -t tmpfs -o size=160m,mode=0755 fulldisk %s" % (disk, disk))
    hosts.arm("a", "transferring", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload, migrate_dir=directory))
    try:
        hosts.reached("a", workload.name, "transferring")
        hosts.run("b", "fallocate -l $(($(stat -f -c '%%a*%%S' %s) - 65536)) %s/filler" % (disk, disk))
        hosts.clear_failpoints("a")
        finish(controller)
        told = open(tmp_path / "controller.log").read()
        assert "No space left on device" in told and "Broken pipe" not in told, told
        assert_rolled_back(workload, token, count)
    finally:
        hosts.run("b", "umount %s; rmdir %s" % (disk, disk), check=False)
        hosts.run("a", "rm -rf %s" % disk, check=False)


def test_a_criu_restore_killed_midway_leaves_nothing_on_the_target(hosts, remote, tmp_path):
    """criu restore killed on the target (the OOM killer) once it has made the workload's first task and before it is
    done: the migration rolls back, and the half-restored task (blocked in criu's restorer, holding the workload's
    memory) goes with it, instead of staying for ever under init."""
    workload = remote("halfrestored", "--mem 256")
    token, count = read_state(workload.state_file)
    hosts.arm("b", "restoring", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload))
    hosts.reached("b", workload.name, "restoring")
    criu = hosts.journal("b", workload.name)["criu"][0]
    os.kill(criu, signal.SIGSTOP)
    # Let criu run in small steps until it has made the workload's first task: then it is midway.
    deadline = time.monotonic() + 60
    while not children(criu):
        assert proc_state(criu) not in (None, "Z"), "criu finished the restore before the test could stop it midway"
        assert time.monotonic() < deadline, "criu made no task"
        os.kill(criu, signal.SIGCONT)
        time.sleep(0.002)
        os.kill(criu, signal.SIGSTOP)
    (half,) = children(criu)
    os.kill(criu, signal.SIGKILL)
    hosts.clear_failpoints("b")
    finish(controller)
    assert hosts.settled(workload.name)["outcome"] == "rolled_back"
    assert wait_for(lambda: not alive(half), what="the half-restored task %d to be killed" % half)
    assert_rolled_back(workload, token, count)


def test_a_reverse_run_under_the_same_name_leaves_the_unfinished_migration_alone(hosts, remote, tmp_path):
    """While host-b holds the a -> b migration NAME unfinished (its copy restored, no decision yet), a b -> a run under
    the same name is refused on host-b: it used to take host-b's target journal for its own source journal, "roll it
    back" and send host-a an abort that host-a applied to its source journal. The a -> b migration then completes."""
    workload = remote("reverse")
    token, count = read_state(workload.state_file)
    hosts.arm("b", "restored", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload))
    hosts.reached("b", workload.name, "restored")
    reverse = hosts.migrate(migrate_source="host-b", migrate_target="host-a", migrate_pidfile="/run/reverse.pid",
                            migrate_name=workload.name, migrate_lease=LEASE)
    output = reverse.stdout + reverse.stderr
    assert reverse.returncode != 0 and "This host is the target of the unfinished migration reverse" in output, output
    source = hosts.journal("a", workload.name)
    assert source["role"] == "source" and source["outcome"] is None and source.get("decision") is None, source
    hosts.clear_failpoints("b")
    finish(controller)
    assert hosts.settled(workload.name)["outcome"] == "completed"
    assert_migrated(workload, token, count)


@pytest.mark.slow
def test_a_target_journal_lost_while_its_cleanup_is_pending_leaves_no_copy_behind(hosts, remote, tmp_path):
    """The vote lost (the link cut as the target voted): the source rolls back and the target keeps its stopped copy
    until told. Its journal deleted meanwhile, the rerun's abort used to find nothing there and leave the copy stopped
    for ever; what the source recorded of the copy (pid and start time) now names it, and the abort removes it."""
    workload = remote("lostcopy")
    token, count = read_state(workload.state_file)
    controller = kill_at(hosts, workload.name, single(workload), tmp_path, "link", "b", "restored")
    journal = hosts.settled(workload.name)
    finish(controller)
    assert journal["outcome"] == "rolled_back" and journal["target_cleanup"] == "pending", journal
    stopped = [pid for pid in workload.copies() if pid != workload.pid]
    assert [proc_state(pid) for pid in stopped] == ["T"], "the target keeps its stopped copy until told"
    hosts.run("b", "rm %s/%s.journal.json" % (MIGRATIONS, workload.name))
    rerun = hosts.migrate(**single(workload))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert wait_for(lambda: not any(alive(pid) for pid in stopped), what="the orphaned stopped copy to be removed")
    assert_migrated(workload, token, count)


POSTCOPY_MATRIX = [
    ("controller", "a", "target_restored", "completed"),
    ("driver", "a", "target_restored", "rolled_back"),
    ("target", "b", "restored", "rolled_back"),
    ("link", "a", "target_restored", "in_doubt"),
]


@pytest.mark.parametrize("who, host, phase, outcome", matrix(POSTCOPY_MATRIX))
def test_kill_matrix_postcopy(hosts, remote, tmp_path, big_pipes, who, host, phase, outcome):
    workload = remote("p-%s-%s" % (who, phase.replace("_", "-")), "--mem 32")
    token, count = read_state(workload.state_file)
    controller = kill_at(hosts, workload.name, single(workload, migrate_mode="postcopy"), tmp_path, who, host, phase)
    journal = hosts.settled(workload.name)
    finish(controller)
    assert journal["outcome"] == outcome, journal
    if outcome == "completed":
        assert_migrated(workload, token, count)
    elif outcome == "rolled_back":
        assert_rolled_back(workload, token, count)
    else:
        # The source never guesses, and stays frozen: the target could not confirm its running copy is gone; or, when
        # every page had arrived and the target said so before the link went silent, the source committed and the
        # target could not be told (both happen: the pages keep flowing while the worker waits at the failpoint).
        assert proc_state(workload.pid) == "T" and workload.running_on("a") == [], journal
        assert ("stays frozen until the target confirms" in journal["error"]
                or ("pages_complete" in [h["phase"] for h in journal["history"]] and "is never resumed" in journal["error"])), journal
    rerun = hosts.migrate(**single(workload, migrate_mode="postcopy"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_migrated(workload, token, count)


def test_postcopy_refused_when_pipes_are_too_small(hosts, remote):
    workload = remote("lazysmall")
    with pipe_max_size(1048576):
        result = hosts.migrate(**single(workload, migrate_mode="postcopy"))
    assert_untouched(result, workload, "fs.pipe-max-size is 1048576 here")


@pytest.mark.parametrize("request_vars", [
    {"migrate_name": "has space", "migrate_pid": 4242},
    {"migrate_name": "x" * 101, "migrate_pid": 4242},
    {"migrate_name": "both", "migrate_pid": 4242, "migrate_pidfile": "/run/x.pid"},
    {"migrate_name": "neither"},
    {"migrate_name": "samehost", "migrate_pid": 4242, "migrate_target": "host-a"},
    {"migrate_name": "mode", "migrate_pid": 4242, "migrate_mode": "precopy"},
    {"migrate_name": "hash", "migrate_pid": 4242, "migrate_hash_algorithm": "md5"},
    {"migrate_name": "lease", "migrate_pid": 4242, "migrate_lease": 0},
], ids=["name", "name-too-long", "pid-and-pidfile", "no-pid", "same-host", "precopy", "hash", "lease"])
def test_invalid_request_is_refused_before_any_host_is_touched(hosts, request_vars):
    result = hosts.migrate(**dict({"migrate_source": "host-a", "migrate_target": "host-b"}, **request_vars))
    assert result.returncode != 0 and "Invalid migration" in result.stdout, result.stdout
    assert "host-a(" not in result.stdout, "the plan must stop before any task reaches a host"


def test_two_controllers_two_names_one_workload(hosts, remote, tmp_path):
    """Two operators (two AWX jobs) migrate the same process under two names: both preflights passed before either
    froze it, both drivers dumped it, both targets restored it: two copies. A migration claims the workload itself
    before its preflight; the other is refused until that one ends."""
    workload = remote("claimed")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "prepared", workload.name)
    first = hosts.start_migrate(str(tmp_path / "first.log"), **single(workload))
    hosts.reached("a", workload.name, "prepared")
    second = hosts.migrate(**single(workload, migrate_name="claimed-again"))
    hosts.clear_failpoints("a")
    finish(first)

    output = second.stdout + second.stderr
    assert second.returncode != 0 and "pid %d is being migrated right now by another migration" % workload.pid in output, output
    assert hosts.journal("a", "claimed-again") is None, "the refused one wrote nothing"
    assert first.returncode == 0, open(tmp_path / "first.log").read()
    assert_migrated(workload, token, count)


def test_the_same_migration_run_twice_at_once_waits_for_the_first(hosts, remote, tmp_path):
    """A second controller runs the same command while the first is still before its journal (its preflight): it
    failed at once ("retry in a moment"); it waits for the first and reports what happened, as a rerun does."""
    workload = remote("twice")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "preflight", workload.name)
    first = hosts.start_migrate(str(tmp_path / "first.log"), **single(workload))
    hosts.reached("a", workload.name, "preflight")
    assert hosts.journal("a", workload.name) is None
    second = hosts.start_migrate(str(tmp_path / "second.log"), **single(workload))
    wait_for(lambda: len(pipelined_modules(hosts, "a")) == 2, timeout=60, what="the second run's module to start")
    time.sleep(2)  # the module meets the lock within a second of its start; the old code then gave up at once
    assert second.poll() is None, open(tmp_path / "second.log").read()
    hosts.clear_failpoints("a")
    finish(first)
    finish(second)
    assert first.returncode == 0 and second.returncode == 0, open(tmp_path / "second.log").read()
    assert recap_changed(open(tmp_path / "second.log").read()) == 0, "the second reports the first's migration"
    assert_migrated(workload, token, count)


def pipelined_modules(hosts: Hosts, host: str) -> t.List[int]:
    """Ansible modules running on ``host`` (pipelined: a bare python3 reading its module from ssh)."""
    ns = hosts.mount_ns(host)
    found = []
    for pid in processes_running("python3"):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                argv = handle.read().split(b"\0")[:-1]
        except OSError:
            continue
        if argv == [b"/usr/bin/python3"] and mount_ns(pid) == ns:
            found.append(pid)
    return found


def test_a_stopped_copy_that_dies_before_the_commit_lets_the_source_run_again(hosts, remote, tmp_path):
    """The target's stopped copy dies between the vote and the commit (the OOM killer, an operator): the source
    committed anyway and stayed frozen for ever, every rerun saying the target could not be reached. The copy never
    ran, so the source, whose memory is intact, runs again; a rerun migrates it."""
    workload = remote("copydies")
    token, count = read_state(workload.state_file)
    hosts.arm("a", "committed", workload.name)
    controller = hosts.start_migrate(str(tmp_path / "controller.log"), **single(workload))
    hosts.reached("a", workload.name, "committed")
    (copy,) = [pid for pid in workload.copies() if pid != workload.pid]
    assert proc_state(copy) == "T" and mount_ns(copy) == hosts.mount_ns("b")
    os.kill(copy, signal.SIGKILL)
    hosts.clear_failpoints("a")
    journal = hosts.settled(workload.name)
    finish(controller)

    assert journal["outcome"] == "rolled_back" and "never ran there" in journal["error"], journal
    assert_rolled_back(workload, token, count)
    target = hosts.journal("b", workload.name)
    assert target["outcome"] == "aborted" and target["never_ran"], target
    rerun = hosts.migrate(**single(workload))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_migrated(workload, token, count)
