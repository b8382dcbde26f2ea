"""Podman containers through the same modules: checkpointed into a staged, hashed, signed checkpoint directory,
verified, restored from exactly the verified bytes, idempotent, with check mode; never a container lost.

Real Podman and runc (installed and configured by the criu role's criu_containers), a container image made offline
from busybox-static, containers this test started; every one of them is removed at teardown.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
import typing as t

import pytest

from conftest import checkpoint_held_at, kill_checkpoint_at, podman, run_module, wait_for


KEY = "container-test-key-0123456789"
# Counts in memory (the shell's variable), shows the count in a file: after a restore the count goes on from where it
# was, where a restarted container would start again from 1.
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"
# Counts every 5 ms into a log it holds open for writing, as a busy server holds its log: criu records the file's
# size at the dump, and refuses a restore where the file has another.
LOGGING_COUNTER = "exec 3>/tmp/log; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; echo $i >&3; usleep 5000; done"
# In Podman's default network (10.88.0.0/16), far beyond the addresses the tests' containers are given in turn.
UNALLOCATED_ADDRESS = "10.88.255.10"


class Containers:
    """Containers this test started or restored, removed at teardown."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.names: t.List[str] = []

    def name(self, label: str) -> str:
        name = "nucleus-test-%s-%s" % (label, secrets.token_hex(3))
        self.names.append(name)
        return name

    def start(self, label: str, command: str = COUNTER, image: t.Optional[str] = None, network: str = "bridge",
              ip: t.Optional[str] = None) -> str:
        name = self.name(label)
        podman("run", "-d", "--name", name, "--network", network, *(["--ip", ip] if ip else []), image or self.image,
               "sh", "-c", command)
        if command in (COUNTER, LOGGING_COUNTER):
            wait_for(lambda: count(name) >= 3, what="container %s counting" % name)
        return name

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", "--", name, check=False)


def count(name: str) -> int:
    proc = podman("exec", name, "cat", "/tmp/n", check=False)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def address(name: str) -> str:
    return podman("container", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()


def state(name: str) -> t.Optional[str]:
    proc = podman("container", "inspect", "--format", "{{.State.Status}}", name, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


@pytest.fixture(scope="module")
def podman_image(container_host):
    """This host prepared for containers by the criu role itself, and the test image."""
    return container_host


@pytest.fixture
def containers(podman_image):
    made = Containers(podman_image)
    yield made
    made.remove_all()


def test_checkpoint_verify_restore_a_container(containers, ckpt_dir, tmp_path):
    """The quartet (check mode, for real, both again), the count going on after the restore, the copy's pid reported."""
    name = containers.start("quartet")
    dest = str(ckpt_dir / "ck")
    args = dict(container=name, dest=dest, hmac_key=KEY)

    predicted = run_module("criu_checkpoint", args, check=True)
    assert predicted["changed"] and not predicted["failed"] and not os.path.exists(dest), predicted
    assert state(name) == "running"
    before = count(name)
    made = run_module("criu_checkpoint", args)
    assert made["changed"] and not made["failed"], made
    recorded = made["checkpoint"]["container"]
    assert recorded["name"] == name and recorded["engine"] == "podman" and recorded["image_name"].startswith(containers.image)
    assert [entry["path"] for entry in made["checkpoint"]["manifest"]] == ["export.tar"], made["checkpoint"]
    assert made["stats"]["podman"]["container_statistics"], made["stats"]
    assert state(name) == "exited", "a checkpoint without leave_running stops the container"
    assert sorted(os.listdir(dest)) == ["checkpoint.hmac", "images", "metadata.json"]
    assert os.stat(os.path.join(dest, "images", "export.tar")).st_mode & 0o777 == 0o600
    for check in (False, True):
        again = run_module("criu_checkpoint", args, check=check)
        assert not again["changed"] and not again["failed"], again

    verified = run_module("criu_verify", dict(path=dest, hmac_key=KEY, check_host=True))
    assert verified["valid"] and verified["signature_checked"], verified

    copy = containers.name("copy")
    pidfile = tmp_path / "copy.pid"
    restore_args = dict(src=dest, hmac_key=KEY, container_name=copy, pidfile=str(pidfile))
    predicted = run_module("criu_restore", restore_args, check=True)
    assert predicted["changed"] and not predicted["failed"] and state(copy) is None, predicted
    restored = run_module("criu_restore", restore_args)
    assert restored["changed"] and not restored["failed"], restored
    assert restored["container"]["name"] == copy and state(copy) == "running", restored
    assert int(pidfile.read_text()) == restored["pid"] == restored["container"]["pid"]
    resumed = count(copy)
    assert resumed >= before, "the count started again (%d after %d): memory was not restored" % (resumed, before)
    wait_for(lambda: count(copy) > resumed, what="the restored container counting on")
    for check in (True, False):
        again = run_module("criu_restore", restore_args, check=check)
        assert not again["changed"] and not again["failed"] and again["pid"] == restored["pid"], again


def test_leave_running_and_a_copy_beside_it(containers, ckpt_dir):
    name = containers.start("beside")
    dest = str(ckpt_dir / "ck")
    made = run_module("criu_checkpoint", dict(container=name, dest=dest, leave_running=True))
    assert made["changed"] and made["checkpoint"]["options"]["leave_running"], made
    assert state(name) == "running"
    [listed] = run_module("criu_checkpoint_info", dict(path=str(ckpt_dir), details=True))["checkpoints"]
    assert listed["valid"] and listed["container"]["name"] == name and "Podman's export" in listed["details"]["unavailable"]
    taken = run_module("criu_restore", dict(src=dest))
    assert taken["failed"] and "a container named %s exists" % name in taken["msg"] and "container_name" in taken["msg"], taken
    copy = containers.name("twin")
    restored = run_module("criu_restore", dict(src=dest, container_name=copy))
    assert restored["changed"] and state(copy) == "running" and state(name) == "running", restored


def test_leave_running_exports_the_files_as_the_memory_knows_them(containers, ckpt_dir):
    """Podman archives a container's file changes after criu's dump: left running, the container went on writing, and
    the export held a log longer than its memory knew, which criu refused to restore. The container now stops for the
    export and runs on from the same memory (same id, the count going on); its copy restores."""
    name = containers.start("logging", LOGGING_COUNTER)
    container_id = podman("container", "inspect", "--format", "{{.Id}}", name).stdout.strip()
    dest = str(ckpt_dir / "ck")
    made = run_module("criu_checkpoint", dict(container=name, dest=dest, leave_running=True))
    assert made["changed"] and made["checkpoint"]["options"]["leave_running"], made
    at_checkpoint = wait_for(lambda: count(name), what="the container counting")  # 0 while /tmp/n is being rewritten
    assert state(name) == "running" and at_checkpoint >= 3, "the container runs on, counting from its memory"
    assert podman("container", "inspect", "--format", "{{.Id}}", name).stdout.strip() == container_id
    copy = containers.name("logging-copy")
    restored = run_module("criu_restore", dict(src=dest, container_name=copy))
    assert restored["changed"] and state(copy) == "running", restored.get("msg", restored)
    wait_for(lambda: count(copy) > at_checkpoint - 1 and count(name) > at_checkpoint, what="both counting on")


def test_a_restore_criu_refuses_says_why_and_leaves_no_copy(containers, ckpt_dir):
    """A host-network server's copy cannot listen while the server, started again, holds its port: the failure quotes
    criu's own reason (Podman keeps its log only with the container), the half-made copy is gone, and a retry once the
    port is free restores."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = containers.start("listener", "httpd -f -p 127.0.0.1:%d" % port, network="host")
    wait_for(lambda: _connect("127.0.0.1", port), what="the container's listener").close()
    dest = str(ckpt_dir / "ck")
    assert run_module("criu_checkpoint", dict(container=name, dest=dest))["changed"]
    podman("start", name)
    wait_for(lambda: _connect("127.0.0.1", port), what="the server started again").close()
    copy = containers.name("listener-copy")
    refused = run_module("criu_restore", dict(src=dest, container_name=copy))
    assert refused["failed"] and "Error (criu/sk-inet.c" in refused["msg"] and "Can't bind inet socket" in refused["msg"], refused
    assert "Address already in use" in refused["msg"] and "stop what holds it" in refused["msg"] and state(copy) is None, refused
    podman("stop", "--time", "0", name)
    restored = run_module("criu_restore", dict(src=dest, container_name=copy))
    assert restored["changed"] and state(copy) == "running", restored.get("msg", restored)
    wait_for(lambda: _connect("127.0.0.1", port), what="the copy's listener").close()


def test_diff_of_a_container_checkpoint_and_its_restore(containers, ckpt_dir):
    """--diff names the container: the checkpoint (predicted, made, unchanged), then the copy restored from it."""
    name = containers.start("diff")
    dest = str(ckpt_dir / "ck")
    args = dict(container=name, dest=dest, leave_running=True)
    pid = int(podman("container", "inspect", "--format", "{{.State.Pid}}", name).stdout)
    predicted = run_module("criu_checkpoint", args, check=True, diff=True)
    assert predicted["diff"] == {"before": {}, "after": {dest: {"name": "ck", "container": name, "pid": pid}}}, predicted
    made = run_module("criu_checkpoint", args, diff=True)
    checkpoint = {"id": made["checkpoint"]["id"], "name": "ck", "created_at": made["checkpoint"]["created_at"], "container": name,
                  "pid": pid, "image_bytes": made["stats"]["image_bytes"]}
    assert made["changed"] and made["diff"] == {"before": {}, "after": {dest: checkpoint}}, made
    again = run_module("criu_checkpoint", args, diff=True)
    assert not again["changed"] and again["diff"] == {"before": {dest: checkpoint}, "after": {dest: checkpoint}}, again

    copy = containers.name("diff-copy")
    restore_args = dict(src=dest, container_name=copy)
    header = {"before_header": "copy restored from %s" % dest, "after_header": "copy restored from %s" % dest}
    predicted = run_module("criu_restore", restore_args, check=True, diff=True)
    assert predicted["diff"] == dict(header, before={}, after={"checkpoint_id": checkpoint["id"], "container": copy}), predicted
    restored = run_module("criu_restore", restore_args, diff=True)
    assert restored["changed"] and state(copy) == "running", restored.get("msg", restored)
    running = {"pid": restored["pid"], "checkpoint_id": checkpoint["id"], "restored_at": restored["restored"]["restored_at"],
               "container": copy}
    assert restored["diff"] == dict(header, before={}, after=running), restored
    for check in (True, False):
        again = run_module("criu_restore", restore_args, check=check, diff=True)
        assert not again["changed"] and again["diff"] == dict(header, before=running, after=running), again


def test_tcp_connection_kept_across_a_restore(containers, ckpt_dir):
    """On the bridge network, an established connection from the host survives checkpoint and restore. The container's
    address is one Podman does not give out until its allocator wraps (it hands out the network's addresses in turn):
    stopped, a container holds none, and another test's container could be given it before the restore."""
    name = containers.start("tcp", "nc -l -p 9000 > /tmp/got; sleep 1000", ip=UNALLOCATED_ADDRESS)
    client = wait_for(lambda: _connect(UNALLOCATED_ADDRESS, 9000), what="the container's listener")
    try:
        client.sendall(b"before\n")
        dest = str(ckpt_dir / "ck")
        made = run_module("criu_checkpoint", dict(container=name, dest=dest, tcp_established=True))
        assert made["changed"] and made["checkpoint"]["options"]["tcp_established"], made
        renamed = run_module("criu_restore", dict(src=dest, container_name=containers.name("renamed")))
        assert renamed["failed"] and "only under the container's own name" in renamed["msg"], renamed
        podman("rm", name)
        restored = run_module("criu_restore", dict(src=dest))
        assert restored["changed"] and restored["container"]["name"] == name, restored.get("msg", restored)
        client.sendall(b"after\n")
    finally:
        client.close()
    wait_for(lambda: podman("exec", name, "cat", "/tmp/got").stdout == "before\nafter\n", what="both lines over one connection")


def test_a_checkpoint_killed_after_podmans_export_is_finished_by_its_rerun(containers, ckpt_dir):
    """The module dies once Podman's checkpoint stopped the container for its export, before the publish: the container
    stays stopped (Podman keeps its checkpoint). The rerun restores it in place (same id, its count going on from its
    memory, not from 1), then checkpoints it."""
    name = containers.start("killed")
    container_id = podman("container", "inspect", "--format", "{{.Id}}", name).stdout.strip()
    dest_name = "killed-%s" % secrets.token_hex(3)
    args = dict(container=name, dest=str(ckpt_dir / dest_name), leave_running=True)
    wait_for(lambda: count(name) >= 40, what="the container counting for 2 s")
    kill_checkpoint_at(args, dest_name, "dumped")
    assert state(name) == "exited" and not (ckpt_dir / dest_name).exists(), "stopped for the export, nothing published"
    rerun = run_module("criu_checkpoint", args)
    assert rerun["changed"] and state(name) == "running", rerun.get("msg", rerun)
    # (Under a new address, should another test's container have been given its own meanwhile: the test below.)
    assert rerun["actions"][0].startswith("Restored container %s in place, stopped by a run that died after Podman's "
                                          "checkpoint into %s" % (name, ckpt_dir / dest_name)), rerun["actions"]
    assert rerun["checkpoint"]["container"]["id"] == container_id
    assert podman("container", "inspect", "--format", "{{.Id}}", name).stdout.strip() == container_id
    # Its count goes on from its memory, where a container started afresh would count from 1 again.
    assert wait_for(lambda: count(name), what="the container counting") >= 40
    assert run_module("criu_verify", dict(path=str(ckpt_dir / dest_name)))["valid"]


def test_a_container_whose_address_was_taken_while_stopped_comes_back_under_a_new_one(containers, ckpt_dir):
    """Stopped by a checkpoint run that died, a container holds no address in Podman's address book: another container
    started meanwhile may be given it (on a busy host, one restored with its own address rewinds the allocator to just
    before it). The rerun brings it back under a new address, with its memory, and says so; it used to stay stopped."""
    name = containers.start("readdressed")
    own = address(name)
    dest_name = "readdressed-%s" % secrets.token_hex(3)
    args = dict(container=name, dest=str(ckpt_dir / dest_name), leave_running=True)
    wait_for(lambda: count(name) >= 40, what="the container counting for 2 s")
    kill_checkpoint_at(args, dest_name, "dumped")
    podman("run", "-d", "--name", containers.name("thief"), "--ip", own, containers.image, "sleep", "100000")
    rerun = run_module("criu_checkpoint", args)
    assert rerun["changed"] and state(name) == "running", rerun.get("msg", rerun)
    new = address(name)
    assert new and new != own
    assert rerun["actions"][0] == ("Restored container %s in place, stopped by a run that died after Podman's checkpoint "
                                   "into %s; it came back with the address %s: its own, %s, was given to another container "
                                   "while it was stopped" % (name, ckpt_dir / dest_name, new, own)), rerun["actions"]
    assert wait_for(lambda: count(name), what="the container counting") >= 40


def test_leave_running_under_a_new_address_warns(containers, ckpt_dir):
    """leave_running stops the container for the export, then restores it in place: should its address be given to
    another container in between, it runs on under a new one, and the task warns."""
    name = containers.start("warned")
    own = address(name)
    dest_name = "warned-%s" % secrets.token_hex(3)
    wait_for(lambda: count(name) >= 40, what="the container counting for 2 s")
    made = checkpoint_held_at(dict(container=name, dest=str(ckpt_dir / dest_name), leave_running=True), dest_name, "dumped",
                              lambda: podman("run", "-d", "--name", containers.name("thief"), "--ip", own, containers.image,
                                             "sleep", "100000"))
    assert made["changed"] and state(name) == "running", made.get("msg", made)
    new = address(name)
    assert new and new != own
    assert made["warnings"] == ["The container %s runs on, but it came back with the address %s: its own, %s, was given "
                                "to another container while it was stopped." % (name, new, own)], made
    assert wait_for(lambda: count(name), what="the container counting") >= 40
    assert run_module("criu_verify", dict(path=str(ckpt_dir / dest_name)))["valid"]


def test_a_restore_whose_recorded_address_is_taken_names_the_remedy(containers, ckpt_dir):
    """The checkpoint records the container's address; restored under its own name once another container holds that
    address, Podman refuses it: the message says how to give it a new one, and that works."""
    name = containers.start("moved-out")
    own = address(name)
    dest = str(ckpt_dir / "moved-out")
    assert run_module("criu_checkpoint", dict(container=name, dest=dest))["changed"]
    podman("rm", "--force", "--time", "0", "--", name)
    podman("run", "-d", "--name", containers.name("thief"), "--ip", own, containers.image, "sleep", "100000")
    refused = run_module("criu_restore", dict(src=dest))
    assert refused["failed"] and "requested IP address %s is not available" % own in refused["msg"], refused
    assert "restore with ignore_static_ip: true" in refused["msg"] and state(name) is None, refused["msg"]
    restored = run_module("criu_restore", dict(src=dest, ignore_static_ip=True))
    assert restored["changed"] and state(name) == "running" and address(name) != own, restored.get("msg", restored)


def test_leave_running_keeps_an_established_connection(containers, ckpt_dir):
    """leave_running stops the container for its export and restores it in place: with the connection's state, which
    Podman restores only when told tcp_established again (it does not remember it)."""
    name = containers.start("tcp-on", "nc -l -p 9000 > /tmp/got; sleep 1000")
    address = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    client = wait_for(lambda: _connect(address, 9000), what="the container's listener")
    try:
        client.sendall(b"before\n")
        made = run_module("criu_checkpoint", dict(container=name, dest=str(ckpt_dir / "ck"), tcp_established=True,
                                                  leave_running=True))
        assert made["changed"] and state(name) == "running", made.get("msg", made)
        client.sendall(b"after\n")
    finally:
        client.close()
    wait_for(lambda: podman("exec", name, "cat", "/tmp/got").stdout == "before\nafter\n", what="both lines over one connection")


def _connect(address: str, port: int) -> t.Optional[socket.socket]:
    try:
        return socket.create_connection((address, port), timeout=5)
    except OSError:
        return None


@pytest.mark.parametrize("tamper", ["export-byte", "metadata-name"])
def test_tampered_container_checkpoint_is_refused(containers, ckpt_dir, tamper):
    name = containers.start("tamper")
    dest = str(ckpt_dir / "ck")
    assert run_module("criu_checkpoint", dict(container=name, dest=dest, hmac_key=KEY, leave_running=True))["changed"]
    if tamper == "export-byte":
        with open(os.path.join(dest, "images", "export.tar"), "r+b") as handle:
            handle.seek(1000)
            byte = handle.read(1)
            handle.seek(1000)
            handle.write(bytes([byte[0] ^ 0xFF]))
    else:
        path = os.path.join(dest, "metadata.json")
        with open(path) as handle:
            text = handle.read()
        with open(path, "w") as handle:
            handle.write(text.replace('"name":"%s"' % name, '"name":"%s-forged"' % name, 1))
    verified = run_module("criu_verify", dict(path=dest, hmac_key=KEY))
    assert verified["failed"] and not verified.get("valid", False), verified
    copy = containers.name("forged")
    restored = run_module("criu_restore", dict(src=dest, hmac_key=KEY, container_name=copy))
    assert restored["failed"] and "Nothing was restored" in restored["msg"], restored
    assert state(copy) is None and state(name + "-forged") is None


def test_options_podman_cannot_pass_are_refused(containers, ckpt_dir):
    name = containers.start("options")
    dest = str(ckpt_dir / "ck")
    for option in ({"link_remap": True}, {"ghost_limit": "8M"}, {"leave_stopped": True}):
        refused = run_module("criu_checkpoint", dict(container=name, dest=dest, **option))
        assert refused["failed"] and list(option)[0] in refused["msg"] and "cannot be used with a container" in refused["msg"], refused
    assert state(name) == "running" and not os.path.exists(dest)
    missing = run_module("criu_checkpoint", dict(container="nucleus-test-no-such", dest=dest))
    assert missing["failed"] and "no container nucleus-test-no-such" in missing["msg"], missing


def test_a_failed_export_brings_the_container_back(containers, tmp_path):
    """The export fails on a full disk after Podman stopped the container: the container is restored in place from
    Podman's own copy, counting on, and nothing is published."""
    name = containers.start("full")
    tiny = tmp_path / "tiny"
    tiny.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(tiny)], check=True)
    try:
        before = count(name)
        failed = run_module("criu_checkpoint", dict(container=name, dest=str(tiny / "ck")))
        assert failed["failed"] and "no space left on device" in failed["msg"], failed
        assert "was brought back" in failed["msg"] and "No checkpoint was written" in failed["msg"], failed
        assert os.listdir(str(tiny)) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
    assert state(name) == "running"
    time.sleep(0.2)
    assert count(name) >= before, "the container started again from scratch instead of being restored"


def test_criu_info_reports_a_ready_container_host(podman_image):
    info = run_module("criu_info", {"engine": "podman"})
    facts = info["containers"]
    assert facts["usable"] and facts["runtime"] == dict(facts["runtime"], name="runc", checkpoint=True), facts
    assert facts["criu"]["version"].startswith("4.") and facts["cgroup_manager"] in ("cgroupfs", "systemd"), facts


def test_an_image_cannot_make_criu_run_its_script(containers, ckpt_dir, tmp_path):
    """Trust, round three: an image's org.criu.config annotation reaches every container made from it, and runc had
    criu read the file it names as root, whose action-script criu ran at the checkpoint (and at every restore). A
    container that names a criu configuration is refused before anything is frozen."""
    marker = tmp_path / "ran-as"
    script = tmp_path / "evil.sh"
    script.write_text("#!/bin/sh\nid -u >> %s\n" % marker)
    os.chmod(script, 0o755)
    config = tmp_path / "evil.conf"
    config.write_text("action-script %s\n" % script)
    build = tmp_path / "build"
    build.mkdir()
    (build / "Containerfile").write_text("FROM %s\n" % containers.image)
    image = "localhost/nucleus-criu-annotated:%s" % secrets.token_hex(3)
    podman("build", "--quiet", "--annotation", "org.criu.config=%s" % config, "-t", image, str(build))
    try:
        name = containers.start("annotated", image=image)
        made = run_module("criu_checkpoint", dict(container=name, dest=str(ckpt_dir / "ck"), leave_running=True))
        assert not marker.exists(), "criu ran the image's script as uid %s" % marker.read_text().split()
        assert made["failed"] and "names a criu configuration file in its org.criu.config annotation (%s)" % config in made["msg"], made
        assert state(name) == "running" and not os.path.lexists(ckpt_dir / "ck")
    finally:
        containers.remove_all()
        podman("image", "rm", "--force", image, check=False)
