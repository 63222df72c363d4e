"""The import-lock deadlock that hung many Django sites, in Python 3: thread
`importer` imports slow_module first (owning its module import lock); its top
level takes the application lock L, which thread `holder` took before
importing slow_module. Each waits for the other until slow_module's timed
acquire of L gives up: `import_deadlock.py WAIT`."""
import os
import signal
import sys
import threading
import time

signal.alarm(30)  # safety net: never hang a test run
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports"))

import shared_lock


def importer():
    import slow_module  # IMPORT_FIRST


def holder():
    time.sleep(0.1)  # the importer is inside slow_module's import by now
    with shared_lock.L:
        import slow_module  # IMPORT_UNDER_L


threads = [threading.Thread(target=f, name=f.__name__) for f in (importer, holder)]
for t in threads:
    t.start()
for t in threads:
    t.join()
