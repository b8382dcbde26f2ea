#!/usr/bin/env bash
# Two real ssh "hosts" on this machine for migration demos and tests:
#   host-a: sshd on 127.0.0.2:2222    host-b: sshd on 127.0.0.3:2222
# Each sshd runs in its own mount namespace with a /run and a /var/lib of its own: /run is an empty
# tmpfs (pidfiles, Podman's run state), /var/lib this machine's seen through an overlay whose
# changes stay on the host (a tmpfs of 4 GiB, mounted on /run/testhost-disk). What one host writes
# there the other cannot see, so a transfer between them is real. Each host starts as one where
# nucleus.criu never ran: no /var/lib/nucleus-criu, whatever this machine has; the product makes
# what it needs, as on a user's host. root's shell start-up is empty there: bash runs ~/.bashrc for
# every ssh command, and this machine's may start pyenv (0.1-0.2 s a session). Podman's image and
# container storage (/var/lib/containers) is a tmpfs of its own (Podman cannot keep its overlay layers
# on an overlay): a container or image on one host is not on the other (images reach a host by
# podman load, as between real hosts). So is the address book of Podman's network (/var/lib/cni): as
# part of the overlay it would change under the host whenever this machine's Podman gave out an address.
# They share the kernel, its PID space and the network namespace; workloads that migrate
# here live in their own PID (and, for TCP, network) namespace, as they would in a container.
#
#   bash scripts/testhosts.sh up     start both (idempotent), write build/testhosts/inventory.ini
#   bash scripts/testhosts.sh down   stop both; their namespaces go with them
#   bash scripts/testhosts.sh pid A  print the sshd pid of host-a / host-b (for nsenter)
# NUCLEUS_TESTHOSTS_PORT (default 2222) runs another, independent pair on that port,
# with its files in build/testhosts-PORT. NUCLEUS_TESTHOSTS_PYTHON (default /usr/bin/python3)
# is the interpreter the inventory gives Ansible for both hosts. The inventory's ssh arguments (which a migration's
# own ssh sessions take too) send keepalives every 2 s: a link cut in a test is noticed in ~6 s, not the default 15.
#
# More hosts (the benchmark's fan-out): `up N` (or NUCLEUS_TESTHOSTS_COUNT=N with `up`) starts
# host-1 .. host-N instead, on 127.0.0.2 .. 127.0.0.(N+1), each sshd in its own mount namespace
# with its private tmpfs, and lists them all in the inventory; `pid 3` prints host-3's sshd pid,
# and `down` stops every host of the port, lettered or numbered. One form per port at a time:
# host-1 and host-a would both listen on 127.0.0.2.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
readonly PORT=${NUCLEUS_TESTHOSTS_PORT:-2222}
if [[ $PORT == 2222 ]]; then readonly DIR="$REPO/build/testhosts"; else readonly DIR="$REPO/build/testhosts-$PORT"; fi
readonly DISK=/run/testhost-disk
declare -A ADDRESS=([a]=127.0.0.2 [b]=127.0.0.3)
readonly MAX_COUNT=253

# The address of host a or b, or of numbered host N (127.0.0.(N+1)).
address() {
    if [[ $1 =~ ^[0-9]+$ ]]; then echo "127.0.0.$(($1 + 1))"; else echo "${ADDRESS[$1]}"; fi
}

# The host's sshd pid, if it runs. A killed sshd stays a zombie until init reaps it (here 1-2 s later),
# and kill -0 succeeds on a zombie: read its state instead.
host_pid() {
    local pidfile="$DIR/sshd-$1.pid" state
    [[ -s $pidfile ]] || return 1
    state=$(ps -o stat= -p "$(<"$pidfile")" 2>/dev/null) || return 1
    [[ $state != Z* ]] && cat "$pidfile"
}

# Names of the hosts with a pid file on this port: a and b first, then the numbered ones.
known_hosts() {
    local pidfile name
    echo a
    echo b
    for pidfile in "$DIR"/sshd-*.pid; do
        [[ -e $pidfile ]] || continue
        name=${pidfile##*/sshd-}
        name=${name%.pid}
        [[ $name == a || $name == b ]] || echo "$name"
    done
}

write_config() {
    local name=$1
    [[ -f $DIR/hostkey-$name ]] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/hostkey-$name"
    cat >"$DIR/sshd-$name.conf" <<EOF
ListenAddress $(address "$name"):$PORT
HostKey $DIR/hostkey-$name
PidFile none
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
EOF
}

start() {
    local name=$1 pid
    if host_pid "$name" >/dev/null; then return 0; fi
    write_config "$name"
    # The unshared shell makes the host's own /run and /var/lib, then becomes sshd (same pid). /run/sshd is
    # sshd's own privilege-separation directory.
    setsid unshare --mount --propagation private -- sh -ec \
        "mount -t tmpfs -o mode=0755,size=64m nucleus-run-$name /run
         mkdir -m 0755 /run/sshd $DISK
         mount -t tmpfs -o mode=0700,size=4g nucleus-disk-$name $DISK
         mkdir $DISK/upper $DISK/work
         mount -t overlay -o lowerdir=/var/lib,upperdir=$DISK/upper,workdir=$DISK/work nucleus-var-lib-$name /var/lib
         rm -rf /var/lib/nucleus-criu
         mkdir -p /var/lib/containers /var/lib/cni
         mount -t tmpfs -o mode=0700 nucleus-podman-$name /var/lib/containers
         mount -t tmpfs -o mode=0755 nucleus-cni-$name /var/lib/cni
         if [ -f /root/.bashrc ]; then mount --bind /dev/null /root/.bashrc; fi
         exec /usr/sbin/sshd -D -e -f $DIR/sshd-$name.conf" \
        </dev/null >>"$DIR/sshd-$name.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/sshd-$name.pid"
    for _ in $(seq 100); do
        if ssh -q -p "$PORT" -i "$DIR/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null "root@$(address "$name")" true 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$DIR/sshd-$name.log" >&2
    echo "testhosts: host-$name did not come up" >&2
    exit 1
}

# up: host-a and host-b. up N: host-1 .. host-N.
up() {
    local count=${1:-${NUCLEUS_TESTHOSTS_COUNT:-}} name names=()
    if [[ -n $count ]] && ! [[ $count =~ ^[0-9]+$ && $count -ge 1 && $count -le $MAX_COUNT ]]; then
        echo "testhosts: the host count must be 1..$MAX_COUNT, got '$count'" >&2
        exit 2
    fi
    mkdir -p "$DIR"
    chmod 0700 "$DIR"
    # The two forms share 127.0.0.2 and 127.0.0.3: refuse to start one while the other runs on this port.
    for name in $(known_hosts); do
        if [[ -z $count && $name =~ ^[0-9]+$ || -n $count && ! $name =~ ^[0-9]+$ ]] && host_pid "$name" >/dev/null; then
            echo "testhosts: host-$name runs on port $PORT already: run \`down\` first" >&2
            exit 1
        fi
    done
    [[ -f $DIR/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C nucleus-criu-tests -f "$DIR/id_ed25519"
    cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
    if [[ -n $count ]]; then mapfile -t names < <(seq 1 "$count"); else names=(a b); fi
    for name in "${names[@]}"; do start "$name"; done
    {
        echo "[criu_hosts]"
        for name in "${names[@]}"; do echo "host-$name ansible_host=$(address "$name")"; done
        cat <<EOF

[criu_hosts:vars]
ansible_port=$PORT
ansible_user=root
ansible_ssh_private_key_file=$DIR/id_ed25519
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ServerAliveInterval=2'
ansible_python_interpreter=${NUCLEUS_TESTHOSTS_PYTHON:-/usr/bin/python3}
EOF
    } >"$DIR/inventory.ini"
}

# Everything that lives in the host's mount namespace: its containers, the listener, the sshd serving
# each (possibly multiplexed, still open) connection, and whatever those started there.
down() {
    local name pid ns proc
    for name in $(known_hosts); do
        if pid=$(host_pid "$name"); then
            # Containers live in mount namespaces of their own: remove them with the host's Podman first.
            if [[ -x /usr/bin/podman ]]; then
                nsenter -t "$pid" -m -- /usr/bin/podman rm --all --force --time 0 >/dev/null 2>&1 || true
            fi
            ns=$(readlink "/proc/$pid/ns/mnt")
            for proc in /proc/[0-9]*; do
                [[ $(readlink "$proc/ns/mnt" 2>/dev/null) == "$ns" ]] && kill -KILL "${proc#/proc/}" 2>/dev/null
            done
        fi
        rm -f "$DIR/sshd-$name.pid"
    done
    return 0
}

case ${1:-} in
    up) up "${2:-}" ;;
    down) down ;;
    pid) host_pid "${2,,}" || { echo "testhosts: host-$2 is not running" >&2; exit 1; } ;;
    *) echo "usage: $0 up [N]|down|pid a|b|N" >&2; exit 2 ;;
esac
