#!/usr/bin/env bash
# The whole test suite on this machine: set up, then the sanity and lint gates, then
# unit and integration tests (real CRIU, real processes, as root).
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
bash "$REPO/scripts/setup.sh"
cd "$REPO"

bash scripts/sanity.sh
bash scripts/lint.sh
bash scripts/build.sh
"$REPO/.venv/bin/python" -m pytest tests/unit tests/integration -p no:cacheprovider -ra "$@"
