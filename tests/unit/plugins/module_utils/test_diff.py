"""What --diff shows (_diff): small views of a checkpoint and of a restored copy, safe on metadata not yet verified."""

from ansible_collections.nucleus.criu.plugins.module_utils.storage import _diff as diff_
from .mu_helpers import metadata_for

MANIFEST = [{"path": "core-42.img", "size": 100, "chunks": []}, {"path": "pages-1.img", "size": 4096, "chunks": []}]


def test_a_checkpoint_shows_what_tells_it_apart_never_its_manifest_or_arguments():
    metadata = metadata_for(MANIFEST, process={"pid": 42, "comm": "python3", "cmdline": ["python3", "--token=secret"]})
    assert diff_.checkpoint(metadata) == {"id": metadata["id"], "name": "job", "created_at": metadata["created_at"],
                                          "pid": 42, "comm": "python3", "image_bytes": 4196}


def test_a_container_checkpoint_shows_the_container():
    metadata = metadata_for(MANIFEST[:1], process={"pid": 42, "comm": "sleep"}, container={"name": "web", "id": "f" * 64})
    assert diff_.checkpoint(metadata) == {"id": metadata["id"], "name": "job", "created_at": metadata["created_at"],
                                          "container": "web", "pid": 42, "image_bytes": 100}


def test_metadata_of_the_wrong_shape_shows_only_what_has_the_right_one():
    """A checkpoint about to be replaced or deleted is shown unverified: nothing of an unexpected type is passed on."""
    odd = {"id": ["not", "a", "string"], "name": True, "created_at": {"x": 1}, "process": "pid 42",
           "manifest": [{"size": "big"}, "entry", {"size": 7}]}
    assert diff_.checkpoint(odd) == {"image_bytes": 7}
    assert diff_.checkpoint({"container": {"name": 5}, "process": {"pid": None}}) == {"container": 5}
    assert diff_.checkpoint({}) == {}


def test_checkpoints_by_path_leave_out_a_path_holding_none():
    metadata = metadata_for(MANIFEST)
    assert diff_.checkpoints({"/c/a": metadata, "/c/b": None}) == {"/c/a": diff_.checkpoint(metadata)}


def test_a_checkpoint_to_come_shows_only_what_is_known_before_the_dump():
    assert diff_.new_checkpoint("job", 42, "python3") == {"name": "job", "pid": 42, "comm": "python3"}
    assert diff_.new_checkpoint("web", 42, container="web") == {"name": "web", "container": "web", "pid": 42}


def test_a_restored_copy_and_one_to_come():
    record = {"pid": 42, "starttime": 1, "boot_id": "b", "host": "h", "checkpoint_id": "c", "restored_at": "t",
              "container_id": "f" * 64, "container_name": "web-copy"}
    assert diff_.restored(record) == {"pid": 42, "checkpoint_id": "c", "restored_at": "t", "container": "web-copy"}
    assert diff_.restored(None) == {}
    assert diff_.new_restore("c") == {"checkpoint_id": "c"}
    assert diff_.new_restore("c", "web-copy") == {"checkpoint_id": "c", "container": "web-copy"}


def test_a_restore_diff_names_the_checkpoint_in_its_header():
    record = {"pid": 42, "checkpoint_id": "c", "restored_at": "t"}
    assert diff_.restore("/ck/job", None, diff_.new_restore("c")) == {
        "before": {}, "after": {"checkpoint_id": "c"},
        "before_header": "copy restored from /ck/job", "after_header": "copy restored from /ck/job"}
    assert diff_.restore("/ck/job", record, diff_.restored(record))["before"] == {"pid": 42, "checkpoint_id": "c", "restored_at": "t"}


def test_diff_copies_before_and_after():
    before = {"a": 1}
    shown = diff_.diff(before, before)
    before["a"] = 2
    assert shown == {"before": {"a": 1}, "after": {"a": 1}}
