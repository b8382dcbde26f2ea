"""A stand-in workload: a random token held only in memory, written with a count every 0.2 s."""
import os
import sys
import time

TOKEN = os.urandom(8).hex()
count = 0
while True:
    with open(sys.argv[1] + ".tmp", "w") as handle:
        handle.write("%s %d\n" % (TOKEN, count))
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    count += 1
    time.sleep(0.2)
