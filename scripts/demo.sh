#!/usr/bin/env bash
# The main job, end to end on this machine: set everything up, start two ssh hosts, run a
# stateful workload on host-a, migrate it live to host-b with the nucleus.criu.migrate
# playbook, and back with post-copy, showing it carry on from where it was each time, with
# the measured downtime.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
bash "$REPO/scripts/setup.sh"
cd "$REPO"

readonly STATE=/tmp/nucleus-criu-demo.state
readonly PIDFILE=/run/nucleus-criu-demo.pid  # each test host has a /run of its own
readonly INVENTORY="$REPO/build/testhosts/inventory.ini"
readonly KEY="$REPO/build/testhosts/id_ed25519"
on_host() { ssh -q -p 2222 -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "root@$1" "$2"; }
say() { printf '\n== %s\n' "$*"; }
mount_ns() { readlink "/proc/$1/ns/mnt"; }

addr() { case $1 in host-a) echo 127.0.0.2 ;; host-b) echo 127.0.0.3 ;; esac; }

# criu_role VAR=VALUE...: the nucleus.criu.criu role on this machine (the test hosts' kernel), its output shown
# only when it fails.
criu_role() {
    local out setting extra=()
    for setting in "$@"; do extra+=(-e "$setting"); done
    out=$(mktemp)
    if ! "$REPO/.venv/bin/ansible-playbook" -i localhost, -c local -e ansible_python_interpreter="$REPO/.venv/bin/python" \
            "${extra[@]}" playbooks/criu.yml >"$out" 2>&1; then
        cat "$out"
        rm -f "$out"
        say "FAILED: the nucleus.criu.criu role failed here (output above)"
        exit 1
    fi
    grep -E '"msg": "Podman|^localhost +:' "$out" || true
    rm -f "$out"
}

cleanup() {
    pkill -KILL -f "demo/counter.py $STATE" 2>/dev/null || true
    bash "$REPO/scripts/testhosts.sh" down
}
trap cleanup EXIT

say "This machine: Debian $(cat /etc/debian_version), $("$REPO/.venv/bin/python" --version), ansible-core $(
    "$REPO/.venv/bin/python" -c 'from ansible.release import __version__; print(__version__)'), criu $(
    criu --version | sed -n 's/^Version: //p')"
say "Starting two ssh hosts: host-a (127.0.0.2:2222) and host-b (127.0.0.3:2222), each with its own mount namespace"
bash scripts/testhosts.sh up
echo "host-a: $(mount_ns "$(bash scripts/testhosts.sh pid a)")   host-b: $(mount_ns "$(bash scripts/testhosts.sh pid b)")"

say "Starting a workload on host-a, in its own PID namespace, holding 64 MiB and a counter in memory"
rm -f "$STATE"
on_host 127.0.0.2 "setsid unshare --pid --fork setsid $REPO/.venv/bin/python $REPO/demo/counter.py $STATE --mem 64 </dev/null >/dev/null 2>&1 &
    for i in \$(seq 100); do pid=\$(pgrep -n -f 'demo/counter.py $STATE'); [ -s $STATE ] && [ -n \"\$pid\" ] && break; sleep 0.1; done
    echo \$pid > $PIDFILE"
sleep 2
echo "host-a pid $(on_host 127.0.0.2 "cat $PIDFILE") ($(mount_ns "$(on_host 127.0.0.2 "cat $PIDFILE")")), state (token count): $(cat "$STATE")"

# migrate NAME SOURCE TARGET MODE: run the playbook, then check the workload carries on, on TARGET only.
migrate() {
    local name=$1 source=$2 target=$3 mode=$4 record before after old_pid new_pid
    old_pid=$(on_host "$(addr "$source")" "cat $PIDFILE")
    say "ansible-playbook -i $INVENTORY nucleus.criu.migrate -e migrate_source=$source -e migrate_target=$target -e migrate_pidfile=$PIDFILE -e migrate_name=$name -e migrate_mode=$mode"
    before=$(cat "$STATE")
    "$REPO/.venv/bin/ansible-playbook" -i "$INVENTORY" nucleus.criu.migrate \
        -e migrate_source="$source" -e migrate_target="$target" -e migrate_pidfile="$PIDFILE" -e migrate_name="$name" \
        -e migrate_target_pidfile="$PIDFILE" -e migrate_mode="$mode" \
        | grep -E '"msg"|PLAY RECAP|^migration-' || true
    record=$(on_host "$(addr "$source")" "cat /var/lib/nucleus-criu/migrations/$name.journal.json")
    new_pid=$(grep -o '"target_pid": *"*[0-9]*' <<<"$record" | grep -o '[0-9]*$')
    sleep 2
    after=$(cat "$STATE")
    say "Result ($mode)"
    echo "before migration: $before"
    echo "after migration:  $after"
    echo "now $target pid $new_pid ($(mount_ns "$new_pid")); $source pid $old_pid: $( [[ -d /proc/$old_pid ]] && echo 'STILL THERE' || echo 'gone')"
    echo "downtime (frozen on $source -> running on $target): $(grep -o '"downtime_seconds": *"*[0-9.]*' <<<"$record" | grep -o '[0-9.]*$') s"
    echo "journal of $source (each phase flushed to disk before it acted):"
    grep -o '"phase": "[a-z_]*"' <<<"$record" | cut -d'"' -f4 | uniq | paste -sd' ' | sed 's/ / -> /g; s/^/  /'
    if [[ ${after%% *} == "${before%% *}" && ${after##* } -gt ${before##* } && ! -d /proc/$old_pid ]] \
        && [[ $(mount_ns "$new_pid") == "$(mount_ns "$(bash scripts/testhosts.sh pid "${target#host-}")")" ]]; then
        say "OK: same token on $target, and the count went on from ${before##* } to ${after##* }: the workload moved with its memory"
    else
        say "FAILED: expected token ${before%% *} counting past ${before##* } on $target"
        exit 1
    fi
}

migrate demo host-a host-b copy

say "And back with post-copy: restored on host-a at once, its 64 MiB fetched from the frozen copy on host-b over ssh"
echo "(a post-copy source needs fs.pipe-max-size >= 4 MiB: the criu role's criu_postcopy_source sets it, here and at boot)"
criu_role criu_postcopy_source=true
migrate demo-back host-b host-a postcopy

say "A Podman container, host-a -> host-b: Podman prepared by the criu role (criu_containers: true), the image sent along"
criu_role criu_postcopy_source=true criu_containers=true
readonly IMAGE=localhost/nucleus-criu-demo:busybox CONTAINER=demo-web
ROOTFS=$(mktemp -d)
readonly ROOTFS
mkdir -p "$ROOTFS/bin" "$ROOTFS/tmp"
cp /bin/busybox "$ROOTFS/bin/busybox"
for applet in sh cat sleep; do ln -s busybox "$ROOTFS/bin/$applet"; done
# Each test host has Podman storage of its own: the image is made on host-a only.
tar -C "$ROOTFS" -c . | on_host 127.0.0.2 "podman import --quiet - $IMAGE >/dev/null"
rm -rf "$ROOTFS"
on_host 127.0.0.2 "podman run -d --name $CONTAINER $IMAGE sh -c 'i=0; while :; do i=\$((i+1)); echo \$i > /tmp/n; sleep 0.05; done' >/dev/null"
sleep 1
say "ansible-playbook -i $INVENTORY nucleus.criu.migrate -e migrate_source=host-a -e migrate_target=host-b -e migrate_container=$CONTAINER -e migrate_name=$CONTAINER -e migrate_transfer_image=true"
before=$(on_host 127.0.0.2 "podman exec $CONTAINER cat /tmp/n")
"$REPO/.venv/bin/ansible-playbook" -i "$INVENTORY" nucleus.criu.migrate -e migrate_source=host-a -e migrate_target=host-b \
    -e migrate_container="$CONTAINER" -e migrate_name="$CONTAINER" -e migrate_transfer_image=true \
    | grep -E '"msg"|PLAY RECAP|^migration-' || true
after=$(on_host 127.0.0.3 "podman exec $CONTAINER cat /tmp/n" || echo 0)
left=$(on_host 127.0.0.2 "podman ps -a --filter name=^$CONTAINER\$ --format '{{.Names}}'")
say "Result (container)"
echo "count in the container's memory before: $before; now on host-b: $after; on host-a: ${left:-no container left}"
if [[ $after -gt $before && -z $left ]]; then
    say "OK: the container counts on, on host-b, from where it was: it moved with its memory, exactly once"
else
    say "FAILED: expected $CONTAINER counting past $before on host-b, and gone from host-a"
    exit 1
fi
