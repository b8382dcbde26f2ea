# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What criu_info reports: this host's criu, privileges, kernel, signing key and (asked) container engine."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._requests import InfoRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError


def key_facts(hmac_key: t.Optional[str], hmac_key_file: t.Optional[str]) -> t.Dict[str, t.Any]:
    """Whether the signing key the group defaults give can be used (never the key itself)."""
    try:
        key = integrity.load_key(hmac_key, hmac_key_file)
    except CriuError as exc:
        return {"given": True, "usable": False, "problem": exc.msg}
    if key is None:
        return {"given": False, "usable": False, "problem": ""}
    return {"given": True, "usable": True, "bytes": len(key), "problem": ""}


def info(request: InfoRequest) -> t.Dict[str, t.Any]:
    """The criu_info module's work: never changes anything."""
    can, why = host.can_checkpoint()
    result = {
        "changed": False, "criu": host.criu_facts(request.criu_path, request.timeout),
        "kernel": os.uname().release, "arch": os.uname().machine,
        "can_checkpoint": can, "privilege_problem": why,
        "page_server_problem": host.page_server_problem(),
        "hash_algorithms": integrity.available_algorithms(),
        "signing_key": key_facts(request.hmac_key, request.hmac_key_file),
    }
    if request.workload.pid is not None or request.workload.pidfile:
        result["process"] = procfs.process_state(procfs.resolve_pid(request.workload.pid, request.workload.pidfile))
    for kind in kinds.KINDS:
        result.update(kind.host_info(request.engine, request.timeout, host.effective_caps()))
    return result
