# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""metadata.json, its manifest of every image byte, and the HMAC that signs it.

CRIU itself detects neither corrupted nor truncated page images, so this manifest is
what stands between a damaged (or forged) checkpoint and code running as root. Without
a key the manifest detects accidents; with a key it detects tampering.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import hmac
import json
import mmap
import os
import posixpath
import re
import stat
import sys
import time
import types
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

_blake3: t.Optional[types.ModuleType]  # optional: hash_algorithm=blake3 needs it
try:
    import blake3 as _blake3
except ImportError:
    _blake3 = None

# 2: the manifest holds a digest per CHUNK_BYTES of each image (verified on every core); 1 (one digest per
# image) is still read.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
DEFAULT_ALGORITHM = "sha256"
HASH_ALGORITHMS = ("sha256", "blake3")
# Bytes of an image mapped at a time while hashing: per hashing thread, what the RSS grows by (larger windows hash
# no faster here: 1 GiB in 0.57-0.60 s with 1 MiB and 0.55-0.65 s with 8 MiB on two cores).
WINDOW = 1024 * 1024
# manifest_chunk_bytes must be a multiple of this (the format's rule, independent of WINDOW).
CHUNK_ALIGN = 8 * 1024 * 1024
CHUNK_BYTES = 64 * 1024 * 1024
MAX_CHUNK_BYTES = 1024 * 1024 * 1024
# Hashing releases the GIL: one thread per core keeps every core busy, a few more overlap the page-cache reads.
HASH_THREADS = max(4, os.cpu_count() or 1)
FILE_BATCH = 64
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}\Z")
BLAKE3_HINT = ("Install it for the Python that runs the modules on that host (Debian 13: apt install python3-blake3; "
               "elsewhere: pip install blake3), or checkpoint with hash_algorithm=sha256.")
_REQUIRED = {
    "schema_version": int, "id": str, "name": str, "created_at": str, "source": dict,
    "criu": dict, "process": dict, "options": dict, "manifest": list,
}


# A container's checkpoint holds Podman's export alone (images/export.tar), and says which container it was.
CONTAINER_EXPORT = "export.tar"
CONTAINER_KEYS = ("engine", "id", "name", "image_id", "image_name")


class FileDigest(t.NamedTuple):
    """An image's size and the digest of each of its chunks (schema 1: one digest for the whole file)."""
    size: int
    chunks: t.Tuple[str, ...]


def available_algorithms() -> t.List[str]:
    """The manifest algorithms this Python can compute: sha256 always, blake3 when its module is installed."""
    return [name for name in HASH_ALGORITHMS if name == "sha256" or _blake3 is not None]


def choose_algorithm(requested: str) -> str:
    """``auto`` picks blake3 when available (about 4x faster per core, and it uses every core), else sha256."""
    if requested == "auto":
        return "blake3" if _blake3 is not None else DEFAULT_ALGORITHM
    if requested not in available_algorithms():
        raise CriuError("hash_algorithm=%s needs the Python module blake3, which %s cannot import. %s"
                        % (requested, sys.executable, BLAKE3_HINT))
    return requested


def new_digest(algorithm: str) -> t.Any:
    if algorithm == "blake3":
        if _blake3 is None:  # (callers check available_algorithms() first)
            raise CriuError("hash_algorithm=blake3 needs the Python module blake3, which %s cannot import. %s"
                            % (sys.executable, BLAKE3_HINT))
        return _blake3.blake3(max_threads=_blake3.blake3.AUTO)
    return hashlib.sha256()


class Timeout(Exception):
    """Verification ran past its deadline."""


class Digester:
    """Digests of consecutive ``chunk_bytes`` chunks of a stream fed in order (one chunk when ``chunk_bytes`` is
    None): what the dump computes as criu writes, and a migration's target as the bytes arrive."""

    def __init__(self, algorithm: str, chunk_bytes: t.Optional[int] = CHUNK_BYTES) -> None:
        self.algorithm = algorithm
        self.chunk_bytes = chunk_bytes
        self.size = 0
        self._done: t.List[str] = []
        self._current = new_digest(algorithm)
        self._in_chunk = 0

    def update(self, data: t.Union[bytes, bytearray, memoryview]) -> None:
        view = memoryview(data)
        while view:
            take = len(view) if self.chunk_bytes is None else min(len(view), self.chunk_bytes - self._in_chunk)
            self._current.update(view[:take])
            self._in_chunk += take
            self.size += take
            view = view[take:]
            if self._in_chunk == self.chunk_bytes:
                self._done.append(self._current.hexdigest())
                self._current = new_digest(self.algorithm)
                self._in_chunk = 0

    def result(self) -> FileDigest:
        chunks = list(self._done)
        if self._in_chunk or not chunks:
            chunks.append(self._current.hexdigest())
        return FileDigest(self.size, tuple(chunks))


def chunk_ranges(size: int, chunk_bytes: t.Optional[int]) -> t.List[t.Tuple[int, int]]:
    """(offset, length) of every chunk of a file of ``size`` bytes; one (possibly empty) chunk at least."""
    if chunk_bytes is None or size <= chunk_bytes:
        return [(0, size)]
    return [(offset, min(chunk_bytes, size - offset)) for offset in range(0, size, chunk_bytes)]


def hash_range(fd: int, algorithm: str, offset: int, length: int, deadline: t.Optional[float] = None) -> str:
    """Digest of ``length`` bytes at ``offset`` of an open file, through read-only mappings of WINDOW bytes: no
    copy, the hash (which releases the GIL) reads the page cache directly, and unmapping each window keeps the RSS
    small whatever the size. Raises Timeout once ``deadline`` (time.monotonic()) has passed."""
    digest = new_digest(algorithm)
    for start in range(offset, offset + length, WINDOW):
        if deadline is not None and time.monotonic() > deadline:
            raise Timeout()
        with mmap.mmap(fd, min(WINDOW, offset + length - start), access=mmap.ACCESS_READ, offset=start) as window:
            digest.update(window)
    return digest.hexdigest()


def open_image(images_fd: int, relpath: str) -> int:
    """Open an image relative to images/ without following a symlink; refuse anything but a regular file."""
    fd = os.open(relpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=images_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def list_images(images_fd: int) -> t.List[str]:
    """Every entry under images/ (sorted names); CRIU writes a flat directory."""
    return sorted(safepath.listdir(images_fd))


def image_problem(fd: int, name: str, expected_size: int) -> t.Optional[str]:
    """What makes an open image untrustworthy before a byte of it is hashed: another user could change it, it has
    other names (hard links) through which it could be changed, or its size is not the manifest's."""
    st = os.fstat(fd)
    problem = safepath.entry_problem(st, os.geteuid())
    if problem:
        return "images/%s %s: another user could change it" % (name, problem)
    if st.st_nlink != 1:
        return "images/%s has %d hard links: it could be changed through a name outside the checkpoint" % (name, st.st_nlink)
    if st.st_size != expected_size:
        return "images/%s: size expected %d, found %d" % (name, expected_size, st.st_size)
    return None


def _read_error(name: str, exc: OSError) -> str:
    reason = "a symlink" if exc.errno == errno.ELOOP else ("not a regular file" if exc.errno == errno.EINVAL else exc.strerror)
    return "images/%s: cannot be read as a regular file (%s)" % (name, reason)


def _hash_all(images_fd: int, names: t.Sequence[str], algorithm: str, chunk_bytes: t.Optional[int],
              check: t.Callable[[int, str], t.Optional[str]] = lambda fd, name: None,
              deadline: t.Optional[float] = None) -> t.Dict[str, t.Union[FileDigest, str]]:
    """Hash files chunk by chunk in parallel threads, so one large page image uses every core: each name's
    digests, or the problem that ``check`` found in it (on the open file, before hashing) or that reading it met.
    Files are opened FILE_BATCH at a time, so a tree with thousands of threads (one core image each) stays far
    below the fd limit."""
    results: t.Dict[str, t.Union[FileDigest, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        for start in range(0, len(names), FILE_BATCH):
            results.update(_hash_batch(pool, images_fd, names[start:start + FILE_BATCH], algorithm, chunk_bytes, check, deadline))
    return results


def _hash_batch(pool: concurrent.futures.ThreadPoolExecutor, images_fd: int, names: t.Sequence[str], algorithm: str,
                chunk_bytes: t.Optional[int], check: t.Callable[[int, str], t.Optional[str]],
                deadline: t.Optional[float]) -> t.Dict[str, t.Union[FileDigest, str]]:
    results: t.Dict[str, t.Union[FileDigest, str]] = {}
    opened: t.Dict[str, int] = {}
    tasks: t.List[t.Tuple[str, int, int]] = []
    try:
        for name in names:
            try:
                fd = open_image(images_fd, name)
            except OSError as exc:
                results[name] = _read_error(name, exc)
                continue
            opened[name] = fd
            problem = check(fd, name)
            if problem:
                results[name] = problem
                continue
            tasks += [(name, offset, length) for offset, length in chunk_ranges(os.fstat(fd).st_size, chunk_bytes)]

        def one(task: t.Tuple[str, int, int]) -> t.Union[str, OSError]:
            name, offset, length = task
            try:
                return hash_range(opened[name], algorithm, offset, length, deadline)
            except OSError as exc:
                return exc
        chunks: t.Dict[str, t.List[str]] = {}
        for (name, _offset, _length), digest in zip(tasks, pool.map(one, tasks)):
            if isinstance(digest, OSError):
                results[name] = _read_error(name, digest)
            elif name not in results:
                chunks.setdefault(name, []).append(digest)
        for name, found in chunks.items():
            if name not in results:
                results[name] = FileDigest(os.fstat(opened[name]).st_size, tuple(found))
    finally:
        for fd in opened.values():
            os.close(fd)
    return results


def manifest_entry(name: str, digest: FileDigest) -> t.Dict[str, t.Any]:
    return {"path": name, "size": digest.size, "chunks": list(digest.chunks)}


def build_manifest(images_fd: int, algorithm: str,
                   hashed: t.Optional[t.Mapping[str, FileDigest]] = None) -> t.List[t.Dict[str, t.Any]]:
    """The manifest of a freshly dumped images/ directory: name, size and chunk digests of every file.
    ``hashed`` holds the files already hashed while criu wrote them; the rest are hashed now."""
    done: t.Dict[str, t.Union[FileDigest, str]] = dict(hashed or {})
    names = list_images(images_fd)
    done.update(_hash_all(images_fd, [name for name in names if name not in done], algorithm, CHUNK_BYTES))
    manifest = []
    for name in names:
        result = done[name]
        if isinstance(result, str):
            raise CriuError("Cannot hash the freshly dumped image: %s." % result)
        manifest.append(manifest_entry(name, result))
    return manifest


def canonical(metadata: t.Mapping[str, t.Any]) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(metadata: t.Mapping[str, t.Any], key: bytes) -> str:
    return hmac.new(key, canonical(metadata), hashlib.sha256).hexdigest()


MIN_KEY_BYTES = 16
KEY_HINT = "Use a random key of at least 16 bytes (32 recommended), e.g. the output of: openssl rand -hex 32."


def _require_key_length(key: bytes, source: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise CriuError("%s is %d bytes long; a signing key must have at least %d bytes. %s" % (source, len(key), MIN_KEY_BYTES, KEY_HINT))
    return key


def load_key(hmac_key: t.Optional[str], hmac_key_file: t.Optional[str]) -> t.Optional[bytes]:
    """The HMAC key from the option or from a file only the caller (or root) can read and change. An empty
    option is an error, never "no key": a template that renders empty must not turn signature checks off."""
    if hmac_key is not None and hmac_key_file is not None:
        raise CriuError("hmac_key and hmac_key_file are mutually exclusive. Give only one of them.")
    if hmac_key is not None:
        if not hmac_key:
            raise CriuError("hmac_key is empty. Give the key, or omit hmac_key to work without a signature. %s" % KEY_HINT)
        return _require_key_length(hmac_key.encode("utf-8"), "hmac_key")
    if hmac_key_file is None:
        return None
    if not hmac_key_file:
        raise CriuError("hmac_key_file is empty. Give the path of the key file, or omit hmac_key_file to work without a signature.")
    remedy = "Keep the key in a file owned by root with mode 0600, under directories only root can change."
    try:
        fd, real = safepath.open_file(hmac_key_file, "hmac_key_file", remedy)
    except FileNotFoundError as exc:
        raise CriuError("hmac_key_file %s does not exist. %s" % (hmac_key_file, remedy), path=hmac_key_file) from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if st.st_uid not in (0, os.geteuid()):
            raise CriuError("hmac_key_file %s is owned by uid %d, not root or uid %d. chown it to the user running the module."
                            % (real, st.st_uid, os.geteuid()), path=hmac_key_file)
        if st.st_mode & 0o077:
            raise CriuError("hmac_key_file %s is readable or writable by group/others (mode %04o). Run chmod 0600 %s."
                            % (real, stat.S_IMODE(st.st_mode), real), path=hmac_key_file)
        key = handle.read(64 * 1024).rstrip(b"\r\n")
    if not key:
        raise CriuError("hmac_key_file %s is empty. %s" % (real, KEY_HINT), path=hmac_key_file)
    return _require_key_length(key, "The key in hmac_key_file %s" % real)


def manifest_path_problem(path: t.Any) -> t.Optional[str]:
    """Why a manifest path is unsafe, or None: it must be relative, normalised and stay inside images/."""
    if not isinstance(path, str) or not path:
        return "manifest path %r is not a non-empty string" % (path,)
    if path.startswith("/"):
        return "manifest path %r is absolute" % path
    if posixpath.normpath(path) != path or path.split("/")[0] in ("..", ".") or "/../" in "/%s/" % path:
        return "manifest path %r is not normalised or leaves images/" % path
    if "\0" in path:
        return "manifest path %r holds a NUL byte" % path
    return None


def manifest_algorithm(metadata: t.Mapping[str, t.Any]) -> t.Any:
    """The algorithm the manifest's digests use; checkpoints older than the field are sha256."""
    return metadata.get("manifest_algorithm", DEFAULT_ALGORITHM)


def manifest_chunk_bytes(metadata: t.Mapping[str, t.Any]) -> t.Optional[int]:
    """Bytes per digest in the manifest: schema 2's manifest_chunk_bytes, None (the whole file) in schema 1."""
    return metadata.get("manifest_chunk_bytes") if metadata.get("schema_version") == 2 else None


def expected_chunks(entry: t.Mapping[str, t.Any], algorithm: str, chunk_bytes: t.Optional[int]) -> t.Tuple[str, ...]:
    return tuple(entry["chunks"]) if chunk_bytes is not None else (entry[algorithm],)


def chunk_count(size: int, chunk_bytes: t.Optional[int]) -> int:
    """How many chunks a file of ``size`` bytes has (computed, never listed: a forged size may be huge)."""
    if chunk_bytes is None or size <= chunk_bytes:
        return 1
    return -(-size // chunk_bytes)


def _digest_problem(value: t.Any) -> bool:
    """A digest must be 64 lowercase hex characters (sha256 and blake3 alike); anything else is refused early."""
    return not isinstance(value, str) or not _HEX_DIGEST.match(value)


def _entry_problems(entry: t.Mapping[str, t.Any], algorithm: str, chunk_bytes: t.Optional[int]) -> t.List[str]:
    problems = []
    path_problem = manifest_path_problem(entry.get("path"))
    if path_problem:
        problems.append(path_problem)
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return problems + ["manifest entry %r has no valid size" % entry.get("path")]
    if chunk_bytes is None:
        if _digest_problem(entry.get(algorithm)):
            problems.append("manifest entry %r has no %s digest (64 hex characters)" % (entry.get("path"), algorithm))
        return problems
    chunks = entry.get("chunks")
    wanted = chunk_count(size, chunk_bytes)
    if not isinstance(chunks, list) or len(chunks) != wanted or any(_digest_problem(chunk) for chunk in chunks):
        problems.append("manifest entry %r has no list of %d %s chunk digests" % (entry.get("path"), wanted, algorithm))
    return problems


def parse_metadata(raw: bytes) -> t.Tuple[t.Optional[t.Dict[str, t.Any]], t.List[str]]:
    """Load metadata.json and check its shape; returns (metadata or None, problems)."""
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except RecursionError:
        return None, ["metadata.json is not valid JSON: nested too deeply"]
    except (UnicodeDecodeError, ValueError) as exc:
        return None, ["metadata.json is not valid JSON: %s" % exc]
    if not isinstance(metadata, dict):
        return None, ["metadata.json does not hold a JSON object"]
    version = metadata.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        return None, [
            "metadata.json has schema_version %d, newer than the %d this nucleus.criu understands: upgrade the collection"
            % (version, SCHEMA_VERSION)
        ]
    problems = []
    for key, kind in _REQUIRED.items():
        value = metadata.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append("metadata.json: %s is missing or not a %s" % (key, kind.__name__))
    if problems:
        return None, problems
    if version not in SCHEMA_VERSIONS:
        return None, ["metadata.json has unsupported schema_version %r (expected one of %s)"
                      % (version, ", ".join(map(str, SCHEMA_VERSIONS)))]
    algorithm = manifest_algorithm(metadata)
    if algorithm not in HASH_ALGORITHMS:
        return None, ["metadata.json: manifest_algorithm %r is not supported (expected one of %s): upgrade nucleus.criu"
                      % (algorithm, ", ".join(HASH_ALGORITHMS))]
    if algorithm not in available_algorithms():
        return None, ["the checkpoint's manifest uses blake3, which %s cannot import. %s" % (sys.executable, BLAKE3_HINT)]
    chunk_bytes = manifest_chunk_bytes(metadata)
    if version == 2 and (not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or chunk_bytes <= 0
                         or chunk_bytes % CHUNK_ALIGN or chunk_bytes > MAX_CHUNK_BYTES):
        return None, ["metadata.json: manifest_chunk_bytes %r is not a multiple of %d up to %d" % (chunk_bytes, CHUNK_ALIGN, MAX_CHUNK_BYTES)]
    for index, entry in enumerate(metadata["manifest"]):
        if not isinstance(entry, dict):
            problems.append("manifest entry %d is not an object" % index)
            continue
        problems += _entry_problems(entry, algorithm, chunk_bytes)
    paths = [e.get("path") for e in metadata["manifest"] if isinstance(e, dict)]
    if len(set(map(str, paths))) != len(paths):
        problems.append("manifest lists a path more than once")
    container = metadata.get("container")
    if container is not None:
        if not isinstance(container, dict) or not all(isinstance(container.get(key), str) for key in CONTAINER_KEYS):
            problems.append("metadata.json: container is not an object with %s" % ", ".join(CONTAINER_KEYS))
        elif paths != [CONTAINER_EXPORT]:
            problems.append("the manifest of a container checkpoint must list %s alone" % CONTAINER_EXPORT)
    elif "inventory.img" not in paths:
        problems.append("the manifest lists no inventory.img: it does not describe a CRIU checkpoint")
    return (None if problems else metadata), problems


def check_images(images_fd: int, metadata: t.Mapping[str, t.Any], timeout: t.Optional[float] = None) -> t.List[str]:
    """Compare images/ with the metadata's manifest: missing, extra, non-regular, multiply linked, changeable by
    others, resized or altered files. Sizes and ownership are checked on the open file before any byte is hashed."""
    if images_fd < 0:
        return ["images/ is missing"]
    present = set(list_images(images_fd))
    expected = {entry["path"]: entry for entry in metadata["manifest"]}
    problems = ["images/%s: not in the manifest (extra file)" % extra for extra in sorted(present - set(expected))]
    problems += ["images/%s: listed in the manifest but missing" % missing for missing in sorted(set(expected) - present)]
    names = sorted(present & set(expected))
    deadline = None if timeout is None else time.monotonic() + timeout
    algorithm, chunk_bytes = manifest_algorithm(metadata), manifest_chunk_bytes(metadata)
    try:
        results = _hash_all(images_fd, names, algorithm, chunk_bytes,
                            lambda fd, name: image_problem(fd, name, expected[name]["size"]), deadline)
    except Timeout:
        return problems + ["verification did not finish within %ss; raise timeout for checkpoints this large" % timeout]
    return problems + digest_problems(expected, algorithm, chunk_bytes, results)


def digest_problems(expected: t.Mapping[str, t.Mapping[str, t.Any]], algorithm: str, chunk_bytes: t.Optional[int],
                    found: t.Mapping[str, t.Union[FileDigest, str]]) -> t.List[str]:
    """Compare digests found (or the problem met reading a file) with the manifest's, in constant time; the first
    differing chunk of each file is named."""
    problems = []
    for name in sorted(found):
        result = found[name]
        if isinstance(result, str):
            problems.append(result)
            continue
        if result.size != expected[name]["size"]:
            problems.append("images/%s: size expected %d, found %d" % (name, expected[name]["size"], result.size))
            continue
        wanted = expected_chunks(expected[name], algorithm, chunk_bytes)
        ranges = chunk_ranges(result.size, chunk_bytes)
        for (offset, length), want, got in zip(ranges, wanted, result.chunks):
            if not hmac.compare_digest(got, want):
                where = " (bytes %d-%d)" % (offset, offset + length - 1) if len(ranges) > 1 else ""
                problems.append("images/%s: %s expected %s, found %s%s" % (name, algorithm, want, got, where))
                break
    return problems


def received_problems(metadata: t.Mapping[str, t.Any], found: t.Mapping[str, FileDigest]) -> t.List[str]:
    """Compare images digested as they were received and written (by this host, into its private directory) with the
    manifest: the same verdict as check_images, without reading the bytes a second time."""
    expected = {entry["path"]: entry for entry in metadata["manifest"]}
    problems = ["images/%s: not in the manifest (extra file)" % extra for extra in sorted(set(found) - set(expected))]
    problems += ["images/%s: listed in the manifest but missing" % missing for missing in sorted(set(expected) - set(found))]
    if manifest_chunk_bytes(metadata) != CHUNK_BYTES:
        return problems + ["the manifest's chunks are %r bytes, this host digested %d" % (manifest_chunk_bytes(metadata), CHUNK_BYTES)]
    return problems + digest_problems(expected, manifest_algorithm(metadata), CHUNK_BYTES,
                                      {name: found[name] for name in found if name in expected})


def check_signature(checkpoint: store.Checkpoint, metadata: t.Mapping[str, t.Any], key: t.Optional[bytes],
                    require_signature: bool, skip_signature_check: bool) -> t.List[str]:
    """With a key, a checkpoint must carry a matching signature. Without one, a signed checkpoint is refused unless
    the caller opted out (its signature then goes unchecked), and an unsigned one unless require_signature."""
    try:
        raw = checkpoint.read(store.SIGNATURE)
    except CriuError as exc:
        return [exc.msg]
    return signature_problems(raw, metadata, key, require_signature, skip_signature_check)


def signature_problems(raw: t.Optional[bytes], metadata: t.Mapping[str, t.Any], key: t.Optional[bytes],
                       require_signature: bool, skip_signature_check: bool) -> t.List[str]:
    """The verdict on a signature's bytes (None: unsigned); see check_signature."""
    if raw is None:
        if key is not None or require_signature:
            return ["%s is missing: the checkpoint is unsigned but a signature is required" % store.SIGNATURE]
        return []
    if key is None:
        if skip_signature_check and not require_signature:
            return []
        return ["the checkpoint is signed but no key was given: pass hmac_key or hmac_key_file, or set skip_signature_check=true "
                "to accept it without checking its signature"]
    found = raw.decode("ascii", "replace").strip()
    if not hmac.compare_digest(found.encode("ascii", "replace"), sign(metadata, key).encode("ascii")):
        return ["%s does not match: the metadata or an image was altered, or the key is wrong" % store.SIGNATURE]
    return []


class Verdict(t.NamedTuple):
    metadata: t.Optional[t.Dict[str, t.Any]]
    problems: t.List[str]
    unexpected: t.List[str]
    seconds: float = 0.0  # spent reading and hashing images
    bytes: int = 0  # image bytes hashed

    def stats(self) -> t.Dict[str, t.Any]:
        return {"verify_seconds": round(self.seconds, 3), "verify_bytes": self.bytes}


def verify(checkpoint: store.Checkpoint, key: t.Optional[bytes] = None, require_signature: bool = False,
           skip_signature_check: bool = False, timeout: t.Optional[float] = None,
           hashed: bool = True) -> Verdict:
    """Check an open checkpoint end to end: metadata, signature and (unless ``hashed`` is false) every image byte."""
    unexpected = checkpoint.unexpected_entries()
    try:
        raw = checkpoint.read(store.METADATA)
    except CriuError as exc:
        return Verdict(None, [exc.msg], unexpected)
    if raw is None:
        return Verdict(None, ["%s: no checkpoint here (metadata.json is missing)" % checkpoint.path], unexpected)
    metadata, problems = parse_metadata(raw)
    if metadata is None:
        return Verdict(None, problems, unexpected)
    problems = check_signature(checkpoint, metadata, key, require_signature, skip_signature_check)
    if not hashed:
        return Verdict(metadata, problems, unexpected)
    started = time.monotonic()
    problems += check_images(checkpoint.images_fd, metadata, timeout)
    return Verdict(metadata, problems, unexpected, time.monotonic() - started,
                   sum(entry["size"] for entry in metadata["manifest"]))


def public(metadata: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The metadata as task results show it: the process's command name, never its arguments (they may hold
    secrets; they stay in the root-only metadata.json)."""
    shown = dict(metadata)
    if isinstance(shown.get("process"), dict):
        shown["process"] = {key: value for key, value in shown["process"].items() if key != "cmdline"}
    return shown
