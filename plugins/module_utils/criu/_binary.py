# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find the criu binary and decide whether it may be executed.

CRIU runs as root and restores code into memory, so the binary we execute must be
one that only root (or the caller) could have put there: no PATH lookup as root, and
no file, directory or symlink on the way to it (nor its loader or libraries) that
somebody else can change.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _elf as elf
from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

TRUSTED_PATHS = ("/usr/local/sbin/criu", "/usr/sbin/criu", "/usr/bin/criu")
MIN_VERSION = (4, 2)
INSTALL_HINT = (
    "Install criu >= 4.2 with the nucleus.criu.criu role "
    "(ansible-playbook nucleus.criu.criu -i INVENTORY), or point criu_path at a trusted criu >= 4.2."
)
# criu reads no configuration file and none of the caller's environment: a ~/.criu/default.conf or a
# CRIU_CONFIG_FILE could name an action script that would run as root.
NO_DEFAULT_CONFIG = "--no-default-config"
ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
_VERSION_RE = re.compile(r"^Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


def _check_file(path: str, what: str, euid: int) -> t.Tuple[int, str]:
    """Open ``path`` through a checked chain and refuse it unless only root or ``euid`` can change it."""
    fd, real = safepath.open_file(path, what, INSTALL_HINT, euid=euid)
    try:
        safepath.require_trusted(os.fstat(fd), real, what, INSTALL_HINT, euid)
    except CriuError:
        os.close(fd)
        raise
    return fd, real


def _check_library_dir(path: str, euid: int) -> None:
    """Every entry of a directory the loader searches for criu's libraries, and the directory's chain."""
    fd, real = safepath.open_dir(path, "Library directory of criu", INSTALL_HINT, euid=euid)
    try:
        for name in safepath.listdir(fd):
            safepath.require_trusted(os.stat(name, dir_fd=fd, follow_symlinks=False), os.path.join(real, name),
                                     "Library file of criu", INSTALL_HINT, euid)
    finally:
        os.close(fd)


def validate_binary(path: str, euid: t.Optional[int] = None) -> str:
    """Return the real path of a criu binary that passes the trust policy, or raise.

    Every directory and symlink hop on the way, the file itself, the ELF loader it names and every file
    of the library directories it names must be changeable by root or the caller only. The real path is
    what gets executed: after these checks nobody else can change what it runs.
    """
    euid = os.geteuid() if euid is None else euid
    if not os.path.isabs(path):
        raise CriuError("criu_path %s is not absolute. Give the full path of a criu binary." % path, path=path)
    try:
        fd, real = _check_file(path, "criu binary", euid)
    except FileNotFoundError as exc:
        raise CriuError("criu binary %s does not exist. %s" % (path, INSTALL_HINT), path=path) from exc
    try:
        st = os.fstat(fd)
        if not st.st_mode & 0o111:
            raise CriuError("criu binary %s is not executable (mode %04o). Run chmod 0755 %s as root."
                            % (real, stat.S_IMODE(st.st_mode), real), path=real)
        try:
            program = elf.read_elf(fd, os.path.dirname(real))
        except elf.NotElf as exc:
            raise CriuError("criu binary %s is not an ELF executable (%s): a script or wrapper runs code that cannot be "
                            "validated. Point criu_path at the criu ELF binary itself. %s" % (real, exc, INSTALL_HINT), path=real) from exc
    finally:
        os.close(fd)
    if program.interpreter:
        try:
            os.close(_check_file(program.interpreter, "Dynamic loader of criu", euid)[0])
        except FileNotFoundError as exc:
            raise CriuError("The dynamic loader %s that criu binary %s names does not exist: criu cannot run. %s"
                            % (program.interpreter, real, INSTALL_HINT), path=real) from exc
    for directory in program.library_dirs:
        try:
            _check_library_dir(directory, euid)
        except FileNotFoundError:
            continue  # the loader skips a library directory that does not exist, and so may we
    return real


def candidate_paths(euid: int, env_path: t.Optional[str]) -> t.List[str]:
    """Trusted system paths first; PATH entries only for an unprivileged caller."""
    candidates = list(TRUSTED_PATHS)
    if euid != 0 and env_path:
        candidates.extend(os.path.join(d, "criu") for d in env_path.split(os.pathsep) if os.path.isabs(d))
    return candidates


def discover(criu_path: t.Optional[str] = None, euid: t.Optional[int] = None, env_path: t.Optional[str] = None) -> str:
    """Return the real path of the criu binary to run: ``criu_path`` if given, else the first existing candidate.

    The first candidate that exists is the one validated: a failing one is an error, not a
    reason to fall through to a later (possibly hostile) candidate.
    """
    euid = os.geteuid() if euid is None else euid
    if criu_path:
        return validate_binary(criu_path, euid)
    env_path = os.environ.get("PATH") if env_path is None else env_path
    for candidate in candidate_paths(euid, env_path):
        if os.path.lexists(candidate):
            return validate_binary(candidate, euid)
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
        proc = subprocess.run([path, NO_DEFAULT_CONFIG, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False, env=ENVIRONMENT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CriuError("Cannot run %s --version: %s. %s" % (path, exc, INSTALL_HINT), path=path) from exc
    text = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise CriuError(
            "%s --version exited with %d: %s. %s" % (path, proc.returncode, proc.stderr.decode("utf-8", "replace").strip()[:300], INSTALL_HINT),
            path=path,
        )
    return parse_version(text)
