# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""criu_migration_info on the controller: runs the module and, in an ``until`` loop, prints each look's one line
(phase, MiB sent of the total, rate, seconds frozen) to the playbook's output, where Ansible itself shows only
"retrying" while a migration runs."""

from __future__ import annotations

import typing as t

from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


class ActionModule(ActionBase):
    """The module's result, unchanged; the one line on the output as a side effect."""

    def run(self, tmp: t.Optional[str] = None, task_vars: t.Optional[t.Dict[str, t.Any]] = None) -> t.Dict[str, t.Any]:
        result = super().run(tmp, task_vars)
        result.update(self._execute_module(module_name="nucleus.criu.criu_migration_info", module_args=self._task.args,
                                           task_vars=task_vars))
        if self._task.until and result.get("exists") and not result.get("failed"):
            display.display("  %s" % result["msg"])
        return result
