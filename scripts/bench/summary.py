# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark's arithmetic: medians, same-run ratios, journal phases, CPU shares, targets and the table.

Pure functions of the numbers the runs produced (no processes, no files, no clock), so that
tests/unit/test_bench.py can check them without root or CRIU.
"""

from __future__ import annotations

import datetime
import statistics
import typing as t

MIB = 1024 * 1024
Run = t.Dict[str, t.Any]


def median(values: t.Iterable[t.Optional[float]]) -> t.Optional[float]:
    """Median of the values that were measured (None: a step this run skipped)."""
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def rotate(items: t.Sequence[t.Any], index: int) -> t.List[t.Any]:
    """``items`` starting at position ``index`` (mod len): run N measures the variants in this order."""
    if not items:
        return []
    shift = index % len(items)
    return list(items[shift:]) + list(items[:shift])


RESTORE_OVERHEAD_S = 0.3  # module start-up a restore may add on top of criu and verification (issue 13)

# Every ratio is computed within one run (both sides measured back to back), then the median of those is reported.
RATIOS: t.Dict[str, t.Callable[[Run], float]] = {
    "checkpoint_module_vs_raw": lambda r: r["checkpoint_module_s"] / r["dump_raw_s"],
    "checkpoint_module_vs_raw_fsync": lambda r: r["checkpoint_module_s"] / r["dump_raw_fsync_s"],
    "checkpoint_adhoc_vs_raw": lambda r: r["checkpoint_adhoc_s"] / r["dump_raw_s"],
    "restore_module_vs_raw": lambda r: r["restore_module_s"] / r["restore_raw_s"],
    "restore_adhoc_vs_raw": lambda r: r["restore_adhoc_s"] / r["restore_raw_s"],
    # Issue 13's restore bound as a ratio: what the module adds beyond its own verification and start-up, per raw.
    "restore_beyond_verify_vs_raw":
        lambda r: (r["restore_module_s"] - r["restore_module_verify_s"] - RESTORE_OVERHEAD_S) / r["restore_raw_s"],
    "verify_vs_cores_sha256": lambda r: r["verify_module_mibps"] / (r["cores"] * r["sha256_1core_mibps"]),
    "downtime_copy_vs_bare": lambda r: r["copy_downtime_s"] / r["bare_downtime_s"],
    # Issue 26: CPU of the whole machine (both hosts and the controller) while the migration ran, role against bare.
    "cpu_copy_vs_bare": lambda r: r["copy_cpu_s"] / r["bare_cpu_s"],
    "cpu_postcopy_vs_bare": lambda r: r["postcopy_cpu_s"] / r["bare_cpu_s"],
    "downtime_copy_minus_bare_s": lambda r: r["copy_downtime_s"] - r["bare_downtime_s"],
    "downtime_postcopy_vs_bare": lambda r: r["postcopy_downtime_s"] / r["bare_downtime_s"],
    "downtime_postcopy_minus_bare_s": lambda r: r["postcopy_downtime_s"] - r["bare_downtime_s"],
    # Post-copy's copy runs from its restore on: the source journal's freeze -> target_restored (its phase history).
    "postcopy_freeze_to_restored_s": lambda r: r["postcopy_phases"]["freezing"] + r["postcopy_phases"]["frozen"],
    "postcopy_freeze_to_restored_vs_bare": lambda r: (r["postcopy_phases"]["freezing"] + r["postcopy_phases"]["frozen"]) / r["bare_downtime_s"],
    # Containers (issue 14): the module against bare Podman on the same container size.
    "container_checkpoint_module_vs_bare": lambda r: r["checkpoint_module_s"] / r["checkpoint_bare_s"],
    "container_restore_module_vs_bare": lambda r: r["restore_module_s"] / r["restore_bare_s"],
    "container_migrate_module_vs_bare": lambda r: r["migrate_module_downtime_s"] / r["migrate_bare_downtime_s"],
}
# Fields of a run that are {label: seconds}: their medians are taken label by label.
PHASE_FIELDS = ("copy_phases", "postcopy_phases")
CPU_FIELDS = ("bare_cpu_by", "copy_cpu_by", "postcopy_cpu_by")


def ratio_or_none(ratio: t.Callable[[Run], float], run: Run) -> t.Optional[float]:
    """A ratio of this run, or None when the run lacks one side of it (--local-only) or a side is 0 or None."""
    try:
        return ratio(run)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def numeric(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def medians_and_ratios(runs: t.Sequence[Run], ratios: t.Mapping[str, t.Callable[[Run], float]],
                       labels: t.AbstractSet[str]) -> t.Dict[str, t.Any]:
    """The median of every number the runs measured (``labels`` aside: what names a run, not a measure) and the
    median of each same-run ratio."""
    keys = sorted({k for r in runs for k, v in r.items() if numeric(v)} - set(labels))
    return {"median": {k: median(r.get(k) for r in runs) for k in keys},
            "ratios": {name: median(ratio_or_none(ratio, r) for r in runs) for name, ratio in ratios.items()}}


def summarise(runs: t.Sequence[Run]) -> t.Dict[str, t.Any]:
    """Medians of every number the runs measured, the median of each same-run ratio, and per-phase medians."""
    summary = medians_and_ratios(runs, RATIOS, {"run", "size_mib"})
    for field in PHASE_FIELDS + CPU_FIELDS:
        labels: t.List[str] = []
        for run in runs:
            labels += [label for label in run.get(field) or {} if label not in labels]
        summary["median"][field] = {label: median((r.get(field) or {}).get(label) for r in runs) for label in labels}
    return summary


def parse_utc(stamp: str) -> datetime.datetime:
    """The journals' timestamps: UTC ISO 8601 with microseconds, e.g. 2026-11-30T09:41:58.123456Z."""
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")


def phase_durations(history: t.Sequence[t.Mapping[str, str]]) -> t.Dict[str, float]:
    """Seconds spent in each phase of a journal's history (a phase lasts until the next entry; a phase recorded
    twice in a row, e.g. "frozen" after the dump and again after the transfer, adds up), in order of first
    appearance. The last entry has no duration."""
    spent: t.Dict[str, float] = {}
    for entry, following in zip(history, history[1:]):
        seconds = (parse_utc(following["at"]) - parse_utc(entry["at"])).total_seconds()
        spent[entry["phase"]] = spent.get(entry["phase"], 0.0) + seconds
    return spent


def between(history: t.Sequence[t.Mapping[str, str]], start: str, end: str) -> t.Optional[float]:
    """Seconds from the first entry of phase ``start`` to the first entry of phase ``end`` after it (None if either
    is missing)."""
    begun = next((parse_utc(e["at"]) for e in history if e["phase"] == start), None)
    if begun is None:
        return None
    ended = next((parse_utc(e["at"]) for e in history if e["phase"] == end and parse_utc(e["at"]) >= begun), None)
    return None if ended is None else (ended - begun).total_seconds()


def fanout_summary(runs: t.Sequence[Run], base: int, wide: int) -> t.Dict[str, t.Any]:
    """Runs of one playbook with ``base`` and with ``wide`` workloads (each run: count, run, wall_s, ...): median wall
    time per count, and the median of wall(wide) / wall(base) within each run index."""
    by_count: t.Dict[int, t.Dict[int, Run]] = {}
    for run in runs:
        by_count.setdefault(run["count"], {})[run["run"]] = run
    out: t.Dict[str, t.Any] = {}
    for count, indexed in sorted(by_count.items()):
        out[str(count)] = {"median_wall_s": median(r.get("wall_s") for r in indexed.values()),
                           "median_max_downtime_s": median(max(r["downtimes_s"]) if r.get("downtimes_s") else None
                                                           for r in indexed.values())}
    pairs = [(by_count.get(wide, {}).get(i), by_count.get(base, {}).get(i)) for i in sorted(by_count.get(wide, {}))]
    out["ratio"] = median(w["wall_s"] / b["wall_s"] for w, b in pairs if w and b and w.get("wall_s") and b.get("wall_s"))
    out["base"], out["wide"] = base, wide
    return out


# --- the drain (issue 25) ----------------------------------------------------------------------------------

# Each within one run (the three variants back to back, their order rotated), then the median.
DRAIN_RATIOS: t.Dict[str, t.Callable[[Run], float]] = {
    "drain_vs_one": lambda r: r["drain_wall_s"] / r["one_wall_s"],
    "drain_vs_sequential": lambda r: r["drain_wall_s"] / r["sequential_wall_s"],
    "sequential_vs_one": lambda r: r["sequential_wall_s"] / r["one_wall_s"],
    "drain_cpu_vs_sequential": lambda r: r["drain_cpu_s"] / r["sequential_cpu_s"],
    "drain_fleet_cpu_vs_sequential": lambda r: r["drain_fleet_cpu_s"] / r["sequential_fleet_cpu_s"],
    "drain_controller_cpu_vs_sequential": lambda r: r["drain_controller_cpu_s"] / r["sequential_controller_cpu_s"],
}


def drain_summary(runs: t.Sequence[Run]) -> t.Dict[str, t.Any]:
    """Medians of the drain rows' numbers, the medians of their same-run ratios, and the run whose drain wall time
    is the median one (the later of two): its per-workload downtimes, targets and CPU profile are shown as measured,
    not as medians of figures from different runs."""
    out = medians_and_ratios(runs, DRAIN_RATIOS, {"run", "size_mib", "count"})
    timed = sorted((r for r in runs if r.get("drain_wall_s") is not None), key=lambda r: r["drain_wall_s"])
    if timed:
        middle = timed[len(timed) // 2]
        out["median_run"] = middle["run"]
        for key in ("drain_downtimes_s", "drain_targets", "drain_cpu_profile", "drain_fleet_cpu_by"):
            out[key] = middle.get(key)
    return out


def drain_lines(results: t.Mapping[str, t.Any]) -> t.List[str]:
    """The drain table: wall time of one migration, of the same workloads one after another and of the drain, the
    drain's ratios to both, downtimes, CPU; then the median run's per-workload downtimes and its CPU profile."""
    data = results.get("drain")
    if not data:
        return []
    config = data["config"]
    medians, ratios = data["median"], data["ratios"]

    def three(key: str, spec: str = "%.1f") -> t.List[str]:
        return [fmt(medians.get("%s_%s" % (variant, key)), spec) for variant in ("one", "sequential", "drain")]

    count = config["count"]
    lines = ["", _row("drain, %d x %d MiB, host-1 -> host-2 + host-3" % (count, config["mib"]),
                      ["1 migration", "%d one by one" % count, "drain of %d" % count]), _rule(3),
             _row("wall time, median of %d run(s) (s)" % len(data["runs"]), three("wall_s")),
             _row("  ratio drain / this (same run)", [fmt(ratios.get("drain_vs_one"), "%.2fx"),
                                                      fmt(ratios.get("drain_vs_sequential"), "%.2fx"), ""]),
             _row("longest downtime (s)", [fmt(medians.get("one_downtime_s"))] + three("max_downtime_s", "%.3f")[1:]),
             _row("median downtime (s)", [fmt(medians.get("one_downtime_s"))] + three("median_downtime_s", "%.3f")[1:]),
             _row("CPU of the 3 hosts and the controller (CPU s)", three("fleet_cpu_s")),
             _row("  of which the controller (CPU s)", three("controller_cpu_s")),
             _row("  ratio drain / this (same run)", ["", fmt(ratios.get("drain_fleet_cpu_vs_sequential"), "%.2fx"), ""]),
             _row("whole machine busy, others' too (CPU s)", three("cpu_s"))]
    lines.append("drain_parallel %s (%s), Ansible forks %s; one after another: one migrate playbook per workload, "
                 "onto host-2 and host-3 in turn" % (config["parallel"], config["parallel_from"], config["forks"]))
    if data.get("drain_downtimes_s"):
        targets = ", ".join("%s: %d" % item for item in sorted((data.get("drain_targets") or {}).items()))
        lines.append("drain downtimes, run %d (median wall time), per workload (s): %s (%s)" % (
            data["median_run"] + 1, " ".join("%.2f" % v for v in data["drain_downtimes_s"].values()), targets))
    if data.get("drain_cpu_profile"):
        lines += [""] + profile_lines("controller CPU, drain (%s)" % data["drain_cpu_profile"]["what"], data["drain_cpu_profile"])
    if data.get("drain_fleet_cpu_by"):
        lines += ["", "CPU of the 3 hosts and the controller, drain, run %d, by process:" % (data["median_run"] + 1)]
        lines += ["    %-52s %6.2f CPU s" % item for item in sorted(data["drain_fleet_cpu_by"].items(), key=lambda item: -item[1])]
    return lines


# --- where the controller's CPU goes ---------------------------------------------------------------------

def cpu_category(pid: int, root: int, comm: str, cmdline: str) -> str:
    """What a process under ansible-playbook is, for the CPU profile."""
    if pid == root:
        return "ansible-playbook (main process)"
    if comm == "ssh":
        return "ssh clients"
    if "ansible-playbook" in cmdline or comm.startswith("ansible-playboo"):
        return "ansible-playbook workers (forks)"
    if "python" in comm or "python" in cmdline.split(" ", 1)[0]:
        return "python (local modules, interpreter probes)"
    return "other (%s)" % comm


def machine_category(comm: str, cmdline: str) -> str:
    """What a process anywhere on the machine is, for the CPU a migration costs on both hosts and the controller
    (they share this machine): criu, the ssh cipher on either end, Ansible's controller, our own Python on the hosts
    (the module, the driver and worker, the target's agent: hashing, framing, the journal), a container engine."""
    if comm == "criu":
        return "criu"
    if "demo/counter.py" in cmdline:
        return "the workload (its restored copy, its end)"
    if comm in ("ssh", "sshd") or comm.startswith("sshd"):
        return "ssh and sshd (cipher, both ends)"
    if "ansible-playbook" in cmdline or comm.startswith("ansible-playboo"):
        return "Ansible controller"
    if comm in ("podman", "conmon", "runc", "crun"):
        return "container engine"
    if "python" in comm or "python" in cmdline.split(" ", 1)[0]:
        return "python on the hosts (nucleus.criu, bare.py)"
    if comm == "tar":
        return "tar (bare pipeline)"
    if comm.startswith(("kworker", "ksoftirqd", "kswapd", "rcu_", "migration/")):
        return "kernel threads"
    return "other"


def per_gib(cpu_s: t.Optional[float], mib: int) -> t.Optional[float]:
    """CPU seconds per GiB of workload memory migrated."""
    return None if cpu_s is None or not mib else cpu_s / (mib / 1024.0)


def cpu_profile(seen: t.Mapping[t.Any, t.Tuple[str, float]], total_cpu_s: float, wall_s: float,
                machine_busy_s: t.Optional[float], cores: int) -> t.Dict[str, t.Any]:
    """Aggregate the last CPU time seen of each sampled process (key -> (category, seconds)) by category. The
    rusage total of the whole tree covers processes too short-lived to be sampled: the rest is theirs."""
    by_category: t.Dict[str, float] = {}
    for category, seconds in seen.values():
        by_category[category] = by_category.get(category, 0.0) + seconds
    sampled = sum(by_category.values())
    if total_cpu_s > sampled:
        by_category["short-lived, not sampled"] = total_cpu_s - sampled
    return {
        "wall_s": wall_s,
        "controller_cpu_s": total_cpu_s,
        "controller_cores_busy": total_cpu_s / wall_s if wall_s else None,
        "machine_busy_s": machine_busy_s,
        "machine_busy_fraction": machine_busy_s / (wall_s * cores) if machine_busy_s is not None and wall_s and cores else None,
        "controller_share_of_machine": total_cpu_s / machine_busy_s if machine_busy_s else None,
        "by_category_s": dict(sorted(by_category.items(), key=lambda item: -item[1])),
    }


def profile_lines(title: str, profile: t.Mapping[str, t.Any]) -> t.List[str]:
    lines = ["%s: wall %.1f s; controller (ansible-playbook and everything it started) %.1f CPU s = %.2f cores busy%s" % (
        title, profile["wall_s"], profile["controller_cpu_s"], profile["controller_cores_busy"] or 0,
        "" if profile.get("machine_busy_s") is None else "; whole machine %.1f CPU s (%.0f%% of its cores), the controller %.0f%% of it" % (
            profile["machine_busy_s"], 100 * (profile["machine_busy_fraction"] or 0), 100 * (profile["controller_share_of_machine"] or 0)))]
    for category, seconds in profile["by_category_s"].items():
        lines.append("    %-44s %6.2f CPU s" % (category, seconds))
    return lines


# --- targets and the table -------------------------------------------------------------------------------

def targets(results: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    """Issues 10 and 13's targets, judged on this run's same-run ratios: the checkpoint, verify and copy-downtime
    ratios at every size of 256 MiB and more, the restore and post-copy bounds at the largest size."""
    sizes = results["sizes"]
    found: t.List[t.Dict[str, t.Any]] = []
    if not sizes:
        return found
    big = str(max(int(s) for s in sizes))

    def add(name: str, measured: t.Optional[float], limit: float, unit: str = "x", at_least: bool = False) -> None:
        if measured is not None:
            met = measured >= limit if at_least else measured <= limit
            found.append({"target": name, "measured": measured, "limit": limit, "unit": unit, "met": met})

    large = [size for size in size_order(sizes) if int(size) >= 256] or [big]
    for size in large:
        ratios = sizes[size]["ratios"]
        add("durable checkpoint <= 1.15x (raw dump + fsync) at %s MiB" % size,
            ratios.get("checkpoint_module_vs_raw_fsync"), 1.15)
        add("sha256 verify >= 0.8x (cores x one-core hashlib) at %s MiB" % size,
            ratios.get("verify_vs_cores_sha256"), 0.8, at_least=True)
        add("copy migration downtime <= 1.2x bare at %s MiB" % size, ratios.get("downtime_copy_vs_bare"), 1.2)
    add("restore <= 1.2x raw + its verification + %.1f s at %s MiB" % (RESTORE_OVERHEAD_S, big),
        sizes[big]["ratios"].get("restore_beyond_verify_vs_raw"), 1.2)
    add("postcopy downtime <= 0.5 s at %s MiB" % big, sizes[big]["median"].get("postcopy_downtime_s"), 0.5, "s")
    listed = results.get("fanout", {}).get("list")
    if listed:
        add("%d parallel migrations <= 1.5x one (list form, one pair)" % listed["wide"], listed.get("ratio"), 1.5)
    pairs = results.get("fanout", {}).get("pairs")
    if pairs:
        add("%d pairs (%d hosts) migrating at once <= 3x one pair" % (pairs["wide"], 2 * pairs["wide"]),
            pairs.get("ratio"), 3.0)
    for size in size_order(sizes):
        medians = sizes[size]["median"]
        rss = [medians.get(k) for k in ("checkpoint_module_rss_kib", "verify_module_rss_kib", "restore_module_rss_kib")]
        peak = max((v for v in rss if v is not None), default=None)
        add("module peak RSS <= 32 MiB (checkpoint, verify, restore at %s MiB)" % size,
            None if peak is None else peak / 1024, 32, "MiB")
    return found


def size_order(sizes: t.Iterable[str]) -> t.List[str]:
    """Sizes (MiB, as JSON keys) smallest first: a JSON file read back has them sorted as strings."""
    return sorted(sizes, key=int)


def fmt(value: t.Optional[float], spec: str = "%.3f") -> str:
    return "-" if value is None else spec % value


def _scaled(value: t.Optional[float], divisor: float, spec: str) -> str:
    return fmt(None if value is None else value / divisor, spec)


LABEL_WIDTH = 50
CELL_WIDTH = 16


def _row(label: str, cells: t.Sequence[str]) -> str:
    return "| %-*s | " % (LABEL_WIDTH, label) + " | ".join("%*s" % (CELL_WIDTH, c) for c in cells) + " |"


def _rule(columns: int) -> str:
    return "|" + "-" * (LABEL_WIDTH + 2) + "|" + "|".join(["-" * (CELL_WIDTH + 2)] * columns) + "|"


Cell = t.Callable[[t.Mapping[str, t.Any]], str]


def median_cell(key: str, spec: str = "%.3f") -> Cell:
    """A cell showing the median of ``key``."""
    return lambda s: fmt(s["median"].get(key), spec)


def ratio_cell(key: str, spec: str = "%.2fx") -> Cell:
    """A cell showing the median same-run ratio ``key``."""
    return lambda s: fmt(s["ratios"].get(key), spec)


def rss_cell(key: str) -> Cell:
    """A cell showing a peak RSS measured in KiB, in MiB."""
    return lambda s: _scaled(s["median"].get(key), 1024, "%.1f")


def size_rows() -> t.List[t.Tuple[str, Cell]]:
    """(label, cell of one size's summary) for the per-size table."""
    def several(keys: t.Sequence[str], spec: str = "%.2f") -> Cell:
        return lambda s: "/".join(fmt(s["median"].get(k), spec) for k in keys)

    return [
        ("image size (MiB)", lambda s: _scaled(s["median"].get("image_bytes"), MIB, "%.1f")),
        ("raw criu dump (s)", median_cell("dump_raw_s")),
        ("raw criu dump + fsync of its images (s)", median_cell("dump_raw_fsync_s")),
        ("  of which fsync (s)", median_cell("dump_raw_fsync_fsync_s")),
        ("criu_checkpoint, module (s)", median_cell("checkpoint_module_s")),
        ("  its criu dump phase (stats.dump_seconds)", median_cell("checkpoint_module_dump_s")),
        ("criu_checkpoint, ad-hoc task (s)", median_cell("checkpoint_adhoc_s")),
        ("  ratio module / raw dump", ratio_cell("checkpoint_module_vs_raw")),
        ("  ratio module / (raw dump + fsync)", ratio_cell("checkpoint_module_vs_raw_fsync")),
        ("  ratio ad-hoc / raw dump", ratio_cell("checkpoint_adhoc_vs_raw")),
        ("raw criu restore (s)", median_cell("restore_raw_s")),
        ("criu_restore, module (s)", median_cell("restore_module_s")),
        ("  its criu restore phase (stats.restore_seconds)", median_cell("restore_module_criu_s")),
        ("criu_restore, ad-hoc task (s)", median_cell("restore_adhoc_s")),
        ("  its verification (stats.verify_seconds)", median_cell("restore_module_verify_s")),
        ("  ratio module / raw restore", ratio_cell("restore_module_vs_raw")),
        ("  ratio (module - its verification - 0.3 s) / raw", ratio_cell("restore_beyond_verify_vs_raw")),
        ("  ratio ad-hoc / raw restore", ratio_cell("restore_adhoc_vs_raw")),
        ("criu_verify, module (s)", median_cell("verify_module_s")),
        ("criu_verify, module (MiB/s)", median_cell("verify_module_mibps", "%.0f")),
        ("sha256, one core, hashlib (MiB/s)", median_cell("sha256_1core_mibps", "%.0f")),
        ("cores", median_cell("cores", "%.0f")),
        ("  ratio verify / (cores x one core)", ratio_cell("verify_vs_cores_sha256")),
        ("criu_verify, ad-hoc task (s)", median_cell("verify_adhoc_s")),
        ("peak RSS, checkpoint module (MiB)", rss_cell("checkpoint_module_rss_kib")),
        ("peak RSS, restore module (MiB)", rss_cell("restore_module_rss_kib")),
        ("peak RSS, verify module (MiB)", rss_cell("verify_module_rss_kib")),
        ("migration downtime, bare pipeline (s)", median_cell("bare_downtime_s")),
        ("  bare: dump / transfer / restore (s)", several(("bare_dump_s", "bare_transfer_s", "bare_restore_s"))),
        ("migration downtime, migrate role, copy (s)", median_cell("copy_downtime_s")),
        ("  ratio copy / bare", ratio_cell("downtime_copy_vs_bare")),
        ("  copy - bare (s)", ratio_cell("downtime_copy_minus_bare_s", "%+.2f")),
        ("  copy: dump / frozen->target restored (s)", several(("copy_dump_s", "copy_frozen_to_restored_s"))),
        ("  copy playbook wall time (s)", median_cell("copy_playbook_s", "%.1f")),
        ("migration downtime, migrate role, postcopy (s)", median_cell("postcopy_downtime_s")),
        ("  ratio postcopy / bare", ratio_cell("downtime_postcopy_vs_bare")),
        ("  postcopy - bare (s)", ratio_cell("downtime_postcopy_minus_bare_s", "%+.2f")),
        ("  freeze -> target restored, running (history, s)", ratio_cell("postcopy_freeze_to_restored_s", "%.3f")),
        ("  ratio (freeze -> restored) / bare", ratio_cell("postcopy_freeze_to_restored_vs_bare")),
        ("  pages fetched after the restore (s)", median_cell("postcopy_pages_s")),
        ("  postcopy playbook wall time (s)", median_cell("postcopy_playbook_s", "%.1f")),
        ("machine CPU per GiB, bare pipeline (CPU s)", median_cell("bare_cpu_s_per_gib", "%.2f")),
        ("machine CPU per GiB, migrate role, copy (CPU s)", median_cell("copy_cpu_s_per_gib", "%.2f")),
        ("  CPU ratio copy / bare (same run)", ratio_cell("cpu_copy_vs_bare")),
        ("machine CPU per GiB, migrate role, postcopy (CPU s)", median_cell("postcopy_cpu_s_per_gib", "%.2f")),
        ("  CPU ratio postcopy / bare (same run)", ratio_cell("cpu_postcopy_vs_bare")),
    ]


# The source journal's phases in protocol order, with what each one's time is spent on (until the next phase).
PHASES = [
    ("prepared", "before the freeze: driver, ssh"),
    ("freezing", "criu dump, images streamed"),
    ("frozen", "rest sent, target verifies, restores"),
    ("target_restored", "until pages are in / decision"),
    ("pages_complete", "until the decision"),
    ("committed", "until the target's copy runs"),
]


def phase_lines(results: t.Mapping[str, t.Any]) -> t.List[str]:
    """Median seconds per phase of the source's journal, copy and post-copy, one column per size."""
    sizes = results["sizes"]
    cols = size_order(sizes)
    lines: t.List[str] = []
    for mode in ("copy", "postcopy"):
        field = "%s_phases" % mode
        labels: t.List[str] = []
        for col in cols:
            labels += [label for label in sizes[col]["median"].get(field) or {} if label not in labels]
        if not labels:
            continue
        known = [name for name, _note in PHASES]
        labels.sort(key=lambda label: (known.index(label) if label in known else len(known), label))
        notes = dict(PHASES)
        lines += ["", _row("%s: source journal, median s per phase" % mode, ["%s MiB" % c for c in cols]), _rule(len(cols))]
        for label in labels:
            note = notes.get(label)
            lines.append(_row(("%s: %s" % (label, note) if note else label)[:LABEL_WIDTH],
                              [fmt((sizes[c]["median"].get(field) or {}).get(label)) for c in cols]))
    return lines


def cpu_lines(results: t.Mapping[str, t.Any]) -> t.List[str]:
    """Median machine CPU seconds per migrated GiB by category, bare pipeline and role, one column per size."""
    sizes = results["sizes"]
    cols = size_order(sizes)
    lines: t.List[str] = []
    for variant in ("bare", "copy", "postcopy"):
        field = "%s_cpu_by" % variant
        labels: t.List[str] = []
        for col in cols:
            labels += [label for label in sizes[col]["median"].get(field) or {} if label not in labels]
        if not labels:
            continue
        title = "bare pipeline" if variant == "bare" else "migrate role, %s" % variant
        lines += ["", _row("%s: CPU s per GiB, by process" % title, ["%s MiB" % c for c in cols]), _rule(len(cols))]
        for label in sorted(labels):
            lines.append(_row(label[:LABEL_WIDTH], [fmt(per_gib((sizes[c]["median"].get(field) or {}).get(label), int(c)), "%.2f")
                                                    for c in cols]))
    return lines


def container_rows() -> t.List[t.Tuple[str, Cell]]:
    """(label, cell of one container size's summary) for the container table."""
    return [
        ("export size (MiB)", lambda s: _scaled(s["median"].get("export_bytes"), MIB, "%.1f")),
        ("podman container checkpoint --export (s)", median_cell("checkpoint_bare_s")),
        ("criu_checkpoint, module (s)", median_cell("checkpoint_module_s")),
        ("  its podman checkpoint (stats.dump_seconds)", median_cell("checkpoint_module_podman_s")),
        ("  ratio module / bare", ratio_cell("container_checkpoint_module_vs_bare")),
        ("podman container restore --import (s)", median_cell("restore_bare_s")),
        ("criu_restore, module (s)", median_cell("restore_module_s")),
        ("  its verification (stats.verify_seconds)", median_cell("restore_module_verify_s")),
        ("  its podman restore (stats.restore_seconds)", median_cell("restore_module_podman_s")),
        ("  ratio module / bare", ratio_cell("container_restore_module_vs_bare")),
        ("migration downtime, bare podman over ssh (s)", median_cell("migrate_bare_downtime_s")),
        ("  its checkpoint / transfer / restore (s)", lambda s: "/".join(fmt(s["median"].get(k), "%.2f") for k in (
            "migrate_bare_checkpoint_s", "migrate_bare_transfer_s", "migrate_bare_restore_s"))),
        ("migration downtime, migrate role (s)", median_cell("migrate_module_downtime_s")),
        ("  its podman checkpoint (journal dump_seconds)", median_cell("migrate_module_checkpoint_s")),
        ("  ratio module / bare", ratio_cell("container_migrate_module_vs_bare")),
        ("peak RSS, checkpoint module (MiB)", rss_cell("checkpoint_module_rss_kib")),
        ("peak RSS, restore module (MiB)", rss_cell("restore_module_rss_kib")),
    ]


def container_lines(results: t.Mapping[str, t.Any]) -> t.List[str]:
    """The container table (issue 14): bare Podman against the modules, per container size (0: the small counter)."""
    found = results.get("containers") or {}
    if not found:
        return []
    cols = size_order(found)
    lines = ["", _row("containers, median of %d run(s)" % results["config"]["runs"],
                      ["counter" if c == "0" else "%s MiB" % c for c in cols]), _rule(len(cols))]
    return lines + [_row(label, [cell(found[c]) for c in cols]) for label, cell in container_rows()]


def table(results: t.Mapping[str, t.Any]) -> str:
    """The per-size table, the fan-out table, the CPU profiles and the targets, as printed and pasted in the docs."""
    lines: t.List[str] = []
    sizes = results["sizes"]
    cols = size_order(sizes)
    if cols:
        lines += [_row("median of %d run(s)" % results["config"]["runs"], ["%s MiB" % c for c in cols]), _rule(len(cols))]
        for label, cell in size_rows():
            cells = [cell(sizes[c]) for c in cols]
            if any(c not in ("-", "-/-", "-/-/-") for c in cells):
                lines.append(_row(label, cells))
    lines += phase_lines(results)
    lines += cpu_lines(results)
    fanout = results.get("fanout") or {}
    titles = {"list": "list form, one pair (host-a -> host-b)", "pairs": "one workload per pair of hosts"}
    for kind in ("list", "pairs"):
        data = fanout.get(kind)
        if not data:
            continue
        base, wide = str(data["base"]), str(data["wide"])
        unit = "pair" if kind == "pairs" else "workload"
        heading = ["%s %s%s" % (base, unit, "s" if base != "1" else ""), "%s %ss" % (wide, unit), "%s / %s" % (wide, base)]
        walls = [fmt(data.get(base, {}).get("median_wall_s"), "%.1f"), fmt(data.get(wide, {}).get("median_wall_s"), "%.1f"),
                 fmt(data.get("ratio"), "%.2fx")]
        downtimes = [fmt(data.get(base, {}).get("median_max_downtime_s")), fmt(data.get(wide, {}).get("median_max_downtime_s")), ""]
        lines += ["", _row("fan-out, %s MiB each: playbook wall time (s)" % results["config"]["fanout_mib"], heading), _rule(3),
                  _row(titles[kind], walls), _row("  longest downtime of the run (s)", downtimes)]
    for kind in ("list", "pairs"):
        profile = (fanout.get(kind) or {}).get("cpu_profile")
        if profile:
            lines += [""] + profile_lines("controller CPU, %s (%s)" % (titles[kind], profile["what"]), profile)
    lines += drain_lines(results)
    lines += container_lines(results)
    if results.get("targets"):
        lines += ["", "targets (issues 10 and 13):"]
        for target in results["targets"]:
            unit = target["unit"]
            measured = fmt(target["measured"], "%.2f" + ("" if unit == "x" else " ") + unit)
            lines.append("  %-9s %-66s measured %s" % ("[met]" if target["met"] else "[NOT met]", target["target"], measured))
    return "\n".join(lines)
