# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Failpoints: the steps where tests stop a module, a migration's driver or agent, to kill it there.

When the file ``STEP`` or ``NAME.STEP`` exists in the root-only directory FAILPOINTS (which only tests make; a host
without it pays one failed lookup a step), the process that reached the step writes ``NAME.STEP.reached`` there (its
pid) and waits until the failpoint file is removed.
"""

from __future__ import annotations

import json
import os
import time

from ansible_collections.nucleus.criu.plugins.module_utils.system import _safepath as safepath
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

FAILPOINT_POLL = 0.02
# Kept out of the migration and checkpoint directories, so that arming one never makes a directory the product should make.
FAILPOINTS = "/run/nucleus-criu-failpoints"


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def failpoint(name: str, step: str) -> None:
    """Wait here while failpoint ``STEP`` or ``NAME.STEP`` is armed (tests only ever arm one). A FAILPOINTS that
    another user could change is ignored, never trusted."""
    try:
        dir_fd, _real = safepath.open_dir(FAILPOINTS, "Failpoint directory", store.CHAIN_REMEDY)
    except (FileNotFoundError, CriuError):
        return
    try:
        armed = [candidate for candidate in (step, "%s.%s" % (name, step)) if _exists(dir_fd, candidate)]
        if not armed:
            return
        store.write_file(dir_fd, "%s.%s.reached" % (name, step), json.dumps({"pid": os.getpid()}).encode("ascii"), replace=True)
        while any(_exists(dir_fd, candidate) for candidate in armed):
            time.sleep(FAILPOINT_POLL)
    finally:
        os.close(dir_fd)
