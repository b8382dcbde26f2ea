"""criu_verify's verdict (_verify)."""

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _verify as verify
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import make_checkpoint, write_exe

PID_MAX = int(open("/proc/sys/kernel/pid_max").read())
PARAMS = {"hmac_key": None, "hmac_key_file": None, "require_signature": False, "check_host": False, "criu_path": None}


def _ckpt(path, **kw):
    return make_checkpoint(path, process={"pid": PID_MAX + 1, "tree": [PID_MAX + 1]}, **kw)


@pytest.mark.parametrize("key, signed, checked", [(None, False, False), ("k", True, True)])
def test_valid(tmp_path, key, signed, checked):
    metadata = _ckpt(tmp_path / "c", key=key.encode() if key else None)
    result = verify.verify(dict(PARAMS, path=str(tmp_path / "c") + "/", hmac_key=key))
    assert result == {"changed": False, "path": str(tmp_path / "c"), "valid": True, "checkpoint": metadata,
                      "signed": signed, "signature_checked": checked}


def test_signed_but_checked_without_key(tmp_path):
    _ckpt(tmp_path / "c", key=b"k")
    result = verify.verify(dict(PARAMS, path=str(tmp_path / "c")))
    assert result["signed"] is True and result["signature_checked"] is False


def test_invalid_lists_every_problem(tmp_path):
    _ckpt(tmp_path / "c")
    (tmp_path / "c" / "images" / "extra.img").write_bytes(b"")
    os.unlink(tmp_path / "c" / "images" / "inventory.img")
    with pytest.raises(CriuError, match="is not valid") as err:
        verify.verify(dict(PARAMS, path=str(tmp_path / "c")))
    assert err.value.details["valid"] is False and len(err.value.details["problems"]) == 2


def test_check_host(tmp_path):
    _ckpt(tmp_path / "c")
    old = write_exe(tmp_path / "bin" / "criu", '#!/bin/sh\necho "Version: 4.1.1"\n')
    with pytest.raises(CriuError, match="too old"):
        verify.verify(dict(PARAMS, path=str(tmp_path / "c"), check_host=True, criu_path=old))
    good = write_exe(tmp_path / "good" / "criu", '#!/bin/sh\n[ "$1" = --version ] && echo "Version: 4.2.0"\nexit 0\n')
    assert verify.verify(dict(PARAMS, path=str(tmp_path / "c"), check_host=True, criu_path=good))["valid"] is True
