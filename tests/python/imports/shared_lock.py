"""An application lock (like Django 1.3's app-registry lock), in its own
module so that both the importer and the imported module can reach it."""
import threading

L = threading.Lock()  # CREATE_L
