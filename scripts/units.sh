#!/usr/bin/env bash
# Run `ansible-test units` for nucleus.criu, as a contributor would, offline.
#
# Usage: scripts/units.sh [extra ansible-test units args, e.g. tests/unit/plugins/module_utils/test_store.py]
#
# Environment:
#   VENV          virtualenv holding ansible-core and the unit tests' requirements (default: <repo>/.venv)
#   UNITS_BUILD   where the ansible_collections/ copy lives (default: <repo>/build/ansible-test-units)
#
# How it works (as scripts/sanity.sh):
#   * ansible-test needs a REAL .../ansible_collections/nucleus/criu/ path, so the collection is copied
#     into UNITS_BUILD (scripts/lib/collection_tree.sh);
#   * `--local`: the tests run with this venv's Python, which has ansible-test's unit test requirements
#     (pytest, pytest-mock, pytest-xdist, mock) and tests/unit/requirements.txt (hypothesis, protobuf),
#     all pinned in requirements/test.txt; nothing is installed. Elsewhere,
#     `ansible-test units --venv --requirements --python X.Y` installs them from those files.
#   * No root needed; tests that need root skip themselves.
#   * ansible-test passes a pytest run that ran no test at all (pytest-xdist workers that crashed while loading a
#     conftest make one), so each context's junit report must count tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
UNITS_BUILD="${UNITS_BUILD:-$ROOT/build/ansible-test-units}"
DEST="$UNITS_BUILD/ansible_collections/nucleus/criu"

# shellcheck source=scripts/lib/collection_tree.sh
source "$ROOT/scripts/lib/collection_tree.sh"
PYVER="$(venv_python_version units.sh "$VENV")"
export PATH="$VENV/bin:$PATH"

collection_tree "$ROOT" "$DEST"

cd "$DEST"
ansible-test units --local --python "$PYVER" --color no "$@"
"$VENV/bin/python" - tests/output/junit <<'EOF'
import glob
import os
import sys
import xml.etree.ElementTree as ET

reports = sorted(glob.glob(os.path.join(sys.argv[1], "*-units.xml")))
if not reports:
    sys.exit("units.sh: FAILED: ansible-test wrote no junit report in %s" % sys.argv[1])
for report in reports:
    tests = sum(int(suite.get("tests", "0")) for suite in ET.parse(report).getroot().iter("testsuite"))
    print("units.sh: %s: %d tests" % (os.path.basename(report), tests))
    if not tests:
        sys.exit("units.sh: FAILED: no test ran in %s (did pytest or its workers crash? see above)" % os.path.basename(report))
EOF
echo "units.sh: OK"
