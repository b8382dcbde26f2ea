"""Checkpoints as managed objects (_lifecycle): delete one, list them, keep the newest N of a name."""

import datetime
import os
import shutil

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.operations import _lifecycle as lifecycle
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _store as store
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import KEY, make_checkpoint, write_metadata


def _at(day):
    return "2025-01-%02dT00:00:00.000000Z" % day


def _ckpt(path, name="job", day=1, **kw):
    """A valid checkpoint at ``path`` named ``name``, made on January ``day`` 2025."""
    return make_checkpoint(path, name=name, created_at=_at(day), **kw)


def _info(path, **given):
    return argspec.CHECKPOINT_INFO.request(argspec.CHECKPOINT_INFO.defaults(**dict({"path": str(path), "timeout": 30}, **given)))


def _paths(found):
    return [entry["path"] for entry in found]


# --- delete ---------------------------------------------------------------------------------------


def test_delete_removes_a_checkpoint_with_its_litter_and_failed_log(tmp_path):
    _ckpt(tmp_path / "ckpt")
    (tmp_path / ".ckpt.staging-0123abcd" / "images").mkdir(parents=True)
    (tmp_path / ".ckpt.dump-failed.log").write_text("old failure")
    _ckpt(tmp_path / "other")
    (tmp_path / ".other.dump-failed.log").write_text("not ours to delete")
    result = lifecycle.delete(str(tmp_path / "ckpt"), 5, False)
    assert result.pop("diff")["after"] == {}
    assert result == {"dest": str(tmp_path / "ckpt"), "changed": True, "actions": ["Delete the checkpoint %s" % (tmp_path / "ckpt")]}
    assert sorted(os.listdir(tmp_path)) == [".other.dump-failed.log", "other"]  # no lock left either
    # deleting what is not there changes nothing
    assert lifecycle.delete(str(tmp_path / "ckpt"), 5, False) == {"dest": str(tmp_path / "ckpt"), "changed": False, "actions": [],
                                                                  "diff": {"before": {}, "after": {}}}


def test_delete_in_check_mode_changes_nothing(tmp_path):
    metadata = _ckpt(tmp_path / "ckpt")
    result = lifecycle.delete(str(tmp_path / "ckpt"), 5, True)
    assert result == {"dest": str(tmp_path / "ckpt"), "changed": True, "actions": ["would delete the checkpoint %s" % (tmp_path / "ckpt")],
                      "diff": {"before": {str(tmp_path / "ckpt"): {"id": metadata["id"], "name": "job", "created_at": _at(1),
                                                                   "pid": 4242, "image_bytes": len(b"inventory")}},
                               "after": {}}}
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    with open(tmp_path / "ckpt" / "metadata.json", "rb") as handle:
        assert integrity.parse_metadata(handle.read())[0] == metadata


def test_delete_removes_a_signed_and_a_schema_1_checkpoint(tmp_path):
    _ckpt(tmp_path / "signed", key=KEY)
    _ckpt(tmp_path / "old", schema=1)
    for name in ("signed", "old"):
        assert lifecycle.delete(str(tmp_path / name), 5, False)["changed"] is True
    assert os.listdir(tmp_path) == []


def _foreign_dir(path):
    path.mkdir()
    (path / "precious.db").write_text("x")


def _foreign_with_bad_metadata(path):
    path.mkdir()
    (path / "images").mkdir()
    (path / "metadata.json").write_text("not json")


def _foreign_metadata_without_schema(path):
    path.mkdir()
    (path / "metadata.json").write_text('{"name": "job"}')


@pytest.mark.parametrize("make, message", [
    (_foreign_dir, "is not a checkpoint directory made by nucleus.criu .*; state=absent deletes only those"),
    (_foreign_with_bad_metadata, "is not a checkpoint directory made by nucleus.criu"),
    (_foreign_metadata_without_schema, "is not a checkpoint directory made by nucleus.criu"),
    (lambda path: path.write_text("a file"), "exists and is not a directory"),
])
def test_delete_refuses_what_is_not_a_checkpoint(tmp_path, make, message):
    make(tmp_path / "dest")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for check_mode in (True, False):
        with pytest.raises(CriuError, match="Refusing to delete %s: .*%s" % (tmp_path / "dest", message)) as err:
            lifecycle.delete(str(tmp_path / "dest"), 5, check_mode)
        assert err.value.details["path"] == str(tmp_path / "dest")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_delete_refuses_a_symlink_and_leaves_its_target(tmp_path):
    _ckpt(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(CriuError, match="Refusing to delete .*link: .*is a symlink"):
        lifecycle.delete(str(tmp_path / "link"), 5, False)
    assert sorted(os.listdir(tmp_path)) == ["link", "real"] and (tmp_path / "real" / "metadata.json").is_file()


def test_delete_refuses_a_checkpoint_writable_by_others(tmp_path):
    _ckpt(tmp_path / "ckpt")
    os.chmod(tmp_path / "ckpt", 0o777)
    with pytest.raises(CriuError, match="Refusing to delete .*writable by group/others"):
        lifecycle.delete(str(tmp_path / "ckpt"), 5, False)
    assert (tmp_path / "ckpt" / "metadata.json").is_file()


def test_delete_refuses_an_untrusted_parent(tmp_path):
    (tmp_path / "shared").mkdir()
    _ckpt(tmp_path / "shared" / "ckpt")
    os.chmod(tmp_path / "shared", 0o777)
    with pytest.raises(CriuError, match="writable by group/others"):
        lifecycle.delete(str(tmp_path / "shared" / "ckpt"), 5, False)
    assert (tmp_path / "shared" / "ckpt" / "metadata.json").is_file()


def test_delete_waits_for_the_lock(tmp_path):
    _ckpt(tmp_path / "ckpt")
    with store.location(str(tmp_path / "ckpt")) as loc, store.Lock(loc, 5):
        with pytest.raises(CriuError, match="holds the lock"):
            lifecycle.delete(str(tmp_path / "ckpt"), 0.1, False)
    assert (tmp_path / "ckpt" / "metadata.json").is_file()


def test_delete_leaves_an_empty_directory_alone(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CriuError, match="is an empty directory, not a checkpoint made by nucleus.criu"):
        lifecycle.delete(str(tmp_path / "empty"), 5, False)
    assert (tmp_path / "empty").is_dir()


# --- _candidates ----------------------------------------------------------------------------------


def test_candidates_skip_files_links_and_dot_entries(tmp_path):
    _ckpt(tmp_path / "a")
    _ckpt(tmp_path / "b")
    _ckpt(tmp_path / ".hidden")  # a checkpoint, but a dot-entry (as staging and swapped-out directories are)
    _ckpt(tmp_path / ".ckpt.staging-0123abcd")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    os.mkfifo(tmp_path / "fifo")
    _ckpt(tmp_path / "open-to-all")
    os.chmod(tmp_path / "open-to-all", 0o777)  # cannot be trusted: not opened
    seen = [(loc.path, opened.path, os.readlink("/proc/self/fd/%d" % opened.fd))
            for loc, opened in lifecycle._candidates(lifecycle._targets(str(tmp_path)))]
    assert seen == [(str(tmp_path / name),) * 3 for name in ("a", "b")]


def test_candidates_open_every_plain_directory_and_leave_the_metadata_to_the_callers(tmp_path):
    """A directory that is no checkpoint is opened too: listing and prune read its metadata and pass it by."""
    _ckpt(tmp_path / "a")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.db").write_text("x")
    found = [(loc.path, lifecycle._metadata(opened)) for loc, opened in lifecycle._candidates(lifecycle._targets(str(tmp_path)))]
    assert [path for path, _metadata in found] == [str(tmp_path / "a"), str(tmp_path / "data")]
    assert found[0][1]["name"] == "job" and found[1][1] is None


def test_candidates_of_a_checkpoint_directory_is_itself(tmp_path):
    _ckpt(tmp_path / "ckpt")
    _ckpt(tmp_path / "ckpt" / "images" / "nested")  # never looked into
    assert [loc.path for loc, _opened in lifecycle._candidates(lifecycle._targets(str(tmp_path / "ckpt")))] == [str(tmp_path / "ckpt")]


def test_candidates_close_what_they_open(tmp_path):
    for name in ("a", "b", "c"):
        _ckpt(tmp_path / name)
    before = sorted(os.listdir("/proc/self/fd"))
    assert len(list(lifecycle._candidates(lifecycle._targets(str(tmp_path))))) == 3
    assert sorted(os.listdir("/proc/self/fd")) == before


def test_candidates_refuse_an_untrusted_directory(tmp_path):
    (tmp_path / "shared").mkdir()
    _ckpt(tmp_path / "shared" / "a")
    os.chmod(tmp_path / "shared", 0o777)
    with pytest.raises(CriuError, match="writable by group/others"):
        list(lifecycle._candidates(lifecycle._targets(str(tmp_path / "shared"))))


# --- prune ----------------------------------------------------------------------------------------


def test_prune_keeps_the_newest_of_a_name(tmp_path):
    for day in (1, 2, 3, 4):
        _ckpt(tmp_path / ("job-%d" % day), day=day)
    _ckpt(tmp_path / "other-0", name="other", day=1)
    _ckpt(tmp_path / ".job-0", day=1)  # a dot-entry is never looked at
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.db").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    with store.location(str(tmp_path / "job-4")) as loc:
        removed = list(lifecycle.prune(loc, "job", 2, 5, None))
    assert removed == [str(tmp_path / "job-2"), str(tmp_path / "job-1")]  # newest first
    assert sorted(os.listdir(tmp_path)) == [".job-0", "data", "job-3", "job-4", "notes.txt", "other-0"]
    assert (tmp_path / "data" / "precious.db").read_text() == "x"
    for name in ("job-3", "job-4", "other-0", ".job-0"):
        assert (tmp_path / name / "metadata.json").is_file()
    with store.location(str(tmp_path / "job-4")) as loc:
        assert list(lifecycle.prune(loc, "job", 2, 5, None)) == []  # nothing more to do


def test_prune_keeps_the_one_at_loc_even_when_it_is_not_among_the_newest(tmp_path):
    _ckpt(tmp_path / "later", day=9)
    _ckpt(tmp_path / "here", day=5)
    _ckpt(tmp_path / "older", day=1)
    with store.location(str(tmp_path / "here")) as loc:
        assert list(lifecycle.prune(loc, "job", 1, 5, None)) == [str(tmp_path / "older")]
    assert sorted(os.listdir(tmp_path)) == ["here", "later"]


def test_prune_leaves_what_it_cannot_read_as_a_checkpoint_of_that_name(tmp_path):
    _ckpt(tmp_path / "now", day=9)
    _ckpt(tmp_path / "old", day=1)
    metadata = _ckpt(tmp_path / "broken", day=2)
    write_metadata(tmp_path / "broken", dict(metadata, manifest=[]))  # no longer parses: not known to be ours
    _ckpt(tmp_path / "untrusted", day=3)
    os.chmod(tmp_path / "untrusted", 0o777)
    _ckpt(tmp_path / "other-case", name="Job", day=4)  # names are compared exactly
    with store.location(str(tmp_path / "now")) as loc:
        assert list(lifecycle.prune(loc, "job", 1, 5, None)) == [str(tmp_path / "old")]
    assert sorted(os.listdir(tmp_path)) == ["broken", "now", "other-case", "untrusted"]


def test_prune_counts_and_deletes_only_what_verifies(tmp_path):
    """Two image-less, unsigned directories of the same name and a far-future created_at made a keyed keep=2 delete
    both genuine signed checkpoints, and held their places for good. Only checkpoints with their images, signed with
    the key when there is one, count or go."""
    _ckpt(tmp_path / "now", day=9, key=KEY)
    _ckpt(tmp_path / "genuine", day=5, key=KEY)
    for name in ("forged-1", "forged-2"):
        _ckpt(tmp_path / name, day=28)
        shutil.rmtree(tmp_path / name / "images")
    _ckpt(tmp_path / "unsigned", day=27)
    with store.location(str(tmp_path / "now")) as loc:
        assert list(lifecycle.prune(loc, "job", 2, 5, KEY)) == []
        assert list(lifecycle.prune(loc, "job", 1, 5, KEY)) == [str(tmp_path / "genuine")]
    assert sorted(os.listdir(tmp_path)) == ["forged-1", "forged-2", "now", "unsigned"]
    with store.location(str(tmp_path / "now")) as loc:  # without a key the unsigned one counts, the image-less never
        assert list(lifecycle.prune(loc, "job", 2, 5, None)) == []


def test_a_name_too_long_to_be_a_checkpoint_stops_neither_keep_nor_the_listing(tmp_path):
    _ckpt(tmp_path / "now", day=9)
    _ckpt(tmp_path / "old", day=1)
    (tmp_path / ("x" * 240)).mkdir()
    assert _paths(lifecycle.listing(_info(tmp_path))["checkpoints"]) == [str(tmp_path / "now"), str(tmp_path / "old")]
    with store.location(str(tmp_path / "now")) as loc:
        assert list(lifecycle.prune(loc, "job", 1, 5, None)) == [str(tmp_path / "old")]


def test_surplus_predicts_what_prune_deletes_with_the_dump_still_to_come(tmp_path):
    """Check mode: the dump to come at loc is the newest; what loc holds now (force replaces it) does not count."""
    for day in (1, 2, 3):
        _ckpt(tmp_path / ("job-%d" % day), day=day)
    with store.location(str(tmp_path / "job-2")) as loc:
        predicted = lifecycle.surplus(loc, "job", 2, 5, None, _at(9))
        assert list(predicted) == [str(tmp_path / "job-1")]
        assert predicted[str(tmp_path / "job-1")]["created_at"] == _at(1)
    with store.location(str(tmp_path / "job-4")) as loc:  # a new dest
        assert list(lifecycle.surplus(loc, "job", 2, 5, None, _at(9))) == [str(tmp_path / "job-2"), str(tmp_path / "job-1")]
    assert sorted(os.listdir(tmp_path)) == ["job-1", "job-2", "job-3"]  # nothing deleted


def test_prune_returns_the_metadata_of_what_it_deleted(tmp_path):
    _ckpt(tmp_path / "now", day=9)
    old = _ckpt(tmp_path / "old", day=1)
    with store.location(str(tmp_path / "now")) as loc:
        assert lifecycle.prune(loc, "job", 1, 5, None) == {str(tmp_path / "old"): old}


def test_prune_waits_for_a_locked_checkpoint(tmp_path):
    _ckpt(tmp_path / "now", day=9)
    _ckpt(tmp_path / "old", day=1)
    with store.location(str(tmp_path / "old")) as other, store.Lock(other, 5):
        with store.location(str(tmp_path / "now")) as loc:
            with pytest.raises(CriuError, match="holds the lock"):
                lifecycle.prune(loc, "job", 1, 0.1, None)
    assert sorted(os.listdir(tmp_path)) == ["now", "old"]


# --- listing --------------------------------------------------------------------------------------


def test_listing_sorts_newest_first_and_filters_by_name(tmp_path):
    _ckpt(tmp_path / "b-old", name="b", day=1)
    _ckpt(tmp_path / "a-new", name="a", day=3)
    _ckpt(tmp_path / "a-old", name="a", day=2)
    _ckpt(tmp_path / ".a-hidden", name="a", day=4)
    (tmp_path / "data").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    result = lifecycle.listing(_info(tmp_path))
    assert result["changed"] is False and result["path"] == str(tmp_path)
    assert _paths(result["checkpoints"]) == [str(tmp_path / n) for n in ("a-new", "a-old", "b-old")]
    assert _paths(lifecycle.listing(_info(tmp_path, name="a"))["checkpoints"]) == [str(tmp_path / "a-new"), str(tmp_path / "a-old")]
    assert lifecycle.listing(_info(tmp_path, name="none"))["checkpoints"] == []
    assert lifecycle.listing(_info(str(tmp_path) + "/"))["path"] == str(tmp_path)


def test_listing_describes_each_checkpoint_without_its_arguments(tmp_path):
    metadata = _ckpt(tmp_path / "ckpt", key=KEY, process={"pid": 42, "comm": "app", "tree": [42], "cmdline": ["app", "--token", "s3cret"]},
                     options={"shell_job": False, "tcp_established": True, "ghost_limit": None, "cgroup_root": []},
                     source={"hostname": "h", "boot_id": "b", "arch": "x86_64", "kernel": "6.1"})
    [entry] = lifecycle.listing(_info(tmp_path))["checkpoints"]
    age = entry.pop("age_seconds")
    expected_age = (datetime.datetime.now(datetime.timezone.utc)
                    - datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds()
    assert abs(age - expected_age) < 60
    assert entry == {
        "path": str(tmp_path / "ckpt"), "id": metadata["id"], "name": "job", "created_at": _at(1),
        "process": {"pid": 42, "comm": "app"}, "source": {"hostname": "h", "arch": "x86_64", "kernel": "6.1"},
        "criu_version": "4.2.0", "schema_version": 2, "size_bytes": len(b"inventory"), "signed": True,
        "options": {"tcp_established": True}, "container": None}
    assert "s3cret" not in repr(entry)


def test_a_container_checkpoint_is_listed_with_its_container_and_no_parsed_details():
    entry = {"valid": True, "container": {"engine": "podman", "name": "web"}}
    found = lifecycle.details("/nonexistent/criu", None, entry, 60)
    assert "Podman's export" in found["unavailable"]
    assert "does not verify" in lifecycle.details("/nonexistent/criu", None, dict(entry, valid=False), 60)["unavailable"]


def test_listing_of_a_checkpoint_directory_itself(tmp_path):
    _ckpt(tmp_path / "ckpt")
    assert _paths(lifecycle.listing(_info(tmp_path / "ckpt"))["checkpoints"]) == [str(tmp_path / "ckpt")]


def test_listing_with_verify_says_which_are_valid(tmp_path):
    _ckpt(tmp_path / "good", day=2)
    _ckpt(tmp_path / "bad", day=1)
    (tmp_path / "bad" / "images" / "inventory.img").write_bytes(b"Inventory")
    assert "valid" not in lifecycle.listing(_info(tmp_path))["checkpoints"][0]
    good, bad = lifecycle.listing(_info(tmp_path, verify=True))["checkpoints"]
    assert (good["path"], good["valid"], good["problems"]) == (str(tmp_path / "good"), True, [])
    assert bad["path"] == str(tmp_path / "bad") and bad["valid"] is False
    assert len(bad["problems"]) == 1 and bad["problems"][0].startswith("images/inventory.img: sha256 expected")


def test_listing_with_verify_checks_signatures_with_the_key_given(tmp_path):
    _ckpt(tmp_path / "signed", key=KEY)
    [entry] = lifecycle.listing(_info(tmp_path, verify=True))["checkpoints"]
    assert entry["valid"] is True  # without a key, listing skips the signature check (the images are still checked)
    [entry] = lifecycle.listing(_info(tmp_path, verify=True, hmac_key="wrong key 0123456789"))["checkpoints"]
    assert entry["valid"] is False and "checkpoint.hmac does not match" in entry["problems"][0]
    [entry] = lifecycle.listing(_info(tmp_path, verify=True, hmac_key=KEY.decode()))["checkpoints"]
    assert entry["valid"] is True


def test_listing_details_parse_only_checkpoints_that_verify(tmp_path, monkeypatch):
    _ckpt(tmp_path / "good", day=2)
    _ckpt(tmp_path / "bad", day=1)
    (tmp_path / "bad" / "images" / "inventory.img").write_bytes(b"Inventory")
    parsed = []
    monkeypatch.setattr(lifecycle.binary, "discover", lambda criu_path: "/opt/criu/sbin/criu" if criu_path is None else criu_path)
    monkeypatch.setattr(lifecycle.inspect_, "inspect",
                        lambda criu_path, opened, _timeout: parsed.append((criu_path, opened.path)) or {"processes": [], "memory_bytes": 0})
    good, bad = lifecycle.listing(_info(tmp_path, details=True))["checkpoints"]
    assert parsed == [("/opt/criu/sbin/criu", str(tmp_path / "good"))]  # never the images of one that does not verify
    assert good["valid"] is True and good["details"] == {"processes": [], "memory_bytes": 0}
    assert bad["valid"] is False and bad["details"] == {"unavailable": "it does not verify, so its images are not parsed"}


def test_listing_without_details_needs_no_criu(tmp_path, monkeypatch):
    _ckpt(tmp_path / "ckpt")
    monkeypatch.setattr(lifecycle.binary, "discover", lambda *a: pytest.fail("criu is not needed"))
    monkeypatch.setattr(lifecycle.inspect_, "inspect", lambda *a: pytest.fail("images are not parsed"))
    [entry] = lifecycle.listing(_info(tmp_path, verify=True))["checkpoints"]
    assert "details" not in entry


def test_listing_never_changes_anything(tmp_path):
    _ckpt(tmp_path / "a")
    (tmp_path / "data").mkdir()
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    lifecycle.listing(_info(tmp_path, verify=True))
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_listing_refuses_an_untrusted_directory(tmp_path):
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o777)
    with pytest.raises(CriuError, match="writable by group/others"):
        lifecycle.listing(_info(tmp_path / "shared"))


def test_listing_of_a_missing_directory_says_it_is_missing(tmp_path):
    result = lifecycle.listing(_info(tmp_path / "none"))
    assert result["exists"] is False and result["checkpoints"] == [] and result["path"] == str(tmp_path / "none")
