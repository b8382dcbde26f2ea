"""A workload for the integration targets: a random token held only in memory and a count, every 0.05 s.
Restored copies share the token and the state file, so each write goes through a temporary name of its own."""
import os
import sys
import time

TOKEN = os.urandom(8).hex()
count = 0
while True:
    count += 1
    temporary = "%s.%s.tmp" % (sys.argv[1], os.urandom(4).hex())
    with open(temporary, "w") as handle:
        handle.write("%s %d\n" % (TOKEN, count))
    os.replace(temporary, sys.argv[1])
    time.sleep(0.05)
