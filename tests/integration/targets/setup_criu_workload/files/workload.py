"""A workload for the integration targets: a random token held only in memory and a count, every 0.05 s."""
import os
import sys
import time

TOKEN = os.urandom(8).hex()
count = 0
while True:
    count += 1
    with open(sys.argv[1] + ".tmp", "w") as handle:
        handle.write("%s %d\n" % (TOKEN, count))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(0.05)
