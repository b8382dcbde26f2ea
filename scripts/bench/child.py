# Copyright (c) nucleus.criu contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one module entry point in this fresh interpreter and report its time, result stats and peak RSS.

    python child.py COLLECTIONS_PATH checkpoint|restore|verify PARAMS_JSON

PARAMS_JSON is a full params dict (built by the benchmark from _argspec's Spec.defaults). Prints one JSON line.
Nothing is patched: what the module reports (stats) is what the benchmark shows of its phases.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main() -> int:
    sys.path.insert(0, sys.argv[1])
    # pylint: disable=import-outside-toplevel
    from ansible_collections.nucleus.criu.plugins.module_utils.operations import _checkpoint, _restore, _verify
    from ansible_collections.nucleus.criu.plugins.module_utils._argspec import CHECKPOINT, RESTORE, VERIFY
    from ansible_collections.nucleus.criu.plugins.module_utils._errors import CriuError
    kind, params = sys.argv[2], json.loads(sys.argv[3])
    entry = {"checkpoint": lambda: _checkpoint.checkpoint(CHECKPOINT.request(params), False),
             "restore": lambda: _restore.restore(RESTORE.request(params), False),
             "verify": lambda: _verify.verify(VERIFY.request(params))}[kind]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        result = entry()
    except CriuError as exc:
        print(json.dumps({"error": exc.msg}))
        return 1
    elapsed = time.monotonic() - started
    manifest = (result.get("checkpoint") or {}).get("manifest") or []
    with open("/proc/self/status", encoding="ascii") as handle:
        hwm = next((int(line.split()[1]) for line in handle if line.startswith("VmHWM:")), None)
    print(json.dumps({"elapsed": elapsed, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "maxrss_before_call_kib": rss_before,
                      "vmhwm_kib": hwm, "pid": result.get("pid"), "changed": result.get("changed"),
                      "stats": result.get("stats"), "image_bytes": sum(item["size"] for item in manifest),
                      "image_files": len(manifest), "algorithm": (result.get("checkpoint") or {}).get("manifest_algorithm")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
