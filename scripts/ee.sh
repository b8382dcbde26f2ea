#!/usr/bin/env bash
# Check the execution environment kit offline (no container engine, no Galaxy):
#   1. build the collection tarball (scripts/build.sh); it must hold meta/execution-environment.yml,
#      bindep.txt and requirements.txt;
#   2. install the tarball into build/ee/collections and run `ansible-builder introspect` on it, as an
#      image build does: nucleus.criu's Python and system requirements must come out of it;
#   3. `ansible-builder create` with examples/execution-environment.yml, beside the tarball as the
#      example asks (build/ee/src/), into build/ee/context: it must accept the file without a warning
#      and put the tarball into the build context.
#
# Usage: scripts/ee.sh          (no root needed; the venv from scripts/setup.sh)
# Environment: VENV (default <repo>/.venv)
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
VENV="${VENV:-$REPO/.venv}"
readonly OUT="$REPO/build/ee"

die() { echo "ee.sh: $*" >&2; exit 1; }

[[ -x "$VENV/bin/ansible-builder" ]] || { echo "ee.sh: no ansible-builder in $VENV (run scripts/setup.sh)" >&2; exit 2; }
export PATH="$VENV/bin:$PATH" ANSIBLE_NOCOLOR=1 NO_COLOR=1

# --- 1. the tarball ---------------------------------------------------------------------------------
bash "$REPO/scripts/build.sh"
tarball=$(compgen -G "$REPO/build/dist/nucleus-criu-*.tar.gz") || die "scripts/build.sh left no tarball in build/dist"
listing=$(tar -tzf "$tarball")
for required in meta/execution-environment.yml bindep.txt requirements.txt; do
    grep -qx "$required" <<<"$listing" || die "$required is missing from $tarball (galaxy.yml build_ignore?)"
done

rm -rf -- "$OUT"
mkdir -p "$OUT/src"

# --- 2. what an image build reads from the collection ---------------------------------------------------
ansible-galaxy collection install --offline --force -p "$OUT/collections" "$tarball" >"$OUT/install.log" 2>&1 ||
    { cat "$OUT/install.log" >&2; die "ansible-galaxy could not install $tarball"; }
ansible-builder introspect "$OUT/collections" --write-pip "$OUT/requirements.txt" --write-bindep "$OUT/bindep.txt" >/dev/null
grep -q '^protobuf.*# from collection nucleus.criu$' "$OUT/requirements.txt" ||
    die "ansible-builder introspect found no Python requirements of nucleus.criu (meta/execution-environment.yml, requirements.txt)"
grep -q '^python3 \[platform:dpkg\].*# from collection nucleus.criu$' "$OUT/bindep.txt" ||
    die "ansible-builder introspect found no system requirements of nucleus.criu (meta/execution-environment.yml, bindep.txt)"

# --- 3. the example, as a user lays it out ----------------------------------------------------------------
cp "$REPO/examples/execution-environment.yml" "$OUT/src/execution-environment.yml"
cp "$tarball" "$OUT/src/nucleus-criu.tar.gz"
ansible-builder create -f "$OUT/src/execution-environment.yml" --context "$OUT/context" \
    --output-filename Containerfile >"$OUT/create.log" 2>&1 ||
    { cat "$OUT/create.log" >&2; die "ansible-builder create refused examples/execution-environment.yml"; }
if grep -qiE 'warning|error|no matches|does not exist' "$OUT/create.log"; then
    cat "$OUT/create.log" >&2
    die "ansible-builder create warned about examples/execution-environment.yml"
fi
cmp -s "$tarball" "$OUT/context/_build/collections/nucleus-criu.tar.gz" ||
    die "the build context lacks the collection tarball (additional_build_files)"
grep -q 'ansible-galaxy collection install .*-r requirements.yml' "$OUT/context/Containerfile" ||
    die "the Containerfile installs no collections"
grep -qx -- '- name: /build/collections/nucleus-criu.tar.gz' "$OUT/context/_build/requirements.yml" ||
    die "the build context's requirements.yml does not name the collection tarball"
echo "ee.sh: examples/execution-environment.yml accepted; build context in $OUT/context"
