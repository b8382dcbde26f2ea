"""The migration's sender (_worker.send_rest): what reaches the target after the dump; the order in which a
recovery lets a container run again (_recovery.resolve, the hosts stood in for); the driver lock and failpoints."""

import json
import os
import threading
import time

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _failpoint as failpoint_module
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _registry as kinds
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _driver as driver
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _migrate as migrate
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _preflight as preflight
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _recovery as recovery
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _worker as worker
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import DriverLock
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal
from .mu_helpers import dir_fd


def test_every_image_reaches_the_target_even_an_empty_one(tmp_path):
    """criu writes empty images (a network namespace's iptables-N.img without rules): the target must create them
    too, or it finds them listed in the manifest but missing and aborts the migration."""
    (tmp_path / "core-1.img").write_bytes(b"core")
    (tmp_path / "iptables-10.img").write_bytes(b"")
    (tmp_path / "pages-1.img").write_bytes(b"")  # followed while criu wrote it, and empty
    followed = {"pages-1.img": integrity.Digester("sha256").result()}
    sent = []
    with dir_fd(tmp_path) as fd:
        hashed = worker.send_rest(fd, dict(followed), "sha256", lambda name, offset, data, _fd: sent.append((name, offset, bytes(data))))
    assert sorted(sent) == [("core-1.img", 0, b"core"), ("iptables-10.img", 0, b""), ("pages-1.img", 0, b"")]
    assert set(hashed) == {"core-1.img", "iptables-10.img", "pages-1.img"}
    assert hashed["iptables-10.img"] == integrity.Digester("sha256").result()


# --- recovery of a container's migration: who runs first ------------------------------------------------------

class Recorder:
    """Stands in for the hosts: records the order of resume and abort, answers the abort as told."""

    def __init__(self, monkeypatch, answer, resume_error=None):
        self.calls = []
        self.answer = answer

        def ask(_settings, _code, _journal, decision):
            self.calls.append("target:" + decision)
            return self.answer

        def resume(_journal):
            self.calls.append("resume source")
            if resume_error:
                raise CriuError(resume_error)

        monkeypatch.setattr(recovery, "_ask_target", ask)
        monkeypatch.setattr(recovery, "resume_source", resume)
        monkeypatch.setattr(recovery, "stop_criu", lambda _journal: self.calls.append("stop criu"))


def container_journal(tmp_path, **fields):
    with dir_fd(tmp_path) as fd:
        journal = Journal.create(os.dup(fd), str(tmp_path), "web", "frozen", id="1", role="source", outcome=None,
                                 mode="copy", container={"id": "f" * 64, "name": "web"}, **fields)
    settings = Settings("web", str(tmp_path), remote.SshTarget("b"), "copy", 60.0, 60.0, None, "sha256", False,
                        None, "all")
    return journal, settings


def test_before_the_export_is_sealed_the_source_container_resumes_first(tmp_path, monkeypatch):
    """The target cannot have restored a container it never had whole: the source runs again even when the target
    cannot be reached, and the target's leftovers wait for the next run."""
    hosts = Recorder(monkeypatch, answer=None)
    journal, settings = container_journal(tmp_path)
    recovery.resolve(journal, settings, b"")
    assert hosts.calls == ["stop criu", "resume source", "target:abort"]
    assert journal.get("outcome") == "rolled_back" and journal.get("target_cleanup") == "pending"


def test_once_sealed_the_targets_copy_goes_before_the_source_container_runs(tmp_path, monkeypatch):
    hosts = Recorder(monkeypatch, answer={"state": "aborted"})
    journal, settings = container_journal(tmp_path, sealed_sent=True)
    recovery.resolve(journal, settings, b"")
    assert hosts.calls == ["target:abort", "stop criu", "resume source"]
    assert journal.get("outcome") == "rolled_back" and journal.get("target_cleanup") == "done"


def test_once_sealed_an_unreachable_target_leaves_the_source_container_stopped(tmp_path, monkeypatch):
    """Podman restores a container running: the target's copy may run, so the source must not, yet."""
    hosts = Recorder(monkeypatch, answer=None)
    journal, settings = container_journal(tmp_path, sealed_sent=True)
    recovery.resolve(journal, settings, b"")
    assert "resume source" not in hosts.calls
    assert journal.get("outcome") == "in_doubt" and "until the target confirms its copy is gone" in journal.get("error")


def test_a_source_container_that_cannot_run_again_is_in_doubt_not_rolled_back(tmp_path, monkeypatch):
    Recorder(monkeypatch, answer={"state": "aborted"}, resume_error="The source container web is gone from this host.")
    journal, settings = container_journal(tmp_path, sealed_sent=True)
    recovery.resolve(journal, settings, b"")
    assert journal.get("outcome") == "in_doubt" and "could not run again: The source container web is gone" in journal.get("error")


# --- a look that writes nothing: the driver lock in check mode ---------------------------------------------------

def test_a_driver_lock_that_may_not_create_leaves_no_file(tmp_path):
    """Check mode takes the lock without creating its file: a missing lock file is a free lock."""
    with dir_fd(tmp_path) as fd:
        look = DriverLock(fd, "web", create=False)
        assert look.try_acquire() and not look.held_elsewhere()
        look.release()
        assert os.listdir(tmp_path) == []
        driver = DriverLock(fd, "web")
        assert driver.try_acquire() and os.listdir(tmp_path) == [".web.driver.lock"]
        other = DriverLock(fd, "web", create=False)
        assert not other.try_acquire() and other.held_elsewhere(), "a held lock is seen without creating anything"
        driver.release()
        assert other.try_acquire()
        other.release()


# --- failpoints: armed by tests in a directory of their own ------------------------------------------------------

def test_a_failpoint_waits_while_armed_and_says_who_reached_it(tmp_path, monkeypatch):
    failpoints = tmp_path / "failpoints"
    monkeypatch.setattr(failpoint_module, "FAILPOINTS", str(failpoints))
    failpoint_module.failpoint("web", "frozen")  # no directory: nothing armed, nothing written
    assert not failpoints.exists()
    failpoints.mkdir(mode=0o700)
    (failpoints / "web.frozen").write_text("")
    timer = threading.Timer(0.3, lambda: os.unlink(failpoints / "web.frozen"))
    timer.start()
    started = time.monotonic()
    failpoint_module.failpoint("web", "frozen")
    assert time.monotonic() - started >= 0.25
    assert json.loads((failpoints / "web.frozen.reached").read_text()) == {"pid": os.getpid()}
    failpoint_module.failpoint("other", "frozen")  # armed for another workload only
    assert not (failpoints / "other.frozen.reached").exists()


def test_a_failpoint_directory_others_can_write_is_ignored(tmp_path, monkeypatch):
    failpoints = tmp_path / "failpoints"
    failpoints.mkdir()
    os.chmod(failpoints, 0o777)
    (failpoints / "frozen").write_text("")
    monkeypatch.setattr(failpoint_module, "FAILPOINTS", str(failpoints))
    failpoint_module.failpoint("web", "frozen")  # returns at once: never trusted
    assert not (failpoints / "web.frozen.reached").exists()


# --- the lease keeper and the commit: a decision on disk stands -------------------------------------------------

def sleeping_worker(seconds: float) -> int:
    """A child standing in for the driver's worker."""
    pid = os.fork()
    if pid == 0:
        time.sleep(seconds)
        os._exit(0)  # pylint: disable=protected-access
    return pid


def lease_journal(tmp_path, phase="target_restored"):
    with dir_fd(tmp_path) as fd:
        return Journal.create(os.dup(fd), str(tmp_path), "web", phase, id="1", role="source", outcome=None, mode="copy",
                              lease_seconds=5, lease_deadline=time.monotonic() - 1)


def test_the_lease_keeper_never_undoes_a_commit_written_while_it_looked(tmp_path, monkeypatch):
    """The keeper found the lease run out before a decision, then wrote its older copy of the journal over the commit the
    worker had written meanwhile, and killed the worker: the source was resumed while the target ran its copy. Here the
    worker commits right after the keeper's first look; the keeper decides only on what is on disk under the decision
    lock, so the commit stands and the worker is left to finish."""
    journal = lease_journal(tmp_path)
    real_load = Journal.load.__func__
    looked = []

    def look_then_commit(cls, dir_fd, directory, name):
        found = real_load(cls, dir_fd, directory, name)
        if not looked:
            looked.append(True)
            Journal(dir_fd, directory, name, json.loads(json.dumps(found.data))).record("committed", decision="commit")
        return found

    monkeypatch.setattr(Journal, "load", classmethod(look_then_commit))
    started = time.monotonic()
    worker = sleeping_worker(1.0)
    driver._keep_lease(worker, journal)
    assert time.monotonic() - started >= 0.9, "the worker must be left to finish, not killed"
    on_disk = real_load(Journal, journal.dir_fd, journal.directory, journal.name)
    assert on_disk.phase == "committed" and on_disk.get("decision") == "commit" and on_disk.get("error") is None


def test_the_lease_keeper_kills_a_worker_past_its_lease_and_keeps_what_it_wrote_last(tmp_path):
    journal = lease_journal(tmp_path)
    worker = sleeping_worker(30)
    stale = Journal.load(journal.dir_fd, journal.directory, journal.name)
    journal.record("target_restored", sealed_sent=True)  # the worker's last write, after the keeper's first look
    started = time.monotonic()
    driver._keep_lease(worker, stale)
    assert time.monotonic() - started < 5, "killed at once, not waited for"
    on_disk = Journal.load(journal.dir_fd, journal.directory, journal.name)
    assert on_disk.get("sealed_sent") is True, "the worker's last write must survive the keeper's"
    assert on_disk.get("error") == "the lease of 5s ran out before a decision" and on_disk.phase == "target_restored"


def test_the_callers_ssh_args_cannot_turn_off_what_the_migration_rests_on():
    """ssh takes the first value of an option: an inventory's usual -o ControlMaster=auto -o ControlPersist=60s (or a
    ControlPath, or BatchMode=no) given as extra args came first and won. Those come first now; the rest stays the
    caller's to tune."""
    extra = ("-o", "ControlMaster=auto", "-o", "ControlPath=/tmp/mux", "-o", "ControlPersist=60s", "-o", "BatchMode=no",
             "-o", "ConnectTimeout=3")
    argv = remote.SshTarget("b", extra_args=extra).argv(["true"])

    def first(option):
        return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(option + "="))
    assert (first("ControlMaster"), first("ControlPath"), first("ControlPersist"), first("BatchMode")) == ("no", "none", "no", "yes")
    assert first("ConnectTimeout") == "3", "the caller still tunes the rest"


def workload_key(process, container):
    """A migration's claim on a workload, as its kind names it (the journal's record of a container, if any)."""
    record = {"container": container}
    return kinds.of(record).claim_key(process, record)


def test_one_migration_claims_a_workload_whatever_its_name(tmp_path):
    """Two controllers, two names, one process: the claim is keyed by what the workload is, not by a name."""
    process = {"pid": 4242, "starttime": 777}
    assert workload_key(process, None) == "pid-4242-777"
    assert workload_key(process, {"id": "c" * 64}) == "container-" + "c" * 64
    with dir_fd(tmp_path) as fd:
        first = DriverLock.for_workload(fd, workload_key(process, None))
        second = DriverLock.for_workload(fd, workload_key(process, None))
        other = DriverLock.for_workload(fd, workload_key(dict(process, starttime=778), None))
        assert first.try_acquire() and not second.try_acquire() and other.try_acquire()
        assert sorted(os.listdir(tmp_path)) == [".workload.pid-4242-777.lock", ".workload.pid-4242-778.lock"]
        first.release()
        assert second.try_acquire()
        second.release()
        other.release()


def _stopped_source_advice(monkeypatch, answer):
    """_preflight._stopped_source with the target's preflight answering ``answer`` (a CriuError: unreachable)."""
    def ask(*_args, **_kwargs):
        if isinstance(answer, CriuError):
            raise answer
        return {"journal": answer}
    monkeypatch.setattr(remote, "ask", ask)
    settings = Settings(name="web", directory="/var/lib/nucleus-criu/migrations", target=remote.SshTarget("b"),
                        mode="copy", lease=60, timeout=60, key=None, algorithm="sha256", criu={},
                        target_pidfile=None, cleanup="all")
    return preflight._stopped_source(settings, b"", 4242, "id")  # pylint: disable=protected-access


def test_a_stopped_source_without_a_journal_is_resumed_only_when_the_target_knows_no_such_migration(monkeypatch):
    """A stopped process with no journal here: the advice depends on what the target holds (a lost journal may have
    frozen it), and only "nothing there either" says to resume it."""
    assert "Resume it (kill -CONT 4242)" in _stopped_source_advice(monkeypatch, None)
    ran = _stopped_source_advice(monkeypatch, {"id": "x", "phase": "completed", "outcome": "completed"})
    assert "Do not resume it" in ran and "kill -KILL 4242" in ran and "kill -CONT" not in ran
    held = _stopped_source_advice(monkeypatch, {"id": "x", "phase": "restored", "outcome": None})
    assert "Do not resume it while the target holds the migration" in held and "phase restored" in held
    unknown = _stopped_source_advice(monkeypatch, CriuError("ssh: connection refused"))
    assert "Do not resume it before you know" in unknown and "connection refused" in unknown


def test_every_key_of_the_migration_result_is_documented(tmp_path):
    """criu_migrate's RETURN lists every key report() returns (the migrate role reads some of them), and no other."""
    import yaml  # pylint: disable=import-outside-toplevel  # ansible-core's own dependency
    from ansible_collections.nucleus.criu.plugins.modules import criu_migrate  # pylint: disable=import-outside-toplevel
    with dir_fd(tmp_path) as fd:
        journal = Journal.create(os.dup(fd), str(tmp_path), "web", "completed", id="1", role="source", outcome="completed",
                                 mode="copy", process={"pid": 100, "tree": []}, target={"label": "b", "host": "b"})
    returned = migrate.report(journal, True, {})["migration"]
    documented = yaml.safe_load(criu_migrate.RETURN)["migration"]["contains"]
    assert sorted(returned) == sorted(documented)


def test_ssh_words_leave_out_the_known_hosts_notice_and_carriage_returns():
    said = ("Warning: Permanently added '[127.0.0.4]:2772' (ED25519) to the list of known hosts.\r\n"
            "Connection to 127.0.0.4 closed by remote host.\r\n")
    assert remote.ssh_words(said) == "Connection to 127.0.0.4 closed by remote host."
    assert remote.ssh_words("Warning: something else\r\nTraceback ...\n") == "Warning: something else\nTraceback ..."
    assert remote.ssh_words("") == ""
