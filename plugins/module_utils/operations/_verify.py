# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only verdict on a checkpoint directory, and optionally on this host's ability to restore it."""

from __future__ import annotations

import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils.operations._checkpoint import require_timeout
from ansible_collections.nucleus.criu.plugins.module_utils._requests import VerifyRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed


def verify(request: VerifyRequest) -> t.Dict[str, t.Any]:
    """The criu_verify module's work: returns the module result, or raises with every problem found."""
    require_timeout(request.timeout)
    key = integrity.load_key(request.hmac_key, request.hmac_key_file)
    path = os.path.normpath(request.path)
    signed = False
    try:
        with store.location(path) as loc, store.open_checkpoint(loc) as checkpoint:
            verdict = integrity.verify(checkpoint, key, request.require_signature, request.skip_signature_check,
                                       timeout=request.timeout)
            signed = store.SIGNATURE in checkpoint.entries()
    except CriuError as exc:
        verdict = integrity.Verdict(None, [exc.msg], [])
    problems = list(verdict.problems)
    if verdict.metadata is not None and request.check_host:
        kind = kinds.of(verdict.metadata)
        problems += kind.host_problems(verdict.metadata, request.criu_path, request.timeout, host.effective_caps())
        problems += host.restore_problems(verdict.metadata)
    if problems or verdict.metadata is None:  # (a verdict without metadata has a problem saying why)
        raise CriuError("Checkpoint %s is not valid: %s." % (path, listed(problems)), path=path, problems=problems, valid=False,
                        unexpected_entries=verdict.unexpected)
    return {
        "changed": False, "path": path, "valid": True, "checkpoint": integrity.public(verdict.metadata),
        "signed": signed, "signature_checked": signed and key is not None, "unexpected_entries": verdict.unexpected,
        "stats": verdict.stats(),
    }
