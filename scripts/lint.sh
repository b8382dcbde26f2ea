#!/usr/bin/env bash
# Lint gate for nucleus.criu: ansible-lint, antsibull-docs, antsibull-changelog, mypy, ruff.
#
# Usage: scripts/lint.sh
# Environment: VENV (default <repo>/.venv)
#
# Runs every linter even if an earlier one fails, prints a summary and
# exits non-zero if any of them failed. Everything works offline.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
if [[ ! -x "$VENV/bin/ansible-lint" ]]; then
    echo "lint.sh: no ansible-lint in $VENV (create the venv first: scripts/setup.sh)" >&2
    exit 2
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT" || exit 2

failed=()
run() {
    local name="$1"
    shift
    echo "=== $name: $*"
    if "$@"; then
        echo "=== $name: OK"
    else
        echo "=== $name: FAILED (rc=$?)"
        failed+=("$name")
    fi
}

# Config in .ansible-lint (profile production, excludes build/, .venv/, ...).
run ansible-lint ansible-lint --offline --nocolor
# Module/role documentation: DOCUMENTATION/EXAMPLES/RETURN, doc fragments,
# role argument_specs, references between plugins. Runs against the repo root
# (antsibull-docs does not need the ansible_collections/ layout).
run antsibull-docs antsibull-docs lint-collection-docs --plugin-docs .
# changelogs/config.yaml and changelogs/fragments/*.yml
run antsibull-changelog antsibull-changelog lint
# Types of plugins/, tests/ and scripts/ (mypy.ini). mypy reads the repository through
# build/collections/ansible_collections/nucleus/criu, the link scripts/setup.sh makes; a venv made by hand
# (CONTRIBUTING.md) has none yet.
link=build/collections/ansible_collections/nucleus/criu
if [[ ! -e $link && ! -L $link ]]; then
    mkdir -p "$(dirname "$link")" && ln -s ../../../.. "$link"
fi
run mypy mypy
# Python lint of the whole repository (ruff.toml); checks only, never rewrites a file.
run ruff ruff check --no-fix

if ((${#failed[@]})); then
    echo "lint.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "lint.sh: OK"
