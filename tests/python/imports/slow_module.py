"""A module whose import is slow and, at its top level, takes the
application lock: the shape of a Django models module registering itself.
The lock is taken with a timeout so that a deadlock ends by itself."""
import time

import shared_lock
import sys

time.sleep(0.5)  # a slow import: the other thread arrives meanwhile
if shared_lock.L.acquire(timeout=float(sys.argv[1])):  # TAKE_L
    shared_lock.L.release()
