#!/usr/bin/env bash
# Run examples/molecule/checkpoint_restore as a user would: copied into a project of its own, with the
# collection installed from the built tarball (scripts/build.sh), and nothing else of this repository.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
tarball=$(ls "$REPO"/build/dist/nucleus-criu-*.tar.gz)
project=$(mktemp -d /tmp/nucleus-criu-user.XXXXXX)
trap 'rm -rf -- "$project"' EXIT
mkdir -p "$project/molecule"
cp -r "$REPO/examples/molecule/checkpoint_restore" "$project/molecule/"
cd "$project"  # away from this repository's ansible.cfg
"$REPO/.venv/bin/ansible-galaxy" collection install --offline -p "$project/collections" "$tarball" >/dev/null
ANSIBLE_COLLECTIONS_PATH="$project/collections" ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3 \
    PATH="$REPO/.venv/bin:$PATH" molecule test -s checkpoint_restore
