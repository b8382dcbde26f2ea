# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every nucleus.criu module shares: common options, and CriuError turned into fail_json in one place."""

from __future__ import annotations

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError

CRIU_PATH_ARG = {"criu_path": {"type": "path"}}
TIMEOUT_ARG = {"timeout": {"type": "int", "default": 120}}
HMAC_ARGS = {
    "hmac_key": {"type": "str", "no_log": True},
    "hmac_key_file": {"type": "path", "no_log": False},
}
HMAC_EXCLUSIVE = [("hmac_key", "hmac_key_file")]


def run_module(module: AnsibleModule, action: t.Callable[[], t.Dict[str, t.Any]]) -> None:
    """Run ``action`` and exit with its result; a CriuError becomes fail_json with its details."""
    try:
        result = action()
    except CriuError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    module.exit_json(**result)
