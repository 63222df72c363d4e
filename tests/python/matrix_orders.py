"""The lock orders of the per-version matrix, in one process (any CPython,
2.7 too), each in a thread of its own run after the previous one (it never
hangs): an AB/BA with two threading.Lock, an AB/BA with two
threading.RLock, an AB/BA with two threading.Lock in threads started with
(_)thread.start_new_thread whose first act is to take a lock (2.7 released
the GIL before it: no thread state is current), and two locks made by one
line (one lock class), the second taken while holding the first. The lines marked `# NAME` are what
the test expects in the report. `matrix_orders.py _exit`: the process ends
with os._exit(0) right after its threads joined (nothing left for the
tracer to read from it)."""
import os
import signal
import sys
import threading
import time

try:
    import thread as _thread  # Python 2
except ImportError:
    import _thread

signal.alarm(20)  # safety net: never hang a test run

lock_a = threading.Lock()  # CREATE_A
lock_b = threading.Lock()  # CREATE_B
rlock_a = threading.RLock()  # CREATE_RA
rlock_b = threading.RLock()  # CREATE_RB
lock_c = threading.Lock()  # CREATE_C
lock_d = threading.Lock()  # CREATE_D


def new_lock():
    return threading.Lock()  # CREATE_SAME


outer = new_lock()
inner = new_lock()


def take_a_then_b():
    with lock_a:  # HOLD_A
        with lock_b:  # A_THEN_B
            pass


def take_b_then_a():
    with lock_b:  # HOLD_B
        with lock_a:  # B_THEN_A
            pass


def take_ra_then_rb():
    with rlock_a:  # HOLD_RA
        with rlock_b:  # RA_THEN_RB
            pass


def take_rb_then_ra():
    with rlock_b:  # HOLD_RB
        with rlock_a:  # RB_THEN_RA
            pass


finished = []


def raw_c_then_d():
    with lock_c:  # HOLD_C
        with lock_d:  # C_THEN_D
            pass
    finished.append(1)


def raw_d_then_c():
    with lock_d:  # HOLD_D
        with lock_c:  # D_THEN_C
            pass
    finished.append(1)


def nest():
    with outer:
        with inner:  # NEST
            pass


for target in (take_a_then_b, take_b_then_a, take_ra_then_rb, take_rb_then_ra, nest):
    t = threading.Thread(target=target)
    t.start()
    t.join()
# Raw threads, one after the other; waited for without a lock (a lock
# would order with theirs).
for started, target in enumerate((raw_c_then_d, raw_d_then_c), 1):
    _thread.start_new_thread(target, ())
    while len(finished) < started:
        time.sleep(0.01)
if sys.argv[1:] == ["_exit"]:
    os._exit(0)
# The tracer reads the code objects named in its events from this process's
# memory: stay a moment, as any service would.
time.sleep(0.5)
