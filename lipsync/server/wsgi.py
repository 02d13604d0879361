"""WSGI entry point: `gunicorn -c python:lipsync.server.gunicorn_conf lipsync.server.wsgi:app`."""

from app import create_app
from lipsync.server.offload import native_logging_locks
from lipsync.util import configure_logging

configure_logging()
native_logging_locks()  # generation logs from native threads (lipsync/server/offload.py)
app = create_app()
