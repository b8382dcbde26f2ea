"""Release metadata: nothing in the collection says it was added in a version newer than the one galaxy.yml
releases (module and option documentation, return values, doc fragments, role argument specs), and every
version_added is a version."""

from __future__ import annotations

import glob
import importlib
import os
import re
import typing as t

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "ansible_collections.nucleus.criu.plugins"


def version(text: object) -> t.Tuple[int, int, int]:
    found = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", str(text))
    assert found, "%r is not a version (MAJOR.MINOR.PATCH)" % (text,)
    return int(found.group(1)), int(found.group(2)), int(found.group(3))


def galaxy_version() -> str:
    with open(os.path.join(REPO, "galaxy.yml")) as handle:
        return yaml.safe_load(handle)["version"]


def added(node: object, where: str) -> t.Iterator[t.Tuple[str, object]]:
    """Every version_added under ``node`` (options, suboptions, return values, ... at any depth), with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "version_added":
                yield where, value
            else:
                yield from added(value, "%s.%s" % (where, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from added(value, "%s[%d]" % (where, index))


def documentation() -> t.Iterator[t.Tuple[str, object]]:
    """Each YAML document that can carry a version_added: every module's DOCUMENTATION and RETURN, every doc
    fragment, every role's argument specs."""
    for path in sorted(glob.glob(os.path.join(REPO, "plugins", "modules", "*.py"))):
        name = os.path.basename(path)[:-3]
        module = importlib.import_module("%s.modules.%s" % (PACKAGE, name))
        yield name, yaml.safe_load(module.DOCUMENTATION)
        yield name + " RETURN", yaml.safe_load(module.RETURN)
    for path in sorted(glob.glob(os.path.join(REPO, "plugins", "doc_fragments", "*.py"))):
        name = os.path.basename(path)[:-3]
        fragments = importlib.import_module("%s.doc_fragments.%s" % (PACKAGE, name)).ModuleDocFragment
        for attribute in sorted(vars(fragments)):
            if attribute.isupper():
                yield "doc fragment %s.%s" % (name, attribute), yaml.safe_load(getattr(fragments, attribute))
    for path in sorted(glob.glob(os.path.join(REPO, "roles", "*", "meta", "argument_specs.yml"))):
        with open(path) as handle:
            yield "role %s" % path.split(os.sep)[-3], yaml.safe_load(handle)


def test_nothing_is_added_after_the_version_galaxy_yml_releases():
    release = version(galaxy_version())
    found = [(where, value) for name, doc in documentation() for where, value in added(doc, name)]
    assert len(found) >= 8, "every module and role carries one: %s" % found
    newer = ["%s: version_added %s" % (where, value) for where, value in found if version(value) > release]
    assert not newer, "newer than galaxy.yml's %s: %s" % (galaxy_version(), newer)


def test_every_module_and_role_says_when_it_was_added():
    """antsibull-changelog lists a release's new modules and roles from their version_added."""
    for name, doc in documentation():
        if not name.endswith("RETURN") and not name.startswith("doc fragment"):
            entry = doc if not name.startswith("role ") else doc["argument_specs"]["main"]
            assert "version_added" in entry, name


@pytest.mark.parametrize("text, expected", [("0.1.0", (0, 1, 0)), ("1.10.2", (1, 10, 2))])
def test_versions_compare_as_numbers(text, expected):
    assert version(text) == expected and version("0.10.0") > version("0.9.0")
