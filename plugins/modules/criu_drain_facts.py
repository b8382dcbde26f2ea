#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_drain_facts
short_description: What a drain's placement needs to know of its source and of its targets
version_added: 0.2.0
description:
  - "O(role=source): every workload asked for - given in O(workloads), or discovered with O(discover): pidfiles by
    glob, running Podman containers by label, running systemd services by pattern - and every migration from this host
    in O(migrate_dir) without an outcome yet (a rerun resolves it, whether or not discovery still finds its workload),
    with its memory, whether it can be checkpointed here (reported, never attempted: RV(source.workloads[].problem)
    says why not) and what an earlier migration of the same name left in O(migrate_dir)."
  - "O(role=target): the host's capacity (C(MemAvailable) less O(reserve_mib), capped by O(capacity_mib)) and its
    features: architecture, criu, lazy pages (post-copy), systemd and, with O(engine), Podman ready for checkpoints."
  - The role C(nucleus.criu.drain) runs it on the source and on each target, and places the workloads from what it
    returns (the filter P(nucleus.criu.drain_plan#filter)).
  - Never changes anything.
author:
  - nucleus.criu maintainers (@nucleus-criu)
extends_documentation_fragment:
  - nucleus.criu.common.CRIU_PATH
  - nucleus.criu.common.TIMEOUT
  - nucleus.criu.common.HMAC
  - nucleus.criu.common.ATTRIBUTES
attributes:
  check_mode:
    support: full
    details: The module never changes anything.
options:
  role:
    description:
      - Whether this host is the drain's source (report its workloads) or one of its targets (report its capacity).
    type: str
    required: true
    choices: [source, target]
  workloads:
    description:
      - The workloads to report on (O(role=source) only), each named by exactly one of O(workloads[].pid),
        O(workloads[].pidfile), O(workloads[].container), O(workloads[].unit).
    type: list
    elements: dict
    suboptions:
      name:
        description: Its migration's name (1-100 letters, digits, C(.), C(_), C(-)).
        type: str
        required: true
      pid:
        description: Pid of its root process.
        type: int
      pidfile:
        description: Pidfile naming its root process.
        type: path
      container:
        description: Podman container.
        type: str
      unit:
        description: systemd service.
        type: str
      mode:
        description: Its migration's mode (default O(mode)).
        type: str
        choices: [copy, postcopy]
  discover:
    description:
      - Workloads to find on the source (O(role=source) only), beside O(workloads). A discovered workload's name is its
        pidfile's base name without C(.pid), its container's name or its unit's name without C(.service), with any
        other character than letters, digits, C(.), C(_) and C(-) made C(-); the same on every run, so that a rerun
        finds its migration's journal.
    type: dict
    suboptions:
      pidfiles:
        description: Glob patterns of pidfiles (C(/run/jobs/*.pid)).
        type: list
        elements: str
        default: []
      container_labels:
        description: Labels (C(KEY) or C(KEY=VALUE)) of running Podman containers, as C(podman ps --filter label=) takes them.
        type: list
        elements: str
        default: []
      units:
        description: Shell patterns (C(worker@*.service), C(web-*)) of running systemd services.
        type: list
        elements: str
        default: []
  mode:
    description: The migration mode of each workload that does not name its own (a container moves in V(copy) only).
    type: str
    default: copy
    choices: [copy, postcopy]
  migrate_dir:
    description:
      - Directory of the migrations' journals (O(nucleus.criu.criu_migrate#module:migrate_dir)), read only.
    type: path
    default: /var/lib/nucleus-criu/migrations
  engine:
    description: With O(role=target), also report whether this host can restore containers with this engine.
    type: str
    choices: [podman]
  reserve_mib:
    description: Memory a target keeps for itself, in MiB, taken off its C(MemAvailable).
    type: int
    default: 256
  capacity_mib:
    description: The most a target may receive, in MiB (the role passes the host variable C(drain_capacity_mib)).
    type: int
notes:
  - A workload's memory is the resident set of its processes (C(VmRSS), file-backed pages they map included) or, when
    its memory cgroup holds its processes alone (a container's), what that cgroup is charged for pages and page cache
    (files it wrote, its tmpfs, a container's upper layer), whichever is larger. Page cache of a cgroup shared with
    other processes is not counted.
"""

EXAMPLES = r"""
- name: The workloads of the source
  nucleus.criu.criu_drain_facts:
    role: source
    workloads:
      - {name: job1, pidfile: /run/job1.pid}
    discover:
      pidfiles: [/run/jobs/*.pid]
      container_labels: [drain=yes]
      units: [worker@*.service]
  register: drain_source_facts

- name: Capacity and features of a target, keeping 1 GiB for itself and receiving at most 8 GiB
  nucleus.criu.criu_drain_facts:
    role: target
    reserve_mib: 1024
    capacity_mib: 8192
    engine: podman
  register: drain_target_facts
"""

RETURN = r"""
role:
  description: The role reported on.
  returned: always
  type: str
  sample: source
source:
  description: The source's workloads and facts.
  returned: when O(role=source)
  type: dict
  contains:
    arch:
      description: The source's architecture.
      type: str
      sample: x86_64
    kernel:
      description: Kernel release.
      type: str
    can_checkpoint:
      description: Whether the caller holds the capabilities CRIU needs.
      type: bool
    privilege_problem:
      description: Why it cannot, empty when it can.
      type: str
    workloads:
      description: Every workload asked for, given ones first.
      type: list
      elements: dict
      contains:
        name:
          description: Its migration's name.
          type: str
          sample: job1
        kind:
          description: C(process), C(container) or C(unit).
          type: str
        mode:
          description: Its migration's mode.
          type: str
        found_by:
          description:
            - C(given), the pattern that discovered it, or C(unfinished migration) (found by its journal).
            - A container or service a completed migration moved away is found by its journal on this host, under the
              label or pattern its journal matches (its journal keeps a container's labels).
          type: str
          sample: pidfile /run/jobs/*.pid
        workload:
          description: What names it, as a M(nucleus.criu.criu_migrate) task takes it (one of C(pid), C(pidfile), C(container), C(unit)).
          type: dict
          contains:
            pid:
              description: Pid of its root process.
              type: int
              returned: when named by it
            pidfile:
              description: Pidfile naming its root process.
              type: str
              returned: when named by it
            container:
              description: Podman container.
              type: str
              returned: when named by it
            unit:
              description: systemd service.
              type: str
              returned: when named by it
        pid:
          description: Pid of its root process here, null when none runs.
          type: int
        memory_bytes:
          description: Resident memory of its process tree, or its own memory cgroup's pages and page cache if more.
          type: int
        processes:
          description: Number of processes in its tree.
          type: int
        state:
          description:
            - V(running) here; V(in_flight) (a migration of this name is unfinished, a rerun resolves it); V(moved) (a
              migration of this name completed and the workload no longer runs here); V(absent).
          type: str
        movable:
          description: Whether a migration may be started (or resumed) for it.
          type: bool
        problem:
          description: Why it cannot be moved, empty when it can.
          type: str
        migration:
          description: What an earlier migration of this name left in O(migrate_dir).
          type: dict
          contains:
            exists:
              description: Whether there is a journal of that name.
              type: bool
            problem:
              description: Why the journal could not be read.
              type: str
              returned: when it could not
            id:
              description: The migration's id.
              type: str
              returned: when it exists
            role:
              description: This host's role in it.
              type: str
              returned: when it exists
            phase:
              description: Its last phase.
              type: str
              returned: when it exists
            outcome:
              description: C(completed), C(rolled_back), C(in_doubt), or null while in flight.
              type: str
              returned: when it exists
            driver_running:
              description: Whether its driver runs.
              type: bool
              returned: when it exists
            target:
              description: The target as the migration named it (address and port).
              type: str
              returned: when it exists
            target_host:
              description: The target's address.
              type: str
              returned: when it exists
            source_pid:
              description: The pid it migrated.
              type: int
              returned: when it exists
            target_pid:
              description: The pid of the copy on the target.
              type: int
              returned: when it exists
            downtime_seconds:
              description: The workload's downtime.
              type: float
              returned: when it exists
            image_bytes:
              description: The bytes its images took.
              type: int
              returned: when it exists
            error:
              description: What went wrong, if something did.
              type: str
              returned: when it exists
target:
  description: The target's capacity and features.
  returned: when O(role=target)
  type: dict
  contains:
    arch:
      description: Architecture.
      type: str
      sample: x86_64
    kernel:
      description: Kernel release.
      type: str
    criu_usable:
      description: Whether criu is usable here.
      type: bool
    criu_version:
      description: criu's version, null when none was found.
      type: str
    can_checkpoint:
      description: Whether the caller holds the capabilities CRIU needs.
      type: bool
    lazy_pages:
      description: Whether the kernel supports post-copy restore.
      type: bool
    systemd:
      description: Whether systemd runs this host.
      type: bool
    podman:
      description: Whether Podman can restore containers here; null without O(engine).
      type: bool
    podman_problems:
      description: What stands in Podman's way.
      type: list
      elements: str
      returned: when O(engine) is given
    mem_available_bytes:
      description: C(MemAvailable) of C(/proc/meminfo).
      type: int
    reserve_bytes:
      description: O(reserve_mib) in bytes.
      type: int
    capacity_bytes:
      description: What the host may receive; MemAvailable less the reserve, at most O(capacity_mib).
      type: int
    problems:
      description: Why this host cannot restore, each with its remedy.
      type: list
      elements: str
    usable:
      description: Whether it can restore (no problem found).
      type: bool
"""

from ansible_collections.nucleus.criu.plugins.module_utils.drain import _facts as facts_
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import DRAIN_FACTS
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(DRAIN_FACTS)
    run_module(module, lambda: facts_.drain_facts(DRAIN_FACTS.request(module.params)))


if __name__ == "__main__":
    main()
