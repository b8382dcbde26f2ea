"""Properties of metadata.json parsing and manifest path checks (_integrity), with hypothesis."""

import json
import posixpath

import pytest
from hypothesis import assume, example, given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from .mu_helpers import metadata_for

DIGEST = "0" * 64
INVENTORY = {"path": "inventory.img", "size": 9, "sha256": DIGEST}

_segment = st.sampled_from(["a", "b.img", ".", "..", "", "...", ".x", "x y", "\0", "..a", "a..", "é"])
_paths = st.one_of(
    st.text(max_size=20),
    st.lists(_segment, max_size=5).map("/".join),
    st.lists(_segment, max_size=4).map(lambda s: "/" + "/".join(s)),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_entries = st.fixed_dictionaries({"path": _paths, "size": _json | st.integers(min_value=0), "sha256": _json | st.text(max_size=64)})
_documents = st.one_of(
    _json,
    st.builds(lambda m, extra: dict(metadata_for(m), **extra), st.lists(_entries | _json, max_size=4),
              st.dictionaries(st.sampled_from(sorted(integrity._REQUIRED)), _json, max_size=2)),
    # manifests that hold inventory.img, so the other checks decide: arbitrary entries, and well-typed ones whose
    # paths are what decides
    st.builds(lambda m: metadata_for([INVENTORY] + m), st.lists(_entries, max_size=4)),
    st.builds(lambda m: metadata_for([INVENTORY] + m),
              st.lists(st.fixed_dictionaries({"path": _paths, "size": st.integers(min_value=0), "sha256": st.text(max_size=64)}),
                       max_size=4)),
)


def _stays_inside_images(path):
    """The path a manifest entry names, resolved under images/, is images/ itself or below it, and names a file."""
    resolved = posixpath.normpath(posixpath.join("/images", path))
    return resolved.startswith("/images/") and resolved != "/images/"


def _check_parse(raw):
    """parse_metadata's contract on any input: (None, some problems) or (a dict, no problems), never an exception."""
    metadata, problems = integrity.parse_metadata(raw)
    assert isinstance(problems, list) and all(isinstance(p, str) and p for p in problems)
    if metadata is None:
        assert problems
        return None
    assert problems == [] and isinstance(metadata, dict) and metadata["schema_version"] == 1
    algorithm = integrity.manifest_algorithm(metadata)
    assert algorithm in integrity.HASH_ALGORITHMS
    paths = []
    for entry in metadata["manifest"]:
        path = entry["path"]
        assert isinstance(path, str) and integrity.manifest_path_problem(path) is None
        assert not path.startswith("/") and posixpath.normpath(path) == path and "\0" not in path
        assert ".." not in path.split("/") and _stays_inside_images(path)
        assert isinstance(entry["size"], int) and not isinstance(entry["size"], bool) and entry["size"] >= 0
        assert isinstance(entry[algorithm], str)
        paths.append(path)
    assert len(set(paths)) == len(paths) and "inventory.img" in paths
    return metadata


# --- manifest_path_problem ---------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(_paths)
@example("a/../b")
@example("..")
@example(".")
@example("a/")
@example("a/.")
def test_manifest_path_problem_accepts_exactly_the_safe_paths(path):
    parts = path.split("/")
    safe = (bool(path) and not path.startswith("/") and posixpath.normpath(path) == path
            and ".." not in parts and "." not in parts and "\0" not in path)
    assert (integrity.manifest_path_problem(path) is None) is safe


@settings(deadline=None, max_examples=300)
@given(_paths)
def test_an_accepted_manifest_path_stays_inside_images(path):
    if integrity.manifest_path_problem(path) is None:
        assert _stays_inside_images(path)
        assert posixpath.normpath(path) == path and not posixpath.isabs(path)


@settings(deadline=None, max_examples=200)
@given(st.one_of(_json, st.binary(max_size=10)))
def test_manifest_path_problem_never_raises(value):
    problem = integrity.manifest_path_problem(value)
    assert problem is None or isinstance(problem, str)
    if not isinstance(value, str) or not value:
        assert "not a non-empty string" in problem


@pytest.mark.parametrize("path", [None, 1, [], {}, b"core.img"])
def test_manifest_path_problem_non_strings(path):
    assert "not a non-empty string" in integrity.manifest_path_problem(path)


# --- parse_metadata ----------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200))
def test_parse_metadata_never_raises_on_bytes(raw):
    _check_parse(raw)


@settings(deadline=None, max_examples=300)
@given(_documents)
def test_parse_metadata_never_raises_on_json(document):
    _check_parse(json.dumps(document).encode("utf-8"))


@settings(deadline=None, max_examples=200)
@given(st.lists(st.fixed_dictionaries({"path": st.from_regex(r"[a-z0-9-]{1,12}\.img", fullmatch=True),
                                       "size": st.integers(min_value=0, max_value=2 ** 40),
                                       "sha256": st.text("0123456789abcdef", min_size=64, max_size=64)}),
                max_size=6, unique_by=lambda e: e["path"]))
def test_a_well_formed_metadata_is_accepted_unchanged(entries):
    entries = [e for e in entries if e["path"] != "inventory.img"]
    metadata = metadata_for([INVENTORY] + entries)
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])
    assert _check_parse(json.dumps(metadata, indent=2).encode("utf-8")) == metadata


def _wrong_for(kind):
    """JSON values that are not of ``kind`` as parse_metadata means it (bool is never an int)."""
    values = _json.filter(lambda v: not isinstance(v, kind) or isinstance(v, bool))
    if kind is int:  # an int of the right type but another schema version is wrong too
        values = values | st.integers().filter(lambda v: v != integrity.SCHEMA_VERSION)
    return values


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_mutating_a_required_field_type_always_yields_problems(data):
    key = data.draw(st.sampled_from(sorted(integrity._REQUIRED)))
    value = data.draw(_wrong_for(integrity._REQUIRED[key]))
    metadata = dict(metadata_for([INVENTORY]), **{key: value})
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
    assert parsed is None and problems


_bad_sizes = _json.filter(lambda v: not isinstance(v, int) or isinstance(v, bool)) | st.integers(max_value=-1)
_bad_paths = _json.filter(lambda v: not isinstance(v, str)) | st.sampled_from(
    ["", "/abs", "../up", "./x", "a//b", "a/", "a/./b", "a/../b", "x\0y", "..", "."])


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_mutating_a_manifest_entry_always_yields_problems(data):
    entry = dict(data.draw(st.fixed_dictionaries({"path": st.from_regex(r"pages-[0-9]{1,3}\.img", fullmatch=True),
                                                  "size": st.integers(min_value=0, max_value=10 ** 9)})), sha256=DIGEST)
    field = data.draw(st.sampled_from(["path", "size", "sha256", "entry", "drop"]))
    if field == "path":
        entry["path"] = data.draw(_bad_paths)
    elif field == "size":
        entry["size"] = data.draw(_bad_sizes)
    elif field == "sha256":
        entry["sha256"] = data.draw(_json.filter(lambda v: not isinstance(v, str)))
    elif field == "entry":
        entry = data.draw(_json.filter(lambda v: not isinstance(v, dict)))
    else:
        del entry[data.draw(st.sampled_from(["path", "size", "sha256"]))]
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata_for([INVENTORY, entry])))
    assert parsed is None and problems


@settings(deadline=None, max_examples=100)
@given(st.sampled_from(["md5", "sha1", "SHA256", "", "blake2b"]) | _json.filter(lambda v: v not in integrity.HASH_ALGORITHMS))
def test_an_unknown_manifest_algorithm_always_yields_problems(algorithm):
    assume(not isinstance(algorithm, str) or algorithm not in integrity.HASH_ALGORITHMS)
    metadata = metadata_for([dict(INVENTORY, **{algorithm if isinstance(algorithm, str) else "x": DIGEST})],
                            manifest_algorithm=algorithm)
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
    assert parsed is None and problems


@settings(deadline=None, max_examples=100)
@given(st.integers(min_value=integrity.SCHEMA_VERSION + 1))
def test_a_newer_schema_says_upgrade(version):
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata_for([INVENTORY], schema_version=version)))
    assert parsed is None and len(problems) == 1 and "upgrade the collection" in problems[0]


@settings(deadline=None, max_examples=300)
@given(st.lists(_paths, max_size=5))
def test_a_well_typed_manifest_is_accepted_exactly_when_its_paths_are_safe_and_unique(paths):
    metadata = metadata_for([INVENTORY] + [{"path": path, "size": 1, "sha256": DIGEST} for path in paths])
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
    every = ["inventory.img"] + paths
    acceptable = all(integrity.manifest_path_problem(path) is None for path in paths) and len(set(every)) == len(every)
    assert (parsed is not None) is acceptable and (problems == []) is acceptable
    if parsed is not None:
        assert all(_stays_inside_images(path) for path in paths)
