"""Application registry guarded by one re-entrant lock, like Django 1.3's
AppCache.write_lock. Models register themselves here when imported."""
import os
import threading

REGISTRY_LOCK = threading.RLock()  # the registry lock (one creation site)

_models = []


def slow_seconds():
    """Width of the race window, from $LOCKTRACE_SLOW_IMPORT (seconds).

    An environment variable, not a request variable: slow_models reads it at
    import time, outside any request. mod_wsgi processes inherit it from the
    apache2 parent."""
    return float(os.environ.get("LOCKTRACE_SLOW_IMPORT", "0"))


def register(name):
    with REGISTRY_LOCK:  # taken while the importer holds slow_models' import lock
        _models.append(name)


def populate():
    """Work done under the registry lock before importing models (Django's
    AppCache._populate); its duration widens the race window so that
    concurrent first requests deadlock whichever arrives first."""
    import time
    time.sleep(slow_seconds())
