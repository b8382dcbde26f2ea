"""criu_verify's verdict (_verify)."""

import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _verify as verify
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import KEY, make_checkpoint, write_exe

PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def params(**given):
    return argspec.VERIFY.request(argspec.VERIFY.defaults(**given))


def _ckpt(path, **kw):
    return make_checkpoint(path, process={"pid": PID_MAX + 1, "tree": [PID_MAX + 1], "cmdline": ["app", "--token", "s3cret"]}, **kw)


@pytest.mark.parametrize("schema", [1, 2])
@pytest.mark.parametrize("key, signed, checked", [(None, False, False), (KEY.decode(), True, True)])
def test_valid(tmp_path, key, signed, checked, schema):
    metadata = _ckpt(tmp_path / "c", key=key.encode() if key else None, schema=schema)
    assert metadata["schema_version"] == schema
    result = verify.verify(params(path=str(tmp_path / "c") + "/", hmac_key=key))
    stats = result.pop("stats")
    assert result == {"changed": False, "path": str(tmp_path / "c"), "valid": True, "checkpoint": integrity.public(metadata),
                      "signed": signed, "signature_checked": checked, "unexpected_entries": []}
    # every image byte (one 9-byte inventory.img) was hashed, in a measured time
    assert set(stats) == {"verify_seconds", "verify_bytes"}
    assert stats["verify_bytes"] == len(b"inventory") and isinstance(stats["verify_seconds"], float) and stats["verify_seconds"] >= 0
    assert "cmdline" not in result["checkpoint"]["process"]


def test_signed_but_checked_without_key_needs_the_opt_out(tmp_path):
    _ckpt(tmp_path / "c", key=KEY)
    with pytest.raises(CriuError, match="is not valid: the checkpoint is signed but no key was given") as err:
        verify.verify(params(path=str(tmp_path / "c")))
    assert err.value.details["valid"] is False
    result = verify.verify(params(path=str(tmp_path / "c"), skip_signature_check=True))
    assert result["valid"] is True and result["signed"] is True and result["signature_checked"] is False


def test_unsigned_with_require_signature_refused(tmp_path):
    _ckpt(tmp_path / "c")
    with pytest.raises(CriuError, match="checkpoint.hmac is missing"):
        verify.verify(params(path=str(tmp_path / "c"), require_signature=True))


@pytest.mark.parametrize("schema", [1, 2])
def test_invalid_lists_every_problem(tmp_path, schema):
    _ckpt(tmp_path / "c", schema=schema)
    (tmp_path / "c" / "images" / "extra.img").write_bytes(b"")
    os.unlink(tmp_path / "c" / "images" / "inventory.img")
    with pytest.raises(CriuError, match="is not valid") as err:
        verify.verify(params(path=str(tmp_path / "c")))
    assert err.value.details["valid"] is False and len(err.value.details["problems"]) == 2
    assert err.value.details["unexpected_entries"] == []


def test_unexpected_entries_are_reported_not_fatal(tmp_path):
    _ckpt(tmp_path / "c")
    (tmp_path / "c" / "notes.txt").write_text("x")
    result = verify.verify(params(path=str(tmp_path / "c")))
    assert result["valid"] is True and result["unexpected_entries"] == ["notes.txt"]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: None, "No checkpoint at"),
    (lambda tmp: (tmp / "c").symlink_to(tmp / "real"), "is a symlink"),
    (lambda tmp: os.chmod(tmp, 0o777), "writable by group/others"),
])
def test_a_checkpoint_that_cannot_be_opened_is_not_valid(tmp_path, make, message):
    _ckpt(tmp_path / "real")
    make(tmp_path)
    with pytest.raises(CriuError, match="Checkpoint %s is not valid: .*%s" % (tmp_path / "c", message)) as err:
        verify.verify(params(path=str(tmp_path / "c")))
    assert err.value.details["valid"] is False and len(err.value.details["problems"]) == 1


def test_bad_options_refused(tmp_path):
    _ckpt(tmp_path / "c")
    with pytest.raises(CriuError, match="positive"):
        verify.verify(params(path=str(tmp_path / "c"), timeout=0))
    with pytest.raises(CriuError, match="hmac_key_file is empty"):
        verify.verify(params(path=str(tmp_path / "c"), hmac_key_file=""))


def test_check_host(tmp_path, scripts_as_elf):
    _ckpt(tmp_path / "c")
    old = write_exe(tmp_path / "bin" / "criu", '#!/bin/sh\necho "Version: 4.1.1"\n')
    with pytest.raises(CriuError, match="too old"):
        verify.verify(params(path=str(tmp_path / "c"), check_host=True, criu_path=old))
    good = write_exe(tmp_path / "good" / "criu", '#!/bin/sh\ncase "$*" in *--version*) echo "Version: 4.2.0";; esac\nexit 0\n')
    assert verify.verify(params(path=str(tmp_path / "c"), check_host=True, criu_path=good))["valid"] is True
    # without check_host, criu is never looked at
    assert verify.verify(params(path=str(tmp_path / "c"), criu_path=str(tmp_path / "missing")))["valid"] is True


def test_check_host_refuses_a_script_as_criu(tmp_path):
    _ckpt(tmp_path / "c")
    script = write_exe(tmp_path / "good" / "criu", '#!/bin/sh\ncase "$*" in *--version*) echo "Version: 4.2.0";; esac\nexit 0\n')
    with pytest.raises(CriuError, match="not an ELF executable"):
        verify.verify(params(path=str(tmp_path / "c"), check_host=True, criu_path=script))


def test_check_host_busy_pids(tmp_path, scripts_as_elf):
    make_checkpoint(tmp_path / "c", process={"pid": os.getpid(), "tree": [os.getpid()]})
    good = write_exe(tmp_path / "good" / "criu", '#!/bin/sh\ncase "$*" in *--version*) echo "Version: 4.2.0";; esac\nexit 0\n')
    with pytest.raises(CriuError, match="PIDs %d of the checkpointed tree are in use" % os.getpid()):
        verify.verify(params(path=str(tmp_path / "c"), check_host=True, criu_path=good))
