"""Docs that match: every key the modules really return is in their RETURN, with the documented type, and every key
RETURN says is always returned is there (tests/unit/plugins/modules/return_docs.py compares them). The modules run for
real, each on its branches that shape a result differently: check mode, a change, a rerun that changes nothing, a
failure that reports details; on a process this test started, and on a Podman container this test started.

criu_migrate needs a pair of hosts: tests/unit/plugins/modules/test_return_docs.py holds its result, built by the
code that builds it, against its RETURN."""

from __future__ import annotations

import os
import re
import secrets
import typing as t

import pytest

from ansible_collections.nucleus.criu.tests.unit.plugins.modules.return_docs import return_doc, undocumented
from conftest import REPO, podman, run_module, wait_for

KEY = "return-docs-test-key-0123456789"
# Dicts documented as a whole, without contains: their keys are data (criu's and Podman's own statistics, the criu
# options recorded, counts by kind), or the parts of a checkpoint's metadata, which docs/format.md documents field by
# field (held against it below).
METADATA_PARTS = ("source", "criu", "process", "options", "restore_needs", "container", "manifest[]")
WHOLE = {
    "criu_checkpoint": ["stats.criu", "stats.podman"] + ["checkpoint." + part for part in METADATA_PARTS],
    "criu_restore": ["stats.criu", "stats.podman", "container.labels"] + ["checkpoint." + part for part in METADATA_PARTS],
    "criu_verify": ["checkpoint." + part for part in METADATA_PARTS],
    "criu_checkpoint_info": ["checkpoints[].options", "checkpoints[].details.files", "checkpoints[].details.sockets"],
    "criu_info": [],
}


def format_fields() -> t.Set[str]:
    """The fields docs/format.md's tables name (``process.pid``, ``manifest[].chunks``, ...)."""
    with open(os.path.join(REPO, "docs", "format.md")) as handle:
        rows = [line.split("|")[1] for line in handle if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row)}


def metadata_problems(checkpoint: t.Mapping[str, t.Any], fields: t.Set[str]) -> t.List[str]:
    """The fields of a returned checkpoint's metadata parts that docs/format.md does not name (restore_needs holds
    restore options, named as the options are)."""
    named = ["%s.%s" % ("options" if part == "restore_needs" else part, key)
             for part in METADATA_PARTS if part != "manifest[]" and isinstance(checkpoint.get(part), dict)
             for key in checkpoint[part]]
    named += ["manifest[].%s" % key for entry in checkpoint.get("manifest", []) for key in entry]
    return ["checkpoint.%s: returned, not in docs/format.md" % name for name in sorted(set(named)) if name not in fields]


class Results:
    """Every result of the modules run here, each held against its module's RETURN at the end."""

    def __init__(self) -> None:
        self.seen: t.List[t.Tuple[str, str, t.Dict[str, t.Any]]] = []

    def run(self, label: str, module: str, args: t.Mapping[str, t.Any], check: bool = False,
            fails: bool = False) -> t.Dict[str, t.Any]:
        result = run_module(module, args, check=check)
        assert result["failed"] == fails, (label, result.get("msg"), result.get("exception"), result)
        self.seen.append((label, module, result))
        return result

    def problems(self) -> t.List[str]:
        found = []
        fields = format_fields()
        for label, module, result in self.seen:
            problems = undocumented(result, return_doc(module), WHOLE[module])
            if isinstance(result.get("checkpoint"), dict):
                problems += metadata_problems(result["checkpoint"], fields)
            found += ["%s (%s): %s" % (module, label, problem) for problem in problems]
        return found


def tamper(path: t.Any) -> None:
    """Flip one byte of the largest page image under ``path``/images."""
    pages = max((path / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[100] ^= 0xFF
    pages.write_bytes(bytes(data))


@pytest.mark.slow
def test_every_key_a_process_run_returns_is_documented(workloads, ckpt_dir, tmp_path):
    results = Results()
    workload = workloads("--mem", "1")
    results.run("host", "criu_info", {})
    results.run("process and key", "criu_info", dict(pid=workload.pid, hmac_key=KEY))
    results.run("short key", "criu_info", dict(hmac_key="short"))
    results.run("engine", "criu_info", dict(engine="podman"))

    kept = ckpt_dir / "kept"
    args = dict(pid=workload.pid, dest=str(kept / "job-1"), name="job", leave_running=True, hmac_key=KEY, keep=1)
    results.run("check mode, missing parent", "criu_checkpoint", args, check=True)
    results.run("dump", "criu_checkpoint", args)
    results.run("unchanged", "criu_checkpoint", args)
    results.run("unchanged, check mode", "criu_checkpoint", args, check=True)
    newer = results.run("dump, keep", "criu_checkpoint", dict(args, dest=str(kept / "job-2")))
    assert newer["removed"] == [str(kept / "job-1")], newer
    results.run("check mode, replace", "criu_checkpoint", dict(args, dest=str(kept / "job-2"), force=True), check=True)
    results.run("absent, check mode", "criu_checkpoint", dict(dest=str(kept / "job-2"), state="absent"), check=True)

    results.run("verify", "criu_verify", dict(path=str(kept / "job-2"), hmac_key=KEY))
    results.run("listing, missing path", "criu_checkpoint_info", dict(path=str(ckpt_dir / "none")))
    results.run("listing", "criu_checkpoint_info", dict(path=str(kept)))
    results.run("listing, details", "criu_checkpoint_info", dict(path=str(kept), details=True, hmac_key=KEY))
    tamper(kept / "job-2")
    results.run("tampered", "criu_verify", dict(path=str(kept / "job-2"), hmac_key=KEY), fails=True)
    results.run("listing, tampered", "criu_checkpoint_info", dict(path=str(kept), details=True, hmac_key=KEY))
    results.run("absent", "criu_checkpoint", dict(dest=str(kept / "job-2"), state="absent"))

    # A checkpoint that ends the process (the test's own), restored.
    ended = ckpt_dir / "ended"
    results.run("dump, ends it", "criu_checkpoint", dict(pid=workload.pid, dest=str(ended)))
    workload.reap()
    results.run("verify, host", "criu_verify", dict(path=str(ended), check_host=True))
    restore = dict(src=str(ended), pidfile=str(tmp_path / "restored.pid"))
    results.run("restore, check mode", "criu_restore", restore, check=True)
    restored = results.run("restore", "criu_restore", restore)
    workload.adopt(restored["pid"])
    results.run("restore, unchanged", "criu_restore", restore)
    results.run("restore, unchanged, check mode", "criu_restore", restore, check=True)
    results.run("verify, unsigned", "criu_verify", dict(path=str(ended)))
    assert not results.problems(), "\n".join(results.problems())


@pytest.fixture
def container(container_host):
    """A counting container this test started, removed (with the copy restored from it) at teardown."""
    names = ["nucleus-test-docs-%s" % secrets.token_hex(3)]
    names.append(names[0] + "-copy")
    podman("run", "-d", "--name", names[0], container_host, "sh", "-c", "while :; do date > /tmp/d; sleep 0.05; done")
    wait_for(lambda: podman("exec", names[0], "cat", "/tmp/d", check=False).returncode == 0, what="the container running")
    yield names
    for name in names:
        podman("rm", "--force", "--time", "0", "--", name, check=False)


def test_every_key_a_container_run_returns_is_documented(container, ckpt_dir):
    name, copy = container
    results = Results()
    results.run("engine", "criu_info", dict(engine="podman"))
    dest = str(ckpt_dir / "web")
    args = dict(container=name, dest=dest, leave_running=True, hmac_key=KEY)
    results.run("container, check mode", "criu_checkpoint", args, check=True)
    results.run("container", "criu_checkpoint", args)
    results.run("container, unchanged", "criu_checkpoint", args)
    results.run("container", "criu_verify", dict(path=dest, hmac_key=KEY, check_host=True))
    results.run("container, details", "criu_checkpoint_info", dict(path=str(ckpt_dir), details=True, hmac_key=KEY))
    restore = dict(src=dest, hmac_key=KEY, container_name=copy, ignore_static_ip=True, ignore_static_mac=True)
    results.run("container restore, check mode", "criu_restore", restore, check=True)
    results.run("container restore", "criu_restore", restore)
    results.run("container restore, unchanged", "criu_restore", restore)
    assert not results.problems(), "\n".join(results.problems())
