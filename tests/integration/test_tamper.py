"""The tamper matrix: every altered checkpoint is named by criu_verify and refused by criu_restore.

One real, signed checkpoint is made per module; each case alters a copy of it. A refused
restore must start nothing and leave the copy exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, Workload, processes_running, run_module, tree_digest, wait_for

KEY = "tamper-test-key-0123456789abcdef"


def _largest(images, pattern):
    return max(images.glob(pattern), key=lambda p: p.stat().st_size)


def flip_byte(pattern):
    def alter(dest):
        path = _largest(dest / "images", pattern)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return alter


def truncate_pages(dest):
    path = _largest(dest / "images", "pages-*.img")
    os.truncate(path, path.stat().st_size // 2)


def delete_image(dest):
    _largest(dest / "images", "core-*.img").unlink()


def add_extra_file(dest):
    (dest / "images" / "extra.img").write_bytes(b"\0" * 16)


def symlink_image(dest):
    path = _largest(dest / "images", "core-*.img")
    target = dest / "elsewhere.img"
    shutil.copyfile(path, target)
    path.unlink()
    path.symlink_to(target)


def edit_metadata(change):
    def alter(dest):
        metadata = json.loads((dest / "metadata.json").read_text())
        change(metadata)
        (dest / "metadata.json").write_text(json.dumps(metadata))
    return alter


def _set_first_path(value):
    def change(metadata):
        metadata["manifest"][0]["path"] = value
    return change


def _set_pid(metadata):
    metadata["process"]["pid"] += 1


def _newer_schema(metadata):
    metadata["schema_version"] = 99


def remove_signature(dest):
    (dest / "checkpoint.hmac").unlink()


# (case id, alteration, key used to verify, substring the problem must contain)
CASES = [
    ("pages-byte", flip_byte("pages-*.img"), KEY, "sha256 expected"),
    ("core-byte", flip_byte("core-*.img"), KEY, "sha256 expected"),
    ("pagemap-byte", flip_byte("pagemap-*.img"), KEY, "sha256 expected"),
    ("inventory-byte", flip_byte("inventory.img"), KEY, "images/inventory.img: sha256 expected"),
    ("pages-truncated", truncate_pages, KEY, "size expected"),
    ("image-deleted", delete_image, KEY, "missing"),
    ("extra-file", add_extra_file, KEY, "images/extra.img: not in the manifest"),
    ("image-symlink", symlink_image, KEY, "a symlink"),
    ("path-dotdot", edit_metadata(_set_first_path("../metadata.json")), KEY, "not normalised or leaves images/"),
    ("path-absolute", edit_metadata(_set_first_path("/etc/passwd")), KEY, "is absolute"),
    ("metadata-edited", edit_metadata(_set_pid), KEY, "checkpoint.hmac does not match"),
    ("newer-schema", edit_metadata(_newer_schema), KEY, "newer than the 2 this nucleus.criu understands"),
    ("signature-removed", remove_signature, KEY, "checkpoint.hmac is missing"),
    ("wrong-key", lambda dest: None, "not-the-key-0123456789", "checkpoint.hmac does not match"),
]


@pytest.fixture(scope="module")
def signed_checkpoint(tmp_path_factory):
    """A real checkpoint of a (now ended) workload, signed with KEY."""
    base = tmp_path_factory.mktemp("tamper")
    os.chmod(base, 0o700)
    workload = Workload(str(base / "state"), ["--mem", "4"], pid_namespace=False)
    workload.wait_count(5)
    dest = base / "pristine"
    result = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), hmac_key=KEY))
    assert result["changed"], result
    workload.reap()
    assert run_module("criu_verify", dict(path=str(dest), hmac_key=KEY))["valid"]
    yield dest, workload
    workload.stop()


@pytest.mark.parametrize("alter, key, problem", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tampered_checkpoint_is_named_and_refused(signed_checkpoint, tmp_path, alter, key, problem):
    pristine, workload = signed_checkpoint
    dest = tmp_path / "copy"
    os.chmod(tmp_path, 0o700)
    shutil.copytree(pristine, dest, symlinks=True)
    alter(dest)
    before = tree_digest(str(dest))

    verdict = run_module("criu_verify", dict(path=str(dest), hmac_key=key))
    assert verdict["failed"] and verdict["valid"] is False, verdict
    assert any(problem in p for p in verdict["problems"]), verdict["problems"]

    wait_for(lambda: not os.path.exists("/proc/%d" % workload.pid), what="the original pid to be free")
    refused = run_module("criu_restore", dict(src=str(dest), hmac_key=key))
    assert refused["failed"] and "Refusing to restore" in refused["msg"] and problem in refused["msg"], refused
    assert processes_running(workload.state_file) == [], "a refused restore must start nothing"
    assert tree_digest(str(dest)) == before, "a refused restore must not touch the checkpoint"


def test_key_enforced_even_without_verification(signed_checkpoint, tmp_path):
    pristine = signed_checkpoint[0]
    dest = tmp_path / "copy"
    os.chmod(tmp_path, 0o700)
    shutil.copytree(pristine, dest, symlinks=True)
    remove_signature(dest)
    refused = run_module("criu_restore", dict(src=str(dest), hmac_key=KEY, verify=False))
    assert refused["failed"] and "checkpoint.hmac is missing" in refused["msg"], refused


def test_require_signature_refuses_unsigned(workloads, ckpt_dir):
    workload = workloads()
    dest = ckpt_dir / "unsigned"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), leave_running=True))["changed"]
    assert run_module("criu_verify", dict(path=str(dest)))["valid"] is True
    verdict = run_module("criu_verify", dict(path=str(dest), require_signature=True))
    assert verdict["failed"] and "unsigned" in verdict["msg"], verdict


def test_blake3_checkpoint_restores_and_its_tampering_is_named(workloads, ckpt_dir, tmp_path):
    """hash_algorithm=blake3: the manifest records it, verification uses it, and a flipped page byte is refused."""
    info = run_module("criu_info", {})
    assert info["hash_algorithms"] == ["sha256", "blake3"], info
    workload = workloads("--mem", "8")
    dest = ckpt_dir / "b3"
    # Read before the dump: the dump ends the process wherever it is, possibly halfway through rewriting its state.
    token, count = workload.state()
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), hmac_key=KEY, hash_algorithm="blake3"))
    assert made["changed"] and made["checkpoint"]["manifest_algorithm"] == "blake3", made
    assert made["checkpoint"]["schema_version"] == 2 and all(
        set(entry) == {"path", "size", "chunks"} and entry["chunks"] for entry in made["checkpoint"]["manifest"]), made
    workload.reap()

    copy = tmp_path / "b3-copy"
    shutil.copytree(dest, copy)
    flip_byte("pages-*.img")(copy)
    verdict = run_module("criu_verify", dict(path=str(copy), hmac_key=KEY))
    assert verdict["failed"] and any("blake3 expected" in p for p in verdict["problems"]), verdict
    refused = run_module("criu_restore", dict(src=str(copy), hmac_key=KEY))
    assert refused["failed"] and "blake3 expected" in refused["msg"], refused

    restored = run_module("criu_restore", dict(src=str(dest), hmac_key=KEY))
    assert restored["changed"], restored
    workload.adopt(restored["pid"])
    assert workload.wait_count(count + 3)[0] == token


# --- a holder of the checkpoint storage, round three --------------------------------------------------------------

def forge_sibling(ckpt_dir, genuine, name: str, created_at: str) -> None:
    """What a storage holder can make without the key: a copy of a genuine checkpoint's metadata with another
    created_at, unsigned, and no images."""
    forged = ckpt_dir / name
    forged.mkdir(mode=0o700)
    metadata = json.loads((genuine / "metadata.json").read_text())
    (forged / "metadata.json").write_text(json.dumps(dict(metadata, created_at=created_at)))


def test_keep_counts_only_checkpoints_signed_with_the_key(workloads, ckpt_dir):
    """Two unsigned, image-less directories of the same name and a far-future created_at made a keyed keep=2 delete
    both genuine signed checkpoints (and hold their places for good)."""
    workload = workloads()
    first = dict(pid=workload.pid, dest=str(ckpt_dir / "job-1"), name="job", leave_running=True, hmac_key=KEY)
    assert run_module("criu_checkpoint", first)["changed"]
    for index in (1, 2):
        forge_sibling(ckpt_dir, ckpt_dir / "job-1", "forged-%d" % index, "2099-01-01T00:00:0%dZ" % index)

    made = run_module("criu_checkpoint", dict(first, dest=str(ckpt_dir / "job-2"), keep=2))

    assert made["changed"] and made["removed"] == [], made
    assert sorted(os.listdir(ckpt_dir)) == ["forged-1", "forged-2", "job-1", "job-2"]
    again = run_module("criu_checkpoint", dict(first, dest=str(ckpt_dir / "job-3"), keep=2))
    assert again["removed"] == [str(ckpt_dir / "job-1")], "the genuine ones rotate among themselves"


REWRITE_MANIFEST = """
import json, os, sys
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
dest = sys.argv[1]
metadata = json.load(open(os.path.join(dest, "metadata.json")))
images = os.open(os.path.join(dest, "images"), os.O_RDONLY | os.O_DIRECTORY)
metadata["manifest"] = integrity.build_manifest(images, metadata["manifest_algorithm"])
open(os.path.join(dest, "metadata.json"), "w").write(json.dumps(metadata))
"""


def test_details_of_a_forged_checkpoint_are_bounded(workloads, ckpt_dir):
    """A storage holder grows files.img to 64 MiB and rewrites the unsigned manifest to match: criu_checkpoint_info
    details=true took 42 s (past its timeout of 5 s) and 3.2 GiB as root in pycriu. The images parsed for details are
    bounded in bytes and time."""
    workload = workloads()
    dest = ckpt_dir / "ck"
    assert run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(dest), leave_running=True))["changed"]
    files = dest / "images" / "files.img"
    entry = b"\x08\x01\x10\x01" * ((64 << 20) // 4)
    files.write_bytes(files.read_bytes()[:8] + len(entry).to_bytes(4, "little") + entry)
    subprocess.run([sys.executable, "-c", REWRITE_MANIFEST, str(dest)], check=True,
                   env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "build", "collections")))

    started = time.monotonic()
    [listed] = run_module("criu_checkpoint_info", dict(path=str(ckpt_dir), details=True, timeout=5))["checkpoints"]
    took = time.monotonic() - started

    assert listed["valid"], listed
    assert listed["details"] == {"unavailable": "the images cannot be read: files.img would take the images parsed past 8 "
                                                "MiB (real ones are kilobytes): not parsed"}, listed
    assert took < 15, "details took %.1f s" % took
