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
      - Whether given or discovered, the binary must be a regular executable file owned by root or the
        calling user and not writable by group or others, and so must every directory above it.
      - Its version must be 4.2 or newer; the P(nucleus.criu.criu#role) role installs one.
    type: path
"""

    TIMEOUT = r"""
options:
  timeout:
    description:
      - Seconds after which C(criu) is killed and the task fails. Must be positive.
    type: int
    default: 120
"""

    HMAC = r"""
options:
  hmac_key:
    description:
      - Secret key for the HMAC-SHA256 signature of the checkpoint (C(checkpoint.hmac)).
      - Mutually exclusive with O(hmac_key_file).
    type: str
  hmac_key_file:
    description:
      - File holding the HMAC key. It must be a regular file owned by root or the calling user and
        not readable by group or others (mode V(0600)). A trailing newline is ignored.
      - Mutually exclusive with O(hmac_key).
    type: path
"""

    ATTRIBUTES = r"""
attributes:
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
