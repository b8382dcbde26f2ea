# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bare migration pipeline, run ON THE SOURCE test host (host-a) by the benchmark:

    python bare.py SPEC_JSON     SPEC: {"criu", "pid", "dir", "ssh": [argv of ssh to the target, no command]}

Before the clock: one ssh session to the target, whose command waits for a tar stream. Then, timed on the source
(the target shares this machine's clock): ``criu dump --leave-stopped``, ``tar -cf - images`` into that session,
which unpacks them and runs ``criu restore -d``; the clock stops when the session returns. Prints one JSON line
of UTC epoch seconds: dump start, dump end, images unpacked on the target, restore returned.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time


def main() -> int:
    spec = json.loads(sys.argv[1])
    criu, directory, q = spec["criu"], spec["dir"], shlex.quote
    restore = [criu, "restore", "--no-default-config", "--images-dir", directory + "/images", "--work-dir", directory,
               "--log-file", "restore.log", "-v4", "--restore-detached", "--pidfile", directory + "/restored.pid"]
    remote = "echo ready && tar -C %s -xf - && date +%%s.%%N && %s" % (q(directory), " ".join(q(part) for part in restore))
    session = subprocess.Popen(spec["ssh"] + [remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    if session.stdout.readline().strip() != b"ready":  # type: ignore[union-attr]
        session.kill()
        sys.exit("bare: the ssh session to the target did not start (rc %s)" % session.wait())
    started = time.time()
    subprocess.run([criu, "dump", "--no-default-config", "--tree", str(spec["pid"]), "--images-dir", directory + "/images",
                    "--work-dir", directory, "--log-file", "dump.log", "-v4", "--network-lock", "nftables", "--leave-stopped"],
                   check=True, stdin=subprocess.DEVNULL)
    dumped = time.time()
    subprocess.run(["tar", "-C", directory, "-cf", "-", "images"], stdout=session.stdin, check=True)
    session.stdin.close()  # type: ignore[union-attr]
    output = session.stdout.read()  # type: ignore[union-attr]
    code = session.wait()
    restored = time.time()
    if code != 0:
        sys.exit("bare: the target's tar or criu restore failed (rc %d); see %s/restore.log on the target" % (code, directory))
    print(json.dumps({"t0": started, "t1": dumped, "t2": float(output.split()[0]), "t3": restored}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
