"""criu_checkpoint's logic around criu (_checkpoint); criu itself is a fake that writes images."""

import hashlib
import json
import os
import pathlib
import signal
import stat

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _process as process
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _checkpoint as checkpoint
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _seal as seal_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as criu_options
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Run
from .mu_helpers import KEY, chunk_digests, make_checkpoint, verify_at, wait_for


def params(**given):
    return argspec.CHECKPOINT.request(argspec.CHECKPOINT.defaults(**dict({"timeout": 30}, **given)))


def dump_options(request, *args):
    """_process.dump_options with what a checkpoint ``request`` gives it."""
    return process.dump_options(request.criu, request.leave_running, request.leave_stopped, *args)


@pytest.fixture
def workload(spawn):
    child = spawn(["sleep", "60"])
    # The exec is done once its arguments are in place: the kernel names the process (comm) a moment before.
    assert wait_for(lambda: pathlib.Path("/proc/%d/cmdline" % child.pid).read_bytes() == b"sleep\x0060\x00")
    return child.pid, procfs.read_stat(child.pid)


def _ckpt_of(dest, pid, st, **kw):
    return make_checkpoint(dest, source={"boot_id": procfs.boot_id(), "arch": os.uname().machine},
                           process={"pid": pid, "starttime": st.starttime, "tree": [pid], "cmdline": ["sleep", "60"]}, **kw)


class FakeRuntime:
    """Stands in for CriuRuntime: its dump writes a log into the work dir and images through the images fd; as criu
    does, a dump told leave_stopped that succeeds leaves the process stopped (SIGSTOP)."""

    path = "/usr/sbin/criu"
    version_string = "4.2.0"

    def identity(self):
        return {"path": self.path, "version": self.version_string}

    def __init__(self, fail=False):
        self.fail = fail
        self.dumps = []

    @staticmethod
    def _write(dir_fd, name, data):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def dump(self, pid, images, work, options, timeout, external_unix=()):
        self.dumps.append({"pid": pid, "images": images.path, "work": work.path, "options": dict(options), "timeout": timeout})
        self._write(work.fd, "dump.log", b"(00.1) Dumping finished successfully\n")
        self._write(images.fd, "inventory.img", b"inventory")
        self._write(images.fd, "pages-1.img", os.urandom(64 * 1024))
        if self.fail:
            raise CriuError("criu dump failed (exit code 1). Log: %s. Last errors: boom" % work.file("dump.log"),
                            log=work.file("dump.log"))
        if options.get("leave_stopped"):
            os.kill(pid, signal.SIGSTOP)
            assert wait_for(lambda: procfs.read_stat(pid).state == "T")
        return Run(0.25, work.file("dump.log"))


@pytest.fixture
def fake_criu(monkeypatch):
    """CriuRuntime.load returns a FakeRuntime (set ``.fail`` to make its dump fail); privileges are not checked."""
    runtime = FakeRuntime()
    monkeypatch.setattr(CriuRuntime, "load", classmethod(lambda cls, *a: runtime))
    monkeypatch.setattr(host, "require_privileges", lambda: None)
    return runtime


@pytest.mark.parametrize("timeout", [0, -1])
def test_require_timeout(timeout):
    with pytest.raises(CriuError, match="positive"):
        checkpoint.require_timeout(timeout)


def test_same_process(workload):
    pid, st = workload
    metadata = {"process": {"pid": pid, "starttime": st.starttime}, "source": {"boot_id": procfs.boot_id()}}
    assert process.same_process(metadata, pid)
    assert not process.same_process(dict(metadata, process={"pid": pid, "starttime": st.starttime + 1}), pid)
    assert not process.same_process(dict(metadata, source={"boot_id": "other-boot"}), pid)
    assert not process.same_process(metadata, pid + 1)


@pytest.mark.parametrize("shell_job, st, expected", [
    (None, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), False),
    (None, procfs.ProcStat(10, "x", "S", 1, 10, 10, 34816, 0, 1), True),
    (False, procfs.ProcStat(10, "x", "S", 1, 10, 10, 34816, 0, 1), False),
    (True, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), True),
])
def test_dump_options_shell_job(shell_job, st, expected):
    options = dump_options(params(shell_job=shell_job, tcp_established=True), 10, st, [10])
    assert options["shell_job"] is expected and options["tcp_established"] is True
    assert options["network_lock"] == "nftables"  # the spec's default
    # every dump option of the table, plus what becomes of the tree
    assert set(options) == {"leave_running", "leave_stopped", "tcp_established", "tcp_close", "skip_in_flight", "ext_unix_sk",
                            "file_locks", "shell_job", "link_remap", "ghost_limit", "network_lock", "manage_cgroups"}
    assert set(options) == {option.name for option in criu_options.OPTIONS if option.at_dump} | {"leave_running", "leave_stopped"}


def test_dump_options_are_normalised():
    st = procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1)
    # (this process: in this host's network namespace, with no TCP connection to keep, so no lock)
    assert dump_options(params(), os.getpid(), st, [10]) == {
        "tcp_established": False, "tcp_close": False, "skip_in_flight": False, "ext_unix_sk": False, "file_locks": False,
        "shell_job": False, "link_remap": False, "ghost_limit": None, "network_lock": "skip", "manage_cgroups": None,
        "leave_running": False, "leave_stopped": False}
    options = dump_options(params(tcp_close=True, skip_in_flight=True, link_remap=True, ghost_limit="8M",
                                  network_lock="skip", manage_cgroups="soft", leave_stopped=True), 10, st, [10])
    assert options == {
        "tcp_established": False, "tcp_close": True, "skip_in_flight": True, "ext_unix_sk": False, "file_locks": False,
        "shell_job": False, "link_remap": True, "ghost_limit": 8 << 20, "network_lock": "skip", "manage_cgroups": "soft",
        "leave_running": False, "leave_stopped": True}


@pytest.mark.parametrize("given, message", [
    ({"tcp_established": True, "tcp_close": True}, "contradict"),
    ({"ghost_limit": "lots"}, "is not a size"),
    ({"ghost_limit": 0}, "between"),
])
def test_dump_options_refuse_bad_values(given, message):
    with pytest.raises(CriuError, match=message):
        dump_options(params(**given), 10, procfs.ProcStat(10, "x", "S", 1, 10, 10, 0, 0, 1), [10])


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


@pytest.mark.parametrize("schema", [1, 2])
def test_existing_checkpoint_of_same_process_is_unchanged(tmp_path, workload, monkeypatch, schema):
    """A checkpoint of this very process is kept, including one made before chunked manifests (schema 1)."""
    pid, st = workload
    metadata = _ckpt_of(tmp_path / "ckpt", pid, st, schema=schema)
    monkeypatch.setattr(CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    result = checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt")), False)
    assert result["changed"] is False and result["checkpoint"] == integrity.public(metadata) and result["actions"] == []
    assert "cmdline" not in result["checkpoint"]["process"]  # results never show the command's arguments
    assert procfs.is_alive(pid, st.starttime)


def test_existing_checkpoint_of_another_process_refused(tmp_path, workload):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st)
    with pytest.raises(CriuError, match="already holds a checkpoint of another process .*force=true"):
        checkpoint.checkpoint(params(pid=os.getpid(), dest=str(tmp_path / "ckpt")), False)


@pytest.mark.parametrize("schema", [1, 2])
def test_existing_invalid_checkpoint_refused(tmp_path, workload, schema):
    pid, st = workload
    _ckpt_of(tmp_path / "ckpt", pid, st, schema=schema)
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
    monkeypatch.setattr(CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
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
    assert set(result["stats"]) == {"frozen_at", "dump_seconds", "fsync_seconds", "image_bytes", "image_files", "criu"}
    assert result["stats"]["fsync_seconds"] >= 0 and result["stats"]["criu"] == {"unavailable": "criu wrote no stats-dump"}
    assert procfs.is_alive(pid, st.starttime) and procfs.read_stat(pid).state != "T"  # leave_running
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
    # schema 2: the chunk digests of every image (each smaller than a chunk here)
    assert metadata["schema_version"] == 2 and metadata["manifest_chunk_bytes"] == integrity.CHUNK_BYTES
    with open(os.path.join(dest, "images", "pages-1.img"), "rb") as handle:
        pages = handle.read()
    assert metadata["manifest"] == [
        {"path": "inventory.img", "size": 9, "chunks": [hashlib.sha256(b"inventory").hexdigest()]},
        {"path": "pages-1.img", "size": 64 * 1024, "chunks": [hashlib.sha256(pages).hexdigest()]}]
    # a second run finds the checkpoint of this very process: nothing to do
    again = checkpoint.checkpoint(params(pid=pid, dest=dest, hmac_key=KEY.decode()), False)
    assert again["changed"] is False and again["checkpoint"] == integrity.public(metadata) and len(fake_criu.dumps) == 1


def test_checkpoint_of_large_page_images_has_chunked_manifest(tmp_path, workload, fake_criu, monkeypatch, small_chunks):
    """Page images of several chunks (hashed as criu writes them) and other images (hashed afterwards) get one digest
    per chunk; the published checkpoint verifies, and a byte changed in one chunk is named with its range."""
    pages = os.urandom(3 * small_chunks + 5)
    core = os.urandom(2 * small_chunks)
    real = fake_criu.dump

    def dump(pid, images, work, options, timeout, external_unix=()):
        FakeRuntime._write(images.fd, "pages-2.img", pages)
        FakeRuntime._write(images.fd, "core-1.img", core)
        return real(pid, images, work, options, timeout)

    monkeypatch.setattr(fake_criu, "dump", dump)
    dest = str(tmp_path / "ckpt")
    checkpoint.checkpoint(params(pid=workload[0], dest=dest), False)
    verdict = verify_at(dest)
    assert verdict.problems == []
    metadata = verdict.metadata
    assert metadata["schema_version"] == 2 and metadata["manifest_chunk_bytes"] == small_chunks
    entries = {entry["path"]: entry for entry in metadata["manifest"]}
    assert entries["pages-2.img"] == {"path": "pages-2.img", "size": len(pages), "chunks": chunk_digests(pages, small_chunks)}
    assert entries["core-1.img"] == {"path": "core-1.img", "size": len(core), "chunks": chunk_digests(core, small_chunks)}
    with open(os.path.join(dest, "images", "pages-2.img"), "r+b") as handle:
        handle.seek(2 * small_chunks + 1)
        handle.write(bytes([pages[2 * small_chunks + 1] ^ 1]))
    [problem] = verify_at(dest).problems
    assert problem.startswith("images/pages-2.img: sha256 expected %s" % entries["pages-2.img"]["chunks"][2])
    assert problem.endswith("(bytes %d-%d)" % (2 * small_chunks, 3 * small_chunks - 1))


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
    pid, st = workload
    assert process.resume_if_we_stopped(pid, st) == "The process %d is still running, untouched." % pid
    os.kill(pid, signal.SIGSTOP)
    assert wait_for(lambda: procfs.read_stat(pid).state == "T")
    assert "has been resumed (SIGCONT)" in process.resume_if_we_stopped(pid, st)
    assert wait_for(lambda: procfs.read_stat(pid).state != "T")
    assert "is gone" in process.resume_if_we_stopped(pid, st._replace(starttime=st.starttime + 1))


# --- what becomes of the workload ------------------------------------------------------------------


@pytest.fixture
def kills(monkeypatch):
    """Every signal _checkpoint sends to an identified tree: (identity, signal, whether DEST was published then, the
    state of each process then)."""
    sent = []
    real = procfs.signal_identified

    def spy(identity, sig):
        sent.append((identity, sig, "published" if os.path.isfile(os.path.join(spy.dest, "metadata.json")) else "not published",
                     [getattr(procfs.read_stat(pid), "state", None) for pid, _start in identity]))
        return real(identity, sig)

    spy.dest = None
    monkeypatch.setattr(procfs, "signal_identified", spy)
    return spy, sent


def test_a_dump_that_ends_the_workload_keeps_it_stopped_until_the_checkpoint_is_published(tmp_path, workload, fake_criu, kills):
    pid, st = workload
    spy, sent = kills
    spy.dest = dest = str(tmp_path / "ckpt")
    result = checkpoint.checkpoint(params(pid=pid, dest=dest), False)
    [dump] = fake_criu.dumps
    assert dump["options"]["leave_stopped"] is True and dump["options"]["leave_running"] is False
    assert sent == [([[pid, st.starttime]], signal.SIGKILL, "published", ["T"])]
    assert wait_for(lambda: not procfs.is_alive(pid, st.starttime))
    # the metadata records what the caller asked for, not how the dump was run
    metadata = verify_at(dest).metadata
    assert metadata["options"]["leave_stopped"] is False and metadata["options"]["leave_running"] is False
    assert result["changed"] is True and result["checkpoint"] == integrity.public(metadata)


@pytest.mark.parametrize("leave, state", [("leave_running", "S"), ("leave_stopped", "T")])
def test_a_dump_that_leaves_the_workload_passes_that_to_criu_and_never_kills(tmp_path, workload, fake_criu, kills, leave, state):
    pid, st = workload
    kills[0].dest = str(tmp_path / "ckpt")
    checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "ckpt"), **{leave: True}), False)
    [dump] = fake_criu.dumps
    assert dump["options"]["leave_running"] is (leave == "leave_running")
    assert dump["options"]["leave_stopped"] is (leave == "leave_stopped")
    assert kills[1] == [] and procfs.is_alive(pid, st.starttime)
    assert wait_for(lambda: procfs.read_stat(pid).state == state)
    assert verify_at(tmp_path / "ckpt").metadata["options"][leave] is True


def _disk_full(*args, **kwargs):
    raise CriuError("Cannot write metadata.json: No space left on device.")


def _rename_fails(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where, failure", [("seal", _disk_full), ("publish", _rename_fails)])
def test_a_failure_after_the_dump_resumes_the_workload_it_stopped(tmp_path, workload, fake_criu, kills, monkeypatch, where, failure):
    pid, st = workload
    dest = str(tmp_path / "ckpt")
    kills[0].dest = dest
    if where == "seal":
        monkeypatch.setattr(seal_, "seal", failure)
    else:
        monkeypatch.setattr(store.Staging, "publish", failure)
    with pytest.raises((CriuError, OSError)) as err:
        checkpoint.checkpoint(params(pid=pid, dest=dest), False)
    if where == "seal":
        assert err.value.msg == ("Cannot write metadata.json: No space left on device. The process %d was left stopped by the "
                                 "failed dump and has been resumed (SIGCONT). No checkpoint was written to %s." % (pid, dest))
    assert fake_criu.dumps[0]["options"]["leave_stopped"] is True
    assert kills[1] == []  # never killed
    assert procfs.is_alive(pid, st.starttime) and wait_for(lambda: procfs.read_stat(pid).state != "T")
    assert not os.path.lexists(dest) and [n for n in os.listdir(tmp_path) if ".staging-" in n] == []


def test_a_name_we_did_not_write_beside_dest_does_not_undo_the_dump(tmp_path, workload, fake_criu, kills):
    """A directory named like an old failed dump's log (.NAME.dump-failed.log) once made the clean-up after the publish
    raise, and the failure handler resumed the workload beside its published checkpoint: two copies. It is left alone."""
    pid, st = workload
    dest = str(tmp_path / "ckpt")
    kills[0].dest = dest
    (tmp_path / ".ckpt.dump-failed.log").mkdir()
    result = checkpoint.checkpoint(params(pid=pid, dest=dest), False)
    assert result["changed"] and verify_at(dest).metadata["options"]["leave_running"] is False
    assert kills[1] == [([[pid, st.starttime]], signal.SIGKILL, "published", ["T"])]
    assert wait_for(lambda: not procfs.is_alive(pid, st.starttime)) and (tmp_path / ".ckpt.dump-failed.log").is_dir()


def test_nothing_after_the_publish_resumes_the_workload(tmp_path, workload, fake_criu, kills, monkeypatch):
    """Whatever fails once the checkpoint is published, the workload is never resumed beside it (nor killed: the failure
    may have come before the publish was flushed)."""
    pid, st = workload
    dest = str(tmp_path / "ckpt")
    kills[0].dest = dest

    def fails_after_publish(_loc):
        raise CriuError("Cleaning up failed.")
    monkeypatch.setattr(seal_, "_forget_failed_log", fails_after_publish)
    with pytest.raises(CriuError) as err:
        checkpoint.checkpoint(params(pid=pid, dest=dest), False)
    assert err.value.msg == ("Cleaning up failed. The checkpoint was published at %s before this failure, so the workload was "
                             "not resumed beside it (it could then run twice): it is left as the dump left it. Restore it "
                             "from %s, or remove %s and resume it." % (dest, dest, dest))
    assert kills[1] == [] and procfs.read_stat(pid).state == "T", "neither resumed nor killed"
    assert verify_at(dest).metadata["options"]["leave_running"] is False
    procfs.kill_tree(pid, signal.SIGCONT)


def test_dump_stats_read_criu_stats_from_the_staging_dir(tmp_path, workload, fake_criu, monkeypatch):
    seen = []

    def stats(dir_fd, name):
        where = os.readlink("/proc/self/fd/%d" % dir_fd)
        seen.append((where, name, sorted(os.listdir(where))))
        return {"frozen_time": 1234}

    monkeypatch.setattr(criustats, "read", stats)
    result = checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "ckpt"), leave_running=True), False)
    [(where, name, entries)] = seen
    assert name == "stats-dump"
    assert where == fake_criu.dumps[0]["work"] and os.path.basename(where).startswith(".ckpt.staging-")
    assert entries == ["dump.log", "images"]  # after criu, before the metadata
    assert result["stats"]["criu"] == {"frozen_time": 1234}


@pytest.mark.parametrize("durable", [True, False])
def test_seal_writes_metadata_and_signature_and_flushes_only_when_durable(tmp_path, monkeypatch, durable):
    metadata = make_checkpoint(tmp_path / "model")
    flushed = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (flushed.append(os.readlink("/proc/self/fd/%d" % fd)), real(fd)))
    with store.location(str(tmp_path / "ckpt")) as loc:
        staging = store.Staging(loc)
        try:
            seal_.seal(staging, metadata, KEY, durable=durable)
            assert sorted(os.listdir(staging.path)) == ["checkpoint.hmac", "images", "metadata.json"]
            with open(os.path.join(staging.path, "metadata.json"), "rb") as handle:
                assert handle.read() == integrity.canonical(metadata)
            with open(os.path.join(staging.path, "checkpoint.hmac")) as handle:
                assert handle.read() == integrity.sign(metadata, KEY) + "\n"
            if durable:
                assert {os.path.join(staging.path, "metadata.json"), os.path.join(staging.path, "checkpoint.hmac"),
                        staging.path} <= set(flushed) and flushed[-1] == staging.path
            else:
                assert flushed == []
        finally:
            staging.remove()


def test_seal_without_key_writes_no_signature(tmp_path):
    metadata = make_checkpoint(tmp_path / "model")
    with store.location(str(tmp_path / "ckpt")) as loc:
        staging = store.Staging(loc)
        try:
            seal_.seal(staging, metadata, None)
            assert sorted(os.listdir(staging.path)) == ["images", "metadata.json"]
        finally:
            staging.remove()


@pytest.mark.parametrize("images, options, needs", [
    (["inventory.img", "tcp-stream-1a2b.img"], {}, {"tcp_established": True}),
    (["inventory.img", "tcp-stream-1a2b.img"], {"tcp_established": True}, {}),
    (["inventory.img", "tcp-stream-1a2b.img"], {"tcp_close": True}, {}),
    (["inventory.img", "inetsk.img"], {}, {}),
])
def test_describe_records_what_the_images_need_at_restore(images, options, needs):
    manifest = [{"path": name, "size": 0, "chunks": [hashlib.sha256(b"").hexdigest()]} for name in images]
    metadata = seal_.describe(FakeRuntime().identity(), "job", {"pid": 42}, options, "sha256", manifest)
    assert metadata["restore_needs"] == needs
    assert metadata["options"] == options and metadata["manifest"] == manifest and metadata["name"] == "job"
    assert metadata["manifest_chunk_bytes"] == integrity.CHUNK_BYTES and metadata["schema_version"] == integrity.SCHEMA_VERSION
    assert metadata["criu"] == {"path": FakeRuntime.path, "version": "4.2.0"} and metadata["process"] == {"pid": 42}


def test_published_metadata_holds_restore_needs(tmp_path, workload, fake_criu, monkeypatch):
    real = fake_criu.dump

    def dump(pid, images, work, options, timeout, external_unix=()):
        FakeRuntime._write(images.fd, "tcp-stream-1.img", b"socket")
        return real(pid, images, work, options, timeout)

    monkeypatch.setattr(fake_criu, "dump", dump)
    checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "ckpt"), leave_running=True), False)
    assert verify_at(tmp_path / "ckpt").metadata["restore_needs"] == {"tcp_established": True}


# --- state=absent and keep -----------------------------------------------------------------------


def test_state_absent_deletes_a_checkpoint_without_running_criu(tmp_path, monkeypatch):
    metadata = make_checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    dest = str(tmp_path / "ckpt")
    going = {"before": {dest: diff_.checkpoint(metadata)}, "after": {}}
    assert checkpoint.checkpoint(params(dest=dest, state="absent"), True) == {
        "dest": dest, "changed": True, "actions": ["would delete the checkpoint %s" % dest], "diff": going}
    assert os.listdir(tmp_path) == ["ckpt"]
    assert checkpoint.checkpoint(params(dest=dest + "/", state="absent"), False) == {
        "dest": dest, "changed": True, "actions": ["Delete the checkpoint %s" % dest], "diff": going}
    assert os.listdir(tmp_path) == []
    assert checkpoint.checkpoint(params(dest=dest, state="absent"), False) == {
        "dest": dest, "changed": False, "actions": [], "diff": {"before": {}, "after": {}}}


def test_state_absent_refuses_what_is_not_a_checkpoint(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.db").write_text("x")
    with pytest.raises(CriuError, match="Refusing to delete .*data: .*not a checkpoint directory made by nucleus.criu"):
        checkpoint.checkpoint(params(dest=str(tmp_path / "data"), state="absent"), False)
    assert (tmp_path / "data" / "precious.db").read_text() == "x"


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_refused_before_anything(tmp_path, workload, keep):
    make_checkpoint(tmp_path / "ckpt")
    for state in ("present", "absent"):
        with pytest.raises(CriuError, match="keep must be 1 or more .*got %d" % keep):
            checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "new"), keep=keep, state=state), False)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_contradicting_options_refused_before_anything(tmp_path, workload, fake_criu):
    with pytest.raises(CriuError, match="contradict"):
        checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "ckpt"), tcp_established=True, tcp_close=True), False)
    with pytest.raises(CriuError, match="is not a size"):
        checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "ckpt"), ghost_limit="lots"), False)
    assert os.listdir(tmp_path) == [] and fake_criu.dumps == []


def test_keep_deletes_the_oldest_checkpoints_of_the_name(tmp_path, workload, fake_criu):
    pid = workload[0]
    for day in (1, 2, 3):
        make_checkpoint(tmp_path / ("job-%d" % day), name="job", created_at="2025-01-0%dT00:00:00.000000Z" % day)
    make_checkpoint(tmp_path / "other", name="other", created_at="2024-01-01T00:00:00.000000Z")
    (tmp_path / "data").mkdir()
    dest = str(tmp_path / "job-4")
    result = checkpoint.checkpoint(params(pid=pid, dest=dest, name="job", keep=2, leave_running=True), False)
    assert result["removed"] == [str(tmp_path / "job-2"), str(tmp_path / "job-1")]
    assert result["actions"] == ["Dump pid %d (sleep) to %s" % (pid, dest),
                                 "Delete the older checkpoint %s (keep 2 of job)" % (tmp_path / "job-2"),
                                 "Delete the older checkpoint %s (keep 2 of job)" % (tmp_path / "job-1")]
    assert sorted(os.listdir(tmp_path)) == ["data", "job-3", "job-4", "other"]
    assert verify_at(dest).problems == []


def test_keep_shows_the_older_checkpoints_going_in_the_diff(tmp_path, workload, fake_criu):
    """Check mode predicts the same deletions the dump then makes: before holds DEST (nothing yet) and the older ones."""
    pid = workload[0]
    older = {day: make_checkpoint(tmp_path / ("job-%d" % day), name="job", created_at="2025-01-0%dT00:00:00.000000Z" % day)
             for day in (1, 2)}
    dest = str(tmp_path / "job-3")
    args = params(pid=pid, dest=dest, name="job", keep=2, leave_running=True)
    going = {str(tmp_path / "job-1"): diff_.checkpoint(older[1])}
    predicted = checkpoint.checkpoint(args, True)["diff"]
    assert predicted == {"before": going, "after": {dest: {"name": "job", "pid": pid, "comm": "sleep"}}}
    result = checkpoint.checkpoint(args, False)
    assert result["diff"] == {"before": going, "after": {dest: diff_.checkpoint(result["checkpoint"])}}
    assert sorted(os.listdir(tmp_path)) == ["job-2", "job-3"]


def test_keep_with_nothing_to_delete_and_without_keep(tmp_path, workload, fake_criu):
    pid = workload[0]
    make_checkpoint(tmp_path / "job-1", name="job")
    result = checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "job-2"), name="job", keep=2, leave_running=True), False)
    assert result["removed"] == [] and len(result["actions"]) == 1
    result = checkpoint.checkpoint(params(pid=pid, dest=str(tmp_path / "job-3"), name="job", leave_running=True), False)
    assert "removed" not in result and len(result["actions"]) == 1
    assert sorted(os.listdir(tmp_path)) == ["job-1", "job-2", "job-3"]


def test_keep_in_check_mode_deletes_nothing(tmp_path, workload, fake_criu):
    make_checkpoint(tmp_path / "job-1", name="job")
    result = checkpoint.checkpoint(params(pid=workload[0], dest=str(tmp_path / "job-2"), name="job", keep=1), True)
    assert result["actions"] == ["would dump pid %d (sleep) to %s" % (workload[0], tmp_path / "job-2"),
                                 "would delete the older checkpoint %s (keep 1 of job)" % (tmp_path / "job-1")]
    assert os.listdir(tmp_path) == ["job-1"] and fake_criu.dumps == []
