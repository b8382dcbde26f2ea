"""The unit tests import the collection as ``ansible_collections.nucleus.criu``.

Nothing here puts it on the import path: pytest-ansible does (run pytest from the repository root, next to
galaxy.yml; see tests/conftest.py), or ``ansible-test units`` does (scripts/units.sh). This only says so plainly
when neither did, instead of an ImportError in every test file.
"""

from __future__ import annotations

import importlib

import pytest


def pytest_sessionstart() -> None:
    try:
        importlib.import_module("ansible_collections.nucleus.criu.plugins.module_utils")
    except ImportError as exc:
        raise pytest.UsageError(
            "ansible_collections.nucleus.criu is not importable (%s): run pytest from the repository root, next to "
            "galaxy.yml, with pytest-ansible installed (requirements/test.txt); it puts the collection on the import "
            "path only when started there" % exc) from exc
