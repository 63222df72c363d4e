"""Two locks made by one line (one lock class), the second taken while
holding the first: `same_class.py Lock|RLock`. The lines marked `# NAME`
are what the test expects in the report."""
import signal
import sys
import threading
import time

signal.alarm(20)  # safety net: never hang a test run

make = threading.RLock if sys.argv[1] == "RLock" else threading.Lock


def new_lock():
    return make()  # CREATE


outer = new_lock()
inner = new_lock()


def nest():
    with outer:
        with inner:  # NEST
            pass


t = threading.Thread(target=nest)
t.start()
t.join()
# The tracer reads the code objects named in its events from this process's
# memory: stay a moment, as any service would.
time.sleep(0.5)
