"""A real deadlock between two Python threads (any CPython, 2.7 too): each
thread takes its first lock, waits until the other holds its own, then
waits for the other's lock for good; the main thread ends the process after
WAIT seconds (`deadlock.py WAIT`). The lines marked `# NAME` are what the
test expects in the report."""
import os
import signal
import sys
import threading
import time

signal.alarm(30)  # safety net: never hang a test run

wait = float(sys.argv[1])
lock_a = threading.Lock()  # CREATE_A
lock_b = threading.Lock()  # CREATE_B
a_held = threading.Event()
b_held = threading.Event()


def first_a_then_b():
    with lock_a:  # TAKE_A
        a_held.set()
        b_held.wait()
        lock_b.acquire()  # WAIT_B


def first_b_then_a():
    with lock_b:  # TAKE_B
        b_held.set()
        a_held.wait()
        lock_a.acquire()  # WAIT_A


for f in (first_a_then_b, first_b_then_a):
    t = threading.Thread(target=f)
    t.daemon = True
    t.start()
time.sleep(wait)
os._exit(0)
