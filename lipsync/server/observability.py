"""Prometheus metrics (correct across gunicorn workers) and one JSON log line per request.

Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` is set by gunicorn.conf.py before any worker
imports prometheus_client, so every worker writes its samples there and `/metrics`
aggregates them. Without it (tests, the Python API) metrics live in this process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from datetime import UTC, datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

access_log = logging.getLogger("lipsync.access")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)

REQUESTS = Counter(
    "lipsync_requests_total",
    "HTTP requests by route, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "lipsync_request_duration_seconds",
    "HTTP request latency by route",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
STAGE_SECONDS = Histogram(
    "lipsync_stage_duration_seconds",
    "Generation stage latency (decode_face, detect, mel, infer, paste, encode)",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
FRAMES = Counter("lipsync_frames_generated_total", "Video frames generated")
QUEUE_DEPTH = Gauge(
    "lipsync_queue_depth", "Requests waiting for a generation slot", multiprocess_mode="livesum"
)
ACTIVE = Gauge("lipsync_active_generations", "Generations running", multiprocess_mode="livesum")
REALTIME_SESSIONS = Gauge(
    "lipsync_realtime_sessions", "Open /api/stream sessions", multiprocess_mode="livesum"
)
REALTIME_FRAMES_SENT = Counter("lipsync_realtime_frames_sent_total", "Frames sent on /api/stream")
REALTIME_FRAMES_DROPPED = Counter(
    "lipsync_realtime_frames_dropped_total",
    "Frames of /api/stream dropped (slow reader, or interrupted before sending)",
)
REALTIME_FRAME_SECONDS = Histogram(
    "lipsync_realtime_frame_seconds",
    "From the audio completing a frame's window to the frame's send, less any wait for its "
    "paced send time",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2),
)
REALTIME_BATCH_FRAMES = Histogram(
    "lipsync_realtime_batch_frames",
    "Frames per inference batch of /api/stream (all sessions together)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
REALTIME_BATCH_SESSIONS = Histogram(
    "lipsync_realtime_batch_sessions",
    "Sessions whose frames ran in one inference batch of /api/stream",
    buckets=(1, 2, 3, 4, 6, 8),
)
REALTIME_FACE_ENCODES = Counter(
    "lipsync_realtime_face_encodes_total", "Image faces encoded for /api/stream sessions"
)
REJECTED = Counter(
    "lipsync_rejected_requests_total", "Requests refused before or during generation", ["reason"]
)
STREAMS = Counter(
    "lipsync_streams_total",
    "Streamed replies by how they ended (completed, client_gone, failed)",
    ["outcome"],
)
AVATAR_TEMPORARIES = Gauge(
    "lipsync_avatar_temporaries",
    "Temporary entries in the avatar directory at its last scan (registrations and deletes "
    "under way; stale ones are removed by the scan)",
    multiprocess_mode="livemostrecent",
)
AVATAR_TEMPORARY_BYTES = Gauge(
    "lipsync_avatar_temporary_bytes",
    "Bytes of the temporary entries in the avatar directory at its last scan",
    multiprocess_mode="livemostrecent",
)
STALE_TEMPORARIES_REMOVED = Counter(
    "lipsync_avatar_stale_temporaries_removed_total",
    "Temporaries a killed worker left in the avatar directory, removed",
)
COMPILE_SECONDS = Gauge(
    "lipsync_model_compile_seconds",
    "Time to compile each model in a worker",
    ["model"],
    multiprocess_mode="max",
)


def request_id(header_value: str | None) -> str:
    """The client's X-Request-ID when it is a sane token, else a fresh one."""
    if header_value and REQUEST_ID_PATTERN.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def observe_generation(timings_ms: dict[str, float], num_frames: int) -> None:
    for stage, ms in timings_ms.items():
        STAGE_SECONDS.labels(stage).observe(ms / 1000)
    FRAMES.inc(num_frames)


def observe_admission(active: int, waiting: int) -> None:
    ACTIVE.set(active)
    QUEUE_DEPTH.set(waiting)


def observe_avatar_temporaries(present: int, nbytes: int, removed: int) -> None:
    """What a scan of the avatar directory found (lipsync.avatar_store.disk)."""
    AVATAR_TEMPORARIES.set(present)
    AVATAR_TEMPORARY_BYTES.set(nbytes)
    STALE_TEMPORARIES_REMOVED.inc(removed)


def observe_compile(status: dict[str, dict]) -> None:
    for name, model in status.items():
        if model.get("compile_s") is not None:
            COMPILE_SECONDS.labels(name).set(model["compile_s"])


def metrics_payload() -> tuple[bytes, str]:
    """Exposition text for all workers (multiprocess mode) or this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def log_request(record: dict) -> None:
    """One JSON line per request: time (UTC, ISO 8601), ids, route, status, sizes, timings;
    never media content. configure_logging writes it bare, so every line parses as JSON."""
    line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **record}
    access_log.info(json.dumps(line, separators=(",", ":"), default=str))
