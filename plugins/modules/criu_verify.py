#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_verify
short_description: Verify a CRIU checkpoint directory, and whether this host can restore it
version_added: 0.1.0
description:
  - Checks C(metadata.json) (schema and shape), every file under C(images/) against the manifest
    (no file missing, extra, resized, altered, or not a regular file), and the C(checkpoint.hmac) signature.
  - With O(check_host=true), also checks that this host can restore it, a usable criu 4.2 or newer,
    the same architecture, and every pid of a tree outside its own PID namespace free.
  - The checkpoint, its C(images/) and every image must be owned by root (or the caller) and not writable by group or
    others, and so must every directory above it; an image with more than one hard link is refused. Sizes are
    compared before a byte is hashed, and hashing stops at O(timeout).
  - Entries at the top level that are no part of a checkpoint (or a log that is not a regular file) are listed in
    RV(unexpected_entries) and never opened.
  - Read-only. Fails with a C(problems) list when the checkpoint is not valid.
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
    details: The module never changes anything.
options:
  path:
    description:
      - The checkpoint directory.
    type: path
    required: true
    aliases: [src]
  check_host:
    description:
      - Also check that this host can restore the checkpoint.
    type: bool
    default: false
seealso:
  - module: nucleus.criu.criu_restore
"""

EXAMPLES = r"""
- name: Verify a checkpoint after transferring it
  nucleus.criu.criu_verify:
    path: /var/lib/criu/job
    hmac_key_file: /etc/nucleus-criu/hmac.key
    check_host: true
"""

RETURN = r"""
path:
  description: The checkpoint directory.
  returned: always
  type: str
valid:
  description: Whether the checkpoint passed every check.
  returned: always
  type: bool
checkpoint:
  description:
    - The checkpoint's C(metadata.json), which the
      R(checkpoint directory format,ansible_collections.nucleus.criu.docsite.format) describes field by field.
    - C(process.cmdline) is left out (arguments may hold secrets); it stays in the root-only C(metadata.json).
  returned: success
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
signed:
  description: Whether the checkpoint carries a C(checkpoint.hmac).
  returned: success
  type: bool
signature_checked:
  description: Whether that signature was checked against a key.
  returned: success
  type: bool
problems:
  description: Every problem found, each naming the file, what was expected and what was found.
  returned: failure
  type: list
  elements: str
stats:
  description: Where the time went.
  returned: success
  type: dict
  contains:
    verify_seconds:
      description: Time spent reading and hashing the images (on every core).
      type: float
    verify_bytes:
      description: Image bytes hashed.
      type: int
unexpected_entries:
  description: Top-level entries of the checkpoint directory that are no part of a checkpoint, or not what their name
    promises (for example a C(restore.log) that is a symlink). They are reported, never opened.
  returned: always
  type: list
  elements: str
  sample: ["notes.txt", "restore.log (not a regular file)"]
"""

from ansible_collections.nucleus.criu.plugins.module_utils.operations import _verify
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import VERIFY
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(VERIFY)
    run_module(module, lambda: _verify.verify(VERIFY.request(module.params)))


if __name__ == "__main__":
    main()
