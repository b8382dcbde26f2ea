#!/usr/bin/env bash
# Run `ansible-test integration` for nucleus.criu, as a contributor would: the targets in
# tests/integration/targets (each module's check-mode / idempotence quartet on a workload the target
# starts itself). Needs root and a working criu (scripts/setup.sh); runs on this host (--local).
#
# Usage: scripts/integration.sh [extra ansible-test integration args, e.g. criu_restore -v]
#
# Environment:
#   VENV               virtualenv holding ansible-core (default: <repo>/.venv)
#   INTEGRATION_BUILD  where the ansible_collections/ copy lives (default: <repo>/build/ansible-test-integration)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
INTEGRATION_BUILD="${INTEGRATION_BUILD:-$ROOT/build/ansible-test-integration}"
DEST="$INTEGRATION_BUILD/ansible_collections/nucleus/criu"

# shellcheck source=scripts/lib/collection_tree.sh
source "$ROOT/scripts/lib/collection_tree.sh"
PYVER="$(venv_python_version integration.sh "$VENV")"
if [[ $(id -u) -ne 0 ]]; then
    echo "integration.sh: the targets checkpoint real processes: run as root" >&2
    exit 2
fi
export PATH="$VENV/bin:$PATH"

collection_tree "$ROOT" "$DEST"

cd "$DEST"
ansible-test integration --local --python "$PYVER" --color no "$@"
echo "integration.sh: OK"
