# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bare migration pipeline, run ON THE SOURCE test host (host-a) by the benchmark:

    python bare.py SPEC_JSON     SPEC: {"criu", "pid", "dir", "ssh": [argv of ssh to the target, no command]}
                                 or    {"container", "dir", "ssh"}: a Podman container

Before the clock: one ssh session to the target, whose command waits for a stream. Then, timed on the source
(the target shares this machine's clock): ``criu dump --leave-stopped``, ``tar -cf - images`` into that session,
which unpacks them and runs ``criu restore -d``; the clock stops when the session returns. For a container:
``podman container checkpoint --export`` (uncompressed), the export into the session, which stores it and runs
``podman container restore --import``. Prints one JSON line of UTC epoch seconds: dump start, dump end, images
on the target, restore returned.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time


def container(spec: dict) -> int:
    directory, q = spec["dir"], shlex.quote
    export = directory + "/export.tar"
    remote = "echo ready && cat > %s && date +%%s.%%N && podman container restore --import %s >/dev/null" % (q(export), q(export))
    session = subprocess.Popen(spec["ssh"] + [remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stdin, stdout = session.stdin, session.stdout
    assert stdin is not None and stdout is not None  # (PIPE)
    if stdout.readline().strip() != b"ready":
        session.kill()
        sys.exit("bare: the ssh session to the target did not start (rc %s)" % session.wait())
    started = time.time()
    subprocess.run(["podman", "container", "checkpoint", "--export", export, "--compress", "none", "--", spec["container"]],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    dumped = time.time()
    with open(export, "rb") as handle:
        shutil.copyfileobj(handle, stdin, 1 << 20)
    stdin.close()
    output = stdout.read()
    code = session.wait()
    restored = time.time()
    if code != 0:
        sys.exit("bare: the target's podman container restore failed (rc %d)" % code)
    print(json.dumps({"t0": started, "t1": dumped, "t2": float(output.split()[0]), "t3": restored}))
    return 0


def main() -> int:
    spec = json.loads(sys.argv[1])
    if "container" in spec:
        return container(spec)
    criu, directory, q = spec["criu"], spec["dir"], shlex.quote
    restore = [criu, "restore", "--no-default-config", "--images-dir", directory + "/images", "--work-dir", directory,
               "--log-file", "restore.log", "-v4", "--restore-detached", "--pidfile", directory + "/restored.pid"]
    remote = "echo ready && tar -C %s -xf - && date +%%s.%%N && %s" % (q(directory), " ".join(q(part) for part in restore))
    session = subprocess.Popen(spec["ssh"] + [remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    stdin, stdout = session.stdin, session.stdout
    assert stdin is not None and stdout is not None  # (PIPE)
    if stdout.readline().strip() != b"ready":
        session.kill()
        sys.exit("bare: the ssh session to the target did not start (rc %s)" % session.wait())
    started = time.time()
    subprocess.run([criu, "dump", "--no-default-config", "--tree", str(spec["pid"]), "--images-dir", directory + "/images",
                    "--work-dir", directory, "--log-file", "dump.log", "-v4", "--network-lock", "nftables", "--leave-stopped"],
                   check=True, stdin=subprocess.DEVNULL)
    dumped = time.time()
    subprocess.run(["tar", "-C", directory, "-cf", "-", "images"], stdout=stdin, check=True)
    stdin.close()
    output = stdout.read()
    code = session.wait()
    restored = time.time()
    if code != 0:
        sys.exit("bare: the target's tar or criu restore failed (rc %d); see %s/restore.log on the target" % (code, directory))
    print(json.dumps({"t0": started, "t1": dumped, "t2": float(output.split()[0]), "t3": restored}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
