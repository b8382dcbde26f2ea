"""Podman for containers (_podman, _container): the pure decisions, and the argv given to a stand-in podman.

The real Podman, runc and criu are exercised by tests/integration/test_containers.py; here a script records its
argv, so that what the modules ask Podman to do is pinned down without a container engine.
"""

import json
import os

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _container as container
from ansible_collections.nucleus.criu.plugins.module_utils.storage import _integrity as integrity
from ansible_collections.nucleus.criu.plugins.module_utils.kinds import _podman as podman
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT, RESTORE
from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
from .mu_helpers import metadata_for, write_exe

CONTAINER = {"engine": "podman", "id": "c0ffee" * 10, "name": "web", "image_id": "beef" * 16, "image_name": "localhost/web:1"}


@pytest.mark.parametrize("name, version, ok", [
    ("runc", "runc version 1.1.5", True),
    ("crun", "crun version 1.8.1\ncommit: x\n+SYSTEMD +SELINUX +CRIU +YAJL", True),
    ("crun", "crun version 1.8.1\ncommit: x\n+SYSTEMD +SELINUX -CRIU +YAJL", False),
    ("kata", "kata 3", False),
])
def test_runtime_can_checkpoint(name, version, ok):
    problem = podman.runtime_problem(name, version)
    assert (problem == "") is ok
    if not ok:
        assert 'runtime = "runc"' in problem and podman.CONF_DROP_IN in problem


def test_default_ulimits_the_last_file_that_sets_them_wins(tmp_path):
    first, second, third = (tmp_path / n for n in ("a.conf", "b.conf", "c.conf"))
    first.write_text('[containers]\ndefault_ulimits = [\n  "nofile=1024:2048",\n  "nproc=100",\n]\n')
    second.write_text('[containers]\n# default_ulimits = ["nofile=1:1"]\n')
    third.write_text("[engine]\nruntime = \"runc\"\n")
    assert podman.conf_ulimits([str(first), str(second), str(third), str(tmp_path / "missing.conf")]) == {
        "nofile": (1024, 2048), "nproc": (100, 100)}
    second.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000"]\n')
    assert podman.conf_ulimits([str(first), str(second)]) == {"nofile": (20000, 20000)}


@pytest.mark.parametrize("configured, cap, wrong", [
    ({}, True, []),
    ({}, False, ["nofile is not set", "nproc is not set"]),
    ({"nofile": (20000, 20000), "nproc": (32768, 32768)}, False, []),
    ({"nofile": (20000, 20001), "nproc": (32768, 32768)}, False, ["nofile=20000:20001 is above 20000"]),
])
def test_ulimits_without_cap_sys_resource_must_fit(configured, cap, wrong):
    problem = podman.ulimits_problem(configured, {"nofile": 20000, "nproc": 32768}, cap)
    assert all(part in problem for part in wrong) and (problem == "") is (not wrong), problem
    if wrong:
        assert 'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]' in problem


def test_unlimited_host_limits_need_nothing():
    assert podman.ulimits_problem({}, {"nofile": None, "nproc": None}, False) == ""


def test_netavark_needs_nft():
    """Debian 13's Podman 5 runs netavark, which runs nft, which its package only recommends: without it every container
    with a network fails to start ("unable to execute nft")."""
    assert podman.host_problems({"networkBackend": "netavark"}, systemd=False, nft="/usr/sbin/nft") == []
    (problem,) = podman.host_problems({"networkBackend": "netavark"}, systemd=False, nft=None)
    assert "nft, which is not installed" in problem and "Install nftables" in problem
    assert podman.host_problems({"networkBackend": "cni"}, systemd=False, nft=None) == []


def test_settings_that_need_systemd():
    info = {"cgroupManager": "systemd", "eventLogger": "journald"}
    assert podman.host_problems(info, systemd=True, nft="/usr/sbin/nft") == []
    problems = podman.host_problems(info, systemd=False, nft="/usr/sbin/nft")
    assert len(problems) == 2 and 'cgroup_manager = "cgroupfs"' in problems[0] and 'events_logger = "file"' in problems[1]


@pytest.fixture
def recording_podman(tmp_path):
    """A stand-in podman that records its argv and environment, prints what ``podman.out`` holds, and exits with
    ``podman.rc``."""
    log = tmp_path / "argv.json"
    script = write_exe(tmp_path / "bin" / "podman", (
        "#!/usr/bin/python3\nimport json, os, sys\n"
        "open(%r, 'a').write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n"
        "sys.stdout.write(open(%r).read())\nsys.stderr.write(open(%r).read())\nsys.exit(int(open(%r).read()))\n"
    ) % (str(log), str(tmp_path / "podman.out"), str(tmp_path / "podman.err"), str(tmp_path / "podman.rc")))

    def respond(out="", rc=0, err=""):
        (tmp_path / "podman.out").write_text(out)
        (tmp_path / "podman.err").write_text(err)
        (tmp_path / "podman.rc").write_text(str(rc))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    respond()
    return podman.Podman(script, "4.3.1"), respond, calls


def test_checkpoint_writes_into_the_held_file_and_keeps_podmans_copy(recording_podman, tmp_path):
    engine, respond, calls = recording_podman
    respond(json.dumps({"podman_checkpoint_duration": 5}))
    fd = os.open(str(tmp_path / "export.tar"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        stats, _seconds = engine.checkpoint("abc", fd, dict(compress="none", leave_running=True, tcp_established=True,
                                                            file_locks=False), 10)
    finally:
        os.close(fd)
    call = calls()[0]
    assert call["argv"] == ["container", "checkpoint", "--export", "/proc/self/fd/%d" % fd, "--compress", "none",
                            "--print-stats", "--keep", "--tcp-established", "--", "abc"], "never --leave-running"
    assert call["env"]["PATH"].split(":")[:3] == ["/usr/local/sbin", "/usr/sbin", "/usr/bin"], "runc's criu: the trusted one"
    assert "CONTAINERS_CONF" not in call["env"] and stats == {"podman_checkpoint_duration": 5}


def test_restore_names_the_copy_only_when_asked(recording_podman):
    engine, _respond, calls = recording_podman
    engine.restore_import(5, None, {"tcp_established": True}, 10)
    engine.restore_import(5, "copy", {"ignore_static_ip": True}, 10)
    first, second = (call["argv"] for call in calls())
    assert "--name" not in first and "--tcp-established" in first
    assert second[second.index("--name") + 1] == "copy" and "--ignore-static-ip" in second


def test_podman_errors_carry_the_remedy(recording_podman):
    engine, respond, _calls = recording_podman
    respond(rc=125, err="Error: creating container storage: the container name \"web\" is already in use by abc")
    with pytest.raises(CriuError) as raised:
        engine.restore_import(5, "web", {}, 10)
    assert "already in use" in raised.value.msg and "set container_name" in raised.value.msg
    respond(rc=125, err="Error: inspecting object: no such container web")
    assert engine.inspect("web", 10) is None
    respond(rc=125, err="Error: beef: image not known")
    assert engine.image_id("beef", 10) is None


CRIU_LOG = """\
(00.099561) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.433779)      1: Error (criu/sk-inet.c:1059): inet: Can't bind inet socket (id 5): Address already in use
(00.435114) Error (criu/cr-restore.c:2331): Restoring FAILED.
"""


@pytest.mark.parametrize("log_dir_mode, quoted", [(0o700, True), (0o777, False)])
def test_a_criu_failure_quotes_the_log_runc_names(recording_podman, tmp_path, log_dir_mode, quoted):
    """Podman's message only names criu's log, which goes with the failed copy: the message carries its errors (not the
    harmless rlimit line) and the remedy, read only from a log no other user could have written or swapped."""
    engine, respond, _calls = recording_podman
    log = tmp_path / "userdata" / "restore.log"
    log.parent.mkdir()
    log.write_text(CRIU_LOG)
    log.parent.chmod(log_dir_mode)
    respond(rc=125, err="Error: OCI runtime error: runc: criu failed: type NOTIFY errno 0\nlog file: %s\n" % log)
    with pytest.raises(CriuError) as raised:
        engine.restore_import(5, "copy", {}, 10)
    assert "log file: %s" % log in raised.value.msg and "RLIMIT" not in raised.value.msg
    assert ("Can't bind inet socket (id 5): Address already in use | " in raised.value.msg
            and "Restoring FAILED." in raised.value.msg and "stop what holds it" in raised.value.msg) is quoted


def refuse_unsupported(spec, at, **given):
    """_container.refuse_unsupported with what a module's request of ``spec`` and ``given`` hands it."""
    request = spec.request(spec.defaults(**given))
    container.refuse_unsupported(request.criu, at, getattr(request, "leave_stopped", False))


@pytest.mark.parametrize("given", [{"link_remap": True}, {"ghost_limit": "8M"}, {"network_lock": "iptables"},
                                   {"leave_stopped": True}, {"ext_unix_sk": True}])
def test_options_podman_cannot_pass_are_refused(given):
    with pytest.raises(CriuError, match="cannot be used with a container"):
        refuse_unsupported(CHECKPOINT, "dump", container="web", dest="/x", **given)


def test_options_podman_passes_are_taken():
    refuse_unsupported(CHECKPOINT, "dump", container="web", dest="/x", tcp_established=True, file_locks=True)
    refuse_unsupported(RESTORE, "restore", src="/x", tcp_established=True, ignore_static_ip=True)
    with pytest.raises(CriuError, match="manage_cgroups"):
        refuse_unsupported(RESTORE, "restore", src="/x", manage_cgroups="full")


def test_same_container_by_id_or_by_name_once_gone():
    metadata = {"container": CONTAINER}
    assert container.same_container(metadata, {"id": CONTAINER["id"]}, "web")
    assert not container.same_container(metadata, {"id": "other"}, "web")
    assert container.same_container(metadata, None, "web") and not container.same_container(metadata, None, "db")
    assert not container.same_container({"process": {}}, {"id": CONTAINER["id"]}, "web")


def test_established_tcp_restores_under_its_own_name_only():
    metadata = {"container": CONTAINER}
    assert container.restore_name(metadata, None, True) == "web"
    assert container.restore_name(metadata, "copy", False) == "copy"
    with pytest.raises(CriuError, match="only under the container's own name"):
        container.restore_name(metadata, "copy", True)


def _container_metadata(paths):
    return metadata_for([{"path": path, "size": 0, "chunks": ["0" * 64]} for path in paths], container=dict(CONTAINER))


def test_a_container_checkpoint_holds_its_export_alone():
    metadata, problems = integrity.parse_metadata(integrity.canonical(_container_metadata(["export.tar"])))
    assert problems == [] and metadata["container"]["name"] == "web"
    for paths in (["export.tar", "inventory.img"], ["inventory.img"]):
        assert "must list export.tar alone" in "; ".join(integrity.parse_metadata(integrity.canonical(_container_metadata(paths)))[1])
    broken = dict(_container_metadata(["export.tar"]), container={"name": "web"})
    assert "container is not an object with" in integrity.parse_metadata(integrity.canonical(broken))[1][0]


class Images:
    """A host's images and containers as Podman would name them (image_id, inspect)."""

    def __init__(self, names, containers=()):
        self.names = names
        self.containers = containers

    def image_id(self, reference, _timeout):
        return self.names.get(reference)

    def inspect(self, name, _timeout):
        return {"name": name} if name in self.containers else None


WEB = {"id": "c" * 64, "name": "web", "image_id": "1" * 64, "image_name": "localhost/web:1"}


def test_an_image_counts_only_under_its_name():
    """Podman's restore finds the image by the name the container was made from, and pulls a missing one: the
    image must be there under that name, and a name that means another image is never used."""
    assert container.target_problems(Images({"localhost/web:1": "1" * 64}), WEB, False, 10) == ([], True)
    problems, present = container.target_problems(Images({}), WEB, False, 10)
    assert not present and "is not here" in problems[0] and "transfer_image" in problems[0]
    assert container.target_problems(Images({}), WEB, True, 10) == ([], False), "the migration brings it"
    problems, present = container.target_problems(Images({"localhost/web:1": "2" * 64}), WEB, True, 10)
    assert not present and "means another image here (222222222222)" in problems[0], "never replaced, even when sending"


def test_a_migration_never_lands_on_a_container_name_in_use():
    problems, _present = container.target_problems(Images({"localhost/web:1": "1" * 64}, containers=("web",)), WEB, False, 10)
    assert problems == ["a container named web exists here: remove it (podman rm web) or migrate to another host"]


def test_an_image_is_loaded_then_named(recording_podman, tmp_path):
    engine, _respond, calls = recording_podman
    fd = os.open(str(tmp_path / "image.tar"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        engine.load_image(fd, "1" * 64, "localhost/web:1", 10)
    finally:
        os.close(fd)
    assert [call["argv"] for call in calls()] == [["image", "load", "--input", "/proc/self/fd/%d" % fd],
                                                  ["image", "tag", "1" * 64, "localhost/web:1"]]


# --- criu's configuration comes from nucleus.criu alone -----------------------------------------------------------

RUNNING = {"name": "web", "state": "running", "pid": 42, "image_name": "localhost/web:1", "image_id": "1" * 64}


def test_a_container_that_names_a_criu_configuration_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(podman, "RUNC_CRIU_CONFIG", str(tmp_path / "absent" / "runc.conf"))
    monkeypatch.setattr(podman, "CRIU_PLUGIN_DIR", str(tmp_path / "absent" / "criu"))
    with pytest.raises(CriuError) as err:
        container.require_running(dict(RUNNING, criu_config="/tmp/evil.conf"), "web")
    assert "names a criu configuration file in its org.criu.config annotation (/tmp/evil.conf)" in err.value.msg
    assert "--annotation org.criu.config= (empty: no file)" in err.value.msg and err.value.details["container"] == "web"
    for harmless in ("", None):  # an empty annotation means no file; none means runc's default, absent here
        assert container.require_running(dict(RUNNING, criu_config=harmless), "web")["name"] == "web"


def test_what_runc_has_criu_load_must_be_roots(monkeypatch, tmp_path):
    """runc's default criu configuration, and criu's plugin directory (runc cannot point criu elsewhere)."""
    conf = tmp_path / "runc.conf"
    plugins = tmp_path / "lib-criu"
    monkeypatch.setattr(podman, "RUNC_CRIU_CONFIG", str(conf))
    monkeypatch.setattr(podman, "CRIU_PLUGIN_DIR", str(plugins))
    assert container.runc_criu_problems() == [], "absent"
    conf.write_text("tcp-established\n")
    os.chmod(conf, 0o644)
    plugins.mkdir(mode=0o755)
    (plugins / "amdgpu_plugin.so").write_bytes(b"\x7fELF")
    assert container.runc_criu_problems() == [], "root's (the caller's) own"
    os.chmod(conf, 0o666)
    os.chmod(plugins / "amdgpu_plugin.so", 0o666)
    config_problem, plugin_problem = sorted(container.runc_criu_problems(), key=lambda p: "plugin" in p)
    assert "is writable by group/others" in config_problem and "keep it root's, or remove it" in config_problem
    assert "criu plugin %s" % (plugins / "amdgpu_plugin.so") in plugin_problem and "loads every .so" in plugin_problem
    assert container.runc_criu_problems(with_config=False) == [plugin_problem]
    os.chmod(plugins / "amdgpu_plugin.so", 0o644)
    os.symlink("/tmp/evil.so", str(plugins / "planted.so"))
    assert container.runc_criu_problems(with_config=False) == [
        "criu plugin %s is a symlink. %s" % (plugins / "planted.so", container.PLUGIN_REMEDY)]
    with pytest.raises(CriuError, match="is a symlink"):
        container.require_running(dict(RUNNING, criu_config=None), "web")
    assert any("is a symlink" in p for p in container.target_problems(Images({"localhost/web:1": "1" * 64}), WEB, False, 10)[0])


class StandInEngine:
    """Podman's in-place restore, answering from a script: each call takes the next answer (an error message, or
    None for a restore that worked), and remembers the options it was given."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.given = []

    def restore_in_place(self, container_id, options, timeout):
        self.given.append(dict(options))
        answer = self.answers.pop(0)
        if answer is not None:
            raise CriuError(answer)

    def addresses(self, container_id, timeout):
        return ["10.88.0.9"]


TAKEN = "cni plugin bridge failed: failed to allocate for range 0: requested IP address 10.88.0.5 is not available in range set"


def test_a_container_whose_address_was_taken_comes_back_under_a_new_one():
    engine = StandInEngine(TAKEN, None)
    said = container.restore_kept(engine, "c0ffee", {"tcp_established": False}, 5)
    assert said == "it came back with the address 10.88.0.9: its own, 10.88.0.5, was given to another container while it was stopped"
    assert engine.given == [{"tcp_established": False}, {"tcp_established": False, "ignore_static_ip": True}]
    assert container.restore_kept(StandInEngine(None), "c0ffee", {}, 5) is None


def test_a_restore_that_fails_under_a_new_address_too_says_both():
    engine = StandInEngine(TAKEN, "criu: Can't bind inet socket: Cannot assign requested address")
    with pytest.raises(CriuError) as raised:
        container.restore_kept(engine, "c0ffee", {"tcp_established": True}, 5)
    assert raised.value.msg == ("its address 10.88.0.5 was given to another container while it was stopped, and with a new "
                                "one: criu: Can't bind inet socket: Cannot assign requested address")


def test_other_failures_are_not_retried_under_a_new_address():
    engine = StandInEngine("criu: Restoring FAILED", None)
    with pytest.raises(CriuError, match="Restoring FAILED"):
        container.restore_kept(engine, "c0ffee", {}, 5)
    assert len(engine.given) == 1


def test_restore_flags_give_up_the_recorded_address_when_asked():
    assert podman.restore_flags({"tcp_established": True, "ignore_static_ip": True}) == ["--tcp-established", "--ignore-static-ip"]
    assert podman.restore_flags({"ignore_static_mac": True}) == ["--ignore-static-mac"]


class UnremovableEngine:
    """A Podman whose removal of a container fails."""

    def remove(self, container_id, timeout):
        raise CriuError("/usr/bin/podman container rm exited with 125: Error: container state improper.")


def test_a_failed_removal_of_a_half_made_copy_keeps_the_restores_reason():
    failure = CriuError("criu: Restoring FAILED.")
    container.remove_half_made(UnremovableEngine(), "web-copy", failure, 5)
    assert failure.msg == ("criu: Restoring FAILED. The half-made container web-copy could not be removed either "
                           "(/usr/bin/podman container rm exited with 125: Error: container state improper): remove it "
                           "(podman rm --force web-copy) before a retry.")
