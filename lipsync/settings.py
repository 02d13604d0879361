"""Service settings: defaults, overridden by LIPSYNC_* environment variables, then by code.

Every setting is a field of the frozen `Settings` dataclass, validated once in
`__post_init__`. The README's configuration table lists the same names.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lipsync.options import BLEND_MODES, QUALITY_MODES

ENV_PREFIX = "LIPSYNC_"
PROJECT_DIR = Path(__file__).resolve().parents[1]
FORMATS = ("webm", "mp4")


@dataclass(frozen=True)
class Settings:
    """Configuration of one service process (see README, "Configuration")."""

    models_dir: Path = PROJECT_DIR / "models"
    device: str = "CPU"
    precision: str = "auto"
    # OpenVINO compiled-model cache: a restarted worker loads blobs instead of recompiling.
    cache_dir: Path | None = PROJECT_DIR / ".cache" / "openvino"
    batch_size: int = 16
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
    # A video frame without a face: 422 naming it (false) or use the nearest frame's box.
    fill_missing_faces: bool = False
    min_audio_sample_rate: int = 8000
    max_audio_sample_rate: int = 192000
    # Admission control per worker: running generations, queued ones, longest queue wait.
    max_concurrent: int = 1
    max_queue: int = 2
    max_queue_wait_s: float = 30.0
    retry_after_s: int = 5
    # Longest a generation may run (the client gets 504 after it).
    request_timeout_s: float = 120.0
    # Optional API key (Authorization: Bearer <key> or X-API-Key) for all but /health/live.
    api_key: str = field(default="", repr=False)  # never printed
    # Browser origins allowed by CORS, comma-separated ("*" for any; empty: no CORS).
    cors_origins: str = ""

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_image_pixels", "max_video_frames", "max_concurrent"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_body_mb",
            "max_audio_seconds",
            "max_video_seconds",
            "avatar_cache_mb",
            "request_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name, allowed in (("default_quality", QUALITY_MODES), ("default_blend", BLEND_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.default_format not in FORMATS:
            raise ValueError(
                f"default_format must be one of {FORMATS}, got {self.default_format!r}"
            )

        if self.max_queue < 0 or self.max_queue_wait_s < 0 or self.retry_after_s < 0:
            raise ValueError("max_queue, max_queue_wait_s and retry_after_s must be >= 0")
        if not 0 < self.min_audio_sample_rate <= self.max_audio_sample_rate:
            raise ValueError(
                "audio sample rate range is empty: "
                f"{self.min_audio_sample_rate}..{self.max_audio_sample_rate}"
            )

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(o.strip() for o in self.cors_origins.split(",") if o.strip())

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Defaults, then `LIPSYNC_<NAME>` variables of `environ`, then `overrides`."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.name, raw.strip(), f.default)
        values.update(overrides or {})
        return cls(**{k: _coerce(k, v) for k, v in values.items()})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, default: Any) -> Any:
    """Parse an environment string into the type of the field's default."""
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a boolean, got {raw!r}")
    if isinstance(default, int | float):
        try:
            return type(default)(raw)
        except ValueError:
            raise ValueError(
                f"{ENV_PREFIX}{name.upper()} must be a {type(default).__name__}, got {raw!r}"
            ) from None
    if name in ("cache_dir", "avatar_dir") and raw.lower() in ("none", "off"):
        return None
    return raw


def _coerce(name: str, value: Any) -> Any:
    """Path fields accept strings."""
    if name in ("models_dir", "cache_dir", "avatar_dir") and value is not None:
        return Path(value)
    return value
