# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The container rows: bare Podman next to the modules, on this machine (issue 14).

A container of the tests' busybox image holding MIB of touched memory (busybox awk doubling a string; 0: the tests'
counter alone), in the order that rotates from run to run:

  bare     podman container checkpoint --export F --compress none | podman container restore --import F --name COPY
  module   criu_checkpoint (container=...) in a fresh interpreter (child.py) | criu_restore (container_name=COPY)

Each variant checkpoints a container of its own (a checkpoint stops it) and restores it beside the original under
another name; both are removed before the next step.
"""

from __future__ import annotations

import os
import secrets
import typing as t

from bench.env import BenchError, log, run_checked
from bench.local import in_process
from bench.summary import rotate
from conftest import PODMAN_ENV, ensure_test_image, podman, wait_for
from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT, RESTORE

VARIANTS = ("bare", "module")
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"
# The string doubles until it holds MIB MiB, every page written; then the shell (and awk, waiting) sleeps on.
BALLAST = ("awk 'BEGIN { s = \"0123456789abcdef\"; while (length(s) < %d) s = s s; "
           "print length(s) > \"/tmp/ready\"; close(\"/tmp/ready\"); system(\"sleep 100000\") }'")


def start(mib: int) -> str:
    name = "nucleus-bench-%d-%s" % (mib, secrets.token_hex(3))
    podman("run", "-d", "--name", name, ensure_test_image(), "sh", "-c", BALLAST % (mib * 1024 * 1024) if mib else COUNTER)
    ready = "/tmp/ready" if mib else "/tmp/n"
    wait_for(lambda: podman("exec", name, "cat", ready, check=False).returncode == 0, timeout=120 + mib / 4,
             what="container %s ready" % name)
    return name


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


def container_run(run_dir: str, mib: int, index: int) -> t.Dict[str, t.Any]:
    """One run of both variants for a container of ``mib`` MiB, in rotated order."""
    run: t.Dict[str, t.Any] = {"size_mib": mib, "run": index}
    for variant in rotate(VARIANTS, index):
        label = "c%d-%s-r%d" % (mib, variant, index)
        log("container %d MiB, run %d: %s" % (mib, index + 1, variant))
        run.update((bare if variant == "bare" else module)(run_dir, mib, label))
    return run
