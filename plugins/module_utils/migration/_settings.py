# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a migration is asked to do, fixed when it starts: the module's request checked once, and what of
them the journal keeps for a recovery."""

from __future__ import annotations

import os
import shlex
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils._requests import MigrateRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal, require_name


class Settings(t.NamedTuple):
    """What a migration needs, fixed when it starts and kept in the journal for its recovery."""

    name: str
    directory: str
    target: remote.SshTarget
    mode: str
    lease: float
    timeout: float
    key: t.Optional[bytes]
    algorithm: str
    criu: t.Mapping[str, t.Any]  # the criu options, by module option name (_options.OPTIONS), as given
    target_pidfile: t.Optional[str]
    cleanup: str
    transfer_image: bool = False
    unit_boot: str = "move"  # what becomes of a unit's start at boot on both hosts (kinds/_unit.py)

    @property
    def link_timeout(self) -> float:
        """How long a silent link is waited on (keepalives notice a dead one sooner)."""
        return max(self.timeout, 30.0)


def settings(request: MigrateRequest, key: t.Optional[bytes]) -> Settings:
    name = require_name(request.name)
    kind = kinds.asked(request.workload)
    kind.refuse_migration(request.mode)
    criu = dict(request.criu)
    criu_options.normalise(criu, "migrate")  # a bad value is refused before anything runs
    kind.refuse_unsupported(criu, "migrate")
    for option, seconds in (("lease", request.lease), ("timeout", request.timeout)):
        if seconds <= 0:
            raise CriuError("%s must be a positive number of seconds, got %s." % (option, seconds))
    try:
        extra_args = tuple(shlex.split(request.ssh_extra_args or ""))
    except ValueError as exc:
        raise CriuError("ssh_extra_args %r cannot be split like a shell would: %s. Fix its quoting." % (request.ssh_extra_args, exc)) from exc
    target = remote.SshTarget(host=request.target, port=request.ssh_port, user=request.ssh_user,
                              key_file=request.ssh_key_file, extra_args=extra_args,
                              python=request.target_python, connect_timeout=request.ssh_connect_timeout,
                              compress=request.compress)
    return Settings(name, os.path.normpath(request.migrate_dir), target, request.mode, float(request.lease),
                    float(request.timeout), key, request.hash_algorithm, criu,
                    request.target_pidfile, request.cleanup, request.transfer_image, request.unit_boot)


def recordable(s: Settings) -> t.Dict[str, t.Any]:
    """The settings a recovery needs, as the journal keeps them (never the key: a recovery needs none)."""
    return {"mode": s.mode, "lease": s.lease, "timeout": s.timeout, "cleanup": s.cleanup, "target_pidfile": s.target_pidfile,
            "unit_boot": s.unit_boot, "criu": dict(s.criu)}


def as_recorded(s: Settings, journal: Journal) -> Settings:
    """``s`` with what the migration in ``journal`` was started with (a recovery finishes it as it was asked)."""
    recorded = journal.get("settings") or {}
    return s._replace(**{key: recorded[key] for key in ("mode", "lease", "timeout", "cleanup", "target_pidfile", "unit_boot", "criu")
                         if key in recorded})
