#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_migration_info
short_description: Follow a migration that M(nucleus.criu.criu_migrate) runs on this host
version_added: 0.1.0
description:
  - Reads where migration O(name) stands from this host's journal and progress file in O(migrate_dir) - its phase,
    bytes sent of the expected total, rate, how long the workload has been frozen so far, and its outcome once there
    is one - without touching either.
  - "Run it on the B(source) host, in an C(until) loop after M(nucleus.criu.criu_migrate) with
    O(nucleus.criu.criu_migrate#module:wait=false). A controller that stops polling changes nothing: the migration
    goes on in its driver, which keeps the lease."
  - Never changes anything, never creates O(migrate_dir).
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
  name:
    description:
      - Name of the migration (O(nucleus.criu.criu_migrate#module:name)).
    type: str
    required: true
  migrate_dir:
    description:
      - Directory holding the migration's journal (O(nucleus.criu.criu_migrate#module:migrate_dir)).
    type: path
    default: /var/lib/nucleus-criu/migrations
notes:
  - The options O(criu_path), O(timeout), O(hmac_key) and O(hmac_key_file) are accepted so that C(module_defaults)
    for the C(group/nucleus.criu.criu) action group apply; this module uses none of them.
seealso:
  - module: nucleus.criu.criu_migrate
"""

EXAMPLES = r"""
- name: Start a migration and return once its driver runs
  nucleus.criu.criu_migrate:
    name: web
    pidfile: /run/web.pid
    target: host-b.example.com
    wait: false

- name: Follow it until it ends
  nucleus.criu.criu_migration_info:
    name: web
  register: migration
  until: migration.migration.done
  retries: 600
  delay: 3

- name: Say how it ended
  ansible.builtin.debug:
    msg: "{{ migration.msg }}"
"""

RETURN = r"""
exists:
  description: Whether this host has a journal of migration O(name).
  type: bool
  returned: always
  sample: true
msg:
  description: One line saying where the migration stands (phase or outcome, MiB sent, rate, seconds frozen).
  type: str
  returned: always
  sample: "web: transfer, 412.0 of ~1024.0 MiB sent, 380.2 MiB/s, frozen 1.3 s"
migration:
  description: Where the migration stands; empty when O(name) has no journal here.
  type: dict
  returned: always
  contains:
    id:
      description: The migration's id.
      type: str
      sample: 5b3e4bbf-2177-40df-a839-2f2ccc51c89e
    name:
      description: Its name.
      type: str
      sample: web
    role:
      description: This host's part in it, V(source) or V(target).
      type: str
      sample: source
    mode:
      description: V(copy) or V(postcopy).
      type: str
      sample: copy
    phase:
      description: Its journal's phase (see the guide's table of phases).
      type: str
      sample: frozen
    outcome:
      description: V(completed), V(rolled_back) or V(in_doubt) on the source (V(completed) or V(aborted) on the target); null while it runs.
      type: str
      sample: completed
    decision:
      description: The source's decision, V(commit) or V(abort); null before it.
      type: str
      sample: commit
    error:
      description: What went wrong, when something did.
      type: str
      sample: null
    driver_running:
      description: Whether a driver still holds the migration (it may still change the outcome).
      type: bool
      sample: false
    done:
      description:
        - There is an outcome and no driver is left to change it; the condition of an C(until) loop. An outcome of
          V(in_doubt) is done too - only a rerun of M(nucleus.criu.criu_migrate) resolves it.
      type: bool
      sample: true
    step:
      description: What the driver is doing, as its progress file last said (V(transfer), V(verify), ...).
      type: str
      sample: transfer
    bytes_sent:
      description: Bytes of images sent to the target so far.
      type: int
      sample: 432013312
    expected_bytes:
      description: Bytes the preflight expected the images to take (the workload's resident memory and a margin).
      type: int
      sample: 1073741824
    rate_mib_s:
      description: Average rate of the transfer since the freeze, MiB/s.
      type: float
      sample: 380.2
    progress_at:
      description: When the progress file was last written (UTC).
      type: str
      sample: "2026-12-05T09:45:00.032980Z"
    frozen_at:
      description: When the workload was frozen (UTC); null before.
      type: str
      sample: "2026-12-05T09:44:57.723275Z"
    frozen_seconds:
      description: Seconds the workload has been frozen, until its copy ran (or until the migration ended); null before the freeze.
      type: float
      sample: 1.3
    downtime_seconds:
      description: The downtime, once the copy runs.
      type: float
      sample: 0.56
    image_bytes:
      description: Bytes of the checkpoint's images, once sealed.
      type: int
      sample: 1071644672
    checkpoint_id:
      description: Id of the checkpoint the target restored from, once sealed.
      type: str
      sample: 0f4f4c7e-56a1-4d5e-9bd5-1f1a5d0e8a11
    source_pid:
      description: Pid of the workload on the source.
      type: int
      sample: 4242
    target_pid:
      description: Pid of the copy on the target, once it runs.
      type: int
      sample: 5151
    target:
      description: The target, as the source reaches it.
      type: dict
      contains:
        host:
          description: Its address or name.
          type: str
          sample: 10.0.0.2
        label:
          description: How messages name it (user, host, port).
          type: str
          sample: root@10.0.0.2:22
    journal:
      description: Path of the journal read.
      type: str
      sample: /var/lib/nucleus-criu/migrations/web.journal.json
"""

from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migration_status
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import MIGRATION_INFO
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(MIGRATION_INFO)
    run_module(module, lambda: _migration_status.migration_info(MIGRATION_INFO.request(module.params)))


if __name__ == "__main__":
    main()
