# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception type the runtime raises; modules turn it into fail_json."""

from __future__ import annotations

import typing as t


class CriuError(Exception):
    """A failure an operator can act on.

    ``msg`` names the cause and the remedy; ``details`` (path, log, errors, problems, ...)
    are returned beside it by fail_json so playbooks can branch on them.
    """

    def __init__(self, msg: str, **details: t.Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return self.msg  # callers refine msg (e.g. add where the log was kept); tracebacks must show the refined one


def listed(problems: t.Iterable[str]) -> str:
    """Problems joined into one sentence's worth ("a; b"), without the full stops some of them end with (the caller
    ends the sentence)."""
    return "; ".join(problem.rstrip(". ") for problem in problems)
