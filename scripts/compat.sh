#!/usr/bin/env bash
# The oldest ansible-core meta/runtime.yml claims (requires_ansible), beside the one .venv pins: a venv of its
# own with that ansible-core, then the unit tests (ansible-test units) and the modules' integration targets
# (ansible-test integration) under it. As root (the targets checkpoint real processes).
#
# Usage: scripts/compat.sh [ansible-core version, default: the lower bound of requires_ansible]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
claimed=$(sed -n 's/^requires_ansible: *"*>= *\([0-9.]*\).*/\1/p' "$ROOT/meta/runtime.yml")
version=${1:-$claimed}
if [[ -z "$version" ]]; then
    echo "compat.sh: no lower bound found in $ROOT/meta/runtime.yml (requires_ansible: \">=X.Y.Z\")" >&2
    exit 2
fi
venv="$ROOT/build/compat/ansible-core-$version"
if [[ ! -x "$venv/bin/ansible-test" ]]; then
    rm -rf -- "$venv"
    "$ROOT/.venv/bin/python" -m venv "$venv"
    # ansible-test's own unit test requirements and the tests', at the versions requirements/test.txt pins.
    pins=$(grep -E '^(pytest|pytest-mock|pytest-xdist|mock|hypothesis|protobuf)==' "$ROOT/requirements/test.txt")
    # shellcheck disable=SC2086  # one argument per pin
    "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$version" $pins
fi
echo "compat.sh: ansible-core $("$venv/bin/python" -c 'import ansible.release; print(ansible.release.__version__)')"
VENV="$venv" UNITS_BUILD="$ROOT/build/compat/units" bash "$ROOT/scripts/units.sh"
VENV="$venv" INTEGRATION_BUILD="$ROOT/build/compat/integration" bash "$ROOT/scripts/integration.sh"
echo "compat.sh: OK with ansible-core $version"
