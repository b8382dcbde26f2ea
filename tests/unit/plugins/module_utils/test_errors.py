"""CriuError carries the message and the details fail_json returns (_errors)."""

from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError, listed


def test_criu_error_message_and_details():
    err = CriuError("criu dump failed", log="/x/dump.log", rc=1)
    assert str(err) == err.msg == "criu dump failed"
    assert err.details == {"log": "/x/dump.log", "rc": 1}
    assert isinstance(err, Exception) and CriuError("m").details == {}


def test_problems_make_one_sentence_without_doubled_full_stops():
    assert listed(["/x does not exist. Keep checkpoints under /var/lib/criu.", "images/a.img: size expected 1, found 2"]) == (
        "/x does not exist. Keep checkpoints under /var/lib/criu; images/a.img: size expected 1, found 2")
    assert listed([]) == ""
