"""Python API for integrators who embed the engine (e.g. a voice assistant) instead of HTTP.

head = Wav2LipTalkingHead("avatar.jpg", quality_mode="standard")
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from lipsync import audio, generation
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.errors import InvalidFieldError
from lipsync.faces import PreparedFace
from lipsync.media.encode_options import ContainerName, EncodeOptions
from lipsync.media.images import decode_image
from lipsync.options import DEFAULT_PADS, RenderOptions, output_size
from lipsync.settings import Settings
from lipsync.util import write_atomically

# A quality mode is a generator and an output size (`lipsync.options.QUALITY_BOUNDS`):
# standard fits 1280x720 with the base model, high 1920x1080 with the GAN-trained one.
QUALITY_MODELS = {"standard": "wav2lip", "high": "wav2lip_gan"}
CONTAINERS: dict[str, ContainerName] = {".webm": "webm", ".mp4": "mp4"}
# Speech used to measure throughput when no generation has run yet.
CALIBRATION_SECONDS = 1.0


class Wav2LipTalkingHead:
    """A talking head for one avatar image.

    Raises FileNotFoundError when the image or the models directory does not exist (and
    for a missing model, `inference_engine.ModelNotFoundError`), and ValueError (a
    `lipsync.errors.InvalidInputError` with `.code` and `.field`, or a media error) for an
    unknown `quality_mode` ("standard" = wav2lip, output within 1280x720; "high" =
    wav2lip_gan, within 1920x1080), an image that cannot be decoded, unusable audio or
    options out of range. `model_path` is the directory of converted models (default: the
    service's `models/`). `blend` and `silence_gate` are those of `RenderOptions` ("none"
    pastes like the reference; the gate keeps the avatar's own frame in silence).
    """

    def __init__(
        self,
        avatar_image_path: str | os.PathLike,
        device: str = "CPU",
        quality_mode: str = "standard",
        model_path: str | os.PathLike | None = None,
        *,
        precision: str = "auto",
        pads: tuple[int, int, int, int] = DEFAULT_PADS,
        box: tuple[int, int, int, int] | None = None,
        blend: str = "soft",
        silence_gate: bool = False,
    ) -> None:
        if quality_mode not in QUALITY_MODELS:
            raise InvalidFieldError(
                "quality_mode", f"must be one of {list(QUALITY_MODELS)}, got {quality_mode!r}"
            )
        self.avatar_image_path = Path(avatar_image_path)
        if not self.avatar_image_path.is_file():
            raise FileNotFoundError(f"avatar image not found: {self.avatar_image_path}")
        self.settings = Settings.load({"models_dir": model_path} if model_path else None)
        if not self.settings.models_dir.is_dir():
            raise FileNotFoundError(f"models directory not found: {self.settings.models_dir}")
        self.quality_mode = quality_mode
        self.options = RenderOptions(
            pads=pads,
            box=box,
            model=QUALITY_MODELS[quality_mode],
            quality=quality_mode,
            blend=blend,
            silence_gate=silence_gate,
        )
        self._image = decode_image(
            self.avatar_image_path.read_bytes(), max_pixels=self.settings.max_image_pixels
        )
        self._engine: Wav2LipInferenceEngine | None = Wav2LipInferenceEngine(
            self.settings.models_dir, device, precision, cache_dir=self.settings.cache_dir
        )
        self._prepared: PreparedFace | None = None
        self._seconds_per_frame: float | None = None

    @property
    def engine(self) -> Wav2LipInferenceEngine:
        if self._engine is None:
            raise RuntimeError("this talking head was cleaned up; create a new one")
        return self._engine

    def preprocess_avatar(self) -> dict[str, Any]:
        """Fit the image to the quality's size and detect the face, once (later calls are
        free). -> the face box on the output frame and the output size."""
        top, bottom, left, right = (int(v) for v in self._prepared_face().boxes[0])
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
        options = dataclasses.replace(self.options, fps=fps)
        return generation.generate_stream(
            self.engine,
            self._prepared_face(),
            speech,
            options,
            EncodeOptions(container=fmt),
            include_audio=include_audio,
        )

    def iter_frames(self, audio_path: str | os.PathLike, fps: float = 25) -> Iterator[np.ndarray]:
        """Lip-synced frames for speech from `audio_path`, each (H, W, 3) uint8 BGR, as
        soon as they are generated (the first few after one small batch). Errors as
        `generate`, raised here, before any frame."""
        speech = self._read_speech(audio_path)
        options = dataclasses.replace(self.options, fps=fps)
        windows = generation.speech_mel_windows(speech, options.fps)
        batches = self.engine.iter_frames(
            self._prepared_face(),
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
            "quality_mode": self.quality_mode,
            "model": self.options.model,
            "output_width": width,
            "output_height": height,
            "models_dir": str(self.settings.models_dir),
            "openvino_version": ov.get_version(),
            "models": engine.model_status(),
            "avatar": str(self.avatar_image_path),
            "avatar_preprocessed": self._prepared is not None,
            "seconds_per_frame": self._seconds_per_frame,
        }

    def cleanup(self) -> None:
        """Release the compiled models and the prepared avatar. The object is unusable after."""
        self._engine = None
        self._prepared = None

    def __enter__(self) -> Wav2LipTalkingHead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- internals -------------------------------------------------------------------------

    def _prepared_face(self) -> PreparedFace:
        """The avatar with its face detected (once)."""
        if self._prepared is None:
            self._prepared = self.engine.prepare_face(self._image, self.options)
        return self._prepared

    def _render(
        self,
        speech: generation.Speech,
        fps: float,
        container: ContainerName,
        include_audio: bool,
    ) -> generation.GenerationResult:
        options = dataclasses.replace(self.options, fps=fps)
        prepared = self._prepared_face()
        start = time.perf_counter()
        result = generation.generate(
            self.engine,
            prepared,
            speech,
            options,
            EncodeOptions(container=container),
            include_audio=include_audio,
        )
        self._seconds_per_frame = (time.perf_counter() - start) / max(1, result.video.num_frames)
        return result

    def _read_speech(self, audio_path: str | os.PathLike) -> generation.Speech:
        path = Path(audio_path)
        if not path.is_file():
            raise FileNotFoundError(f"audio file not found: {path}")
        return generation.decode_speech(path.read_bytes(), self.settings)
