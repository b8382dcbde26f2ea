#!/usr/bin/python
# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: criu_info
short_description: Report whether a host can checkpoint and restore with CRIU
version_added: 0.1.0
description:
  - Finds and validates the C(criu) binary, runs C(criu check), and reports the kernel, the architecture and
    whether the caller has the privileges CRIU needs.
  - With O(hmac_key) or O(hmac_key_file) (for example from C(module_defaults) for the whole C(group/nucleus.criu.criu)),
    also reports whether that key can be used (RV(signing_key)), never the key itself.
  - With O(engine), also reports whether this host can checkpoint containers (RV(containers)).
  - Never changes anything.
author:
  - nucleus.criu maintainers (@nucleus-criu)
options:
  pid:
    description:
      - Also report on this process (see RV(process)).
      - Mutually exclusive with O(pidfile).
    type: int
  pidfile:
    description:
      - Also report on the process named by this pidfile, read as strictly as M(nucleus.criu.criu_checkpoint) reads it.
    type: path
  engine:
    description:
      - Also report whether this host can checkpoint containers with this engine (see RV(containers)).
      - The engine runs with the modules' own environment, never the caller's (no C(CONTAINERS_CONF), no PATH of
        theirs); its runtime executes the first C(criu) on a PATH of the trusted criu directories.
    type: str
    choices: [podman]
extends_documentation_fragment:
  - nucleus.criu.common.CRIU_PATH
  - nucleus.criu.common.TIMEOUT
  - nucleus.criu.common.HMAC
  - nucleus.criu.common.ATTRIBUTES
attributes:
  check_mode:
    support: full
    details: The module never changes anything.
notes:
  - C(criu.usable) is true only when the binary passes the trust policy, is version 4.2 or newer and C(criu check) passes.
"""

EXAMPLES = r"""
- name: Find out whether this host can checkpoint
  nucleus.criu.criu_info:
  register: criu_host

- name: Find out whether this host can checkpoint Podman containers
  nucleus.criu.criu_info:
    engine: podman
  register: criu_containers

- name: Stop early when it cannot
  ansible.builtin.assert:
    that: criu_host.criu.usable and criu_host.can_checkpoint
    fail_msg: "{{ criu_host.criu.problems + [criu_host.privilege_problem] }}"
"""

RETURN = r"""
criu:
  description: The criu binary and its verdict on this kernel.
  returned: always
  type: dict
  contains:
    path:
      description: Path of the binary that would be run, or null when none was found.
      type: str
      sample: /usr/local/sbin/criu
    version:
      description: Version reported by C(criu --version).
      type: str
      sample: 4.2.1
    usable:
      description: Whether checkpoint and restore can run here.
      type: bool
    check:
      description: Whether C(criu check) passed.
      type: bool
    check_output:
      description: Output of C(criu check).
      type: str
      returned: when criu was found and is new enough
    missing_features:
      description:
        - Optional features C(criu check --feature) reports missing, among C(mem_dirty_track) (iterative pre-copy),
          C(uffd-noncoop) (post-copy), C(network_lock_nftables), C(timens) and C(tcp_half_closed).
      type: list
      elements: str
      returned: when criu was found and is new enough
      sample: [mem_dirty_track]
    lazy_pages:
      description: Whether the kernel supports lazy (post-copy) restore (C(criu check --feature uffd-noncoop)).
      type: bool
      returned: when criu was found and is new enough
    dirty_tracking:
      description: Whether soft-dirty memory tracking (iterative pre-copy) is available (C(criu check --feature mem_dirty_track)).
      type: bool
      returned: when criu was found and is new enough
    problems:
      description: Why criu is not usable, each with its remedy.
      type: list
      elements: str
kernel:
  description: Kernel release.
  returned: always
  type: str
  sample: 6.18.44
arch:
  description: Machine architecture; a checkpoint restores only on the same one.
  returned: always
  type: str
  sample: x86_64
can_checkpoint:
  description: Whether the caller holds the capabilities CRIU needs.
  returned: always
  type: bool
privilege_problem:
  description: Why the caller cannot checkpoint, empty when it can.
  returned: always
  type: str
page_server_problem:
  description:
    - Why this host cannot be the source of a post-copy migration (serve lazy pages), empty when it can.
    - The target of one needs RV(criu.lazy_pages) instead.
  returned: always
  type: str
  sample: "fs.pipe-max-size is 1048576 here, and CRIU's page server needs 4194304 ..."
hash_algorithms:
  description:
    - Manifest digests the interpreter running the modules can compute, for M(nucleus.criu.criu_checkpoint)'s
      O(nucleus.criu.criu_checkpoint#module:hash_algorithm). V(sha256) always; V(blake3) when the Python module C(blake3) is installed.
  returned: always
  type: list
  elements: str
  sample: [sha256, blake3]
signing_key:
  description: Whether the key given by O(hmac_key) or O(hmac_key_file) can sign and check checkpoints.
  returned: always
  type: dict
  contains:
    given:
      description: Whether a key was given.
      type: bool
    usable:
      description: Whether it can be read and is long enough (16 bytes or more).
      type: bool
    bytes:
      description: Its length in bytes.
      type: int
      returned: when usable
    problem:
      description: Why it cannot be used, naming the fix; empty when it can.
      type: str
containers:
  description: Whether this host can checkpoint containers with O(engine), and every fact that decides it.
  returned: when O(engine) is given
  type: dict
  contains:
    engine:
      description: The engine asked about.
      type: str
      sample: podman
    path:
      description: The engine binary's real path, null when none was found at a trusted path.
      type: str
      sample: /usr/bin/podman
    version:
      description: The engine's version.
      type: str
      sample: 4.3.1
    usable:
      description: Whether containers can be checkpointed here (no problem found).
      type: bool
    problems:
      description: What stands in the way, each with its remedy.
      type: list
      elements: str
    runtime:
      description: The OCI runtime the engine uses.
      type: dict
      returned: when the engine answered
      contains:
        name:
          description: Its name.
          type: str
          sample: runc
        path:
          description: Its path.
          type: str
          sample: /usr/bin/runc
        version:
          description: The first line of its version.
          type: str
          sample: runc version 1.1.5+ds1
        checkpoint:
          description: Whether it can checkpoint (runc; crun only when built with CRIU).
          type: bool
          sample: true
    criu:
      description: The criu the runtime will execute (the first on the modules' PATH), validated like criu discovery.
      type: dict
      returned: when the engine answered
      contains:
        path:
          description: Its path, null when none was found.
          type: str
          sample: /opt/criu-forky/usr/sbin/criu
        version:
          description: Its version.
          type: str
          sample: 4.2.1
        problem:
          description: Why it cannot be used, naming the fix; empty when it can.
          type: str
          sample: ""
    cgroup_manager:
      description: The engine's cgroup manager (systemd needs systemd running).
      type: str
      returned: when the engine answered
      sample: cgroupfs
    cgroup_version:
      description: The cgroup version the engine sees.
      type: str
      returned: when the engine answered
      sample: v1
    events_logger:
      description: Where the engine logs events (journald needs systemd running).
      type: str
      returned: when the engine answered
      sample: file
    default_ulimits:
      description: C(default_ulimits) as the containers.conf files set them (the last file that sets it wins).
      type: list
      elements: str
      returned: when the engine answered
      sample: ["nofile=20000:20000", "nproc=32768:32768"]
    limit_ceilings:
      description:
        - The highest C(nofile) and C(nproc) a container can get without C(CAP_SYS_RESOURCE).
      type: dict
      contains:
        nofile:
          description: The hard limit of open files (null - unlimited).
          type: int
          sample: 20000
        nproc:
          description:
            - The hard limit of processes (null - unlimited). The engine lowers its own nproc limit to C(kernel.pid_max),
              which bounds it too.
          type: int
          sample: 32768
    cap_sys_resource:
      description: Whether the caller holds C(CAP_SYS_RESOURCE); without it, containers need limits under RV(containers.limit_ceilings).
      type: bool
    systemd:
      description: Whether systemd runs this host (C(/run/systemd/system) exists).
      type: bool
process:
  description: The process given by O(pid) or O(pidfile).
  returned: when O(pid) or O(pidfile) is given
  type: dict
  contains:
    pid:
      description: The pid.
      type: int
    exists:
      description: Whether the pid exists (a zombie exists but is not alive).
      type: bool
    alive:
      description: Whether it exists and is not a zombie.
      type: bool
    state:
      description: Its state letter from /proc (R, S, T for stopped, ...).
      type: str
      returned: when it exists
    starttime:
      description: Its start time in clock ticks since boot; with the pid, it identifies the process.
      type: int
      returned: when it exists
    comm:
      description: Its command name.
      type: str
      returned: when it exists
"""

from ansible_collections.nucleus.criu.plugins.module_utils.operations import _info as info_
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import INFO
from ansible_collections.nucleus.criu.plugins.module_utils._module import create_module, run_module


def main() -> None:
    module = create_module(INFO)
    run_module(module, lambda: info_.info(INFO.request(module.params)))


if __name__ == "__main__":
    main()
