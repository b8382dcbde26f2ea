#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_migrate
short_description: Migrate a live process tree, Podman container or systemd service to another host, exactly once, driven by the source host
version_added: 0.1.0
description:
  - Runs on the B(source) host; the P(nucleus.criu.migrate#role) role runs it for many workloads at once.
  - Checks both hosts before touching the workload (the target over ssh exactly as the
    migration reaches it, its criu, architecture, free space and Python), then starts the migration in a driver
    detached from the controller, and waits for its outcome.
  - The driver freezes the workload (C(criu dump --leave-stopped)), streams its images to the target while criu writes
    them, over ssh, to this collection's own code that it runs there (sent over the session, never installed). The
    target digests every byte as it writes it, verifies the manifest and the signature, restores with the same code
    and checks as M(nucleus.criu.criu_restore), and keeps its copy B(stopped) until the source decides.
  - It takes every criu option M(nucleus.criu.criu_checkpoint) takes, with the same names and meaning; the dump records
    them and the target's restore replays those criu needs again, as M(nucleus.criu.criu_restore) does.
  - The decision is journaled on the source (the commit point) before the target is told. Before it, any failure,
    timeout or expired O(lease) resumes the source (SIGCONT, memory intact) and has the target remove its copy.
    After it, the source is never resumed; it is ended once the target runs. The controller, its connection and
    this module may die at any time without changing the outcome.
  - Both hosts keep a journal per workload in O(migrate_dir) (C(NAME.journal.json), root-only, flushed before every
    step). Rerunning the module reads it - a completed migration reports C(changed=false), an unfinished or
    in-doubt one is resolved from both journals - and never starts a second migration of a workload whose migration
    is in flight or in doubt.
  - With O(mode=postcopy), everything but the memory moves while frozen; the target's copy runs at once and fetches
    its pages from the frozen source over a socket pair joined through ssh (no port is opened on either host). The
    decision follows the last page. The source resumes only once the target confirms its copy is gone.
author:
  - nucleus.criu maintainers (@nucleus-criu)
extends_documentation_fragment:
  - nucleus.criu.common.CRIU_PATH
  - nucleus.criu.common.CRIU_OPTIONS
  - nucleus.criu.common.TIMEOUT
  - nucleus.criu.common.HMAC
  - nucleus.criu.common.ATTRIBUTES
attributes:
  check_mode:
    support: full
    details: Runs every preflight check on both hosts and predicts whether a migration would start; freezes nothing.
requirements:
  - On the target too - criu 4.2 or newer, and root (the ssh login to the target must be root).
  - ssh from the source to the target without a password prompt (a key file on the source; an agent only lives as long
    as the controller's connection), and Python 3.9 or newer at O(target_python) on the target.
options:
  name:
    description:
      - Name of the migration; names its journal and checkpoint directory on both hosts. Letters, digits, C(.), C(_), C(-).
    type: str
    required: true
  pid:
    description:
      - Pid of the root of the process tree to migrate. Exactly one of O(pid), O(pidfile), O(container) and O(unit) is
        required.
    type: int
  pidfile:
    description:
      - File holding that pid, read as strictly as M(nucleus.criu.criu_checkpoint) reads it.
    type: path
  container:
    description:
      - Name or id of a running container to migrate instead of a process (O(engine=podman)).
      - Podman checkpoints it (the container stops; Podman keeps a copy of the checkpoint to restore it in place from),
        the export streams to the target, which verifies it and restores it under the same name and id. Podman cannot
        restore a container stopped, so the target's copy runs from its restore while the source container stays
        stopped until the decision; an abort removes the target's copy B(before) the source container runs again, and
        a commit removes the source container.
      - Only O(mode=copy). O(tcp_established) and O(file_locks) are passed on to Podman; the other criu options are
        refused for a container, by name.
    type: str
  unit:
    description:
      - A running systemd service (V(NAME.service), or V(NAME)) to migrate as the unit. The unit must be installed on
        the target too (the same unit file and program) and not running there.
      - Its main process and that process's children move; a unit whose cgroup holds any other process is refused,
        naming it. Its stdout and stderr (journald streams) are handed fresh streams of the target's journald, so it
        logs on under the same unit.
      - From the freeze to the decision both hosts hold it with a runtime C(Restart=no), so that a copy that dies
        meanwhile is not started anew. The target's systemd starts it (a runtime drop-in whose ExecStart restores, removed
        afterwards), so after the commit it is the unit's MainPID there, C(systemctl stop) stops it and C(restart)
        starts a fresh one; the source's unit is stopped through systemd (SIGKILL, no restart) and left inactive.
      - Copy and post-copy. O(manage_cgroups) and O(cgroup_root) are refused (its processes live in the unit's cgroup).
    type: str
    version_added: 0.2.0
  unit_boot:
    description:
      - What becomes of an enabled unit's start at boot (O(unit)). The source's is disabled before the freeze in every
        case but V(keep) (journaled first; an abort enables it again), so that the source's next boot - even a crash
        mid-migration - never starts a second copy.
      - V(move) enables it on the target at the commit (when it was enabled on the source), so the service lives on the
        target, as it did on the source.
      - V(disable) leaves it disabled on both hosts.
      - V(keep) changes nothing at boot; an enabled unit then B(starts again on the source at its next boot), a second
        copy. Only for hosts whose boot is managed otherwise.
    type: str
    choices: [move, disable, keep]
    default: move
    version_added: 0.2.0
  engine:
    description:
      - Container engine of O(container).
    type: str
    choices: [podman]
    default: podman
  transfer_image:
    description:
      - When the target lacks the container's image (checked by image id in the preflight), send it first
        (C(podman save) here, C(podman load) there, before anything is frozen). Off, a missing image stops the
        migration at the preflight, naming the image.
    type: bool
    default: false
  target:
    description:
      - Address (or ssh host name) of the target host, as the source reaches it.
    type: str
    required: true
  ssh_user:
    description:
      - User the source logs in to the target as (root, or a user allowed to checkpoint).
    type: str
  ssh_port:
    description:
      - ssh port of the target.
    type: int
  ssh_key_file:
    description:
      - Private key file B(on the source host) for the login to the target.
    type: path
  ssh_extra_args:
    description:
      - Extra ssh arguments, split as a shell would (like C(ansible_ssh_common_args)), placed before the module's
        tunable defaults so they win over those, for example
        C(-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/ssh/migrate_known_hosts).
      - The module always adds, first so that nothing overrides them, C(BatchMode=yes) (no prompt may hang a frozen
        workload) and no connection sharing (C(ControlMaster=no), C(ControlPath=none), C(ControlPersist=no) - a cut
        link must cut the migration's own session); then, overridable, a connect timeout, keepalives (a silent link is
        noticed within 15 s) and a preference for AES-GCM ciphers.
    type: str
    default: ""
  ssh_connect_timeout:
    description:
      - Seconds an ssh connection to the target may take to open.
    type: int
    default: 10
  target_python:
    description:
      - Python 3.9+ interpreter on the target that runs this collection's code.
    type: path
    default: /usr/bin/python3
  target_pidfile:
    description:
      - Pidfile to write on the target with the restored pid.
    type: path
  migrate_dir:
    description:
      - Directory for the journals and checkpoints, on both hosts; created with its missing parents (mode 0700) by
        the first real run on each host; check mode and the preflight create nothing. Its whole chain must be root's.
    type: path
    default: /var/lib/nucleus-criu/migrations
  mode:
    description:
      - V(copy) moves every page while the workload is frozen; the downtime grows with its memory.
      - V(postcopy) restores it on the target at once and lets the memory follow; the downtime hardly grows with
        memory, but if the B(source host) dies before the last page arrived, the workload is lost.
    type: str
    choices: [copy, postcopy]
    default: copy
  lease:
    description:
      - Seconds the workload may stay frozen without a decision. When they run out, the migration undoes itself on the
        hosts (the source resumes), whether or not the controller is still there.
      - Must cover freezing, moving (all the memory, in either mode) and restoring; about 10 s plus 5 s per GiB on a
        fast link.
    type: int
    default: 120
  wait:
    description:
      - Wait for the outcome (up to O(wait_timeout)). With V(false), return as soon as the migration is journaled and
        its driver runs, with RV(status); follow it with M(nucleus.criu.criu_migration_info) in an C(until) loop (the
        P(nucleus.criu.migrate#role) role does). A rerun with V(false) while it runs returns its status unchanged.
      - Either way the migration runs in its driver, which keeps the lease; a controller that stops waiting or polling
        changes nothing about its outcome.
    type: bool
    default: true
  migration_id:
    description:
      - Follow the migration of O(name) with this id (the C(id) in RV(status) of a run with O(wait=false)) instead of starting
        one - wait for its outcome, finish or undo it should its driver have died, and report it, as the run that
        started it would have with O(wait=true), with C(changed=false) (the run that started it reported the change).
        Never starts another migration, so a rolled-back one stays rolled back (a rerun without it tries again).
      - The other options must be those the migration was started with.
    type: str
  wait_timeout:
    description:
      - Seconds the module waits for the outcome (O(wait=true)). The migration goes on without it; a rerun waits again.
      - A driver that dies whole (its lease keeper too) is noticed within a second; this run then finishes or undoes
        the migration from the journals, as a rerun would.
    type: int
    default: 1800
  manage_cgroups:
    description:
      - Record the process's cgroups in the images (C(--manage-cgroups)) and recreate them on the target with the same
        mode, so the copy runs in the same cgroups there (or under O(cgroup_root)). See
        O(nucleus.criu.criu_restore#module:manage_cgroups) for the modes.
    type: str
    choices: [none, props, soft, full, strict, ignore]
  cgroup_root:
    description:
      - Restore the copy on the target under these cgroups instead of where it was (C(--cgroup-root)), each
        V([CONTROLLER:]/PATH), for example V(cpu:/services/job). Use with O(manage_cgroups). Not for a container.
    type: list
    elements: str
    default: []
  hash_algorithm:
    description:
      - Digest of the manifest, see M(nucleus.criu.criu_checkpoint). V(auto) uses V(blake3) when both hosts have it.
    type: str
    choices: [sha256, blake3, auto]
    default: sha256
  compress:
    description:
      - Compress the images in transit (ssh's own compression, zlib). It pays only where the link is slower than the
        compression (tens of MB/s) and the memory compresses (a heap of repeated data, not random bytes); on a fast
        link it lengthens the downtime. See the benchmark's figures.
    type: bool
    default: false
  cleanup:
    description:
      - Which checkpoint copies to delete once the migration completed. The journals are always kept.
    type: str
    choices: [all, source, target, none]
    default: all
notes:
  - The downtime is the freeze, the transfer (copy mode), the restore and one round trip for the decision; keeping the
    target's copy stopped until the decision costs that round trip and a SIGCONT, a few milliseconds on a LAN.
seealso:
  - module: nucleus.criu.criu_checkpoint
  - module: nucleus.criu.criu_restore
"""

EXAMPLES = r"""
- name: Move a job from this host to worker2
  become: true
  nucleus.criu.criu_migrate:
    name: job
    pidfile: /run/job.pid
    target: worker2.example.com
    ssh_key_file: /root/.ssh/migrate_ed25519
    hmac_key_file: /etc/nucleus-criu/hmac.key
  register: moved

- name: Show the downtime
  ansible.builtin.debug:
    msg: "{{ moved.migration.target_pid }} after {{ moved.migration.downtime_seconds }} s"

- name: Move a service, as the unit, from this host to worker2 (it runs there under systemd, and starts there at boot)
  become: true
  nucleus.criu.criu_migrate:
    name: web
    unit: web.service
    target: worker2.example.com
    ssh_key_file: /root/.ssh/migrate_ed25519
"""

RETURN = r"""
status:
  description:
    - With O(wait=false), where the migration stands once its driver runs, as M(nucleus.criu.criu_migration_info)
      returns it in RV(nucleus.criu.criu_migration_info#module:migration) (phase, bytes sent, ...).
  returned: when O(wait=false) and a migration runs
  type: dict
  sample: {"phase": "prepared", "done": false, "driver_running": true, "bytes_sent": 0, "name": "web"}
msg:
  description: With O(wait=false), one line saying where the migration stands; on failure, what failed and what to do.
  returned: when O(wait=false), or on failure
  type: str
  sample: "web: prepared, 0.0 MiB sent"
migration:
  description: The migration as its source journal records it.
  returned: when a migration completed (also on failure, in the failure's details)
  type: dict
  contains:
    id:
      description: Unique id of this migration (both journals carry it).
      type: str
    outcome:
      description: V(completed), V(rolled_back) or V(in_doubt).
      type: str
      sample: completed
    phase:
      description: Last phase recorded on the source.
      type: str
    source_pid:
      description: Pid of the workload on the source.
      type: int
    unit:
      description: The migrated systemd unit; null for a process or a container.
      type: dict
      version_added: 0.2.0
      contains:
        name:
          description: The unit's name, the same on both hosts.
          type: str
          sample: web.service
        enabled:
          description: What C(systemctl is-enabled) said of it on the source when the migration started.
          type: str
          sample: enabled
        boot_disabled:
          description: Whether the migration disabled its start at boot on the source (see O(unit_boot)).
          type: bool
    container:
      description: The migrated container; null for a process.
      type: dict
      contains:
        id:
          description: Its id, the same on both hosts.
          type: str
          sample: 1f2e3d4c5b6a79880fedcba9876543210fedcba9876543210fedcba98765432
        name:
          description: Its name, the same on both hosts.
          type: str
          sample: web
        image_id:
          description: Id of its image.
          type: str
          sample: b274be4f03ef5cbb5a0a0bfcb8b4a8e3f5b1a3e1c7d3f1e6b8a2c4d6e8f0a1b2
        image_name:
          description: Name of its image.
          type: str
          sample: "localhost/web:1"
        labels:
          description: Its labels (its own and its image's), by name; a drain's rerun finds by them the containers it moved.
          type: dict
          sample: {"app": "web"}
    image_seconds:
      description: Seconds spent sending the container's image before the freeze (O(transfer_image)); null when none was sent.
      type: float
    target_pid:
      description: Pid of the workload on the target.
      type: int
    downtime_seconds:
      description: From the freeze until the target's copy was running (measured on the source, no clock skew).
      type: float
    image_bytes:
      description: Size of the checkpoint.
      type: int
    history:
      description: Every phase the source recorded, in order.
      type: list
      elements: dict
      contains:
        phase:
          description: The phase.
          type: str
          sample: freezing
        at:
          description: UTC time it was recorded (ISO 8601).
          type: str
          sample: "2026-11-30T10:00:00.650000Z"
    progress:
      description: The driver's last progress report; empty when it wrote none.
      type: dict
      contains:
        step:
          description: V(transfer) while images are sent, V(verify) once all reached the target, V(done) once the migration completed.
          type: str
          sample: done
        bytes_sent:
          description: Bytes sent to the target so far.
          type: int
          sample: 134217728
        rate_mib_s:
          description: Mean rate of the transfer so far, in MiB/s.
          type: float
          sample: 181.4
        at:
          description: UTC time of the report (ISO 8601).
          type: str
          sample: "2026-11-30T10:00:01.250000Z"
    journal:
      description: Path of the source's journal.
      type: str
    name:
      description: The migration's name (O(name)); its journals are C(NAME.journal.json) on both hosts.
      type: str
    mode:
      description: V(copy) or V(postcopy).
      type: str
    decision:
      description: V(commit) or V(abort) once decided; null before.
      type: str
    frozen_at:
      description: UTC time the workload was frozen on the source.
      type: str
    running_at:
      description: UTC time the target's copy was running (the target's clock).
      type: str
    dump_seconds:
      description: Seconds criu (or Podman) took to checkpoint the workload.
      type: float
    transfer_seconds:
      description: Seconds from the freeze until every image had reached the target.
      type: float
    lazy_pages:
      description: Pages the target fetched after its copy started (O(mode=postcopy)); null in copy mode.
      type: int
    checkpoint_id:
      description: Id of the checkpoint the migration made (its C(metadata.json) on both hosts).
      type: str
    target_cleanup:
      description:
        - For a rolled-back migration, whether what reached the target is gone (V(done)) or is removed by the next run
          (V(pending), the target unreachable when it was undone).
      type: str
    error:
      description: Why the migration did not complete; null when it did.
      type: str
    source_cleanup_error:
      description: Why the source container could not be removed after the commit (it stays stopped); null otherwise.
      type: str
    source:
      description: The source host's name (its C(uname -n)).
      type: str
    target:
      description: The target as the source reached it.
      type: dict
      contains:
        label:
          description: How messages name it, C(user@host:port) (user and port only when given).
          type: str
          sample: "root@10.0.0.2:22"
        host:
          description: Its address or ssh host name (O(target)).
          type: str
          sample: 10.0.0.2
actions:
  description: In check mode, what would be done.
  returned: in check mode
  type: list
  elements: str
"""

from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migrate
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import MIGRATE
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(MIGRATE)
    run_module(module, lambda: _migrate.migrate(MIGRATE.request(module.params), module.check_mode))


if __name__ == "__main__":
    main()
