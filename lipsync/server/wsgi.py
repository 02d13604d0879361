"""WSGI entry point: `gunicorn -c python:lipsync.server.gunicorn_conf lipsync.server.wsgi:app`.

Logging is configured here, in each worker, at LIPSYNC_LOG_LEVEL.
"""

from lipsync.server.app import create_app
from lipsync.server.offload import native_logging_locks
from lipsync.settings import Settings
from lipsync.util import configure_logging

configure_logging(level=Settings.load().log_level)
native_logging_locks()  # generation logs from native threads (lipsync/server/offload.py)
app = create_app()
