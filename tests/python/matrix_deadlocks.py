"""The real deadlocks of the per-version matrix, in one process (any
CPython, 2.7 too), until the main thread ends it after WAIT seconds
(`matrix_deadlocks.py WAIT`):
- two threads each holding one lock and waiting for the other's;
- the import-lock deadlock that hung many Django sites: `importer` imports
  slow_module (owning Python 3's per-module import lock, or Python 2's
  global import lock), whose top level takes the application lock L, which
  `holder` took before importing slow_module.
The lines marked `# NAME` are what the test expects in the report."""
import os
import signal
import sys
import threading
import time

signal.alarm(30)  # safety net: never hang a test run
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports"))

import shared_lock

lock_a = threading.Lock()  # CREATE_A
lock_b = threading.Lock()  # CREATE_B
a_held = threading.Event()
b_held = threading.Event()


def first_a_then_b():
    with lock_a:
        a_held.set()
        b_held.wait()
        lock_b.acquire()  # WAIT_B


def first_b_then_a():
    with lock_b:
        b_held.set()
        a_held.wait()
        lock_a.acquire()  # WAIT_A


def importer():
    import slow_module  # IMPORT_FIRST


def holder():
    time.sleep(0.1)  # the importer is inside slow_module's import by now
    with shared_lock.L:
        import slow_module  # IMPORT_UNDER_L


for f in (first_a_then_b, first_b_then_a, importer, holder):
    t = threading.Thread(target=f, name=f.__name__)
    t.daemon = True
    t.start()
time.sleep(float(sys.argv[1]))
os._exit(0)
