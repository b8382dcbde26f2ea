#!/usr/bin/env bash
# Two real ssh "hosts" on this machine for migration demos and tests:
#   host-a: sshd on 127.0.0.2:2222    host-b: sshd on 127.0.0.3:2222
# Each sshd runs in its own mount namespace with a private tmpfs on /var/lib/nucleus-criu,
# so what one host writes there the other cannot see: a transfer between them is real.
# They share the kernel, its PID space and the network namespace; workloads that migrate
# here live in their own PID (and, for TCP, network) namespace, as they would in a container.
#
#   bash scripts/testhosts.sh up     start both (idempotent), write build/testhosts/inventory.ini
#   bash scripts/testhosts.sh down   stop both; their namespaces go with them
#   bash scripts/testhosts.sh pid A  print the sshd pid of host-a / host-b (for nsenter)
# NUCLEUS_TESTHOSTS_PORT (default 2222) runs another, independent pair on that port,
# with its files in build/testhosts-PORT. NUCLEUS_TESTHOSTS_PYTHON (default /usr/bin/python3)
# is the interpreter the inventory gives Ansible for both hosts.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
readonly PORT=${NUCLEUS_TESTHOSTS_PORT:-2222}
if [[ $PORT == 2222 ]]; then readonly DIR="$REPO/build/testhosts"; else readonly DIR="$REPO/build/testhosts-$PORT"; fi
readonly PRIVATE=/var/lib/nucleus-criu
declare -A ADDRESS=([a]=127.0.0.2 [b]=127.0.0.3)

# The host's sshd pid, if it runs. A killed sshd stays a zombie until init reaps it (here 1-2 s later),
# and kill -0 succeeds on a zombie: read its state instead.
host_pid() {
    local pidfile="$DIR/sshd-$1.pid" state
    [[ -s $pidfile ]] || return 1
    state=$(ps -o stat= -p "$(<"$pidfile")" 2>/dev/null) || return 1
    [[ $state != Z* ]] && cat "$pidfile"
}

write_config() {
    local name=$1
    [[ -f $DIR/hostkey-$name ]] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/hostkey-$name"
    cat >"$DIR/sshd-$name.conf" <<EOF
ListenAddress ${ADDRESS[$name]}:$PORT
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
    # The unshared shell mounts the private tmpfs, then becomes sshd (same pid).
    setsid unshare --mount --propagation private -- sh -c \
        "mkdir -p $PRIVATE && mount -t tmpfs -o mode=0755,size=4g nucleus-host-$name $PRIVATE && exec /usr/sbin/sshd -D -e -f $DIR/sshd-$name.conf" \
        </dev/null >>"$DIR/sshd-$name.log" 2>&1 &
    pid=$!
    echo "$pid" >"$DIR/sshd-$name.pid"
    for _ in $(seq 100); do
        if ssh -q -p "$PORT" -i "$DIR/id_ed25519" -o BatchMode=yes -o StrictHostKeyChecking=no \
            -o UserKnownHostsFile=/dev/null "root@${ADDRESS[$name]}" true 2>/dev/null; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$DIR/sshd-$name.log" >&2
    echo "testhosts: host-$name did not come up" >&2
    exit 1
}

up() {
    mkdir -p "$DIR" /run/sshd
    chmod 0700 "$DIR"
    [[ -f $DIR/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C nucleus-criu-tests -f "$DIR/id_ed25519"
    cp "$DIR/id_ed25519.pub" "$DIR/authorized_keys"
    start a
    start b
    cat >"$DIR/inventory.ini" <<EOF
[criu_hosts]
host-a ansible_host=${ADDRESS[a]}
host-b ansible_host=${ADDRESS[b]}

[criu_hosts:vars]
ansible_port=$PORT
ansible_user=root
ansible_ssh_private_key_file=$DIR/id_ed25519
ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'
ansible_python_interpreter=${NUCLEUS_TESTHOSTS_PYTHON:-/usr/bin/python3}
EOF
}

# Everything that lives in the host's mount namespace: the listener, the sshd serving each
# (possibly multiplexed, still open) connection, and whatever those started there.
down() {
    local name pid ns proc
    for name in a b; do
        if pid=$(host_pid "$name"); then
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
    up) up ;;
    down) down ;;
    pid) host_pid "${2,,}" || { echo "testhosts: host-$2 is not running" >&2; exit 1; } ;;
    *) echo "usage: $0 up|down|pid a|b" >&2; exit 2 ;;
esac
