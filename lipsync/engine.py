"""Wav2LipInferenceEngine: face detection, mel windows and batched lip-sync on OpenVINO.

The pipeline follows the reference implementation (Rudrabha/Wav2Lip `inference.py`) step by
step, so that with the same weights and f32 precision it produces the same frames:

1. face boxes: S3FD on each (used) frame, the top detection padded by `pads`, clipped to the
   frame, smoothed over 5 frames; or an explicit `box` for every frame;
2. crops resized to 96x96 (bilinear);
3. per video frame i, the mel window starting at column int(i * 80 / fps);
4. generator input: crop with its lower half zeroed + crop, /255; batches of `batch_size`;
5. output * 255 truncated to uint8, resized (bilinear) to the box and pasted into the frame
   (`blend="none"`; the service's default `"soft"` blends the lower face only, see
   `lipsync.compositing`).

Before detection, frames are fitted to the quality mode's output size (`quality="original"`
keeps them); with frames inside the bounds, as in the parity tests, nothing changes.

Frames are produced batch by batch (`iter_frames`), so a caller can encode while the next
batch is generated and never hold a whole long clip in memory.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Generator, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from lipsync import audio, compositing
from lipsync.errors import ErrorCode, LipSyncError
from lipsync.face_detection import (
    FaceNotDetectedError,
    S3FDDetector,
    pad_box,
    smooth_boxes,
    validate_box,
)
from lipsync.face_detection import s3fd as s3fd_module
from lipsync.faces import (
    PreparedFace,
    as_frames,
    batch_bounds,
    crop_faces,
    cut_batches,
    frame_order,
)
from lipsync.media.sizing import fit_frames, scale_box, scale_rect
from lipsync.options import DEFAULT_PADS, GENERATOR_NAMES, FaceBox, Rect, RenderOptions
from lipsync.runtime.core import CompiledNetwork, float_precision, make_core, resolve_precision
from lipsync.runtime.priority import InferenceGate
from lipsync.runtime.wav2lip import (
    FACE_SIZE,
    Pending,
    Wav2LipGenerator,
    face_input,
)
from lipsync.util import batched, timed

logger = logging.getLogger(__name__)

DETECTOR_NAME = "face_detection"
DEFAULT_BATCH_SIZE = 16
# Starts the batch of mel windows (B, 80, 16) for the prepared frames idx (B,).
BatchStart = Callable[[np.ndarray, np.ndarray], Pending]


class ModelNotFoundError(LipSyncError, FileNotFoundError):
    """A model's IR files are not in the models directory (code model_unavailable)."""

    default_code = ErrorCode.MODEL_UNAVAILABLE

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(f"model {name!r} is not installed (expected {path})")
        self.name = name


@dataclass(frozen=True)
class _Batch:
    """Frames `idx` (source indices) of one output batch; `active` positions are generated,
    with the generated share `share` per position; `batch` is None when none is."""

    batch: Pending | None
    idx: np.ndarray
    share: np.ndarray
    active: np.ndarray


class Wav2LipInferenceEngine:
    """Lip-sync with OpenVINO. Thread-safe; each model is compiled on first use, once.

    models_dir holds `face_detection.xml`, `wav2lip.xml` and optionally `wav2lip_gan.xml`
    (written by convert_to_openvino.py). precision: "auto" (bf16 where the CPU has it,
    else f32), "f32" (parity with the PyTorch reference), "bf16", or "int8" (the
    generators' `<name>.int8.xml` from quantize_int8.py; float layers in bf16/f32).
    """

    def __init__(
        self,
        models_dir: str | Path,
        device: str = "CPU",
        precision: str = "auto",
        *,
        cache_dir: str | Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        inference_threads: int = 0,
        inference_gate: InferenceGate | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.models_dir = Path(models_dir)
        self.device = device
        self.batch_size = batch_size
        self.core: ov.Core = make_core(cache_dir, inference_threads)
        self.precision = resolve_precision(self.core, device, precision)
        quantized = ".int8" if self.precision == "int8" else ""
        self._generators = {
            name: Wav2LipGenerator.from_ir(
                functools.partial(self._network, f"{name}{quantized}.xml")
            )
            for name in GENERATOR_NAMES
        }
        # Per model, the networks `compile()` prepares (a generator: the face encoder and
        # decoder an image needs; its whole network, for videos, compiles on first use).
        self._networks: dict[str, tuple[CompiledNetwork, ...]] = {
            DETECTOR_NAME: (self._network(f"{DETECTOR_NAME}.xml", s3fd_module.add_preprocessing),),
            **{name: (g.encoder, g.decoder) for name, g in self._generators.items()},
        }
        self.detector = S3FDDetector(*self._networks[DETECTOR_NAME])
        # Live batches (the server's real-time sessions) go before this engine's other ones.
        self.inference_gate = inference_gate or InferenceGate()

    def _network(self, filename: str, preprocess) -> CompiledNetwork:
        return CompiledNetwork(
            self.core,
            self.models_dir / filename,
            device=self.device,
            precision=float_precision(self.core, self.device, self.precision),
            preprocess=preprocess,
        )

    # -- models ----------------------------------------------------------------------------

    def model_status(self) -> dict[str, dict]:
        """Per model: whether its files are present, whether it is compiled, compile time."""
        status = {}
        for name, nets in self._networks.items():
            compiled = all(net.compiled for net in nets)
            status[name] = {
                "present": nets[0].present,
                "compiled": compiled,
                "compile_s": sum(net.compile_seconds or 0.0 for net in nets) if compiled else None,
            }
        return status

    def compile(self, names: Sequence[str] | None = None) -> None:
        """Compile the given (default: all present) models now instead of on first use."""
        for name in names or [n for n, nets in self._networks.items() if nets[0].present]:
            for net in self._require(name):
                net.compile()

    def _require(self, name: str) -> tuple[CompiledNetwork, ...]:
        nets = self._networks[name]
        if not nets[0].present:
            raise ModelNotFoundError(name, nets[0].xml_path)
        return nets

    # -- faces -----------------------------------------------------------------------------

    def detect_face(self, img: np.ndarray) -> Rect:
        """Top S3FD detection of a BGR image as integer `(x1, y1, x2, y2)`."""
        return self.detect_faces(as_frames(img))[0]

    def detect_faces(self, frames: np.ndarray, fill_missing: bool = False) -> list[Rect]:
        """Top detection per frame.

        A frame without a face raises FaceNotDetectedError naming it, or with `fill_missing`
        takes the detection of the nearest frame that has one (ties: the earlier frame).
        """
        self._require(DETECTOR_NAME)
        rects = self.detector.detect_best(frames)
        found = [i for i, rect in enumerate(rects) if rect is not None]
        missing = [i for i, rect in enumerate(rects) if rect is None]
        if missing and (not fill_missing or not found):
            where = f" in frame {missing[0]}" if len(frames) > 1 else ""
            raise FaceNotDetectedError(f"no face detected{where}", frame_index=missing[0])
        for i in missing:
            rects[i] = rects[min(found, key=lambda j: abs(j - i))]
        return [rect for rect in rects if rect is not None]  # every frame has one by now

    def face_boxes(
        self,
        frames: np.ndarray,
        pads: tuple[int, int, int, int],
        smooth: bool,
        fill_missing: bool = False,
        source: np.ndarray | None = None,
    ) -> np.ndarray:
        """The reference's `face_detect`: detect, pad, clip, smooth. -> (M, 4) int64.

        `source`: the same frames at a larger size (before `fit_frames`); when the
        detector finds no face in `frames`, it looks in these and scales the detections.
        """
        try:
            rects = self.detect_faces(frames, fill_missing)
        except FaceNotDetectedError:
            if source is None or source.shape[1] <= frames.shape[1] + 1:
                raise  # not reduced (at most an odd row cropped): nothing more to see
            logger.info("no face at %s, detecting at the input's size", frames.shape[1:3])
            rects = [
                scale_rect(r, source.shape, frames.shape)
                for r in self.detect_faces(source, fill_missing)
            ]
        boxes = np.array([pad_box(r, pads, frames.shape[1:]) for r in rects], dtype=np.int64)
        if smooth:
            boxes = smooth_boxes(boxes)
        for index, (y1, y2, x1, x2) in enumerate(boxes):
            if y2 <= y1 or x2 <= x1:
                raise FaceNotDetectedError(f"face box in frame {index} is empty", frame_index=index)
        return boxes

    def prepare_face(
        self,
        face: np.ndarray | Sequence[np.ndarray],
        options: RenderOptions | None = None,
        *,
        max_frames: int | None = None,
        timings: MutableMapping[str, float] | None = None,
    ) -> PreparedFace:
        """Boxes and crops for an image or the first `max_frames` frames of a video.

        The frames are first fitted to `options.quality` (an explicit box is given on the
        input's pixels and scaled with them); the prepared frames are the output's.
        """
        options = options or RenderOptions()
        source = as_frames(face)[:max_frames]
        with timed(timings, "resize"):
            frames = fit_frames(source, options.quality)
        with timed(timings, "detect"):
            if options.box is not None:
                box = validate_box(options.box, source.shape[1:])
                box = scale_box(box, source.shape[2:0:-1], frames.shape[2:0:-1])
                box = validate_box(box, frames.shape[1:])
                boxes = np.tile(np.array(box, dtype=np.int64), (len(frames), 1))
            else:
                boxes = self.face_boxes(
                    frames, options.pads, options.smooth, options.fill_missing_faces, source
                )
            crops = crop_faces(frames, boxes)
        return PreparedFace(frames=frames, boxes=boxes, crops=crops)

    # -- audio -----------------------------------------------------------------------------

    def audio_to_mel_windows(
        self,
        speech: np.ndarray | str | Path | bytes,
        fps: float = 25.0,
        num_frames: int | None = None,
    ) -> np.ndarray:
        """Speech (path, bytes or 16 kHz float array) -> (N, 80, 16) float32 mel windows."""
        return audio.mel_windows(audio.melspectrogram(audio.load_audio(speech)), fps, num_frames)

    # -- lip-sync --------------------------------------------------------------------------

    def generator(self, model: str = "wav2lip") -> Wav2LipGenerator:
        if model not in self._generators:
            raise ValueError(f"model must be one of {GENERATOR_NAMES}, got {model!r}")
        self._require(model)
        return self._generators[model]

    def generate_lip_sync(
        self, face_img: np.ndarray, mel_windows: np.ndarray, model: str = "wav2lip"
    ) -> np.ndarray:
        """Mouths for one face crop (any size, BGR) and N mel windows -> (N, 96, 96, 3) uint8."""
        crop = cv2.resize(as_frames(face_img)[0], (FACE_SIZE, FACE_SIZE))
        generator = self.generator(model)
        features = generator.encode_face(face_input(crop[None]))
        parts = [
            generator.start_with_face(mels, features).wait()
            for mels in batched(mel_windows, self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)

    def batch_starter(
        self,
        prepared: PreparedFace,
        model: str = "wav2lip",
        timings: MutableMapping[str, float] | None = None,
    ) -> BatchStart:
        """`start(mels, idx)` -> the pending mouths of mel windows (B, 80, 16) for the
        prepared frames `idx` (B,): an image's face goes through the face encoder here,
        once, and each batch only through the decoder; video frames through the whole
        network. Each batch first lets pending live batches go (`inference_gate`)."""
        generator = self.generator(model)
        gate = self.inference_gate
        if prepared.num_frames == 1:
            with timed(timings, "infer"):
                features = generator.encode_face(prepared.inputs)

            def start(mels: np.ndarray, idx: np.ndarray) -> Pending:
                gate.before_batch()
                return generator.start_with_face(mels, features)
        else:

            def start(mels: np.ndarray, idx: np.ndarray) -> Pending:
                gate.before_batch()
                return generator.start(mels, prepared.inputs[idx])

        return start

    def iter_frames(
        self,
        prepared: PreparedFace,
        mel_windows: np.ndarray | audio.MelWindows,
        model: str = "wav2lip",
        timings: MutableMapping[str, float] | None = None,
        *,
        blend: str = "soft",
        weights: np.ndarray | None = None,
        first_batch: int | None = None,
        first_frame: int = 0,
        start: BatchStart | None = None,
    ) -> Generator[np.ndarray, None, None]:
        """Yield output frames batch by batch: (k, H, W, 3) uint8 BGR, k <= batch_size
        (or first_batch for the first).

        mel_windows: (N, 80, 16) float32 windows, or `audio.MelWindows` to cut them per batch.
        blend: "soft" (lower face, feathered, colour-matched) or "none" (the reference).
        weights: (N,) float32 generated share per frame (the silence gate's
        `compositing.gate_weights`); frames at 0 are the avatar's own, without inference.
        first_batch: size of the first batch (default batch_size); a small one lets a
        stream show its first frames sooner.
        first_frame: the output index of the first window, when speech arrives in parts
        (`lipsync.live`): a video avatar's frames continue where the last part stopped.
        start: how batches are started (default `batch_starter(prepared, model)`, whole-file
        work: its batches are cut to the `inference_gate`'s `batch_rows`, one frame beside
        an open live session); a caller rendering many parts of one face (`LiveLipSync`,
        the live batcher) passes its own to encode the face once, and is not cut.

        Inference of batch k+1 runs (in OpenVINO's threads) while batch k is pasted and
        handed to the caller, who typically encodes it: the stages overlap. An image's face
        goes through the face encoder once ("infer" in `timings`), video frames through
        the whole network.
        """
        order = frame_order(first_frame + len(mel_windows), prepared.num_frames)[first_frame:]
        bounds: Iterable[tuple[int, int]] = batch_bounds(len(order), self.batch_size, first_batch)
        if start is None:
            start = self.batch_starter(prepared, model, timings)
            bounds = cut_batches(bounds, self.inference_gate.batch_rows)
        if weights is None:
            weights = np.ones(len(order), np.float32)
        elif len(weights) != len(order):
            raise ValueError(f"weights must have {len(order)} values, got {len(weights)}")
        pending: _Batch | None = None
        try:
            for first, stop in itertools.chain(bounds, [(None, 0)]):  # cut as reached
                running = pending
                if first is not None:
                    idx = order[first:stop]
                    share = weights[first : first + len(idx)]
                    active = np.flatnonzero(share > 0)
                    mels = mel_windows[first : first + len(idx)]
                    if len(active) < len(idx):
                        mels = mels[active]
                    batch = start(mels, idx[active]) if len(active) else None
                    pending = _Batch(batch, idx, share, active)
                else:
                    pending = None
                if running is not None:
                    yield self._finish(prepared, running, blend, timings)
        finally:
            if pending is not None and pending.batch is not None:
                pending.batch.wait()  # the caller stopped early: let the request finish

    @staticmethod
    def _finish(
        prepared: PreparedFace,
        running: _Batch,
        blend: str,
        timings: MutableMapping[str, float] | None,
    ) -> np.ndarray:
        # Fancy indexing copies, so the pasted frames never alias the prepared ones.
        frames = prepared.frames[running.idx]
        if running.batch is None:
            return frames
        with timed(timings, "infer"):
            mouths = running.batch.wait()
        with timed(timings, "paste"):
            for position, mouth in zip(running.active, mouths, strict=True):
                source = running.idx[position]
                compositing.paste_face(
                    frames[position],
                    prepared.boxes[source],
                    mouth,
                    prepared.crops[source],
                    blend,
                    float(running.share[position]),
                )
        return frames

    def render(
        self,
        face: np.ndarray | Sequence[np.ndarray],
        speech: np.ndarray | str | Path | bytes,
        *,
        fps: float = 25.0,
        pads: tuple[int, int, int, int] = DEFAULT_PADS,
        box: FaceBox | None = None,
        smooth: bool = True,
        model: str = "wav2lip",
        num_frames: int | None = None,
        blend: str = "soft",
        quality: str = "standard",
    ) -> np.ndarray:
        """Full frames with synced lips: (N, h, w, 3) uint8 BGR at `quality`'s output size.

        face: BGR image or video frames; speech: path, bytes or 16 kHz float array; box:
        explicit `(top, bottom, left, right)` on the input that skips detection. N follows
        the reference's mel windowing unless `num_frames` asks for an exact count.
        `blend="none"` with frames inside the quality's bounds is the reference exactly.
        """
        options = RenderOptions(
            fps=fps,
            pads=(*pads,),
            box=None if box is None else (*box,),
            smooth=smooth,
            model=model,
            blend=blend,
            quality=quality,
        )
        mel_windows = self.audio_to_mel_windows(speech, options.fps, num_frames)
        prepared = self.prepare_face(face, options, max_frames=len(mel_windows))
        batches = self.iter_frames(prepared, mel_windows, options.model, blend=options.blend)
        return np.concatenate(list(batches))
