# mod_wsgi entry point: kept trivial (mod_wsgi loads it under its own lock)
# so that all the lock traffic comes from views.py and its imports.
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from views import application  # noqa: E402,F401
