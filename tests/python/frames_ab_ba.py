"""A lock-order inversion between two Python locks, taken by two threads one
after the other (it never hangs): `frames_ab_ba.py Lock|RLock|instance
[exit|_exit]`.

Lock, RLock: module-level locks taken with `with`; instance: two locks of a
class instance taken with acquire()/release(). The lines marked `# NAME`
are what the test expects in the report.

With `exit` the script exits right after its threads (the interpreter frees
its code objects at shutdown), with `_exit` at once (`os._exit(0)`): the
tracer must have copied what names the frames while the process lived."""
import os
import signal
import sys
import threading
import time

signal.alarm(20)  # safety net: never hang a test run

kind = sys.argv[1]
make = threading.RLock if kind == "RLock" else threading.Lock
lock_a = make()  # CREATE_A
lock_b = make()  # CREATE_B


class Accounts:
    def __init__(self):
        self.first = threading.Lock()  # CREATE_FIRST
        self.second = threading.Lock()  # CREATE_SECOND

    def forward(self):
        self.first.acquire()  # FORWARD_FIRST
        self.second.acquire()  # FORWARD_SECOND
        self.second.release()
        self.first.release()

    def backward(self):
        self.second.acquire()  # BACKWARD_SECOND
        self.first.acquire()  # BACKWARD_FIRST
        self.first.release()
        self.second.release()


def take_a_then_b():
    with lock_a:  # HOLD_A
        with lock_b:  # A_THEN_B
            pass


def take_b_then_a():
    with lock_b:  # HOLD_B
        with lock_a:  # B_THEN_A
            pass


if kind == "instance":
    accounts = Accounts()
    targets = (accounts.forward, accounts.backward)
else:
    targets = (take_a_then_b, take_b_then_a)
for target in targets:
    t = threading.Thread(target=target)
    t.start()
    t.join()
if len(sys.argv) > 2 and sys.argv[2] == "_exit":
    os._exit(0)
if len(sys.argv) > 2 and sys.argv[2] == "exit":
    sys.exit(0)
# Otherwise stay a moment, as any service would.
time.sleep(0.5)
