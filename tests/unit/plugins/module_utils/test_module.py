"""run_module turns CriuError into fail_json in one place (_module)."""

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _module
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError


class FakeModule:
    def __init__(self):
        self.calls = []

    def exit_json(self, **kwargs):
        self.calls.append(("exit", kwargs))
        raise SystemExit(0)

    def fail_json(self, **kwargs):
        self.calls.append(("fail", kwargs))
        raise SystemExit(1)


def test_success_exits_with_result():
    module = FakeModule()
    with pytest.raises(SystemExit):
        _module.run_module(module, lambda: {"changed": True, "pid": 7})
    assert module.calls == [("exit", {"changed": True, "pid": 7})]


def test_criu_error_becomes_fail_json_with_details():
    module = FakeModule()

    def action():
        raise CriuError("criu dump failed", log="/x/dump.log", errors=["Error (x)"])

    with pytest.raises(SystemExit):
        _module.run_module(module, action)
    assert module.calls == [("fail", {"msg": "criu dump failed", "log": "/x/dump.log", "errors": ["Error (x)"]})]


def test_hmac_key_is_no_log_and_exclusive():
    assert _module.HMAC_ARGS["hmac_key"]["no_log"] is True
    assert ("hmac_key", "hmac_key_file") in _module.HMAC_EXCLUSIVE
