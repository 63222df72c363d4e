"""A models module whose import is slow and registers itself, like a Django
models.py calling into the app cache at import time. Importing it holds its
module import lock for the whole top level."""
import time

import registry

time.sleep(registry.slow_seconds())  # the race window, import lock held
registry.register(__name__)  # import lock held -> wants the registry lock
