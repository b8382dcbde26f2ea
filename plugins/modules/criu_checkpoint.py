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
  - Idempotent. A valid checkpoint of the same process (same pid, start time and boot) already at O(dest)
    means nothing to do; a checkpoint of another process there is an error unless O(force=true).
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
    details: Validates the process, the destination and criu, and predicts whether a dump would happen.
options:
  pid:
    description:
      - Pid of the root of the process tree to checkpoint.
      - For a workload in its own PID namespace, the pid (as seen from this host) of the namespace's init.
      - Exactly one of O(pid) and O(pidfile) is required.
    type: int
  pidfile:
    description:
      - File holding the pid to checkpoint. It must contain only digits (and whitespace) and must not be a symlink.
    type: path
  dest:
    description:
      - Checkpoint directory to create. Its parent must exist, and it and every directory above it must be owned by
        root (or the calling user) and not writable by group or others (a root-owned sticky directory such as
        C(/tmp) is fine). At most 200 bytes for its last component.
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
  tcp_established:
    description:
      - Checkpoint established TCP connections (C(--tcp-established)). Needed when the process holds one.
    type: bool
    default: false
  ext_unix_sk:
    description:
      - Allow unix sockets connected to processes outside the tree (C(--ext-unix-sk)).
    type: bool
    default: false
  file_locks:
    description:
      - Checkpoint file locks (C(--file-locks)).
    type: bool
    default: false
  shell_job:
    description:
      - Allow a tree whose session or process group leader is outside it, or that has a terminal (C(--shell-job)).
      - When omitted, detected from the process.
    type: bool
  network_lock:
    description:
      - How CRIU blocks the network while it dumps TCP connections. V(nftables) works where iptables is absent.
    type: str
    choices: [nftables, iptables, skip]
    default: nftables
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
  returned: always
  type: int
  sample: 4242
checkpoint:
  description:
    - The checkpoint's C(metadata.json) (schema_version, id, name, created_at, source, criu, process, options, manifest).
    - C(process.cmdline) is left out (arguments may hold secrets); it stays in the root-only C(metadata.json).
  returned: when a checkpoint exists at dest after the task
  type: dict
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
    image_bytes:
      description: Total size of the image files.
      type: int
    image_files:
      description: Number of image files.
      type: int
actions:
  description: What was done, or would be done in check mode.
  returned: always
  type: list
  elements: str
"""

from ansible_collections.nucleus.criu.plugins.module_utils import _checkpoint
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(CHECKPOINT)
    run_module(module, lambda: _checkpoint.checkpoint(module.params, module.check_mode))


if __name__ == "__main__":
    main()
