"""Python API for integrators who embed the engine (e.g. a voice assistant) instead of HTTP.

head = Wav2LipTalkingHead("avatar.jpg", preset="standard")
head.preprocess_avatar()                      # face detection, once
head.generate("reply.wav", "reply.webm")      # -> "reply.webm" (VP9 + Opus)
for chunk in head.stream("reply.wav"):        # live WebM chunks while frames are made
    send(chunk)
head.estimate_generation_time(4.2)            # seconds, from measured throughput
head.cleanup()
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from lipsync import audio, generation
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.errors import InvalidFieldError
from lipsync.media.encode_options import ContainerName
from lipsync.media.images import decode_image
from lipsync.options import output_size
from lipsync.serving.engine import build_engine, build_store
from lipsync.serving.faces import Face, resolve_face
from lipsync.serving.options import LIBRARY_DEFAULTS, render_options
from lipsync.serving.producing import produce
from lipsync.settings import Settings
from lipsync.util import write_atomically

# A preset is a generator and an output size mode (`quality`, `lipsync.options.QUALITY_BOUNDS`):
# standard fits 1280x720 with the base model, high 1920x1080 with the GAN-trained one.
PRESET_MODELS = {"standard": "wav2lip", "high": "wav2lip_gan"}
CONTAINERS: dict[str, ContainerName] = {".webm": "webm", ".mp4": "mp4"}
# Speech used to measure throughput when no generation has run yet.
CALIBRATION_SECONDS = 1.0


class Wav2LipTalkingHead:
    """A talking head for one avatar image.

    Raises FileNotFoundError when the image or the models directory does not exist (and
    for a missing model, `lipsync.engine.ModelNotFoundError`), and ValueError (a
    `lipsync.errors.InvalidInputError` with `.code` and `.field`, or a media error) for an
    unknown `preset` (generator and output size: "standard" = wav2lip, output within
    1280x720; "high" = wav2lip_gan, within 1920x1080), an image that cannot be decoded,
    unusable audio or options out of range. `quality_mode` is the preset's former name
    (DeprecationWarning). `model_path` is the directory of converted models (default: the
    service's `models/`); the other settings (batch size, OpenVINO threads, ...) come from
    the LIPSYNC_* environment as for the service. `blend` and `silence_gate` are those of
    `RenderOptions` ("none" pastes like the reference; the gate keeps the avatar's own
    frame in silence; `blend` defaults to LIPSYNC_DEFAULT_BLEND).
    """

    def __init__(
        self,
        avatar_image_path: str | os.PathLike,
        device: str = "CPU",
        preset: str = "standard",
        model_path: str | os.PathLike | None = None,
        *,
        precision: str = "auto",
        pads: tuple[int, int, int, int] = LIBRARY_DEFAULTS.pads,
        box: tuple[int, int, int, int] | None = None,
        blend: str | None = None,
        silence_gate: bool = False,
        quality_mode: str | None = None,
    ) -> None:
        preset = _preset(preset, quality_mode)
        self.avatar_image_path = Path(avatar_image_path)
        if not self.avatar_image_path.is_file():
            raise FileNotFoundError(f"avatar image not found: {self.avatar_image_path}")
        overrides = {"device": device, "precision": precision, "models_dir": model_path}
        self.settings = Settings.load({k: v for k, v in overrides.items() if v is not None})
        if not self.settings.models_dir.is_dir():
            raise FileNotFoundError(f"models directory not found: {self.settings.models_dir}")
        self.preset = preset
        self.options = render_options(
            self.settings,
            pads=pads,
            box=box,
            model=PRESET_MODELS[preset],
            quality=preset,
            blend=blend,
            silence_gate=silence_gate,
        )
        self._image_bytes = self.avatar_image_path.read_bytes()
        self._image = decode_image(self._image_bytes, max_pixels=self.settings.max_image_pixels)
        self._engine: Wav2LipInferenceEngine | None = build_engine(self.settings)
        self._store = build_store(self.settings, lambda: self.engine, registered=False)
        self._face: Face | None = None
        self._seconds_per_frame: float | None = None

    @property
    def engine(self) -> Wav2LipInferenceEngine:
        if self._engine is None:
            raise RuntimeError("this talking head was cleaned up; create a new one")
        return self._engine

    def preprocess_avatar(self) -> dict[str, Any]:
        """Fit the image to the quality's size and detect the face, once (later calls are
        free). -> the face box on the output frame and the output size."""
        top, bottom, left, right = (int(v) for v in self._prepared_face().avatar.prepared.boxes[0])
        width, height = self.output_size
        return {"box": [top, bottom, left, right], "width": width, "height": height}

    @property
    def output_size(self) -> tuple[int, int]:
        """(width, height) of the generated video."""
        height, width = self._image.shape[:2]
        return output_size(width, height, self.options.quality)

    def generate(
        self,
        audio_path: str | os.PathLike,
        output_path: str | os.PathLike,
        fps: float = 25,
        include_audio: bool = True,
    ) -> str:
        """Render speech from `audio_path` to `output_path` (.webm or .mp4). -> output path.

        FileNotFoundError: no such audio file. ValueError: unsupported output extension,
        undecodable or unusable audio, bad fps, or no face in the avatar image.
        """
        audio_path, output_path = Path(audio_path), Path(output_path)
        container = CONTAINERS.get(output_path.suffix.lower())
        if container is None:
            raise InvalidFieldError(
                "output_path", f"must end in {list(CONTAINERS)}, got {output_path.name!r}"
            )
        speech = self._read_speech(audio_path)
        result = self._render(speech, fps, container, include_audio)
        write_atomically(output_path, result.video.data)
        return str(output_path)

    def stream(
        self,
        audio_path: str | os.PathLike,
        fmt: ContainerName = "webm",
        fps: float = 25,
        include_audio: bool = True,
    ) -> generation.GenerationStream:
        """Render speech from `audio_path` as encoded chunks (bytes) produced while the
        frames are generated: live WebM (fmt "webm") or fragmented MP4 ("mp4").

        The result is an iterator of chunks which, concatenated, are the file; it also
        tells `mime_type`, `codecs` (for a browser MediaSource), `num_frames`, `fps` and
        `duration` before the first chunk. Stop early with `close()` (or a `with` block).
        Errors as `generate`, raised here, before any chunk.
        """
        if fmt not in CONTAINERS.values():
            raise InvalidFieldError(
                "fmt", f"must be one of {list(CONTAINERS.values())}, got {fmt!r}"
            )
        speech = self._read_speech(audio_path)
        face = self._at(fps)
        return produce(
            generation.generate_stream,
            self.engine,
            face,
            speech,
            fmt,
            include_audio=include_audio,
        )

    def iter_frames(self, audio_path: str | os.PathLike, fps: float = 25) -> Iterator[np.ndarray]:
        """Lip-synced frames for speech from `audio_path`, each (H, W, 3) uint8 BGR, as
        soon as they are generated (the first few after one small batch). Errors as
        `generate`, raised here, before any frame."""
        speech = self._read_speech(audio_path)
        face = self._at(fps)
        options = face.options
        windows = generation.speech_mel_windows(speech, options.fps)
        batches = self.engine.iter_frames(
            face.avatar.prepared,
            windows,
            options.model,
            blend=options.blend,
            weights=generation.gate_weights(windows, options),
            first_batch=generation.STREAM_FIRST_BATCH,
        )
        return (frame for batch in batches for frame in batch)

    def estimate_generation_time(self, audio_duration: float, fps: float = 25) -> float:
        """Seconds to generate `audio_duration` seconds of speech, from measured throughput.

        Uses the per-frame cost of the last generation; before any, it measures one by
        rendering a short silent clip in memory (and detects the face if not done yet).
        """
        if not audio_duration > 0:
            raise InvalidFieldError(
                "audio_duration", f"must be > 0 seconds, got {audio_duration!r}"
            )
        if self._seconds_per_frame is None:
            silence = np.zeros(int(CALIBRATION_SECONDS * audio.SAMPLE_RATE), np.float32)
            self._render(generation.Speech(silence, audio.SAMPLE_RATE, silence), fps, "webm", True)
        assert self._seconds_per_frame is not None  # set by every _render
        return (
            audio.num_video_frames(int(audio_duration * audio.SAMPLE_RATE), fps)
            * self._seconds_per_frame
        )

    def get_model_info(self) -> dict[str, Any]:
        """Device, precision, model, output resolution, OpenVINO version, per-model status and
        measured speed."""
        engine = self.engine
        width, height = self.output_size
        return {
            "device": engine.device,
            "precision": engine.precision,
            "preset": self.preset,
            "quality_mode": self.preset,  # the preset's former name
            "model": self.options.model,
            "output_width": width,
            "output_height": height,
            "models_dir": str(self.settings.models_dir),
            "openvino_version": ov.get_version(),
            "models": engine.model_status(),
            "avatar": str(self.avatar_image_path),
            "avatar_preprocessed": self._face is not None,
            "seconds_per_frame": self._seconds_per_frame,
        }

    def cleanup(self) -> None:
        """Release the compiled models and the prepared avatar. The object is unusable after."""
        self._engine = None
        self._face = None

    def __enter__(self) -> Wav2LipTalkingHead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals -------------------------------------------------------------------------

    def _prepared_face(self) -> Face:
        """The avatar with its face detected (once)."""
        if self._face is None:
            self._face = resolve_face(self._store, self.options, face=self._image_bytes)
        return self._face

    def _at(self, fps: float) -> Face:
        """The face rendered at `fps` (InvalidFieldError when out of range)."""
        face = self._prepared_face()
        return Face(face.avatar, dataclasses.replace(face.options, fps=fps))

    def _render(
        self,
        speech: generation.Speech,
        fps: float,
        container: ContainerName,
        include_audio: bool,
    ) -> generation.GenerationResult:
        face = self._at(fps)
        start = time.perf_counter()
        result = produce(
            generation.generate,
            self.engine,
            face,
            speech,
            container,
            include_audio=include_audio,
        )
        self._seconds_per_frame = (time.perf_counter() - start) / max(1, result.video.num_frames)
        return result

    def _read_speech(self, audio_path: str | os.PathLike) -> generation.Speech:
        path = Path(audio_path)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        return generation.decode_speech(path.read_bytes(), self.settings)


def _preset(preset: str, quality_mode: str | None) -> str:
    """The preset, checked; `quality_mode` is its deprecated name (it wins when given)."""
    field = "preset"
    if quality_mode is not None:
        warnings.warn(
            "Wav2LipTalkingHead(quality_mode=...) is deprecated: use preset=...",
            DeprecationWarning,
            stacklevel=3,
        )
        preset, field = quality_mode, "quality_mode"
    if preset not in PRESET_MODELS:
        raise InvalidFieldError(field, f"must be one of {list(PRESET_MODELS)}, got {preset!r}")
    return preset
