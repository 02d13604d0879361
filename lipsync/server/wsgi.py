"""WSGI entry point: `gunicorn -c python:lipsync.server.gunicorn_conf lipsync.server.wsgi:app`."""

from app import create_app
from lipsync.util import configure_logging

configure_logging()
app = create_app()
