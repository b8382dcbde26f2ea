#!/usr/bin/env bash
# The benchmark (issues 5, 10, 12, 13): nucleus.criu against raw CRIU, side by side in one run (not a timed test).
#   bash scripts/bench.sh [--sizes 16,256,1024] [--runs N] [--json PATH] [--fanout N] [--drain] [--local-only] ...
# As root. Prepares this machine (scripts/setup.sh), then runs the scripts/bench package, which prints a table
# and writes build/bench/results.json. `--sizes 16 --runs 1` is the quick smoke run CI can afford.
# It starts its own pair of ssh test hosts on port NUCLEUS_BENCH_PORT (default 2288), with --fanout N also
# 2N hosts on NUCLEUS_BENCH_FANOUT_PORT (default 2301), with --drain 3 hosts on NUCLEUS_BENCH_DRAIN_PORT (default
# 2922; --drain-only: those alone), and stops them at the end.
# See docs/benchmark.md for what is measured and the latest results.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO

[[ $(id -u) -eq 0 ]] || { echo "bench: run me as root (criu dump and restore need it)" >&2; exit 1; }
bash "$REPO/scripts/setup.sh"
exec "$REPO/.venv/bin/python" "$REPO/scripts/bench" "$@"
