"""The criu role repeats a few facts of the runtime (Ansible cannot import module_utils); they must not drift."""

from __future__ import annotations

import os

import yaml

from ansible_collections.nucleus.criu.plugins.module_utils.criu import _binary as binary
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "criu")


def _load(name: str) -> dict:
    with open(os.path.join(ROLE, name, "main.yml")) as handle:
        return yaml.safe_load(handle)


def test_trusted_paths_are_the_modules_discovery_list():
    assert tuple(_load("vars")["criu_trusted_paths"]) == binary.TRUSTED_PATHS


def test_minimum_version_is_the_modules_minimum():
    assert tuple(int(part) for part in _load("defaults")["criu_min_version"].split(".")) == binary.MIN_VERSION


def test_post_copy_pipe_size_is_what_the_modules_check():
    assert _load("vars")["criu_postcopy_pipe_size"] == host.POSTCOPY_PIPE_SIZE
