"""Streaming in-memory encoder of the output video: WebM (VP9 + Opus) or MP4 (H.264 + AAC,
faststart; fragmented when live), one (H, W, 3) uint8 BGR frame at a time, never holding
the clip; in live mode the bytes are handed out as they are produced."""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from lipsync.media.checks import check_int_range
from lipsync.media.colour import AVCOL_RANGE_MPEG, AVCOL_SPC_SMPTE170M, bgr_to_i420
from lipsync.media.encode_audio import AUDIO_RATE, AudioFeed, prepare_audio
from lipsync.media.encode_options import EncodeOptions
from lipsync.media.outputs import ChunkSink, SharedReader, avc_codec_string, container_options

logger = logging.getLogger(__name__)

# x264 lookahead (frames) in live mode: 1 keeps macroblock-tree rate control on, 0 would
# turn it off; and the frames a whole-file x264 (veryfast: 10 lookahead, B-frames) holds.
_LIVE_X264_LOOKAHEAD = 1
_X264_HELD_FRAMES = 11
# libopus's lookahead at 48 kHz (312 samples), signalled as the pre-skip and WebM's
# CodecDelay; the WebM muxer writes each Opus block this much after its packet's time.
_OPUS_DELAY = Fraction(312, AUDIO_RATE)
_MILLISECOND = Fraction(1, 1000)


@dataclass(frozen=True)
class EncodedVideo:
    """An encoded file in memory. width/height are the encoded (even) size; duration is
    num_frames / fps of the video track; audio_duration is None without audio."""

    data: bytes
    mime_type: str
    num_frames: int
    duration: float
    width: int
    height: int
    fps: float
    audio_duration: float | None


def frame_rate(fps: float) -> Fraction:
    """Exact rational frame rate for `fps`: 25 -> 25/1, 29.97 -> 2997/100,
    30000/1001 (29.97002997...) -> 30000/1001."""
    if isinstance(fps, bool) or not isinstance(fps, int | float | Fraction):
        raise ValueError(f"fps must be a number, got {fps!r}")
    if not (math.isfinite(fps) and 0 < fps <= 1000):
        raise ValueError(f"fps must be in (0, 1000], got {fps!r}")
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps too small: {fps!r}")
    return rate


class VideoEncoder:
    """Streaming encoder into an in-memory WebM or MP4.

    Push frames one at a time with `write` (or several with `write_batch`) as they are
    produced, then call `finish`; only the encoder's own lookahead is buffered, never the
    clip. Use as a context manager (or call `close`) so an aborted encode frees FFmpeg.

    Frames are (height, width, 3) uint8 BGR exactly as given to the constructor. yuv420p
    needs even sizes, so an odd width/height is encoded with the last column/row cropped;
    the encoded size is `encoded_width` x `encoded_height`. Frames are converted with
    `bgr_to_i420` (BT.601 limited range, ~0.5 ms per 720x576 frame; swscale's bgr24 path
    via `VideoFrame.from_ndarray(..., "bgr24")` took 2.5-5 ms here) and the streams are
    tagged BT.601 / limited range so players use the same matrix.

    Audio, if given, is mono (N,) float in [-1, 1] (or int16) at `sample_rate`; it is
    resampled to 48 kHz and written whole, independently of the number of video frames,
    interleaved with the video by timestamp. Opus in WebM decodes to exactly the input
    length (pre-skip and end trimming are signalled); AAC in MP4 may decode up to one
    1024-sample frame (21 ms) longer. Frame k has pts k in time base 1/fps, fps a Fraction
    (29.97 -> 2997/100), so the video lasts exactly num_frames / fps (WebM rounds
    timestamps to the millisecond).

    Encoder choices (speed first: this runs per request on 2 CPU cores):
    - VP9: `deadline=realtime`, `cpu-used=8` (the fastest speed libvpx-vp9 accepts),
      `lag-in-frames=0` (no lookahead buffering), one thread by default: Wav2Lip keeps
      both cores busy while frames are encoded, and a second encoder thread (`row-mt=1`
      lets it split rows) made 5 s requests 5-7 % slower here; constant quality `crf=30`
      with `b:v 0`. On a 720x576 talking head this gives ~34 dB PSNR on the mouth region
      at ~0.5 Mbit/s; CRF 26 adds ~1 dB for +20 % size, and the speed setting, not CRF,
      dominates encode time (~0.3 s for 125 frames).
    - H.264: libx264 `preset=veryfast`, `crf=23` (x264's default quality point), no tune
      (film/animation tunes only shift grain/deblocking), profile high, yuv420p,
      `movflags=+faststart` so browsers can start playback before the whole file loads.
      FFmpeg re-reads the file to move the moov atom; `SharedReader` serves that from
      the same BytesIO.
    - Audio: Opus 64 kbit/s (WebM) or AAC-LC 64 kbit/s (MP4), both mono 48 kHz.
    - A keyframe at least every `keyframe_interval_s` seconds for seeking.

    Live mode (`live=True`): the output is laid out for playback while it downloads and
    never sought back (see `outputs.container_options`: WebM live clusters, fragmented MP4
    with an empty moov). `drain()` hands out the bytes produced since its last call: the
    header right after construction, then the frames (and the speech up to them) after
    each `write`, less the ~LIVE_FRAGMENT_S of media the muxer still holds, and the tail
    after `finish`, whose `EncodedVideo.data` is then empty. The VP9 bitstream is the
    same as in a whole-file encode. x264 would hold back ~13 frames (B-frames and a
    10-frame lookahead), so live H.264 runs without B-frames and with a 1-frame lookahead
    (`held_frames` = 2): the same size for ~1 dB less PSNR here. Its `tune=zerolatency`
    (no lookahead at all) switches off macroblock-tree rate control, which made a talking
    head's file 2.5x larger.

    `audio_follows=True` (with `sample_rate`): the speech is not known in advance; each
    `write(frame, audio)` brings the samples that go with the frame (real-time sessions).
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        fps: float,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        options: EncodeOptions | None = None,
        live: bool = False,
        audio_follows: bool = False,
    ) -> None:
        check_int_range("width", width, 2, 16384)
        check_int_range("height", height, 2, 16384)
        self.options = options if options is not None else EncodeOptions()
        if not isinstance(self.options, EncodeOptions):
            raise ValueError(f"options must be EncodeOptions, got {type(self.options).__name__}")
        self.width, self.height = width, height
        self.encoded_width, self.encoded_height = width - width % 2, height - height % 2
        self.rate = frame_rate(fps)
        if audio_follows:  # the speech comes with `write(frame, audio)`
            check_int_range("sample_rate", sample_rate, 1_000, 384_000)
            samples: np.ndarray | None = np.zeros(0, np.float32)
        else:
            samples = prepare_audio(audio, sample_rate)
        if samples is not None and sample_rate is None:  # prepare_audio refuses this too
            raise ValueError("sample_rate is required with audio")
        self._audio_duration = (
            None if samples is None or sample_rate is None else samples.size / sample_rate
        )
        self.num_frames = 0
        self._closed = False
        self._started = time.perf_counter()
        self.live = live
        self._buffer = io.BytesIO()
        self._sink = ChunkSink() if live else None
        self._container: av.container.OutputContainer | None = av.open(
            self._sink if live else self._buffer,
            mode="w",
            format=self.options.container,
            container_options=container_options(self.options.container, live=live),
            io_open=self._io_open,
        )
        try:
            self._video: av.video.stream.VideoStream | None = self._add_video_stream()
            self._audio: av.audio.stream.AudioStream | None = (
                None if samples is None else self._add_audio_stream()
            )
            self._output.start_encoding()  # opens the codecs: audio frame_size is known
            self._audio_feed: AudioFeed | None = (
                None
                if self._audio is None or samples is None or sample_rate is None
                else AudioFeed(samples, sample_rate, self._audio.codec_context, audio_follows)
            )
        except BaseException:
            self.close()
            raise

    # -- setup

    @property
    def _output(self) -> av.container.OutputContainer:
        if self._container is None:
            raise RuntimeError("encoder is closed")
        return self._container

    @property
    def _video_stream(self) -> av.video.stream.VideoStream:
        if self._video is None:
            raise RuntimeError("encoder is closed")
        return self._video

    def _io_open(self, url: str, flags: int, options: dict[str, Any]) -> Any:
        if flags != 1:  # AVIO_FLAG_READ only: the faststart re-read of our own output
            raise PermissionError(f"refusing to open {url!r} for writing")
        return SharedReader(self._buffer)

    def _add_video_stream(self) -> av.video.stream.VideoStream:
        opts = self.options
        if opts.container == "webm":
            codec = "libvpx-vp9"
            codec_options = {
                "deadline": opts.vp9_deadline,
                "cpu-used": str(opts.vp9_cpu_used),
                "row-mt": "1",
                "lag-in-frames": "0",
                "crf": str(opts.vp9_crf),
                "b": "0",
            }
        else:
            codec = "libx264"
            codec_options = {
                "preset": opts.x264_preset,
                "crf": f"{opts.x264_crf:g}",
                "profile": opts.x264_profile,
            }
            if self.live:
                codec_options.update({"bf": "0", "rc-lookahead": str(_LIVE_X264_LOOKAHEAD)})
        stream = self._output.add_stream(codec, rate=self.rate, options=codec_options)
        if not isinstance(stream, av.video.stream.VideoStream):
            raise TypeError(f"{codec} did not give a video stream")
        ctx = stream.codec_context
        ctx.width, ctx.height = self.encoded_width, self.encoded_height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = 1 / self.rate
        ctx.gop_size = max(1, round(opts.keyframe_interval_s * self.rate))
        ctx.thread_count = opts.threads
        ctx.colorspace = AVCOL_SPC_SMPTE170M
        ctx.color_range = AVCOL_RANGE_MPEG
        return stream

    def _add_audio_stream(self) -> av.audio.stream.AudioStream:
        codec = "libopus" if self.options.container == "webm" else "aac"
        stream = self._output.add_stream(codec, rate=AUDIO_RATE, layout="mono")
        if not isinstance(stream, av.audio.stream.AudioStream):
            raise TypeError(f"{codec} did not give an audio stream")
        stream.codec_context.bit_rate = self.options.audio_bitrate
        return stream

    # -- writing

    def write(self, frame: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Encode one (height, width, 3) uint8 BGR frame; with `audio_follows`, `audio` is
        the speech (n,) float32 in [-1, 1] at `sample_rate` that goes with it."""
        if self._closed:
            raise RuntimeError("encoder is closed")
        if audio is not None and self._audio_feed is not None:
            self._audio_feed.extend(np.clip(audio.astype(np.float32), -1.0, 1.0))
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f"frame {self.num_frames} must be a uint8 numpy array")
        if frame.shape != (self.height, self.width, 3):
            raise ValueError(
                f"frame {self.num_frames} has shape {frame.shape}, expected "
                f"{(self.height, self.width, 3)}"
            )
        image = frame[: self.encoded_height, : self.encoded_width]
        video_frame = av.VideoFrame.from_ndarray(bgr_to_i420(image), format="yuv420p")
        video_frame.colorspace = AVCOL_SPC_SMPTE170M
        video_frame.color_range = AVCOL_RANGE_MPEG
        video_frame.pts = self.num_frames
        video_frame.time_base = self._video_stream.codec_context.time_base
        self._mux_video(self._video_stream.encode(video_frame))
        self.num_frames += 1
        self._write_audio_until(self.num_frames / self.rate)

    def _mux_video(self, packets: list[av.Packet]) -> None:
        """Mux video packets, in WebM with Opus on the audio's clock.

        FFmpeg interleaves packets by decode time, but its WebM muxer writes each Opus block
        at its time plus the codec delay (6.5 ms): an audio block interleaved before a video
        frame could carry a later timecode than it, and Chromium's MediaSource refuses a
        cluster whose block timecodes go back. A video packet's decode time (not written
        in WebM) is therefore set the codec delay before its presentation time (written,
        unchanged) in milliseconds, WebM's time unit: blocks go out in timecode order.
        """
        if self._audio is not None and self.options.container == "webm":
            shift = math.ceil(_OPUS_DELAY / _MILLISECOND)
            for packet in packets:
                if packet.pts is None or packet.duration is None:  # never from an encoder
                    continue
                to_ms = packet.time_base / _MILLISECOND
                pts = round(packet.pts * to_ms)
                packet.duration = round(packet.duration * to_ms)
                packet.time_base = _MILLISECOND
                packet.pts, packet.dts = pts, pts - shift
        self._output.mux(packets)

    def write_batch(self, frames: Iterable[np.ndarray]) -> None:
        """Encode several frames: a (k, height, width, 3) uint8 array or an iterable of
        (height, width, 3) frames."""
        for frame in frames:
            self.write(frame)

    def _write_audio_until(self, seconds: Fraction | None) -> None:
        """Encode the queued audio frames starting before `seconds` (all if None)."""
        if self._audio_feed is None or self._audio is None:
            return
        limit = None if seconds is None else seconds * AUDIO_RATE
        for frame in self._audio_feed.frames_before(limit):
            self._output.mux(self._audio.encode(frame))

    def finish(self) -> EncodedVideo:
        """Flush encoders, finalise the container and return the file."""
        if self._closed:
            raise RuntimeError("encoder is closed")
        try:
            if self.num_frames == 0:
                raise ValueError("no frames were written")
            self._mux_video(self._video_stream.encode(None))
            if self._audio_feed is not None:
                self._audio_feed.end()
            if self._audio is not None:
                self._write_audio_until(None)
                self._output.mux(self._audio.encode(None))
            self._output.close()
            self._closed = True
            data = b"" if self.live else self._buffer.getvalue()
        finally:
            self.close()
        result = EncodedVideo(
            data=data,
            mime_type=self.options.mime_type,
            num_frames=self.num_frames,
            duration=float(self.num_frames / self.rate),
            width=self.encoded_width,
            height=self.encoded_height,
            fps=float(self.rate),
            audio_duration=self._audio_duration,
        )
        logger.debug(
            "encoded %d frames %dx%d to %s%s: %d bytes in %.3f s",
            result.num_frames,
            result.width,
            result.height,
            self.options.container,
            " (live)" if self.live else "",
            self._sink.total if self._sink is not None else len(data),
            time.perf_counter() - self._started,
        )
        return result

    def drain(self) -> bytes:
        """Live mode: the bytes produced since the previous call (b"" if none); after
        `finish`, the tail of the file. Concatenated, the drained chunks are the file."""
        if self._sink is None:
            raise RuntimeError("drain() needs a live encoder (live=True)")
        return self._sink.drain()

    @property
    def held_frames(self) -> int:
        """Frames the video encoder takes in before it puts out the first one's packet."""
        if self.options.container == "webm":
            return 0  # lag-in-frames=0
        return _LIVE_X264_LOOKAHEAD + 1 if self.live else _X264_HELD_FRAMES

    @property
    def closed(self) -> bool:
        """True once finished or closed: FFmpeg's encoders and muxer are released."""
        return self._closed

    @property
    def codecs(self) -> str:
        """RFC 6381 codecs of the output, for a MediaSource type such as
        'video/webm; codecs="vp9,opus"' or 'video/mp4; codecs="avc1.64001f,mp4a.40.2"'."""
        if self._video is None:
            raise RuntimeError("encoder is closed")
        if self.options.container == "webm":
            names = ["vp9"]
        else:
            names = [avc_codec_string(self._video_stream.codec_context.extradata)]
        if self._audio is not None:
            names.append("opus" if self.options.container == "webm" else "mp4a.40.2")
        return ",".join(names)

    def close(self) -> None:
        """Release the encoder without producing output (idempotent). A live encoder's
        undrained bytes stay available to `drain`."""
        if not self._closed:
            self._closed = True
            try:
                if self._container is not None:
                    self._container.close()
            except (av.FFmpegError, OSError, ValueError) as exc:
                logger.debug("ignoring error while aborting encode: %s", exc)
        # The container holds our io_open hook (a bound method), so it and the encoder form
        # a reference cycle; drop our side now so FFmpeg's buffers are freed at once rather
        # than at the next cyclic garbage collection (tens of MB per encode).
        self._container = self._video = self._audio = self._audio_feed = None
        self._buffer = io.BytesIO()

    def __enter__(self) -> VideoEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def encode_video(
    frames: Iterable[np.ndarray],
    *,
    width: int,
    height: int,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    options: EncodeOptions | None = None,
) -> EncodedVideo:
    """Encode single (height, width, 3) uint8 BGR frames, consumed one by one (a generator
    is never materialised), plus optional mono audio, to WebM or MP4 in memory.

    See `VideoEncoder` for codec settings, odd-size cropping and timing guarantees.
    """
    with VideoEncoder(
        width=width,
        height=height,
        fps=fps,
        audio=audio,
        sample_rate=sample_rate,
        options=options,
    ) as encoder:
        for frame in frames:
            encoder.write(frame)
        return encoder.finish()
