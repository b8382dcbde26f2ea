"""criu_restore's logic before and around criu (_restore); criu itself is a fake."""

import json
import os
import signal
import stat
import threading
import time

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.system import _procfs as procfs
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _criustats as criustats
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _host as host
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _restore as restore
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _restored as restored_
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.criu._runtime import CriuRuntime, Dir, Run
from .mu_helpers import KEY, make_checkpoint, opened_checkpoint, wait_for, write_exe
from .test_criustats import RESTORE_COUNTERS, STATS_RESTORE

PID_MAX = int(open("/proc/sys/kernel/pid_max").read())


def params(**given):
    return argspec.RESTORE.request(argspec.RESTORE.defaults(**dict({"timeout": 30}, **given)))


def _free_ckpt(dest, **kw):
    return make_checkpoint(dest, process={"pid": PID_MAX + 1, "tree": [PID_MAX + 1], "comm": "app",
                                          "cmdline": ["app", "--token", "s3cret"]}, **kw)


def _restored(dest, **record):
    with open(os.path.join(str(dest), "restored.json"), "w") as handle:
        json.dump(record, handle)


def _diff(src, before, after):
    """A restore's diff, as --diff returns it."""
    header = "copy restored from %s" % src
    return {"before": before, "after": after, "before_header": header, "after_header": header}


def _load_verified(path, key=None, **given):
    with opened_checkpoint(path) as checkpoint:
        return restore.load_verified(checkpoint, key, params(src=str(path), **given))


class FakeRuntime:
    """Stands in for CriuRuntime: "restores" by starting ``sleep`` and logging into the work dir it is handed."""

    def __init__(self, spawn, path, fail=False):
        self.spawn = spawn
        self.path = path  # no pycriu beside it: criu's statistics are "unavailable"
        self.fail = fail
        self.calls = []

    def restore(self, images, work, options, timeout, **kwargs):
        self.calls.append({"images": os.readlink("/proc/self/fd/%d" % images.fd), "images_path": images.path,
                           "work": work.path, "work_fd": os.readlink("/proc/self/fd/%d" % work.fd),
                           "options": dict(options), "timeout": timeout, "kwargs": kwargs})
        with open(work.file("restore.log"), "w") as handle:
            handle.write("(00.1) Restore finished successfully\n")
        with open(work.file("stats-restore"), "wb") as handle:
            handle.write(STATS_RESTORE)
        if self.fail:
            raise CriuError("criu restore failed (exit code 1). Log: %s. Last errors: boom" % work.file("restore.log"),
                            log=work.file("restore.log"))
        return self.spawn(["sleep", "60"]).pid, Run(0.5, work.file("restore.log"))


@pytest.fixture
def fake_criu(spawn, monkeypatch, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("criu")
    runtime = FakeRuntime(spawn, str(prefix / "sbin" / "criu"))
    monkeypatch.setattr(CriuRuntime, "load", classmethod(lambda cls, *a: runtime))
    monkeypatch.setattr(host, "require_privileges", lambda: None)
    monkeypatch.setattr(restored_, "HEALTH_DELAY", 0.01)
    return runtime


def test_live_restore(tmp_path, spawn):
    child = spawn(["sleep", "60"])
    st = procfs.read_stat(child.pid)
    metadata = _free_ckpt(tmp_path / "c")
    with opened_checkpoint(tmp_path / "c") as checkpoint:
        assert restored_.live_restore(checkpoint, metadata, None) is None
        record = {"pid": child.pid, "starttime": st.starttime, "boot_id": procfs.boot_id(), "checkpoint_id": metadata["id"]}
        _restored(tmp_path / "c", **record)
        assert restored_.live_restore(checkpoint, metadata, None) == record
        for bad in ({"boot_id": "other"}, {"starttime": st.starttime + 1}, {"pid": "1"}, {"pid": PID_MAX + 1},
                    {"checkpoint_id": "another checkpoint"}):
            _restored(tmp_path / "c", **dict(record, **bad))
            assert restored_.live_restore(checkpoint, metadata, None) is None, bad
        (tmp_path / "c" / "restored.json").write_text("not json")
        assert restored_.live_restore(checkpoint, metadata, None) is None
        os.unlink(tmp_path / "c" / "restored.json")
        (tmp_path / "c" / "restored.json").symlink_to(tmp_path / "elsewhere.json")
        _restored(tmp_path, **record)
        os.rename(tmp_path / "restored.json", tmp_path / "elsewhere.json")
        assert restored_.live_restore(checkpoint, metadata, None) is None  # never read through a symlink


def test_with_a_key_only_a_signed_restore_record_counts(tmp_path, spawn):
    """A holder of the checkpoint's storage could name any live process in restored.json (pid, start time, boot id and
    checkpoint id are all public): with a key, criu_restore would have reported it restored and restored nothing."""
    child = spawn(["sleep", "60"])
    metadata = _free_ckpt(tmp_path / "c")
    record = {"pid": child.pid, "starttime": procfs.read_stat(child.pid).starttime, "boot_id": procfs.boot_id(),
              "checkpoint_id": metadata["id"]}
    with opened_checkpoint(tmp_path / "c") as checkpoint:
        _restored(tmp_path / "c", **record)
        assert restored_.live_restore(checkpoint, metadata, KEY) is None, "an unsigned record decides nothing"
        _restored(tmp_path / "c", **dict(record, hmac="0" * 64))
        assert restored_.live_restore(checkpoint, metadata, KEY) is None, "nor a forged signature"
        restored_.save_record(checkpoint.fd, record, KEY)
        assert json.loads((tmp_path / "c" / "restored.json").read_text())["hmac"] == integrity.sign(record, KEY)
        assert restored_.live_restore(checkpoint, metadata, KEY) == record
        assert restored_.live_restore(checkpoint, metadata, b"another key, 16 bytes or more") is None
        assert restored_.live_restore(checkpoint, metadata, None) == record, "without a key nothing is signed"


@pytest.mark.parametrize("schema", [1, 2])
def test_load_verified_accepts_valid(tmp_path, schema):
    metadata = _free_ckpt(tmp_path / "c", schema=schema)
    assert metadata["schema_version"] == schema
    verdict = _load_verified(tmp_path / "c", verify=True)
    assert isinstance(verdict, integrity.Verdict)
    assert verdict[:3] == (metadata, [], []) and verdict.bytes == len(b"inventory") and verdict.seconds > 0
    unhashed = _load_verified(tmp_path / "c", verify=False)
    assert unhashed[:3] == (metadata, [], []) and unhashed.bytes == 0 and unhashed.seconds == 0  # no image was read
    assert unhashed.stats() == {"verify_seconds": 0.0, "verify_bytes": 0}


@pytest.mark.parametrize("verify", [True, False])
def test_load_verified_enforces_key_even_unverified(tmp_path, verify):
    _free_ckpt(tmp_path / "c")
    with pytest.raises(CriuError, match="Refusing to restore .*checkpoint.hmac is missing") as err:
        _load_verified(tmp_path / "c", KEY, verify=verify)
    assert err.value.details["problems"]


@pytest.mark.parametrize("verify", [True, False])
def test_load_verified_refuses_a_signed_checkpoint_without_key_unless_told(tmp_path, verify):
    metadata = _free_ckpt(tmp_path / "c", key=KEY)
    with pytest.raises(CriuError, match="signed but no key was given"):
        _load_verified(tmp_path / "c", verify=verify)
    assert _load_verified(tmp_path / "c", verify=verify, skip_signature_check=True).metadata == metadata
    assert _load_verified(tmp_path / "c", KEY, verify=verify, require_signature=True).metadata == metadata


@pytest.mark.parametrize("schema", [1, 2])
def test_load_verified_refuses_corrupt_images_when_verifying(tmp_path, schema):
    metadata = _free_ckpt(tmp_path / "c", schema=schema)
    (tmp_path / "c" / "images" / "inventory.img").write_bytes(b"Inventory")
    with pytest.raises(CriuError, match="Refusing to restore .*inventory.img: sha256 expected"):
        _load_verified(tmp_path / "c", verify=True)
    assert _load_verified(tmp_path / "c", verify=False).metadata == metadata


def test_load_verified_refuses_a_post_copy_checkpoint(tmp_path):
    _free_ckpt(tmp_path / "c", options={"shell_job": False, "lazy_pages": True})
    with pytest.raises(CriuError, match="post-copy checkpoint .*only the migration that made it"):
        _load_verified(tmp_path / "c")


def test_opened_locks_before_verifying(tmp_path):
    _free_ckpt(tmp_path / "c")
    lock = tmp_path / ".c.lock"
    with restore.opened(str(tmp_path / "c"), 5, lock=True) as checkpoint:
        assert checkpoint.path == str(tmp_path / "c") and os.path.exists(lock)
        with store.location(str(tmp_path / "c")) as loc:
            with pytest.raises(CriuError, match="holds the lock"):
                with store.Lock(loc, timeout=0.1):
                    pass
    assert not os.path.lexists(lock)
    with restore.opened(str(tmp_path / "c"), 5, lock=False):
        assert not os.path.lexists(lock)


def test_opened_turns_every_problem_into_a_refusal(tmp_path):
    with pytest.raises(CriuError, match="Refusing to restore %s: No checkpoint at" % (tmp_path / "none")) as err:
        with restore.opened(str(tmp_path / "none"), 5, lock=True):
            pass
    assert len(err.value.details["problems"]) == 1
    assert not os.path.lexists(tmp_path / ".none.lock")
    _free_ckpt(tmp_path / "c")
    os.chmod(tmp_path / "c", 0o777)
    with pytest.raises(CriuError, match="Refusing to restore .*writable by group/others"):
        with restore.opened(str(tmp_path / "c"), 5, lock=False):
            pass


def test_restore_refuses_busy_pids(tmp_path, monkeypatch):
    make_checkpoint(tmp_path / "c", process={"pid": os.getpid(), "tree": [os.getpid()]})
    monkeypatch.setattr(CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    with pytest.raises(CriuError, match="Cannot restore .*PIDs %d" % os.getpid()):
        restore.restore(params(src=str(tmp_path / "c")), False)
    assert sorted(os.listdir(tmp_path)) == ["c"]  # the lock is gone


def test_restore_refuses_missing_src_and_bad_options(tmp_path):
    with pytest.raises(CriuError, match="does not exist"):
        restore.restore(params(src=str(tmp_path / "none")), False)
    with pytest.raises(CriuError, match="positive"):
        restore.restore(params(src=str(tmp_path / "none"), timeout=0), False)
    with pytest.raises(CriuError, match="hmac_key is empty"):
        restore.restore(params(src=str(tmp_path / "none"), hmac_key=""), False)


def test_restore_is_idempotent_when_restored_process_lives(tmp_path, spawn, monkeypatch):
    child = spawn(["sleep", "60"])
    metadata = _free_ckpt(tmp_path / "c")
    record = {"pid": child.pid, "starttime": procfs.read_stat(child.pid).starttime, "boot_id": procfs.boot_id(),
              "checkpoint_id": metadata["id"]}
    _restored(tmp_path / "c", **record)
    monkeypatch.setattr(CriuRuntime, "load", lambda *a: pytest.fail("criu must not be run"))
    result = restore.restore(params(src=str(tmp_path / "c")), False)
    shown = {"pid": child.pid, "checkpoint_id": metadata["id"]}
    assert result == {"changed": False, "src": str(tmp_path / "c"), "pid": child.pid,
                      "checkpoint": integrity.public(metadata), "restored": record, "actions": [],
                      "diff": _diff(str(tmp_path / "c"), shown, shown)}
    assert "cmdline" not in result["checkpoint"]["process"]


# --- restoring, with a fake criu ------------------------------------------------------------------


def test_restore_runs_criu_on_the_verified_fds_in_a_private_work_dir(tmp_path, fake_criu):
    metadata = _free_ckpt(tmp_path / "c", options={"shell_job": True})
    src = str(tmp_path / "c")
    result = restore.restore(params(src=src, pidfile=str(tmp_path / "app.pid")), False)
    [call] = fake_criu.calls
    pid = result["pid"]
    assert result["changed"] is True and result["src"] == src and result["actions"] == ["restore %s (checkpoint of pid %d)" % (src, PID_MAX + 1)]
    assert result["checkpoint"] == integrity.public(metadata)
    stats = result["stats"]
    assert set(stats) == {"verify_seconds", "verify_bytes", "restore_seconds", "criu"}
    assert stats["restore_seconds"] == 0.5 and stats["verify_bytes"] == len(b"inventory") and stats["verify_seconds"] >= 0
    assert stats["criu"] == RESTORE_COUNTERS
    assert call["images"] == os.path.join(src, "images") and call["images_path"] == os.path.join(src, "images")
    # the effective options: what the dump recorded that criu needs again (the rest off), nothing chosen at restore
    assert call["options"] == {"shell_job": True, "tcp_established": False, "tcp_close": False, "ext_unix_sk": False,
                               "file_locks": False} and call["timeout"] == 30
    assert call["work_fd"] == call["work"] and not call["work"].startswith(src)
    assert os.path.basename(call["work"]).startswith("nucleus-criu-restore-") and not os.path.exists(call["work"])
    record = json.loads((tmp_path / "c" / "restored.json").read_text())
    assert record == result["restored"] and record["pid"] == pid and record["checkpoint_id"] == metadata["id"]
    assert record["starttime"] == procfs.read_stat(pid).starttime and record["boot_id"] == procfs.boot_id()
    assert stat.S_IMODE(os.stat(tmp_path / "c" / "restored.json").st_mode) == 0o600
    assert (tmp_path / "c" / "restore.log").read_text() == "(00.1) Restore finished successfully\n"
    assert (tmp_path / "c" / "stats-restore").read_bytes() == STATS_RESTORE
    assert (tmp_path / "app.pid").read_text() == "%d\n" % pid
    assert sorted(os.listdir(tmp_path)) == ["app.pid", "c"]  # the lock is gone
    # the restored process lives: a second run changes nothing
    again = restore.restore(params(src=src), False)
    assert again["changed"] is False and again["pid"] == pid and len(fake_criu.calls) == 1


def test_a_forced_restore_shows_the_live_copy_replaced_in_the_diff(tmp_path, fake_criu):
    """force restores beside a live copy: before is that copy, after the new one (check mode: its checkpoint only)."""
    metadata = _free_ckpt(tmp_path / "c")
    src = str(tmp_path / "c")
    first = restore.restore(params(src=src), False)
    live = {"pid": first["pid"], "checkpoint_id": metadata["id"], "restored_at": first["restored"]["restored_at"]}
    assert first["diff"] == _diff(src, {}, live)
    assert restore.restore(params(src=src, force=True), True)["diff"] == _diff(src, live, {"checkpoint_id": metadata["id"]})
    second = restore.restore(params(src=src, force=True), False)
    assert second["pid"] != first["pid"] and second["diff"] == _diff(
        src, live, {"pid": second["pid"], "checkpoint_id": metadata["id"], "restored_at": second["restored"]["restored_at"]})


def test_restore_replays_recorded_options_and_applies_choices(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c", options={"shell_job": False, "tcp_established": True, "file_locks": True, "ghost_limit": 1 << 20},
               restore_needs={"ext_unix_sk": True})
    restore.restore(params(src=str(tmp_path / "c"), tcp_close=True, manage_cgroups="soft", cgroup_root=["/machine/job"]), False)
    [call] = fake_criu.calls
    assert call["options"] == {"tcp_established": False, "tcp_close": True, "ext_unix_sk": True, "file_locks": True,
                               "shell_job": False, "manage_cgroups": "soft", "cgroup_root": ["/machine/job"]}


def test_restore_refuses_options_criu_would_refuse_before_running_it(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c", options={"shell_job": False, "tcp_close": True})
    with pytest.raises(CriuError, match="made with tcp_close=true"):
        restore.restore(params(src=str(tmp_path / "c"), tcp_close=False), False)
    assert fake_criu.calls == [] and not os.path.exists(tmp_path / "c" / "restored.json")


def test_restore_check_mode_runs_nothing(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c")
    result = restore.restore(params(src=str(tmp_path / "c")), True)
    assert result["changed"] is True and result["pid"] is None and result["actions"][0].startswith("would restore")
    assert fake_criu.calls == [] and sorted(os.listdir(tmp_path)) == ["c"]
    assert not os.path.exists(tmp_path / "c" / "restored.json")


def test_failed_restore_keeps_criu_log_in_the_checkpoint(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c")
    fake_criu.fail = True
    kept = str(tmp_path / "c" / "restore.log")
    with pytest.raises(CriuError) as err:
        restore.restore(params(src=str(tmp_path / "c")), False)
    assert err.value.msg == "criu restore failed (exit code 1). Log: %s. Last errors: boom" % kept  # msg is what fail_json shows
    assert err.value.details["log"] == kept
    assert open(kept).read() == "(00.1) Restore finished successfully\n"
    assert not os.path.exists(tmp_path / "c" / "restored.json") and not os.path.exists(fake_criu.calls[0]["work"])


def test_restore_refuses_a_checkpoint_whose_signature_is_unchecked(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c", key=KEY)
    with pytest.raises(CriuError, match="Refusing to restore .*signed but no key was given"):
        restore.restore(params(src=str(tmp_path / "c")), False)
    assert fake_criu.calls == []
    assert restore.restore(params(src=str(tmp_path / "c"), hmac_key=KEY.decode()), False)["changed"] is True


def test_unwritable_pidfile_after_a_restore_says_the_workload_runs(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c")
    (tmp_path / "run").mkdir()
    os.chmod(tmp_path / "run", 0o777)
    with pytest.raises(CriuError, match="The workload was restored and runs as pid [0-9]+ .*writable by group/others") as err:
        restore.restore(params(src=str(tmp_path / "c"), pidfile=str(tmp_path / "run" / "app.pid")), False)
    assert procfs.is_alive(err.value.details["pid"]) and err.value.details["path"] == str(tmp_path / "run" / "app.pid")
    assert os.listdir(tmp_path / "run") == []


def test_restore_without_images_dir_is_refused_even_unverified(tmp_path, monkeypatch):
    _free_ckpt(tmp_path / "c")
    os.rename(tmp_path / "c" / "images", tmp_path / "images-elsewhere")
    script = write_exe(tmp_path / "bin" / "criu", "#!/bin/sh\nexit 0\n")
    monkeypatch.setattr(CriuRuntime, "load", classmethod(lambda cls, *a: CriuRuntime(script, (4, 2, 0))))
    monkeypatch.setattr(host, "require_privileges", lambda: None)
    with pytest.raises(CriuError, match="images"):
        restore.restore(params(src=str(tmp_path / "c"), verify=False), False)


def test_restore_tree_uses_a_private_work_dir_and_copies_logs(tmp_path, fake_criu):
    _free_ckpt(tmp_path / "c")
    options = {"shell_job": True, "file_locks": False}
    with opened_checkpoint(tmp_path / "c") as checkpoint:
        pid, run = restored_.restore_tree(fake_criu, checkpoint, options, 12, leave_stopped=True)
    [call] = fake_criu.calls
    assert call["options"] == options  # passed to criu as given
    assert run.log_path == str(tmp_path / "c" / "restore.log") and run.duration == 0.5
    assert run.criu_stats == RESTORE_COUNTERS
    assert call["kwargs"]["leave_stopped"] is True and call["timeout"] == 12
    assert os.path.dirname(call["work"]) == os.path.realpath("/tmp") and call["work_fd"] == call["work"]
    assert not os.path.exists(call["work"]) and procfs.is_alive(pid)
    assert (tmp_path / "c" / "restore.log").read_text() == "(00.1) Restore finished successfully\n"
    assert (tmp_path / "c" / "stats-restore").read_bytes() == STATS_RESTORE


def test_restore_tree_reads_criu_stats_from_the_work_dir(tmp_path, fake_criu, monkeypatch):
    _free_ckpt(tmp_path / "c")
    seen = []

    def stats(dir_fd, name):
        seen.append((os.readlink("/proc/self/fd/%d" % dir_fd), name, os.listdir("/proc/self/fd/%d" % dir_fd)))
        return {"restore_time": 1234}

    monkeypatch.setattr(criustats, "read", stats)
    with opened_checkpoint(tmp_path / "c") as checkpoint:
        _pid, run = restored_.restore_tree(fake_criu, checkpoint, {}, 12)
    [call] = fake_criu.calls
    # read from criu's private work dir while it still exists (the file criu wrote there)
    [(where, name, entries)] = seen
    assert (where, name) == (call["work"], "stats-restore") and "stats-restore" in entries
    assert run.criu_stats == {"restore_time": 1234}


def test_restore_result_carries_criu_stats(tmp_path, fake_criu, monkeypatch):
    _free_ckpt(tmp_path / "c")
    monkeypatch.setattr(criustats, "read", lambda dir_fd, name: {"restore_time": 1234, "forking_time": 5})
    result = restore.restore(params(src=str(tmp_path / "c"), verify=False), False)
    assert result["stats"] == {"verify_seconds": 0.0, "verify_bytes": 0, "restore_seconds": 0.5,
                               "criu": {"restore_time": 1234, "forking_time": 5}}


def test_logs_kept_in_rewrites_the_log_path(tmp_path):
    _free_ckpt(tmp_path / "c")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "restore.log").write_text("criu said")
    work = Dir(-1, str(tmp_path / "work"))
    with opened_checkpoint(tmp_path / "c") as checkpoint:
        with pytest.raises(CriuError) as err:
            with restored_.logs_kept_in(checkpoint, work):
                raise CriuError("failed, see %s" % work.file("restore.log"), log=work.file("restore.log"))
        assert err.value.msg == "failed, see %s" % (tmp_path / "c" / "restore.log")
        assert err.value.details["log"] == str(tmp_path / "c" / "restore.log")
        (tmp_path / "work" / "restore.log").write_text("second run")
        with restored_.logs_kept_in(checkpoint, work):
            pass
    assert (tmp_path / "c" / "restore.log").read_text() == "second run"


def test_confirm_alive(spawn, monkeypatch):
    monkeypatch.setattr(restored_, "HEALTH_DELAY", 0.01)
    child = spawn(["sleep", "60"])
    assert restored_.confirm_alive(child.pid, "log", "src").pid == child.pid
    with pytest.raises(CriuError, match="reported success but the restored process %d exited" % (PID_MAX + 1)) as err:
        restored_.confirm_alive(PID_MAX + 1, "log", "src")
    assert err.value.details == {"path": "src", "log": "log", "pid": PID_MAX + 1}


def test_confirm_alive_stopped(spawn, monkeypatch):
    monkeypatch.setattr(restored_, "HEALTH_DELAY", 60)  # a tree restored stopped is not first left to run for a while
    monkeypatch.setattr(restored_, "STOP_WAIT", 0.3)
    stopped = spawn(["sleep", "60"])
    os.kill(stopped.pid, signal.SIGSTOP)
    assert wait_for(lambda: procfs.read_stat(stopped.pid).state == "T")
    started = time.monotonic()
    assert restored_.confirm_alive(stopped.pid, "log", "src", stopped=True).state == "T"
    assert time.monotonic() - started < 0.2
    running = spawn(["sleep", "60"])
    started = time.monotonic()
    with pytest.raises(CriuError, match="the restored process %d did not stop within 0.3s" % running.pid):
        restored_.confirm_alive(running.pid, "log", "src", stopped=True)
    assert 0.3 <= time.monotonic() - started < 5, "it waited STOP_WAIT for the stop, not HEALTH_DELAY"
    assert wait_for(lambda: not procfs.is_alive(running.pid)), "a restore that went wrong is killed"
    with pytest.raises(CriuError, match="the restored process %d exited" % (PID_MAX + 1)):
        restored_.confirm_alive(PID_MAX + 1, "log", "src", stopped=True)


def test_confirm_alive_stopped_waits_for_a_late_stop(spawn, monkeypatch):
    """criu may return a moment before its SIGSTOP lands: a tree that stops within STOP_WAIT is fine."""
    monkeypatch.setattr(restored_, "HEALTH_DELAY", 60)
    monkeypatch.setattr(restored_, "STOP_WAIT", 5.0)
    late = spawn(["sleep", "60"])
    timer = threading.Timer(0.2, os.kill, (late.pid, signal.SIGSTOP))
    timer.start()
    try:
        started = time.monotonic()
        assert restored_.confirm_alive(late.pid, "log", "src", stopped=True).state == "T"
        assert 0.15 <= time.monotonic() - started < 4
    finally:
        timer.cancel()
    assert procfs.is_alive(late.pid), "a tree that stopped in time is left alone"


def test_confirm_alive_running_waits_health_delay(spawn, monkeypatch):
    monkeypatch.setattr(restored_, "HEALTH_DELAY", 0.2)
    child = spawn(["sleep", "60"])
    started = time.monotonic()
    assert restored_.confirm_alive(child.pid, "log", "src").pid == child.pid
    assert time.monotonic() - started >= 0.2
    with pytest.raises(CriuError, match="exited within 0.2s"):
        restored_.confirm_alive(PID_MAX + 1, "log", "src")


def test_write_pidfile_replaces_symlink_not_target(tmp_path):
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "app.pid").symlink_to(tmp_path / "victim")
    restored_.write_pidfile(str(tmp_path / "app.pid"), 4242)
    assert (tmp_path / "victim").read_text() == "precious"
    assert (tmp_path / "app.pid").read_text() == "4242\n" and not (tmp_path / "app.pid").is_symlink()


def test_write_pidfile_through_a_trusted_directory_link(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "var-run").symlink_to(tmp_path / "run")
    restored_.write_pidfile(str(tmp_path / "var-run" / "app.pid"), 4242)
    assert (tmp_path / "run" / "app.pid").read_text() == "4242\n"


def test_write_pidfile_refuses_an_untrusted_directory(tmp_path):
    (tmp_path / "run").mkdir()
    os.chmod(tmp_path / "run", 0o777)
    with pytest.raises(CriuError, match="Pidfile directory %s is writable by group/others" % (tmp_path / "run")):
        restored_.write_pidfile(str(tmp_path / "run" / "app.pid"), 4242)
    assert os.listdir(tmp_path / "run") == []
