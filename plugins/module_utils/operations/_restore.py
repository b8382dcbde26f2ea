# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a checkpoint directory: lock, verify, restore exactly the verified bytes, and prove the task lives.

The checkpoint is reached through a checked directory chain and held by fd from before verification
until criu has read it, so the bytes criu restores are the bytes that were verified; criu works and
logs in a private directory, and never writes into the checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.operations._checkpoint import require_timeout
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._requests import RestoreRequest
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.storage._restored import refusal


def load_verified(checkpoint: store.Checkpoint, key: t.Optional[bytes], request: RestoreRequest) -> integrity.Verdict:
    """The verdict on a checkpoint that passed verification, or a refusal listing every problem. Even unverified, a
    configured key is always enforced and the metadata must parse."""
    verdict = integrity.verify(checkpoint, key, request.require_signature, request.skip_signature_check,
                               timeout=request.timeout, hashed=request.verify)
    problems = verdict.problems + ([] if checkpoint.images_fd >= 0 or request.verify else ["images/ is missing"])
    if verdict.metadata is None or problems:
        raise refusal(checkpoint.path, problems)
    if verdict.metadata["options"].get("lazy_pages"):
        raise refusal(checkpoint.path, ["it is a post-copy checkpoint whose memory is still in its frozen source; only the "
                                        "migration that made it (nucleus.criu.criu_migrate) can restore it"])
    return verdict


@contextlib.contextmanager
def opened(src: str, timeout: float, lock: bool) -> t.Iterator[store.Checkpoint]:
    """The checkpoint at ``src``, its chain checked, held by fd, and (``lock``) locked before it is verified."""
    with contextlib.ExitStack() as stack:
        try:
            loc = stack.enter_context(store.location(src))
            if lock:
                stack.enter_context(store.Lock(loc, timeout))
            checkpoint = stack.enter_context(store.open_checkpoint(loc))
        except CriuError as exc:
            raise refusal(src, [exc.msg]) from exc
        yield checkpoint


def restore(request: RestoreRequest, check_mode: bool) -> t.Dict[str, t.Any]:
    """The criu_restore module's work: returns the module result."""
    require_timeout(request.timeout)
    key = integrity.load_key(request.hmac_key, request.hmac_key_file)
    src = os.path.normpath(request.src)
    with opened(src, request.timeout, lock=not check_mode) as checkpoint:
        verdict = load_verified(checkpoint, key, request)
        return kinds.of(t.cast(t.Dict[str, t.Any], verdict.metadata)).restore(checkpoint, verdict, request, key, check_mode)
