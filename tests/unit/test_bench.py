"""The benchmark's arithmetic (scripts/bench/summary.py): medians, same-run ratios, journal phases, CPU shares,
targets and the table. Pure functions: no root, no CRIU, no processes."""

from __future__ import annotations

import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench import cpuprof, summary  # noqa: E402  pylint: disable=wrong-import-position


def test_median_ignores_what_was_not_measured():
    assert summary.median([3.0, None, 1.0, 2.0]) == 2.0
    assert summary.median([1.0, 4.0]) == 2.5
    assert summary.median([None, None]) is None
    assert summary.median([]) is None


@pytest.mark.parametrize("index, expected", [(0, ["a", "b", "c"]), (1, ["b", "c", "a"]), (2, ["c", "a", "b"]), (4, ["b", "c", "a"])])
def test_rotate_starts_each_run_one_further(index, expected):
    assert summary.rotate(("a", "b", "c"), index) == expected


def test_rotate_gives_every_variant_every_position():
    variants = ("raw", "raw_fsync", "module", "adhoc")
    for position in range(len(variants)):
        assert {summary.rotate(variants, index)[position] for index in range(len(variants))} == set(variants)
    assert summary.rotate((), 3) == []


def run(**values):
    return dict({"run": 0, "size_mib": 16}, **values)


def test_ratios_are_taken_within_each_run_then_the_median():
    runs = [run(run=0, checkpoint_module_s=2.0, dump_raw_s=1.0), run(run=1, checkpoint_module_s=3.0, dump_raw_s=3.0),
            run(run=2, checkpoint_module_s=6.0, dump_raw_s=4.0)]
    result = summary.summarise(runs)
    assert result["ratios"]["checkpoint_module_vs_raw"] == 1.5  # median of 2.0, 1.0, 1.5
    # not the ratio of the medians (3.0 / 3.0)
    assert result["median"]["checkpoint_module_s"] == 3.0 and result["median"]["dump_raw_s"] == 3.0


def test_a_ratio_missing_one_side_is_none_not_an_error():
    result = summary.summarise([run(checkpoint_module_s=1.0)])
    assert result["ratios"]["checkpoint_module_vs_raw"] is None
    assert result["ratios"]["downtime_copy_vs_bare"] is None
    assert summary.ratio_or_none(summary.RATIOS["checkpoint_module_vs_raw"], {"checkpoint_module_s": 1.0, "dump_raw_s": 0}) is None
    assert summary.ratio_or_none(summary.RATIOS["checkpoint_module_vs_raw"], {"checkpoint_module_s": None, "dump_raw_s": 1.0}) is None


def test_issue_13_ratios():
    one = run(checkpoint_module_s=1.2, dump_raw_fsync_s=1.0, restore_module_s=1.5, restore_module_verify_s=0.4,
              restore_raw_s=0.8, verify_module_mibps=1500.0, cores=2, sha256_1core_mibps=1000.0)
    ratios = summary.summarise([one])["ratios"]
    assert ratios["checkpoint_module_vs_raw_fsync"] == pytest.approx(1.2)
    assert ratios["restore_beyond_verify_vs_raw"] == pytest.approx((1.5 - 0.4 - 0.3) / 0.8)
    assert ratios["verify_vs_cores_sha256"] == pytest.approx(0.75)


def test_issue_10_ratios():
    one = run(bare_downtime_s=2.0, copy_downtime_s=3.0, postcopy_downtime_s=1.0)
    ratios = summary.summarise([one])["ratios"]
    assert ratios["downtime_copy_vs_bare"] == pytest.approx(1.5)
    assert ratios["downtime_copy_minus_bare_s"] == pytest.approx(1.0)
    assert ratios["downtime_postcopy_vs_bare"] == pytest.approx(0.5)
    assert ratios["downtime_postcopy_minus_bare_s"] == pytest.approx(-1.0)


def test_summarise_takes_medians_of_numbers_only_and_of_phases_label_by_label():
    runs = [run(run=0, a=1.0, flag=True, name="x", copy_phases={"prepared": 0.2, "freezing": 1.0}),
            run(run=1, a=3.0, flag=False, name="y", copy_phases={"prepared": 0.4, "frozen": 2.0}),
            run(run=2, a=2.0, copy_phases={"prepared": 0.3})]
    result = summary.summarise(runs)
    assert result["median"]["a"] == 2.0
    assert "flag" not in result["median"] and "name" not in result["median"] and "run" not in result["median"]
    assert result["median"]["copy_phases"] == {"prepared": 0.3, "freezing": 1.0, "frozen": 2.0}
    assert list(result["median"]["copy_phases"]) == ["prepared", "freezing", "frozen"]
    assert result["median"]["postcopy_phases"] == {}


HISTORY = [
    {"phase": "prepared", "at": "2026-11-30T09:00:00.000000Z"},
    {"phase": "prepared", "at": "2026-11-30T09:00:00.250000Z"},
    {"phase": "freezing", "at": "2026-11-30T09:00:00.500000Z"},
    {"phase": "frozen", "at": "2026-11-30T09:00:01.000000Z"},
    {"phase": "frozen", "at": "2026-11-30T09:00:01.200000Z"},
    {"phase": "target_restored", "at": "2026-11-30T09:00:01.700000Z"},
    {"phase": "pages_complete", "at": "2026-11-30T09:00:03.000000Z"},
    {"phase": "committed", "at": "2026-11-30T09:00:03.100000Z"},
    {"phase": "completed", "at": "2026-11-30T09:00:03.400000Z"},
]


def test_phase_durations_from_a_journal_history():
    spent = summary.phase_durations(HISTORY)
    assert list(spent) == ["prepared", "freezing", "frozen", "target_restored", "pages_complete", "committed"]
    assert spent["prepared"] == pytest.approx(0.5)  # recorded twice in a row: both stretches add up
    assert spent["frozen"] == pytest.approx(0.7)
    assert spent["target_restored"] == pytest.approx(1.3)
    assert "completed" not in spent  # the last entry lasts no time
    assert sum(spent.values()) == pytest.approx(3.4)
    assert not summary.phase_durations(HISTORY[:1])
    assert not summary.phase_durations([])


def test_between_two_phases():
    assert summary.between(HISTORY, "target_restored", "pages_complete") == pytest.approx(1.3)
    assert summary.between(HISTORY, "frozen", "target_restored") == pytest.approx(0.7)  # from the first "frozen"
    assert summary.between(HISTORY, "freezing", "nowhere") is None
    assert summary.between(HISTORY, "nowhere", "completed") is None
    assert summary.between(HISTORY, "pages_complete", "prepared") is None  # only an entry after the start counts


def test_parse_utc_crosses_midnight():
    assert (summary.parse_utc("2026-12-01T00:00:00.100000Z") - summary.parse_utc("2026-11-30T23:59:59.900000Z")).total_seconds() == pytest.approx(0.2)


def fan(count, index, wall, downtimes=(0.5,)):
    return {"count": count, "run": index, "wall_s": wall, "downtimes_s": list(downtimes)}


def test_fanout_ratio_is_per_run_index():
    runs = [fan(1, 0, 10.0), fan(4, 0, 20.0, (1.0, 2.0)), fan(4, 1, 12.0), fan(1, 1, 4.0), fan(1, 2, 5.0), fan(4, 2, 10.0)]
    result = summary.fanout_summary(runs, 1, 4)
    assert result["1"]["median_wall_s"] == 5.0
    assert result["4"]["median_wall_s"] == 12.0
    assert result["ratio"] == 2.0  # median of 2.0, 3.0, 2.0, not 12.0 / 5.0
    assert result["4"]["median_max_downtime_s"] == 0.5
    assert (result["base"], result["wide"]) == (1, 4)


def test_fanout_without_its_base_has_no_ratio():
    result = summary.fanout_summary([fan(8, 0, 30.0)], 1, 8)
    assert result["ratio"] is None
    assert result["8"]["median_wall_s"] == 30.0


@pytest.mark.parametrize("pid, comm, cmdline, expected", [
    (10, "ansible-playboo", "python ansible-playbook -i x", "ansible-playbook (main process)"),
    (11, "ansible-playboo", "python ansible-playbook -i x", "ansible-playbook workers (forks)"),
    (12, "ssh", "ssh -o ControlMaster=auto host", "ssh clients"),
    (13, "python3.11", "/usr/bin/python3.11 -c import sys", "python (local modules, interpreter probes)"),
    (14, "sh", "/bin/sh -c echo", "other (sh)"),
])
def test_cpu_category(pid, comm, cmdline, expected):
    assert summary.cpu_category(pid, 10, comm, cmdline) == expected


def test_cpu_profile_attributes_the_unsampled_rest():
    seen = {(10, 1): ("main", 2.0), (11, 2): ("workers", 0.5), (12, 3): ("workers", 0.5), (13, 4): ("ssh", 0.25)}
    profile = summary.cpu_profile(seen, total_cpu_s=4.0, wall_s=8.0, machine_busy_s=10.0, cores=2)
    assert profile["by_category_s"] == {"main": 2.0, "workers": 1.0, "short-lived, not sampled": 0.75, "ssh": 0.25}
    assert list(profile["by_category_s"])[0] == "main"
    assert profile["controller_cores_busy"] == 0.5
    assert profile["machine_busy_fraction"] == 0.625
    assert profile["controller_share_of_machine"] == 0.4
    lines = summary.profile_lines("fan-out", profile)
    assert "0.50 cores busy" in lines[0] and "62% of its cores" in lines[0]
    assert len(lines) == 5


def test_cpu_profile_when_sampling_saw_everything():
    profile = summary.cpu_profile({(1, 1): ("main", 1.0)}, total_cpu_s=0.9, wall_s=0.0, machine_busy_s=None, cores=2)
    assert profile["by_category_s"] == {"main": 1.0}
    assert profile["controller_cores_busy"] is None and profile["machine_busy_fraction"] is None


def size_summary(**ratios):
    median = {"checkpoint_module_rss_kib": 30 * 1024, "verify_module_rss_kib": 60 * 1024, "restore_module_rss_kib": None,
              "image_bytes": 21 * summary.MIB, "dump_raw_s": 0.5, "bare_dump_s": 0.1, "bare_transfer_s": 0.2, "bare_restore_s": 0.3}
    return {"median": median, "ratios": ratios}


def results(**extra):
    sizes = {"16": size_summary(checkpoint_module_vs_raw_fsync=3.0, downtime_copy_vs_bare=2.0),
             "256": size_summary(checkpoint_module_vs_raw_fsync=1.1, verify_vs_cores_sha256=0.85, downtime_copy_vs_bare=1.3),
             "1024": size_summary(checkpoint_module_vs_raw_fsync=1.2, verify_vs_cores_sha256=0.7, downtime_copy_vs_bare=1.1,
                                  restore_beyond_verify_vs_raw=1.1)}
    sizes["1024"]["median"]["postcopy_downtime_s"] = 0.6
    return dict({"sizes": sizes, "config": {"runs": 3, "fanout_mib": 16}, "fanout": {}}, **extra)


def test_targets_are_judged_at_every_size_from_256_mib_and_the_bounds_at_the_largest():
    found = {t["target"]: t for t in summary.targets(results())}
    assert found["durable checkpoint <= 1.15x (raw dump + fsync) at 256 MiB"]["met"]
    assert not found["durable checkpoint <= 1.15x (raw dump + fsync) at 1024 MiB"]["met"]
    assert found["sha256 verify >= 0.8x (cores x one-core hashlib) at 256 MiB"]["met"]
    assert not found["sha256 verify >= 0.8x (cores x one-core hashlib) at 1024 MiB"]["met"]
    assert not found["copy migration downtime <= 1.2x bare at 256 MiB"]["met"]
    assert found["copy migration downtime <= 1.2x bare at 1024 MiB"]["met"]
    assert found["restore <= 1.2x raw + its verification + 0.3 s at 1024 MiB"]["met"]
    postcopy = found["postcopy downtime <= 0.5 s at 1024 MiB"]
    assert not postcopy["met"] and postcopy["unit"] == "s"
    assert not any("at 16 MiB" in name and "RSS" not in name for name in found), "16 MiB is below the targets' sizes"
    rss = found["module peak RSS <= 32 MiB (checkpoint, verify, restore at 256 MiB)"]
    assert not rss["met"] and rss["measured"] == 60.0 and rss["unit"] == "MiB"


def test_targets_skip_what_was_not_measured():
    local = {"sizes": {"16": {"median": {}, "ratios": {"checkpoint_module_vs_raw_fsync": 1.0}}}, "fanout": {}}
    assert [t["target"] for t in summary.targets(local)] == ["durable checkpoint <= 1.15x (raw dump + fsync) at 16 MiB"]
    assert not summary.targets({"sizes": {}})


def test_targets_of_the_fanout():
    found = summary.targets(results(fanout={"list": {"base": 1, "wide": 4, "ratio": 1.6}, "pairs": {"base": 1, "wide": 8, "ratio": 2.9}}))
    by_name = {t["target"]: t["met"] for t in found}
    assert by_name["4 parallel migrations <= 1.5x one (list form, one pair)"] is False
    assert by_name["8 pairs (16 hosts) migrating at once <= 3x one pair"] is True


def test_fmt():
    assert summary.fmt(None) == "-"
    assert summary.fmt(1.23456) == "1.235"
    assert summary.fmt(1.5, "%.2fx") == "1.50x"


def test_table_has_a_column_per_size_and_only_measured_rows():
    text = summary.table(dict(results(), targets=summary.targets(results())))
    lines = text.splitlines()
    assert lines[0].startswith("| median of 3 run(s)") and "16 MiB" in lines[0] and "256 MiB" in lines[0]
    widths = {len(line) for line in lines if line.startswith("|")}
    assert len(widths) == 1, "every table line has the same width"
    assert any(line.startswith("| image size (MiB)") and "21.0" in line for line in lines)
    assert any(line.startswith("|   bare: dump / transfer / restore (s)") and "0.10/0.20/0.30" in line for line in lines)
    assert any(line.startswith("|   ratio module / (raw dump + fsync)") and "3.00x" in line and "1.10x" in line
               for line in lines)
    assert not any(line.startswith("| raw criu restore (s)") for line in lines), "a row nothing measured is left out"
    assert "targets (issues 10 and 13):" in lines
    assert any("[NOT met] durable checkpoint <= 1.15x (raw dump + fsync) at 1024 MiB" in line and "1.20x" in line
               for line in lines)


def test_table_shows_the_fanout_and_its_cpu_profile():
    profile = summary.cpu_profile({(1, 1): ("ansible-playbook (main process)", 3.0)}, 3.0, 10.0, 12.0, 2)
    profile["what"] = "4 workload(s), 5 fork(s)"
    fanout = {"list": {"base": 1, "wide": 4, "ratio": 1.8, "1": {"median_wall_s": 5.3, "median_max_downtime_s": 0.6},
                       "4": {"median_wall_s": 9.7, "median_max_downtime_s": 1.4}, "cpu_profile": profile}}
    text = summary.table(results(fanout=fanout))
    assert "| list form, one pair (host-a -> host-b)" in text
    row = next(line for line in text.splitlines() if line.startswith("| list form"))
    assert "5.3" in row and "9.7" in row and "1.80x" in row
    assert "controller CPU, list form, one pair (host-a -> host-b) (4 workload(s), 5 fork(s)): wall 10.0 s" in text
    assert "ansible-playbook (main process)" in text


def test_every_size_row_renders_an_empty_summary():
    for label, cell in summary.size_rows():
        assert cell({"median": {}, "ratios": {}}) in ("-", "-/-", "-/-/-"), label


def test_table_shows_the_journal_phases_per_size():
    data = results()
    data["sizes"]["16"]["median"]["copy_phases"] = {"prepared": 0.4, "freezing": 0.2, "frozen": 0.3}
    data["sizes"]["256"]["median"]["copy_phases"] = {"committed": 0.1, "prepared": 0.5, "freezing": 0.6}  # as read back from JSON
    lines = summary.table(data).splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| copy: source journal")))
    rows = lines[start + 2:start + 6]
    assert [row.split("|")[1].strip().split(":")[0] for row in rows] == ["prepared", "freezing", "frozen", "committed"]
    assert "0.400" in rows[0] and "0.500" in rows[0]
    assert rows[2].rstrip(" |").endswith("-"), "a phase a size did not record shows -"
    assert not any(line.startswith("| postcopy: source journal") for line in lines)


def test_postcopy_time_until_the_target_runs_comes_from_the_journal_phases():
    one = run(bare_downtime_s=2.0, postcopy_phases=summary.phase_durations(HISTORY))
    ratios = summary.summarise([one])["ratios"]
    assert ratios["postcopy_freeze_to_restored_s"] == pytest.approx(summary.between(HISTORY, "freezing", "target_restored"))
    assert ratios["postcopy_freeze_to_restored_vs_bare"] == pytest.approx(0.6)
    assert summary.summarise([run(bare_downtime_s=2.0, postcopy_phases={"freezing": 1.0})])["ratios"]["postcopy_freeze_to_restored_s"] is None


def test_sizes_are_shown_smallest_first_even_as_read_back_from_json():
    data = results()
    data["sizes"] = {"1024": data["sizes"]["256"], "16": data["sizes"]["16"], "256": data["sizes"]["256"]}
    assert summary.size_order(data["sizes"]) == ["16", "256", "1024"]
    header = summary.table(data).splitlines()[0]
    assert header.index("16 MiB") < header.index("256 MiB") < header.index("1024 MiB")
    rss = [t["target"] for t in summary.targets(data) if "RSS" in t["target"]]
    assert rss == ["module peak RSS <= 32 MiB (checkpoint, verify, restore at %s MiB)" % size for size in ("16", "256", "1024")]


def test_container_ratios_and_table():
    """Issue 14's rows: the module against bare Podman, per container size, the counter column first."""
    runs = [{"checkpoint_bare_s": 1.0, "checkpoint_module_s": 1.5, "restore_bare_s": 0.5, "restore_module_s": 0.75,
             "export_bytes": 3 * summary.MIB, "checkpoint_module_podman_s": 1.2},
            {"checkpoint_bare_s": 2.0, "checkpoint_module_s": 2.2, "restore_bare_s": 1.0, "restore_module_s": 1.3}]
    found = summary.summarise(runs)
    assert found["ratios"]["container_checkpoint_module_vs_bare"] == pytest.approx(1.3)  # median of 1.5 and 1.1
    assert found["ratios"]["container_restore_module_vs_bare"] == pytest.approx(1.4)
    text = summary.table({"config": {"runs": 2}, "sizes": {}, "containers": {"256": found, "0": found}})
    header = next(line for line in text.splitlines() if line.startswith("| containers, median of 2 run(s)"))
    assert header.index("counter") < header.index("256 MiB")
    row = next(line for line in text.splitlines() if line.startswith("| export size (MiB)"))
    assert row.count("3.0") == 2
    assert "| criu_restore, module (s)" in text and "1.40x" in text
    assert summary.container_lines({"config": {"runs": 1}, "containers": {}}) == []


@pytest.mark.parametrize("comm, cmdline, expected", [
    ("criu", "/usr/local/sbin/criu dump -t 42", "criu"),
    ("python", "/venv/bin/python /repo/demo/counter.py /run/x.state --mem 256", "the workload (its restored copy, its end)"),
    ("sshd", "sshd: root@notty", "ssh and sshd (cipher, both ends)"),
    ("ssh", "ssh -p 2222 root@127.0.0.3 python3 -c x", "ssh and sshd (cipher, both ends)"),
    ("ansible-playboo", "/venv/bin/python /venv/bin/ansible-playbook nucleus.criu.migrate", "Ansible controller"),
    ("python3", "/usr/bin/python3 -c import zlib", "python on the hosts (nucleus.criu, bare.py)"),
    ("conmon", "/usr/bin/conmon --api-version 1", "container engine"),
    ("tar", "tar -C /x -xf -", "tar (bare pipeline)"),
    ("kworker/u4:2", "", "kernel threads"),
    ("sleep", "sleep 1", "other"),
])
def test_machine_category(comm, cmdline, expected):
    assert summary.machine_category(comm, cmdline) == expected


def test_cpu_per_gib_rows_and_the_same_run_ratio():
    runs = [{"size_mib": 256, "run": 0, "bare_cpu_s": 2.0, "copy_cpu_s": 5.0, "bare_cpu_s_per_gib": 8.0, "copy_cpu_s_per_gib": 20.0,
             "bare_cpu_by": {"criu": 1.0, "ssh and sshd (cipher, both ends)": 1.0}, "copy_cpu_by": {"criu": 1.0, "Ansible controller": 4.0}},
            {"size_mib": 256, "run": 1, "bare_cpu_s": 2.0, "copy_cpu_s": 7.0, "bare_cpu_s_per_gib": 8.0, "copy_cpu_s_per_gib": 28.0,
             "bare_cpu_by": {"criu": 1.0}, "copy_cpu_by": {"criu": 3.0, "Ansible controller": 4.0}}]
    assert summary.per_gib(3.0, 256) == 12.0 and summary.per_gib(None, 256) is None
    found = summary.summarise(runs)
    assert found["ratios"]["cpu_copy_vs_bare"] == 3.0  # medians of 2.5x and 3.5x, each within its own run
    assert found["median"]["copy_cpu_by"] == {"criu": 2.0, "Ansible controller": 4.0}
    text = summary.table({"sizes": {"256": found}, "config": {"runs": 2, "fanout_mib": 16}, "fanout": {}})
    assert any(line.startswith("|   CPU ratio copy / bare (same run)") and "3.00x" in line for line in text.splitlines())
    block = text.splitlines()[text.splitlines().index(next(line for line in text.splitlines() if line.startswith("| migrate role, copy: CPU s per GiB"))):]
    assert any(line.startswith("| Ansible controller") and "16.00" in line for line in block), block


def _sleeper(*argv):
    import subprocess  # pylint: disable=import-outside-toplevel
    return subprocess.Popen(list(argv) or ["sleep", "30"])


def test_a_scoped_sampler_counts_only_what_its_scope_accepts():
    """--cpu-scope pair: on a shared machine only the pair's processes count, and there is no "not sampled" rest
    (the machine's busy time is everyone's)."""
    ours, theirs = _sleeper(), _sleeper()
    try:
        seen = []

        def scope(pid, command):
            seen.append(pid)
            return pid == ours.pid
        sampler = cpuprof.MachineSampler(scope).start()
        sampler.stop()
        assert ours.pid in seen and theirs.pid in seen
        assert {pid for pid, _start in sampler.last} == {ours.pid}
        assert "not sampled (short-lived, interrupts, this sampler)" not in sampler.by_category()
        assert sampler.busy_s == sum(max(0.0, cpu - sampler.first[key]) for key, (_cat, cpu) in sampler.last.items())
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


def test_pair_scope_takes_the_benchmarks_own_children_and_the_run_directory(tmp_path):
    child = _sleeper("sleep", "30")
    try:
        inside = cpuprof.pair_scope([], str(tmp_path))
        assert inside(child.pid, "sleep 30")  # a descendant of the benchmark (ansible-playbook, its ssh)
        assert inside(1, "ssh: %s/cp/abc [mux]" % tmp_path)  # Ansible's daemonized ssh master of this run
        assert not inside(1, "/sbin/init")
    finally:
        child.kill()
        child.wait()


def test_a_process_seen_before_its_exec_is_counted_as_what_it_runs(monkeypatch):
    """A fork seen by the sampler before its exec (bare.py's ssh) is counted as the program it then runs."""
    stats = {4242: ("python3", 1.0, 7)}
    lines = {4242: "/usr/bin/python3 bare.py"}
    monkeypatch.setattr(cpuprof, "read_stat", stats.get)
    monkeypatch.setattr(cpuprof, "cmdline", lambda pid: lines.get(pid, ""))
    monkeypatch.setattr(cpuprof.os, "listdir", lambda path: ["4242"])
    sampler = cpuprof.MachineSampler()
    sampler._scan(baseline=True)  # pylint: disable=protected-access
    stats[4242], lines[4242] = ("ssh", 5.0, 7), "ssh -p 2288 root@127.0.0.3"
    sampler._scan(baseline=False)  # pylint: disable=protected-access
    assert sampler.last[(4242, 7)] == ("ssh and sshd (cipher, both ends)", 5.0)


def drained(index, one, sequential, drain, downtimes=(0.5, 0.7)):
    return {"run": index, "size_mib": 256, "count": len(downtimes), "one_wall_s": one, "one_downtime_s": 0.4,
            "sequential_wall_s": sequential, "sequential_max_downtime_s": 0.6, "sequential_median_downtime_s": 0.5,
            "drain_wall_s": drain, "drain_max_downtime_s": max(downtimes),
            "drain_downtimes_s": {"w%d" % n: v for n, v in enumerate(downtimes)}, "drain_targets": {"host-2": 1, "host-3": 1},
            "drain_cpu_s": 2 * drain, "sequential_cpu_s": sequential, "drain_fleet_cpu_s": drain, "sequential_fleet_cpu_s": sequential,
            "drain_fleet_cpu_by": {"criu": 1.0, "ssh and sshd (cipher, both ends)": 2.0}, "drain_cpu_profile": None}


def test_drain_ratios_are_taken_within_each_run_and_its_median_run_is_shown_as_measured():
    runs = [drained(0, 5.0, 40.0, 20.0), drained(1, 10.0, 50.0, 30.0, (1.0, 2.0)), drained(2, 5.0, 60.0, 10.0)]
    result = summary.drain_summary(runs)
    assert result["ratios"]["drain_vs_one"] == 3.0  # median of 4.0, 3.0, 2.0, not 20.0 / 5.0
    assert result["ratios"]["drain_vs_sequential"] == 0.5  # median of 0.5, 0.6, 1/6
    assert result["ratios"]["drain_cpu_vs_sequential"] == 1.0
    assert result["ratios"]["drain_fleet_cpu_vs_sequential"] == 0.5
    assert result["ratios"]["drain_controller_cpu_vs_sequential"] is None, "not measured: None, not an error"
    assert result["median"]["drain_wall_s"] == 20.0 and "count" not in result["median"]
    assert result["median_run"] == 0 and result["drain_downtimes_s"] == {"w0": 0.5, "w1": 0.7}, "the run of the median wall time"
    assert summary.drain_summary([]) == {"median": {}, "ratios": {name: None for name in summary.DRAIN_RATIOS}}


def test_table_shows_the_drain():
    profile = summary.cpu_profile({(1, 1): ("ansible-playbook (main process)", 3.0)}, 3.0, 20.0, 30.0, 2)
    profile["what"] = "2 x 256 MiB, 5 fork(s)"
    runs = [dict(drained(0, 5.0, 40.0, 20.0), drain_cpu_profile=profile)]
    drain = dict(summary.drain_summary(runs), runs=runs,
                 config={"count": 2, "mib": 256, "parallel": 4, "parallel_from": "the role's default", "forks": 5})
    lines = summary.table(results(drain=drain)).splitlines()
    assert any(line.startswith("| drain, 2 x 256 MiB, host-1 -> host-2 + host-3") and "2 one by one" in line for line in lines)
    assert len({len(line) for line in lines if line.startswith("|")}) == 1, "every table line has the same width"
    assert any(line.startswith("| wall time, median of 1 run(s) (s)") and "5.0" in line and "40.0" in line and "20.0" in line
               for line in lines)
    assert any(line.startswith("|   ratio drain / this (same run)") and "4.00x" in line and "0.50x" in line for line in lines)
    assert "drain downtimes, run 1 (median wall time), per workload (s): 0.50 0.70 (host-2: 1, host-3: 1)" in lines
    assert any(line.startswith("controller CPU, drain (2 x 256 MiB, 5 fork(s)): wall 20.0 s") for line in lines)
    assert any(line.startswith("| CPU of the 3 hosts and the controller (CPU s)") and "20.0" in line for line in lines)
    by_process = lines.index("CPU of the 3 hosts and the controller, drain, run 1, by process:")
    assert lines[by_process + 1].split() == ["ssh", "and", "sshd", "(cipher,", "both", "ends)", "2.00", "CPU", "s"], "largest first"
    assert not summary.drain_lines(results()), "no drain row measured, no drain table"
