# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""criu_drain_facts: what a drain's placement needs to know of a host, read before anything freezes.

On the source, every workload asked for (given, or discovered: pidfiles by glob, Podman containers by label, systemd
services by pattern) with its memory, whether it can be checkpointed here (reported, never attempted) and what an
earlier migration of the same name left (its journal). On a target, its capacity (MemAvailable less a reserve, capped)
and its features. Reading only: nothing on either host changes.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _podman as podman
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _unit as unit_kind
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migration_status as status
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import DriverLock, Journal
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils._requests import DrainFactsRequest, WorkloadRef

MIB = 1048576
MEMINFO = "/proc/meminfo"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
REF_KEYS = ("pid", "pidfile", "container", "unit")
JOURNAL_SUFFIX = ".journal.json"
UNFINISHED = "unfinished migration"


def mem_available() -> int:
    """MemAvailable of /proc/meminfo, in bytes: what the kernel estimates can be given out without swapping."""
    with open(MEMINFO) as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise CriuError("%s has no MemAvailable line: this kernel is too old to estimate free memory." % MEMINFO, path=MEMINFO)


def migration_name(text: str) -> str:
    """A discovered workload's migration name: its pidfile's, container's or unit's name, made a valid one (the same on
    every run, so that a rerun finds the journal of the same migration)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip("._-")[:100]
    return name or "workload"


def _discover(request: DrainFactsRequest) -> t.List[t.Dict[str, t.Any]]:
    """The workloads asked for: the given ones first, then the discovered ones (each once, by what names it)."""
    items: t.List[t.Dict[str, t.Any]] = []
    for given in request.workloads or []:
        named = [key for key in REF_KEYS if given.get(key)]
        if len(named) != 1 or not NAME.match(str(given.get("name") or "")):
            raise CriuError("Each workload needs a name (1-100 letters, digits, . _ -) and exactly one of pid, pidfile, "
                            "container or unit; got %s." % json.dumps(given, sort_keys=True))
        items.append(dict({key: given[key] for key in named}, name=given["name"], mode=given.get("mode") or request.mode,
                          found_by="given"))
    discover = request.discover or {}
    for pattern in discover.get("pidfiles") or []:
        for path in sorted(glob.glob(pattern)):
            base = os.path.basename(path)
            items.append({"pidfile": path, "name": migration_name(base[:-4] if base.endswith(".pid") else base),
                          "mode": request.mode, "found_by": "pidfile %s" % pattern})
    labels = discover.get("container_labels") or []
    if labels:
        engine = podman.Podman.load(request.timeout)
        for label in labels:
            output, _seconds = podman.run([engine.path, "ps", "--filter", "label=%s" % label, "--format", "{{.Names}}"],
                                          request.timeout)
            for name in sorted(output.split()):
                items.append({"container": name, "name": migration_name(name), "mode": request.mode,
                              "found_by": "label %s" % label})
    patterns = discover.get("units") or []
    if patterns:
        listed = unit_kind.systemctl("list-units", "--type=service", "--state=running", "--plain", "--no-legend",
                                     "--no-pager", timeout=request.timeout).stdout
        running = sorted(line.split()[0] for line in listed.splitlines() if line.strip())
        for pattern in patterns:
            for name in running:
                if _matches_unit(name, pattern):
                    items.append({"unit": name, "name": migration_name(name[:-8] if name.endswith(".service") else name),
                                  "mode": request.mode, "found_by": "unit %s" % pattern})
    journals = _source_journals(request.migrate_dir)
    items.extend(_unfinished(journals, request.mode))
    items.extend(_moved_earlier(journals, labels, patterns, request.mode))
    unique: t.List[t.Dict[str, t.Any]] = []
    seen_refs: t.Dict[t.Tuple[str, t.Any], str] = {}
    seen_names: t.Dict[str, t.Dict[str, t.Any]] = {}
    for item in items:
        ref = next((key, item[key]) for key in REF_KEYS if key in item)
        if ref in seen_refs or (item.get("journaled") and item["name"] in seen_names):
            continue  # given and discovered, or discovered twice: the first one names it
        if item["name"] in seen_names:
            if item["found_by"] == "given":
                raise CriuError("Two workloads are named %s: give each its own name." % item["name"])
            item = dict(item, problem="its name %s is taken by another workload (%s): give it in workloads with a name of "
                                      "its own" % (item["name"], seen_names[item["name"]]["found_by"]))
            item["name"] = "%s-%s" % (item["name"], len(unique))
        seen_refs[ref] = item["name"]
        seen_names[item["name"]] = item
        unique.append(item)
    return unique


def _source_journals(migrate_dir: str) -> t.List[t.Tuple[str, t.Dict[str, t.Any]]]:
    """Every migration from this host its journals record, by name (a damaged journal is left to its own name's facts,
    _journal, when a workload of that name comes up)."""
    opened = store.open_existing_dir(migrate_dir, "Migration directory")
    if opened is None:
        return []
    dir_fd, real = opened
    found = []
    try:
        for entry in sorted(os.listdir(dir_fd)):
            name = entry[:-len(JOURNAL_SUFFIX)]
            if not entry.endswith(JOURNAL_SUFFIX) or not NAME.match(name):
                continue
            try:
                journal = Journal.load(dir_fd, real, name)
            except CriuError:
                continue
            if journal is not None and journal.data.get("role") == "source":
                found.append((name, journal.data))
    finally:
        os.close(dir_fd)
    return found


def _recorded_ref(data: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The workload a source journal records, as a drain names one."""
    if isinstance(data.get("container"), dict):
        return {"container": data["container"].get("name")}
    if isinstance(data.get("unit"), dict):
        return {"unit": data["unit"].get("name")}
    return {"pid": (data.get("process") or {}).get("pid")}


def _unfinished(journals: t.Sequence[t.Tuple[str, t.Dict[str, t.Any]]], mode: str) -> t.List[t.Dict[str, t.Any]]:
    """Migrations from this host without an outcome yet (their driver or controller died): a rerun resolves each of
    them whether or not discovery still finds its workload (a container its migration stopped is not in ``podman ps``),
    so a drain never reports a host empty while one of them holds a workload frozen."""
    return [dict(ref, name=name, mode=data.get("mode") or mode, found_by=UNFINISHED, journaled=True)
            for name, data in journals if data.get("outcome") in (None, "in_doubt")
            for ref in [_recorded_ref(data)] if next(iter(ref.values()))]


def _moved_earlier(journals: t.Sequence[t.Tuple[str, t.Dict[str, t.Any]]], labels: t.Sequence[str],
                   patterns: t.Sequence[str], mode: str) -> t.List[t.Dict[str, t.Any]]:
    """Containers and services an earlier migration moved off this host that the discovery asks for: they left with
    it (``podman ps`` and systemd list them no more), so only their journals say a rerun's drain moved them."""
    items = []
    for name, data in journals:
        if data.get("outcome") != "completed":
            continue
        container, unit = data.get("container"), data.get("unit")
        if isinstance(container, dict):
            found_by = next(("label %s" % label for label in labels if _has_label(container.get("labels") or {}, label)), None)
            ref = {"container": container.get("name")}
        elif isinstance(unit, dict):
            found_by = next(("unit %s" % pattern for pattern in patterns if _matches_unit(str(unit.get("name")), pattern)), None)
            ref = {"unit": unit.get("name")}
        else:
            continue  # a process's pidfile, still there, finds it
        if found_by:
            items.append(dict(ref, name=name, mode=data.get("mode") or mode, found_by=found_by, journaled=True))
    return items


def _has_label(labels: t.Mapping[str, str], selector: str) -> bool:
    """Podman's label filter: KEY, or KEY=VALUE."""
    key, sep, value = selector.partition("=")
    return key in labels and (not sep or labels[key] == value)


def _matches_unit(unit: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(unit, pattern) or fnmatch.fnmatchcase(unit, pattern + ".service")


def _journal(migrate_dir: str, name: str) -> t.Dict[str, t.Any]:
    """What an earlier migration of this name left on this host (its journal, read without touching it)."""
    try:
        found = status.read(migrate_dir, name, lambda dir_fd: DriverLock(dir_fd, name, create=False).held_elsewhere())
    except CriuError as exc:
        return {"exists": False, "problem": exc.msg}
    if not found["exists"]:
        return {"exists": False}
    m = found["migration"]
    target = m.get("target") or {}
    return {"exists": True, "id": m.get("id"), "role": m.get("role"), "phase": m.get("phase"), "outcome": m.get("outcome"),
            "driver_running": m.get("driver_running"), "target": target.get("label"), "target_host": target.get("host"),
            "source_pid": m.get("source_pid"), "target_pid": m.get("target_pid"), "downtime_seconds": m.get("downtime_seconds"),
            "image_bytes": m.get("image_bytes"), "error": m.get("error")}


def _measure(item: t.Dict[str, t.Any], request: DrainFactsRequest, postcopy_problem: str) -> t.Dict[str, t.Any]:
    ref = WorkloadRef(**{key: item[key] for key in REF_KEYS if key in item})
    kind = kinds.asked(ref)
    result: t.Dict[str, t.Any] = {
        "name": item["name"], "kind": kind.name, "mode": item["mode"], "found_by": item["found_by"],
        "workload": {key: item[key] for key in REF_KEYS if key in item}, "pid": None, "memory_bytes": 0, "processes": 0,
        "state": "absent", "movable": False, "problem": item.get("problem", ""),
        "migration": _journal(request.migrate_dir, item["name"]) if NAME.match(item["name"]) else {"exists": False},
    }
    journal = result["migration"]
    try:
        pid = kind.look_up(ref, request.timeout).pid
    except CriuError as exc:
        pid, why = None, exc.msg
    else:
        why = "it does not run on this host"
    if pid is not None and procfs.read_stat(pid) is not None:
        tree = [pid] + procfs.descendants(pid)
        result.update(pid=pid, memory_bytes=procfs.held_bytes(tree), processes=len(tree))
    in_flight = journal.get("exists") and journal.get("role") == "source" and journal.get("outcome") in (None, "in_doubt")
    completed = journal.get("exists") and journal.get("role") == "source" and journal.get("outcome") == "completed"
    if completed and (result["pid"] is None or result["pid"] != journal.get("source_pid")):
        result.update(state="moved", problem="")
        return result
    if in_flight:
        # A rerun of its migration resolves it from both journals (and migrates it, if that undoes it).
        result.update(state="in_flight", movable=not result["problem"])
        return result
    if result["pid"] is None:
        result["problem"] = result["problem"] or why
        return result
    result["state"] = "running"
    if result["problem"]:
        return result
    st = procfs.read_stat(result["pid"])
    if st is not None and st.state in ("T", "t"):
        # criu_migrate's preflight refuses it too: a checkpoint of a stopped process restores stopped.
        result["problem"] = ("pid %s is stopped (state %s) and no migration of %s explains it: a checkpoint of it would "
                             "restore it stopped. Resume it (kill -CONT %s) or leave it out." % (
                                 result["pid"], st.state, item["name"], result["pid"]))
        return result
    try:
        kind.refuse_migration(item["mode"])
        if item["mode"] == "postcopy" and postcopy_problem:
            raise CriuError("this host cannot serve a post-copy migration's pages: %s" % postcopy_problem)
        kind.find(ref, request.timeout).require_checkpointable(request.criu_path)
    except CriuError as exc:
        result["problem"] = exc.msg
        return result
    result["movable"] = True
    return result


def source_facts(request: DrainFactsRequest) -> t.Dict[str, t.Any]:
    can, why = host.can_checkpoint()
    workloads = [_measure(item, request, host.page_server_problem()) for item in _discover(request)]
    return {"arch": os.uname().machine, "kernel": os.uname().release, "can_checkpoint": can, "privilege_problem": why,
            "workloads": workloads}


def target_facts(request: DrainFactsRequest) -> t.Dict[str, t.Any]:
    can, why = host.can_checkpoint()
    criu = host.criu_facts(request.criu_path, request.timeout)
    available = mem_available()
    reserve = request.reserve_mib * MIB
    capacity = max(available - reserve, 0)
    if request.capacity_mib is not None:
        capacity = min(capacity, request.capacity_mib * MIB)
    problems = list(criu["problems"]) + ([why] if not can else [])
    facts: t.Dict[str, t.Any] = {
        "arch": os.uname().machine, "kernel": os.uname().release, "criu_usable": bool(criu["usable"]),
        "criu_version": criu["version"], "can_checkpoint": can, "lazy_pages": bool(criu.get("lazy_pages")),
        "systemd": os.path.isdir(unit_kind.RUNTIME_UNITS),  # /run/systemd/system: systemd is PID 1
        "podman": None, "mem_available_bytes": available, "reserve_bytes": reserve, "capacity_bytes": capacity,
        "problems": problems, "usable": not problems,
    }
    if request.engine:
        containers = next((kind.host_info(request.engine, request.timeout, host.effective_caps()) for kind in kinds.KINDS
                           if kind.name == "container"), {}).get("containers", {})
        facts["podman"] = bool(containers.get("usable"))
        facts["podman_problems"] = list(containers.get("problems") or [])
    return facts


def drain_facts(request: DrainFactsRequest) -> t.Dict[str, t.Any]:
    """The criu_drain_facts module's work: never changes anything (check mode alike)."""
    if request.role == "source":
        return dict(changed=False, role="source", source=source_facts(request))
    if request.workloads or request.discover:
        raise CriuError("workloads and discover apply to role=source only: a target reports its capacity and features.")
    return dict(changed=False, role="target", target=target_facts(request))
