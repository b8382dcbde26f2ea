# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each module is asked, typed: built once from its params at the door (_argspec.Spec.request), so that
nothing below the module layer indexes params by string or asks the argument spec for a default.

A request's fields are the module's options by name, but for two: ``workload`` (pid, pidfile, container, unit: which
workload, whatever its kind) and ``criu`` (every criu option of _options.OPTIONS the module takes, by name, as given).
"""

from __future__ import annotations

import typing as t

CriuChoices = t.Mapping[str, t.Any]


class WorkloadRef(t.NamedTuple):
    """The workload a module names; its kind (kinds/_registry.asked) says which of these count."""

    pid: t.Optional[int] = None
    pidfile: t.Optional[str] = None
    container: t.Optional[str] = None
    unit: t.Optional[str] = None


class CheckpointRequest(t.NamedTuple):
    workload: WorkloadRef
    engine: str
    compress: str
    dest: str
    name: t.Optional[str]
    leave_running: bool
    leave_stopped: bool
    hash_algorithm: str
    force: bool
    state: str
    keep: t.Optional[int]
    criu: CriuChoices
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class RestoreRequest(t.NamedTuple):
    src: str
    verify: bool
    pidfile: t.Optional[str]
    unit: t.Optional[str]
    container_name: t.Optional[str]
    ignore_static_ip: bool
    ignore_static_mac: bool
    force: bool
    require_signature: bool
    skip_signature_check: bool
    criu: CriuChoices
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class VerifyRequest(t.NamedTuple):
    path: str
    check_host: bool
    require_signature: bool
    skip_signature_check: bool
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class CheckpointInfoRequest(t.NamedTuple):
    path: str
    name: t.Optional[str]
    verify: bool
    details: bool
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class InfoRequest(t.NamedTuple):
    workload: WorkloadRef
    engine: t.Optional[str]
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class MigrationInfoRequest(t.NamedTuple):
    name: str
    migrate_dir: str
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class MigrateRequest(t.NamedTuple):
    name: str
    workload: WorkloadRef
    unit_boot: str
    engine: str
    transfer_image: bool
    target: str
    ssh_user: t.Optional[str]
    ssh_port: t.Optional[int]
    ssh_key_file: t.Optional[str]
    ssh_extra_args: str
    ssh_connect_timeout: int
    target_python: str
    target_pidfile: t.Optional[str]
    migrate_dir: str
    mode: str
    lease: int
    wait: bool
    migration_id: t.Optional[str]
    wait_timeout: int
    hash_algorithm: str
    cleanup: str
    compress: bool
    criu: CriuChoices
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]


class DrainFactsRequest(t.NamedTuple):
    role: str
    workloads: t.Optional[t.List[t.Dict[str, t.Any]]]
    discover: t.Optional[t.Dict[str, t.Any]]
    mode: str
    migrate_dir: str
    engine: t.Optional[str]
    reserve_mib: int
    capacity_mib: t.Optional[int]
    criu_path: t.Optional[str]
    timeout: int
    hmac_key: t.Optional[str]
    hmac_key_file: t.Optional[str]
