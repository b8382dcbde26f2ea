"""The criu options table (_options): validation, argv, what a restore replays, what the images need."""

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec as argspec
from ansible_collections.nucleus.criu.plugins.module_utils.criu import _options as options
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError


@pytest.mark.parametrize("value, expected", [
    (1, 1), (8388608, 8388608), ("8M", 8 << 20), ("512k", 512 << 10), ("1G", 1 << 30), ("64MiB", 64 << 20), (" 3 ", 3),
])
def test_parse_size(value, expected):
    assert options.parse_size(value, "ghost_limit") == expected


@pytest.mark.parametrize("value, words", [("lots", "is not a size"), ("8T", "is not a size"), (0, "between"), ("0M", "between"),
                                          (-5, "between"), ("2000G", "between")])
def test_parse_size_refuses(value, words):
    with pytest.raises(CriuError, match=words):
        options.parse_size(value, "ghost_limit")


def test_every_option_is_in_the_argument_specs_where_it_applies():
    for option in options.OPTIONS:
        assert (option.name in argspec.CHECKPOINT.argument_spec) == option.at_dump, option
        assert (option.name in argspec.RESTORE.argument_spec) == option.at_restore, option


def test_dump_argv_from_checkpoint_defaults_is_the_network_lock_only():
    chosen = options.normalise(argspec.CHECKPOINT.defaults(pid=1, dest="/x"), "dump")
    assert options.argv(chosen, "dump") == ["--network-lock=nftables"]


def test_dump_argv_for_every_kind():
    chosen = options.normalise(argspec.CHECKPOINT.defaults(
        pid=1, dest="/x", tcp_close=True, skip_in_flight=True, link_remap=True, ghost_limit="2M", manage_cgroups="soft",
        network_lock="skip", shell_job=True), "dump")
    assert options.argv(chosen, "dump") == [
        "--tcp-close", "--skip-in-flight", "--shell-job", "--link-remap", "--ghost-limit=2097152",
        "--network-lock=skip", "--manage-cgroups=soft"]


def test_contradiction_refused():
    with pytest.raises(CriuError, match="contradict"):
        options.normalise(argspec.CHECKPOINT.defaults(pid=1, dest="/x", tcp_established=True, tcp_close=True), "dump")


@pytest.mark.parametrize("root", ["cpu/job", "cpu:job", "", "/a\nb"])
def test_cgroup_root_refused(root):
    with pytest.raises(CriuError, match="is not of the form criu expects"):
        options.normalise(argspec.RESTORE.defaults(src="/x", cgroup_root=[root]), "restore")


def _metadata(**recorded):
    base = options.normalise(argspec.CHECKPOINT.defaults(pid=1, dest="/x"), "dump")
    base.update(recorded)
    return {"options": base}


def test_restore_replays_what_criu_needs_again_and_nothing_else():
    metadata = _metadata(tcp_established=True, file_locks=True, ghost_limit=1 << 20, skip_in_flight=True, shell_job=False)
    effective = options.for_restore(metadata, argspec.RESTORE.defaults(src="/x"))
    assert options.argv(effective, "restore") == ["--tcp-established", "--file-locks"]


def test_restore_adds_what_the_images_need():
    metadata = dict(_metadata(), restore_needs={"tcp_established": True})
    assert options.argv(options.for_restore(metadata, argspec.RESTORE.defaults(src="/x")), "restore") == ["--tcp-established"]


def test_restore_may_close_what_the_dump_kept():
    effective = options.for_restore(_metadata(tcp_established=True), argspec.RESTORE.defaults(src="/x", tcp_close=True))
    assert options.argv(effective, "restore") == ["--tcp-close"]


@pytest.mark.parametrize("chosen, words", [({"tcp_close": False}, "only closed"), ({"tcp_established": True}, "were not saved")])
def test_restore_refuses_what_criu_would(chosen, words):
    with pytest.raises(CriuError, match=words):
        options.for_restore(_metadata(tcp_close=True), argspec.RESTORE.defaults(src="/x", **chosen))


def test_restore_choices_reach_criu():
    chosen = argspec.RESTORE.defaults(src="/x", manage_cgroups="soft", cgroup_root=["cpu:/jobs/a", "/jobs"])
    effective = options.for_restore(_metadata(), chosen)
    assert options.argv(effective, "restore") == ["--manage-cgroups=soft", "--cgroup-root", "cpu:/jobs/a", "--cgroup-root", "/jobs"]


@pytest.mark.parametrize("names, recorded, needs", [
    (["inventory.img", "tcp-stream-1a2b.img"], {}, {"tcp_established": True}),
    (["inventory.img", "tcp-stream-1a2b.img"], {"tcp_established": True}, {}),
    (["inventory.img", "tcp-stream-1a2b.img"], {"tcp_close": True}, {}),
    (["inventory.img", "inetsk.img"], {}, {}),
])
def test_images_need(names, recorded, needs):
    assert options.images_need(names, recorded) == needs
