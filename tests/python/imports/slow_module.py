"""A module whose import is slow and, at its top level, takes the
application lock: the shape of a Django models module registering itself.
Imported by import_deadlock.py, which ends the process."""
import time

import shared_lock

time.sleep(0.5)  # a slow import: the other thread arrives meanwhile
shared_lock.L.acquire()  # TAKE_L
shared_lock.L.release()
