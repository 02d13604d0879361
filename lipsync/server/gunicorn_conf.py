"""gunicorn settings for the lip-sync service.

`gunicorn -c python:lipsync.server.gunicorn_conf lipsync.server.wsgi:app` (or `lipsync serve`)

One engine per worker process: models are compiled in `post_worker_init`, after the fork,
so no OpenVINO threads exist in the master. Prometheus metrics of all workers are
aggregated through a per-master directory (multiprocess mode), removed on exit.
Values come from `Settings.load()` (see README, "Configuration"): an invalid variable stops
gunicorn at start with a message naming it.
"""

import os
import shutil

from lipsync.runtime.priority import PEERS_DIR_ENV
from lipsync.settings import Settings

_settings = Settings.load()

bind = _settings.bind
workers = _settings.workers
# gevent: every connection is a greenlet, so idle, slow or stalled clients cost no thread;
# generation runs on native threads (lipsync/server/offload.py), bounded by admission.
worker_class = _settings.worker_class
worker_connections = _settings.worker_connections
# Threads per worker for worker_class gthread only (each connection holds one).
threads = _settings.threads
# The arbiter kills a worker silent this long; generations are bounded well below it.
timeout = _settings.worker_timeout
graceful_timeout = _settings.graceful_timeout
# Idle keep-alive connections wait in gthread's poller, not in a thread. Keep them well past
# a client's Retry-After pause, or its next request races the server closing the socket.
keepalive = _settings.keepalive_s
accesslog = None  # the app logs one JSON line per request (logger "lipsync.access")
errorlog = "-"
loglevel = _settings.log_level
preload_app = False
# No gunicornc control socket: it would live in $HOME, shared by every server of the user.
control_socket_disable = True

METRICS_DIR = _settings.metrics_dir / str(os.getpid())
# The workers' shared flags (live work goes first on every worker), removed with it.
PEERS_DIR = METRICS_DIR / "peers"


def on_starting(server):
    """Before any worker: a fresh multiprocess metrics directory for this master, and the
    workers' peers directory in it."""
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    PEERS_DIR.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
    os.environ[PEERS_DIR_ENV] = str(PEERS_DIR)


# glibc malloc tuning for workers that allocate many large, short-lived frame buffers from
# several threads: a fixed mmap threshold returns every buffer over 256 KiB to the OS on
# free (the default dynamic threshold grows and leaves them fragmenting the heap), and two
# arenas instead of 8 per core bound per-thread heaps. Keeps RSS flat under load.
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 256 * 1024, M_ARENA_MAX: 2}


def _libc_function(name: str):
    """A glibc function, or None where there is no glibc (then nothing is tuned)."""
    import ctypes
    import ctypes.util

    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError):
        return None


MALLOPT, MALLOC_TRIM = _libc_function("mallopt"), _libc_function("malloc_trim")


def post_fork(server, worker):
    if MALLOPT is not None:
        for option, value in MALLOC_SETTINGS.items():
            MALLOPT(option, value)
    from lipsync.server.offload import import_native_libraries

    import_native_libraries()  # before the gevent worker patches threading


def post_request(worker, req, environ, resp):
    """After a generation, hand freed heap pages back to the OS (RSS tracks live memory)."""
    if req.method == "POST" and MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


# Native threads a gevent worker keeps for CPU work beyond its generation slots and queue
# (audio decoding of requests not yet admitted, avatar lookups).
SPARE_NATIVE_THREADS = 8


def post_worker_init(worker):
    """Size the native thread pool, then compile the installed models before this worker
    takes requests."""
    from lipsync.server.app import warm_up

    if _settings.worker_class == "gevent":
        import gevent

        gevent.get_hub().threadpool.maxsize = (
            _settings.max_concurrent
            + _settings.max_queue
            + 2 * _settings.realtime_max_sessions  # a render and an idle frame per session
            + SPARE_NATIVE_THREADS
        )

    try:
        warm_up(worker.wsgi)
    except Exception:  # a missing or broken model must not stop the worker: /health reports it
        worker.log.exception("model warm-up failed")


def child_exit(server, worker):
    """A dead worker's live gauges must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
