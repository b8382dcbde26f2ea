"""criu_checkpoint's logic around criu (_checkpoint); criu itself is a fake that writes images."""

import json
import os
import stat

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils import _checkpoint as checkpoint
from ansible_collections.nucleus.criu.plugins.module_utils import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils._runtime import Run
from .mu_helpers import KEY, make_checkpoint, verify_at, wait_for


def params(**given):
    return argspec.CHECKPOINT.defaults(**dict({"timeout": 30}, **given))


@pytest.fixture
def workload(spawn):
    child = spawn(["sleep", "60"])
    assert wait_for(lambda: getattr(procfs.read_stat(child.pid), "comm", "") == "sleep")
    return child.pid, procfs.read_stat(child.pid)


def _ckpt_of(dest, pid, st, **kw):
    return make_checkpoint(dest, source={"boot_id": procfs.boot_id(), "arch": os.uname().machine},
                           process={"pid": pid, "starttime": st.starttime, "tree": [pid], "cmdline": ["sleep", "60"]}, **kw)


class FakeRuntime:
    """Stands in for CriuRuntime: its dump writes a log into the work dir and images through the images fd."""

    path = "/usr/sbin/criu"
    version_string = "4.2.0"

    def __init__(self, fail=False):
        self.fail = fail
        self.dumps = []

    @staticmethod
    def _write(dir_fd, name, data):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def dump(self, pid, images, work, options, timeout):
        self.dumps.append({"pid": pid, "images": images.path, "work": work.path, "options": dict(options), "timeout": timeout})
        self._write(work.fd, "dump.log", b"(00.1) Dumping finished successfully\n")
        self._write(images.fd, "inventory.img", b"inventory")
        self._write(images.fd, "pages-1.img", os.urandom(64 * 1024))
        if self.fail:
            raise CriuError("criu dump failed (exit code 1). Log: %s. Last errors: boom" % work.file("dump.log"),
                            log=work.file("dump.log"))
        return Run(0.25, work.file("dump.log"))


@pytest.fixture
def fake_criu(monkeypatch):
    """CriuRuntime.load returns a FakeRuntime (set ``.fail`` to make its dump fail); privileges are not checked."""
    runtime = FakeRuntime()
    monkeypatch.setattr(checkpoint.CriuRuntime, "load", classmethod(lambda cls, *a: runtime))
    monkeypatch.setattr(checkpoint.host, "require_privileges", lambda: None)
    return runtime


@pytest.mark.parametrize("timeout", [0, -1])
def test_require_timeout(timeout):
    with pytest.raises(CriuError, match="positive"):
        checkpoint.require_timeout(timeout)


def test_same_process(workload):
    pid, st = workload
    metadata = {"process": {"pid": pid, "starttime": st.starttime}, "source": {"boot_id": procfs.boot_id()}}
    assert checkpoint.same_process(metadata, pid)
    assert not checkpoint.same_process(dict(metadata, process={"pid": pid, "starttime": st.starttime + 1}), pid)
    assert not checkpoint.same_process(dict(metadata, source={"boot_id": "other-boot"}), pid)
    assert not checkpoint.same_process(metadata, pid + 1)


@pytest.mark.parametrize("shell_job, st, expected", [
    (None, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), False),
    (None, procfs.ProcStat(10, "x", "S", 1, 10, 10, 34816, 0, 1), True),
    (False, procfs.ProcStat(10, "x", "S", 1, 10, 10, 34816, 0, 1), False),
    (True, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), True),
])
def test_dump_options_shell_job(shell_job, st, expected):
    options = checkpoint.dump_options(params(shell_job=shell_job, tcp_established=True), 10, st, [10])
    assert options["shell_job"] is expected and options["tcp_established"] is True
    assert options["network_lock"] == "nftables"  # the spec's default
    assert set(options) == {"leave_running", "leave_stopped", "tcp_established", "ext_unix_sk", "file_locks", "shell_job", "network_lock"}


def test_leave_running_and_stopped_exclusive(tmp_path):
    with pytest.raises(CriuError, match="mutually exclusive"):
        checkpoint.checkpoint(params(pid=42, dest=str(tmp_path / "d"), leave_running=True, leave_stopped=True), False)


@pytest.mark.parametrize("given, message", [
    ({"hmac_key": ""}, "hmac_key is empty"),
    ({"hmac_key": "short"}, "at least 16 bytes"),
    ({"timeout": 0}, "positive"),
])
def test_bad_options_refused_before_anything(tmp_path, given, message):
    with pytest.raises(CriuError, match=message):
        checkpoint.checkpoint(params(pid=42, dest=str(tmp_path / "d"), **given), False)
    assert os.listdir(tmp_path) == []


def test_dest_inside_a_checkpoint_refused(tmp_path):
    make_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CriuError, match="lies inside the checkpoint"):
        checkpoint.checkpoint(params(pid=42, dest=str(tmp_path / "ckpt" / "images" / "x")), False)


def test_dest_under_an_untrusted_directory_refused(tmp_path, workload):
    os.chmod(tmp_path, 0o777)
    with pytest.raises(CriuError, match="is writable by group/others.*chmod go-w"):
        checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "ckpt")), False)


def test_existing_checkpoint_of_same_process_is_unchanged(tmp_path, workload, monkeypatch):
    pid, st = workload
    metadata = _ckpt_of(tmp_path / "ckpt", pid, st)
    monkeypatch.setattr(checkpoint.CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    result = checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt")), False)
    assert result["changed"] is False and result["checkpoint"] == integrity.public(metadata) and result["actions"] == []
    assert "cmdline" not in result["checkpoint"]["process"]  # results never show the command's arguments
    assert procfs.is_alive(pid, st.starttime)


def test_existing_checkpoint_of_another_process_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st)
    with pytest.raises(CriuError, match="already holds a checkpoint of another process .*force=true"):
        checkpoint.checkpoint(params(pid=os.getpid(), dest=str(tmp_path / "ckpt")), False)


def test_existing_invalid_checkpoint_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st)
    (tmp_path / "ckpt" / "images" / "extra.img").write_bytes(b"x")
    with pytest.raises(CriuError, match="does not hold a valid checkpoint .*extra.img") as err:
        checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt")), False)
    assert err.value.details["problems"]


def test_signed_checkpoint_with_wrong_key_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st, key=KEY)
    with pytest.raises(CriuError, match="checkpoint.hmac does not match"):
        checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt"), hmac_key="wrong key 0123456789"), False)


def test_refuses_own_process_before_running_criu(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    with pytest.raises(CriuError, match="this module or one of its ancestors"):
        checkpoint.checkpoint(params(pid=os.getpid(), dest=str(tmp_path / "new")), False)
    assert not os.path.lexists(tmp_path / "new")


def test_force_refuses_to_replace_a_directory_we_did_not_make(tmp_path, workload, fake_criu):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.db").write_text("x")
    with pytest.raises(CriuError, match="Refusing force=true on .*data: .*not a checkpoint directory made by nucleus.criu"):
        checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "data"), force=True), False)
    assert (tmp_path / "data" / "precious.db").read_text() == "x" and fake_criu.dumps == []


# --- the dump itself, with a fake criu -----------------------------------------------------------


def test_checkpoint_publishes_a_verified_signed_checkpoint(tmp_path, workload, fake_criu):
    pid, st = workload
    dest = str(tmp_path / "ckpt")
    result = checkpoint.checkpoint(params(pid=pid, dest=dest, hmac_key=KEY.decode(), leave_running=True), False)
    assert result["changed"] is True and result["dest"] == dest and result["pid"] == pid
    assert result["actions"] == ["Dump pid %d (sleep) to %s" % (pid, dest)]
    assert result["stats"]["image_files"] == 2 and result["stats"]["image_bytes"] == 9 + 64 * 1024
    assert result["stats"]["dump_seconds"] == 0.25
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no lock, staging or failed log left
    assert sorted(os.listdir(dest)) == ["checkpoint.hmac", "dump.log", "images", "metadata.json"]
    for name in ("", "images"):
        assert stat.S_IMODE(os.stat(os.path.join(dest, name)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(dest, "metadata.json")).st_mode) == 0o600
    [dump] = fake_criu.dumps
    assert dump["pid"] == pid and dump["timeout"] == 30 and dump["options"]["leave_running"] is True
    assert os.path.basename(dump["work"]).startswith(".ckpt.staging-") and dump["images"] == os.path.join(dump["work"], "images")
    verdict = verify_at(dest, KEY, require_signature=True)
    assert verdict.problems == [] and verdict.unexpected == []
    metadata = verdict.metadata
    assert result["checkpoint"] == integrity.public(metadata)
    assert metadata["name"] == "ckpt" and metadata["process"]["pid"] == pid and metadata["process"]["starttime"] == st.starttime
    assert metadata["process"]["cmdline"] == ["sleep", "60"]  # kept in the root-only metadata.json
    assert metadata["criu"] == {"path": FakeRuntime.path, "version": "4.2.0"} and metadata["manifest_algorithm"] == "sha256"
    assert [entry["path"] for entry in metadata["manifest"]] == ["inventory.img", "pages-1.img"]
    # a second run finds the checkpoint of this very process: nothing to do
    again = checkpoint.checkpoint(params(pid=pid, dest=dest, hmac_key=KEY.decode()), False)
    assert again["changed"] is False and again["checkpoint"] == integrity.public(metadata) and len(fake_criu.dumps) == 1


def test_checkpoint_name_defaults_to_the_directory_and_can_be_given(tmp_path, workload, fake_criu):
    checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "ckpt"), name="web"), False)
    assert json.loads((tmp_path / "ckpt" / "metadata.json").read_bytes())["name"] == "web"


def test_check_mode_changes_nothing(tmp_path, workload, fake_criu):
    pid = workload[0]
    result = checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt")), True)
    assert result["changed"] is True and result["actions"] == ["would dump pid %d (sleep) to %s" % (pid, tmp_path / "ckpt")]
    assert os.listdir(tmp_path) == [] and fake_criu.dumps == []


def test_force_replaces_a_checkpoint_of_another_process(tmp_path, workload, fake_criu):
    pid, st = workload
    make_checkpoint(tmp_path / "ckpt")
    result = checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt"), force=True), False)
    assert result["changed"] is True and result["actions"][0].startswith("Replace the checkpoint with a dump of pid %d" % pid)
    assert verify_at(tmp_path / "ckpt").metadata["process"]["pid"] == pid
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_failed_dump_keeps_its_log_beside_dest_and_leaves_no_checkpoint(tmp_path, workload, fake_criu):
    pid, st = workload
    fake_criu.fail = True
    dest = str(tmp_path / "ckpt")
    failed_log = str(tmp_path / ".ckpt.dump-failed.log")
    with pytest.raises(CriuError) as err:
        checkpoint.checkpoint(params(pid=pid, dest=dest), False)
    assert "Log: %s." % failed_log in err.value.msg and ".staging-" not in err.value.msg
    assert "The process %d is still running, untouched." % pid in err.value.msg
    assert err.value.msg.endswith("No checkpoint was written to %s." % dest)
    assert err.value.details["log"] == failed_log and err.value.details["path"] == dest
    assert sorted(os.listdir(tmp_path)) == [".ckpt.dump-failed.log"]
    assert open(failed_log).read() == "(00.1) Dumping finished successfully\n"
    assert procfs.is_alive(pid, st.starttime)
    # the next successful dump removes the old failed log
    fake_criu.fail = False
    checkpoint.checkpoint(params(pid=pid, dest=dest), False)
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_resume_if_we_stopped(workload):
    import signal
    pid, st = workload
    assert checkpoint.resume_if_we_stopped(pid, st) == "The process %d is still running, untouched." % pid
    os.kill(pid, signal.SIGSTOP)
    assert wait_for(lambda: procfs.read_stat(pid).state == "T")
    assert "has been resumed (SIGCONT)" in checkpoint.resume_if_we_stopped(pid, st)
    assert wait_for(lambda: procfs.read_stat(pid).state != "T")
    assert "is gone" in checkpoint.resume_if_we_stopped(pid, st._replace(starttime=st.starttime + 1))
