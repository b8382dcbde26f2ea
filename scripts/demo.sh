#!/usr/bin/env bash
# The main job, end to end on this machine: set everything up, then checkpoint a live
# stateful process, verify the checkpoint, restore it, and show it carrying on counting
# from where it was -- using the modules ad hoc, exactly as an operator would.
set -euo pipefail

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
readonly REPO
bash "$REPO/scripts/setup.sh"
cd "$REPO"

readonly WORK=/var/tmp/nucleus-criu-demo
readonly CKPT="$WORK/checkpoint"
readonly STATE="$WORK/counter.state"
ansible() { "$REPO/.venv/bin/ansible" localhost -o "$@" 2>/dev/null; }
say() { printf '\n== %s\n' "$*"; }
state() { cat "$STATE"; }

restored_pid=
workload_pid=
cleanup() {
    for pid in $restored_pid $workload_pid; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

rm -rf "$WORK"
install -d -m 0700 "$WORK"

say "Starting a workload in its own PID namespace; its counter lives only in memory"
setsid unshare --pid --fork setsid "$REPO/.venv/bin/python" "$REPO/demo/counter.py" "$STATE" --mem 64 \
    </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do [[ -s $STATE ]] && break; sleep 0.05; done
sleep 2
workload_pid=$(pgrep -f "^$REPO/.venv/bin/python $REPO/demo/counter.py $STATE" | head -n1)
echo "pid $workload_pid, state (token count): $(state)"

say "ansible localhost -m nucleus.criu.criu_checkpoint -a 'pid=$workload_pid dest=$CKPT'"
ansible -m nucleus.criu.criu_checkpoint -a "pid=$workload_pid dest=$CKPT" | cut -c1-200
frozen=$(state)
echo "state at checkpoint: $frozen (the process is gone now)"
sleep 1
echo "one second later:    $(state) (nothing counts)"

say "ansible localhost -m nucleus.criu.criu_verify -a 'path=$CKPT check_host=true'"
ansible -m nucleus.criu.criu_verify -a "path=$CKPT check_host=true" | grep -o '"valid": *true' || {
    echo "verification failed"; exit 1; }

say "ansible localhost -m nucleus.criu.criu_restore -a 'src=$CKPT'"
result=$(ansible -m nucleus.criu.criu_restore -a "src=$CKPT")
restored_pid=$(printf '%s' "$result" | grep -o '"pid": *[0-9]*' | head -n1 | grep -o '[0-9]*$')
echo "restored as pid $restored_pid"
sleep 2
now=$(state)
echo "state two seconds after restore: $now"

if [[ ${now%% *} == "${frozen%% *}" && ${now##* } -gt ${frozen##* } ]]; then
    say "OK: same token, and the count went on from ${frozen##* } to ${now##* }: the memory state survived"
else
    say "FAILED: expected token ${frozen%% *} counting past ${frozen##* }, found '$now'"
    exit 1
fi
