#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_restore
short_description: Restore a process tree from a CRIU checkpoint
version_added: 0.1.0
description:
  - Verifies the checkpoint directory O(src) (every image byte against the manifest, and the signature),
    then restores it detached with the options it was dumped with (and those its dump found it needs, plus the
    restore options given here), and confirms the restored process is still alive (not a zombie) shortly after.
  - The checkpoint is reached through directories only root (or the caller) can change, locked, and held open from
    before verification until criu has read it, so criu restores exactly the bytes that were verified. criu works and
    logs in a private directory; its log is then copied into O(src) as C(restore.log) (replacing, never following,
    whatever is there). Nothing else at the top level of O(src) is ever opened.
  - The restore runs under O(timeout); if it fires, criu and the tree it was restoring are killed.
  - A failed restore never modifies the images.
  - Idempotent. When C(restored.json) in O(src) names a process that is still alive on this boot,
    nothing is done unless O(force=true).
author:
  - nucleus.criu maintainers (@nucleus-criu)
extends_documentation_fragment:
  - nucleus.criu.common.CRIU_PATH
  - nucleus.criu.common.TIMEOUT
  - nucleus.criu.common.HMAC
  - nucleus.criu.common.SIGNATURE
  - nucleus.criu.common.ATTRIBUTES
attributes:
  check_mode:
    support: full
    details: Verifies the checkpoint and the host and predicts whether a restore would happen.
  diff_mode:
    support: partial
    details:
      - Shows the copy of the checkpoint that runs, as C(restored.json) in O(src) records it - its C(pid),
        C(checkpoint_id), C(restored_at), and C(container) (its name) for a container - under the header C(copy restored
        from SRC). Before - the live copy an earlier restore made, if any (nothing when there is none, or it is gone);
        after - the copy this restore made, or the same live copy when there is nothing to do.
      - In check mode the new copy shows only its C(checkpoint_id) (and C(container)); its C(pid) and C(restored_at)
        come with the restore.
      - Not shown - the O(pidfile), and C(restored.json) and C(restore.log) written into O(src).
options:
  src:
    description:
      - Checkpoint directory written by M(nucleus.criu.criu_checkpoint).
    type: path
    required: true
  verify:
    description:
      - Verify the manifest (size and digest of every image) before restoring.
      - CRIU does not notice corrupted or truncated images itself; turn this off only for images you just verified.
      - A configured key is enforced even when this is off.
    type: bool
    default: true
  pidfile:
    description:
      - Write the pid of the restored process to this file (its directory may be reached through root-owned symlinks,
        such as C(/var/run)). If it cannot be written, the task fails saying that the workload runs, and as which pid.
    type: path
  unit:
    description:
      - The unit a checkpoint of a systemd service (made with O(nucleus.criu.criu_checkpoint#module:unit)) is restored
        as; it defaults to the unit the checkpoint recorded, and no other is accepted. Only that kind of checkpoint takes it.
      - The unit must be loaded and not running. A runtime drop-in makes it C(Type=forking) with an C(ExecStart) that
        runs criu restore; the restored process becomes the unit's C(MainPID), in its cgroup, writing to a fresh
        journald stream of the unit (C(journalctl -u)). The drop-in is removed afterwards, so C(systemctl restart)
        starts the service as its unit file says.
    type: str
    version_added: 0.2.0
  force:
    description:
      - Restore again even if a previous restore from O(src) is still running.
    type: bool
    default: false
  container_name:
    description:
      - The name of the restored container, for a container's checkpoint (see M(nucleus.criu.criu_checkpoint)'s
        O(nucleus.criu.criu_checkpoint#module:container)). Default - the checkpointed container's name.
      - The engine imports the verified export (a new container) and restores it; its image must be on this host
        (an export does not hold it), and no container of that name may exist.
      - A container with established TCP connections is restored under its own name only (Podman refuses
        C(--tcp-established) with another name).
    type: str
  ignore_static_ip:
    description:
      - For a container's checkpoint - give the restored container a new IP address instead of the one it had
        (Podman's C(--ignore-static-ip)), for a copy beside the original.
    type: bool
    default: false
  ignore_static_mac:
    description:
      - For a container's checkpoint - give the restored container a new MAC address (Podman's C(--ignore-static-mac)).
    type: bool
    default: false
  tcp_established:
    description:
      - Restore the TCP connections saved in the checkpoint as they were (C(--tcp-established)).
      - When omitted, what the dump recorded is replayed (and what its own check found the images need). Set it to
        rescue a checkpoint made before that check, which criu refuses with "Connected TCP socket in image".
    type: bool
  tcp_close:
    description:
      - Restore the saved TCP connections closed (C(--tcp-close)); the process sees them end.
      - When omitted, what the dump recorded is replayed. A checkpoint made with
        O(nucleus.criu.criu_checkpoint#module:tcp_close=true) can only be restored with it (V(false) is refused).
    type: bool
  manage_cgroups:
    description:
      - How to restore the cgroups recorded with O(nucleus.criu.criu_checkpoint#module:manage_cgroups)
        (C(--manage-cgroups)). V(soft) creates missing cgroups and sets the properties only of those it created;
        V(none) and V(props) need the cgroups to exist; V(full) and V(strict) restore every property.
    type: str
    choices: [none, props, soft, full, strict, ignore]
  cgroup_root:
    description:
      - Restore the process under these cgroups instead of where it was (C(--cgroup-root)), each V([CONTROLLER:]/PATH),
        for example V(cpu:/services/job) or V(/services/job) for every controller not named. Use with O(manage_cgroups).
    type: list
    elements: str
    default: []
seealso:
  - module: nucleus.criu.criu_checkpoint
  - module: nucleus.criu.criu_verify
"""

EXAMPLES = r"""
- name: Restore a job and record its new pid
  nucleus.criu.criu_restore:
    src: /var/lib/criu/job
    pidfile: /run/job.pid
  register: restored

- name: Restore only a checkpoint signed with our key
  nucleus.criu.criu_restore:
    src: /var/lib/criu/game
    hmac_key_file: /etc/nucleus-criu/hmac.key

- name: Restore a container's checkpoint as a copy beside the original
  nucleus.criu.criu_restore:
    src: /var/lib/criu/web
    container_name: web-copy
    ignore_static_ip: true
"""

RETURN = r"""
src:
  description: The checkpoint directory.
  returned: always
  type: str
pid:
  description:
    - Pid (on this host) of the restored root process (a container's main process); null in check mode when a restore
      would happen.
  returned: always
  type: int
  sample: 4242
container:
  description: The restored container, for a container's checkpoint, as the engine reports it.
  returned: when a container was restored or is still running from an earlier restore
  type: dict
  contains:
    id:
      description: Its id.
      type: str
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    name:
      description: Its name (O(container_name), else the checkpointed container's).
      type: str
      sample: web
    state:
      description: Its state.
      type: str
      sample: running
    pid:
      description: Pid (on this host) of its main process.
      type: int
      sample: 4242
    image_id:
      description: Id of its image.
      type: str
      sample: 3f1394ce8db03bd98578ad312f91c2e0e10bcb0fc96750a0eef1fcee62c32218
    image_name:
      description: Name of its image.
      type: str
      sample: "localhost/web:1"
    runtime:
      description: The OCI runtime that runs it.
      type: str
      sample: runc
    criu_config:
      description:
        - The criu configuration file its C(org.criu.config) annotation names, null when none (a container naming one
          is refused by M(nucleus.criu.criu_checkpoint)).
      type: str
      sample: null
    labels:
      description: Its labels (its own and its image's), by name.
      type: dict
      sample: {"app": "web"}
checkpoint:
  description:
    - The checkpoint's C(metadata.json), which the
      R(checkpoint directory format,ansible_collections.nucleus.criu.docsite.format) describes field by field.
    - C(process.cmdline) is left out (arguments may hold secrets); it stays in the root-only C(metadata.json).
  returned: when a restore happened or would happen
  type: dict
  contains:
    schema_version:
      description: Version of the metadata's format.
      type: int
      sample: 2
    id:
      description: Random unique id (UUID4) of the checkpoint.
      type: str
      sample: ebcf018e-b18e-4eda-8f02-24b1a177c61d
    name:
      description: Its name (O(nucleus.criu.criu_checkpoint#module:name), else the basename of its directory; a migration's name).
      type: str
      sample: job
    created_at:
      description: UTC time its metadata was written (ISO 8601).
      type: str
      sample: "2026-11-30T11:22:38.165114Z"
    source:
      description: The host it was made on (hostname, machine_id, boot_id, kernel, arch).
      type: dict
      sample: {hostname: web1, arch: x86_64, kernel: 6.1.0-27-amd64, boot_id: 7faabbcb-f231-4b4c-80e5-92f1d4b436a5,
               machine_id: 3d1219c7c4c5404aaa1f6d2a48adfda4}
    criu:
      description: The criu that dumped it (path, version); for a container, the criu its runtime ran.
      type: dict
      sample: {path: /usr/local/sbin/criu, version: 4.2.1}
    process:
      description:
        - The root of the dumped tree (pid, starttime, comm, exe, cwd, pid_namespace_init, tree - every pid of the tree);
          for a container, its main process as this host saw it.
      type: dict
      sample: {pid: 4242, comm: python3, exe: /usr/bin/python3.11, cwd: /srv/job, starttime: 1013160,
               pid_namespace_init: false, tree: [4242]}
    options:
      description:
        - The criu options of the dump, one key per option; a restore replays those it needs again.
        - A container's are leave_running, leave_stopped, tcp_established, file_locks and compress.
      type: dict
      sample: {leave_running: true, leave_stopped: false, tcp_established: false, network_lock: nftables, shell_job: false}
    restore_needs:
      description: Restore options the images call for beyond RV(checkpoint.options) (a saved TCP connection); empty when none.
      type: dict
      sample: {}
    manifest_algorithm:
      description: Digest of the manifest, V(sha256) or V(blake3).
      type: str
      sample: sha256
    manifest_chunk_bytes:
      description: Bytes covered by each digest of RV(checkpoint.manifest).
      type: int
      sample: 67108864
    manifest:
      description: Every image file with its size and one digest per RV(checkpoint.manifest_chunk_bytes) (C(chunks)).
      type: list
      elements: dict
      sample: [{path: core-4242.img, size: 2603, chunks: [91838861340413385ffda76223fed2c55c50d84183c0690d1636a4043121922a]}]
    container:
      description: The container (engine, engine_version, runtime, id, name, image_id, image_name).
      type: dict
      returned: for a container's checkpoint
      sample: {engine: podman, engine_version: 4.3.1, runtime: runc, name: web,
               id: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08,
               image_id: 3f1394ce8db03bd98578ad312f91c2e0e10bcb0fc96750a0eef1fcee62c32218, image_name: "localhost/web:1"}
restored:
  description:
    - The record written to C(restored.json) (without its signature), or the one found there when nothing was done.
  returned: when the process is restored, or runs from an earlier restore
  type: dict
  contains:
    pid:
      description: Pid (on this host) of the restored root process (a container's main process).
      type: int
      sample: 4242
    starttime:
      description: Its start time in clock ticks since boot; with the pid, it identifies the process.
      type: int
      returned: for a process tree's checkpoint
      sample: 987654
    container_id:
      description: Id of the restored container.
      type: str
      returned: for a container's checkpoint
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    container_name:
      description: Name of the restored container.
      type: str
      returned: for a container's checkpoint
      sample: web-copy
    boot_id:
      description: Boot id of this host when it restored; a record of another boot is ignored.
      type: str
      sample: 0e6a21f4-8a43-4c3e-9d0e-3d7f6f1c2b7a
    host:
      description: This host's name.
      type: str
      sample: web2
    checkpoint_id:
      description: Id of the checkpoint restored (RV(checkpoint.id)).
      type: str
      sample: ebcf018e-b18e-4eda-8f02-24b1a177c61d
    restored_at:
      description: UTC time criu restore returned with the tree running (ISO 8601); the end of the workload's downtime.
      type: str
      sample: "2026-11-30T10:00:01.654321Z"
stats:
  description: Restore statistics.
  returned: when a restore happened
  type: dict
  contains:
    restore_seconds:
      description: Time criu restore took (the workload runs from its end).
      type: float
    verify_seconds:
      description: Time spent verifying the images (0 with O(verify=false)).
      type: float
    verify_bytes:
      description: Image bytes verified.
      type: int
    criu:
      description:
        - criu's own statistics of the restore (its C(stats-restore)), for example C(forking_time),
          C(restore_time) (microseconds), C(pages_restored); C(unavailable) says why when they cannot be read.
      type: dict
      sample: {forking_time: 2100, restore_time: 187000, pages_restored: 65536}
    podman:
      description: Podman's C(--print-stats) of a container's restore (with criu's own figures in it).
      type: dict
      returned: when a container was restored
      sample: {podman_restore_duration: 400967, container_statistics: [{runtime_restore_duration: 256829,
               criu_statistics: {forking_time: 438, restore_time: 120798, pages_restored: 32}}]}
actions:
  description: What was done, or would be done in check mode.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.nucleus.criu.plugins.module_utils.operations import _restore
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import RESTORE
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(RESTORE)
    run_module(module, lambda: _restore.restore(RESTORE.request(module.params), module.check_mode))


if __name__ == "__main__":
    main()
