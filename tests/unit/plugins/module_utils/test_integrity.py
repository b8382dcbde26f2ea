"""metadata.json, the manifest of every image byte, and the HMAC (_integrity)."""

import hashlib
import hmac as std_hmac
import json
import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import (KEY, OTHER_UID, dir_fd, manifest_of, metadata_for, needs_root, opened_checkpoint, verify_at,
                         write_metadata)

BIG = "pages-1.img"
BIG_SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint directory as criu_checkpoint publishes it (unsigned); returns (dest, metadata)."""
    dest = tmp_path / "ckpt"
    images = dest / "images"
    images.mkdir(parents=True, mode=0o700)
    (images / "inventory.img").write_bytes(b"\x01inventory")
    (images / "core-4242.img").write_bytes(b"core" * 100)
    (images / "empty.img").write_bytes(b"")
    (images / BIG).write_bytes(os.urandom(BIG_SIZE))
    for name in os.listdir(images):
        os.chmod(images / name, 0o600)
    metadata = metadata_for(manifest_of(images))
    write_metadata(str(dest), metadata)
    return str(dest), metadata


def _images(dest):
    return os.path.join(dest, "images")


def test_build_manifest(ckpt):
    dest, metadata = ckpt
    manifest = metadata["manifest"]
    assert [e["path"] for e in manifest] == ["core-4242.img", "empty.img", "inventory.img", BIG]
    big = open(os.path.join(dest, "images", BIG), "rb").read()
    assert manifest[3] == {"path": BIG, "size": len(big), "sha256": hashlib.sha256(big).hexdigest()}
    assert manifest[1]["sha256"] == hashlib.sha256(b"").hexdigest()


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
    assert verify_at(dest) == integrity.Verdict(metadata, [], [])


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
    found, problems, unexpected = verify_at(dest)
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
    real = integrity.hash_open_file
    monkeypatch.setattr(integrity, "hash_open_file", lambda fd, *args: hashed.append(os.fstat(fd).st_size) or real(fd, *args))
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
    assert integrity.check_images(-1, [], "sha256") == ["images/ is missing"]


def test_check_images_bounded_by_timeout(ckpt, monkeypatch):
    dest, metadata = ckpt
    monkeypatch.setattr(integrity, "WINDOW", 4096)
    with dir_fd(_images(dest)) as fd:
        problems = integrity.check_images(fd, metadata["manifest"], "sha256", timeout=1e-9)
        assert problems == ["verification did not finish within 1e-09s; raise timeout for checkpoints this large"]
        assert integrity.check_images(fd, metadata["manifest"], "sha256", timeout=60) == []


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
    (lambda m: [e for e in m if e["path"] != "inventory.img"], "the manifest lists no inventory.img"),
])
def test_verify_refuses_bad_manifest(ckpt, change, expected):
    dest, metadata = ckpt
    write_metadata(dest, dict(metadata, manifest=change(metadata["manifest"])))
    found, problems, _unexpected = verify_at(dest)
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
    found, problems, _unexpected = verify_at(dest)
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
    metadata = metadata_for([{"path": "inventory.img", "size": 1, "sha256": "0" * 64}])
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
    assert verify_at(dest) == integrity.Verdict(metadata, [], ["dump.log (not a regular file)", "notes.txt"])


def test_verify_refuses_symlinks_at_dest_metadata_and_images(tmp_path, ckpt):
    dest = ckpt[0]
    os.symlink(dest, str(tmp_path / "link"))
    with pytest.raises(CriuError, match="Checkpoint directory .*link is a symlink"):
        verify_at(str(tmp_path / "link"))
    os.rename(os.path.join(dest, "metadata.json"), str(tmp_path / "meta-real"))
    os.symlink(str(tmp_path / "meta-real"), os.path.join(dest, "metadata.json"))
    found, problems, unexpected = verify_at(dest)
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
    found, problems, _unexpected = verify_at(dest)
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
    assert verify_at(dest, KEY) == (metadata, [], [])
    assert verify_at(dest, KEY, require_signature=True) == (metadata, [], [])
    # no key: accepted only when the caller opts out of the check (the manifest still checks the images)
    assert verify_at(dest, skip_signature_check=True) == (metadata, [], [])
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
    found, problems, _unexpected = verify_at(dest, key, require_signature=require, skip_signature_check=skip)
    assert found == metadata and len(problems) == 1 and expected in problems[0], problems


@pytest.mark.parametrize("skip", [False, True])
def test_unsigned_checkpoint_without_key_is_accepted(ckpt, skip):
    dest, metadata = ckpt
    assert verify_at(dest, skip_signature_check=skip) == (metadata, [], [])


def test_signature_detects_rewritten_manifest(ckpt):
    """With a key, an attacker who alters an image AND updates the manifest is still caught."""
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    _flip(dest)
    forged = dict(metadata, manifest=manifest_of(_images(dest)))
    with open(os.path.join(dest, "metadata.json"), "wb") as handle:
        handle.write(integrity.canonical(forged))
    assert verify_at(dest, skip_signature_check=True) == (forged, [], [])  # without a key only accidents are caught
    assert verify_at(dest, KEY).problems == ["checkpoint.hmac does not match: the metadata or an image was altered, or the key is wrong"]


def test_signature_is_over_canonical_metadata(ckpt):
    dest, metadata = ckpt
    write_metadata(dest, metadata, KEY)
    with open(os.path.join(dest, "metadata.json"), "w") as handle:
        json.dump(metadata, handle, indent=4)  # same content, other whitespace and key order
    assert verify_at(dest, KEY) == (metadata, [], [])


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
    assert verify_at(dest, KEY) == (metadata, [], [])
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
    monkeypatch.setattr(integrity, "WINDOW", 3 * 4096)
    data = os.urandom(10 * 4096 + 123)
    (tmp_path / BIG).write_bytes(data)
    (tmp_path / "empty.img").write_bytes(b"")
    assert manifest_of(tmp_path) == [{"path": "empty.img", "size": 0, "sha256": hashlib.sha256(b"").hexdigest()},
                                     {"path": BIG, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]


def test_build_manifest_keeps_digests_hashed_during_the_dump(ckpt):
    """Files hashed while criu wrote them are not read again; the rest are."""
    dest, metadata = ckpt
    already = {BIG: integrity.FileDigest(5, "f" * 64)}
    manifest = manifest_of(_images(dest), hashed=already)
    assert manifest[3] == {"path": BIG, "size": 5, "sha256": "f" * 64}
    assert manifest[:3] == metadata["manifest"][:3]


needs_blake3 = pytest.mark.skipif(integrity._blake3 is None, reason="the blake3 module is not installed (requirements/test.txt has it)")


@needs_blake3
def test_blake3_manifest_round_trip_and_tamper(ckpt):
    dest = ckpt[0]
    metadata = metadata_for(manifest_of(_images(dest), "blake3"), manifest_algorithm="blake3")
    write_metadata(dest, metadata)
    big = open(os.path.join(_images(dest), BIG), "rb").read()
    assert metadata["manifest"][3]["blake3"] == integrity._blake3.blake3(big).hexdigest()
    assert "sha256" not in metadata["manifest"][3]
    assert verify_at(dest) == (metadata, [], [])
    _flip(dest)
    assert verify_at(dest).problems[0].startswith("images/%s: blake3 expected" % BIG)


@needs_blake3
def test_blake3_checkpoint_on_a_host_without_blake3(ckpt, monkeypatch):
    dest = ckpt[0]
    write_metadata(dest, metadata_for(manifest_of(_images(dest), "blake3"), manifest_algorithm="blake3"))
    monkeypatch.setattr(integrity, "_blake3", None)
    found, problems, _unexpected = verify_at(dest)
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
    found, problems, _unexpected = verify_at(dest)
    assert found is None and "manifest_algorithm 'md5' is not supported" in problems[0], problems
