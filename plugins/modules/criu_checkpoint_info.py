#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_checkpoint_info
short_description: List the CRIU checkpoints under a directory
version_added: 0.1.0
description:
  - Lists every checkpoint directory this collection made directly under O(path) (or O(path) itself when it is one),
    newest first, with its id, name, process, size, age, source host and whether it is signed. Anything else there
    is left out.
  - With O(verify=true), also checks each one as M(nucleus.criu.criu_verify) does (reading every byte).
  - With O(details=true), also reads the process tree, each process's memory and a summary of open files and sockets
    from the images, with CRIU's own parser (pycriu, which the P(nucleus.criu.criu#role) role installs); only for
    checkpoints that verify. Where pycriu is missing, RV(checkpoints[].details.unavailable) says why.
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
  path:
    description:
      - Directory holding checkpoint directories (or one checkpoint directory). It and every directory above it must
        be owned by root (or the caller) and not writable by others.
    type: path
    required: true
  name:
    description:
      - Only checkpoints with this name (the C(name) recorded in their metadata).
    type: str
  verify:
    description:
      - Verify each checkpoint (manifest of every image byte, and the signature with the key given, if any).
    type: bool
    default: false
  details:
    description:
      - Read the process tree, memory and open files of each checkpoint that verifies. Implies O(verify).
    type: bool
    default: false
seealso:
  - module: nucleus.criu.criu_checkpoint
  - module: nucleus.criu.criu_verify
"""

EXAMPLES = r"""
- name: List the checkpoints of a job, newest first
  nucleus.criu.criu_checkpoint_info:
    path: /var/lib/criu
    name: job
  register: checkpoints

- name: Check every checkpoint byte for byte and show what each holds
  nucleus.criu.criu_checkpoint_info:
    path: /var/lib/criu
    details: true
    hmac_key_file: /etc/nucleus-criu/hmac.key
"""

RETURN = r"""
path:
  description: The directory listed.
  returned: always
  type: str
exists:
  description: Whether O(path) exists; when it does not, RV(checkpoints) is empty (nothing made yet), not an error.
  returned: always
  type: bool
checkpoints:
  description: Every checkpoint found, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The checkpoint directory.
      type: str
      sample: /var/lib/criu/job-20261130T1000
    id:
      description: Its unique id.
      type: str
    name:
      description: Its name.
      type: str
      sample: job
    created_at:
      description: UTC time it was made (ISO 8601).
      type: str
    age_seconds:
      description: Seconds since it was made.
      type: float
    process:
      description: The root of the dumped tree (never its arguments).
      type: dict
      contains:
        pid:
          description: Its pid when it was dumped.
          type: int
          sample: 4242
        comm:
          description: Its command name.
          type: str
          sample: python3
    source:
      description: The host it was made on.
      type: dict
      contains:
        hostname:
          description: Host name.
          type: str
          sample: web1
        arch:
          description: Machine architecture; it restores only on the same one.
          type: str
          sample: x86_64
        kernel:
          description: Kernel release.
          type: str
          sample: 6.1.0-27-amd64
    criu_version:
      description: Version of the criu that made it.
      type: str
    schema_version:
      description: Its metadata schema version.
      type: int
    size_bytes:
      description: Total size of its images.
      type: int
    signed:
      description: Whether it carries a signature.
      type: bool
    options:
      description: The criu options it was made with (those set), as in its C(metadata.json).
      type: dict
      sample: {leave_running: true, network_lock: nftables}
    container:
      description:
        - The container, for a container's checkpoint; null for a process tree's.
        - Its C(details) are not read (criu's images are inside the engine's export).
      type: dict
      contains:
        engine:
          description: The container engine.
          type: str
          sample: podman
        name:
          description: The container's name.
          type: str
          sample: web
        id:
          description: The container's id.
          type: str
          sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
        image_name:
          description: Name of its image, which a restoring host must have.
          type: str
          sample: "localhost/web:1"
    valid:
      description: Whether it verifies.
      type: bool
      returned: with O(verify) or O(details)
    problems:
      description: Why it does not verify.
      type: list
      elements: str
      returned: with O(verify) or O(details)
    details:
      description: What its images hold, read with pycriu.
      type: dict
      returned: with O(details)
      contains:
        processes:
          description: Each process of the tree, pids as in the checkpoint.
          type: list
          elements: dict
          contains:
            pid:
              description: Its pid.
              type: int
              sample: 1
            ppid:
              description: Its parent's pid (0 for the root).
              type: int
              sample: 0
            comm:
              description: Its command name.
              type: str
              sample: python3
            threads:
              description: Its number of threads.
              type: int
              sample: 1
            memory_bytes:
              description: Bytes of its memory saved in the images.
              type: int
              sample: 268435456
        memory_bytes:
          description: Memory of all processes.
          type: int
        files:
          description: Open files by kind (REG, PIPE, ...).
          type: dict
          sample: {REG: 3, PIPE: 2}
        sockets:
          description: Open sockets by kind (INETSK, UNIXSK, ...).
          type: dict
          sample: {INETSK: 2}
        unavailable:
          description: Why nothing could be read (pycriu or protobuf missing, or the checkpoint does not verify).
          type: str
"""

from ansible_collections.nucleus.criu.plugins.module_utils.operations import _lifecycle
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT_INFO
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(CHECKPOINT_INFO)
    run_module(module, lambda: _lifecycle.listing(CHECKPOINT_INFO.request(module.params)))


if __name__ == "__main__":
    main()
