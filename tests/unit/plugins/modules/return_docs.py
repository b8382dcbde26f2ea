"""A module's real result held against its RETURN documentation, key by key: what the module returns and RETURN does
not name, what RETURN says is always returned and is missing, and values of another type than documented. Dicts and
lists of dicts are followed into their ``contains``.

Used by the unit tests next to it (results built by the module_utils code the modules run) and by
tests/integration/test_return_docs.py (results of the modules run for real)."""

from __future__ import annotations

import importlib
import typing as t

import yaml

# What Ansible adds to every result (the json callback adds action), and the conventions of a failure (msg,
# exception): not the module's to document.
ANSIBLE_KEYS = frozenset(("changed", "failed", "msg", "exception", "invocation", "diff", "warnings", "deprecations",
                          "skipped", "skip_reason", "ansible_facts", "action"))
# What AnsibleModule.add_path_info adds to a result with a path or dest that exists: that file's owner, mode and so on.
PATH_INFO_KEYS = frozenset(("uid", "gid", "owner", "group", "mode", "state", "size", "secontext"))
TYPES: t.Dict[str, t.Tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (float, int), "bool": (bool,), "list": (list,), "dict": (dict,),
    "path": (str,),
}


def return_doc(module: str) -> t.Dict[str, t.Any]:
    """The parsed RETURN of plugins/modules/MODULE.py."""
    imported = importlib.import_module("ansible_collections.nucleus.criu.plugins.modules.%s" % module)
    return yaml.safe_load(imported.RETURN)


def _type_problem(path: str, value: t.Any, doc_type: t.Optional[str]) -> t.List[str]:
    expected = TYPES.get(doc_type or "")
    if value is None or expected is None:
        return []
    if isinstance(value, bool) and bool not in expected:  # a bool is an int to Python, not to the reader
        return ["%s: documented as %s, returned %r (bool)" % (path, doc_type, value)]
    if not isinstance(value, expected):
        return ["%s: documented as %s, returned %r (%s)" % (path, doc_type, value, type(value).__name__)]
    return []


def _walk(value: t.Any, doc: t.Mapping[str, t.Any], path: str, whole: t.Collection[str]) -> t.List[str]:
    """Problems of ``value`` (at ``path``) against its documentation ``doc`` (one entry of RETURN or of a contains)."""
    problems = _type_problem(path, value, doc.get("type"))
    if problems or value is None:
        return problems
    if doc.get("type") == "list":
        for element in value:
            problems += [problem for problem in _element(element, doc, "%s[]" % path, whole) if problem not in problems]
        return problems
    if doc.get("type") == "dict":
        return _keys(value, doc, path, whole)
    return problems


def _element(element: t.Any, doc: t.Mapping[str, t.Any], path: str, whole: t.Collection[str]) -> t.List[str]:
    problems = _type_problem(path, element, doc.get("elements"))
    if problems or element is None or doc.get("elements") != "dict":
        return problems
    return _keys(element, doc, path, whole)


def _keys(value: t.Mapping[str, t.Any], doc: t.Mapping[str, t.Any], path: str, whole: t.Collection[str]) -> t.List[str]:
    """A dict's keys against the ``contains`` of ``doc``. A dict documented without ``contains`` passes only when it is
    one of ``whole`` (its keys are data: criu's statistics, option names; or documented elsewhere)."""
    contains = doc.get("contains")
    if contains is None:
        if path in whole or not value:
            return []
        return ["%s: returns keys (%s) but is documented without contains" % (path, ", ".join(sorted(value)))]
    problems = []
    for key in sorted(value):
        if key not in contains:
            problems.append("%s.%s: returned, not in RETURN" % (path, key))
        else:
            problems += _walk(value[key], contains[key], "%s.%s" % (path, key), whole)
    return problems


def undocumented(result: t.Mapping[str, t.Any], doc: t.Mapping[str, t.Any], whole: t.Collection[str] = ()) -> t.List[str]:
    """Every problem of a module's ``result`` against its parsed RETURN ``doc``: each key path (``a.b``, ``a[].b``)
    returned but not documented or of another type; each top-level key documented ``returned: always`` but missing
    from a result that did not fail. ``whole``: the paths of dicts documented as a whole, without ``contains``."""
    problems = []
    ansible_keys = ANSIBLE_KEYS | (PATH_INFO_KEYS if "path" in result or "dest" in result else frozenset())
    for key in sorted(result):
        if key in ansible_keys or key.startswith("_ansible"):
            continue
        if key not in doc:
            problems.append("%s: returned, not in RETURN" % key)
        else:
            problems += _walk(result[key], doc[key], key, whole)
    if not result.get("failed"):
        problems += ["%s: documented as always returned, missing" % key for key, entry in doc.items()
                     if entry.get("returned") == "always" and key not in result]
    return problems
