"""The PyTorch baseline child: the reference pipeline in PyTorch
(lipsync/networks/reference_pipeline.py), with the reference's way of writing the video, and
Wav2Lip frames/s at batch 16.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.models import ROOT
from bench.precision import micro_inputs
from bench.stages import fps_stats
from lipsync.media.encode import frame_rate
from lipsync.util import timed

TORCH_BATCH = 16


def torch_networks(models_dir: Path):
    """The PyTorch Wav2Lip and S3FD built from the checkpoints the IR was converted from."""
    from lipsync.conversion import checkpoints  # torch: only in this child, never in a measured one

    ckpt = models_dir / "untrained-checkpoints"
    if not ckpt.is_dir():
        ckpt = ROOT / "checkpoints"
    wav2lip = checkpoints.build_wav2lip(checkpoints.load_wav2lip_state_dict(ckpt / "wav2lip.pth"))
    s3fd = checkpoints.build_s3fd(checkpoints.load_s3fd_state_dict(ckpt / "s3fd.pth"))
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

    from lipsync import audio
    from lipsync.networks import reference_pipeline as ref

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
