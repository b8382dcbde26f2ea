#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_checkpoint
short_description: Checkpoint a running process tree with CRIU
version_added: 0.1.0
description:
  - Dumps the process tree rooted at O(pid) (or the pid in O(pidfile)) into the checkpoint directory O(dest),
    with a C(metadata.json) that lists the size and digest (SHA-256 or BLAKE3) of every image file, and a
    C(checkpoint.hmac) signature when a key is given.
  - Page images are hashed while criu writes them, so the manifest costs little more than the dump.
  - The dump is written to a staging directory beside O(dest) and renamed into place only when complete,
    so O(dest) never holds half a checkpoint. A failed dump leaves no O(dest) and resumes a process it left stopped.
  - Without O(leave_running) or O(leave_stopped) the process ends, but only once the checkpoint is published (criu
    leaves it stopped); whatever fails before the publish (a full disk, a signature) resumes it instead.
  - Before publishing, the module checks what the images need at restore beyond the options used (for example a TCP
    connection closed on both sides, whose state criu saves although O(tcp_established) was not set) and records it
    in C(metadata.json) (C(restore_needs)), so M(nucleus.criu.criu_restore) brings the workload back.
  - Every criu option is a typed module option passed as argv (never a free-form string); those a restore needs
    again are recorded and replayed.
  - Idempotent. A valid checkpoint of the same process (same pid, start time and boot) already at O(dest)
    means nothing to do; a checkpoint of another process there is an error unless O(force=true).
  - A rerun finishes what a run killed midway left. A run killed after criu's dump and before the publish left the
    tree stopped (and its TCP connections in criu's hands), so the rerun resumes it first, then dumps it running; a
    container stopped by Podman's checkpoint is restored in place from Podman's copy first. A run
    killed after the publish and before ending the tree left the tree stopped, so the rerun ends it, as its checkpoint
    says.
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
    details: Validates the process, the destination and criu, and predicts whether a dump would happen.
  diff_mode:
    support: partial
    details:
      - Shows the checkpoint directories the task changes, by path, each with its C(id), C(name), C(created_at), what it
        holds (C(pid) and C(comm), or C(container) and C(pid)) and C(image_bytes). Before - the checkpoint at O(dest),
        if any, and the older ones O(keep) deletes; after - the checkpoint at O(dest). A missing checkpoint shows as
        nothing, so O(state=absent) shows the checkpoint going; with nothing to do, before and after are the same.
      - In check mode the new checkpoint shows only what is known before the dump (its C(name), C(pid), and C(comm) or
        C(container)); its C(id), C(created_at) and C(image_bytes) come with the dump.
      - Not shown - missing parents of O(dest) made, and files O(link_remap) links aside.
options:
  state:
    description:
      - V(present) makes sure O(dest) holds a checkpoint of the process.
      - V(absent) deletes the checkpoint at O(dest), if it is a checkpoint directory this collection made, owned by root
        or the calling user; anything else there (an empty directory too) is refused, naming it.
    type: str
    choices: [present, absent]
    default: present
  keep:
    description:
      - After a dump, keep only the O(keep) newest checkpoints of the same name (O(name)) in the directory of
        O(dest) and delete the older ones (only checkpoint directories this collection made). For periodic checkpoints
        taken with O(leave_running), each into a new O(dest).
    type: int
  pid:
    description:
      - Pid of the root of the process tree to checkpoint.
      - For a workload in its own PID namespace, the pid (as seen from this host) of the namespace's init.
      - With O(state=present), exactly one of O(pid), O(pidfile), O(container) and O(unit) is required.
    type: int
  pidfile:
    description:
      - File holding the pid to checkpoint. It must contain only digits (and whitespace) and must not be a symlink.
    type: path
  container:
    description:
      - Name or id of a running container to checkpoint instead of a process tree, with O(engine).
      - The engine's export (the container's memory, its file changes and its configuration, not its image) becomes
        the checkpoint's only image, C(images/export.tar), under the same manifest, signature and staging as a
        process's images; M(nucleus.criu.criu_restore) imports it again.
      - Podman passes O(tcp_established) and O(file_locks) to criu for a container; every other criu option (and
        O(leave_stopped)) is refused. Without O(leave_running) the container stops (it stays, exited, on the host);
        should anything fail after that, it is restored in place from the copy Podman keeps.
      - With O(leave_running) the container stops for its export too, and is restored in place from Podman's copy at
        once, so it runs on from the same memory (same id and name, a new host PID). Podman archives a container's file
        changes after the dump, so a container left running would put newer files in the export than its memory knows.
      - Stopped, a container holds no address in Podman's address book. Should another container be given its address
        meanwhile, it is restored in place under a new one rather than left stopped, and the task warns.
      - The host must be able to checkpoint containers, see M(nucleus.criu.criu_info)'s O(nucleus.criu.criu_info#module:engine)
        (the C(nucleus.criu.criu) role's C(criu_containers) prepares it).
    type: str
  unit:
    description:
      - A systemd service (V(web) or V(web.service)) to checkpoint instead of a process tree, that is its main process and
        that process's children, which must be everything its cgroup holds (other processes there are refused, named).
      - Its stdout and stderr, streams to journald, are recorded as external sockets;
        M(nucleus.criu.criu_restore) restores the checkpoint as the unit, connected to a fresh journald stream.
      - Without O(leave_running) or O(leave_stopped) the unit is stopped through systemd once the checkpoint is
        published (the frozen tree is killed at once, and C(Restart=) does not start it again); it is left
        C(inactive), still enabled if it was.
      - O(manage_cgroups) is refused, since the unit's processes live in its own cgroup.
    type: str
    version_added: 0.2.0
  engine:
    description:
      - The container engine of O(container).
    type: str
    choices: [podman]
    default: podman
  compress:
    description:
      - Compression of a container's export (Podman's C(--compress)). Memory rarely compresses, so the default
        spends no time on it.
    type: str
    choices: [none, gzip, zstd]
    default: none
  dest:
    description:
      - Checkpoint directory to create. Missing parents are created too (owned by the calling user, mode 0700; in
        check mode nothing is created). Every existing directory above it must be owned by root (or the calling
        user) and not writable by group or others (a root-owned sticky directory such as C(/tmp) is fine above the
        parent). The parent itself must be writable by its owner alone - a shared C(/tmp) or C(/var/tmp) is
        refused, since other users could create the lock and log names kept there. At most 200 bytes for its last
        component.
    type: path
    required: true
  name:
    description:
      - Label recorded in C(metadata.json). Defaults to the basename of O(dest).
    type: str
  leave_running:
    description:
      - Keep the process running after the dump. By default CRIU ends it once it is dumped.
      - Mutually exclusive with O(leave_stopped).
    type: bool
    default: false
  leave_stopped:
    description:
      - Leave the process stopped (frozen) after the dump, for a two-phase migration; C(kill -CONT) resumes it.
    type: bool
    default: false
  hash_algorithm:
    description:
      - Digest of every image file in the manifest, recorded in C(metadata.json) so verification uses the same.
      - V(sha256) works everywhere. V(blake3) is several times faster, but every host that verifies or restores
        the checkpoint needs the Python module C(blake3) (Debian 13 C(python3-blake3), or C(pip install blake3))
        for the interpreter that runs the modules; M(nucleus.criu.criu_info) reports it as RV(nucleus.criu.criu_info#module:hash_algorithms).
      - V(auto) picks V(blake3) when this host has it, else V(sha256).
    type: str
    choices: [sha256, blake3, auto]
    default: sha256
  force:
    description:
      - Replace the checkpoint at O(dest). Only an empty directory or a checkpoint directory this collection made
        (with a C(metadata.json)), owned by root or the calling user, is replaced; anything else is refused.
    type: bool
    default: false
seealso:
  - module: nucleus.criu.criu_verify
  - module: nucleus.criu.criu_restore
"""

EXAMPLES = r"""
- name: Checkpoint a job and keep it running
  nucleus.criu.criu_checkpoint:
    pid: 4242
    dest: /var/lib/criu/job
    leave_running: true

- name: Checkpoint a Podman container, leaving it running, signed
  nucleus.criu.criu_checkpoint:
    container: web
    dest: /var/lib/criu/web
    leave_running: true
    hmac_key_file: /etc/nucleus-criu/hmac.key

- name: Freeze a server with open TCP connections for migration, signing the checkpoint
  nucleus.criu.criu_checkpoint:
    pidfile: /run/game.pid
    dest: /var/lib/criu/game
    leave_stopped: true
    tcp_established: true
    hmac_key_file: /etc/nucleus-criu/hmac.key
"""

RETURN = r"""
dest:
  description: The checkpoint directory.
  returned: always
  type: str
  sample: /var/lib/criu/job
pid:
  description: The pid that was (or would be) checkpointed.
  returned: when O(pid) or O(pidfile) is given
  type: int
  sample: 4242
container:
  description: The container that was (or would be) checkpointed, as O(container) named it.
  returned: when O(container) is given
  type: str
  sample: web
checkpoint:
  description:
    - The checkpoint's C(metadata.json), which the
      R(checkpoint directory format,ansible_collections.nucleus.criu.docsite.format) describes field by field.
    - C(process.cmdline) is left out (arguments may hold secrets); it stays in the root-only C(metadata.json).
  returned: when a checkpoint exists at dest after the task
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
      description: Its name (O(name), else the basename of O(dest)).
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
stats:
  description: Dump statistics.
  returned: when a dump happened
  type: dict
  contains:
    frozen_at:
      description: UTC time (ISO 8601) just before criu started freezing the tree; the start of the workload's downtime.
      type: str
    dump_seconds:
      description: Time criu dump took.
      type: float
    fsync_seconds:
      description: Time from the end of the dump until the checkpoint was flushed to disk and published.
      type: float
    podman:
      description: Podman's C(--print-stats) of a container's checkpoint (with criu's own figures in it).
      type: dict
      returned: when a container was checkpointed
      sample: {podman_checkpoint_duration: 487220, container_statistics: [{runtime_checkpoint_duration: 261691,
               criu_statistics: {freezing_time: 100743, frozen_time: 73118, pages_written: 17}}]}
    criu:
      description:
        - criu's own statistics of the dump (its C(stats-dump)), for example C(freezing_time),
          C(frozen_time), C(memdump_time), C(memwrite_time) (microseconds), C(pages_scanned), C(pages_written).
        - C(unavailable) says why when they cannot be read.
      type: dict
      sample: {freezing_time: 1210, frozen_time: 412345, memdump_time: 98765, memwrite_time: 301234,
               pages_scanned: 65612, pages_written: 65536}
    image_bytes:
      description: Total size of the image files.
      type: int
    image_files:
      description: Number of image files.
      type: int
removed:
  description: Older checkpoints of the same name deleted because of O(keep).
  returned: with O(keep), when a dump happened
  type: list
  elements: str
actions:
  description: What was done, or would be done in check mode.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.nucleus.criu.plugins.module_utils.operations import _checkpoint
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(CHECKPOINT)
    run_module(module, lambda: _checkpoint.checkpoint(CHECKPOINT.request(module.params), module.check_mode))


if __name__ == "__main__":
    main()
