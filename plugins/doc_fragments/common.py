# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    """Options shared by the nucleus.criu modules."""

    CRIU_PATH = r"""
options:
  criu_path:
    description:
      - Full path of the C(criu) binary to run.
      - When omitted, V(/usr/local/sbin/criu), V(/usr/sbin/criu) and V(/usr/bin/criu) are tried in that order;
        C(PATH) is searched only when not running as root.
      - Whether given or discovered, the binary must be an ELF executable owned by root or the calling user and not
        writable by group or others; so must every directory and symlink on the way to it, the dynamic loader it
        names and every file of the library directories it names (C(DT_RPATH)/C(DT_RUNPATH)). Its real path is what
        runs, with C(--no-default-config) and a fixed minimal environment.
      - Its version must be 4.2 or newer; the P(nucleus.criu.criu#role) role installs one.
    type: path
"""

    # The criu options of a dump, as criu_checkpoint and criu_migrate take them (_options.OPTIONS).
    CRIU_OPTIONS = r"""
options:
  tcp_established:
    description:
      - Checkpoint established TCP connections (C(--tcp-established)), restored as they were. Needed when the process
        holds one. The network is locked (O(network_lock)) from the dump until the restore, so peers only see a delay.
      - Mutually exclusive with O(tcp_close).
    type: bool
    default: false
  tcp_close:
    description:
      - Do not save established TCP connections (C(--tcp-close)); the restore recreates them closed, and the process sees
        them end. For connections you want dropped.
      - A restore of such a checkpoint needs it too; M(nucleus.criu.criu_restore) replays it from the metadata.
    type: bool
    default: false
  skip_in_flight:
    description:
      - Leave out connections a listening socket holds that are not established or not yet accepted (C(--skip-in-flight));
        their clients must connect again. Without it such a socket makes the dump fail.
    type: bool
    default: false
  link_remap:
    description:
      - Files the process holds open whose name was unlinked while another hard link keeps them (or that cannot be
        reopened by their name) are linked aside in their directory so the restore can reopen them (C(--link-remap)).
        It changes the filesystem.
    type: bool
    default: false
  ghost_limit:
    description:
      - Largest deleted-but-open file whose contents are kept inside the images (C(--ghost-limit)); criu's default is 1M.
        Bytes, or a size with V(K), V(M) or V(G) (powers of 1024), for example V(64M).
    type: str
  manage_cgroups:
    description:
      - Record the process's cgroups in the images (C(--manage-cgroups)) so a restore can put it back in them (or under
        O(nucleus.criu.criu_restore#module:cgroup_root)). The mode matters at restore; see
        O(nucleus.criu.criu_restore#module:manage_cgroups).
    type: str
    choices: [none, props, soft, full, strict, ignore]
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
      - Recorded, and replayed by the restore.
    type: bool
  network_lock:
    description:
      - How CRIU blocks the network while it dumps TCP connections. V(nftables) works where iptables is absent.
      - A tree in the host's network namespace with no TCP connection to keep (O(tcp_established) off) is dumped with
        V(skip) whatever this says, and that is recorded. There the lock has nothing to lock, and CRIU's nftables
        lock would leave a table behind on the host for every dump that does not leave the tree running.
    type: str
    choices: [nftables, iptables, skip]
    default: nftables
"""

    TIMEOUT = r"""
options:
  timeout:
    description:
      - Seconds after which C(criu) is killed and the task fails; also bounds the verification of a checkpoint.
        Must be positive.
    type: int
    default: 120
"""

    HMAC = r"""
options:
  hmac_key:
    description:
      - Secret key for the HMAC-SHA256 signature of the checkpoint (C(checkpoint.hmac)); at least 16 bytes,
        32 random bytes recommended (for example the output of C(openssl rand -hex 32)). Never logged.
      - An empty value is an error (never taken as no key); leave the option out to work without a signature.
      - Mutually exclusive with O(hmac_key_file).
    type: str
  hmac_key_file:
    description:
      - File holding the HMAC key. It must be a regular file owned by root or the calling user, not readable by
        group or others (mode V(0600)), under directories only root (or the caller) can change. A trailing newline
        is ignored. Same length rule as O(hmac_key).
      - Mutually exclusive with O(hmac_key).
    type: path
"""

    SIGNATURE = r"""
options:
  require_signature:
    description:
      - Refuse a checkpoint without a valid C(checkpoint.hmac). Implied whenever a key is given.
    type: bool
    default: false
  skip_signature_check:
    description:
      - Accept a B(signed) checkpoint although no key is given; its signature is then not checked (the manifest of
        every image byte still is).
      - Without this, a signed checkpoint and no key is refused, so a missing key never silently turns signature
        checking off.
    type: bool
    default: false
"""

    ATTRIBUTES = r"""
requirements:
  - criu 4.2 or newer on the managed host, at a trusted path or O(criu_path) (the P(nucleus.criu.criu#role) role
    installs it and proves it).
  - Root on the managed host (C(become=true)); criu needs capabilities only root has.
  - Optional, on the managed host - the Python package C(blake3) for BLAKE3 manifests; CRIU's C(pycriu) with
    C(protobuf) for criu's own statistics and checkpoint details (the P(nucleus.criu.criu#role) role installs both).
attributes:
  action_group:
    description: Use C(group/nucleus.criu.criu) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - nucleus.criu.criu
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: linux
"""
