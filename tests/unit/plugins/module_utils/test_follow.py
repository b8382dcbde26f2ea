"""Hashing page images while criu dump writes them (_follow)."""

import hashlib
import os
import time

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _follow as follow
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import SMALL_CHUNK, chunk_digests, dir_fd, manifest_of


def _append(path, chunks, follower):
    """Write the first chunk, wait until the follower has read it, then append the rest, as criu appends."""
    name = os.path.basename(path)
    with open(path, "ab") as handle:
        handle.write(chunks[0])
        handle.flush()
        deadline = time.monotonic() + 10
        while follower._images.get(name) is None or follower._images[name].size == 0:
            assert time.monotonic() < deadline, "the follower read nothing while the file grew"
            time.sleep(0.005)
        for chunk in chunks[1:]:
            handle.write(chunk)
            handle.flush()
            time.sleep(0.005)


@pytest.mark.parametrize("algorithm", integrity.available_algorithms())
def test_follower_hashes_a_growing_page_image(tmp_path, monkeypatch, algorithm):
    monkeypatch.setattr(follow, "FLUSH_EVERY", 64 * 1024)
    monkeypatch.setattr(follow, "CHUNK", 50 * 1024)
    chunks = [os.urandom(40 * 1024 + n) for n in range(12)]
    with dir_fd(tmp_path) as fd, follow.ImageFollower(fd, str(tmp_path), algorithm) as follower:
        _append(str(tmp_path / "pages-1.img"), chunks, follower)
        (tmp_path / "pagemap-1.img").write_bytes(b"not followed")
        (tmp_path / "pages-2.img").write_bytes(b"written at the very end")
        digests = follower.digests()
    data = b"".join(chunks)
    expected = integrity.new_digest(algorithm)
    expected.update(data)
    assert digests["pages-1.img"] == integrity.FileDigest(len(data), (expected.hexdigest(),))
    assert digests["pages-2.img"].size == len(b"written at the very end")
    assert "pagemap-1.img" not in digests


def test_follower_streams_podmans_export_as_it_grows(tmp_path, monkeypatch):
    """A container's migration sends the export while Podman writes it: every byte reaches on_chunk once, in order,
    and criu's page images (none in an export directory) are not what it follows."""
    monkeypatch.setattr(follow, "CHUNK", 50 * 1024)
    chunks = [os.urandom(40 * 1024 + n) for n in range(8)]
    sent = []

    def on_chunk(name, offset, data, image_fd):
        sent.append((name, offset, bytes(data), os.pread(image_fd, len(data), offset)))

    with dir_fd(tmp_path) as fd, follow.ImageFollower(fd, str(tmp_path), "sha256", write_back=False, followed=follow.FOLLOWED_EXPORT,
                                                      on_chunk=on_chunk) as follower:
        _append(str(tmp_path / "export.tar"), chunks, follower)
        (tmp_path / "pages-1.img").write_bytes(b"not followed here")
        digests = follower.digests()
    data = b"".join(chunks)
    assert list(digests) == ["export.tar"] and digests["export.tar"].size == len(data)
    assert b"".join(part for _name, _offset, part, _in_file in sent) == data and len(sent) > 1, "streamed in pieces while it grew"
    assert [offset for _name, offset, _part, _in_file in sent] == sorted({offset for _name, offset, _part, _in_file in sent})
    assert all(part == in_file for _name, _offset, part, in_file in sent), "the fd holds each chunk's bytes at its offset"


@pytest.mark.parametrize("algorithm", integrity.available_algorithms())
def test_follower_splits_a_growing_page_image_into_chunks(tmp_path, monkeypatch, small_chunks, algorithm):
    """Appends and reads that straddle chunk boundaries still give each chunk's digest."""
    monkeypatch.setattr(follow, "FLUSH_EVERY", 64 * 1024)
    monkeypatch.setattr(follow, "CHUNK", SMALL_CHUNK // 3 + 5)
    chunks = [os.urandom(SMALL_CHUNK // 4 + 1001 * n) for n in range(12)]
    with dir_fd(tmp_path) as fd, follow.ImageFollower(fd, str(tmp_path), algorithm) as follower:
        _append(str(tmp_path / "pages-1.img"), chunks, follower)
        digests = follower.digests()
    data = b"".join(chunks)
    assert len(data) > 3 * SMALL_CHUNK
    assert digests["pages-1.img"] == integrity.FileDigest(len(data), tuple(chunk_digests(data, SMALL_CHUNK, algorithm)))


def test_follower_hashed_image_matches_the_manifest_of_the_same_file(tmp_path):
    (tmp_path / "pages-7.img").write_bytes(os.urandom(300 * 1024))
    with dir_fd(tmp_path) as fd, follow.ImageFollower(fd, str(tmp_path), "sha256") as follower:
        digests = follower.digests()
    manifest = manifest_of(tmp_path)
    assert manifest == [{"path": "pages-7.img", "size": digests["pages-7.img"].size, "chunks": list(digests["pages-7.img"].chunks)}]
    assert digests["pages-7.img"].chunks == (hashlib.sha256((tmp_path / "pages-7.img").read_bytes()).hexdigest(),)


def test_follower_chunks_match_the_manifest_of_the_same_file(tmp_path, small_chunks):
    """What the dump hashes as criu writes and what build_manifest hashes afterwards are the same chunks."""
    data = os.urandom(5 * SMALL_CHUNK + 123)
    (tmp_path / "pages-7.img").write_bytes(data)
    (tmp_path / "pages-8.img").write_bytes(data[:2 * SMALL_CHUNK])  # ends exactly at a chunk boundary
    with dir_fd(tmp_path) as fd, follow.ImageFollower(fd, str(tmp_path), "sha256") as follower:
        digests = follower.digests()
    assert manifest_of(tmp_path) == manifest_of(tmp_path, hashed=digests)
    assert [integrity.manifest_entry(name, digests[name]) for name in sorted(digests)] == manifest_of(tmp_path)
    assert digests["pages-7.img"].chunks == tuple(chunk_digests(data, SMALL_CHUNK))
    assert len(digests["pages-8.img"].chunks) == 2


def test_follower_refuses_a_symlinked_page_image(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"secret")
    images = tmp_path / "images"
    images.mkdir()
    os.symlink(str(target), str(images / "pages-1.img"))
    with dir_fd(images) as fd, follow.ImageFollower(fd, str(images), "sha256") as follower:
        with pytest.raises(CriuError, match="Cannot hash the page images in %s as criu writes them" % images) as err:
            follower.digests()
    assert err.value.details["path"] == str(images)


def test_follower_closes_its_files(tmp_path):
    (tmp_path / "pages-1.img").write_bytes(b"x" * 1000)
    with dir_fd(tmp_path) as fd:
        before = sorted(os.listdir("/proc/self/fd"))
        with follow.ImageFollower(fd, str(tmp_path), "sha256") as follower:
            follower.digests()
        assert sorted(os.listdir("/proc/self/fd")) == before
        os.fstat(fd)  # the caller's fd stays open: the follower lists through its own


def test_follower_reads_the_directory_its_fd_holds(tmp_path):
    """The images are followed through the fd, even once the path names another directory."""
    (tmp_path / "images").mkdir()
    with dir_fd(tmp_path / "images") as fd:
        os.rename(tmp_path / "images", tmp_path / "moved")
        (tmp_path / "images").mkdir()
        (tmp_path / "images" / "pages-1.img").write_bytes(b"decoy")
        (tmp_path / "moved" / "pages-2.img").write_bytes(b"real")
        with follow.ImageFollower(fd, str(tmp_path / "images"), "sha256") as follower:
            digests = follower.digests()
    assert set(digests) == {"pages-2.img"} and digests["pages-2.img"].size == 4
