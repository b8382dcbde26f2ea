# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every module's argument spec, defined once: the modules, the tests and the benchmark all read it here.

The options a user sets once for the whole ``group/nucleus.criu.criu`` (criu_path, timeout, hmac_key,
hmac_key_file) are accepted by every module, so ``module_defaults`` never breaks one of them.
"""

from __future__ import annotations

import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils import _requests as requests
from ansible_collections.nucleus.criu.plugins.module_utils.criu._options import OPTIONS

DEFAULT_TIMEOUT = 120
ENGINES = ["podman"]
COMPRESS_CHOICES = ["none", "gzip", "zstd"]
HASH_ALGORITHM_CHOICES = ["sha256", "blake3", "auto"]

COMMON: t.Dict[str, t.Dict[str, t.Any]] = {
    "criu_path": {"type": "path"},
    "timeout": {"type": "int", "default": DEFAULT_TIMEOUT},
    "hmac_key": {"type": "str", "no_log": True},
    "hmac_key_file": {"type": "path", "no_log": False},
}
COMMON_EXCLUSIVE: t.List[t.Tuple[str, ...]] = [("hmac_key", "hmac_key_file")]
_SIGNATURE = {
    "require_signature": {"type": "bool", "default": False},
    "skip_signature_check": {"type": "bool", "default": False},
}


def _criu_options(at: str) -> t.Dict[str, t.Dict[str, t.Any]]:
    """The criu options of _options.OPTIONS that ``at`` ("dump", "restore" or "migrate") takes. At dump a flag left
    out is off; at restore an option left out replays what the dump recorded; a migration takes every option, as
    the dump and the restore it makes would."""
    return {option.name: option.spec(at) for option in OPTIONS if option.applies(at)}


class Spec(t.NamedTuple):
    """What AnsibleModule takes besides supports_check_mode, and the typed request (_requests) its params make."""

    argument_spec: t.Dict[str, t.Dict[str, t.Any]]
    mutually_exclusive: t.List[t.Tuple[str, ...]]
    required_one_of: t.List[t.Tuple[str, ...]]
    required_if: t.List[t.Tuple[t.Any, ...]]
    request_type: t.Any

    def request(self, params: t.Mapping[str, t.Any]) -> t.Any:
        """The module's params as its typed request: the one place they are read by name."""
        values: t.Dict[str, t.Any] = {}
        for field in self.request_type._fields:
            if field == "criu":
                values[field] = {option.name: params[option.name] for option in OPTIONS if option.name in self.argument_spec}
            elif field == "workload":
                values[field] = requests.WorkloadRef(*(params.get(name) for name in requests.WorkloadRef._fields))
            else:
                values[field] = params[field]
        return self.request_type(**values)

    def defaults(self, **given: t.Any) -> t.Dict[str, t.Any]:
        """Module params as AnsibleModule would build them from ``given``: every option, defaults filled in."""
        params = {name: option.get("default") for name, option in self.argument_spec.items()}
        params.update(given)
        return params


def _spec(request_type: t.Any, options: t.Mapping[str, t.Dict[str, t.Any]], exclusive: t.Sequence[t.Tuple[str, ...]] = (),
          one_of: t.Sequence[t.Tuple[str, ...]] = (), required_if: t.Sequence[t.Tuple[t.Any, ...]] = ()) -> Spec:
    return Spec(dict(options, **COMMON), list(exclusive) + COMMON_EXCLUSIVE, list(one_of), list(required_if), request_type)


CHECKPOINT = _spec(requests.CheckpointRequest, dict({
    "pid": {"type": "int"},
    "pidfile": {"type": "path"},
    "container": {"type": "str"},
    "unit": {"type": "str"},
    "engine": {"type": "str", "default": "podman", "choices": ENGINES},
    "compress": {"type": "str", "default": "none", "choices": COMPRESS_CHOICES},
    "dest": {"type": "path", "required": True},
    "name": {"type": "str"},
    "leave_running": {"type": "bool", "default": False},
    "leave_stopped": {"type": "bool", "default": False},
    "hash_algorithm": {"type": "str", "default": "sha256", "choices": HASH_ALGORITHM_CHOICES},
    "force": {"type": "bool", "default": False},
    "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
    "keep": {"type": "int"},
}, **_criu_options("dump")), exclusive=[("pid", "pidfile", "container", "unit"), ("leave_running", "leave_stopped")],
    required_if=[("state", "present", ("pid", "pidfile", "container", "unit"), True)])

CHECKPOINT_INFO = _spec(requests.CheckpointInfoRequest, {
    "path": {"type": "path", "required": True},
    "name": {"type": "str"},
    "verify": {"type": "bool", "default": False},
    "details": {"type": "bool", "default": False},
})

RESTORE = _spec(requests.RestoreRequest, dict({
    "src": {"type": "path", "required": True},
    "verify": {"type": "bool", "default": True},
    "pidfile": {"type": "path"},
    "unit": {"type": "str"},
    "container_name": {"type": "str"},
    "ignore_static_ip": {"type": "bool", "default": False},
    "ignore_static_mac": {"type": "bool", "default": False},
    "force": {"type": "bool", "default": False},
}, **_SIGNATURE, **_criu_options("restore")))

VERIFY = _spec(requests.VerifyRequest, dict({
    "path": {"type": "path", "required": True, "aliases": ["src"]},
    "check_host": {"type": "bool", "default": False},
}, **_SIGNATURE))

MIGRATION_INFO = _spec(requests.MigrationInfoRequest, {
    "name": {"type": "str", "required": True},
    "migrate_dir": {"type": "path", "default": "/var/lib/nucleus-criu/migrations"},
})

INFO = _spec(requests.InfoRequest, {
    "pid": {"type": "int"},
    "pidfile": {"type": "path"},
    "engine": {"type": "str", "choices": ENGINES},
}, exclusive=[("pid", "pidfile")])

MIGRATE_MODES = ["copy", "postcopy"]
MIGRATE_CLEANUP = ["all", "source", "target", "none"]
# What becomes of a migrated unit's start at boot (see kinds/_unit.py).
UNIT_BOOT = ["move", "disable", "keep"]
MIGRATE = _spec(requests.MigrateRequest, dict({
    "name": {"type": "str", "required": True},
    "pid": {"type": "int"},
    "pidfile": {"type": "path"},
    "container": {"type": "str"},
    "unit": {"type": "str"},
    "unit_boot": {"type": "str", "default": "move", "choices": UNIT_BOOT},
    "engine": {"type": "str", "default": "podman", "choices": ENGINES},
    "transfer_image": {"type": "bool", "default": False},
    "target": {"type": "str", "required": True},
    "ssh_user": {"type": "str"},
    "ssh_port": {"type": "int"},
    "ssh_key_file": {"type": "path"},
    "ssh_extra_args": {"type": "str", "default": ""},
    "ssh_connect_timeout": {"type": "int", "default": 10},
    "target_python": {"type": "path", "default": "/usr/bin/python3"},
    "target_pidfile": {"type": "path"},
    "migrate_dir": {"type": "path", "default": "/var/lib/nucleus-criu/migrations"},
    "mode": {"type": "str", "default": "copy", "choices": MIGRATE_MODES},
    "lease": {"type": "int", "default": 120},
    "wait": {"type": "bool", "default": True},
    "migration_id": {"type": "str"},
    "wait_timeout": {"type": "int", "default": 1800},
    "hash_algorithm": {"type": "str", "default": "sha256", "choices": HASH_ALGORITHM_CHOICES},
    "cleanup": {"type": "str", "default": "all", "choices": MIGRATE_CLEANUP},
    "compress": {"type": "bool", "default": False},
}, **_criu_options("migrate")), exclusive=[("pid", "pidfile", "container", "unit")],
    one_of=[("pid", "pidfile", "container", "unit")])

DRAIN_FACTS = _spec(requests.DrainFactsRequest, {
    "role": {"type": "str", "required": True, "choices": ["source", "target"]},
    "workloads": {"type": "list", "elements": "dict", "options": {
        "name": {"type": "str", "required": True},
        "pid": {"type": "int"},
        "pidfile": {"type": "path"},
        "container": {"type": "str"},
        "unit": {"type": "str"},
        "mode": {"type": "str", "choices": MIGRATE_MODES},
    }, "mutually_exclusive": [("pid", "pidfile", "container", "unit")], "required_one_of": [("pid", "pidfile", "container", "unit")]},
    "discover": {"type": "dict", "options": {
        "pidfiles": {"type": "list", "elements": "str", "default": []},
        "container_labels": {"type": "list", "elements": "str", "default": []},
        "units": {"type": "list", "elements": "str", "default": []},
    }},
    "mode": {"type": "str", "default": "copy", "choices": MIGRATE_MODES},
    "migrate_dir": {"type": "path", "default": "/var/lib/nucleus-criu/migrations"},
    "engine": {"type": "str", "choices": ENGINES},
    "reserve_mib": {"type": "int", "default": 256},
    "capacity_mib": {"type": "int"},
})
