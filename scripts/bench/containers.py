# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container rows: bare Podman next to the modules, on this machine (issue 14).

A container of the tests' busybox image holding MIB of touched memory (busybox awk doubling a string; 0: the tests'
counter alone), in the order that rotates from run to run:

  bare     podman container checkpoint --export F --compress none | podman container restore --import F --name COPY
  module   criu_checkpoint (container=...) in a fresh interpreter (child.py) | criu_restore (container_name=COPY)

Each variant checkpoints a container of its own (a checkpoint stops it) and restores it beside the original under
another name; both are removed before the next step.

With the ssh test hosts (each with Podman storage of its own, the image loaded on both), a migration host-a -> host-b:

  migrate_bare     bare.py on host-a: podman container checkpoint --export, the export into an ssh session opened
                   before the clock, podman container restore --import on host-b
  migrate_module   the migrate role (migrate_container), its downtime from the source's journal
"""

from __future__ import annotations

import os
import secrets
import shlex
import typing as t

from bench.env import BenchError, log, run_checked
from bench.local import in_process
from bench.migration import Bench, bare_dir, journal_of, playbook, run_bare
from bench.summary import rotate
from conftest import PODMAN_ENV, ensure_test_image, podman, wait_for
from testhosts import MIGRATIONS, Hosts
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT, RESTORE

VARIANTS = ("bare", "module")
MIGRATION_VARIANTS = ("bare", "module")
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"
# The string doubles until it holds MIB MiB, every page written; then the shell (and awk, waiting) sleeps on.
BALLAST = ("awk 'BEGIN { s = \"0123456789abcdef\"; while (length(s) < %d) s = s s; "
           "print length(s) > \"/tmp/ready\"; close(\"/tmp/ready\"); system(\"sleep 100000\") }'")


def command(mib: int) -> t.List[str]:
    return ["sh", "-c", BALLAST % (mib * 1024 * 1024) if mib else COUNTER]


def ready_file(mib: int) -> str:
    return "/tmp/ready" if mib else "/tmp/n"


def start(mib: int) -> str:
    name = "nucleus-bench-%d-%s" % (mib, secrets.token_hex(3))
    podman("run", "-d", "--name", name, ensure_test_image(), *command(mib))
    wait_for(lambda: podman("exec", name, "cat", ready_file(mib), check=False).returncode == 0, timeout=120 + mib / 4,
             what="container %s ready" % name)
    return name


def start_on(hosts: Hosts, host: str, mib: int, label: str) -> str:
    """A container on test host ``host`` (its own Podman), once it is ready."""
    q = shlex.quote
    hosts.run(host, "podman run -d --name %s %s %s" % (q(label), q(ensure_test_image()), " ".join(q(part) for part in command(mib))))
    wait_for(lambda: hosts.run(host, "podman exec %s cat %s" % (q(label), ready_file(mib)), check=False), timeout=120 + mib / 4,
             what="container %s ready on host-%s" % (label, host))
    return label


def state_on(hosts: Hosts, host: str, name: str) -> str:
    return hosts.run(host, "podman container inspect --format '{{.State.Status}}' %s" % shlex.quote(name), check=False).strip()


def remove_on(hosts: Hosts, name: str) -> None:
    for host in ("a", "b"):
        hosts.run(host, "podman rm --force --time 0 %s; rm -rf %s %s/%s %s/%s.* %s/.%s.*" % (
            shlex.quote(name), bare_dir(name), MIGRATIONS, name, MIGRATIONS, name, MIGRATIONS, name), check=False)


def migrate_bare(hosts: Hosts, mib: int, label: str) -> t.Dict[str, float]:
    name = start_on(hosts, "a", mib, label)
    try:
        hosts.run("a", "mkdir -p -m 0700 %s" % bare_dir(name))
        stamps = run_bare(hosts, {"container": name, "dir": bare_dir(name)})
        if state_on(hosts, "b", name) != "running":
            raise BenchError("bare container migration: %s is %r on host-b" % (name, state_on(hosts, "b", name)))
    finally:
        remove_on(hosts, name)
    return {"migrate_bare_downtime_s": stamps["t3"] - stamps["t0"], "migrate_bare_checkpoint_s": stamps["t1"] - stamps["t0"],
            "migrate_bare_transfer_s": stamps["t2"] - stamps["t1"], "migrate_bare_restore_s": stamps["t3"] - stamps["t2"]}


def migrate_module(hosts: Hosts, bench: Bench, mib: int, label: str) -> t.Dict[str, float]:
    name = start_on(hosts, "a", mib, label)
    try:
        wall, _profile = playbook(hosts, bench, {"migrate_source": "host-a", "migrate_target": "host-b", "migrate_container": name,
                                                 "migrate_name": name}, "ansible-playbook nucleus.criu.migrate (container %s)" % name)
        journal = journal_of(hosts, "a", name)
        if state_on(hosts, "b", name) != "running" or state_on(hosts, "a", name):
            raise BenchError("container %s after its migration: host-a %r, host-b %r" % (
                name, state_on(hosts, "a", name), state_on(hosts, "b", name)))
    finally:
        remove_on(hosts, name)
    return {"migrate_module_downtime_s": float(journal["downtime_seconds"]), "migrate_module_checkpoint_s": journal["dump_seconds"],
            "migrate_module_playbook_s": wall, "migrate_export_bytes": journal["image_bytes"]}


def load_image(hosts: Hosts, run_dir: str) -> None:
    """The test image on both test hosts, under its id and name (podman save here, podman load there)."""
    archive = os.path.join(run_dir, "image.tar")
    podman("image", "save", "--output", archive, ensure_test_image())
    try:
        for host in ("a", "b"):
            hosts.run(host, "podman image load --input %s" % shlex.quote(archive))
    finally:
        os.unlink(archive)


def remove(*names: str) -> None:
    for name in names:
        podman("rm", "--force", "--", name, check=False)


def bare(run_dir: str, mib: int, label: str) -> t.Dict[str, float]:
    name, copy = start(mib), "%s-copy" % label
    export = os.path.join(run_dir, "%s.tar" % label)
    try:
        checkpoint_s = run_checked(["podman", "container", "checkpoint", "--export", export, "--compress", "none", "--", name],
                                   "podman container checkpoint %s" % name, env=PODMAN_ENV)[0]
        restore_s = run_checked(["podman", "container", "restore", "--import", export, "--name", copy],
                                "podman container restore --import %s" % export, env=PODMAN_ENV)[0]
        return {"export_bytes": os.path.getsize(export), "checkpoint_bare_s": checkpoint_s, "restore_bare_s": restore_s}
    finally:
        remove(name, copy)
        if os.path.exists(export):
            os.unlink(export)


def module(run_dir: str, mib: int, label: str) -> t.Dict[str, t.Any]:
    name, copy = start(mib), "%s-copy" % label
    dest = os.path.join(run_dir, "%s-ckpt" % label)
    try:
        made = in_process("checkpoint", CHECKPOINT.defaults(container=name, dest=dest, timeout=600))
        restored = in_process("restore", RESTORE.defaults(src=dest, container_name=copy, timeout=600))
        if podman("container", "inspect", "--format", "{{.State.Status}}", copy).stdout.strip() != "running":
            raise BenchError("the restored container %s is not running" % copy)
        return {"checkpoint_module_s": made["elapsed"], "checkpoint_module_podman_s": made["stats"]["dump_seconds"],
                "restore_module_s": restored["elapsed"], "restore_module_podman_s": restored["stats"]["restore_seconds"],
                "restore_module_verify_s": restored["stats"]["verify_seconds"],
                "checkpoint_module_rss_kib": made["maxrss_kib"], "restore_module_rss_kib": restored["maxrss_kib"]}
    finally:
        remove(name, copy)


def container_run(run_dir: str, mib: int, index: int, hosts: t.Optional[Hosts], bench: Bench) -> t.Dict[str, t.Any]:
    """One run of every variant for a container of ``mib`` MiB, in rotated order (migrations with ``hosts``)."""
    run: t.Dict[str, t.Any] = {"size_mib": mib, "run": index}
    for variant in rotate(VARIANTS, index):
        label = "c%d-%s-r%d" % (mib, variant, index)
        log("container %d MiB, run %d: %s" % (mib, index + 1, variant))
        run.update((bare if variant == "bare" else module)(run_dir, mib, label))
    if hosts is None:
        return run
    for variant in rotate(MIGRATION_VARIANTS, index):
        label = "c%d-migrate-%s-r%d-%s" % (mib, variant, index, secrets.token_hex(2))
        log("container %d MiB, run %d: migration, %s" % (mib, index + 1, variant))
        run.update(migrate_bare(hosts, mib, label) if variant == "bare" else migrate_module(hosts, bench, mib, label))
    return run
