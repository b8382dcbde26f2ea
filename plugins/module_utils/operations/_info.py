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


def info(params: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The criu_info module's work: never changes anything."""
    can, why = host.can_checkpoint()
    result = {
        "changed": False, "criu": host.criu_facts(params["criu_path"], params["timeout"]),
        "kernel": os.uname().release, "arch": os.uname().machine,
        "can_checkpoint": can, "privilege_problem": why,
        "page_server_problem": host.page_server_problem(),
        "hash_algorithms": integrity.available_algorithms(),
        "signing_key": key_facts(params["hmac_key"], params["hmac_key_file"]),
    }
    if params["pid"] is not None or params["pidfile"]:
        result["process"] = procfs.process_state(procfs.resolve_pid(params["pid"], params["pidfile"]))
    for kind in kinds.KINDS:
        result.update(kind.host_info(params["engine"], params["timeout"], host.effective_caps()))
    return result
