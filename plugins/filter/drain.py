# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The drain's plan, its second round and its report, on the controller (documented beside: drain_plan.yml, ...)."""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.nucleus.criu.plugins.module_utils.drain import _plan as plan_


def _guarded(function: t.Callable[..., t.Dict[str, t.Any]]) -> t.Callable[..., t.Dict[str, t.Any]]:
    def run(*args: t.Any, **kwargs: t.Any) -> t.Dict[str, t.Any]:
        try:
            return function(*args, **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnsibleFilterError("%s: %s" % (function.__name__, exc)) from exc
    return run


class FilterModule:
    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"drain_plan": _guarded(plan_.drain_plan), "drain_replan": _guarded(plan_.drain_replan),
                "drain_report": _guarded(plan_.drain_report)}
