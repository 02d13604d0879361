"""The pipeline child: the service's path for a new face image, timed stage by stage
(decode, mel, detect, infer, paste, encode), plus Wav2Lip alone on the same inputs.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import rss_mb
from bench.models import MODEL, OV_CACHE
from lipsync import generation
from lipsync.engine import DETECTOR_NAME, Wav2LipInferenceEngine
from lipsync.face_detection import FaceNotDetectedError
from lipsync.media.encode import EncodedVideo
from lipsync.media.encode_options import EncodeOptions
from lipsync.options import RenderOptions
from lipsync.settings import Settings
from lipsync.util import timed


def fps_stats(
    call: Callable[[], Any], frames: int, min_time: float, min_calls: int
) -> tuple[float, float]:
    """Frames/s of `call` (producing `frames` frames) as (median, best) over >= min_calls
    calls lasting >= min_time seconds in all, after one warm-up call. On a shared machine
    the best call is the better estimate of what the code can do, the median of what it did.
    """
    call()
    times: list[float] = []
    while len(times) < min_calls or sum(times) < min_time:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return round(frames / statistics.median(times), 2), round(frames / min(times), 2)


def make_engine(models_dir: Path, precision: str, batch_size: int) -> Wav2LipInferenceEngine:
    return Wav2LipInferenceEngine(
        models_dir, precision=precision, cache_dir=OV_CACHE, batch_size=batch_size
    )


def run_once(
    engine: Wav2LipInferenceEngine,
    image_bytes: bytes,
    wav_bytes: bytes,
    options: RenderOptions,
    settings: Settings,
) -> tuple[dict[str, float], np.ndarray, EncodedVideo]:
    """One POST /api/generate for a new face image, as app.generate_video runs it (the
    avatar store's cache-miss path: decode_face + prepare_face). -> (stage seconds, decoded
    frames, video)."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with timed(timings, "audio_decode"):
        speech = generation.decode_speech(wav_bytes, settings)
    with timed(timings, "image_decode"):
        frames, _ = generation.decode_face(image_bytes, settings)
    prepared = engine.prepare_face(frames, options, timings=timings)
    result = generation.generate(
        engine, prepared, speech, options, EncodeOptions(container="webm"), timings
    )
    stages = {k: v / 1000 for k, v in result.timings_ms.items()}
    stages["total"] = time.perf_counter() - start
    return stages, frames, result.video


def time_no_encode(
    engine: Wav2LipInferenceEngine,
    frames: np.ndarray,
    speech: generation.Speech,
    options: RenderOptions,
) -> float:
    """Seconds for what the PyTorch reference times: mel + face preparation + every frame
    generated and pasted (consumed, not encoded)."""
    start = time.perf_counter()
    windows = generation.speech_mel_windows(speech, options.fps)
    prepared = engine.prepare_face(frames, options)
    for _ in engine.iter_frames(prepared, windows, options.model):
        pass
    return time.perf_counter() - start


def isolated_wav2lip_fps(
    engine: Wav2LipInferenceEngine, frames: np.ndarray, options: RenderOptions, wav: bytes
) -> float:
    """Frames/s of Wav2Lip alone (sync batches of the engine's size, up to 8 batches) on
    this configuration's own inputs; in the pipeline its compute overlaps paste + encode."""
    speech = generation.decode_speech(wav, Settings.load(environ={}))
    windows = generation.speech_mel_windows(speech, options.fps)
    windows = windows[: 8 * engine.batch_size]
    prepared = engine.prepare_face(frames, options)
    generator = engine.generator(options.model)
    size = engine.batch_size

    def run() -> None:
        features = generator.encode_face(prepared.inputs[:1])  # once, as iter_frames does
        for i in range(0, len(windows), size):
            generator.start_with_face(windows[i : i + size], features).wait()

    return fps_stats(run, len(windows), 0.0, 1)[0]


def time_prepare(
    engine: Wav2LipInferenceEngine, frames: np.ndarray, options: RenderOptions
) -> float:
    """Seconds of `prepare_face` (detection or explicit box, plus the crop)."""
    start = time.perf_counter()
    with contextlib.suppress(FaceNotDetectedError):  # the untrained detector may find none
        engine.prepare_face(frames, options)
    return time.perf_counter() - start


def pipeline_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Compile, warm up on 1 s of speech, then `repeats` full runs of the service path."""
    loadavg = os.getloadavg()[0]
    engine = make_engine(Path(cfg["models_dir"]), cfg["precision"], cfg["batch_size"])
    settings = Settings.load({"models_dir": cfg["models_dir"]}, environ={})
    start = time.perf_counter()
    engine.compile([DETECTOR_NAME, MODEL])
    compile_s = time.perf_counter() - start
    rss_compiled = rss_mb()
    image = Path(cfg["image"]).read_bytes()
    detect = RenderOptions(fps=cfg["fps"], model=MODEL)
    with_box = RenderOptions(fps=cfg["fps"], model=MODEL, box=tuple(cfg["box"]))
    warm_wav = Path(cfg["warmup_wav"]).read_bytes()
    try:
        run_once(engine, image, warm_wav, detect, settings)
        options, face_mode = detect, "detect"
    except FaceNotDetectedError:
        run_once(engine, image, warm_wav, with_box, settings)
        options, face_mode = with_box, "box (untrained detector found no face)"
    rss_warm = rss_mb()
    wav = Path(cfg["wav"]).read_bytes()
    runs, video = [], None
    for _ in range(cfg["repeats"]):
        stages, frames, video = run_once(engine, image, wav, options, settings)
        stages["detect_s3fd"] = time_prepare(engine, frames, detect)
        stages["detect_box"] = time_prepare(engine, frames, with_box)
        if cfg.get("no_encode"):
            speech = generation.decode_speech(wav, settings)
            stages["no_encode_total"] = time_no_encode(engine, frames, speech, options)
        runs.append(stages)
    return {
        "runs": runs,
        "face_mode": face_mode,
        "frames": video.num_frames,
        "video_bytes": len(video.data),
        "video_size": [video.width, video.height],
        "wav2lip_fps": isolated_wav2lip_fps(engine, frames, options, wav),
        "compile_s": round(compile_s, 3),
        "rss_after_compile_mb": rss_compiled,
        "rss_after_warmup_mb": rss_warm,
        "loadavg_start": loadavg,
    }
