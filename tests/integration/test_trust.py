"""Trust: a signed checkpoint stays unforgeable against anyone who can write near it, and criu inherits nothing.

Every attack here is carried out for real: the attacker is a separate process running as uid 65534
(``setpriv``), and each race is made deterministic by an inotify event (tests/integration/attacker.py),
never by a sleep. Each test proves the attack refused or harmless.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import typing as t

import pytest

from conftest import REPO, Workload, processes_running, run_module

KEY = "trust-test-key-0123456789abcdef"
NOBODY = 65534
ATTACKER = os.path.join(REPO, "tests", "integration", "attacker.py")
CRIU = os.path.realpath("/usr/local/sbin/criu")


@pytest.fixture(scope="module")
def attacker_script():
    """attacker.py where uid 65534 can read it but not change it (the repository may sit in a 0700 directory)."""
    home = tempfile.mkdtemp(prefix="nucleus-attacker-", dir="/tmp")
    os.chmod(home, 0o755)
    script = os.path.join(home, "attacker.py")
    shutil.copyfile(ATTACKER, script)
    os.chmod(script, 0o644)
    yield script
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def attack_base():
    """A directory under /tmp that uid 65534 can traverse (pytest's own tmp dirs are 0700)."""
    base = tempfile.mkdtemp(prefix="nucleus-attack-", dir="/tmp")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def owned_by_nobody(path: str, mode: int = 0o755, recursive: bool = False) -> str:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    os.lchown(path, NOBODY, NOBODY)
    for current, dirs, files in os.walk(path) if recursive else ():
        for name in [current] + [os.path.join(current, n) for n in dirs + files]:
            os.lchown(name, NOBODY, NOBODY)
    return path


class Attacker:
    """attacker.py running as uid 65534; ``start`` returns once its inotify watch is armed."""

    def __init__(self, script: str, *args: str, timeout: float = 60) -> None:
        argv = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                "/usr/bin/python3", script, "--timeout", str(timeout)] + list(args)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None  # (PIPE)
        line = self.proc.stdout.readline()
        assert json.loads(line or "{}").get("ready"), line + self.proc.stderr.read()

    def outcome(self, timeout: float = 90) -> t.Dict[str, t.Any]:
        """Every field the attacker reported, once it is done."""
        out, err = self.proc.communicate(timeout=timeout)
        fields: t.Dict[str, t.Any] = {}
        for line in out.splitlines():
            fields.update(json.loads(line))
        fields["stderr"] = err
        return fields


def signed_checkpoint(workload: Workload, dest: str, **options: t.Any) -> t.Dict[str, t.Any]:
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest, hmac_key=KEY, **options))
    assert made["changed"] and not made["failed"], (made.get("msg"), made.get("errors"))
    return made


# 1. A signed checkpoint with a planted symlink at its top level must not make the restore write through it.
def test_restore_never_writes_through_a_planted_log_symlink(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    src = str(ckpt_dir / "ck")
    signed_checkpoint(workload, src, leave_running=True)
    victim = ckpt_dir / "victim"
    victim.write_text("precious\n")
    for planted in ("restore.log", "stats-restore"):
        os.symlink(str(victim), os.path.join(src, planted))

    verdict = run_module("criu_verify", dict(path=src, hmac_key=KEY))
    restored = run_module("criu_restore", dict(src=src, hmac_key=KEY))
    if restored.get("pid"):
        workload.adopt(restored["pid"])

    assert victim.read_text() == "precious\n", "criu wrote through a symlink planted in the checkpoint"
    assert restored["changed"] and not restored["failed"], (restored.get("msg"), restored.get("errors"))
    assert not os.path.islink(os.path.join(src, "restore.log")), "the restore log must replace the link, not follow it"
    assert verdict["valid"] and "stats-restore" in " ".join(verdict["unexpected_entries"]), verdict


# 2. Images swapped after verification, by a user who owns SRC's parent or can write into SRC.
@pytest.mark.parametrize("where", ["parent-owned-by-attacker", "src-writable-by-others"])
def test_restore_refuses_a_checkpoint_others_can_swap(workloads, ckpt_dir, attack_base, attacker_script, where):
    legit, evil = workloads(pid_namespace=True, minimum=3), workloads(pid_namespace=True, minimum=3)
    signed_checkpoint(legit, str(ckpt_dir / "legit"), leave_running=True)
    signed_checkpoint(evil, str(ckpt_dir / "evil"))
    evil.reap()
    parent = os.path.join(attack_base, "p")
    os.mkdir(parent, 0o755)
    src = os.path.join(parent, "ck")
    shutil.copytree(str(ckpt_dir / "legit"), src)
    if where == "parent-owned-by-attacker":
        # The attacker owns the parent: it moves its own directory in as SRC once the lock shows verification done.
        owned_by_nobody(parent)
        shutil.copytree(str(ckpt_dir / "evil"), os.path.join(parent, "evil"))
        owned_by_nobody(os.path.join(parent, "evil"), recursive=True)
        attacker = Attacker(attacker_script, "swap-on-create", parent, ".ck.lock", src, os.path.join(parent, "evil"))
    else:
        # A root-owned SRC that others may write: the attacker swaps images/ once verification is done.
        os.chmod(src, 0o777)
        shutil.copytree(str(ckpt_dir / "evil" / "images"), os.path.join(src, "evil-images"))
        owned_by_nobody(os.path.join(src, "evil-images"), recursive=True)
        attacker = Attacker(attacker_script, "swap-on-create", parent, ".ck.lock", os.path.join(src, "images"),
                            os.path.join(src, "evil-images"))

    restored = run_module("criu_restore", dict(src=src, hmac_key=KEY))
    attacker.proc.kill()
    seen = attacker.outcome()
    if restored.get("pid"):
        legit.adopt(restored["pid"])
    assert "Error" not in seen["stderr"], seen

    assert processes_running(evil.state_file) == [], "the attacker's images were restored as root"
    assert restored["failed"] and ("65534" in restored["msg"] or "writable by group/others" in restored["msg"]), restored
    assert "Nothing was restored" in restored["msg"], restored


def test_verify_refuses_a_checkpoint_others_can_write(workloads, ckpt_dir, attack_base):
    workload = workloads(pid_namespace=True, minimum=3)
    signed_checkpoint(workload, str(ckpt_dir / "ck"), leave_running=True)
    src = os.path.join(attack_base, "ck")
    shutil.copytree(str(ckpt_dir / "ck"), src)
    os.chmod(os.path.join(src, "images"), 0o777)
    verdict = run_module("criu_verify", dict(path=src, hmac_key=KEY))
    assert verdict["failed"] and verdict["valid"] is False, verdict
    assert any("images" in p and "writable by group/others" in p for p in verdict["problems"]), verdict


# 3. Whoever owns DEST's parent must not be able to take over the dump.
def test_checkpoint_refuses_a_dest_whose_parent_another_user_owns(workloads, attack_base, attacker_script):
    workload = workloads(pid_namespace=True, minimum=3)
    parent = owned_by_nobody(os.path.join(attack_base, "p"))
    attacker = Attacker(attacker_script, "hijack-staging", parent, ".ck.staging-", "ck", timeout=30)

    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=os.path.join(parent, "ck"),
                                              hmac_key=KEY, leave_running=True))
    attacker.proc.kill()
    seen = attacker.outcome()

    assert not seen.get("stolen_bytes"), "the attacker read %s bytes of the dumped memory" % seen.get("stolen_bytes")
    assert made["failed"] and "65534" in made["msg"], made
    assert not os.path.exists(os.path.join(parent, "ck")), "nothing may be published under the attacker's parent"


# 4. The criu that is checked is the criu that runs.
def test_criu_path_through_a_hop_another_user_controls_is_refused(workloads, ckpt_dir, attack_base, attacker_script):
    workload = workloads(pid_namespace=True, minimum=3)
    hop = owned_by_nobody(os.path.join(attack_base, "hop"))
    marker = os.path.join(attack_base, "pwned")
    evil = os.path.join(hop, "evil")
    with open(evil, "w") as handle:
        handle.write("#!/bin/sh\nid -u > %s\nexec %s \"$@\"\n" % (marker, CRIU))
    os.chmod(evil, 0o755)
    os.lchown(evil, NOBODY, NOBODY)
    os.symlink(CRIU, os.path.join(hop, "criu"))
    os.lchown(os.path.join(hop, "criu"), NOBODY, NOBODY)
    trusted = os.path.join(attack_base, "trusted")
    os.mkdir(trusted, 0o755)
    os.symlink(os.path.join(hop, "criu"), os.path.join(trusted, "criu"))
    attacker = Attacker(attacker_script, "repoint-on-open", CRIU, os.path.join(hop, "criu"), evil)

    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "ck"), leave_running=True,
                                              criu_path=os.path.join(trusted, "criu")))
    attacker.proc.kill()
    attacker.outcome()

    assert not os.path.exists(marker), "criu_path resolved through a hop owned by uid 65534 ran the attacker's program"
    assert made["failed"] and "65534" in made["msg"] and hop in made["msg"], made


@pytest.mark.serial  # it makes a library of this machine's criu writable, for a moment, to every other test too
def test_private_criu_tree_is_validated_end_to_end():
    """The role's criu is a real ELF whose loader and libraries are checked too: a writable library is refused."""
    info = run_module("criu_info", {})
    assert info["criu"]["usable"], info
    real = info["criu"]["path"]
    with open(real, "rb") as handle:
        assert handle.read(4) == b"\x7fELF", "the criu that runs must be the ELF that was validated, not a script"
    libraries = os.path.join(os.path.dirname(os.path.dirname(real)), "lib", os.uname().machine + "-linux-gnu")
    library = os.path.realpath(os.path.join(libraries, "libnftables.so.1"))
    mode = os.stat(library).st_mode
    os.chmod(library, mode | 0o002)
    try:
        info = run_module("criu_info", {})
    finally:
        os.chmod(library, mode)
    assert not info["criu"]["usable"], info
    assert any(library in p and "writable by group/others" in p for p in info["criu"]["problems"]), info


# 5. criu reads no configuration and no environment of the caller.
@pytest.mark.parametrize("how", ["home", "env"])
def test_criu_ignores_the_callers_config_and_environment(workloads, ckpt_dir, attack_base, how):
    workload = workloads(pid_namespace=True, minimum=3)
    marker = os.path.join(attack_base, "hook-ran")
    hook = os.path.join(attack_base, "hook.sh")
    with open(hook, "w") as handle:
        handle.write("#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION\" >> %s\n" % marker)
    os.chmod(hook, 0o755)
    home = os.path.join(attack_base, "home")
    os.makedirs(os.path.join(home, ".criu"))
    config = os.path.join(home, ".criu", "default.conf")
    with open(config, "w") as handle:
        handle.write("action-script %s\n" % hook)
    env = {"HOME": home} if how == "home" else {"CRIU_CONFIG_FILE": config}

    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "ck"), leave_running=True), env=env)

    assert made["changed"] and not made["failed"], (made.get("msg"), made.get("exception"))
    assert not os.path.exists(marker), "criu ran an action script named by the caller's configuration"


# 7. Keys: an empty key never turns signature checking off, short keys are refused.
@pytest.mark.parametrize("option", ["hmac_key", "hmac_key_file"])
def test_empty_key_is_refused_not_ignored(workloads, ckpt_dir, option):
    workload = workloads(pid_namespace=True, minimum=3)
    src = str(ckpt_dir / "ck")
    signed_checkpoint(workload, src, leave_running=True)
    metadata = json.loads(open(os.path.join(src, "metadata.json")).read())
    metadata["process"]["comm"] = "forged"
    with open(os.path.join(src, "metadata.json"), "w") as handle:
        handle.write(json.dumps(metadata))
    empty = {option: ""}
    verdict = run_module("criu_verify", dict(path=src, **empty))
    assert verdict["failed"] and option in verdict["msg"] and "empty" in verdict["msg"], verdict
    restored = run_module("criu_restore", dict(src=src, **empty))
    assert restored["failed"] and option in restored["msg"], restored
    assert workload.copies() == [workload.pid], "nothing may be restored"


def test_signed_checkpoint_without_key_fails_unless_the_caller_opts_out(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    src = str(ckpt_dir / "ck")
    signed_checkpoint(workload, src, leave_running=True)
    verdict = run_module("criu_verify", dict(path=src))
    assert verdict["failed"] and "signed" in verdict["msg"] and "skip_signature_check" in verdict["msg"], verdict
    opted_out = run_module("criu_verify", dict(path=src, skip_signature_check=True))
    assert opted_out["valid"] and opted_out["signed"] and not opted_out["signature_checked"], opted_out


def test_short_key_is_refused_for_signing(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "ck"), hmac_key="k", leave_running=True))
    assert made["failed"] and "16 bytes" in made["msg"], made
    assert not os.path.exists(str(ckpt_dir / "ck"))


# 8. force replaces only a checkpoint this collection made.
@pytest.mark.parametrize("kind", ["other-users-dir", "regular-file", "symlink", "foreign-dir"])
def test_force_replaces_only_our_checkpoints(workloads, ckpt_dir, kind):
    workload = workloads(pid_namespace=True, minimum=3)
    dest = str(ckpt_dir / "dest")
    precious = str(ckpt_dir / "precious")
    with open(precious, "w") as handle:
        handle.write("keep me\n")
    if kind == "other-users-dir":
        os.mkdir(dest)
        shutil.copy(precious, os.path.join(dest, "file"))
        owned_by_nobody(dest, recursive=True)
    elif kind == "regular-file":
        shutil.copy(precious, dest)
    elif kind == "symlink":
        os.symlink(precious, dest)
    else:
        os.mkdir(dest, 0o700)
        shutil.copy(precious, os.path.join(dest, "file"))

    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=dest, force=True, leave_running=True))

    assert made["failed"] and dest in made["msg"], made
    assert open(precious).read() == "keep me\n"
    assert os.path.lexists(dest) and (os.path.islink(dest) or os.path.isfile(dest) or os.listdir(dest) == ["file"])


# 9. The lesser points.
def test_results_carry_the_command_name_not_its_arguments(tmp_path, ckpt_dir):
    # The state file's path is an argument: it stands for a secret passed on a command line.
    workload = Workload(str(tmp_path / "state-hunter2-password"), [], pid_namespace=True)
    try:
        workload.wait_count(3)
        made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / "ck"), leave_running=True))
        verdict = run_module("criu_verify", dict(path=str(ckpt_dir / "ck")))
    finally:
        workload.stop()
    assert made["changed"], made
    for result in (made, verdict):
        assert "hunter2-password" not in json.dumps(result), result
    assert made["checkpoint"]["process"]["comm"], made
    assert "hunter2-password" in open(str(ckpt_dir / "ck" / "metadata.json")).read()
    assert os.stat(str(ckpt_dir / "ck" / "metadata.json")).st_mode & 0o077 == 0


def test_images_are_private(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    signed_checkpoint(workload, str(ckpt_dir / "ck"), leave_running=True)
    images = ckpt_dir / "ck" / "images"
    modes = {p.name: p.stat().st_mode & 0o777 for p in images.iterdir()}
    assert modes and all(mode == 0o600 for mode in modes.values()), modes


def test_an_image_hard_linked_elsewhere_is_refused(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    src = ckpt_dir / "ck"
    signed_checkpoint(workload, str(src), leave_running=True)
    core = next(src.glob("images/core-*.img"))
    os.link(str(core), str(ckpt_dir / "outside.img"))
    verdict = run_module("criu_verify", dict(path=str(src), hmac_key=KEY))
    assert verdict["failed"] and any(core.name in p and "hard link" in p for p in verdict["problems"]), verdict


def test_overlong_dest_name_is_a_clear_error(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(ckpt_dir / ("x" * 245)), leave_running=True))
    assert made["failed"] and "Errno" not in made["msg"] and "200" in made["msg"], made


def test_empty_checkpoint_is_not_valid(ckpt_dir):
    src = ckpt_dir / "empty"
    (src / "images").mkdir(parents=True, mode=0o700)
    os.chmod(str(src), 0o700)
    metadata = {
        "schema_version": 1, "id": "x", "name": "empty", "created_at": "2026-01-01T00:00:00.000000Z",
        "source": {"arch": os.uname().machine}, "criu": {}, "process": {"pid": 1, "tree": [1]}, "options": {},
        "manifest": [],
    }
    (src / "metadata.json").write_text(json.dumps(metadata))
    verdict = run_module("criu_verify", dict(path=str(src)))
    assert verdict["failed"] and any("inventory.img" in p for p in verdict["problems"]), verdict


def test_huge_sparse_image_is_refused_by_size_before_hashing(workloads, ckpt_dir):
    workload = workloads(pid_namespace=True, minimum=3)
    src = ckpt_dir / "ck"
    signed_checkpoint(workload, str(src), leave_running=True)
    pages = max(src.glob("images/pages-*.img"), key=lambda p: p.stat().st_size)
    os.truncate(str(pages), 64 << 30)
    started = time.monotonic()
    verdict = run_module("criu_verify", dict(path=str(src), hmac_key=KEY))
    elapsed = time.monotonic() - started
    assert verdict["failed"] and any(pages.name in p and "size expected" in p for p in verdict["problems"]), verdict
    assert elapsed < 20, "a size mismatch must be found without hashing 64 GiB (took %.1fs)" % elapsed


def test_verification_is_bounded_by_the_timeout(workloads, ckpt_dir):
    """An unsigned checkpoint whose manifest claims a huge image: hashing stops at the timeout."""
    workload = workloads(pid_namespace=True, minimum=3)
    src = ckpt_dir / "ck"
    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=str(src), leave_running=True))
    assert made["changed"], made
    pages = max(src.glob("images/pages-*.img"), key=lambda p: p.stat().st_size)
    os.truncate(str(pages), 64 << 30)
    metadata = json.loads((src / "metadata.json").read_text())
    for entry in metadata["manifest"]:
        if entry["path"] == pages.name:
            entry["size"] = 64 << 30
            entry["chunks"] = ["0" * 64] * ((64 << 30) // metadata["manifest_chunk_bytes"])
    (src / "metadata.json").write_text(json.dumps(metadata))
    started = time.monotonic()
    verdict = run_module("criu_verify", dict(path=str(src), timeout=2))
    elapsed = time.monotonic() - started
    assert verdict["failed"] and "did not finish within 2s" in verdict["msg"], verdict
    assert elapsed < 20, "verification ran %.1fs past a 2s timeout" % elapsed


# --- round three: a directory others can write never holds our files ------------------------------------------

def as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] + list(argv), check=True)


def shared_sticky(attack_base: str) -> str:
    """A root-owned sticky directory every user can write, as /tmp and /var/tmp are."""
    shared = os.path.join(attack_base, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    return shared


def test_a_name_planted_in_a_shared_parent_cannot_undo_a_dump(workloads, attack_base):
    """uid 65534 makes a directory named like a failed dump's log beside DEST. The dump that was to end the workload
    published its checkpoint, the clean-up after it failed on that name, and the failure handler resumed the workload:
    a valid checkpoint beside the running original, a second copy at the next restore. A DEST whose parent others can
    write is now refused before anything is dumped."""
    workload = workloads(pid_namespace=True, minimum=3)
    shared = shared_sticky(attack_base)
    as_nobody("mkdir", os.path.join(shared, ".ck.dump-failed.log"))

    made = run_module("criu_checkpoint", dict(pid=workload.pid, dest=os.path.join(shared, "ck"), hmac_key=KEY))

    assert made["failed"] and ("Checkpoint parent %s is a directory other users can write (mode 1777)" % shared) in made["msg"], made
    assert not os.path.lexists(os.path.join(shared, "ck")), "nothing may be dumped into a shared directory"
    assert workload.copies() == [workload.pid] and workload.wait_count(workload.state()[1] + 2)


def test_a_journal_planted_in_a_shared_migrate_dir_kills_nothing(attack_base):
    """uid 65534 writes a migration journal into a shared migrate_dir, naming a root process as the migration's criu:
    the rerun-is-recovery of criu_migrate SIGKILLed it (with pid 1, every process of the host) before its preflight.
    A migrate_dir others can write is now refused before any file in it is read."""
    shared = shared_sticky(attack_base)
    victim = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        with open("/proc/%d/stat" % victim.pid) as handle:
            starttime = int(handle.read().rpartition(")")[2].split()[19])
        journal = {"format": 1, "name": "web", "phase": "frozen", "history": [], "outcome": None, "decision": None,
                   "role": "source", "mode": "copy", "criu": [victim.pid, starttime],
                   "process": {"pid": victim.pid, "starttime": starttime, "tree": [[victim.pid, starttime]]},
                   "target": {"label": "127.0.0.1:1", "host": "127.0.0.1"}, "settings": {"timeout": 5}}
        as_nobody("/usr/bin/python3", "-c", "import json, sys; open(sys.argv[1], 'w').write(sys.argv[2])",
                  os.path.join(shared, "web.journal.json"), json.dumps(journal))

        result = run_module("criu_migrate", dict(name="web", pid=victim.pid, target="127.0.0.1", ssh_port=1,
                                                 migrate_dir=shared, timeout=5))

        assert result["failed"] and ("Migration directory %s is a directory other users can write (mode 1777)" % shared) in result["msg"], result
        assert victim.poll() is None, "a planted journal killed a root process"
        assert sorted(os.listdir(shared)) == ["web.journal.json"], "nothing may be written into a shared migrate_dir"
    finally:
        victim.kill()
        victim.wait()


# --- round three: criu never reopens a workload's file through a symlink planted after the dump ----------------

OPTION_WORKLOAD = os.path.join(REPO, "tests", "integration", "option_workload.py")


def test_a_restore_never_reopens_a_file_through_a_symlink_planted_after_the_dump(workloads, ckpt_dir, attack_base):
    """A root workload appends to its log in a directory uid 65534 owns. After the dump uid 65534 swaps the log for a
    symlink to a root-owned file: criu restore reopened the log by its path, as root, through the symlink, and the
    restored workload appended its lines to the root-owned file (a signed, verified checkpoint). Every path a restore
    reopens is now held to the chain rule first."""
    owned = owned_by_nobody(os.path.join(attack_base, "owned"))
    log = os.path.join(owned, "app.log")
    victim = os.path.join(attack_base, "victim")
    with open(victim, "w") as handle:
        handle.write("precious\n")
    os.chmod(victim, 0o644)
    workload = workloads("append", log, pid_namespace=True, program=OPTION_WORKLOAD, minimum=3)
    signed_checkpoint(workload, str(ckpt_dir / "ck"))
    workload.reap()
    as_nobody("sh", "-c", 'rm -f "$0" && ln -s "$1" "$0"', log, victim)

    restored = run_module("criu_restore", dict(src=str(ckpt_dir / "ck"), hmac_key=KEY))
    if restored.get("pid"):
        workload.adopt(restored["pid"])
        time.sleep(0.5)

    with open(victim) as handle:
        assert handle.read() == "precious\n", "the restored workload wrote into a root-owned file through the symlink"
    assert restored["failed"] and "Directory %s is owned by uid 65534" % owned in restored["msg"], restored
    assert "criu restore reopens the workload's files by these paths as root" in restored["msg"], restored


def test_a_forged_restore_record_decides_nothing(workloads, ckpt_dir):
    """A holder of the checkpoint's storage adds a restored.json naming a live process (all its fields are public): a
    keyed criu_restore returned ok with that pid and restored nothing. With a key, only a signed record counts."""
    workload = workloads(pid_namespace=True, minimum=3)
    src = str(ckpt_dir / "ck")
    made = signed_checkpoint(workload, src)
    workload.reap()
    decoy = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        with open("/proc/%d/stat" % decoy.pid) as handle:
            starttime = int(handle.read().rpartition(")")[2].split()[19])
        with open("/proc/sys/kernel/random/boot_id") as handle:
            boot_id = handle.read().strip()
        with open(os.path.join(src, "restored.json"), "w") as handle:
            json.dump({"pid": decoy.pid, "starttime": starttime, "boot_id": boot_id, "checkpoint_id": made["checkpoint"]["id"]},
                      handle)

        restored = run_module("criu_restore", dict(src=src, hmac_key=KEY))
        if restored.get("pid") and restored["pid"] != decoy.pid:
            workload.adopt(restored["pid"])

        assert restored["changed"] and restored["pid"] != decoy.pid, restored
        assert workload.copies() == [restored["pid"]], "the workload must really be restored"
        again = run_module("criu_restore", dict(src=src, hmac_key=KEY))
        assert not again["changed"] and again["pid"] == restored["pid"], "our own signed record counts"
    finally:
        decoy.kill()
        decoy.wait()


# --- round three: criu loads no plugin but ours (none) ------------------------------------------------------------

PLUGIN_DIR = "/usr/lib/criu"  # criu's compiled-in plugin directory


@pytest.mark.serial  # the planted plugin would be loaded by any criu Podman runs meanwhile
@pytest.mark.skipif(os.path.lexists(PLUGIN_DIR), reason="this host has criu plugins of its own in %s" % PLUGIN_DIR)
def test_criu_loads_no_plugin_from_its_default_directory(workloads, ckpt_dir, tmp_path):
    """criu dlopen()s every .so in its plugin directory into itself, as root, at each dump and restore; nucleus.criu
    points it at its own work directory, which holds none."""
    marker = tmp_path / "plugin-ran"
    source = tmp_path / "plugin.c"
    source.write_text('#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void ran(void) '
                      '{ char exe[256] = {0}; readlink("/proc/self/exe", exe, 255); FILE *f = fopen("%s", "a"); '
                      'if (f) { fprintf(f, "loaded into %%s\\n", exe); fclose(f); } }\n' % marker)
    os.makedirs(PLUGIN_DIR, mode=0o755)
    try:
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", os.path.join(PLUGIN_DIR, "planted.so"), str(source)], check=True)
        workload = workloads(pid_namespace=True, minimum=3)
        signed_checkpoint(workload, str(ckpt_dir / "ck"))
        workload.reap()
        restored = run_module("criu_restore", dict(src=str(ckpt_dir / "ck"), hmac_key=KEY))
        if restored.get("pid"):
            workload.adopt(restored["pid"])
        assert restored["changed"], restored
        assert not marker.exists(), "criu loaded a plugin it was not given: %s" % marker.read_text()
    finally:
        shutil.rmtree(PLUGIN_DIR)
