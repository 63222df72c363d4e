"""Benchmark loop for `cargo xtask bench`: acquire and release a
threading.Lock (a POSIX semaphore in CPython on Linux) for SECONDS, then print
the mean ns per acquire+release pair.

    pylockloop.py SECONDS"""
import sys
import threading
import time

seconds = float(sys.argv[1])
lock = threading.Lock()
pairs = 0
start = time.perf_counter()
end = start + seconds
now = start
while now < end:
    for _ in range(1000):
        lock.acquire()
        lock.release()
    pairs += 1000
    now = time.perf_counter()
print(f"{(now - start) * 1e9 / pairs:.2f}")
