"""The WSGI views. `/a` and `/b` take the registry lock and slow_models'
import lock in opposite orders: sequenced they are harmless, concurrent
first requests deadlock the process (each process imports slow_models once).

/a-imp and /b-imp are the Python 2 flavour of the same bug: the global
import lock (`_imp.acquire_lock()`, which Django 1.3's _populate took
explicitly and Python 2 held across every import) instead of the per-module
one. Unlike a Python 3 module lock, it is a plain lock held by its owner."""
import os
import threading

import _imp

import registry

# A consistent-order pair for the no-false-alarm load (/ok).
LOCK_X = threading.Lock()
LOCK_Y = threading.Lock()


def view_a():
    with registry.REGISTRY_LOCK:  # registry lock, then ...
        registry.populate()
        import slow_models  # ... slow_models' import lock
    return "a"


def view_b():
    import slow_models  # import lock, then (inside) the registry lock
    return "b"


def view_a_imp():
    with registry.REGISTRY_LOCK:  # registry lock, then ...
        registry.populate()
        _imp.acquire_lock()  # ... the global import lock
        try:
            import slow_models
        finally:
            _imp.release_lock()
    return "a-imp"


def view_b_imp():
    _imp.acquire_lock()  # global import lock, then (inside) the registry lock
    try:
        import slow_models
    finally:
        _imp.release_lock()
    return "b-imp"


def view_ok(n=200):
    for _ in range(n):
        with LOCK_X:
            with LOCK_Y:
                pass
    return "ok"


def view_pid(environ):
    # Lets tests name the process (and thread) that serves a URL.
    return "pid=%d tid=%d group=%s" % (
        os.getpid(), threading.get_native_id(), environ.get("mod_wsgi.process_group", ""))


ROUTES = {
    "/a": view_a,
    "/b": view_b,
    "/a-imp": view_a_imp,
    "/b-imp": view_b_imp,
    "/ok": view_ok,
}


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/pid" or path.endswith("/pid"):  # /pid, /a/pid, /b/pid
        body = view_pid(environ)
    elif path in ROUTES:
        body = ROUTES[path]()
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [(body + "\n").encode()]
