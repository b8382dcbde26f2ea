"""module_utils is layered (CONTRIBUTING.md, "Where the code lives"): a module imports only from its own layer or
those below, and operations and the migration protocol know kinds of workload only through kinds/_registry.py."""

import os
import re

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils._requests import WorkloadRef
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.kinds._kind import Kind

ROOT = os.path.dirname(os.path.dirname(kinds.__file__))
# Bottom to top; _errors and _requests are everyone's vocabulary, _argspec and _module are the module layer.
LAYERS = ["_errors", "_requests", "system", "criu", "storage", "kinds", "operations", "migration", "drain", "_argspec", "_module"]
IMPORT = re.compile(r"plugins\.module_utils(?:\.(\w+))?(?: import (\w+)|\.(\w+) import)")


def sources():
    for folder, _dirs, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), open(path).read()


def layer(relative):
    return relative.split(os.sep)[0].replace(".py", "")


def test_every_module_sits_in_a_layer():
    assert sorted({layer(relative) for relative, _text in sources()} - {"__init__"}) == sorted(LAYERS)


@pytest.mark.parametrize("relative,text", sorted(sources()), ids=lambda value: value if value.endswith(".py") else "")
def test_imports_only_from_its_layer_or_below(relative, text):
    own = LAYERS.index(layer(relative)) if layer(relative) in LAYERS else None
    if own is None:
        return
    above = [target for match in IMPORT.finditer(text) for target in match.groups() if target in LAYERS
             and LAYERS.index(target) > own]
    assert not above, "%s imports from a layer above its own: %s" % (relative, above)


@pytest.mark.parametrize("relative,text", [(relative, text) for relative, text in sorted(sources())
                                           if layer(relative) in ("operations", "migration")],
                         ids=lambda value: value if value.endswith(".py") else "")
def test_operations_and_the_protocol_reach_kinds_through_the_registry(relative, text):
    assert not re.search(r"kinds(?: import |\.)_(?!registry|kind)\w+", text), relative


def test_each_request_names_its_kind():
    assert kinds.asked(WorkloadRef(container="web")).name == "container"
    assert kinds.asked(WorkloadRef(pid=42)).name == "process"
    assert kinds.asked(WorkloadRef(pidfile="/run/x.pid")).name == "process"


def test_a_checkpoint_or_journal_names_its_kind():
    assert kinds.of({"container": {"id": "c" * 64, "name": "web"}, "process": {}}).name == "container"
    assert kinds.of({"container_id": "c" * 64}).name == "container", "a target's journal, once Podman restores"
    assert kinds.of({"process": {"pid": 42}}).name == "process"
    assert kinds.of({"container": None, "process": {"pid": 42}}).name == "process"


def test_every_kind_implements_the_whole_interface():
    assert [kind.name for kind in kinds.KINDS] == ["container", "unit", "process"]
    for kind in kinds.KINDS:
        assert isinstance(kind, Kind) and not type(kind).__abstractmethods__


@pytest.mark.parametrize("relative,text", [(relative, text) for relative, text in sorted(sources())
                                           if layer(relative) not in ("_argspec", "_module")],
                         ids=lambda value: value if value.endswith(".py") else "")
def test_below_the_module_layer_nothing_reads_params_or_the_argument_spec(relative, text):
    """Each module turns its params into a typed request once (_argspec.Spec.request); below, only the request."""
    assert not re.search(r"\bparams\[|\bparams\.get\(|\.argument_spec\b|_argspec import|import _argspec\b", text), relative


@pytest.mark.parametrize("name", ["CHECKPOINT", "CHECKPOINT_INFO", "RESTORE", "VERIFY", "INFO", "MIGRATE", "MIGRATION_INFO", "DRAIN_FACTS"])
def test_every_option_of_a_module_reaches_its_request(name):
    spec = getattr(argspec, name)
    request = spec.request(spec.defaults())
    fields = set(request._fields) - {"criu", "workload"}
    named = set(WorkloadRef._fields) & set(spec.argument_spec) if "workload" in request._fields else set()
    carried = fields | set(getattr(request, "criu", {})) | named
    assert carried == set(spec.argument_spec), "options the request drops or invents: %s" % (carried ^ set(spec.argument_spec))
