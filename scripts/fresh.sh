#!/usr/bin/env bash
# The fresh-machine gate: run COMMAND as root on a brand-new minimal Debian, as a newcomer would.
#
#   bash scripts/fresh.sh SUITE [COMMAND]
#     SUITE    bookworm (Debian 12) or trixie (Debian 13)
#     COMMAND  default: bash scripts/demo.sh. A shell command line, run with bash -c; or the path of a
#              script file (anything with quotes or several lines), copied in and run with bash.
#
# Why: this machine has been set up by hand over time, so a missing install step (a Debian package,
# a directory a role assumes, a pip requirement) passes here and fails for a user. Inside the fresh root
# nothing of this machine is visible but what reaching the package registries needs.
#
# How:
#   1. a minimal root made by mmdebstrap (minbase plus git, python3, ca-certificates), cached as a
#      tarball in ${XDG_CACHE_HOME:-~/.cache}/nucleus-fresh/SUITE.tar (about 20 s to make; delete it to
#      get a newer one). mmdebstrap is installed with apt-get if it is missing;
#   2. unpacked into a directory of its own per run (runs may overlap), with a clone of this repository's
#      committed HEAD at /root/nucleus (uncommitted changes are NOT carried: commit first) and, from this
#      machine, only /etc/resolv.conf, pip's global config and the constraint file(s) it names, and the
#      extra CA certificates (/usr/local/share/ca-certificates/*.crt and the bundle made from them);
#   3. entered in a mount and a PID namespace of its own with pivot_root (under a plain chroot,
#      `criu check` fails with "mnt: No parent found"): /proc of its own, /sys and /dev of this machine,
#      fresh tmpfs on /run, /tmp and /dev/shm;
#   4. COMMAND runs there from /root/nucleus with an empty environment (HOME, PATH, LANG=C.UTF-8,
#      TERM=dumb). When it ends, the PID namespace ends every process it left, its mounts go with its
#      mount namespace, and the unpacked root is removed.
# It shares this machine's kernel and network: whatever COMMAND listens on (the demo's ssh hosts on
# 127.0.0.2/3:2222) must be free here. Exit status: COMMAND's. As root.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
readonly CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/nucleus-fresh"
readonly DEFAULT_COMMAND='bash scripts/demo.sh'
readonly INCLUDE=git,python3,ca-certificates
readonly INSIDE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
readonly PROJECT_DIR=/root/nucleus
readonly COMMAND_FILE=/root/fresh-command.sh
readonly GRACE=10 # seconds COMMAND has to end when this script is interrupted

SUITE=
COMMAND=
TARBALL=    # $CACHE/$SUITE.tar
ROOT=       # the unpacked root of this run
PART=       # the tarball being made, until it is renamed into place
NS_PID=     # unshare, while COMMAND runs

log() { printf 'fresh: %s%s\n' "${SUITE:+$SUITE: }" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

usage() {
    cat <<EOF
usage: bash scripts/fresh.sh SUITE [COMMAND]
  SUITE    bookworm (Debian 12) or trixie (Debian 13)
  COMMAND  run as root in /root/nucleus (a clone of the committed HEAD) on a fresh minimal Debian
           (default: $DEFAULT_COMMAND); the path of a script file is copied in and run with bash
EOF
}

parse_arguments() {
    if [[ ${1:-} == -h || ${1:-} == --help ]]; then
        usage
        exit 0
    fi
    if (($# < 1 || $# > 2)); then
        usage >&2
        exit 2
    fi
    case $1 in
        bookworm | trixie) SUITE=$1 ;;
        *)
            echo "fresh: unknown SUITE '$1'" >&2
            usage >&2
            exit 2
            ;;
    esac
    COMMAND=${2:-$DEFAULT_COMMAND}
    TARBALL="$CACHE/$SUITE.tar"
}

# --- 1. the cached tarball ------------------------------------------------------------------------
ensure_mmdebstrap() {
    command -v mmdebstrap >/dev/null && return 0
    log "installing mmdebstrap (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null 2>&1; then
        log "apt-get install failed: apt-get update, then again"
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends mmdebstrap >/dev/null
    fi
}

# SUITE's tarball, made if it is not cached yet: under a name of this run's own, then renamed into
# place, so that an interrupted or overlapping run never leaves or reads half a tarball.
ensure_tarball() {
    if [[ -s $TARBALL ]]; then
        log "reusing $TARBALL (made $(date -r "$TARBALL" '+%F %R'); delete it to refresh)"
        return 0
    fi
    ensure_mmdebstrap
    PART="$TARBALL.$$.part"
    log "making a minimal root with mmdebstrap (about 20 s), cached in $TARBALL"
    mmdebstrap --quiet --variant=minbase --include="$INCLUDE" --format=tar "$SUITE" "$PART"
    mv -f -- "$PART" "$TARBALL"
    PART=
}

# --- 2. the root of this run ----------------------------------------------------------------------
# Copy one file of this machine to the same path in the root. Whatever the root has there is removed
# first: a symlink (resolv.conf often is one) must not lead the copy out of the root.
copy_in() {
    local file=$1
    mkdir -p -- "$ROOT$(dirname -- "$file")"
    rm -f -- "$ROOT$file"
    cp -L -- "$file" "$ROOT$file"
}

# The constraint file(s) pip's configuration names (global.constraint: paths separated by whitespace).
pip_constraint_files() {
    local pip=() value file
    if command -v pip >/dev/null; then
        pip=(pip)
    elif python3 -m pip --version >/dev/null 2>&1; then
        pip=(python3 -m pip)
    else
        return 0
    fi
    value=$("${pip[@]}" config list 2>/dev/null | sed -n "s/^global\.constraint='\(.*\)'\$/\1/p") || true
    for file in $value; do
        [[ -f $file ]] && printf '%s\n' "$file"
    done
    return 0
}

# What this machine needs to reach the package registries, and nothing else of it.
carry_in_registry_access() {
    local file files=(/etc/resolv.conf) extra_cas
    # pip's global configuration: /etc/pip.conf, and /etc/xdg/pip/pip.conf (XDG_CONFIG_DIRS), which
    # may be the one that names the constraint file.
    for file in /etc/pip.conf /etc/xdg/pip/pip.conf; do
        [[ -f $file ]] && files+=("$file")
    done
    mapfile -t -O "${#files[@]}" files < <(pip_constraint_files)
    mapfile -t extra_cas < <(compgen -G '/usr/local/share/ca-certificates/*.crt' || true)
    if ((${#extra_cas[@]})); then
        files+=("${extra_cas[@]}" /etc/ssl/certs/ca-certificates.crt)
    fi
    for file in "${files[@]}"; do copy_in "$file"; done
    log "carried in from this machine: ${files[*]}"
}

clone_project() {
    local head
    head=$(git -C "$REPO" rev-parse HEAD)
    if [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null) ]]; then
        log "note: uncommitted changes in $REPO are not carried (it clones HEAD)"
    fi
    git clone -q --no-hardlinks -- "$REPO" "$ROOT$PROJECT_DIR"
    # Make sure the clone stands at that commit (HEAD may be detached, for one).
    if [[ $(git -C "$ROOT$PROJECT_DIR" rev-parse HEAD) != "$head" ]]; then
        git -C "$ROOT$PROJECT_DIR" checkout -q "$head"
    fi
    log "$PROJECT_DIR: $(git -C "$ROOT$PROJECT_DIR" log -1 --format='%h (%cs)')"
}

make_root() {
    ROOT=$(mktemp -d "$CACHE/root-$SUITE.XXXXXX")
    chmod 0755 "$ROOT" # it becomes /: everyone must be able to pass through it
    tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xf "$TARBALL"
    carry_in_registry_access
    clone_project
}

# --- cleanup --------------------------------------------------------------------------------------
# (Above enter_root: shellcheck takes functions defined after one that ends in exec for unreachable.)
# Whether unshare (this run's namespace) is still running: not yet exited, or a zombie not yet waited for.
namespace_running() {
    local state
    [[ -n $NS_PID ]] && read -r _ _ state _ 2>/dev/null <"/proc/$NS_PID/stat" && [[ $state != Z ]]
}

# The pids of PID's children, separated by spaces (none: empty).
children_of() {
    local pids=
    read -r pids 2>/dev/null <"/proc/$1/task/$1/children" || true
    printf '%s' "$pids"
}

# End COMMAND early (this script got SIGNAL): pass SIGNAL on to it, give it GRACE seconds to clean up
# after itself, then SIGKILL the namespace's init, which it cannot ignore
# from outside: the kernel kills every process in the namespace, and unshare returns.
end_namespace() {
    local signal=$1 init tenths
    namespace_running || return 0
    init=$(children_of "$NS_PID")
    if [[ -z $init ]]; then # not forked yet: --kill-child passes the SIGKILL on
        kill -KILL "$NS_PID" 2>/dev/null || true
    else
        # shellcheck disable=SC2046  # pids, or none
        kill -"$signal" $(children_of "$init") 2>/dev/null || true
        for ((tenths = 0; tenths < GRACE * 10; tenths++)); do
            namespace_running || break
            sleep 0.1
        done
        # While unshare runs, init is its child: the pid cannot have been reused.
        if namespace_running; then kill -KILL "$init" 2>/dev/null || true; fi
    fi
    wait "$NS_PID" 2>/dev/null || true
    NS_PID=
}

# Remove the unpacked root, unless something is still mounted under it (its mounts live in the
# namespace, which is gone by now; this is a guard, as is --one-file-system).
remove_root() {
    [[ -n $ROOT && -d $ROOT ]] || return 0
    if grep -qF -e " $ROOT " -e " $ROOT/" /proc/self/mountinfo; then
        log "ERROR: something is still mounted under $ROOT: not removing it"
        return 0
    fi
    rm -rf --one-file-system -- "$ROOT"
}

cleanup() {
    end_namespace TERM
    remove_root
    [[ -z $PART ]] || rm -f -- "$PART"
}

# Exit with status 128 + the signal's number, after ending COMMAND (the EXIT trap removes the root).
on_signal() {
    local signal=$1 status=$2
    trap - INT TERM HUP
    if namespace_running; then
        log "interrupted: SIG$signal to COMMAND, then in $GRACE s SIGKILL to everything it started"
        end_namespace "$signal"
    else
        log "interrupted (SIG$signal)"
    fi
    exit "$status"
}

# --- 3. into the root -----------------------------------------------------------------------------
# Runs as PID 1 of the new PID namespace, in the new mount namespace (shipped there by declare -f: it
# can use its arguments only). Make ROOT the whole file system tree, then become the init of the
# namespace: run COMMAND with an empty environment, reap whatever it orphans, end with its status.
# shellcheck disable=SC2317  # called in the namespace, by the bash -c of run_in_root
enter_root() {
    local root=$1 command=$2 path=$3 workdir=$4
    trap 'echo "fresh: could not enter $root: $BASH_COMMAND failed" >&2; exit 125' ERR
    mount --make-rprivate /
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$root/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
    mkdir -p "$root/.oldroot"
    cd "$root"
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
    cd "$workdir"
    trap - ERR
    # The init stays a bash of the root's own that waits for COMMAND (and reaps what it orphans);
    # when it exits, the kernel kills every process left in the namespace.
    # shellcheck disable=SC2016  # expanded by that bash
    exec /usr/bin/env -i HOME=/root PATH="$path" LANG=C.UTF-8 TERM=dumb \
        /bin/bash -c 'bash -c "$1"; exit "$?"' fresh-init "$command"
}

# Run COMMAND in the root; its exit status is this function's.
run_in_root() {
    local run=$COMMAND status=0
    if [[ -f $COMMAND ]]; then
        cp -- "$COMMAND" "$ROOT$COMMAND_FILE"
        run="bash $COMMAND_FILE"
    fi
    log "running: $run"
    # In the background, so that a signal to this script is handled at once (on_signal) rather than
    # after COMMAND. A background job's standard input would be /dev/null (<&0 keeps it) and SIGINT
    # and SIGQUIT ignored, for good (env --default-signal restores them).
    env --default-signal=INT,QUIT unshare --mount --pid --fork --propagation private --kill-child \
        bash -c "set -euo pipefail; $(declare -f enter_root); enter_root \"\$@\"" fresh-enter \
        "$ROOT" "$run" "$INSIDE_PATH" "$PROJECT_DIR" <&0 &
    NS_PID=$!
    wait "$NS_PID" || status=$?
    NS_PID=
    return "$status"
}

main() {
    parse_arguments "$@"
    [[ $(id -u) -eq 0 ]] || die "run me as root (mmdebstrap, unshare and mount need it)"
    mkdir -p "$CACHE"
    local started status=0
    ensure_tarball
    make_root
    started=$SECONDS
    run_in_root || status=$?
    log "'$COMMAND' exited $status after $((SECONDS - started)) s"
    return "$status"
}

trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP
main "$@"
