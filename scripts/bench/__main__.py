# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python scripts/bench [options]`` (what scripts/bench.sh runs) or ``python -m bench`` with scripts/ on the path."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a directory: make the package importable by its name
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.cli import run  # noqa: E402  pylint: disable=wrong-import-position

run()
