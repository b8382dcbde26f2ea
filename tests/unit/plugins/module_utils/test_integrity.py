"""metadata.json, the manifest of every image byte, and the HMAC (_integrity)."""

import errno
import hashlib
import hmac as std_hmac
import json
import os
import resource
import subprocess
import sys
import threading

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import (KEY, OTHER_UID, SMALL_CHUNK, chunk_digests, dir_fd, manifest_of, metadata_for, needs_root,
                         opened_checkpoint, v1_metadata_for, verify_at, whole_file_manifest_of, write_metadata)

BIG = "pages-1.img"
BIG_SIZE = 3 * 1024 * 1024 + 17


def _make_ckpt(tmp_path, schema=2, algorithm="sha256"):
    dest = tmp_path / "ckpt"
    images = dest / "images"
    images.mkdir(parents=True, mode=0o700)
    (images / "inventory.img").write_bytes(b"\x01inventory")
    (images / "core-4242.img").write_bytes(b"core" * 100)
    (images / "empty.img").write_bytes(b"")
    (images / BIG).write_bytes(os.urandom(BIG_SIZE))
    for name in os.listdir(images):
        os.chmod(images / name, 0o600)
    if schema == 1:
        metadata = v1_metadata_for(whole_file_manifest_of(images, algorithm), manifest_algorithm=algorithm)
    else:
        metadata = metadata_for(manifest_of(images, algorithm), manifest_algorithm=algorithm)
    write_metadata(str(dest), metadata)
    return str(dest), metadata


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint directory as criu_checkpoint publishes it (unsigned, the real 64 MiB chunks: one per image);
    returns (dest, metadata)."""
    return _make_ckpt(tmp_path)


@pytest.fixture
def chunked_ckpt(tmp_path, small_chunks):
    """The same checkpoint with SMALL_CHUNK chunks, so that BIG spans many of them (the last one partial)."""
    return _make_ckpt(tmp_path)


@pytest.fixture
def v1_ckpt(tmp_path):
    """The same checkpoint as nucleus.criu made it before chunked manifests: schema_version 1, whole-file digests."""
    return _make_ckpt(tmp_path, schema=1)


def _big(dest):
    with open(os.path.join(dest, "images", BIG), "rb") as handle:
        return handle.read()


def _images(dest):
    return os.path.join(dest, "images")


def test_build_manifest(ckpt):
    dest, metadata = ckpt
    manifest = metadata["manifest"]
    assert [e["path"] for e in manifest] == ["core-4242.img", "empty.img", "inventory.img", BIG]
    big = _big(dest)
    assert manifest[3] == {"path": BIG, "size": len(big), "chunks": [hashlib.sha256(big).hexdigest()]}
    assert manifest[1] == {"path": "empty.img", "size": 0, "chunks": [hashlib.sha256(b"").hexdigest()]}
    assert metadata["schema_version"] == 2 and metadata["manifest_chunk_bytes"] == integrity.CHUNK_BYTES == 64 * 1024 * 1024


def test_build_manifest_digests_every_chunk(chunked_ckpt):
    dest, metadata = chunked_ckpt
    big = _big(dest)
    entry = metadata["manifest"][3]
    assert entry == {"path": BIG, "size": BIG_SIZE, "chunks": chunk_digests(big, SMALL_CHUNK)}
    assert len(entry["chunks"]) == BIG_SIZE // SMALL_CHUNK + 1  # the last chunk holds the 17 odd bytes
    assert entry["chunks"][-1] == hashlib.sha256(big[-(BIG_SIZE % SMALL_CHUNK):]).hexdigest()
    assert metadata["manifest"][1]["chunks"] == [hashlib.sha256(b"").hexdigest()]
    assert verify_at(dest)[:3] == (metadata, [], [])


def test_build_manifest_refuses_non_regular(tmp_path):
    os.mkfifo(tmp_path / "fifo.img")
    with pytest.raises(CriuError, match="Cannot hash the freshly dumped image: images/fifo.img: cannot be read as a regular file"):
        manifest_of(tmp_path)
    os.unlink(tmp_path / "fifo.img")
    (tmp_path / "link.img").symlink_to("/etc/hostname")
    with pytest.raises(CriuError, match="images/link.img: cannot be read as a regular file \\(a symlink\\)"):
        manifest_of(tmp_path)


def test_verify_round_trip(ckpt):
    dest, metadata = ckpt
    verdict = verify_at(dest)
    assert verdict[:3] == (metadata, [], [])
    # every image byte was hashed, and the time it took is measured
    assert verdict.bytes == sum(entry["size"] for entry in metadata["manifest"]) == 100 * 4 + 10 + BIG_SIZE
    assert verdict.seconds > 0
    assert verdict.stats() == {"verify_seconds": round(verdict.seconds, 3), "verify_bytes": verdict.bytes}


def test_verdict_stats_round_seconds():
    verdict = integrity.Verdict({}, [], [], 1.23456, 7)
    assert verdict.stats() == {"verify_seconds": 1.235, "verify_bytes": 7}
    assert integrity.Verdict(None, [], []).stats() == {"verify_seconds": 0.0, "verify_bytes": 0}


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
    os.rename(path, os.path.join(os.path.dirname(dest), "moved"))
    os.symlink(os.path.join(os.path.dirname(dest), "moved"), path)


def _fifo(dest):
    os.unlink(os.path.join(dest, "images", BIG))
    os.mkfifo(os.path.join(dest, "images", BIG))


def _fifo_extra(dest):
    os.mkfifo(os.path.join(dest, "images", "fifo.img"))


def _subdir(dest):
    os.mkdir(os.path.join(dest, "images", "sub"))


def _hard_link(dest):
    os.link(os.path.join(dest, "images", BIG), os.path.join(os.path.dirname(dest), "outside"))


def _writable(dest):
    os.chmod(os.path.join(dest, "images", BIG), 0o666)


@pytest.mark.parametrize("tamper, expected", [
    (_flip, "images/%s: sha256 expected" % BIG),
    (_truncate, "images/%s: size expected %d, found %d" % (BIG, BIG_SIZE, 1024 * 1024)),
    (_delete, "images/%s: listed in the manifest but missing" % BIG),
    (_extra, "images/extra.img: not in the manifest (extra file)"),
    (_symlink, "images/%s: cannot be read as a regular file (a symlink)" % BIG),
    (_fifo, "images/%s: cannot be read as a regular file (not a regular file)" % BIG),
    (_fifo_extra, "images/fifo.img: not in the manifest"),
    (_subdir, "images/sub: not in the manifest"),
    (_hard_link, "images/%s has 2 hard links: it could be changed through a name outside the checkpoint" % BIG),
    (_writable, "images/%s is writable by group/others (mode 0666): another user could change it" % BIG),
])
def test_verify_detects_image_damage(ckpt, tamper, expected):
    dest, metadata = ckpt
    tamper(dest)
    found, problems, unexpected = verify_at(dest)[:3]
    assert found == metadata and unexpected == []
    assert len(problems) == 1 and problems[0].startswith(expected), problems


@needs_root
def test_verify_refuses_an_image_of_another_user(ckpt):
    dest, _metadata = ckpt
    os.chown(os.path.join(dest, "images", BIG), OTHER_UID, OTHER_UID)
    problems = verify_at(dest).problems
    assert problems == ["images/%s is owned by uid %d, not root or uid 0: another user could change it" % (BIG, OTHER_UID)]


def test_sizes_and_owners_are_checked_before_hashing(ckpt, monkeypatch):
    dest, _metadata = ckpt
    _truncate(dest)
    _hard_link(dest)
    hashed = []
    real = integrity.hash_range
    monkeypatch.setattr(integrity, "hash_range", lambda fd, *args: hashed.append(os.fstat(fd).st_size) or real(fd, *args))
    problems = verify_at(dest).problems
    assert len(problems) == 1 and "hard links" in problems[0]
    assert 1024 * 1024 not in hashed and len(hashed) == 3  # the three other images only


def test_image_problem(tmp_path):
    (tmp_path / "a.img").write_bytes(b"12345")
    os.chmod(tmp_path / "a.img", 0o600)
    fd = os.open(tmp_path / "a.img", os.O_RDONLY)
    try:
        assert integrity.image_problem(fd, "a.img", 5) is None
        assert integrity.image_problem(fd, "a.img", 6) == "images/a.img: size expected 6, found 5"
        os.link(tmp_path / "a.img", tmp_path / "b")
        assert "has 2 hard links" in integrity.image_problem(fd, "a.img", 5)
        os.unlink(tmp_path / "b")
        os.chmod(tmp_path / "a.img", 0o620)
        assert "writable by group/others" in integrity.image_problem(fd, "a.img", 5)
    finally:
        os.close(fd)


def test_check_images_without_images_dir():
    assert integrity.check_images(-1, metadata_for([])) == ["images/ is missing"]


def test_check_images_bounded_by_timeout(ckpt, monkeypatch):
    dest, metadata = ckpt
    monkeypatch.setattr(integrity, "WINDOW", 4096)
    with dir_fd(_images(dest)) as fd:
        problems = integrity.check_images(fd, metadata, timeout=1e-9)
        assert problems == ["verification did not finish within 1e-09s; raise timeout for checkpoints this large"]
        assert integrity.check_images(fd, metadata, timeout=60) == []


def test_check_images_of_many_chunks_bounded_by_timeout(chunked_ckpt):
    """The deadline holds for the chunks hashed in parallel too."""
    dest, metadata = chunked_ckpt
    with dir_fd(_images(dest)) as fd:
        problems = integrity.check_images(fd, metadata, timeout=1e-9)
        assert problems == ["verification did not finish within 1e-09s; raise timeout for checkpoints this large"]
        assert integrity.check_images(fd, metadata, timeout=60) == []


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
    (lambda m: _entry(m, chunks=None), "'core-4242.img' has no list of 1 sha256 chunk digests"),
    (lambda m: _entry(m, chunks=[]), "'core-4242.img' has no list of 1 sha256 chunk digests"),
    (lambda m: _entry(m, chunks=m[0]["chunks"] * 2), "'core-4242.img' has no list of 1 sha256 chunk digests"),
    (lambda m: _entry(m, chunks=m[0]["chunks"][0]), "'core-4242.img' has no list of 1 sha256 chunk digests"),
    (lambda m: _entry(m, chunks=[7]), "'core-4242.img' has no list of 1 sha256 chunk digests"),
    (lambda m: [{k: v for k, v in m[0].items() if k != "chunks"}] + m[1:], "has no list of 1 sha256 chunk digests"),
    # a schema 1 entry (one whole-file digest) is no schema 2 entry
    (lambda m: [{"path": m[0]["path"], "size": m[0]["size"], "sha256": m[0]["chunks"][0]}] + m[1:],
     "'core-4242.img' has no list of 1 sha256 chunk digests"),
    (lambda m: [m[0]] + m, "manifest lists a path more than once"),
    (lambda m: m + ["x"], "manifest entry 4 is not an object"),
    (lambda m: [e for e in m if e["path"] != "inventory.img"], "the manifest lists no inventory.img"),
])
def test_verify_refuses_bad_manifest(ckpt, change, expected):
    dest, metadata = ckpt
    write_metadata(dest, dict(metadata, manifest=change(metadata["manifest"])))
    found, problems, _unexpected = verify_at(dest)[:3]
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
    found, problems, _unexpected = verify_at(dest)[:3]
    assert found is None and any(expected in p for p in problems), problems


@pytest.mark.parametrize("version, expected", [
    (3, "schema_version 3, newer than the 2 this nucleus.criu understands: upgrade the collection"),
    (0, "unsupported schema_version 0 (expected one of 1, 2)"),
    (-1, "unsupported schema_version -1 (expected one of 1, 2)"),
    (True, "schema_version is missing or not a int"),
    ("1", "schema_version is missing or not a int"),
])
def test_schema_version(version, expected):
    metadata, problems = integrity.parse_metadata(integrity.canonical(metadata_for([], schema_version=version)))
    assert metadata is None and problems and expected in problems[0]


@pytest.mark.parametrize("schema", [1, 2])
@pytest.mark.parametrize("key", sorted(integrity._REQUIRED))
def test_every_required_key_is_checked(key, schema):
    if schema == 1:
        metadata = v1_metadata_for([{"path": "inventory.img", "size": 1, "sha256": "0" * 64}])
    else:
        metadata = metadata_for([{"path": "inventory.img", "size": 1, "chunks": ["0" * 64]}])
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])
    del metadata[key]
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata))
    assert parsed is None and any(key in p for p in problems)


def test_parse_metadata_requires_inventory_img():
    parsed, problems = integrity.parse_metadata(integrity.canonical(metadata_for([])))
    assert parsed is None and problems == ["the manifest lists no inventory.img: it does not describe a CRIU checkpoint"]


def test_verify_missing_metadata(ckpt):
    dest = ckpt[0]
    os.unlink(os.path.join(dest, "metadata.json"))
    assert verify_at(dest) == integrity.Verdict(None, ["%s: no checkpoint here (metadata.json is missing)" % dest], [])


def test_verify_reports_unexpected_entries_without_opening_them(ckpt):
    dest, metadata = ckpt
    with open(os.path.join(dest, "notes.txt"), "w") as handle:
        handle.write("x")
    os.symlink("/etc/passwd", os.path.join(dest, "dump.log"))
    assert verify_at(dest)[:3] == (metadata, [], ["dump.log (not a regular file)", "notes.txt"])


def test_verify_refuses_symlinks_at_dest_metadata_and_images(tmp_path, ckpt):
    dest = ckpt[0]
    os.symlink(dest, str(tmp_path / "link"))
    with pytest.raises(CriuError, match="Checkpoint directory .*link is a symlink"):
        verify_at(str(tmp_path / "link"))
    os.rename(os.path.join(dest, "metadata.json"), str(tmp_path / "meta-real"))
    os.symlink(str(tmp_path / "meta-real"), os.path.join(dest, "metadata.json"))
    found, problems, unexpected = verify_at(dest)[:3]
    assert found is None and "metadata.json is a symlink" in problems[0]
    assert unexpected == ["metadata.json (not a regular file)"]
    os.rename(os.path.join(dest, "images"), str(tmp_path / "images-real"))
    os.symlink(str(tmp_path / "images-real"), os.path.join(dest, "images"))
    with pytest.raises(CriuError, match="Images directory .*images is a symlink"):
        verify_at(dest)


def test_verify_metadata_is_a_directory(ckpt):
    dest = ckpt[0]
    os.unlink(os.path.join(dest, "metadata.json"))
    os.mkdir(os.path.join(dest, "metadata.json"))
    found, problems, _unexpected = verify_at(dest)[:3]
    assert found is None and problems


def test_verify_without_hashing_skips_the_images(ckpt):
    dest, metadata = ckpt
    _flip(dest)
    assert verify_at(dest, hashed=False) == integrity.Verdict(metadata, [], [])
    assert verify_at(dest).problems


def test_parse_metadata_deeply_nested_json():
    metadata, problems = integrity.parse_metadata(b"[" * 100000 + b"]" * 100000)
    assert metadata is None and problems


# --- HMAC --------------------------------------------------------------------

def test_signed_checkpoint_verifies_with_key(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    assert verify_at(dest, KEY)[:3] == (metadata, [], [])
    assert verify_at(dest, KEY, require_signature=True)[:3] == (metadata, [], [])
    # no key: accepted only when the caller opts out of the check (the manifest still checks the images)
    assert verify_at(dest, skip_signature_check=True)[:3] == (metadata, [], [])
    _flip(dest)
    assert verify_at(dest, skip_signature_check=True).problems[0].startswith("images/%s: sha256 expected" % BIG)


@pytest.mark.parametrize("key, require, skip, sign_with, expected", [
    (b"wrong key 0123456789", False, False, KEY, "checkpoint.hmac does not match"),
    (b"wrong key 0123456789", False, True, KEY, "checkpoint.hmac does not match"),  # a given key is always checked
    (KEY, False, False, None, "checkpoint.hmac is missing"),
    (KEY, False, True, None, "checkpoint.hmac is missing"),
    (None, True, False, None, "checkpoint.hmac is missing"),
    (None, True, False, KEY, "signed but no key was given"),
    (None, True, True, KEY, "signed but no key was given"),  # require_signature wins over the opt-out
    (None, False, False, KEY, "signed but no key was given: pass hmac_key or hmac_key_file, or set skip_signature_check=true"),
])
def test_signature_problems(ckpt, key, require, skip, sign_with, expected):
    dest, metadata = ckpt
    write_metadata(dest, metadata, sign_with)
    found, problems, _unexpected = verify_at(dest, key, require_signature=require, skip_signature_check=skip)[:3]
    assert found == metadata and len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("skip", [False, True])
def test_unsigned_checkpoint_without_key_is_accepted(ckpt, skip):
    dest, metadata = ckpt
    assert verify_at(dest, skip_signature_check=skip)[:3] == (metadata, [], [])


def test_signature_detects_rewritten_manifest(ckpt):
    """With a key, an attacker who alters an image AND updates the manifest is still caught."""
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    _flip(dest)
    forged = dict(metadata, manifest=manifest_of(_images(dest)))
    with open(os.path.join(dest, "metadata.json"), "wb") as handle:
        handle.write(integrity.canonical(forged))
    assert verify_at(dest, skip_signature_check=True)[:3] == (forged, [], [])  # without a key only accidents are caught
    assert verify_at(dest, KEY).problems == ["checkpoint.hmac does not match: the metadata or an image was altered, or the key is wrong"]


def test_signature_is_over_canonical_metadata(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    with open(os.path.join(dest, "metadata.json"), "w") as handle:
        json.dump(metadata, handle, indent=4)  # same content, other whitespace and key order
    assert verify_at(dest, KEY)[:3] == (metadata, [], [])


def test_signature_file_symlink_refused(tmp_path, ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    os.rename(os.path.join(dest, "checkpoint.hmac"), str(tmp_path / "sig"))
    os.symlink(str(tmp_path / "sig"), os.path.join(dest, "checkpoint.hmac"))
    problems = verify_at(dest, KEY).problems
    assert len(problems) == 1 and "checkpoint.hmac is a symlink" in problems[0]


def test_check_signature_on_an_open_checkpoint(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    with opened_checkpoint(dest) as checkpoint:
        assert integrity.check_signature(checkpoint, metadata, KEY, False, False) == []
        assert integrity.check_signature(checkpoint, dict(metadata, name="other"), KEY, False, False)[0].startswith(
            "checkpoint.hmac does not match")


def test_comparisons_are_constant_time(ckpt, monkeypatch):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    calls = []
    real = std_hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(integrity.hmac, "compare_digest", spy)
    assert verify_at(dest, KEY)[:3] == (metadata, [], [])
    signature = integrity.sign(metadata, KEY).encode("ascii")
    assert (signature, signature) in calls
    digests = {chunk for e in metadata["manifest"] for chunk in e["chunks"]}
    assert digests <= {call[0] for call in calls}


def test_every_chunk_is_compared_in_constant_time(chunked_ckpt, monkeypatch):
    dest, metadata = chunked_ckpt
    calls = []
    real = std_hmac.compare_digest
    monkeypatch.setattr(integrity.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert verify_at(dest)[:3] == (metadata, [], [])
    big = metadata["manifest"][3]["chunks"]
    assert len(big) > 2 and all((chunk, chunk) in calls for chunk in big)


def test_schema_1_digests_are_compared_in_constant_time(v1_ckpt, monkeypatch):
    dest, metadata = v1_ckpt
    calls = []
    real = std_hmac.compare_digest
    monkeypatch.setattr(integrity.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert verify_at(dest)[:3] == (metadata, [], [])
    assert {(e["sha256"], e["sha256"]) for e in metadata["manifest"]} <= set(calls)


def test_sign_is_hmac_sha256_of_canonical(ckpt):
    metadata = ckpt[1]
    assert integrity.sign(metadata, KEY) == std_hmac.new(KEY, integrity.canonical(metadata), hashlib.sha256).hexdigest()
    assert integrity.sign(metadata, KEY) != integrity.sign(dict(metadata, name="other"), KEY)


def test_canonical_sorted_and_compact():
    assert integrity.canonical({"b": [1, {"z": 1, "a": "é"}], "a": None}) == b'{"a":null,"b":[1,{"a":"\\u00e9","z":1}]}'


def test_public_drops_the_command_line():
    metadata = metadata_for([], process={"pid": 1, "comm": "app", "cmdline": ["app", "--password", "s3cret"]})
    shown = integrity.public(metadata)
    assert shown["process"] == {"pid": 1, "comm": "app"} and shown["manifest"] == [] and shown["id"] == metadata["id"]
    assert metadata["process"]["cmdline"] == ["app", "--password", "s3cret"]  # the input is not changed
    assert "s3cret" not in json.dumps(shown)
    assert integrity.public(dict(metadata, process="odd")) == dict(metadata, process="odd")


# --- load_key ----------------------------------------------------------------

SECRET = b"s3cret-s3cret-s3cret"


def _key_file(tmp_path, data=SECRET + b"\n", mode=0o600, name="key"):
    path = tmp_path / name
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def test_load_key_sources(tmp_path):
    assert integrity.load_key(None, None) is None
    assert integrity.load_key("0123456789abcdef", None) == b"0123456789abcdef"
    assert integrity.load_key(None, _key_file(tmp_path)) == SECRET
    assert integrity.load_key(None, _key_file(tmp_path, SECRET + b"\r\n\n")) == SECRET
    assert integrity.load_key(None, _key_file(tmp_path, mode=0o400)) == SECRET


def test_load_key_refuses_empty_options(tmp_path):
    with pytest.raises(CriuError, match="hmac_key is empty"):
        integrity.load_key("", None)
    with pytest.raises(CriuError, match="hmac_key_file is empty"):
        integrity.load_key(None, "")


@pytest.mark.parametrize("key", ["k", "0123456789abcde", "é" * 7])
def test_load_key_refuses_short_keys(tmp_path, key):
    with pytest.raises(CriuError, match="hmac_key is %d bytes long; a signing key must have at least 16 bytes.*openssl rand"
                       % len(key.encode("utf-8"))):
        integrity.load_key(key, None)
    with pytest.raises(CriuError, match="The key in hmac_key_file .* is %d bytes long" % len(key.encode("utf-8"))):
        integrity.load_key(None, _key_file(tmp_path, key.encode("utf-8") + b"\n"))


def test_load_key_both_given(tmp_path):
    with pytest.raises(CriuError, match="mutually exclusive"):
        integrity.load_key("0123456789abcdef", _key_file(tmp_path))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_load_key_refuses_readable_by_others(tmp_path, mode):
    with pytest.raises(CriuError, match="readable or writable by group/others .*chmod 0600"):
        integrity.load_key(None, _key_file(tmp_path, mode=mode))


@pytest.mark.parametrize("data", [b"", b"\n", b"\r\n\n"])
def test_load_key_refuses_empty(tmp_path, data):
    with pytest.raises(CriuError, match="is empty"):
        integrity.load_key(None, _key_file(tmp_path, data))


def test_load_key_follows_trusted_symlinks_and_refuses_fifo_and_missing(tmp_path):
    real = _key_file(tmp_path)
    os.symlink(real, str(tmp_path / "link"))
    assert integrity.load_key(None, str(tmp_path / "link")) == SECRET
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(CriuError, match="hmac_key_file .*fifo is not a regular file"):
        integrity.load_key(None, str(tmp_path / "fifo"))
    with pytest.raises(CriuError, match="hmac_key_file .*missing does not exist"):
        integrity.load_key(None, str(tmp_path / "missing"))


def test_load_key_walks_the_key_files_directories(tmp_path):
    (tmp_path / "keys").mkdir(mode=0o755)
    path = _key_file(tmp_path / "keys")
    assert integrity.load_key(None, path) == SECRET
    os.chmod(tmp_path / "keys", 0o777)
    with pytest.raises(CriuError, match="Directory %s is writable by group/others.*chmod go-w" % (tmp_path / "keys")):
        integrity.load_key(None, path)


@needs_root
def test_load_key_refuses_a_key_file_of_another_user(tmp_path):
    path = _key_file(tmp_path)
    os.chown(path, OTHER_UID, OTHER_UID)
    with pytest.raises(CriuError, match="hmac_key_file .* is owned by uid %d, not root or uid 0" % OTHER_UID):
        integrity.load_key(None, path)


# --- hashing -----------------------------------------------------------------

def test_hash_windows_cover_every_byte(tmp_path, monkeypatch):
    """Several mapping windows and a partial last one hash to the digest of the whole file."""
    monkeypatch.setattr(integrity, "WINDOW", 3 * integrity.mmap.ALLOCATIONGRANULARITY)
    data = os.urandom(10 * integrity.mmap.ALLOCATIONGRANULARITY + 123)
    (tmp_path / BIG).write_bytes(data)
    (tmp_path / "empty.img").write_bytes(b"")
    assert manifest_of(tmp_path) == [{"path": "empty.img", "size": 0, "chunks": [hashlib.sha256(b"").hexdigest()]},
                                     {"path": BIG, "size": len(data), "chunks": [hashlib.sha256(data).hexdigest()]}]


@pytest.mark.parametrize("windows_per_chunk", [1, 2, 3])
def test_hash_windows_and_chunks_cover_every_byte(tmp_path, monkeypatch, windows_per_chunk):
    """Chunks of one or several windows, a partial last window and a partial last chunk: each chunk's digest is that
    of its bytes."""
    window = 3 * integrity.mmap.ALLOCATIONGRANULARITY
    monkeypatch.setattr(integrity, "WINDOW", window)
    monkeypatch.setattr(integrity, "CHUNK_ALIGN", window)
    monkeypatch.setattr(integrity, "CHUNK_BYTES", windows_per_chunk * window)
    data = os.urandom(10 * integrity.mmap.ALLOCATIONGRANULARITY + 123)
    (tmp_path / BIG).write_bytes(data)
    assert manifest_of(tmp_path) == [{"path": BIG, "size": len(data), "chunks": chunk_digests(data, windows_per_chunk * window)}]


def test_build_manifest_keeps_digests_hashed_during_the_dump(ckpt):
    """Files hashed while criu wrote them are not read again; the rest are."""
    dest, metadata = ckpt
    already = {BIG: integrity.FileDigest(5, ("f" * 64, "e" * 64))}
    manifest = manifest_of(_images(dest), hashed=already)
    assert manifest[3] == {"path": BIG, "size": 5, "chunks": ["f" * 64, "e" * 64]}
    assert manifest[:3] == metadata["manifest"][:3]


needs_blake3 = pytest.mark.skipif(integrity._blake3 is None, reason="the blake3 module is not installed (requirements/test.txt has it)")


@needs_blake3
def test_blake3_manifest_round_trip_and_tamper(ckpt):
    dest = ckpt[0]
    metadata = metadata_for(manifest_of(_images(dest), "blake3"), manifest_algorithm="blake3")
    write_metadata(dest, metadata)
    big = _big(dest)
    assert metadata["manifest"][3] == {"path": BIG, "size": BIG_SIZE, "chunks": [integrity._blake3.blake3(big).hexdigest()]}
    assert verify_at(dest)[:3] == (metadata, [], [])
    _flip(dest)
    assert verify_at(dest).problems[0].startswith("images/%s: blake3 expected" % BIG)


@needs_blake3
def test_blake3_checkpoint_on_a_host_without_blake3(ckpt, monkeypatch):
    dest = ckpt[0]
    write_metadata(dest, metadata_for(manifest_of(_images(dest), "blake3"), manifest_algorithm="blake3"))
    monkeypatch.setattr(integrity, "_blake3", None)
    found, problems, _unexpected = verify_at(dest)[:3]
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
    found, problems, _unexpected = verify_at(dest)[:3]
    assert found is None and "manifest_algorithm 'md5' is not supported" in problems[0], problems


# --- chunked manifests (schema 2) ----------------------------------------------------------------

MIB = 1024 * 1024
CHUNK = integrity.CHUNK_BYTES
INVENTORY = {"path": "inventory.img", "size": 9, "chunks": ["0" * 64]}


def _feed(digester, data, sizes):
    """Feed ``data`` to ``digester`` in pieces of the given sizes (cycled), as bytes, bytearray and memoryview."""
    offset, kinds, index = 0, (bytes, bytearray, memoryview), 0
    while offset < len(data):
        piece = data[offset:offset + sizes[index % len(sizes)]]
        digester.update(kinds[index % 3](piece))
        offset += len(piece)
        index += 1


def test_the_real_chunk_and_window_sizes():
    assert (integrity.CHUNK_BYTES, integrity.CHUNK_ALIGN, integrity.MAX_CHUNK_BYTES) == (64 * MIB, 8 * MIB, 1024 * MIB)
    assert integrity.WINDOW == MIB
    assert integrity.SCHEMA_VERSION == 2 and integrity.SCHEMA_VERSIONS == (1, 2)
    assert integrity.Digester("sha256").chunk_bytes == 64 * MIB


@pytest.mark.parametrize("algorithm", integrity.available_algorithms())
@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 3000, 3017])
def test_digester_splits_exactly_at_chunk_boundaries(algorithm, size):
    """Pieces that end short of, exactly at and beyond chunk boundaries (some spanning several chunks) give the digest
    of every chunk_bytes slice of the stream, as hashlib computes it over each slice."""
    data = os.urandom(size)
    for sizes in ([1], [7, 993, 1, 2000], [1000], [2999, 1], [5000]):
        digester = integrity.Digester(algorithm, 1000)
        _feed(digester, data, sizes)
        result = digester.result()
        assert result == integrity.FileDigest(size, tuple(chunk_digests(data, 1000, algorithm))), sizes
        assert len(result.chunks) == len(integrity.chunk_ranges(size, 1000))


def test_digester_splits_a_long_stream_at_64_mib():
    """With the real CHUNK_BYTES: a stream of 64 MiB + 3 MiB + 5 fed in odd-sized pieces (one straddles the 64 MiB
    boundary) gives the digests of its first 64 MiB and of the rest, as hashlib computes them."""
    block = os.urandom(MIB)
    buffer = block * 8  # the stream's byte at p is block[p % MIB]; a piece of up to 7 MiB is a slice of buffer
    total = CHUNK + 3 * MIB + 5
    digester = integrity.Digester("sha256")
    position, straddled, sizes = 0, False, [MIB + 7, 1, 3 * MIB - 1, 4093, 5 * MIB + 3]
    while position < total:
        length = min(sizes[position % len(sizes)], total - position)
        start = position % MIB
        digester.update(memoryview(buffer)[start:start + length])
        straddled = straddled or position < CHUNK < position + length
        position += length
    assert straddled
    first, rest = hashlib.sha256(), hashlib.sha256()
    for _block in range(CHUNK // MIB):
        first.update(block)
    rest.update(block * 3 + block[:5])
    assert digester.result() == integrity.FileDigest(total, (first.hexdigest(), rest.hexdigest()))


def test_digester_without_chunks_digests_the_whole_stream():
    data = os.urandom(5000)
    digester = integrity.Digester("sha256", None)
    _feed(digester, data, [1, 999, 3000])
    assert digester.result() == integrity.FileDigest(5000, (hashlib.sha256(data).hexdigest(),))


def test_an_empty_file_has_one_chunk(tmp_path):
    empty = hashlib.sha256(b"").hexdigest()
    assert integrity.Digester("sha256").result() == integrity.FileDigest(0, (empty,))
    digester = integrity.Digester("sha256", 1000)
    digester.update(b"")
    digester.update(bytearray())
    assert digester.result() == integrity.FileDigest(0, (empty,))
    assert integrity.chunk_ranges(0, CHUNK) == integrity.chunk_ranges(0, None) == [(0, 0)]
    (tmp_path / "empty.img").write_bytes(b"")
    with dir_fd(tmp_path) as fd:
        assert integrity._hash_all(fd, ["empty.img"], "sha256", CHUNK) == {"empty.img": integrity.FileDigest(0, (empty,))}
    assert manifest_of(tmp_path) == [{"path": "empty.img", "size": 0, "chunks": [empty]}]
    for chunks in ([], [empty, empty]):
        metadata = metadata_for([INVENTORY, {"path": "empty.img", "size": 0, "chunks": chunks}])
        assert integrity.parse_metadata(integrity.canonical(metadata)) == (
            None, ["manifest entry 'empty.img' has no list of 1 sha256 chunk digests"])


@pytest.mark.parametrize("size, chunk_bytes, expected", [
    (0, CHUNK, [(0, 0)]),
    (1, CHUNK, [(0, 1)]),
    (CHUNK - 1, CHUNK, [(0, CHUNK - 1)]),
    (CHUNK, CHUNK, [(0, CHUNK)]),
    (CHUNK + 1, CHUNK, [(0, CHUNK), (CHUNK, 1)]),
    (3 * CHUNK, CHUNK, [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, CHUNK)]),
    (2 * CHUNK + 17, CHUNK, [(0, CHUNK), (CHUNK, CHUNK), (2 * CHUNK, 17)]),
    (10, 4, [(0, 4), (4, 4), (8, 2)]),
    (0, None, [(0, 0)]),
    (2 ** 40 + 3, None, [(0, 2 ** 40 + 3)]),
])
def test_chunk_ranges(size, chunk_bytes, expected):
    assert integrity.chunk_ranges(size, chunk_bytes) == expected


def test_chunk_ranges_beyond_2_gib():
    ranges = integrity.chunk_ranges(2 ** 32 + 5, CHUNK)
    assert len(ranges) == 65 and ranges[32] == (2 ** 31, CHUNK) and ranges[-1] == (2 ** 32, 5)
    assert all(offset == index * CHUNK for index, (offset, _length) in enumerate(ranges))


def _flip_at(dest, offset, name=BIG):
    with open(os.path.join(dest, "images", name), "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


_LAST = BIG_SIZE // SMALL_CHUNK  # the partial last chunk (17 bytes)


@pytest.mark.parametrize("index", [0, 1, _LAST // 2, _LAST - 1, _LAST])
def test_a_tampered_byte_is_named_with_its_chunk_and_byte_range(chunked_ckpt, index):
    dest, metadata = chunked_ckpt
    start, end = index * SMALL_CHUNK, min((index + 1) * SMALL_CHUNK, BIG_SIZE) - 1
    _flip_at(dest, start + min(5, end - start))
    found = hashlib.sha256(_big(dest)[start:end + 1]).hexdigest()
    expected = metadata["manifest"][3]["chunks"][index]
    assert found != expected
    assert verify_at(dest).problems == ["images/%s: sha256 expected %s, found %s (bytes %d-%d)" % (BIG, expected, found, start, end)]


def test_only_the_first_differing_chunk_of_each_file_is_named(chunked_ckpt):
    dest, _metadata = chunked_ckpt
    _flip_at(dest, _LAST * SMALL_CHUNK + 3)
    _flip_at(dest, SMALL_CHUNK + 3)
    _flip_at(dest, 0, "core-4242.img")
    problems = verify_at(dest).problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("images/core-4242.img: sha256 expected ") and "(bytes" not in problems[0]  # one chunk
    assert problems[1].startswith("images/%s: sha256 expected " % BIG)
    assert problems[1].endswith(" (bytes %d-%d)" % (SMALL_CHUNK, 2 * SMALL_CHUNK - 1))


@needs_blake3
def test_blake3_chunks_round_trip_and_tamper(tmp_path, small_chunks):
    dest, metadata = _make_ckpt(tmp_path, algorithm="blake3")
    assert metadata["manifest"][3]["chunks"] == chunk_digests(_big(dest), SMALL_CHUNK, "blake3")
    assert verify_at(dest)[:3] == (metadata, [], [])
    _flip_at(dest, 2 * SMALL_CHUNK)
    [problem] = verify_at(dest).problems
    assert problem.startswith("images/%s: blake3 expected %s" % (BIG, metadata["manifest"][3]["chunks"][2]))
    assert problem.endswith("(bytes %d-%d)" % (2 * SMALL_CHUNK, 3 * SMALL_CHUNK - 1))


def test_verification_uses_the_chunk_size_the_checkpoint_names(chunked_ckpt, monkeypatch):
    """A checkpoint made with other chunks than this host makes (manifest_chunk_bytes) is verified with its own."""
    dest, metadata = chunked_ckpt
    monkeypatch.setattr(integrity, "CHUNK_BYTES", 2 * SMALL_CHUNK)
    assert metadata["manifest_chunk_bytes"] == SMALL_CHUNK
    assert verify_at(dest)[:3] == (metadata, [], [])
    _flip_at(dest, SMALL_CHUNK + 5)
    [problem] = verify_at(dest).problems
    assert problem.endswith("(bytes %d-%d)" % (SMALL_CHUNK, 2 * SMALL_CHUNK - 1))


W, MAX = integrity.CHUNK_ALIGN, integrity.MAX_CHUNK_BYTES


@pytest.mark.parametrize("size, count", [(0, 0), (0, 2), (1, 0), (1, 2), (CHUNK, 2), (CHUNK + 1, 1), (CHUNK + 1, 3),
                                         (3 * CHUNK, 2), (3 * CHUNK, 4), (3 * CHUNK + 1, 3), (2 ** 31 + 1, 32)])
def test_parse_metadata_refuses_a_chunk_list_of_the_wrong_length(size, count):
    right = len(integrity.chunk_ranges(size, CHUNK))
    assert count != right
    metadata = metadata_for([INVENTORY, {"path": "pages-1.img", "size": size, "chunks": ["0" * 64] * count}])
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (
        None, ["manifest entry 'pages-1.img' has no list of %d sha256 chunk digests" % right])
    metadata["manifest"][1]["chunks"] = ["0" * 64] * right
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])


def test_the_chunk_count_follows_the_checkpoints_chunk_size():
    entry = {"path": "pages-1.img", "size": 3 * CHUNK, "chunks": ["0" * 64] * 2}
    assert integrity.parse_metadata(integrity.canonical(metadata_for([INVENTORY, entry])))[0] is None
    metadata = metadata_for([INVENTORY, entry], manifest_chunk_bytes=2 * CHUNK)
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])


_MISSING = object()


@pytest.mark.parametrize("value", [_MISSING, None, 0, -W, W // 2, W + 1, CHUNK + 4096, MAX + W, 2 * MAX, True, "67108864",
                                   float(CHUNK), [CHUNK]])
def test_parse_metadata_checks_manifest_chunk_bytes(value):
    metadata = metadata_for([INVENTORY])
    if value is _MISSING:
        del metadata["manifest_chunk_bytes"]
    else:
        metadata["manifest_chunk_bytes"] = value
    shown = None if value is _MISSING else value
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (
        None, ["metadata.json: manifest_chunk_bytes %r is not a multiple of %d up to %d" % (shown, W, MAX)])


@pytest.mark.parametrize("value", [W, CHUNK, 3 * W, MAX])
def test_parse_metadata_accepts_every_multiple_of_the_window_up_to_the_maximum(value):
    metadata = metadata_for([dict(INVENTORY, size=0)], manifest_chunk_bytes=value)
    assert integrity.parse_metadata(integrity.canonical(metadata)) == (metadata, [])


def test_manifest_chunk_bytes_of_each_schema():
    assert integrity.manifest_chunk_bytes(metadata_for([])) == CHUNK
    assert integrity.manifest_chunk_bytes(v1_metadata_for([])) is None
    assert integrity.manifest_chunk_bytes(v1_metadata_for([], manifest_chunk_bytes=W)) is None  # means nothing in 1
    entry = {"path": "a", "size": 1, "sha256": "a" * 64, "chunks": ["c" * 64]}
    assert integrity.expected_chunks(entry, "sha256", None) == ("a" * 64,)
    assert integrity.expected_chunks(entry, "sha256", CHUNK) == ("c" * 64,)


# --- schema 1 checkpoints (whole-file digests) are still verified ----------------------------------

def test_schema_1_checkpoint_still_verifies(v1_ckpt):
    dest, metadata = v1_ckpt
    assert metadata["schema_version"] == 1 and "manifest_chunk_bytes" not in metadata
    assert metadata["manifest"][3] == {"path": BIG, "size": BIG_SIZE, "sha256": hashlib.sha256(_big(dest)).hexdigest()}
    assert verify_at(dest)[:3] == (metadata, [], [])
    write_metadata(dest, metadata, KEY)
    assert verify_at(dest, KEY, require_signature=True)[:3] == (metadata, [], [])


@pytest.mark.parametrize("algorithm", integrity.available_algorithms())
def test_schema_1_tampering_is_still_named(tmp_path, small_chunks, algorithm):
    """Even where this host would make many chunks of BIG, a schema 1 manifest's one whole-file digest is compared."""
    dest, metadata = _make_ckpt(tmp_path, schema=1, algorithm=algorithm)
    assert verify_at(dest)[:3] == (metadata, [], [])
    expected = metadata["manifest"][3][algorithm]
    _flip_at(dest, 2 * SMALL_CHUNK + 5)
    found = whole_file_manifest_of(_images(dest), algorithm)[3][algorithm]
    assert found != expected
    assert verify_at(dest).problems == ["images/%s: %s expected %s, found %s" % (BIG, algorithm, expected, found)]
    _truncate(dest)
    assert verify_at(dest).problems == ["images/%s: size expected %d, found %d" % (BIG, BIG_SIZE, MIB)]


def test_schema_1_manifest_holds_whole_file_digests(v1_ckpt):
    dest, metadata = v1_ckpt
    chunked = [{"path": e["path"], "size": e["size"], "chunks": [e["sha256"]]} for e in metadata["manifest"]]
    parsed, problems = integrity.parse_metadata(integrity.canonical(v1_metadata_for(chunked)))
    assert parsed is None and problems == ["manifest entry %r has no sha256 digest (64 hex characters)" % e["path"]
                                           for e in chunked]
    with_field = dict(metadata, manifest_chunk_bytes=W)  # ignored: schema 1 digests whole files
    write_metadata(dest, with_field)
    assert verify_at(dest)[:3] == (with_field, [], [])


# --- hashing the chunks in parallel ---------------------------------------------------------------

@pytest.mark.parametrize("files", [[4], [2, 2], [1, 3]])
def test_hash_all_hashes_chunks_concurrently(tmp_path, monkeypatch, files):
    """The chunks of one large file (or of several) are hashed at the same time: each hash waits until all four are
    under way, which never happens if they run one after another (the barrier then breaks and the test fails)."""
    monkeypatch.setattr(integrity, "HASH_THREADS", 4)
    names = ["pages-%d.img" % index for index in range(len(files))]
    contents = {}
    for name, count in zip(names, files):
        contents[name] = os.urandom(count * SMALL_CHUNK - 3)  # the last chunk partial
        (tmp_path / name).write_bytes(contents[name])
    barrier = threading.Barrier(4, timeout=10)
    calls, lock, running, peak = [], threading.Lock(), [0], [0]
    real = integrity.hash_range

    def overlapping(fd, algorithm, offset, length, deadline=None):
        with lock:
            calls.append((os.fstat(fd).st_size, offset, length))
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            barrier.wait()
            return real(fd, algorithm, offset, length, deadline)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(integrity, "hash_range", overlapping)
    with dir_fd(tmp_path) as fd:
        found = integrity._hash_all(fd, names, "sha256", SMALL_CHUNK)
    assert found == {name: integrity.FileDigest(len(data), tuple(chunk_digests(data, SMALL_CHUNK))) for name, data in contents.items()}
    assert peak[0] == 4 and len(calls) == 4
    expected = [(len(data), offset, length) for data in contents.values()
                for offset, length in integrity.chunk_ranges(len(data), SMALL_CHUNK)]
    assert sorted(calls) == sorted(expected)


def test_hash_all_reports_a_read_error_met_in_one_chunk(tmp_path, monkeypatch):
    a, b = os.urandom(3 * SMALL_CHUNK), os.urandom(100)
    (tmp_path / "a.img").write_bytes(a)
    (tmp_path / "b.img").write_bytes(b)
    real = integrity.hash_range

    def failing(fd, algorithm, offset, length, deadline=None):
        if os.fstat(fd).st_size == len(a) and offset == SMALL_CHUNK:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, algorithm, offset, length, deadline)

    monkeypatch.setattr(integrity, "hash_range", failing)
    with dir_fd(tmp_path) as fd:
        before = sorted(os.listdir("/proc/self/fd"))
        found = integrity._hash_all(fd, ["a.img", "b.img", "missing.img"], "sha256", SMALL_CHUNK)
        assert sorted(os.listdir("/proc/self/fd")) == before  # every image closed again
    assert found == {"a.img": "images/a.img: cannot be read as a regular file (%s)" % os.strerror(errno.EIO),
                     "b.img": integrity.FileDigest(100, (hashlib.sha256(b).hexdigest(),)),
                     "missing.img": "images/missing.img: cannot be read as a regular file (%s)" % os.strerror(errno.ENOENT)}


def test_real_chunks_of_a_sparse_file_beyond_2_gib(tmp_path):
    """The real CHUNK_BYTES and WINDOW on a sparse file of 2 GiB + 64 MiB + 4097 bytes: the chunks beyond 2 GiB are
    mapped at their offsets, each digest is that of its bytes, and a difference there is named with its byte range."""
    size = 2 ** 31 + CHUNK + 4097
    path = tmp_path / BIG
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in ((2 ** 31 - 1, b"x"), (2 ** 31 + 5, b"beyond 2 GiB"), (size - 3, b"end")):
            handle.seek(offset)
            handle.write(data)
    ranges = integrity.chunk_ranges(size, CHUNK)
    assert len(ranges) == 34 and ranges[-2:] == [(2 ** 31, CHUNK), (2 ** 31 + CHUNK, 4097)]
    zero = hashlib.sha256(bytes(CHUNK)).hexdigest()
    with open(path, "rb") as handle:
        tail = [hashlib.sha256(os.pread(handle.fileno(), length, offset)).hexdigest() for offset, length in ranges[31:]]
    expected = (zero,) * 31 + tuple(tail)
    assert len(set(tail)) == 3 and zero not in tail
    with dir_fd(tmp_path) as fd:
        fd_image = integrity.open_image(fd, BIG)
        try:
            assert integrity.hash_range(fd_image, "sha256", 2 ** 31, CHUNK) == tail[1]
        finally:
            os.close(fd_image)
        found = integrity._hash_all(fd, [BIG], "sha256", CHUNK)
    assert found == {BIG: integrity.FileDigest(size, expected)}
    entry = {"path": BIG, "size": size, "chunks": list(expected)}
    assert integrity.digest_problems({BIG: entry}, "sha256", CHUNK, found) == []
    entry["chunks"][32] = zero  # what the file held before "beyond 2 GiB" was written
    assert integrity.digest_problems({BIG: entry}, "sha256", CHUNK, found) == [
        "images/%s: sha256 expected %s, found %s (bytes %d-%d)" % (BIG, zero, tail[1], 2 ** 31, 2 ** 31 + CHUNK - 1)]


# --- received_problems (a migration's target digests what it writes) -------------------------------

def _digested(images, pieces=1000):
    found = {}
    for name in sorted(os.listdir(images)):
        with open(os.path.join(images, name), "rb") as handle:
            data = handle.read()
        digester = integrity.Digester("sha256")  # this host's chunks
        _feed(digester, data, [pieces, 7])
        found[name] = digester.result()
    return found


def test_received_problems(chunked_ckpt):
    dest, metadata = chunked_ckpt
    found = _digested(_images(dest))
    assert len(found[BIG].chunks) == _LAST + 1
    assert integrity.received_problems(metadata, found) == []
    _flip_at(dest, 2 * SMALL_CHUNK + 1)
    altered = _digested(_images(dest))
    assert integrity.received_problems(metadata, altered) == [
        "images/%s: sha256 expected %s, found %s (bytes %d-%d)" % (BIG, metadata["manifest"][3]["chunks"][2],
                                                                   altered[BIG].chunks[2], 2 * SMALL_CHUNK, 3 * SMALL_CHUNK - 1)]
    partial = {name: digest for name, digest in found.items() if name != "empty.img"}
    partial["extra.img"] = found["empty.img"]
    assert integrity.received_problems(metadata, partial) == ["images/extra.img: not in the manifest (extra file)",
                                                              "images/empty.img: listed in the manifest but missing"]


def test_received_problems_refuses_other_chunks(chunked_ckpt):
    """The target digested the bytes in its own chunks: a manifest of other chunks (or of whole files) is refused."""
    dest, metadata = chunked_ckpt
    found = _digested(_images(dest))
    assert integrity.received_problems(dict(metadata, manifest_chunk_bytes=2 * SMALL_CHUNK), found) == [
        "the manifest's chunks are %d bytes, this host digested %d" % (2 * SMALL_CHUNK, SMALL_CHUNK)]
    assert integrity.received_problems(v1_metadata_for(whole_file_manifest_of(_images(dest))), found) == [
        "the manifest's chunks are None bytes, this host digested %d" % SMALL_CHUNK]


# --- what testing the chunked manifest found ------------------------------------------------------

def test_verification_holds_few_images_open_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "HASH_THREADS", 4)
    images = tmp_path / "images"
    images.mkdir(mode=0o700)
    for index in range(200):
        (images / ("core-%d.img" % index)).write_bytes(b"core %d" % index)
    (images / "inventory.img").write_bytes(b"inventory")
    for name in os.listdir(images):
        os.chmod(images / name, 0o600)
    metadata = metadata_for(manifest_of(images))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with dir_fd(images) as fd:
        # room for a batch of FILE_BATCH images open at once, the 4 threads' mappings and some slack: far fewer
        # than the 201 images
        limit = len(os.listdir("/proc/self/fd")) + integrity.FILE_BATCH + integrity.HASH_THREADS + 16
        assert limit < 150 and (hard == resource.RLIM_INFINITY or limit <= hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            problems = integrity.check_images(fd, metadata)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert problems == []


def test_parse_metadata_refuses_a_huge_size_without_listing_its_chunks():
    metadata = metadata_for([INVENTORY, {"path": "pages-1.img", "size": 2 ** 62, "chunks": ["0" * 64]}])
    code = ("import json, resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (384 << 20, 384 << 20))\n"
            "from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity\n"
            "print(json.dumps(integrity.parse_metadata(sys.stdin.buffer.read())[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code], input=integrity.canonical(metadata), capture_output=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p)), check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-300:]
    assert json.loads(proc.stdout) == ["manifest entry 'pages-1.img' has no list of %d sha256 chunk digests" % 2 ** 36]


def test_a_non_ascii_digest_is_a_problem_not_a_crash(ckpt):
    dest, metadata = ckpt
    metadata["manifest"][0]["chunks"] = ["\u00e9" * 64]
    write_metadata(dest, metadata)
    problems = verify_at(dest).problems
    assert problems == ["manifest entry 'core-4242.img' has no list of 1 sha256 chunk digests"], problems
