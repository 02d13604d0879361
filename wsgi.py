"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from app import create_app
from util import configure_logging

configure_logging()
app = create_app()
