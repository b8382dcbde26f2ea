#!/usr/bin/env bash
# Prepare this machine (Debian 12 or 13, as root) for the nucleus.criu test suite:
#   1. Debian packages the tests need (ssh, rsync, shellcheck, unshare, busybox-static for a container image,
#      mmdebstrap for the test machines' roots, ...);
#   2. the Python toolchain in $REPO/.venv (requirements/test.txt);
#   3. build/collections/: nucleus.criu (symlink to this repo) and ansible.posix
#      (taken from the `ansible` wheel on PyPI: Galaxy is unreachable here);
#   4. a working criu >= 4.2, installed and proven by the nucleus.criu.criu role.
# Idempotent and quiet when there is nothing to do. Run it as `bash scripts/setup.sh`;
# it exports nothing. A step's full output is printed only when the step fails.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
readonly VENV="$REPO/.venv"
readonly CACHE="$REPO/.cache/setup"
readonly COLLECTIONS="$REPO/build/collections"
readonly APT_PACKAGES=(
    python3-venv python3-pip rsync openssh-server openssh-client shellcheck
    iproute2 procps git util-linux busybox-static mmdebstrap
)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Run a command with its output in a log file; show the log only if it fails.
quietly() {
    local out
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "failed: $*"
    fi
    rm -f "$out"
}

[[ $(id -u) -eq 0 ]] || die "run me as root (apt-get, and the criu role, need it)"
mkdir -p "$CACHE"

# --- 1. Debian packages ---------------------------------------------------------
missing_packages() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null) == "ii"* ]] || printf '%s\n' "$pkg"
    done
}

install_packages() {
    local missing policy_rc=/usr/sbin/policy-rc.d
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    # Don't let openssh-server's postinst start a system sshd on :22 (tests run their own).
    if [[ ! -e $policy_rc ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc"
        chmod 0755 "$policy_rc"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    quietly apt-get -q update
    quietly apt-get -q -y --no-install-recommends install "${missing[@]}"
    if [[ $(trap -p EXIT) == *policy-rc.d* ]]; then
        rm -f "$policy_rc"
        trap - EXIT
    fi
}

# --- 2. Python toolchain --------------------------------------------------------
setup_venv() {
    local py stamp want
    py=$(command -v python3) || die "python3 not found in PATH"
    if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        log "creating $VENV with $py"
        rm -rf "$VENV"
        quietly "$py" -m venv "$VENV"
    fi
    # Reinstall only when the requirements or the venv's Python changed.
    want="$(sha256sum "$REPO/requirements/test.txt" | cut -d' ' -f1) $("$VENV/bin/python" -c 'import sys; print(sys.version)')"
    stamp="$VENV/.nucleus-requirements"
    if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
        log "installing requirements/test.txt into $VENV"
        quietly "$VENV/bin/python" -m pip install -q -r "$REPO/requirements/test.txt"
        printf '%s\n' "$want" >"$stamp"
    fi
}

# --- 3. Collections -------------------------------------------------------------
link_collection() {
    local link="$COLLECTIONS/ansible_collections/nucleus/criu" target=../../../..
    mkdir -p "$(dirname -- "$link")"
    if [[ -L $link ]]; then
        [[ $(readlink -- "$link") == "$target" ]] && return 0
        rm -f -- "$link"
    elif [[ -e $link ]]; then
        die "$link exists and is not a symlink: move it away (it must point to the repo)"
    fi
    ln -s "$target" "$link"
}

# ansible (the community package) that bundles collections for the installed ansible-core.
ansible_package_version() {
    local core
    core=$("$VENV/bin/python" -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))')
    case $core in
        2.19) echo 12.3.0 ;;
        2.20) echo 13.8.0 ;;
        2.21) echo 14.5.0 ;;
        *) die "no ansible package pinned for ansible-core $core: add one to ansible_package_version in $0" ;;
    esac
}

install_ansible_posix() {
    local version wheel stamp="$COLLECTIONS/ansible_collections/ansible/posix/.from-ansible"
    version=$(ansible_package_version)
    [[ -f $stamp && $(<"$stamp") == "$version" ]] && return 0
    wheel=$(compgen -G "$CACHE/ansible-$version-py3-none-any.whl" || true)
    if [[ -z $wheel ]]; then
        log "downloading ansible $version from PyPI (for ansible.posix)"
        quietly "$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: -d "$CACHE" "ansible==$version"
        wheel=$(compgen -G "$CACHE/ansible-$version-py3-none-any.whl") || die "pip download left no ansible $version wheel in $CACHE"
    fi
    log "extracting ansible.posix from $(basename -- "$wheel")"
    rm -rf -- "$COLLECTIONS/ansible_collections/ansible/posix"
    "$VENV/bin/python" - "$wheel" "$COLLECTIONS" <<'PY'
import sys
import zipfile

wheel, dest = sys.argv[1:3]
prefix = "ansible_collections/ansible/posix/"
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith(prefix)]
    if not members:
        sys.exit("%s holds no %s" % (wheel, prefix))
    zf.extractall(dest, members)
PY
    printf '%s\n' "$version" >"$stamp"
}

# --- 4. criu --------------------------------------------------------------------
install_criu() {
    local out recap
    out=$(mktemp)
    if ! (cd "$REPO" && "$VENV/bin/ansible-playbook" -i localhost, -c local \
            -e "ansible_python_interpreter=$VENV/bin/python" playbooks/criu.yml) >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        die "the nucleus.criu.criu role failed (output above)"
    fi
    recap=$(grep -E '^localhost +:' "$out" | tr -s ' ' || true)
    rm -f "$out"
    if [[ $recap != *" changed=0 "* ]]; then
        log "criu role: $recap"
    fi
}

install_packages
setup_venv
link_collection
install_ansible_posix
install_criu
