# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every nucleus.criu module shares: its AnsibleModule built from the one spec, and every exception
turned into fail_json in one place."""

from __future__ import annotations

import traceback
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.nucleus.criu.plugins.module_utils._argspec import Spec
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError


def create_module(spec: Spec) -> AnsibleModule:
    return AnsibleModule(argument_spec=spec.argument_spec, mutually_exclusive=spec.mutually_exclusive,
                         required_one_of=spec.required_one_of, required_if=spec.required_if, supports_check_mode=True)


def run_module(module: AnsibleModule, action: t.Callable[[], t.Dict[str, t.Any]]) -> None:
    """Run ``action`` and exit with its result. A CriuError becomes fail_json with its details; anything else
    too, with its cause in ``msg`` and the traceback in ``exception``, never a bare errno. The result's ``diff``
    (_diff.py) is returned only under ``--diff``, as Ansible's diff mode asks."""
    try:
        result = action()
    except CriuError as exc:
        module.fail_json(msg=exc.msg, **exc.details)
    except Exception as exc:  # pylint: disable=broad-exception-caught
        where = " (%s)" % exc.filename if isinstance(exc, OSError) and exc.filename else ""
        module.fail_json(msg="Unexpected %s%s: %s. Nothing more is known about this failure; please report it to "
                             "nucleus.criu with the traceback in `exception`." % (type(exc).__name__, where, exc),
                         exception=traceback.format_exc())
    # AnsibleModule has no public name for --diff; _diff is what ansible-core's own modules read.
    if not module._diff:  # pylint: disable=protected-access
        result.pop("diff", None)
    module.exit_json(**result)
