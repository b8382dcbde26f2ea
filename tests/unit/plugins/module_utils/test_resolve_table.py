"""The migration's decisions as data: _recovery.resolve over every journal the kill matrix can leave on the source
(phase, decision, mode, process or container, export sealed or not, a source whose frozen tree is lost), every answer the target can give (or none),
and a source that can or cannot run again. The hosts are stood in for; what is checked is what resolve decides and
does: the outcome, and whether the source was resumed or ended and the target told. The end-to-end kill matrix keeps
one case per actor and phase class; these cover every combination.

For each case: the outcome the protocol's rules give (``expected``, written from the design, not from the code), the
safety properties that must hold whatever the rules say, and that a settled outcome is never decided again.
"""

import itertools
import os
import typing as t

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.migration import _recovery as recovery
from ansible_collections.nucleus.criu.plugins.module_utils.migration._settings import Settings
from ansible_collections.nucleus.criu.plugins.module_utils.migration import _remote as remote
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from ansible_collections.nucleus.criu.plugins.module_utils.migration._journal import Journal
from .mu_helpers import dir_fd

# The source journals a migration can be left in: (phase, decision). A commit is written with its decision.
JOURNALS = [("prepared", None), ("freezing", None), ("frozen", None), ("target_restored", None), ("pages_complete", None),
            ("aborting", "abort"), ("target_restored", "commit"), ("committed", "commit"), ("completed", "commit")]
# "lost process": its frozen tree died (the source host crashed and rebooted, or it was killed).
KINDS = [("process", "copy"), ("process", "postcopy"), ("container", "copy"), ("sealed container", "copy"),
         ("lost process", "copy"), ("lost process", "postcopy")]
# What the target answers to any decision: unreachable, or where its side stands.
ANSWERS = [None, "aborted", "absent", "completed", "never_ran", "restored", "restored_incomplete", "pages_complete", "receiving"]
LOST_TREE = [[os.getpid(), 1]]  # a pid that runs, but with another start time: not the process frozen
CASES = list(itertools.product(JOURNALS, KINDS, ANSWERS, [False, True]))
IDS = ["%s/%s-%s-%s-%s%s" % (phase, decision, kind.replace(" ", "_"), mode, answer, "-resume_fails" if fails else "")
       for (phase, decision), (kind, mode), answer, fails in CASES]


class Hosts:
    """Both hosts stood in for: what resolve asked of each, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: t.Optional[str], resume_fails: bool) -> None:
        self.calls: t.List[str] = []

        def ask(_settings, _code, _journal, decision):
            self.calls.append("target:" + decision)
            return None if answer is None else {"state": answer, "pid": 4242}

        def resume(_journal):
            self.calls.append("resume")
            if resume_fails:
                raise CriuError("the source is gone")

        monkeypatch.setattr(recovery, "_ask_target", ask)
        monkeypatch.setattr(recovery, "resume_source", resume)
        monkeypatch.setattr(recovery, "end_source", lambda _journal: self.calls.append("end"))
        monkeypatch.setattr(recovery, "stop_criu", lambda _journal: self.calls.append("stop criu"))
        monkeypatch.setattr(recovery, "cleanup_source", lambda _journal, _settings: None)


def resolved(tmp_path, monkeypatch, case) -> t.Tuple[Journal, Hosts]:
    (phase, decision), (kind, mode), answer, resume_fails = case
    hosts = Hosts(monkeypatch, answer, resume_fails)
    container = {"id": "f" * 64, "name": "web"} if kind.endswith("container") else None
    with dir_fd(tmp_path) as fd:
        journal = Journal.create(os.dup(fd), str(tmp_path), "web", phase, id="1", role="source", outcome=None, mode=mode,
                                 decision=decision, container=container, sealed_sent=kind == "sealed container",
                                 process={"pid": 100, "tree": LOST_TREE if kind == "lost process" else []})
    settings = Settings("web", str(tmp_path), remote.SshTarget("b"), mode, 60.0, 60.0, None, "sha256", {}, None, "all")
    recovery.resolve(journal, settings, b"")
    return journal, hosts


def expected(case) -> t.Tuple[str, bool]:
    """The outcome the protocol's rules give, and whether the source runs again (resume attempted)."""
    (phase, decision), (kind, mode), answer, resume_fails = case
    if kind == "lost process" and decision is None and phase in recovery.FROZEN and (
            answer == "pages_complete" or (answer == "restored" and mode == "copy")):
        decision = "commit"  # the source can never run again: the target's whole copy is all that is left
    if decision == "commit" or (phase == "target_restored" and kind.endswith("container")):
        # A container the target restored runs there: a recovery commits it rather than discard its work.
        if answer == "completed":
            return "completed", False
        if answer == "never_ran":  # the target's stopped copy died before it ran: the frozen source runs instead
            return ("in_doubt" if resume_fails else "rolled_back"), True
        return "in_doubt", False  # never guess after a commit
    if phase == "prepared":  # nothing frozen yet
        return "rolled_back", False
    copy_stopped_on_target = mode == "copy" and kind != "sealed container"
    if copy_stopped_on_target or answer in ("aborted", "absent"):
        return ("in_doubt" if resume_fails else "rolled_back"), True
    return "in_doubt", False  # post-copy or a sealed container: its copy may run there until the target says it is gone


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_resolve(tmp_path, monkeypatch, case):
    """The rules' outcome; whatever the rules, exactly once (a source that runs again never has a copy running on the
    target, a completed migration ends its source, only a confirmed commit completes); and a settled outcome is never
    decided again (a rerun resumes or ends nothing twice)."""
    (_phase, _decision), (kind, mode), answer, _fails = case
    journal, hosts = resolved(tmp_path, monkeypatch, case)
    calls, outcome = hosts.calls, journal.get("outcome")
    want, resumes = expected(case)
    assert (outcome, "resume" in calls) == (want, resumes), (calls, journal.get("error"))
    if outcome == "in_doubt":
        assert journal.get("error"), "an in-doubt outcome says why"
    if "resume" in calls:
        assert "end" not in calls
        if (mode == "postcopy" or kind == "sealed container") and "target:commit" not in calls:
            # Its copy could be running there: the source runs only after the target confirmed it is gone.
            assert "target:abort" in calls and calls.index("target:abort") < calls.index("resume") and answer in ("aborted", "absent")
        if "target:commit" in calls:
            assert answer == "never_ran", "after a commit the source runs only when the target's copy never ran"
    if outcome == "completed":
        assert calls[-1] == "end" and answer == "completed"
    if kind == "lost process" and _decision is None and "target:commit" in calls:
        # A recovery commits for a lost source only a copy the target said was whole, asked before anything else.
        assert calls[0] == "target:query" and (answer == "pages_complete" or (answer == "restored" and mode == "copy")), calls
    if outcome in ("completed", "rolled_back"):
        again = Hosts(monkeypatch, answer, False)
        recovery.resolve(journal, Settings("web", str(tmp_path), remote.SshTarget("b"), mode, 60.0, 60.0, None, "sha256",
                                           False, None, "all"), b"")
        assert again.calls == [], "a settled migration is decided once"


def test_a_container_whose_lease_ran_out_is_undone_even_once_the_target_runs_it(tmp_path, monkeypatch):
    """The lease bounds the wait for a decision: run out, the keeper decides abort, even for a container the target
    already runs (a recovery commits one only while its lease holds)."""
    hosts = Hosts(monkeypatch, "aborted", False)
    with dir_fd(tmp_path) as fd:
        journal = Journal.create(os.dup(fd), str(tmp_path), "web", "target_restored", id="1", role="source", outcome=None,
                                 mode="copy", decision=None, container={"id": "f" * 64, "name": "web"}, sealed_sent=True,
                                 lease_expired=True, process={"pid": 100, "tree": []})
    recovery.resolve(journal, Settings("web", str(tmp_path), remote.SshTarget("b"), "copy", 60.0, 60.0, None, "sha256",
                                       False, None, "all"), b"")
    assert hosts.calls[0] == "target:abort" and "target:commit" not in hosts.calls and journal.get("outcome") == "rolled_back"
