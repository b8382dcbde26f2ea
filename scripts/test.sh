#!/usr/bin/env bash
# The whole test suite on this machine: set up, the README's demo on fresh Debian 12 and 13 roots, then
# the sanity and lint gates, the docs site (offline, no warnings), a clean build and the execution
# environment check, the Molecule scenarios, a benchmark smoke run, the unit tests (ansible-test units),
# the modules' integration targets (ansible-test integration), both again under the oldest ansible-core
# claimed, and finally the pytest integration tests (real CRIU, real processes, real ssh hosts, as root).
# Extra arguments go to pytest.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
bash "$REPO/scripts/setup.sh"
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH" NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1

stop_test_hosts() {
    for port in 2222 2233 2277; do NUCLEUS_TESTHOSTS_PORT=$port bash scripts/testhosts.sh down || true; done
}
trap stop_test_hosts EXIT

# The README's demo on brand-new Debian 12 and 13 roots (scripts/fresh.sh), where nothing installed on this
# machine exists: a missing install step fails here, not on a user's first try. First, while no test host runs.
for suite in bookworm trixie; do bash scripts/fresh.sh "$suite"; done
bash scripts/sanity.sh
bash scripts/lint.sh
bash scripts/docs.sh
bash scripts/build.sh
bash scripts/ee.sh
molecule test -s default
molecule test -s migration
bash scripts/molecule_example.sh
# Smoke only: the smallest size once, asserting nothing about time, on a host pair of its own.
NUCLEUS_BENCH_PORT=2277 bash scripts/bench.sh --sizes 16 --runs 1 --json build/bench/smoke.json
bash scripts/units.sh
bash scripts/integration.sh
bash scripts/compat.sh
python -m pytest tests/integration -p no:cacheprovider -ra "$@"
