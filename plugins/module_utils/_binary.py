# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find the criu binary and decide whether it may be executed.

CRIU runs as root and restores code into memory, so the binary we execute must be
one that only root (or the caller) could have put there: no PATH lookup as root, and
no file or directory on the way to it that somebody else can write.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

TRUSTED_PATHS = ("/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu")
MIN_VERSION = (4, 2)
INSTALL_HINT = (
    "Install criu >= 4.2 with the nucleus.criu.criu role "
    "(ansible-playbook nucleus.criu.criu -i INVENTORY), or point criu_path at a trusted criu >= 4.2."
)
_VERSION_RE = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


def _check_entry(path: str, st: os.stat_result, euid: int, what: str) -> None:
    """Refuse an entry that a user other than root or the caller could replace or rewrite."""
    if st.st_uid not in (0, euid):
        raise CriuError(
            "Refusing to run criu: %s %s is owned by uid %d, not root or uid %d. "
            "Install criu somewhere only root can write (e.g. with the nucleus.criu.criu role)." % (what, path, st.st_uid, euid),
            path=path,
        )
    writable_by_others = st.st_mode & 0o022
    sticky_root_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if writable_by_others and not sticky_root_dir:
        raise CriuError(
            "Refusing to run criu: %s %s is writable by group/others (mode %04o). "
            "Remove the write bits (chmod go-w %s) or use a criu installed by root."
            % (what, path, stat.S_IMODE(st.st_mode), path),
            path=path,
        )


def _check_parents(path: str, euid: int) -> None:
    """Every directory above ``path`` must be as trustworthy as the file itself."""
    parent = os.path.dirname(path)
    while True:
        _check_entry(parent, os.stat(parent), euid, "directory")
        if parent == "/":
            return
        parent = os.path.dirname(parent)


def validate_binary(path: str, euid: t.Optional[int] = None) -> str:
    """Return the real path of a criu binary that passes the trust policy, or raise.

    A symlink (e.g. /usr/sbin/criu -> /usr/lib/criu/criu) is allowed only when both the
    link's directories and the file it resolves to pass the same checks.
    """
    euid = os.geteuid() if euid is None else euid
    if not os.path.isabs(path):
        raise CriuError("criu_path %s is not absolute. Give the full path of a criu binary." % path, path=path)
    try:
        _check_parents(path, euid)
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError as exc:
        raise CriuError("Cannot inspect criu binary %s: %s. %s" % (path, exc.strerror, INSTALL_HINT), path=path) from exc
    if not stat.S_ISREG(st.st_mode):
        raise CriuError("criu binary %s is not a regular file. %s" % (path, INSTALL_HINT), path=path)
    if not st.st_mode & 0o111:
        raise CriuError(
            "criu binary %s is not executable (mode %04o). Run chmod 0755 %s as root." % (path, stat.S_IMODE(st.st_mode), path),
            path=path,
        )
    _check_entry(real, st, euid, "criu binary")
    if real != path:
        _check_parents(real, euid)
    return real


def candidate_paths(euid: int, env_path: t.Optional[str]) -> t.List[str]:
    """Trusted system paths first; PATH entries only for an unprivileged caller."""
    candidates = list(TRUSTED_PATHS)
    if euid != 0 and env_path:
        candidates.extend(os.path.join(d, "criu") for d in env_path.split(os.pathsep) if os.path.isabs(d))
    return candidates


def discover(criu_path: t.Optional[str] = None, euid: t.Optional[int] = None, env_path: t.Optional[str] = None) -> str:
    """Return the criu binary to run: ``criu_path`` if given, else the first existing candidate.

    The first candidate that exists is the one validated: a failing one is an error, not a
    reason to fall through to a later (possibly hostile) candidate.
    """
    euid = os.geteuid() if euid is None else euid
    if criu_path:
        validate_binary(criu_path, euid)
        return criu_path
    env_path = os.environ.get("PATH") if env_path is None else env_path
    for candidate in candidate_paths(euid, env_path):
        if os.path.lexists(candidate):
            validate_binary(candidate, euid)
            return candidate
    where = ", ".join(TRUSTED_PATHS) + ("" if euid == 0 else " or PATH")
    raise CriuError("criu was not found in %s (PATH is never searched as root). %s" % (where, INSTALL_HINT))


def parse_version(text: str) -> t.Tuple[int, int, int]:
    """Parse ``criu --version`` output ("Version: 4.2.1", optionally followed by "GitID: ...")."""
    match = _VERSION_RE.search(text)
    if not match:
        raise CriuError("Cannot parse the output of criu --version: %r. %s" % (text.strip()[:200], INSTALL_HINT))
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def format_version(version: t.Tuple[int, int, int]) -> str:
    return "%d.%d.%d" % version


def require_supported(version: t.Tuple[int, int, int], path: str) -> None:
    """criu < 4.2 cannot dump INET sockets on kernels >= 6.16, and < 4.0 fails outright on >= 6.13."""
    if version[:2] < MIN_VERSION:
        raise CriuError(
            "criu %s at %s is too old: nucleus.criu needs criu >= %d.%d (older releases fail on current kernels). %s"
            % (format_version(version), path, MIN_VERSION[0], MIN_VERSION[1], INSTALL_HINT),
            path=path,
            version=format_version(version),
        )


def probe_version(path: str, timeout: float = 30) -> t.Tuple[int, int, int]:
    """Run ``criu --version`` (argv only, no shell) and parse it."""
    try:
        proc = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CriuError("Cannot run %s --version: %s. %s" % (path, exc, INSTALL_HINT), path=path) from exc
    text = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise CriuError(
            "%s --version exited with %d: %s. %s" % (path, proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[:300], INSTALL_HINT),
            path=path,
        )
    return parse_version(text)
