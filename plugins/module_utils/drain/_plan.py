# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A drain's plan and report from the facts criu_drain_facts gathered: the filters ``drain_plan`` and ``drain_report``
(the role ``drain`` calls them on the controller). Pure: dicts in, dicts out; the placement itself is _placement's.

Every migration keeps its workload's name (given, or derived from its pidfile, container or unit), so that a rerun of
the drain finds the journal of the same migration: criu_migrate resolves it from there, and never moves a workload
twice.
"""

from __future__ import annotations

import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.drain import _placement as placement

MIB = placement.MIB
# What a drain_workloads item may carry on to its migration besides what names the workload (migrate_workloads' keys).
CARRIED = ("unit_boot", "transfer_image", "target_pidfile", "tcp_established", "tcp_close", "skip_in_flight", "ext_unix_sk",
           "file_locks", "shell_job", "link_remap", "ghost_limit", "network_lock", "manage_cgroups", "cgroup_root")
# An outcome of a migration of the drain, as the role records it: retried once elsewhere when it failed before the commit.
RETRIED = ("rolled_back", "not_started")


def _workloads(source: t.Mapping[str, t.Any]) -> t.List[t.Dict[str, t.Any]]:
    return list(source.get("workloads") or [])


def _targets(targets: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.List[placement.Target]:
    return [placement.Target(
        name=name, capacity_bytes=int(facts.get("capacity_bytes") or 0), arch=str(facts.get("arch") or ""),
        lazy_pages=bool(facts.get("lazy_pages")), podman=bool(facts.get("podman")), systemd=bool(facts.get("systemd")),
        usable=bool(facts.get("usable", True)),
        problem="cannot restore: %s" % "; ".join(facts.get("problems") or []) if facts.get("problems") else "")
        for name, facts in sorted(targets.items())]


def _typed(found: t.Mapping[str, t.Any], arch: str) -> placement.Workload:
    return placement.Workload(name=found["name"], kind=found["kind"], memory_bytes=int(found.get("memory_bytes") or 0),
                              mode=found.get("mode") or "copy", arch=arch)


def _items(assignments: t.Iterable[placement.Assignment], source: t.Mapping[str, t.Any], source_host: str,
           given: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
    """Each assignment as a migrate_workloads item (what the migrate role takes), with its wave and mode."""
    found = {w["name"]: w for w in _workloads(source)}
    extra = {g.get("name"): g for g in given}
    items = []
    for a in assignments:
        workload = found[a.workload]
        item = dict(workload["workload"], name=a.workload, source=source_host, target=a.target, mode=workload["mode"],
                    memory_bytes=a.memory_bytes, wave=a.wave)
        item.update({key: value for key, value in extra.get(a.workload, {}).items() if key in CARRIED and value is not None})
        items.append(item)
    return items


def _shown(result: placement.Plan, items: t.Sequence[t.Mapping[str, t.Any]], unplaced: t.Sequence[t.Mapping[str, t.Any]],
           moved: t.Sequence[t.Mapping[str, t.Any]], out: t.Collection[str] = ()) -> t.List[str]:
    lines = ["wave %d: %s -> %s (%.1f MiB, %s)" % (item["wave"], item["name"], item["target"],
                                                   item["memory_bytes"] / float(MIB), item["mode"]) for item in items]
    lines += ["not placed: %s: %s" % (u["workload"], u["reason"]) for u in unplaced]
    lines += ["moved already: %s -> %s" % (m["workload"], m["target"]) for m in moved]
    lines += ["room left on %s: %.1f MiB" % (name, free / float(MIB)) for name, free in sorted(result.free_bytes.items())
              if name not in out]
    lines += ["%s: out of this drain (a migration onto it failed)" % name for name in sorted(out)]
    return lines


def drain_plan(source: t.Mapping[str, t.Any], targets: t.Mapping[str, t.Mapping[str, t.Any]], source_host: str,
               given: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None, parallel: int = 0,
               per_target: int = 0, addresses: t.Optional[t.Mapping[str, str]] = None) -> t.Dict[str, t.Any]:
    """The plan of a drain from criu_drain_facts' ``source`` facts and each target's ``target`` facts (by inventory
    name): the migrations to run (migrate_workloads items, in waves), the workloads not placed and why (those the
    source cannot checkpoint among them), and those an earlier run moved already (to the inventory host whose address,
in ``addresses``, its journal names)."""
    workloads = _workloads(source)
    movable = [w for w in workloads if w.get("movable")]
    result = placement.plan([_typed(w, str(source.get("arch") or "")) for w in movable], _targets(targets), parallel, per_target)
    unplaced = [{"workload": w["name"], "reason": w.get("problem") or "it cannot be checkpointed here"}
                for w in workloads if not w.get("movable") and w.get("state") != "moved"]
    unplaced += [u._asdict() for u in result.unplaced]
    by_address = {address: name for name, address in sorted((addresses or {}).items(), reverse=True) if address}
    earlier = [(w, w.get("migration") or {}) for w in workloads if w.get("state") == "moved"]
    moved = [{"workload": w["name"], "target": by_address.get(str(m.get("target_host")), m.get("target")),
              "downtime_seconds": m.get("downtime_seconds"), "image_bytes": m.get("image_bytes")} for w, m in earlier]
    items = _items(result.assignments, source, source_host, given or [])
    return {"migrations": items, "unplaced": unplaced, "moved_already": moved, "free_bytes": result.free_bytes,
            "waves": result.waves, "batches": [len(wave) for wave in result.waves], "lines": _shown(result, items, unplaced, moved)}


def drain_replan(first: t.Mapping[str, t.Any], outcomes: t.Sequence[t.Mapping[str, t.Any]], source: t.Mapping[str, t.Any],
                 targets: t.Mapping[str, t.Mapping[str, t.Any]], source_host: str,
                 given: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None, parallel: int = 0,
                 per_target: int = 0) -> t.Dict[str, t.Any]:
    """The second and last round: the migrations of ``first`` that failed before the commit (``outcomes``: the role's
    record of each, outcome ``rolled_back`` or ``not_started``; the workload runs on the source) placed once more,
    on targets where nothing failed, with the room ``first`` left there."""
    typed_targets = _targets(targets)
    workloads = [_typed(w, str(source.get("arch") or "")) for w in _workloads(source) if w.get("movable")]
    assignments = tuple(placement.Assignment(m["name"], m["target"], int(m["memory_bytes"]), int(m["wave"]))
                        for m in first.get("migrations") or [])
    previous = placement.Plan(assignments, (), {name: int(free) for name, free in (first.get("free_bytes") or {}).items()})
    failed = {o["name"]: str(o.get("why") or o.get("outcome")) for o in outcomes if o.get("outcome") in RETRIED}
    result = placement.replace(previous, failed, workloads, typed_targets, parallel, per_target)
    items = _items(result.assignments, source, source_host, given or [])
    unplaced = [u._asdict() for u in result.unplaced]
    return {"migrations": items, "unplaced": unplaced, "moved_already": [], "free_bytes": result.free_bytes,
            "waves": result.waves, "batches": [len(wave) for wave in result.waves],
            "lines": _shown(result, items, unplaced, [], {a.target for a in assignments if a.workload in failed})}


def drain_report(plan: t.Mapping[str, t.Any], outcomes: t.Sequence[t.Mapping[str, t.Any]], final: t.Mapping[str, t.Any],
                 retry: t.Optional[t.Mapping[str, t.Any]] = None,
                 retry_outcomes: t.Optional[t.Sequence[t.Mapping[str, t.Any]]] = None) -> t.Dict[str, t.Any]:
    """One record per workload asked for (target, downtime, bytes, outcome and why), what is left on the source (from
    ``final``: criu_drain_facts on the source after the migrations), and whether the drain emptied it."""
    first = {o["name"]: o for o in outcomes}
    second = {o["name"]: o for o in retry_outcomes or []}
    retried = {m["name"]: m for m in (retry or {}).get("migrations") or []}
    not_retried = {u["workload"]: u["reason"] for u in (retry or {}).get("unplaced") or []}
    planned = {m["name"]: m for m in plan.get("migrations") or []}
    unplaced = {u["workload"]: u["reason"] for u in plan.get("unplaced") or []}
    earlier = {m["workload"]: m for m in plan.get("moved_already") or []}
    left = [w["name"] for w in _workloads(final) if w.get("state") in ("running", "in_flight")]
    records = []
    for w in sorted(_workloads(final), key=lambda w: w["name"]):
        name = w["name"]
        record: t.Dict[str, t.Any] = {"name": name, "kind": w.get("kind"), "target": None, "downtime_seconds": None,
                                      "image_bytes": None, "outcome": "", "why": "", "on_source": name in left}
        outcome = second.get(name) or first.get(name)
        if outcome is not None:
            record.update({key: outcome.get(key) for key in ("target", "downtime_seconds", "image_bytes")},
                          outcome=outcome.get("outcome"), why=outcome.get("why") or "")
            if name in second:
                record["why"] = "placed again after %s on %s (%s); %s" % (
                    first[name].get("outcome"), first[name].get("target"), first[name].get("why"), record["why"] or "moved")
            elif name in not_retried:
                record["why"] = "%s; not placed again: %s" % (record["why"], not_retried[name])
        elif name in earlier:
            record.update(target=earlier[name]["target"], downtime_seconds=earlier[name]["downtime_seconds"],
                          image_bytes=earlier[name]["image_bytes"], outcome="moved", why="moved by an earlier run")
        elif name in unplaced:
            record.update(outcome="not_moved", why=unplaced[name])
        elif name in planned or name in retried:
            record.update(outcome="not_run", why="its migration did not report (the controller stopped?): rerun the drain")
        elif w.get("state") == "moved":
            record.update(target=(w.get("migration") or {}).get("target"), outcome="moved",
                          downtime_seconds=(w.get("migration") or {}).get("downtime_seconds"),
                          image_bytes=(w.get("migration") or {}).get("image_bytes"))
        else:
            record.update(outcome="not_moved", why=w.get("problem") or "")
        if record["outcome"] == "moved" and name in left:
            record.update(outcome="left", why="reported moved, yet it still runs on the source")
        records.append(record)
    lines = ["%s: %s%s%s%s" % (
        r["name"], r["outcome"], " -> %s" % r["target"] if r["target"] else "",
        ", downtime %ss, %.1f MiB" % (r["downtime_seconds"], (r["image_bytes"] or 0) / float(MIB))
        if r["downtime_seconds"] is not None else "", " (%s)" % r["why"] if r["why"] else "") for r in records]
    lines.append("left on the source: %s" % (", ".join(left) if left else "nothing"))
    return {"workloads": records, "left_on_source": left, "moved": sum(1 for r in records if r["outcome"] == "moved"),
            "emptied": not left, "lines": lines}
