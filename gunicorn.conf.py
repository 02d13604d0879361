"""gunicorn settings for the lip-sync service (`gunicorn -c gunicorn.conf.py wsgi:app`).

One engine per worker process: models are compiled in `post_worker_init`, after the fork,
so no OpenVINO threads exist in the master. Values come from the environment.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5001')}"
workers = int(os.environ.get("LIPSYNC_WORKERS", "1"))
threads = int(os.environ.get("LIPSYNC_THREADS", "4"))
worker_class = "gthread"
# A generation may take tens of seconds for long speech; the arbiter kills silent workers.
timeout = int(os.environ.get("LIPSYNC_WORKER_TIMEOUT", "300"))
graceful_timeout = int(os.environ.get("LIPSYNC_GRACEFUL_TIMEOUT", "60"))
keepalive = 5
accesslog = os.environ.get("LIPSYNC_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LIPSYNC_LOG_LEVEL", "info")
preload_app = False


def post_worker_init(worker):
    """Compile the installed models before this worker takes requests."""
    from app import warm_up

    try:
        warm_up(worker.wsgi)
    except Exception:  # a missing or broken model must not stop the worker: /health reports it
        worker.log.exception("model warm-up failed")
