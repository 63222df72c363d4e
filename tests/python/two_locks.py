"""Two Python locks taken by two threads, one after the other (so it never
hangs): `two_locks.py Lock|RLock inverted|same`.

inverted: thread 1 takes A then B, thread 2 takes B then A (a lock-order
inversion); same: both take A then B."""
import signal
import sys
import threading

signal.alarm(20)  # safety net: never hang a test run

kind, order = sys.argv[1], sys.argv[2]
make = {"Lock": threading.Lock, "RLock": threading.RLock}[kind]
lock_a = make()
lock_b = make()


def take_a_then_b():
    with lock_a:
        with lock_b:
            pass


def take_b_then_a():
    with lock_b:
        with lock_a:
            pass


second = take_b_then_a if order == "inverted" else take_a_then_b
for target in (take_a_then_b, second):
    t = threading.Thread(target=target)
    t.start()
    t.join()
