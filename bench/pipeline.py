"""Benchmark of the whole lip-sync pipeline, in-process, on the service's own code path.

    python bench/pipeline.py [--models-dir DIR] [--durations 5,30,120]
        [--sizes 720x576,1280x720] [--fps 25] [--repeats 3] [--precisions f32,bf16,int8]
        [--torch-baseline/--no-torch-baseline] [--pairs 3] [--out bench/results/pipeline.json]
        [--quick]

For every (precision, speech duration, image size) it runs, in a fresh subprocess (so peak
RSS is that configuration's), what POST /api/generate runs for a new face image: audio
decode from WAV bytes, image decode from JPEG bytes, `engine.prepare_face` (S3FD detection;
the avatar store's cache-miss path) and `generation.generate` (mel, batched Wav2Lip, paste,
VP9/Opus WebM encode). Stage times are medians over --repeats runs after a warm-up run.

- `infer` is the time the service *waited* for Wav2Lip: the engine runs batch k+1 while
  batch k is pasted and encoded, so part of the Wav2Lip compute is booked under `encode`.
  `wav2lip_fps` is Wav2Lip alone (sync batches) on the same inputs; `stream_fps` is frames
  / (infer + paste + encode), the rate frames leave the lip-sync loop.
- `detect` is S3FD; `detect_box` the same preparation with an explicit face box, and
  `total_box` / `rtf_box` the request with that box instead of detection.
- `rtf` = total / speech duration (< 1 is faster than real time).

It also times the plain PyTorch reference pipeline (networks/reference_pipeline.py) on the
5 s input at the first size: without encoding, against ours doing the same work; and end to
end, with the reference's way of writing the video (DIVX AVI via cv2.VideoWriter, then
ffmpeg's H.264 + AAC re-encode, here through PyAV), against our whole request. The
baseline and ours alternate for --pairs rounds (fresh processes each) and the ratios are
medians over the rounds, so a busy minute on a shared machine skews one round only. A
Wav2Lip-only microbenchmark adds frames/s per batch size for each OpenVINO precision,
LATENCY vs THROUGHPUT hints, and PyTorch fp32 at batch 16.

Without trained models in models/ it converts seeded random-init networks (cached in
.cache/bench-models, with an INT8 copy made by quantize_int8.py) and says so loudly: the
graphs are the real ones, so speeds are representative; the outputs are noise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import soundfile as sf  # noqa: E402

from face_detection import FaceNotDetectedError  # noqa: E402
from inference_engine import DETECTOR_NAME, Wav2LipInferenceEngine  # noqa: E402
from lipsync import generation  # noqa: E402
from lipsync.media.encode import EncodedVideo, frame_rate  # noqa: E402
from lipsync.media.encode_options import EncodeOptions  # noqa: E402
from lipsync.options import RenderOptions  # noqa: E402
from lipsync.runtime.core import PRECISIONS, CompiledNetwork, cpu_supports_bf16, make_core  # noqa: E402
from lipsync.runtime.wav2lip import (  # noqa: E402
    AUDIO_INPUT,
    FACE_INPUT,
    Wav2LipGenerator,
    add_preprocessing,
    audio_input,
    to_uint8_faces,
)
from lipsync.settings import Settings  # noqa: E402
from lipsync.util import timed  # noqa: E402
from tools import quantize_int8  # noqa: E402

BENCH_MODELS = ROOT / ".cache" / "bench-models"
OV_CACHE = ROOT / ".cache" / "bench-openvino"
DEFAULT_OUT = ROOT / "bench" / "results" / "pipeline.json"
FACE_IMAGE = ROOT / "test_assets" / "face.jpg"
# The face of test_assets/face.jpg (512x512) as (top, bottom, left, right), by eye.
FACE_BOX_512 = (50, 180, 165, 280)
MODEL = "wav2lip"
MICRO_BATCHES = (1, 8, 16, 32, 64)
TORCH_BATCH = 16
# What the torch child reports about itself, copied into each comparison round.
TORCH_FACTS = ("frames", "torch_version", "threads", "peak_rss_mb", "wav2lip_fps_b16")
HINT_BATCH = 16
CHILD_TIMEOUT_S = 4 * 3600
_BAR = "!" * 88
UNTRAINED_BANNER = f"""{_BAR}
!! UNTRAINED WEIGHTS: seeded random-init Wav2Lip/S3FD (no trained models found).
!! Timings are representative of the real networks (same graphs); outputs are noise.
{_BAR}"""


# --- Command line -----------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def csv_of(convert: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda text: [convert(v.strip()) for v in text.split(",") if v.strip()]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--models-dir",
        type=Path,
        help="IR directory (default: models/ if it holds converted models, else random-init "
        "models converted into .cache/bench-models)",
    )
    add("--durations", type=csv_of(float), default=[5.0, 30.0, 120.0], help="speech seconds")
    add("--sizes", type=csv_of(parse_size), default=[(720, 576), (1280, 720)], help="WxH,...")
    add("--fps", type=float, default=25.0, help="output frame rate (default 25)")
    add("--repeats", type=positive_int, default=3, help="runs per configuration; medians reported")
    add("--precisions", type=csv_of(str), default=["f32", "bf16", "int8"])
    add("--batch-size", type=positive_int, default=16, help="engine batch size (default 16)")
    add("--sample-rate", type=int, default=16000, help="sample rate of the WAV speech")
    add("--torch-baseline", action=argparse.BooleanOptionalAction, default=True)
    add(
        "--pairs",
        type=positive_int,
        default=3,
        help="rounds alternating the torch baseline and ours (>= 1)",
    )
    add("--micro", action=argparse.BooleanOptionalAction, default=True, help="Wav2Lip only")
    add("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    add("--quick", action="store_true", help="smoke run: 1 repeat, 5 s, 720x576, small micro")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return parser


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    """--quick: one repeat of 5 s at 720x576; torch baseline (if asked) in one round;
    microbenchmark at batch 16 only, without the hint comparison."""
    args.micro_batches = (HINT_BATCH,) if args.quick else MICRO_BATCHES
    args.torch_seconds = 5.0  # the torch baseline always runs 5 s at the first size
    if args.quick:
        args.repeats, args.durations, args.sizes, args.pairs = 1, [5.0], [(720, 576)], 1
    return args


# --- Machine ----------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    core = ov.Core()
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return {
        "cpu_model": cpu_model(),
        "openvino_cpu_name": core.get_property("CPU", "FULL_DEVICE_NAME"),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_flags": {flag: flag in flags for flag in wanted},
        "openvino_version": ov.get_version(),
        "openvino_capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "bf16_supported": cpu_supports_bf16(core),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "platform": platform.platform(),
    }


# --- Models -----------------------------------------------------------------------------------


def read_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def has_models(models_dir: Path) -> bool:
    return all((models_dir / f"{n}.xml").is_file() for n in (MODEL, DETECTOR_NAME))


def prepare_models(models_dir: Path | None) -> tuple[Path, bool]:
    """The models to benchmark and whether they are untrained.

    --models-dir if given; else models/ when it holds converted models; else random-init
    models converted once into .cache/bench-models.
    """
    if models_dir is None:
        models_dir = ROOT / "models" if has_models(ROOT / "models") else BENCH_MODELS
    if not has_models(models_dir):
        if models_dir != BENCH_MODELS:
            raise SystemExit(f"error: {models_dir} has no {MODEL}.xml / {DETECTOR_NAME}.xml")
        import convert_to_openvino  # torch: conversion only, never in a measured child

        print(f"converting random-init models into {models_dir} ...", flush=True)
        if convert_to_openvino.main(["--random-init", "0", "--output-dir", str(models_dir)]):
            raise SystemExit("error: random-init conversion failed")
    manifest = read_manifest(models_dir)
    untrained = bool(manifest.get("untrained")) or (models_dir / "untrained-checkpoints").is_dir()
    return models_dir, untrained


def int8_xml(models_dir: Path) -> Path:
    return quantize_int8.int8_path(models_dir / f"{MODEL}.xml")


def ensure_int8(models_dir: Path) -> str | None:
    """Make sure the INT8 generator exists; None if it does, else why it is skipped."""
    if int8_xml(models_dir).is_file():
        return None
    if models_dir != BENCH_MODELS:
        return (
            f"{int8_xml(models_dir).name} missing: run quantize_int8.py --models-dir {models_dir}"
        )
    print("quantizing the bench models to INT8 (quantize_int8.py) ...", flush=True)
    cmd = [sys.executable, "-m", "tools.quantize_int8", "--models-dir", str(models_dir)]
    cmd += ["--models", MODEL]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        return f"quantize_int8.py failed: {done.stderr.strip().splitlines()[-1:]}"
    return None


def usable_precisions(precisions: Sequence[str], models_dir: Path) -> tuple[list, list]:
    """(precisions to run, [{precision, reason}] skipped)."""
    bf16 = cpu_supports_bf16(ov.Core())
    run, skipped = [], []
    for precision in precisions:
        reason = None
        if precision not in ("f32", "bf16", "int8"):
            reason = "unknown precision"
        elif precision == "bf16" and not bf16:
            reason = "CPU has no native bf16"
        elif precision == "int8" and "int8" not in PRECISIONS:
            reason = "this engine has no int8 precision"
        elif precision == "int8":
            reason = ensure_int8(models_dir)
        if reason:
            print(f"skipping {precision}: {reason}", flush=True)
            skipped.append({"precision": precision, "reason": reason})
        else:
            run.append(precision)
    return run, skipped


# --- Generated inputs -------------------------------------------------------------------------


def make_image(width: int, height: int) -> tuple[bytes, tuple[int, int, int, int]]:
    """JPEG bytes of test_assets/face.jpg fitted into width x height (on a blurred, stretched
    copy of itself), and the face box (top, bottom, left, right) in that image."""
    face = cv2.imread(str(FACE_IMAGE))
    scale = min(width / face.shape[1], height / face.shape[0])
    fw, fh = round(face.shape[1] * scale), round(face.shape[0] * scale)
    canvas = cv2.GaussianBlur(cv2.resize(face, (width, height)), (0, 0), 12)
    left, top = (width - fw) // 2, (height - fh) // 2
    canvas[top : top + fh, left : left + fw] = cv2.resize(face, (fw, fh))
    ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    y1, y2, x1, x2 = FACE_BOX_512
    box = (top + round(y1 * scale), top + round(y2 * scale))
    return jpeg.tobytes(), (*box, left + round(x1 * scale), left + round(x2 * scale))


def make_wav(duration_s: float, sample_rate: int, seed: int = 0) -> bytes:
    """16-bit PCM mono WAV bytes of seeded speech-like audio (see quantize_int8.speech_like)."""
    buffer = io.BytesIO()
    wav = quantize_int8.speech_like(duration_s, sample_rate, seed)
    sf.write(buffer, wav, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def write_inputs(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write every image and WAV the children need; returns their paths and face boxes."""
    images, wavs = {}, {}
    for width, height in args.sizes:
        jpeg, box = make_image(width, height)
        path = workdir / f"face_{width}x{height}.jpg"
        path.write_bytes(jpeg)
        images[f"{width}x{height}"] = {"path": str(path), "box": box, "bytes": len(jpeg)}
    for duration in sorted({*args.durations, 1.0, args.torch_seconds}):
        path = workdir / f"speech_{duration:g}s.wav"
        path.write_bytes(make_wav(duration, args.sample_rate))
        wavs[duration] = str(path)
    return {"images": images, "wavs": wavs}


# --- Child processes --------------------------------------------------------------------------


def run_child(cfg: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its result dict."""
    cfg_path = workdir / f"child_{time.monotonic_ns()}.json"
    cfg = {**cfg, "result_path": str(cfg_path.with_suffix(".out.json"))}
    cfg_path.write_text(json.dumps(cfg))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(cfg_path)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"child {cfg['kind']} failed ({done.returncode}):\n{tail}")
    return json.loads(Path(cfg["result_path"]).read_text())


def child_main(cfg_path: Path) -> int:
    cfg = json.loads(cfg_path.read_text())
    kind = cfg["kind"]
    handler = {"pipeline": pipeline_child, "micro": micro_child, "torch": torch_child}[kind]
    result = handler(cfg)
    result["peak_rss_mb"] = peak_rss_mb()
    result["loadavg_end"] = os.getloadavg()[0]
    Path(cfg["result_path"]).write_text(json.dumps(result))
    return 0


def _status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is absent)."""
    kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024, 1)


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def int8_hint() -> str:
    """Precision of the layers NNCF left in float, in an int8 model: bf16 where native."""
    return "bf16" if cpu_supports_bf16(ov.Core()) else "f32"


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


def micro_inputs(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Mel windows (count, 80, 16) and uint8 face inputs (count, 96, 96, 6), generated."""
    return quantize_int8.engine_inputs(count, seed=7)


def generator_network(
    core: ov.Core, cfg: dict[str, Any], preprocess=add_preprocessing, config: dict | None = None
) -> CompiledNetwork:
    """The generator IR of this precision; by default the whole network."""
    precision = cfg["precision"]
    xml = int8_xml(Path(cfg["models_dir"])) if precision == "int8" else None
    return CompiledNetwork(
        core,
        xml or Path(cfg["models_dir"]) / f"{MODEL}.xml",
        device="CPU",
        precision=int8_hint() if precision == "int8" else precision,
        preprocess=preprocess,
        extra_config=config,
    )


def bench_generator(core: ov.Core, cfg: dict[str, Any]) -> Wav2LipGenerator:
    """The generator as the engine builds it: whole network, face encoder, decoder."""
    return Wav2LipGenerator.from_ir(functools.partial(generator_network, core, cfg))


def hint_variants(core: ov.Core, cfg: dict[str, Any], mels, faces) -> dict[str, Any]:
    """Batch-16 frames/s of the whole network under the LATENCY hint (as the engine runs:
    one request at a time) against the THROUGHPUT hint with its optimal number of async
    requests in flight."""
    out: dict[str, Any] = {}
    inputs = {AUDIO_INPUT: audio_input(mels[:HINT_BATCH]), FACE_INPUT: faces[:HINT_BATCH]}
    for hint in ("LATENCY", "THROUGHPUT"):
        network = generator_network(core, cfg, config={"PERFORMANCE_HINT": hint})
        compiled = network.compile()
        jobs = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        queue = ov.AsyncInferQueue(compiled, jobs)
        queue.set_callback(lambda req, _: to_uint8_faces(req.get_output_tensor(0).data))
        rounds = 4 * jobs

        def burst(queue=queue, rounds=rounds) -> None:
            for _ in range(rounds):
                queue.start_async(inputs)
            queue.wait_all()

        median, best = fps_stats(burst, rounds * HINT_BATCH, 3.0, 3)
        out[hint] = {
            "streams": compiled.get_property("NUM_STREAMS"),
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "requests": jobs,
            "fps": median,
            "fps_best": best,
        }
    return out


def accuracy_vs_f32(core: ov.Core, cfg: dict[str, Any], generator, mels, faces) -> dict:
    """Max abs difference and PSNR of the 96x96 mouths against f32 on the same inputs."""
    reference = bench_generator(core, {**cfg, "precision": "f32"})
    ours, expected = [], []
    for start in range(0, len(mels), TORCH_BATCH):
        part = slice(start, start + TORCH_BATCH)
        ours.append(generator.infer(mels[part], faces[part]))
        expected.append(reference.infer(mels[part], faces[part]))
    ours_all, expected_all = np.concatenate(ours), np.concatenate(expected)
    diff = np.abs(ours_all.astype(np.int16) - expected_all.astype(np.int16))
    return {
        "samples": len(mels),
        "max_abs": int(diff.max()),
        "mean_abs": round(float(diff.mean()), 3),
        "psnr_db": round(quantize_int8.psnr(expected_all, ours_all), 2),
    }


def micro_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Wav2Lip stage only, frames/s per batch size: one face encoded once, then the decoder
    per batch, as for an image (`fps`), and the whole network with a face per window, as
    for a video (`fps_whole`), the two in turn at each batch size."""
    core = make_core(OV_CACHE)
    generator = bench_generator(core, cfg)
    compiled = generator.decoder.compile()
    mels, faces = micro_inputs(max(cfg["batches"]))
    features = generator.encode_face(faces[:1])
    variants = {
        "fps": lambda b: generator.start_with_face(mels[:b], features).wait(),
        "fps_whole": lambda b: generator.start(mels[:b], faces[:b]).wait(),
    }
    result: dict[str, Any] = {key: {} for key in variants} | {"fps_best": {}}
    for batch in cfg["batches"]:
        for key, run in variants.items():
            median, best = fps_stats(functools.partial(run, batch), batch, cfg["min_time"], 3)
            result[key][str(batch)] = median
            if key == "fps":
                result["fps_best"][str(batch)] = best
    result |= {
        "hint": str(compiled.get_property("PERFORMANCE_HINT")),
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
    }
    result["vs_f32"] = accuracy_vs_f32(core, cfg, generator, mels, faces)
    if cfg.get("hints"):
        result["hints"] = hint_variants(core, cfg, mels, faces)
    return result


def torch_networks(models_dir: Path):
    """The PyTorch Wav2Lip and S3FD built from the checkpoints the IR was converted from."""
    import convert_to_openvino as conv

    ckpt = models_dir / "untrained-checkpoints"
    if not ckpt.is_dir():
        ckpt = ROOT / "checkpoints"
    wav2lip = conv.build_wav2lip(conv.load_wav2lip_state_dict(ckpt / "wav2lip.pth"))
    s3fd = conv.build_s3fd(conv.load_s3fd_state_dict(ckpt / "s3fd.pth"))
    return wav2lip.eval(), s3fd.eval()


def reference_write(frames: np.ndarray, fps: float, wav_path: Path) -> bytes:
    """Write frames the way the reference's inference.py does: a DIVX AVI through
    cv2.VideoWriter, then `ffmpeg -i speech -i result.avi out.mp4`, i.e. a re-encode to
    H.264 (libx264 defaults: preset medium, CRF 23) + AAC, done here with PyAV since the
    ffmpeg CLI may be absent. frames: (N, H, W, 3) uint8 BGR. Returns the MP4 file."""
    import av

    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory(prefix="bench-ref-") as tmp:
        avi, mp4 = Path(tmp) / "result.avi", Path(tmp) / "result.mp4"
        writer = cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"DIVX"), fps, (width, height))
        if not writer.isOpened():
            raise RuntimeError("this OpenCV build cannot write DIVX AVI")
        for frame in frames:
            writer.write(frame)
        writer.release()
        with (
            av.open(str(avi)) as src,
            av.open(str(wav_path)) as speech,
            av.open(str(mp4), "w") as dst,
        ):
            video = dst.add_stream("libx264", rate=frame_rate(fps))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            sound = dst.add_stream("aac", rate=speech.streams.audio[0].rate)
            for picture in src.decode(video=0):
                dst.mux(video.encode(picture.reformat(format="yuv420p")))
            dst.mux(video.encode(None))
            for samples in speech.decode(audio=0):
                samples.pts = None
                dst.mux(sound.encode(samples))
            dst.mux(sound.encode(None))
        return mp4.read_bytes()


def torch_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One run of the reference pipeline in PyTorch (2 threads) after a warm-up: mel,
    detect, infer and paste, then the reference's way of writing the video; plus Wav2Lip
    frames/s at batch 16. Repetition comes from the alternating comparison rounds."""
    import torch

    import audio
    from networks import reference_pipeline as ref

    torch.set_num_threads(cfg["threads"])
    wav2lip, s3fd = torch_networks(Path(cfg["models_dir"]))
    frame = cv2.imread(cfg["image"])
    wav = audio.load_audio(Path(cfg["wav"]).read_bytes())
    ref.render(wav2lip, s3fd, [frame], wav[:16000], fps=cfg["fps"])  # warm-up
    stages: dict[str, float] = {}
    with timed(stages, "mel"):
        chunks = ref.mel_windows(ref.mel(wav), cfg["fps"])
    with timed(stages, "detect"):
        ref.face_boxes(s3fd, [frame], (0, 10, 0, 0), True)
    with timed(stages, "total"):
        frames = ref.render(wav2lip, s3fd, [frame], wav, fps=cfg["fps"])
    stages["infer_paste"] = stages["total"] - stages["mel"] - stages["detect"]
    with timed(stages, "write"):
        reference_write(frames, cfg["fps"], Path(cfg["wav"]))
    mels, faces = micro_inputs(TORCH_BATCH)
    audio_t = torch.from_numpy(mels[:, None].copy())
    faces_t = torch.from_numpy(faces.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    with torch.no_grad():
        fps, _ = fps_stats(lambda: wav2lip(audio_t, faces_t), TORCH_BATCH, cfg["min_time"], 3)
    return {
        "stages_s": {k: round(v, 4) for k, v in stages.items()},
        "frames": len(frames),
        "mel_windows": len(chunks),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "wav2lip_fps_b16": fps,
    }


# --- Aggregation ------------------------------------------------------------------------------


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}


def summarize_pipeline(cfg: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    stages = medians(raw["runs"])
    s_enc = stages["encode"]
    used_detection = raw["face_mode"] == "detect"
    with_detection = stages["total"] - stages["detect"] + stages["detect_s3fd"]
    with_box = stages["total"] - stages["detect"] + stages["detect_box"]
    stages["total_detect"] = round(stages["total"] if used_detection else with_detection, 4)
    stages["total_box"] = round(with_box, 4)
    return {
        "precision": cfg["precision"],
        "duration_s": cfg["duration"],
        "size": cfg["size"],
        "frames": raw["frames"],
        "face_mode": raw["face_mode"],
        "stages_s": stages,
        "wav2lip_fps": raw["wav2lip_fps"],
        "stream_fps": round(raw["frames"] / (stages["infer"] + stages["paste"] + s_enc), 2),
        "rtf": round(stages["total"] / cfg["duration"], 4),
        "rtf_box": round(stages["total_box"] / cfg["duration"], 4),
        "peak_rss_mb": raw["peak_rss_mb"],
        "rss_after_compile_mb": raw["rss_after_compile_mb"],
        "rss_after_warmup_mb": raw["rss_after_warmup_mb"],
        "compile_s": raw["compile_s"],
        "video_bytes": raw["video_bytes"],
        "loadavg": [raw["loadavg_start"], raw["loadavg_end"]],
        "runs": raw["runs"],
    }


def torch_comparison(torch_raw: dict[str, Any], pipeline: list[dict], seconds: float) -> dict:
    """Reference time / ours on the same input (one round): >1 means ours is faster."""
    stages = dict(torch_raw["stages_s"])
    stages["end_to_end"] = round(stages["total"] + stages["write"], 4)
    ratios = {}
    for row in pipeline:
        if row["duration_s"] != seconds or row["size"] != torch_raw["size"]:
            continue
        s = row["stages_s"]
        no_encode = s["no_encode_total"]
        ratios[row["precision"]] = {
            "ours_no_encode_s": round(no_encode, 3),
            "ours_total_s": s["total_detect"],
            "speedup_no_encode": round(stages["total"] / no_encode, 2),
            "speedup_end_to_end": round(stages["end_to_end"] / s["total_detect"], 2),
        }
    return {
        "input": f"{seconds:g} s speech, {torch_raw['size']}, S3FD detection",
        "note": "no encode: reference mel + detect + infer + paste in PyTorch vs ours doing the "
        "same (mel, prepare_face, iter_frames consumed); end to end: plus the reference's "
        "video writing (DIVX AVI, then ffmpeg's H.264 + AAC re-encode) vs our whole request "
        "(image/audio decode, VP9 + Opus encode)",
        "stages_s": stages,
        **{k: torch_raw[k] for k in TORCH_FACTS},
        "ratio_vs_ours": ratios,
    }


def micro_ratios(micro: dict[str, Any], torch_fps: float | None) -> dict[str, Any]:
    if not torch_fps:
        return {}
    return {
        precision: {b: round(fps / torch_fps, 2) for b, fps in result["fps"].items()}
        for precision, result in micro.items()
    }


# --- Report -----------------------------------------------------------------------------------


def fmt_row(cells: Sequence[Any], widths: Sequence[int]) -> str:
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths, strict=True))


def print_pipeline(rows: list[dict[str, Any]]) -> None:
    head = ["prec", "speech", "size", "frames", "img_dec", "aud_dec", "mel", "detect"]
    head += ["det_box", "infer*", "paste", "encode", "total", "W2L fps", "stream"]
    head += ["RTF", "RTF box", "peakRSS"]
    widths = [5, 6, 9, 6, 7, 7, 6, 6, 7, 7, 6, 7, 7, 7, 6, 6, 7, 8]
    print("\nPipeline (seconds, medians; service path, VP9 WebM; detect = S3FD):")
    print(fmt_row(head, widths))
    for r in rows:
        s = r["stages_s"]
        detect = s["detect"] if r["face_mode"] == "detect" else s["detect_s3fd"]
        cells = [r["precision"], f"{r['duration_s']:g}s", r["size"], r["frames"]]
        cells += [f"{s['image_decode']:.3f}", f"{s['audio_decode']:.3f}", f"{s['mel']:.3f}"]
        cells += [f"{detect:.3f}"]
        cells += [f"{s[k]:.3f}" for k in ("detect_box", "infer", "paste", "encode", "total_detect")]
        cells += [f"{r['wav2lip_fps']:.1f}", f"{r['stream_fps']:.1f}"]
        cells += [f"{r['rtf']:.3f}", f"{r['rtf_box']:.3f}", f"{r['peak_rss_mb']:.0f}MB"]
        print(fmt_row(cells, widths))
    print(
        "* infer = waiting for Wav2Lip (it runs while the previous batch is pasted and "
        "encoded); W2L fps = Wav2Lip alone; stream = frames / (infer + paste + encode)"
    )


def print_micro(micro: dict[str, Any], torch_fps: float | None, ratios: dict) -> None:
    if not micro:
        return
    batches = list(next(iter(micro.values()))["fps"])
    widths = [9] + [13] * len(batches)
    print(
        "\nWav2Lip stage only, frames/s median/best (one face encoded once, as for an image; "
        "sync, 1 request):"
    )
    print(fmt_row(["precision", *[f"b{b}" for b in batches]], widths))
    for precision, result in micro.items():
        cells = [f"{result['fps'][b]:.1f}/{result['fps_best'][b]:.1f}" for b in batches]
        print(fmt_row([precision, *cells], widths))
    print("Image path (face encoded once) against the whole network, same run, frames/s ratio:")
    for precision, result in micro.items():
        whole = result["fps_whole"]
        print(
            f"  {precision}: "
            + ", ".join(f"b{b} {result['fps'][b] / whole[b]:.2f}x" for b in batches)
        )
    print(
        "Difference from f32 on the same inputs (96x96 uint8 mouths; untrained weights amplify it):"
    )
    for precision, result in micro.items():
        acc = result["vs_f32"]
        print(
            f"  {precision}: max abs {acc['max_abs']}, mean abs {acc['mean_abs']}, "
            f"PSNR {acc['psnr_db']} dB"
        )
    if torch_fps:
        print(f"PyTorch fp32 batch {TORCH_BATCH}: {torch_fps:.1f} frames/s; ratio ours/torch:")
        for precision, by_batch in ratios.items():
            print(f"  {precision}: " + ", ".join(f"b{b} {x:.2f}x" for b, x in by_batch.items()))
    for precision, result in micro.items():
        for hint, h in result.get("hints", {}).items():
            print(
                f"  {precision} b{HINT_BATCH} {hint}: {h['fps']:.1f}/{h['fps_best']:.1f} frames/s "
                f"({h['streams']} streams, {h['requests']} requests in flight, "
                f"{h['threads']} threads)"
            )


def print_torch(comparison: dict[str, Any]) -> None:
    s = comparison["stages_s"]
    print(
        f"\nPyTorch reference ({comparison['input']}; medians of {comparison['rounds']} "
        f"rounds alternating with ours; {comparison['note']}):"
    )
    print(
        f"  mel {s['mel']:.3f}  detect {s['detect']:.3f}  infer+paste {s['infer_paste']:.3f}"
        f"  no-encode total {s['total']:.3f}  write {s['write']:.3f}  end to end "
        f"{s['end_to_end']:.3f} s  peak RSS {comparison['peak_rss_mb']:.0f} MB"
    )
    for precision, r in comparison["ratio_vs_ours"].items():
        spread = [x["ratio_vs_ours"][precision] for x in comparison["per_round"]]
        no_encode_range, end_to_end_range = (
            f"{min(x[key] for x in spread):.2f}-{max(x[key] for x in spread):.2f}"
            for key in ("speedup_no_encode", "speedup_end_to_end")
        )
        print(
            f"  vs ours {precision}: {r['speedup_no_encode']:.2f}x faster without encode "
            f"({r['ours_no_encode_s']:.3f} s; rounds {no_encode_range}), "
            f"{r['speedup_end_to_end']:.2f}x end to end ({r['ours_total_s']:.3f} s; "
            f"rounds {end_to_end_range})"
        )


# --- Main -------------------------------------------------------------------------------------


def pipeline_configs(
    args, models_dir: Path, inputs: dict, precisions: list, *, comparison: bool = False
) -> list[dict]:
    """One config per (precision, size, duration); with `comparison`, only the torch
    baseline's input, one run each, also timing the no-encode path."""
    sizes = args.sizes[:1] if comparison else args.sizes
    durations = [args.torch_seconds] if comparison else args.durations
    configs = []
    for precision in precisions:
        for width, height in sizes:
            size = f"{width}x{height}"
            for duration in durations:
                configs.append(
                    {
                        "kind": "pipeline",
                        "models_dir": str(models_dir),
                        "precision": precision,
                        "batch_size": args.batch_size,
                        "fps": args.fps,
                        "repeats": 1 if comparison else args.repeats,
                        "duration": duration,
                        "size": size,
                        "image": inputs["images"][size]["path"],
                        "box": inputs["images"][size]["box"],
                        "wav": inputs["wavs"][duration],
                        "warmup_wav": inputs["wavs"][1.0],
                        "no_encode": comparison,
                    }
                )
    return configs


def run_pipeline(configs: list[dict], workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for i, cfg in enumerate(configs, 1):
        label = f"{cfg['precision']} {cfg['duration']:g}s {cfg['size']}"
        print(f"[{i}/{len(configs)}] pipeline {label} ...", flush=True)
        row = summarize_pipeline(cfg, run_child(cfg, workdir))
        print(
            f"    total {row['stages_s']['total']:.2f} s, Wav2Lip {row['wav2lip_fps']:.1f} "
            f"frames/s, RTF {row['rtf']:.3f}, peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        rows.append(row)
    return rows


def run_micro(args, models_dir: Path, precisions: list, workdir: Path) -> dict[str, Any]:
    micro = {}
    for precision in precisions:
        print(f"microbenchmark {precision} ...", flush=True)
        cfg = {
            "kind": "micro",
            "models_dir": str(models_dir),
            "precision": precision,
            "batches": list(args.micro_batches),
            "min_time": 0.5 if args.quick else 2.0,
            "hints": not args.quick,
        }
        micro[precision] = run_child(cfg, workdir)
    return micro


def run_torch(args, models_dir: Path, inputs: dict, workdir: Path) -> dict[str, Any]:
    width, height = args.sizes[0]
    print(f"PyTorch reference baseline {args.torch_seconds:g}s {width}x{height} ...", flush=True)
    cfg = {
        "kind": "torch",
        "models_dir": str(models_dir),
        "image": inputs["images"][f"{width}x{height}"]["path"],
        "wav": inputs["wavs"][args.torch_seconds],
        "fps": args.fps,
        "threads": 2,
        "min_time": 0.5 if args.quick else 2.0,
    }
    return {**run_child(cfg, workdir), "size": f"{width}x{height}"}


def run_comparison(args, models_dir: Path, inputs: dict, precisions: list, workdir: Path) -> dict:
    """Alternate the torch baseline and ours on its input for `--pairs` rounds, so that each
    ratio compares runs made minutes apart on a noisy machine; report the median ratios."""
    rounds = []
    for index in range(args.pairs):
        print(f"comparison round {index + 1}/{args.pairs}", flush=True)
        torch_raw = run_torch(args, models_dir, inputs, workdir)
        configs = pipeline_configs(args, models_dir, inputs, precisions, comparison=True)
        ours = run_pipeline(configs, workdir)
        rounds.append(torch_comparison(torch_raw, ours, args.torch_seconds))
    ratios = rounds[0]["ratio_vs_ours"]
    return {
        **rounds[0],
        "rounds": len(rounds),
        "stages_s": medians([r["stages_s"] for r in rounds]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
        "ratio_vs_ours": {p: medians([r["ratio_vs_ours"][p] for r in rounds]) for p in ratios},
        "per_round": [
            {"stages_s": r["stages_s"], "ratio_vs_ours": r["ratio_vs_ours"]} for r in rounds
        ],
        "wav2lip_fps_b16": statistics.median(r["wav2lip_fps_b16"] for r in rounds),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    args = apply_quick(args)
    started = time.perf_counter()
    models_dir, untrained = prepare_models(args.models_dir)
    if untrained:
        print(UNTRAINED_BANNER, flush=True)
    precisions, skipped = usable_precisions(args.precisions, models_dir)
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "untrained_weights": untrained,
        "machine": machine_info(),
        "settings": {
            "models_dir": str(models_dir),
            "durations_s": args.durations,
            "sizes": [f"{w}x{h}" for w, h in args.sizes],
            "fps": args.fps,
            "repeats": args.repeats,
            "precisions": precisions,
            "int8_float_layers": int8_hint(),
            "batch_size": args.batch_size,
            "audio": f"{args.sample_rate} Hz 16-bit mono WAV",
            "format": "webm (VP9 realtime cpu-used 8 + Opus), service defaults",
            "quick": args.quick,
        },
        "skipped": skipped,
        "loadavg_start": os.getloadavg(),
    }
    if untrained:
        report["warning"] = "UNTRAINED random-init weights: speed figures only"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        inputs = write_inputs(workdir, args)
        report["inputs"] = {
            k: {"box": v["box"], "jpeg_bytes": v["bytes"]} for k, v in inputs["images"].items()
        }
        configs = pipeline_configs(args, models_dir, inputs, precisions)
        report["pipeline"] = run_pipeline(configs, workdir)
        report["micro"] = run_micro(args, models_dir, precisions, workdir) if args.micro else {}
        if args.torch_baseline:
            report["torch_baseline"] = run_comparison(args, models_dir, inputs, precisions, workdir)
    torch_fps = report.get("torch_baseline", {}).get("wav2lip_fps_b16")
    report["micro_ratio_vs_torch_b16"] = micro_ratios(report["micro"], torch_fps)
    report["loadavg_end"] = os.getloadavg()
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if untrained:
        print("\n" + UNTRAINED_BANNER)
    print_pipeline(report["pipeline"])
    print_micro(report["micro"], torch_fps, report["micro_ratio_vs_torch_b16"])
    if "torch_baseline" in report:
        print_torch(report["torch_baseline"])
    print(f"\nwrote {args.out} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
