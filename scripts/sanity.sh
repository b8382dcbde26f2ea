#!/usr/bin/env bash
# Run `ansible-test sanity` for nucleus.criu, offline except for PyPI.
#
# Usage: scripts/sanity.sh [extra ansible-test sanity args, e.g. --test pylint]
#
# Environment:
#   VENV            virtualenv holding ansible-core (default: <repo>/.venv)
#   SANITY_BUILD    where the ansible_collections/ copy lives (default: <repo>/build/ansible-test)
#
# How it works:
#   * ansible-test insists on a REAL .../ansible_collections/nucleus/criu/ path, so
#     the collection is copied into build/ansible-test/ (scripts/lib/collection_tree.sh).
#   * Mode: `--local` (the default "origin" controller, i.e. this venv's Python).
#     Either way ansible-test builds one cached venv per sanity test under
#     ~/.ansible/test/venv/ (pinned linters from PyPI, first run only), so
#     `--venv` buys nothing here except an extra controller venv to build and a
#     second copy of ansible-core; `--local` needs no extra requirements in .venv
#     and never modifies .venv (we do not pass --requirements).
#   * Those per-test venvs are bootstrapped with a get-pip script downloaded from
#     ci-files.testing.ansible.com, which is unreachable here. We save a small
#     stand-in at ~/.ansible/test/cache/get_pip_<X_Y>.py (version read from
#     ansible-test's own source) that runs pip from ensurepip's bundled wheel
#     (or Debian's /usr/share/python-wheels) to install the requested pip from
#     PyPI, falling back to installing the bundled wheel itself.
#   * "WARNING: All targets skipped." is treated as a failure.
#   * The shellcheck test needs the `shellcheck` binary; without it ansible-test
#     silently checks nothing, so we refuse to run without it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
SANITY_BUILD="${SANITY_BUILD:-$ROOT/build/ansible-test}"
DEST="$SANITY_BUILD/ansible_collections/nucleus/criu"

# shellcheck source=scripts/lib/collection_tree.sh
source "$ROOT/scripts/lib/collection_tree.sh"
PYVER="$(venv_python_version sanity.sh "$VENV")"
if ! command -v shellcheck >/dev/null 2>&1; then
    echo "sanity.sh: shellcheck is not installed (apt-get install shellcheck);" \
        "ansible-test would silently skip the shellcheck test" >&2
    exit 2
fi

# Put the venv first so `python$PYVER` / ansible-test resolve to it and not to
# a pyenv shim.
export PATH="$VENV/bin:$PATH"

# --- get-pip stand-in -------------------------------------------------------
PIP_BOOTSTRAP_VERSION="$("$VENV/bin/python" - <<'EOF'
import importlib.util, os, re
spec = importlib.util.find_spec("ansible_test")
src = os.path.join(os.path.dirname(spec.origin), "_internal", "python_requirements.py")
with open(src, encoding="utf-8") as f:
    m = re.search(r"""\bpip=['"]([0-9.]+)['"]""", f.read())
if not m:
    raise SystemExit("cannot find the bootstrap pip version in " + src)
print(m.group(1))
EOF
)"
GET_PIP="$HOME/.ansible/test/cache/get_pip_${PIP_BOOTSTRAP_VERSION//./_}.py"
STANDIN_MARK="nucleus.criu get-pip stand-in v2"
if [[ ! -f "$GET_PIP" ]] || ! grep -q "$STANDIN_MARK" "$GET_PIP"; then
    if [[ -f "$GET_PIP" ]] && ! grep -q "nucleus.criu get-pip stand-in" "$GET_PIP"; then
        echo "sanity.sh: keeping existing (real?) bootstrap script $GET_PIP"
    else
        mkdir -p "$(dirname "$GET_PIP")"
        cat >"$GET_PIP" <<EOF
# $STANDIN_MARK
# Offline replacement for https://ci-files.testing.ansible.com/ansible-test/get-pip-${PIP_BOOTSTRAP_VERSION}.py
# Called by ansible-test as: python get_pip.py [pip options] pip==X.Y [--no-setuptools] [--no-wheel]
import glob
import os
import subprocess
import sys

GET_PIP_ONLY = ("--no-setuptools", "--no-wheel", "--no-pip")
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]

candidates = []
try:
    import ensurepip
    candidates += glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl"))
except ImportError:
    pass
candidates += glob.glob("/usr/share/python-wheels/pip-*.whl")
if not candidates:
    sys.exit("get-pip stand-in: no bundled pip wheel found (ensurepip or /usr/share/python-wheels)")
def _version(path):
    parts = os.path.basename(path).split("-")[1].split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in parts)
wheel = max(candidates, key=_version)
pip = [sys.executable, os.path.join(wheel, "pip")]

# 1) the exact pip ansible-test asked for, from PyPI (reachable here)
rc = subprocess.call(pip + ["install", "--timeout", "30", "--retries", "2"] + args)
if rc != 0:
    # 2) no index at all: install the bundled wheel itself
    sys.stderr.write("get-pip stand-in: PyPI install failed, installing %s\n" % wheel)
    rc = subprocess.call(pip + ["install", "--no-index", "--disable-pip-version-check", wheel])
sys.exit(rc)
EOF
        echo "sanity.sh: wrote get-pip stand-in $GET_PIP"
    fi
fi

# --- real-path copy of the collection --------------------------------------
collection_tree "$ROOT" "$DEST"

# --- run ----------------------------------------------------------------------
LOG="$SANITY_BUILD/sanity.log"
cd "$DEST"
set +e
ansible-test sanity --local --python "$PYVER" --color no "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e

if grep -q "WARNING: All targets skipped." "$LOG"; then
    echo "sanity.sh: FAILED: all targets skipped" >&2
    exit 1
fi
if [[ $rc -ne 0 ]]; then
    echo "sanity.sh: FAILED (ansible-test rc=$rc); log: $LOG" >&2
    exit "$rc"
fi
echo "sanity.sh: OK"
