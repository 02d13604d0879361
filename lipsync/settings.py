"""Service settings: defaults, overridden by LIPSYNC_* environment variables, then by code.

Every setting is a field of the frozen `Settings` dataclass, validated once in
`__post_init__`; this module is the only reader of the service's environment variables
(gunicorn's settings included). A field's variable is `LIPSYNC_<NAME>` unless the field
names another in its metadata (`HOST`, `PORT`). The README's configuration table lists them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lipsync.limits import AUDIO_SAMPLE_RATE_HZ
from lipsync.options import BLEND_MODES, QUALITY_MODES

ENV_PREFIX = "LIPSYNC_"
PROJECT_DIR = Path(__file__).resolve().parents[1]
FORMATS = ("webm", "mp4")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Fields holding a directory that may be switched off ("none" or "off" in the environment).
OPTIONAL_DIRS = ("cache_dir", "avatar_dir")
PATH_FIELDS = ("models_dir", "metrics_dir", *OPTIONAL_DIRS)
POSITIVE_INTS = (
    "batch_size",
    "max_image_pixels",
    "max_video_frames",
    "max_concurrent",
    "workers",
    "threads",
    "worker_connections",
    "stream_buffer_chunks",
    "worker_timeout",
    "realtime_max_sessions",
    "realtime_max_message_bytes",
    "realtime_send_buffer_frames",
    "realtime_max_unstarted",
    "realtime_max_unstarted_per_client",
)
POSITIVE_NUMBERS = (
    "max_body_mb",
    "max_audio_seconds",
    "max_video_seconds",
    "avatar_cache_mb",
    "avatar_disk_budget_mb",
    "avatar_store_timeout_s",
    "request_timeout_s",
    "stream_reader_timeout_s",
    "realtime_max_session_s",
    "realtime_idle_timeout_s",
    "realtime_stall_timeout_s",
    "realtime_start_timeout_s",
)
NON_NEGATIVE = (
    "inference_threads",
    "max_queue",
    "max_queue_wait_s",
    "retry_after_s",
    "graceful_timeout",
    "keepalive_s",
)
# Fields whose value is one of a few names.
WORKER_CLASSES = ("gevent", "gthread")
CHOICES = {
    "default_format": FORMATS,
    "default_quality": QUALITY_MODES,
    "default_blend": BLEND_MODES,
    "log_level": LOG_LEVELS,
    "worker_class": WORKER_CLASSES,
}
# The avatar store (LIPSYNC_AVATAR_STORE): the local directory, or Redis at a URL of these
# schemes; unused avatars expire after LIPSYNC_AVATAR_TTL_S (0: never).
LOCAL_AVATAR_STORE = "local"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
STORE_NON_NEGATIVE = ("avatar_ttl_s",)


@dataclass(frozen=True)
class Settings:
    """Configuration of one service process (see README, "Configuration")."""

    models_dir: Path = PROJECT_DIR / "models"
    device: str = "CPU"
    precision: str = "auto"
    # OpenVINO compiled-model cache: a restarted worker loads blobs instead of recompiling.
    cache_dir: Path | None = PROJECT_DIR / ".cache" / "openvino"
    batch_size: int = 16
    # OpenVINO CPU threads per inference; 0: OpenVINO's default (every core). The Ray Serve
    # deployment sets it to the CPUs of its replica (lipsync/server/ray_serve.py).
    inference_threads: int = 0
    compile_on_start: bool = True
    default_format: str = "webm"
    # Output size (standard: within 1280x720) and paste-back of requests that do not say.
    default_quality: str = "standard"
    default_blend: str = "soft"
    max_body_mb: float = 50.0
    max_audio_seconds: float = 300.0
    max_image_pixels: int = 4096 * 4096
    max_video_frames: int = 750
    max_video_seconds: float = 30.0
    # Prepared avatars: on disk here (None: memory only), and at most this much in memory.
    avatar_dir: Path | None = PROJECT_DIR / ".cache" / "avatars"
    avatar_cache_mb: float = 1024.0
    # Where registered avatars live: "local" (avatar_dir, this machine) or a Redis URL
    # (redis://host:port/db, rediss://, unix://) shared by every worker and machine. A URL
    # may hold a password: never printed.
    avatar_store: str = field(default="local", repr=False)
    # avatar_dir's budget on disk: the least recently used avatars leave first.
    avatar_disk_budget_mb: float = 2048.0
    # Redis: an avatar unused this long expires (0: never; Redis's maxmemory-policy evicts),
    # every use restarts the clock; one Redis call's connect/read timeout (seconds).
    avatar_ttl_s: int = 0
    avatar_store_timeout_s: float = 1.0
    # A video frame without a face: 422 naming it (false) or use the nearest frame's box.
    fill_missing_faces: bool = False
    # Speech sample rates accepted: within limits.AUDIO_SAMPLE_RATE_HZ (narrowed, not widened).
    min_audio_sample_rate: int = int(AUDIO_SAMPLE_RATE_HZ.minimum)
    max_audio_sample_rate: int = int(AUDIO_SAMPLE_RATE_HZ.maximum)
    # Admission control per worker: running generations, queued ones, longest queue wait.
    max_concurrent: int = 1
    max_queue: int = 2
    max_queue_wait_s: float = 30.0
    retry_after_s: int = 5
    # Longest a generation may run (the client gets 504 after it).
    request_timeout_s: float = 120.0
    # A streamed reply whose client reads nothing for this long is stopped (its slot freed);
    # at most this many encoded chunks (one per frame batch) wait for a slow reader.
    stream_reader_timeout_s: float = 30.0
    stream_buffer_chunks: int = 8
    # WebSocket lip-sync sessions (/api/stream) per worker: open sessions, largest message,
    # longest session, longest silence from the client, frames waiting for a slow reader
    # (beyond: the oldest are dropped) and how long a reader may read nothing before the
    # session is closed (seconds).
    realtime_max_sessions: int = 4
    realtime_max_message_bytes: int = 1024 * 1024
    realtime_max_session_s: float = 3600.0
    realtime_idle_timeout_s: float = 60.0
    realtime_send_buffer_frames: int = 8
    realtime_stall_timeout_s: float = 10.0
    # A connection counts as a session once its `start` is valid; until then it has this
    # long to send it, and at most so many such connections are open (in all, and from one
    # client address) beside the sessions.
    realtime_start_timeout_s: float = 5.0
    realtime_max_unstarted: int = 16
    realtime_max_unstarted_per_client: int = 4
    # Optional API key (Authorization: Bearer <key> or X-API-Key) for all but /health/live.
    api_key: str = field(default="", repr=False)  # never printed
    # Browser origins allowed by CORS, comma-separated ("*" for any; empty: no CORS).
    cors_origins: str = ""
    # Logging of every logger (the app's, gunicorn's): one of LOG_LEVELS.
    log_level: str = "info"
    # gunicorn: listen address, worker processes (one engine each), threads per worker.
    host: str = field(default="0.0.0.0", metadata={"env": "HOST"})
    port: int = field(default=5001, metadata={"env": "PORT"})
    workers: int = 1
    # gevent (default): connections are greenlets, generation runs on native threads, so
    # slow or stalled clients cost nothing; gthread: a thread per connection.
    worker_class: str = "gevent"
    worker_connections: int = 1000
    threads: int = 4
    # gunicorn kills a worker silent this long; a stopping worker gets this long to finish;
    # idle keep-alive connections are kept this long (seconds).
    worker_timeout: int = 300
    graceful_timeout: int = 60
    keepalive_s: int = 30
    # Where gunicorn workers share Prometheus samples (a subdirectory per master).
    metrics_dir: Path = PROJECT_DIR / ".cache" / "metrics"

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _problem(f.name, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} {problem}")
        rates = AUDIO_SAMPLE_RATE_HZ
        low, high = self.min_audio_sample_rate, self.max_audio_sample_rate
        if not rates.minimum <= low <= high <= rates.maximum:
            raise ValueError(
                f"audio sample rate range is empty or not within {rates.text} Hz: {low}..{high}"
            )

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.cors_origins.split(",") if o.strip())

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def bind(self) -> str:
        """gunicorn's listen address, host:port."""
        return f"{self.host}:{self.port}"

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then the variables of `environ` (`os.environ`), then `overrides`.

        An empty variable counts as unset. ValueError names the variable or field at fault.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            variable = env_name(f)
            raw = environ.get(variable)
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(variable, f.name, raw.strip(), f.default)
                problem = _problem(f.name, values[f.name])
                if problem:
                    raise ValueError(f"{variable} {problem}")
        values.update(overrides or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(unknown)}")
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _problem(name: str, value: Any) -> str | None:
    """What is wrong with one field's value ("must be >= 1, got 0"), or None."""
    if name in POSITIVE_INTS and value < 1:
        return f"must be >= 1, got {value}"
    if name in POSITIVE_NUMBERS and not value > 0:
        return f"must be > 0, got {value}"
    if name in (*NON_NEGATIVE, *STORE_NON_NEGATIVE) and value < 0:
        return f"must be >= 0, got {value}"
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {CHOICES[name]}, got {value!r}"
    if name == "avatar_store" and not is_avatar_store(value):
        return f"must be {LOCAL_AVATAR_STORE!r} or a URL starting with {' or '.join(REDIS_SCHEMES)}"
    if name == "port" and not 1 <= value <= 65535:
        return f"must be between 1 and 65535, got {value}"
    return None


def is_avatar_store(value: str) -> bool:
    """'local' or a Redis URL (LIPSYNC_AVATAR_STORE)."""
    return value == LOCAL_AVATAR_STORE or value.startswith(REDIS_SCHEMES)


def env_name(f: dataclasses.Field) -> str:
    """The environment variable of a Settings field."""
    return f.metadata.get("env", ENV_PREFIX + f.name.upper())


def _parse(variable: str, name: str, raw: str, default: Any) -> Any:
    """Parse an environment string into the type of the field's default."""
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{variable} must be a boolean, got {raw!r}")
    if isinstance(default, int | float):
        try:
            return type(default)(raw)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"{variable} must be {kind}, got {raw!r}") from None
    if name in OPTIONAL_DIRS and raw.lower() in ("none", "off"):
        return None
    if name == "log_level":
        return raw.lower()
    return raw


def _coerce(name: str, value: Any) -> Any:
    """Path fields accept strings."""
    if name in PATH_FIELDS and value is not None:
        return Path(value)
    return value
