# shellcheck shell=bash
# collection_tree ROOT DEST: an exact copy of the collection at ROOT (git-tracked and untracked-but-not-ignored
# files; .gitignore honoured; deleted files left out) at DEST, a real .../ansible_collections/nucleus/criu path
# as ansible-test insists on (symlinks are resolved and rejected).
# The copy sits inside this repo's ignored build/ dir: without a .git of its own, ansible-test would list files
# with the outer repo's git (which ignores build/) and skip every target. An empty repo makes every file untracked
# content, which ansible-test's git provider lists (-co --exclude-standard).
collection_tree() {
    local root=$1 dest=$2
    rm -rf -- "$dest"
    mkdir -p "$dest"
    (
        cd "$root" || exit 1
        git ls-files -z -co --exclude-standard |
            while IFS= read -r -d '' f; do
                if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
            done |
            tar --null --no-recursion -T - -cf - |
            tar -xf - -C "$dest"
    )
    git -C "$dest" init -q
}

# venv_python_version NAME VENV: the X.Y of VENV's Python, for ansible-test --python; without that Python, NAME
# says so and how to get it, and the caller's $(...) fails (set -e stops the script).
venv_python_version() {
    local name=$1 py="$2/bin/python"
    if [[ ! -x "$py" ]]; then
        echo "$name: no Python at $py (create the venv first: scripts/setup.sh)" >&2
        exit 2
    fi
    "$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}
