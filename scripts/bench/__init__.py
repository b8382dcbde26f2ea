# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The benchmark of nucleus.criu against raw CRIU (docs/benchmark.md). Run it as ``bash scripts/bench.sh``.

  summary    medians, same-run ratios, journal phases, CPU shares, targets, the table: pure functions
  env        paths, ports, and the import paths of the tests' helpers and of the collection
  local      checkpoint / restore / verify on this machine: raw CRIU, the module, the ad-hoc task
  child      one module entry point in a fresh interpreter (time, stats, peak RSS)
  migration  the migrate role (copy, post-copy) against a bare pipeline over the ssh test hosts; the fan-out
  drain      issue 25: the drain of many workloads onto two targets against one migration and against them one by one
  cpuprof    where the controller's CPU goes during a playbook run
  cli        options, the order of the runs, the JSON file, cleanup
"""
