"""How the tests use pytest-ansible (see CONTRIBUTING.md, "Unit tests and pytest-ansible").

Only its unit mode: started next to galaxy.yml, pytest-ansible makes ``collections/ansible_collections/nucleus/criu``
(a directory of symlinks to this repository's entries), installs ansible-core's collection finder for it and
``~/.ansible/collections``, puts it first on ``sys.path`` and sets ``ANSIBLE_COLLECTIONS_PATH`` in this process's
environment. That environment variable is undone here, after every plugin's ``pytest_configure``: the
``ansible``/``ansible-playbook``/``ansible-doc`` commands the tests run (and pytest-xdist's workers) see the
environment pytest was started with, so they find collections as ansible.cfg (``./build/collections``) or the caller
say, with the plugin installed or not.

Under ``ansible-test units`` (its ``ansible_pytest_collections`` plugin is loaded) ansible-test has set up the
collection loader and ``ANSIBLE_COLLECTIONS_PATH`` itself; pytest-ansible is switched to its
``--ansible-unit-inject-only`` mode, which re-installs the loader for that same path instead of making a
``collections/`` tree in ansible-test's copy and pointing the environment at it (the workers then found no test).
"""

from __future__ import annotations

import os
import typing as t

import pytest

_ENV = "ANSIBLE_COLLECTIONS_PATH"
_before: t.Dict[str, t.Optional[str]] = {}  # _ENV as pytest was started with, until pytest_configure_last


# pytest_configure is a historic hook, which takes no wrapper: one implementation before every other, one after
# (pytest registers only functions named pytest_*; specname says which hook they implement).
@pytest.hookimpl(tryfirst=True, specname="pytest_configure")
def pytest_configure_first(config: pytest.Config) -> None:
    _before[_ENV] = os.environ.get(_ENV)
    if config.pluginmanager.has_plugin("ansible_pytest_collections") and hasattr(config.option, "ansible_unit_inject_only"):
        config.option.ansible_unit_inject_only = True


@pytest.hookimpl(trylast=True, specname="pytest_configure")
def pytest_configure_last() -> None:
    value = _before.pop(_ENV)
    if value is None:
        os.environ.pop(_ENV, None)
    else:
        os.environ[_ENV] = value
