"""CriuError carries the message and the details fail_json returns (_errors)."""

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError


def test_criu_error_message_and_details():
    err = CriuError("criu dump failed", log="/x/dump.log", rc=1)
    assert str(err) == err.msg == "criu dump failed"
    assert err.details == {"log": "/x/dump.log", "rc": 1}
    assert isinstance(err, Exception) and CriuError("m").details == {}
