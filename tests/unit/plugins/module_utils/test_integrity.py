"""metadata.json, the manifest of every image byte, and the HMAC (_integrity)."""

import hashlib
import hmac as std_hmac
import json
import os
import posixpath

import pytest
from hypothesis import given, settings, strategies as st

from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import metadata_for, write_metadata

KEY = b"0123456789abcdef0123456789abcdef"
BIG = "pages-1.img"


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint directory as criu_checkpoint publishes it (unsigned); returns (dest, metadata)."""
    dest = tmp_path / "ckpt"
    images = dest / "images"
    images.mkdir(parents=True, mode=0o700)
    (images / "inventory.img").write_bytes(b"\x01inventory")
    (images / "core-4242.img").write_bytes(b"core" * 100)
    (images / "empty.img").write_bytes(b"")
    (images / BIG).write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    metadata = metadata_for(integrity.build_manifest(str(images), "sha256"))
    write_metadata(str(dest), metadata)
    return str(dest), metadata


def test_build_manifest(ckpt):
    dest, metadata = ckpt
    manifest = metadata["manifest"]
    assert [e["path"] for e in manifest] == ["core-4242.img", "empty.img", "inventory.img", BIG]
    big = open(os.path.join(dest, "images", BIG), "rb").read()
    assert manifest[3] == {"path": BIG, "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    assert manifest[1]["sha256"] == hashlib.sha256(b"").hexdigest()


def test_build_manifest_refuses_non_regular(tmp_path):
    os.mkfifo(tmp_path / "fifo.img")
    with pytest.raises(CriuError, match="Cannot hash image .*fifo.img"):
        integrity.build_manifest(str(tmp_path), "sha256")


def test_verify_round_trip(ckpt):
    dest, metadata = ckpt
    assert integrity.verify(dest) == (metadata, [])


def _flip(dest):
    path = os.path.join(dest, "images", BIG)
    with open(path, "r+b") as handle:
        handle.seek(2 * 1024 * 1024 + 5)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x01]))


def _truncate(dest):
    os.truncate(os.path.join(dest, "images", BIG), 1024 * 1024)


def _delete(dest):
    os.unlink(os.path.join(dest, "images", BIG))


def _extra(dest):
    open(os.path.join(dest, "images", "extra.img"), "wb").close()


def _symlink(dest):
    path = os.path.join(dest, "images", BIG)
    os.rename(path, os.path.join(dest, "moved"))
    os.symlink(os.path.join(dest, "moved"), path)


def _fifo(dest):
    os.unlink(os.path.join(dest, "images", BIG))
    os.mkfifo(os.path.join(dest, "images", BIG))


def _fifo_extra(dest):
    os.mkfifo(os.path.join(dest, "images", "fifo.img"))


def _subdir(dest):
    os.mkdir(os.path.join(dest, "images", "sub"))


@pytest.mark.parametrize("tamper, expected", [
    (_flip, "images/%s: sha256 expected" % BIG),
    (_truncate, "images/%s: size expected %d, found %d" % (BIG, 3 * 1024 * 1024 + 17, 1024 * 1024)),
    (_delete, "images/%s: listed in the manifest but missing" % BIG),
    (_extra, "images/extra.img: not in the manifest (extra file)"),
    (_symlink, "images/%s: cannot be read as a regular file (a symlink)" % BIG),
    (_fifo, "images/%s: cannot be read as a regular file (not a regular file)" % BIG),
    (_fifo_extra, "images/fifo.img: not in the manifest"),
    (_subdir, "images/sub: not in the manifest"),
])
def test_verify_detects_image_damage(ckpt, tamper, expected):
    dest, metadata = ckpt
    tamper(dest)
    found, problems = integrity.verify(dest)
    assert found == metadata
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def _entry(manifest, **changes):
    return [dict(manifest[0], **changes)] + manifest[1:]


@pytest.mark.parametrize("change, expected", [
    (lambda m: _entry(m, path="../metadata.json"), "'../metadata.json' is not normalised or leaves images/"),
    (lambda m: _entry(m, path="/etc/shadow"), "'/etc/shadow' is absolute"),
    (lambda m: _entry(m, path="./core-4242.img"), "'./core-4242.img' is not normalised"),
    (lambda m: _entry(m, path="a//b"), "'a//b' is not normalised"),
    (lambda m: _entry(m, path="a/../core-4242.img"), "is not normalised"),
    (lambda m: _entry(m, path=""), "is not a non-empty string"),
    (lambda m: _entry(m, path=7), "7 is not a non-empty string"),
    (lambda m: _entry(m, size=-1), "has no valid size"),
    (lambda m: _entry(m, size=True), "has no valid size"),
    (lambda m: _entry(m, size="12"), "has no valid size"),
    (lambda m: _entry(m, sha256=None), "has no sha256 digest"),
    (lambda m: [m[0]] + m, "manifest lists a path more than once"),
    (lambda m: m + ["x"], "manifest entry 4 is not an object"),
])
def test_verify_refuses_bad_manifest(ckpt, change, expected):
    dest, metadata = ckpt
    write_metadata(dest, dict(metadata, manifest=change(metadata["manifest"])))
    found, problems = integrity.verify(dest)
    assert found is None
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("raw, expected", [
    (b"not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "does not hold a JSON object"),
    (b"{}", "schema_version is missing"),
])
def test_verify_refuses_unreadable_metadata(ckpt, raw, expected):
    dest = ckpt[0]
    with open(os.path.join(dest, "metadata.json"), "wb") as handle:
        handle.write(raw)
    found, problems = integrity.verify(dest)
    assert found is None and any(expected in p for p in problems), problems


@pytest.mark.parametrize("version, expected", [
    (2, "schema_version 2, newer than the 1 this nucleus.criu understands: upgrade the collection"),
    (0, "unsupported schema_version 0"),
    (True, "schema_version is missing or not a int"),
    ("1", "schema_version is missing or not a int"),
])
def test_schema_version(version, expected):
    metadata, problems = integrity.parse_metadata(integrity.canonical(metadata_for([], schema_version=version)))
    assert metadata is None and problems and expected in problems[0]


@pytest.mark.parametrize("key", sorted(integrity._REQUIRED))
def test_every_required_key_is_checked(key):
    metadata = metadata_for([])
    del metadata[key]
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
    assert parsed is None and any(key in p for p in problems)


def test_verify_missing_metadata_and_dest(tmp_path, ckpt):
    dest = ckpt[0]
    os.unlink(os.path.join(dest, "metadata.json"))
    assert integrity.verify(dest) == (None, ["%s: no checkpoint here (metadata.json is missing)" % dest])
    found, problems = integrity.verify(str(tmp_path / "absent"))
    assert found is None and "metadata.json is missing" in problems[0]


def test_verify_refuses_symlinks_at_dest_metadata_and_images(tmp_path, ckpt):
    dest = ckpt[0]
    os.symlink(dest, str(tmp_path / "link"))
    assert "symlink" in integrity.verify(str(tmp_path / "link"))[1][0]
    os.rename(os.path.join(dest, "images"), str(tmp_path / "images-real"))
    os.symlink(str(tmp_path / "images-real"), os.path.join(dest, "images"))
    metadata, problems = integrity.verify(dest)
    assert problems and "symlink" in problems[0]
    os.rename(os.path.join(dest, "metadata.json"), str(tmp_path / "meta-real"))
    os.symlink(str(tmp_path / "meta-real"), os.path.join(dest, "metadata.json"))
    assert "symlink" in integrity.verify(dest)[1][0]


def test_verify_metadata_is_a_directory(ckpt):
    dest = ckpt[0]
    os.unlink(os.path.join(dest, "metadata.json"))
    os.mkdir(os.path.join(dest, "metadata.json"))
    found, problems = integrity.verify(dest)
    assert found is None and problems


def test_parse_metadata_deeply_nested_json():
    metadata, problems = integrity.parse_metadata(b"[" * 100000 + b"]" * 100000)
    assert metadata is None and problems


# --- HMAC --------------------------------------------------------------------

def test_signed_checkpoint_verifies_with_key(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    assert integrity.verify(dest, KEY) == (metadata, [])
    assert integrity.verify(dest, KEY, require_signature=True) == (metadata, [])
    assert integrity.verify(dest) == (metadata, [])  # no key: the manifest still checks the images


@pytest.mark.parametrize("key, require, sign_with, expected", [
    (b"wrong key", False, KEY, "checkpoint.hmac does not match"),
    (KEY, False, None, "checkpoint.hmac is missing"),
    (None, True, None, "checkpoint.hmac is missing"),
    (None, True, KEY, "signed but no key was given"),
])
def test_signature_problems(ckpt, key, require, sign_with, expected):
    dest, metadata = ckpt
    write_metadata(dest, metadata, sign_with)
    found, problems = integrity.verify(dest, key, require_signature=require)
    assert found == metadata and len(problems) == 1 and expected in problems[0]


def test_signature_detects_rewritten_manifest(ckpt):
    """With a key, an attacker who alters an image AND updates the manifest is still caught."""
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    _flip(dest)
    forged = dict(metadata, manifest=integrity.build_manifest(os.path.join(dest, "images"), "sha256"))
    with open(os.path.join(dest, "metadata.json"), "wb") as handle:
        handle.write(integrity.canonical(forged))
    assert integrity.verify(dest) == (forged, [])  # without a key only accidents are caught
    found, problems = integrity.verify(dest, KEY)
    assert problems == ["checkpoint.hmac does not match: the metadata or an image was altered, or the key is wrong"]


def test_signature_is_over_canonical_metadata(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    with open(os.path.join(dest, "metadata.json"), "w") as handle:
        json.dump(metadata, handle, indent=4)  # same content, other whitespace and key order
    assert integrity.verify(dest, KEY) == (metadata, [])


def test_signature_file_symlink_refused(tmp_path, ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    os.rename(os.path.join(dest, "checkpoint.hmac"), str(tmp_path / "sig"))
    os.symlink(str(tmp_path / "sig"), os.path.join(dest, "checkpoint.hmac"))
    assert "symlink" in integrity.verify(dest, KEY)[1][0]


def test_comparisons_are_constant_time(ckpt, monkeypatch):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    calls = []
    real = std_hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(integrity.hmac, "compare_digest", spy)
    assert integrity.verify(dest, KEY) == (metadata, [])
    signature = integrity.sign(metadata, KEY).encode("ascii")
    assert (signature, signature) in calls
    digests = {e["sha256"] for e in metadata["manifest"]}
    assert digests <= {call[0] for call in calls}


def test_sign_is_hmac_sha256_of_canonical(ckpt):
    metadata = ckpt[1]
    assert integrity.sign(metadata, KEY) == std_hmac.new(KEY, integrity.canonical(metadata), hashlib.sha256).hexdigest()
    assert integrity.sign(metadata, KEY) != integrity.sign(dict(metadata, name="other"), KEY)


def test_canonical_sorted_and_compact():
    assert integrity.canonical({"b": [1, {"z": 1, "a": "é"}], "a": None}) == b'{"a":null,"b":[1,{"a":"\\u00e9","z":1}]}'


# --- load_key ----------------------------------------------------------------

def _key_file(tmp_path, data=b"s3cret\n", mode=0o600):
    path = tmp_path / "key"
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def test_load_key_sources(tmp_path):
    assert integrity.load_key(None, None) is None
    assert integrity.load_key("", None) is None
    assert integrity.load_key("abc", None) == b"abc"
    assert integrity.load_key(None, _key_file(tmp_path)) == b"s3cret"
    assert integrity.load_key(None, _key_file(tmp_path, b"s3cret\r\n\n")) == b"s3cret"
    assert integrity.load_key(None, _key_file(tmp_path, mode=0o400)) == b"s3cret"


def test_load_key_both_given(tmp_path):
    with pytest.raises(CriuError, match="mutually exclusive"):
        integrity.load_key("abc", _key_file(tmp_path))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_load_key_refuses_readable_by_others(tmp_path, mode):
    with pytest.raises(CriuError, match="readable or writable by group/others .*chmod 0600"):
        integrity.load_key(None, _key_file(tmp_path, mode=mode))


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n\n"])
def test_load_key_refuses_empty(tmp_path, data):
    with pytest.raises(CriuError, match="is empty"):
        integrity.load_key(None, _key_file(tmp_path, data))


def test_load_key_refuses_symlink_fifo_and_missing(tmp_path):
    real = _key_file(tmp_path)
    os.symlink(real, str(tmp_path / "link"))
    with pytest.raises(CriuError, match="not a symlink"):
        integrity.load_key(None, str(tmp_path / "link"))
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(CriuError, match="not a regular file"):
        integrity.load_key(None, str(tmp_path / "fifo"))
    with pytest.raises(CriuError, match="Cannot open hmac_key_file"):
        integrity.load_key(None, str(tmp_path / "missing"))


# --- properties --------------------------------------------------------------

_segment = st.sampled_from(["a", "b.img", ".", "..", "", "...", ".x", "x y", "\0"])
_paths = st.one_of(st.text(max_size=20), st.lists(_segment, max_size=5).map("/".join),
                   st.lists(_segment, max_size=4).map(lambda s: "/" + "/".join(s)))


@settings(deadline=None, max_examples=200)
@given(_paths)
def test_manifest_path_problem_property(path):
    parts = path.split("/")
    safe = (bool(path) and not path.startswith("/") and posixpath.normpath(path) == path
            and ".." not in parts and "." not in parts and "\0" not in path)
    assert (integrity.manifest_path_problem(path) is None) is safe


@pytest.mark.parametrize("path", [None, 1, [], {}, b"core.img"])
def test_manifest_path_problem_non_strings(path):
    assert "not a non-empty string" in integrity.manifest_path_problem(path)


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
)


def _check_parse(raw):
    metadata, problems = integrity.parse_metadata(raw)
    if metadata is None:
        assert problems and all(isinstance(p, str) for p in problems)
    else:
        assert problems == [] and isinstance(metadata, dict) and metadata["schema_version"] == 1
        for entry in metadata["manifest"]:
            assert integrity.manifest_path_problem(entry["path"]) is None


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=200))
def test_parse_metadata_never_raises_on_bytes(raw):
    _check_parse(raw)


@settings(deadline=None, max_examples=200)
@given(_documents)
def test_parse_metadata_never_raises_on_json(document):
    _check_parse(json.dumps(document).encode("utf-8"))


def test_hash_windows_cover_every_byte(tmp_path, monkeypatch):
    """Several mapping windows and a partial last one hash to the digest of the whole file."""
    monkeypatch.setattr(integrity, "WINDOW", 3 * 4096)
    data = os.urandom(10 * 4096 + 123)
    (tmp_path / BIG).write_bytes(data)
    (tmp_path / "empty.img").write_bytes(b"")
    manifest = integrity.build_manifest(str(tmp_path), "sha256")
    assert manifest == [{"path": "empty.img", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()},
                        {"path": BIG, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]


def test_build_manifest_keeps_digests_hashed_during_the_dump(ckpt):
    """Files hashed while criu wrote them are not read again; the rest are."""
    dest, metadata = ckpt
    already = {BIG: integrity.FileDigest(5, "f" * 64)}
    manifest = integrity.build_manifest(os.path.join(dest, "images"), "sha256", already)
    assert manifest[3] == {"path": BIG, "size": 5, "sha256": "f" * 64}
    assert manifest[:3] == metadata["manifest"][:3]


needs_blake3 = pytest.mark.skipif(integrity._blake3 is None, reason="the blake3 module is not installed (requirements/test.txt has it)")


@needs_blake3
def test_blake3_manifest_round_trip_and_tamper(ckpt):
    dest = ckpt[0]
    images = os.path.join(dest, "images")
    metadata = metadata_for(integrity.build_manifest(images, "blake3"), manifest_algorithm="blake3")
    write_metadata(dest, metadata)
    big = open(os.path.join(images, BIG), "rb").read()
    assert metadata["manifest"][3]["blake3"] == integrity._blake3.blake3(big).hexdigest()
    assert "sha256" not in metadata["manifest"][3]
    assert integrity.verify(dest) == (metadata, [])
    _flip(dest)
    assert integrity.verify(dest)[1][0].startswith("images/%s: blake3 expected" % BIG)


@needs_blake3
def test_blake3_checkpoint_on_a_host_without_blake3(ckpt, monkeypatch):
    dest = ckpt[0]
    write_metadata(dest, metadata_for(integrity.build_manifest(os.path.join(dest, "images"), "blake3"), manifest_algorithm="blake3"))
    monkeypatch.setattr(integrity, "_blake3", None)
    found, problems = integrity.verify(dest)
    assert found is None
    assert "uses blake3, which" in problems[0] and "apt install python3-blake3" in problems[0], problems
    assert integrity.available_algorithms() == ["sha256"]
    assert integrity.choose_algorithm("auto") == "sha256"
    with pytest.raises(CriuError, match="hash_algorithm=blake3 needs the Python module blake3.*hash_algorithm=sha256"):
        integrity.choose_algorithm("blake3")


@needs_blake3
def test_choose_algorithm_with_blake3():
    assert integrity.available_algorithms() == ["sha256", "blake3"]
    assert integrity.choose_algorithm("auto") == "blake3"
    assert integrity.choose_algorithm("sha256") == "sha256"


def test_unknown_manifest_algorithm_refused(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, dict(metadata, manifest_algorithm="md5"))
    found, problems = integrity.verify(dest)
    assert found is None and "manifest_algorithm 'md5' is not supported" in problems[0], problems
