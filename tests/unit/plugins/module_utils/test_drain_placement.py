"""A drain's placement (drain/_placement.py): worst-fit decreasing, never beyond a target's capacity, every workload
placed or explained, the same plan for the same facts; and the one re-placement of what failed before the commit."""

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils.drain import _placement as placement
from ansible_collections.nucleus.criu.plugins.module_utils.drain._placement import Target, Workload

MIB = placement.MIB


def w(name, mib, kind="process", mode="copy", arch="x86_64"):
    return Workload(name, kind, mib * MIB, mode, arch)


def tgt(name, mib, **features):
    return Target(name, mib * MIB, **dict({"arch": "x86_64", "lazy_pages": True}, **features))


def test_largest_first_onto_the_target_with_most_room_ties_by_name():
    result = placement.plan([w("a", 100), w("b", 300), w("c", 200), w("d", 100)], [tgt("t2", 500), tgt("t1", 500)])
    placed = {a.workload: a.target for a in result.assignments}
    # b (300) -> t1 (ties by name), c (200) -> t2 (500 > 200 left), then a and d (100 each, by name) -> t2 (300), t1 (200)
    assert placed == {"b": "t1", "c": "t2", "a": "t2", "d": "t1"}
    assert result.free_bytes == {"t1": 100 * MIB, "t2": 200 * MIB}
    assert result.unplaced == ()


def test_a_small_target_forces_the_use_of_both_and_what_fits_nowhere_is_explained():
    result = placement.plan([w("big", 600), w("mid", 300), w("small", 50)], [tgt("large", 700), tgt("tiny", 120)])
    placed = {a.workload: a.target for a in result.assignments}
    assert placed == {"big": "large", "small": "tiny"}
    (why,) = result.unplaced
    assert why.workload == "mid" and "needs 300.0 MiB" in why.reason and "(tiny) has 120.0 MiB" in why.reason


def test_features_decide_before_room():
    targets = [tgt("plain", 10000, lazy_pages=False), tgt("full", 10, podman=True, systemd=True)]
    result = placement.plan([w("pc", 5, mode="postcopy"), w("ctr", 5, kind="container"), w("svc", 1, kind="unit"),
                             w("arm", 1, arch="aarch64")], targets)
    placed = {a.workload: a.target for a in result.assignments}
    assert placed == {"pc": "full", "ctr": "full"}
    reasons = {u.workload: u.reason for u in result.unplaced}
    assert "room" in reasons["svc"] and "has 0.0 MiB" in reasons["svc"] and "does not run systemd" in reasons["svc"]
    assert reasons["arm"].startswith("no target can take it") and "is x86_64, the workload aarch64" in reasons["arm"]


def test_an_unusable_target_receives_nothing():
    result = placement.plan([w("a", 1)], [Target("down", 10 * MIB, "x86_64", usable=False, problem="criu is missing")])
    assert result.assignments == () and "criu is missing" in result.unplaced[0].reason


def test_no_target():
    assert placement.plan([w("a", 1)], []).unplaced[0].reason == "no target was given"


def test_waves_respect_parallel_and_per_target():
    workloads = [w("w%d" % i, 10) for i in range(7)]
    result = placement.plan(workloads, [tgt("t1", 1000), tgt("t2", 1000)], parallel=3, per_target=1)
    for wave in result.waves:
        assert len(wave) <= 2  # per_target 1 on 2 targets bounds it below parallel 3
        targets = [a.target for a in result.assignments if a.workload in wave]
        assert len(targets) == len(set(targets))
    assert sorted(n for wave in result.waves for n in wave) == sorted(x.name for x in workloads)
    unlimited = placement.plan(workloads, [tgt("t1", 1000), tgt("t2", 1000)])
    assert len(unlimited.waves) == 1


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unique"):
        placement.plan([w("a", 1), w("a", 2)], [tgt("t", 10)])
    with pytest.raises(ValueError):
        placement.plan([Workload("a", "vm")], [tgt("t", 10)])
    with pytest.raises(ValueError):
        placement.plan([w("a", 1)], [tgt("t", 10)], parallel=-1)


def test_replace_moves_what_failed_onto_another_target_once():
    workloads = [w("a", 300), w("b", 200), w("c", 100)]
    targets = [tgt("t1", 400), tgt("t2", 400), tgt("t3", 150)]
    first = placement.plan(workloads, targets)
    placed = {a.workload: a.target for a in first.assignments}
    assert placed == {"a": "t1", "b": "t2", "c": "t2"}
    second = placement.replace(first, {"b": "target t2 died"}, workloads, targets)
    # t2 is out (it failed); t1 has 100 left, t3 150: b (200) fits nowhere, said with the first failure
    assert second.assignments == () and second.unplaced[0].workload == "b"
    assert second.unplaced[0].reason.startswith("target t2 died; then placed again:") and "t2 failed a migration" in second.unplaced[0].reason
    third = placement.replace(first, {"c": "rolled back"}, workloads, targets)
    assert [(a.workload, a.target) for a in third.assignments] == [("c", "t3")]  # t2 is out; t1 has 100 left, t3 150
    with pytest.raises(ValueError, match="only workloads the plan assigned"):
        placement.replace(first, {"zzz": "x"}, workloads, targets)


_names = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=0, max_size=14, unique=True)
_kinds = st.sampled_from(placement.KINDS)
_modes = st.sampled_from(placement.MODES)


@st.composite
def _cases(draw):
    names = draw(_names)
    workloads = [Workload(name, draw(_kinds), draw(st.integers(0, 2000)) * MIB, draw(_modes),
                          draw(st.sampled_from(["x86_64", "x86_64", "aarch64"]))) for name in names]
    count = draw(st.integers(0, 4))
    targets = [Target("t%d" % i, draw(st.integers(0, 3000)) * MIB, draw(st.sampled_from(["x86_64", "aarch64"])),
                      draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), "")
               for i in range(count)]
    return workloads, targets, draw(st.integers(0, 4)), draw(st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(_cases())
def test_properties_never_overcommitted_every_workload_accounted_for_deterministic(case):
    workloads, targets, parallel, per_target = case
    result = placement.plan(workloads, targets, parallel, per_target)
    capacity = {x.name: x.capacity_bytes for x in targets}
    by_name = {x.name: x for x in workloads}
    for target in targets:
        used = sum(a.memory_bytes for a in result.assignments if a.target == target.name)
        assert used <= target.capacity_bytes and result.free_bytes[target.name] == target.capacity_bytes - used
    for a in result.assignments:
        assert not {x.name: x for x in targets}[a.target].lacks(by_name[a.workload]) and a.target in capacity
    placed = [a.workload for a in result.assignments]
    explained = [u.workload for u in result.unplaced]
    assert sorted(placed + explained) == sorted(by_name) and not set(placed) & set(explained)
    assert all(u.reason for u in result.unplaced)
    for wave in range(len(result.waves)):
        members = [a for a in result.assignments if a.wave == wave]
        assert members and (not parallel or len(members) <= parallel)
        assert not per_target or all(sum(1 for a in members if a.target == x.name) <= per_target for x in targets)
    # the same facts, in any order, give the same plan
    assert placement.plan(list(reversed(workloads)), list(reversed(targets)), parallel, per_target) == result
    # a failed target's workloads, placed again, go elsewhere, still within room
    if result.assignments:
        failed_target = result.assignments[0].target
        failed = {a.workload: "failed" for a in result.assignments if a.target == failed_target}
        again = placement.replace(result, failed, workloads, targets, parallel, per_target)
        assert all(a.target != failed_target for a in again.assignments)
        for target in targets:
            assert again.free_bytes[target.name] >= 0
        assert sorted([a.workload for a in again.assignments] + [u.workload for u in again.unplaced]) == sorted(failed)
