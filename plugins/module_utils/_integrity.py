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
import stat
import sys
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils import _store as store

try:
    import blake3 as _blake3
except ImportError:
    _blake3 = None

SCHEMA_VERSION = 1
DEFAULT_ALGORITHM = "sha256"
HASH_ALGORITHMS = ("sha256", "blake3")
WINDOW = 8 * 1024 * 1024
HASH_THREADS = 4
BLAKE3_HINT = ("Install it for the Python that runs the modules on that host (Debian 13: apt install python3-blake3; "
               "elsewhere: pip install blake3), or checkpoint with hash_algorithm=sha256.")
_REQUIRED = {
    "schema_version": int, "id": str, "name": str, "created_at": str, "source": dict,
    "criu": dict, "process": dict, "options": dict, "manifest": list,
}


class FileDigest(t.NamedTuple):
    size: int
    digest: str


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
        return _blake3.blake3(max_threads=_blake3.blake3.AUTO)
    return hashlib.sha256()


def hash_open_file(fd: int, algorithm: str) -> FileDigest:
    """Hash an open file through read-only mappings of WINDOW bytes: no copy, and the hash (which releases
    the GIL) reads the page cache directly; unmapping each window keeps the RSS small whatever the size."""
    digest = new_digest(algorithm)
    size = os.fstat(fd).st_size
    for offset in range(0, size, WINDOW):
        with mmap.mmap(fd, min(WINDOW, size - offset), access=mmap.ACCESS_READ, offset=offset) as window:
            digest.update(window)
    return FileDigest(size, digest.hexdigest())


def open_image(images_fd: int, relpath: str) -> int:
    """Open an image relative to images/ without following a symlink; refuse anything but a regular file."""
    fd = os.open(relpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=images_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def hash_image(images_fd: int, relpath: str, algorithm: str) -> FileDigest:
    fd = open_image(images_fd, relpath)
    try:
        return hash_open_file(fd, algorithm)
    finally:
        os.close(fd)


def list_images(images_dir: str) -> t.List[str]:
    """Every entry under images/ (sorted relative paths); CRIU writes a flat directory."""
    return sorted(os.listdir(images_dir))


def _hash_all(images_dir: str, names: t.Sequence[str], algorithm: str) -> t.Dict[str, t.Union[FileDigest, OSError]]:
    """Hash files in parallel threads (the hashes release the GIL), each result or its OSError by name."""
    dir_fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        def one(name: str) -> t.Union[FileDigest, OSError]:
            try:
                return hash_image(dir_fd, name, algorithm)
            except OSError as exc:
                return exc
        with concurrent.futures.ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
            return dict(zip(names, pool.map(one, names)))
    finally:
        os.close(dir_fd)


def build_manifest(images_dir: str, algorithm: str,
                   hashed: t.Optional[t.Mapping[str, FileDigest]] = None) -> t.List[t.Dict[str, t.Any]]:
    """The manifest of a freshly dumped images/ directory: path, size and digest of every file.
    ``hashed`` holds the files already hashed while criu wrote them; the rest are hashed now."""
    hashed = dict(hashed or {})
    names = list_images(images_dir)
    hashed.update(_hash_all(images_dir, [name for name in names if name not in hashed], algorithm))
    manifest = []
    for name in names:
        result = hashed[name]
        if isinstance(result, OSError):
            raise CriuError("Cannot hash image %s/%s: %s." % (images_dir, name, result.strerror), path=images_dir)
        manifest.append({"path": name, "size": result.size, algorithm: result.digest})
    return manifest


def canonical(metadata: t.Mapping[str, t.Any]) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, ASCII only."""
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(metadata: t.Mapping[str, t.Any], key: bytes) -> str:
    return hmac.new(key, canonical(metadata), hashlib.sha256).hexdigest()


def load_key(hmac_key: t.Optional[str], hmac_key_file: t.Optional[str]) -> t.Optional[bytes]:
    """The HMAC key from the option or from a file only the caller (or root) can read."""
    if hmac_key and hmac_key_file:
        raise CriuError("hmac_key and hmac_key_file are mutually exclusive. Give only one of them.")
    if hmac_key:
        return hmac_key.encode("utf-8")
    if not hmac_key_file:
        return None
    try:
        fd = os.open(hmac_key_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise CriuError("Cannot open hmac_key_file %s: %s. Give a regular file (not a symlink)." % (hmac_key_file, exc.strerror), path=hmac_key_file) from exc
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CriuError("hmac_key_file %s is not a regular file." % hmac_key_file, path=hmac_key_file)
        if st.st_uid not in (0, os.geteuid()):
            raise CriuError(
                "hmac_key_file %s is owned by uid %d, not root or uid %d. chown it to the user running the module."
                % (hmac_key_file, st.st_uid, os.geteuid()),
                path=hmac_key_file,
            )
        if st.st_mode & 0o077:
            raise CriuError(
                "hmac_key_file %s is readable or writable by group/others (mode %04o). Run chmod 0600 %s."
                % (hmac_key_file, stat.S_IMODE(st.st_mode), hmac_key_file),
                path=hmac_key_file,
            )
        key = handle.read(64 * 1024).rstrip(b"\r\n")
    if not key:
        raise CriuError("hmac_key_file %s is empty. Put a secret (e.g. 32 random bytes, hex) in it." % hmac_key_file, path=hmac_key_file)
    return key


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
    if version != SCHEMA_VERSION:
        return None, ["metadata.json has unsupported schema_version %r (expected %d)" % (version, SCHEMA_VERSION)]
    algorithm = manifest_algorithm(metadata)
    if algorithm not in HASH_ALGORITHMS:
        return None, ["metadata.json: manifest_algorithm %r is not supported (expected one of %s): upgrade nucleus.criu"
                      % (algorithm, ", ".join(HASH_ALGORITHMS))]
    if algorithm not in available_algorithms():
        return None, ["the checkpoint's manifest uses blake3, which %s cannot import. %s" % (sys.executable, BLAKE3_HINT)]
    for index, entry in enumerate(metadata["manifest"]):
        if not isinstance(entry, dict):
            problems.append("manifest entry %d is not an object" % index)
            continue
        path_problem = manifest_path_problem(entry.get("path"))
        if path_problem:
            problems.append(path_problem)
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append("manifest entry %r has no valid size" % entry.get("path"))
        if not isinstance(entry.get(algorithm), str):
            problems.append("manifest entry %r has no %s digest" % (entry.get("path"), algorithm))
    paths = [e.get("path") for e in metadata["manifest"] if isinstance(e, dict)]
    if len(set(map(str, paths))) != len(paths):
        problems.append("manifest lists a path more than once")
    return (None if problems else metadata), problems


def check_images(images_dir: str, manifest: t.Sequence[t.Mapping[str, t.Any]], algorithm: str) -> t.List[str]:
    """Compare images/ with the manifest: missing, extra, non-regular, resized or altered files."""
    try:
        store.inspect_dir(images_dir, "Images directory")
        present = set(list_images(images_dir))
    except CriuError as exc:
        return [exc.msg]
    except OSError as exc:
        return ["images/ cannot be listed: %s" % exc.strerror]
    problems = []
    expected = {entry["path"]: entry for entry in manifest}
    for extra in sorted(present - set(expected)):
        problems.append("images/%s: not in the manifest (extra file)" % extra)
    for missing in sorted(set(expected) - present):
        problems.append("images/%s: listed in the manifest but missing" % missing)
    names = sorted(present & set(expected))
    for name, result in _hash_all(images_dir, names, algorithm).items():
        entry = expected[name]
        if isinstance(result, OSError):
            reason = "a symlink" if result.errno == errno.ELOOP else ("not a regular file" if result.errno == errno.EINVAL else result.strerror)
            problems.append("images/%s: cannot be read as a regular file (%s)" % (name, reason))
        elif result.size != entry["size"]:
            problems.append("images/%s: size expected %d, found %d" % (name, entry["size"], result.size))
        elif not hmac.compare_digest(result.digest, entry[algorithm]):
            problems.append("images/%s: %s expected %s, found %s" % (name, algorithm, entry[algorithm], result.digest))
    return problems


def check_signature(dest: str, metadata: t.Mapping[str, t.Any], key: t.Optional[bytes], require_signature: bool) -> t.List[str]:
    """With a key, a checkpoint must carry a matching signature; without one, only require_signature can demand it."""
    try:
        raw = store.read_small_file(dest, store.SIGNATURE)
    except CriuError as exc:
        return [exc.msg]
    if raw is None:
        if key is not None or require_signature:
            return ["%s is missing: the checkpoint is unsigned but a signature is required" % store.SIGNATURE]
        return []
    if key is None:
        return ["the checkpoint is signed but no key was given: pass hmac_key or hmac_key_file"] if require_signature else []
    found = raw.decode("ascii", "replace").strip()
    if not hmac.compare_digest(found.encode("ascii", "replace"), sign(metadata, key).encode("ascii")):
        return ["%s does not match: the metadata or an image was altered, or the key is wrong" % store.SIGNATURE]
    return []


def verify(dest: str, key: t.Optional[bytes] = None, require_signature: bool = False) -> t.Tuple[t.Optional[t.Dict[str, t.Any]], t.List[str]]:
    """Check a checkpoint directory end to end; returns (metadata if readable, every problem found)."""
    try:
        store.inspect_dir(dest)
        raw = store.read_small_file(dest, store.METADATA)
    except CriuError as exc:
        return None, [exc.msg]
    if raw is None:
        return None, ["%s: no checkpoint here (metadata.json is missing)" % dest]
    metadata, problems = parse_metadata(raw)
    if metadata is None:
        return None, problems
    problems = check_signature(dest, metadata, key, require_signature)
    problems += check_images(os.path.join(dest, store.IMAGES), metadata["manifest"], manifest_algorithm(metadata))
    return metadata, problems
