"""ansible-doc renders every module and role of the collection, with its options."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible_collections.nucleus.criu.plugins.module_utils import _argspec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_DOC = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
# The directory holding the ansible_collections/ this process imports the collection from (pytest-ansible's
# collections/ tree, or ansible-test's copy): ansible-doc is pointed at the same one.
COLLECTIONS = os.path.abspath(os.path.join(os.path.dirname(_argspec.__file__), *[os.pardir] * 5))


@pytest.mark.parametrize("kind, name, expected", [
    ("module", "criu_checkpoint", ["leave_stopped", "tcp_established", "hmac_key_file", "frozen_at"]),
    ("module", "criu_restore", ["verify", "require_signature", "restored_at"]),
    ("module", "criu_verify", ["check_host", "problems"]),
    ("module", "criu_info", ["missing_features", "can_checkpoint"]),
    ("role", "criu", ["criu_private_tree", "criu_link_path"]),
    ("role", "migrate", ["migrate_source", "migrate_pidfile", "migrate_workloads", "migrate_cleanup"]),
    ("module", "criu_drain_facts", ["reserve_mib", "capacity_mib", "memory_bytes"]),
    ("role", "drain", ["drain_source", "drain_targets", "drain_parallel", "drain_capacity_mib"]),
    ("filter", "drain_plan", ["worst-fit decreasing", "per_target"]),
])
def test_ansible_doc_renders(kind, name, expected):
    proc = subprocess.run([ANSIBLE_DOC, "-t", kind, "nucleus.criu.%s" % name], cwd=REPO, capture_output=True, text=True,
                          check=False, env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_COLLECTIONS_PATH=COLLECTIONS))
    assert proc.returncode == 0, proc.stderr
    for word in expected:
        assert word in proc.stdout, (word, proc.stdout[:2000])
