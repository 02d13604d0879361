"""One generation request end to end: decode, detect, mel, lip-sync, encode — streaming.

Frames go from the engine to the encoder batch by batch, so memory does not grow with the
length of the speech beyond the encoded output itself; `generate_stream` also hands the
encoded bytes out batch by batch instead of as one file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, MutableMapping
from dataclasses import dataclass

import numpy as np

from lipsync import audio, compositing
from lipsync.engine import Wav2LipInferenceEngine
from lipsync.errors import AudioError, ErrorCode, InvalidInputError
from lipsync.faces import PreparedFace
from lipsync.limits import FPS
from lipsync.media.audio_probe import declared_audio
from lipsync.media.encode import EncodedVideo, VideoEncoder
from lipsync.media.encode_options import EncodeOptions
from lipsync.media.images import decode_image
from lipsync.media.sniff import sniff_media
from lipsync.media.video import decode_video
from lipsync.options import RenderOptions
from lipsync.settings import Settings
from lipsync.util import timed

logger = logging.getLogger(__name__)

# Frames in a stream's first batch (later ones: the engine's batch_size): small, so the
# first frames are generated, encoded and sent quickly.
STREAM_FIRST_BATCH = 4


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
    """Decode and check speech against the configured limits (AudioError otherwise). The
    duration a file declares (at an accepted sample rate: other rates get their own error
    from decoding) is checked before decoding it, the decoded one after."""
    declared = declared_audio(data)
    if declared is not None and accepted_sample_rate(declared[1], settings):
        _check_duration(declared[0], settings)
    try:
        track, rate = audio.read_audio(data)
    except ValueError as exc:
        raise AudioError(
            f"audio could not be decoded: {exc}", code=ErrorCode.UNSUPPORTED_AUDIO, field="audio"
        ) from exc
    check_sample_rate(rate, settings)
    _check_duration(len(track) / rate, settings)
    return Speech(track=track, track_rate=rate, model_input=audio.resample(track, rate))


def accepted_sample_rate(rate: int, settings: Settings) -> bool:
    return settings.min_audio_sample_rate <= rate <= settings.max_audio_sample_rate


def check_sample_rate(rate: int, settings: Settings, field: str = "audio") -> None:
    """AudioError (`unsupported_sample_rate`, naming `field`) for speech at `rate` Hz
    outside the settings' range."""
    if not accepted_sample_rate(rate, settings):
        raise AudioError(
            f"{field}: sample rate {rate} Hz is outside {settings.min_audio_sample_rate}.."
            f"{settings.max_audio_sample_rate} Hz",
            code=ErrorCode.UNSUPPORTED_SAMPLE_RATE,
            field=field,
        )


def _check_duration(seconds: float, settings: Settings) -> None:
    if seconds > settings.max_audio_seconds:
        raise AudioError(
            f"audio is {seconds:.1f} s long; the maximum is {settings.max_audio_seconds:g} s",
            code=ErrorCode.AUDIO_TOO_LONG,
            field="audio",
        )


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
    if video.fps not in FPS:
        raise InvalidInputError(
            f"video frame rate {video.fps:g} is outside {FPS.text} fps",
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


# Reports progress: (frames done, frames in all).
Progress = Callable[[int, int], None]


@dataclass
class _Pipeline:
    """One generation set up and checked, not started: what `generate` and
    `generate_stream` share."""

    encoder: VideoEncoder
    num_frames: int
    silent_frames: int
    chunks: Generator[bytes, None, EncodedVideo]


def _encoded_chunks(
    batches: Generator[np.ndarray, None, None],
    encoder: VideoEncoder,
    timings: MutableMapping[str, float],
    check: Callable[[], None] | None,
    progress: Callable[[int], None],
) -> Generator[bytes, None, EncodedVideo]:
    """The one pipeline behind `generate` and `generate_stream`: encode frame batches as
    the engine produces them, calling `check` before each; a live encoder's bytes are
    yielded after every batch, then its tail. Returns the finished video. Closing the
    generator (a consumer that stops) stops the engine and frees the encoder."""
    try:
        with encoder:
            while True:
                if check is not None:
                    check()
                batch = next(batches, None)
                if batch is None:
                    break
                with timed(timings, "encode"):
                    encoder.write_batch(batch)
                progress(len(batch))
                if encoder.live and (chunk := encoder.drain()):
                    yield chunk
            with timed(timings, "encode"):
                video = encoder.finish()
            if encoder.live and (tail := encoder.drain()):
                yield tail
    finally:
        batches.close()
    return video


def _start(
    engine: Wav2LipInferenceEngine,
    prepared: PreparedFace,
    speech: Speech,
    options: RenderOptions,
    encode_options: EncodeOptions,
    timings: dict[str, float],
    *,
    include_audio: bool,
    check: Callable[[], None] | None,
    live: bool,
    first_batch: int | None = None,
    on_frames: Progress | None = None,
) -> _Pipeline:
    """Checks and setup done before any frame: mel windows (AudioError), the silence gate,
    the encoder."""
    with timed(timings, "mel"):
        windows = speech_mel_windows(speech, options.fps)
    with timed(timings if options.silence_gate else None, "gate"):
        weights = gate_weights(windows, options)
    height, width = prepared.frames.shape[1:3]
    with timed(timings, "encode"):
        encoder = VideoEncoder(
            width=width,
            height=height,
            fps=options.fps,
            audio=speech.track if include_audio else None,
            sample_rate=speech.track_rate,
            options=encode_options,
            live=live,
        )
    if first_batch is not None:  # the frames the encoder holds come on top
        first_batch += encoder.held_frames
    batches = engine.iter_frames(
        prepared,
        windows,
        options.model,
        timings,
        blend=options.blend,
        weights=weights,
        first_batch=first_batch,
    )
    done = 0

    def progress(count: int) -> None:
        nonlocal done
        done += count
        if on_frames is not None:
            on_frames(done, len(windows))

    return _Pipeline(
        encoder=encoder,
        num_frames=len(windows),
        silent_frames=int(np.count_nonzero(weights == 0)),
        chunks=_encoded_chunks(batches, encoder, timings, check, progress),
    )


def _in_ms(timings: dict[str, float]) -> dict[str, float]:
    return {stage: round(seconds * 1000, 1) for stage, seconds in timings.items()}


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
    on_frames: Progress | None = None,
) -> GenerationResult:
    """Lip-sync a prepared face to `speech` at `options.fps`; encode with the speech track.

    `timings` may already hold earlier stages (seconds); the result reports all in ms.
    `check` runs between frame batches and may raise to abandon the generation (time
    limit, client gone); the partial video is dropped. `on_frames(done, total)` is called
    after each batch is encoded (progress reporting).
    """
    timings = {} if timings is None else timings
    pipeline = _start(
        engine,
        prepared,
        speech,
        options,
        encode_options,
        timings,
        include_audio=include_audio,
        check=check,
        live=False,
        on_frames=on_frames,
    )
    while True:  # a whole-file encoder yields no chunks: run the pipeline to its result
        try:
            next(pipeline.chunks)
        except StopIteration as done:
            video = done.value
            break
    return GenerationResult(
        video=video,
        fps=options.fps,
        timings_ms=_in_ms(timings),
        silent_frames=pipeline.silent_frames,
    )


class GenerationStream:
    """One generation encoded for playback while it downloads: an iterator of chunks.

    Known before the first byte: `mime_type`, `codecs` (for a MediaSource type),
    `num_frames`, `fps`, `duration`, `width`, `height`. Iterating runs the engine batch by
    batch and yields the bytes each batch produced (the first chunk holds the header and
    the first frames; concatenated, the chunks are the file); an error mid-way propagates
    from the iteration and the file is then incomplete. `result` (timings in ms, the
    video with empty `data`) is set once the iteration ends. Single use; `close()` (or
    leaving a `with` block, or dropping a partly consumed iterator) stops the engine and
    frees the encoder.
    """

    def __init__(self, pipeline: _Pipeline, timings: dict[str, float]) -> None:
        encoder, num_frames = pipeline.encoder, pipeline.num_frames
        self.mime_type = encoder.options.mime_type
        self.codecs = encoder.codecs
        self.num_frames = num_frames
        self.fps = float(encoder.rate)
        self.duration = num_frames / self.fps
        self.width, self.height = encoder.encoded_width, encoder.encoded_height
        self.result: GenerationResult | None = None
        self.silent_frames = pipeline.silent_frames
        self._encoder, self._timings = encoder, timings
        self._chunks = self._run(pipeline.chunks)

    def _run(self, chunks: Generator[bytes, None, EncodedVideo]) -> Generator[bytes, None, None]:
        video = yield from chunks  # closing this generator closes `chunks` mid-way
        self.result = GenerationResult(
            video=video,
            fps=self.fps,
            timings_ms=_in_ms(self._timings),
            silent_frames=self.silent_frames,
        )

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        """Stop the generation (if running) and free the encoder; idempotent."""
        self._chunks.close()
        self._encoder.close()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def generate_stream(
    engine: Wav2LipInferenceEngine,
    prepared: PreparedFace,
    speech: Speech,
    options: RenderOptions,
    encode_options: EncodeOptions,
    timings: dict[str, float] | None = None,
    *,
    include_audio: bool = True,
    check: Callable[[], None] | None = None,
    first_batch: int = STREAM_FIRST_BATCH,
) -> GenerationStream:
    """Like `generate`, but the video comes out in chunks as frames are produced: live WebM
    or fragmented MP4 (see `VideoEncoder`'s live mode). The first batch is `first_batch`
    frames plus those the encoder holds back (live H.264: 2), so that the first chunk
    already holds decodable frames. Speech and options are checked here, before
    any byte (AudioError, ValueError); `check` runs before each batch while iterating.
    """
    timings = {} if timings is None else timings
    pipeline = _start(
        engine,
        prepared,
        speech,
        options,
        encode_options,
        timings,
        include_audio=include_audio,
        check=check,
        live=True,
        first_batch=first_batch,
    )
    return GenerationStream(pipeline, timings)
