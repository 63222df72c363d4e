"""The lock orders of the per-version matrix, in one process (any CPython,
2.7 too), each in a thread of its own run after the previous one (it never
hangs): an AB/BA with two threading.Lock, an AB/BA with two
threading.RLock, and two locks made by one line (one lock class), the
second taken while holding the first. The lines marked `# NAME` are what
the test expects in the report."""
import signal
import threading
import time

signal.alarm(20)  # safety net: never hang a test run

lock_a = threading.Lock()  # CREATE_A
lock_b = threading.Lock()  # CREATE_B
rlock_a = threading.RLock()  # CREATE_RA
rlock_b = threading.RLock()  # CREATE_RB


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


def nest():
    with outer:
        with inner:  # NEST
            pass


for target in (take_a_then_b, take_b_then_a, take_ra_then_rb, take_rb_then_ra, nest):
    t = threading.Thread(target=target)
    t.start()
    t.join()
# The tracer reads the code objects named in its events from this process's
# memory: stay a moment, as any service would.
time.sleep(0.5)
