"""Properties of metadata.json parsing and manifest path checks (_integrity), with hypothesis."""

import hashlib
import json
import posixpath

import pytest
from hypothesis import assume, example, given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from .mu_helpers import chunk_digests, metadata_for, v1_metadata_for

DIGEST = "0" * 64
CHUNK = integrity.CHUNK_BYTES
INVENTORY = {"path": "inventory.img", "size": 9, "chunks": [DIGEST]}  # schema 2 (metadata_for)
V1_INVENTORY = {"path": "inventory.img", "size": 9, "sha256": DIGEST}  # schema 1 (v1_metadata_for)
# Sizes up to 2**62: parse_metadata counts chunks without listing them (test_parse_metadata_refuses_a_huge_size...).
MAX_SIZE = 2 ** 62

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
_sizes = _json.filter(lambda v: not isinstance(v, int) or abs(v) < MAX_SIZE) | st.integers(min_value=0, max_value=MAX_SIZE)
_chunk_lists = _json | st.lists(st.text(max_size=64), max_size=4) | st.lists(_json, max_size=3)
_entries = st.fixed_dictionaries({"path": _paths, "size": _sizes, "chunks": _chunk_lists})
_v1_entries = st.fixed_dictionaries({"path": _paths, "size": _sizes, "sha256": _json | st.text(max_size=64)})
_chunk_bytes = st.sampled_from([integrity.CHUNK_ALIGN, CHUNK, integrity.MAX_CHUNK_BYTES]) | _json.filter(
    lambda v: not isinstance(v, int) or abs(v) < MAX_SIZE)


def _well_typed(size):
    """A schema 2 entry of a safe-looking size whose chunk list has the right length."""
    return st.fixed_dictionaries({"path": _paths, "size": st.just(size),
                                  "chunks": st.just([DIGEST] * len(integrity.chunk_ranges(size, CHUNK)))})


_documents = st.one_of(
    _json,
    st.builds(lambda m, extra: dict(metadata_for(m), **extra), st.lists(_entries | _v1_entries | _json, max_size=4),
              st.dictionaries(st.sampled_from(sorted(integrity._REQUIRED)), _json, max_size=2)),
    # manifests that hold inventory.img, so the other checks decide: arbitrary entries, and well-typed ones whose
    # paths are what decides
    st.builds(lambda m: metadata_for([INVENTORY] + m), st.lists(_entries, max_size=4)),
    st.builds(lambda m: metadata_for([INVENTORY] + m),
              st.lists(st.integers(min_value=0, max_value=2 ** 32).flatmap(_well_typed), max_size=4)),
    st.builds(lambda m, c: metadata_for([INVENTORY] + m, manifest_chunk_bytes=c), st.lists(_entries, max_size=2), _chunk_bytes),
    # schema 1: whole-file digests
    st.builds(lambda m: v1_metadata_for([V1_INVENTORY] + m), st.lists(_v1_entries | _entries, max_size=4)),
    st.builds(lambda m: v1_metadata_for([V1_INVENTORY] + m),
              st.lists(st.fixed_dictionaries({"path": _paths, "size": st.integers(min_value=0, max_value=MAX_SIZE),
                                              "sha256": st.text(max_size=64)}), max_size=4)),
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
    assert problems == [] and isinstance(metadata, dict) and metadata["schema_version"] in (1, 2)
    algorithm = integrity.manifest_algorithm(metadata)
    assert algorithm in integrity.HASH_ALGORITHMS
    chunk_bytes = integrity.manifest_chunk_bytes(metadata)
    if metadata["schema_version"] == 1:
        assert chunk_bytes is None
    else:
        assert isinstance(chunk_bytes, int) and not isinstance(chunk_bytes, bool)
        assert 0 < chunk_bytes <= integrity.MAX_CHUNK_BYTES and chunk_bytes % integrity.CHUNK_ALIGN == 0
    paths = []
    for entry in metadata["manifest"]:
        path = entry["path"]
        assert isinstance(path, str) and integrity.manifest_path_problem(path) is None
        assert not path.startswith("/") and posixpath.normpath(path) == path and "\0" not in path
        assert ".." not in path.split("/") and _stays_inside_images(path)
        assert isinstance(entry["size"], int) and not isinstance(entry["size"], bool) and entry["size"] >= 0
        if chunk_bytes is None:
            assert isinstance(entry[algorithm], str)
        else:
            chunks = entry["chunks"]
            assert isinstance(chunks, list) and all(isinstance(chunk, str) for chunk in chunks)
            assert len(chunks) == max(1, -(-entry["size"] // chunk_bytes))
        assert integrity.expected_chunks(entry, algorithm, chunk_bytes)  # what verification compares exists
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


_hex = st.text("0123456789abcdef", min_size=64, max_size=64)
_names = st.from_regex(r"[a-z0-9-]{1,12}\.img", fullmatch=True)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.tuples(_names, st.integers(min_value=0, max_value=2 ** 33), _hex), max_size=6, unique_by=lambda e: e[0]),
       st.sampled_from([integrity.CHUNK_ALIGN, 3 * integrity.CHUNK_ALIGN, CHUNK, integrity.MAX_CHUNK_BYTES]))
def test_a_well_formed_metadata_is_accepted_unchanged(entries, chunk_bytes):
    entries = [{"path": path, "size": size, "chunks": [digest] * len(integrity.chunk_ranges(size, chunk_bytes))}
               for path, size, digest in entries if path != "inventory.img"]
    metadata = metadata_for([INVENTORY] + entries, manifest_chunk_bytes=chunk_bytes)
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])
    assert _check_parse(json.dumps(metadata, indent=2).encode("utf-8")) == metadata


@settings(deadline=None, max_examples=200)
@given(st.lists(st.fixed_dictionaries({"path": _names, "size": st.integers(min_value=0, max_value=MAX_SIZE), "sha256": _hex}),
                max_size=6, unique_by=lambda e: e["path"]))
def test_a_well_formed_schema_1_metadata_is_accepted_unchanged(entries):
    entries = [e for e in entries if e["path"] != "inventory.img"]
    metadata = v1_metadata_for([V1_INVENTORY] + entries)
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])
    assert _check_parse(json.dumps(metadata, indent=2).encode("utf-8")) == metadata


@settings(deadline=None, max_examples=300)
@given(st.integers(min_value=0, max_value=12 * CHUNK), st.integers(min_value=0, max_value=14),
       st.sampled_from([integrity.CHUNK_ALIGN, CHUNK, 2 * CHUNK]))
def test_a_chunk_list_is_accepted_exactly_when_it_has_one_digest_per_chunk(size, count, chunk_bytes):
    entry = {"path": "pages-1.img", "size": size, "chunks": [DIGEST] * count}
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata_for([INVENTORY, entry],
                                                                                 manifest_chunk_bytes=chunk_bytes)))
    right = max(1, -(-size // chunk_bytes))  # ceil, and an empty file has one chunk
    assert (parsed is not None) is (count == right)
    if count != right:
        assert problems == ["manifest entry 'pages-1.img' has no list of %d sha256 chunk digests" % right]


def _wrong_for(kind):
    """JSON values that are not of ``kind`` as parse_metadata means it (bool is never an int)."""
    values = _json.filter(lambda v: not isinstance(v, kind) or isinstance(v, bool))
    if kind is int:  # an int of the right type but another schema version is wrong too
        values = values | st.integers().filter(lambda v: v not in integrity.SCHEMA_VERSIONS)
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
@given(st.data(), st.sampled_from([1, 2]))
def test_mutating_a_manifest_entry_always_yields_problems(data, schema):
    entry = data.draw(st.fixed_dictionaries({"path": st.from_regex(r"pages-[0-9]{1,3}\.img", fullmatch=True),
                                             "size": st.integers(min_value=0, max_value=10 ** 10)}))
    digest_key = "sha256" if schema == 1 else "chunks"
    entry[digest_key] = DIGEST if schema == 1 else [DIGEST] * len(integrity.chunk_ranges(entry["size"], CHUNK))
    field = data.draw(st.sampled_from(["path", "size", "digest", "entry", "drop"] + (["count", "chunk"] if schema == 2 else [])))
    if field == "path":
        entry["path"] = data.draw(_bad_paths)
    elif field == "size":
        entry["size"] = data.draw(_bad_sizes)
    elif field == "digest":
        entry[digest_key] = data.draw(_json.filter(lambda v: not isinstance(v, (str, list)) or (isinstance(v, list) and schema == 1)))
    elif field == "entry":
        entry = data.draw(_json.filter(lambda v: not isinstance(v, dict)))
    elif field == "count":  # one chunk digest more or fewer
        entry["chunks"] = entry["chunks"][1:] if data.draw(st.booleans()) else entry["chunks"] + [DIGEST]
    elif field == "chunk":  # a chunk digest that is no string
        index = data.draw(st.integers(min_value=0, max_value=len(entry["chunks"]) - 1))
        entry["chunks"][index] = data.draw(_json.filter(lambda v: not isinstance(v, str)))
    else:
        del entry[data.draw(st.sampled_from(["path", "size", digest_key]))]
    if schema == 1:
        metadata = v1_metadata_for([V1_INVENTORY, entry])
    else:
        metadata = metadata_for([INVENTORY, entry])
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
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
    metadata = metadata_for([INVENTORY] + [{"path": path, "size": 1, "chunks": [DIGEST]} for path in paths])
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
    every = ["inventory.img"] + paths
    acceptable = all(integrity.manifest_path_problem(path) is None for path in paths) and len(set(every)) == len(every)
    assert (parsed is not None) is acceptable and (problems == []) is acceptable
    if parsed is not None:
        assert all(_stays_inside_images(path) for path in paths)


# --- chunks ------------------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(st.data())
def test_chunk_ranges_tile_the_file(data):
    """Contiguous from 0, every chunk full but the last, nothing past the end, at least one (empty) chunk."""
    chunk_bytes = data.draw(st.none() | st.integers(min_value=1, max_value=2 ** 30))
    size = data.draw(st.integers(min_value=0, max_value=(chunk_bytes or 2 ** 30) * 300))
    ranges = integrity.chunk_ranges(size, chunk_bytes)
    assert ranges[0][0] == 0 and sum(length for _offset, length in ranges) == size
    assert all(offset + length == after for (offset, length), (after, _l) in zip(ranges, ranges[1:]))
    if chunk_bytes is None:
        assert ranges == [(0, size)]
    else:
        assert len(ranges) == max(1, -(-size // chunk_bytes))
        assert all(length == chunk_bytes for _offset, length in ranges[:-1]) and 0 < ranges[-1][1] <= chunk_bytes or size == 0
        assert all(offset % chunk_bytes == 0 for offset, _length in ranges)


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=2000), st.lists(st.integers(min_value=0, max_value=5000)))
def test_digester_gives_each_chunk_s_digest_however_the_stream_is_cut(data, chunk_bytes, cuts):
    digester = integrity.Digester("sha256", chunk_bytes)
    bounds = [0] + sorted(cut for cut in cuts if cut <= len(data)) + [len(data)]
    for start, end in zip(bounds, bounds[1:]):
        digester.update(memoryview(data)[start:end])  # empty pieces too
    assert digester.result() == integrity.FileDigest(len(data), tuple(chunk_digests(data, chunk_bytes)))
    whole = integrity.Digester("sha256", None)
    whole.update(data)
    assert whole.result() == integrity.FileDigest(len(data), (hashlib.sha256(data).hexdigest(),))
