#!/usr/bin/env bash
# Build the collection tarball and check it holds the collection and nothing else.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
out="$REPO/build/dist"
rm -rf "$out"
mkdir -p "$out"
"$REPO/.venv/bin/ansible-galaxy" collection build "$REPO" --output-path "$out" >/dev/null
tarball=$(ls "$out"/nucleus-criu-*.tar.gz)
listing=$(tar -tzf "$tarball")
for required in MANIFEST.json plugins/modules/criu_checkpoint.py roles/criu/tasks/main.yml meta/runtime.yml; do
    grep -qx "$required" <<<"$listing" || { echo "build: $required missing from $tarball" >&2; exit 1; }
done
if grep -E '(^|/)(\.venv|\.cache|build|tests/output|__pycache__|\.pytest_cache|\.hypothesis|\.git|mypy\.ini|ruff\.toml)(/|$)' <<<"$listing"; then
    echo "build: $tarball holds files that must not ship (above)" >&2
    exit 1
fi
echo "build: $tarball ($(wc -l <<<"$listing") entries) is clean"
