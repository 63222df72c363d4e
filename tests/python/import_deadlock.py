"""The import-lock deadlock that hung many Django sites: thread `importer`
imports slow_module first (owning Python 3's per-module import lock, or
Python 2's global import lock); its top level takes the application lock L,
which thread `holder` took before importing slow_module. Each waits for the
other for good; the main thread ends the process after WAIT seconds
(`import_deadlock.py WAIT`)."""
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


for f in (importer, holder):
    t = threading.Thread(target=f, name=f.__name__)
    t.daemon = True
    t.start()
time.sleep(float(sys.argv[1]))
os._exit(0)
