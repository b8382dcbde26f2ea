#!/usr/bin/env bash
# The main job, end to end on this machine: set everything up, start two ssh hosts, run a
# stateful workload on host-a, migrate it live to host-b with the nucleus.criu.migrate
# playbook, and show it carrying on from where it was, with the measured downtime.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
bash "$REPO/scripts/setup.sh"
cd "$REPO"

readonly STATE=/tmp/nucleus-criu-demo.state
readonly PIDFILE=/var/lib/nucleus-criu/demo.pid
readonly INVENTORY="$REPO/build/testhosts/inventory.ini"
readonly KEY="$REPO/build/testhosts/id_ed25519"
on_host() { ssh -q -p 2222 -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "root@$1" "$2"; }
say() { printf '\n== %s\n' "$*"; }
mount_ns() { readlink "/proc/$1/ns/mnt"; }

cleanup() {
    pkill -KILL -f "demo/counter.py $STATE" 2>/dev/null || true
    bash "$REPO/scripts/testhosts.sh" down
}
trap cleanup EXIT

say "Starting two ssh hosts: host-a (127.0.0.2:2222) and host-b (127.0.0.3:2222), each with its own mount namespace"
bash scripts/testhosts.sh up
echo "host-a: $(mount_ns "$(bash scripts/testhosts.sh pid a)")   host-b: $(mount_ns "$(bash scripts/testhosts.sh pid b)")"

say "Starting a workload on host-a, in its own PID namespace, holding 64 MiB and a counter in memory"
rm -f "$STATE"
on_host 127.0.0.2 "setsid unshare --pid --fork setsid $REPO/.venv/bin/python $REPO/demo/counter.py $STATE --mem 64 </dev/null >/dev/null 2>&1 &
    for i in \$(seq 100); do pid=\$(pgrep -n -f 'demo/counter.py $STATE'); [ -s $STATE ] && [ -n \"\$pid\" ] && break; sleep 0.1; done
    echo \$pid > $PIDFILE"
sleep 2
old_pid=$(on_host 127.0.0.2 "cat $PIDFILE")
echo "host-a pid $old_pid ($(mount_ns "$old_pid")), state (token count): $(cat "$STATE")"

say "ansible-playbook -i $INVENTORY nucleus.criu.migrate -e migrate_source=host-a -e migrate_target=host-b -e migrate_pidfile=$PIDFILE -e migrate_name=demo"
before=$(cat "$STATE")
"$REPO/.venv/bin/ansible-playbook" -i "$INVENTORY" nucleus.criu.migrate \
    -e migrate_source=host-a -e migrate_target=host-b -e migrate_pidfile="$PIDFILE" -e migrate_name=demo \
    | grep -E '"msg"|PLAY RECAP|host-a +:' || true
record=$(on_host 127.0.0.2 "cat /var/lib/nucleus-criu/migrations/demo.migration.json")
new_pid=$(grep -o '"target_pid": *"*[0-9]*' <<<"$record" | grep -o '[0-9]*$')
sleep 2
after=$(cat "$STATE")

say "Result"
echo "before migration: $before"
echo "after migration:  $after"
echo "now host-b pid $new_pid ($(mount_ns "$new_pid")); host-a pid $old_pid: $( [[ -d /proc/$old_pid ]] && echo 'STILL THERE' || echo 'gone')"
echo "downtime (frozen on host-a -> running on host-b): $(grep -o '"downtime_seconds": *"*[0-9.]*' <<<"$record" | grep -o '[0-9.]*$') s"
if [[ ${after%% *} == "${before%% *}" && ${after##* } -gt ${before##* } && ! -d /proc/$old_pid ]] \
    && [[ $(mount_ns "$new_pid") == "$(mount_ns "$(bash scripts/testhosts.sh pid b)")" ]]; then
    say "OK: same token on host-b, and the count went on from ${before##* } to ${after##* }: the workload moved with its memory"
else
    say "FAILED: expected token ${before%% *} counting past ${before##* } on host-b"
    exit 1
fi
