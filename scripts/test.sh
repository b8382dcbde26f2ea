#!/usr/bin/env bash
# The test suite on this machine (Debian 12 or 13, as root). Two tiers:
#
#   bash scripts/test.sh          everything, what CI runs: set up, the README's demo on fresh Debian 12 and 13
#                                 roots, the sanity and lint gates (mypy and ruff included), the docs site, a clean
#                                 build and the execution environment check, the Molecule scenarios, a benchmark
#                                 smoke run, the modules' integration targets (ansible-test integration), the unit
#                                 and integration targets again under the oldest ansible-core claimed, and the pytest
#                                 suite: unit tests and real-criu integration tests in parallel (each xdist worker
#                                 drives a pair of ssh test hosts of its own), then the tests that change what the
#                                 whole machine shares, alone.
#   bash scripts/test.sh --fast   while working (about 3 minutes once set up): lint, mypy and ruff, the build, the
#                                 unit tests, and the cheapest real-criu checks (bad input, idempotence, the
#                                 lifecycle), in parallel.
#
# Extra arguments go to pytest. Each step prints how long it took.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
FAST=false
if [[ ${1:-} == --fast ]]; then FAST=true; shift; fi
readonly FAST
# Workers of the parallel pytest run: each drives its own test-host pair (tests/integration/conftest.py hosts_port).
readonly WORKERS=${NUCLEUS_TEST_WORKERS:-3}

bash "$REPO/scripts/setup.sh"
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH" NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1

started=$SECONDS
step() {
    local begin=$SECONDS
    "$@"
    printf 'test.sh: %-48s %4ds (total %ds)\n' "$*" $((SECONDS - begin)) $((SECONDS - started))
}

pytest_run() {
    python -m pytest -p no:cacheprovider -ra --durations=10 "$@"
}

if $FAST; then
    step bash scripts/lint.sh
    step bash scripts/build.sh
    step pytest_run -n 2 tests/unit tests/integration/test_bad_input.py tests/integration/test_idempotence.py \
        tests/integration/test_lifecycle.py "$@"
    echo "test.sh --fast: OK in $((SECONDS - started))s"
    exit 0
fi

stop_test_hosts() {
    local port
    for port in 2233 2277 $(seq 2222 100 $((2222 + 100 * (WORKERS - 1)))); do
        NUCLEUS_TESTHOSTS_PORT=$port bash scripts/testhosts.sh down || true
    done
    # The test machines (tests/integration/machines.py) of each worker's slot, should a worker have died before its
    # fixture's teardown: worker N's slot is N (test-host port 2222 + 100 N).
    local slot
    for slot in $(seq 0 $((WORKERS - 1))); do
        NUCLEUS_MACHINES_SLOT=$slot python tests/integration/machines.py down || true
    done
}
trap stop_test_hosts EXIT

# The README's demo on brand-new Debian 12 and 13 roots (scripts/fresh.sh), where nothing installed on this
# machine exists: a missing install step fails here, not on a user's first try. First, while no test host runs.
for suite in bookworm trixie; do step bash scripts/fresh.sh "$suite"; done
step bash scripts/sanity.sh
step bash scripts/lint.sh
step bash scripts/docs.sh
step bash scripts/build.sh
step bash scripts/ee.sh
step molecule test -s default
step molecule test -s migration
step bash scripts/molecule_example.sh
# Smoke only: the smallest size once, asserting nothing about time, on a host pair of its own.
NUCLEUS_BENCH_PORT=2277 step bash scripts/bench.sh --sizes 16 --runs 1 --json build/bench/smoke.json
step bash scripts/integration.sh
# ansible-test units and integration under the oldest ansible-core claimed (the unit tests run under the pinned one
# in the pytest run below).
step bash scripts/compat.sh
step pytest_run -n "$WORKERS" --dist loadgroup -m "not serial" tests/unit tests/integration "$@"
step pytest_run -m serial tests/integration "$@"
echo "test.sh: OK in $((SECONDS - started))s"
