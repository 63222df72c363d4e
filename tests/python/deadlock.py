"""A real deadlock between two Python threads that ends by itself: each
thread takes its first lock, both meet at a barrier, then each waits up to
WAIT seconds for the other's lock (`deadlock.py WAIT`). The lines marked
`# NAME` are what the test expects in the report."""
import signal
import sys
import threading

signal.alarm(30)  # safety net: never hang a test run

wait = float(sys.argv[1])
lock_a = threading.Lock()  # CREATE_A
lock_b = threading.Lock()  # CREATE_B
both_hold = threading.Barrier(2)


def first_a_then_b():
    with lock_a:  # TAKE_A
        both_hold.wait()
        if lock_b.acquire(timeout=wait):  # WAIT_B
            lock_b.release()


def first_b_then_a():
    with lock_b:  # TAKE_B
        both_hold.wait()
        if lock_a.acquire(timeout=wait):  # WAIT_A
            lock_a.release()


threads = [threading.Thread(target=f) for f in (first_a_then_b, first_b_then_a)]
for t in threads:
    t.start()
for t in threads:
    t.join()
