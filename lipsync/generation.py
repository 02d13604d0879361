"""One generation request end to end: decode, detect, mel, lip-sync, encode — streaming.

Frames go from the engine to the encoder batch by batch, so memory does not grow with the
length of the speech beyond the encoded output itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

import numpy as np

import audio
from inference_engine import PreparedFace, Wav2LipInferenceEngine
from lipsync import compositing
from lipsync.errors import AudioError, ErrorCode, InvalidInputError
from lipsync.media.encode import EncodedVideo, encode_video
from lipsync.media.encode_options import EncodeOptions
from lipsync.media.images import decode_image
from lipsync.media.sniff import sniff_media
from lipsync.media.video import decode_video
from lipsync.options import MAX_FPS, RenderOptions
from lipsync.settings import Settings
from lipsync.util import timed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Speech:
    """Decoded speech: the native-rate track for the video, the 16 kHz copy for the model."""

    track: np.ndarray
    track_rate: int
    model_input: np.ndarray

    @property
    def duration(self) -> float:
        return len(self.track) / self.track_rate


# Mel windows measured per step when deciding the silence gate (bounds memory).
GATE_CHUNK_WINDOWS = 512


@dataclass(frozen=True)
class GenerationResult:
    video: EncodedVideo
    fps: float
    timings_ms: dict[str, float]
    # Frames the silence gate showed as the avatar's own, without inference (0: gate off).
    silent_frames: int = 0


def decode_speech(data: bytes, settings: Settings) -> Speech:
    """Decode and check speech against the configured limits (AudioError otherwise)."""
    try:
        track, rate = audio.read_audio(data)
    except ValueError as exc:
        raise AudioError(
            f"audio could not be decoded: {exc}", code=ErrorCode.UNSUPPORTED_AUDIO, field="audio"
        ) from exc
    if not settings.min_audio_sample_rate <= rate <= settings.max_audio_sample_rate:
        raise AudioError(
            f"audio sample rate {rate} Hz is outside {settings.min_audio_sample_rate}.."
            f"{settings.max_audio_sample_rate} Hz",
            code=ErrorCode.UNSUPPORTED_SAMPLE_RATE,
            field="audio",
        )
    duration = len(track) / rate
    if duration > settings.max_audio_seconds:
        raise AudioError(
            f"audio is {duration:.1f} s long; the maximum is {settings.max_audio_seconds:g} s",
            code=ErrorCode.AUDIO_TOO_LONG,
            field="audio",
        )
    return Speech(track=track, track_rate=rate, model_input=audio.resample(track, rate))


def decode_face(data: bytes, settings: Settings) -> tuple[np.ndarray, float | None]:
    """Image or video bytes -> ((M, H, W, 3) uint8 BGR frames, the video's fps or None).

    MediaError when the data is not usable; InvalidInputError for a frame rate out of range.
    """
    if sniff_media(data) != "video":
        return decode_image(data, max_pixels=settings.max_image_pixels)[None], None
    video = decode_video(
        data,
        max_frames=settings.max_video_frames,
        max_pixels=settings.max_image_pixels,
        max_duration_s=settings.max_video_seconds,
    )
    if not 1 <= video.fps <= MAX_FPS:
        raise InvalidInputError(
            f"video frame rate {video.fps:g} is outside 1..{MAX_FPS:g} fps",
            code=ErrorCode.INVALID_VIDEO,
        )
    return np.stack(video.frames), video.fps


def speech_mel_windows(speech: Speech, fps: float) -> audio.MelWindows:
    """Mel windows covering the whole speech at `fps`, cut batch by batch as they are used:
    N = ceil(duration * fps) windows of (80, 16)."""
    num_frames = audio.num_video_frames(len(speech.model_input), fps)
    if num_frames < 1 or len(speech.model_input) < audio.MIN_MEL_SAMPLES:
        raise AudioError(
            f"audio is {speech.duration * 1000:.0f} ms long; at least one video frame "
            f"({1000 / fps:.0f} ms) is needed",
            code=ErrorCode.AUDIO_TOO_SHORT,
            field="audio",
        )
    return audio.MelWindows(audio.melspectrogram(speech.model_input), fps, num_frames)


def gate_weights(windows: audio.MelWindows | np.ndarray, options: RenderOptions) -> np.ndarray:
    """Generated share per frame under the options' silence gate: (N,) float32 in [0, 1]
    (all 1 with the gate off). See `audio.silent_windows`, `compositing.gate_weights`."""
    if not options.silence_gate:
        return np.ones(len(windows), np.float32)
    silent = np.concatenate(
        [
            audio.silent_windows(
                windows[start : start + GATE_CHUNK_WINDOWS], options.silence_threshold_db
            )
            for start in range(0, len(windows), GATE_CHUNK_WINDOWS)
        ]
        or [np.zeros(0, bool)]
    )
    return compositing.gate_weights(silent, options.silence_fade_frames)


def _single_frames(
    batches: Iterator[np.ndarray],
    timings: MutableMapping[str, float],
    check: Callable[[], None] | None,
) -> Iterator[np.ndarray]:
    """Flatten frame batches, calling `check` before each; time producing them is `produce`."""
    while True:
        if check is not None:
            check()
        start = time.perf_counter()
        batch = next(batches, None)
        timings["produce"] = timings.get("produce", 0.0) + time.perf_counter() - start
        if batch is None:
            return
        yield from batch


def _counted(
    frames: Iterator[np.ndarray], total: int, on_frames: Callable[[int, int], None]
) -> Iterator[np.ndarray]:
    """The same frames, reporting `on_frames(done, total)` after each."""
    for done, frame in enumerate(frames, 1):
        yield frame
        on_frames(done, total)


def generate(
    engine: Wav2LipInferenceEngine,
    prepared: PreparedFace,
    speech: Speech,
    options: RenderOptions,
    encode_options: EncodeOptions,
    timings: dict[str, float] | None = None,
    *,
    include_audio: bool = True,
    check: Callable[[], None] | None = None,
    on_frames: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Lip-sync a prepared face to `speech` at `options.fps`; encode with the speech track.

    `timings` may already hold earlier stages (seconds); the result reports all in ms.
    `check` runs between frame batches and may raise to abandon the generation (time
    limit, client gone); the partial video is dropped. `on_frames(done, total)` is called
    as each frame is handed to the encoder (progress reporting).
    """
    timings = {} if timings is None else timings
    with timed(timings, "mel"):
        windows = speech_mel_windows(speech, options.fps)
    with timed(timings if options.silence_gate else None, "gate"):
        weights = gate_weights(windows, options)
    height, width = prepared.frames.shape[1:3]
    batches = engine.iter_frames(
        prepared, windows, options.model, timings, blend=options.blend, weights=weights
    )
    frames = _single_frames(batches, timings, check)
    if on_frames is not None:
        frames = _counted(frames, len(windows), on_frames)
    with timed(timings, "encode"):
        video = encode_video(
            frames,
            width=width,
            height=height,
            fps=options.fps,
            audio=speech.track if include_audio else None,
            sample_rate=speech.track_rate,
            options=encode_options,
        )
    timings["encode"] -= timings.pop("produce", 0.0)
    return GenerationResult(
        video=video,
        fps=options.fps,
        timings_ms={stage: round(seconds * 1000, 1) for stage, seconds in timings.items()},
        silent_frames=int(np.count_nonzero(weights == 0)),
    )
