# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Every kind of workload, and which one a module's params, a checkpoint or a migration journal is of."""

from __future__ import annotations

import typing as t

from ansible_collections.nucleus.criu.plugins.module_utils.kinds._container import Container
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Kind, Metadata
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._process import Process
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._unit import Unit
from ansible_collections.nucleus.criu.plugins.module_utils._requests import WorkloadRef

# Asked in order; a process tree, the last, is what a checkpoint or journal of no other kind holds.
KINDS: t.Tuple[Kind, ...] = (Container(), Unit(), Process())


def asked(ref: WorkloadRef) -> Kind:
    """The kind of workload a module's request names (pid and pidfile: a process tree)."""
    return next((kind for kind in KINDS if kind.asked(ref)), KINDS[-1])


def of(metadata: Metadata) -> Kind:
    """The kind of workload a checkpoint's metadata (or a migration journal) records."""
    return next(kind for kind in KINDS if kind.holds(metadata))
