"""The reference's inference, done the reference's way: PyTorch, librosa and per-cell loops.

An oracle for parity tests and the baseline of the benchmark. It follows Rudrabha/Wav2Lip
`inference.py` step by step (librosa STFT with reflect padding as librosa 0.7 did,
softmax + per-cell prior decoding of S3FD, NMS, pads, 5-frame smoothing, batches of 128,
bilinear resizes, uint8 truncation) but shares no code with the OpenVINO serving path.
"""

from __future__ import annotations

import math

import cv2
import librosa
import numpy as np
import torch

# Reference hyperparameters (hparams.py of the reference), repeated on purpose: the oracle
# must not read the serving code's constants.
SR, N_FFT, HOP, WIN, N_MELS, FMIN, FMAX = 16000, 800, 200, 800, 80, 55, 7600
PRE, REF_DB, MIN_DB, MAX_ABS = 0.97, 20.0, -100.0, 4.0
MEL_STEP, IMG_SIZE = 16, 96


def mel(wav: np.ndarray) -> np.ndarray:
    """(80, T) normalised log-mel, computed with librosa."""
    emphasised = np.append(wav[0], wav[1:] - PRE * wav[:-1])
    spec = np.abs(
        librosa.stft(y=emphasised, n_fft=N_FFT, hop_length=HOP, win_length=WIN, pad_mode="reflect")
    )
    basis = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
    db = 20 * np.log10(np.maximum(math.pow(10, MIN_DB / 20), basis @ spec)) - REF_DB
    return np.clip(2 * MAX_ABS * (db - MIN_DB) / -MIN_DB - MAX_ABS, -MAX_ABS, MAX_ABS)


def mel_windows(spectrogram: np.ndarray, fps: float) -> list[np.ndarray]:
    """The reference's chunking loop, literally."""
    chunks, i, step = [], 0, 80.0 / fps
    while True:
        start = int(i * step)
        if start + MEL_STEP > spectrogram.shape[1]:
            chunks.append(spectrogram[:, spectrogram.shape[1] - MEL_STEP :])
            return chunks
        chunks.append(spectrogram[:, start : start + MEL_STEP])
        i += 1


def _iou_suppress(dets: torch.Tensor, thresh: float = 0.3) -> list[int]:
    """Greedy NMS over a full pairwise IoU matrix (inclusive pixel areas)."""
    order = torch.argsort(dets[:, 4], descending=True)
    boxes = dets[order, :4]
    lo = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    hi = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (hi - lo + 1).clamp(min=0).prod(dim=2)
    area = (boxes[:, 2:] - boxes[:, :2] + 1).prod(dim=1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    alive = torch.ones(len(order), dtype=torch.bool)
    kept = []
    for i in range(len(order)):
        if alive[i]:
            kept.append(int(order[i]))
            alive &= iou[i] <= thresh
            alive[: i + 1] = False
    return kept


@torch.no_grad()
def detect(
    s3fd: torch.nn.Module, images: list[np.ndarray]
) -> list[tuple[int, int, int, int] | None]:
    """Top face per BGR image as integer (x1, y1, x2, y2), or None."""
    batch = np.asarray(images)[..., ::-1] - np.array([104, 117, 123])
    outputs = s3fd(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).float())
    results: list[tuple[int, int, int, int] | None] = []
    for b in range(len(images)):
        cells = []
        for level in range(6):
            prob = torch.softmax(outputs[2 * level], dim=1)[b, 1]
            reg = outputs[2 * level + 1][b]
            stride = 2 ** (level + 2)
            for h, w in zip(*np.where(prob.numpy() > 0.05), strict=True):
                prior = torch.tensor(
                    [stride / 2 + w * stride, stride / 2 + h * stride, 4.0 * stride, 4.0 * stride]
                )
                loc = reg[:, h, w]
                centre = prior[:2] + loc[:2] * 0.1 * prior[2:]
                size = prior[2:] * torch.exp(loc[2:] * 0.2)
                corner = centre - size / 2
                cells.append(torch.cat([corner, corner + size, prob[h, w].view(1)]))
        if not cells:
            results.append(None)
            continue
        dets = torch.stack(cells)
        faces = [i for i in _iou_suppress(dets) if dets[i, 4] > 0.5]
        if not faces:
            results.append(None)
            continue
        x1, y1, x2, y2 = (int(v) for v in np.clip(dets[faces[0], :4].numpy(), 0, None))
        results.append((x1, y1, x2, y2))
    return results


def face_boxes(s3fd, frames, pads, smooth: bool) -> list[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) per frame: detect, pad, clip, then the reference's 5-frame smoothing."""
    boxes = []
    for rect, frame in zip(detect(s3fd, frames), frames, strict=True):
        if rect is None:
            raise ValueError("Face not detected!")
        x1, y1, x2, y2 = rect
        h, w = frame.shape[:2]
        boxes.append(
            [max(0, x1 - pads[2]), max(0, y1 - pads[0]), min(w, x2 + pads[3]), min(h, y2 + pads[1])]
        )
    arr = np.array(boxes)
    if smooth:
        for i in range(len(arr)):
            window = arr[len(arr) - 5 :] if i + 5 > len(arr) else arr[i : i + 5]
            arr[i] = np.mean(window, axis=0)
    return [(y1, y2, x1, x2) for x1, y1, x2, y2 in arr]


@torch.no_grad()
def render(
    wav2lip: torch.nn.Module,
    s3fd: torch.nn.Module,
    frames: list[np.ndarray],
    wav: np.ndarray,
    *,
    fps: float = 25.0,
    pads=(0, 10, 0, 0),
    box=None,
    smooth: bool = True,
    batch_size: int = 128,
) -> np.ndarray:
    """Frames with generated mouths, (N, H, W, 3) uint8, as the reference would write them."""
    chunks = mel_windows(mel(wav), fps)
    frames = frames[: len(chunks)]
    coords = (
        [tuple(box)] * len(frames) if box is not None else face_boxes(s3fd, frames, pads, smooth)
    )
    out = []
    for start in range(0, len(chunks), batch_size):
        idx = [i % len(frames) for i in range(start, min(start + batch_size, len(chunks)))]
        faces = np.asarray(
            [
                cv2.resize(frames[i][y1:y2, x1:x2], (IMG_SIZE, IMG_SIZE))
                for i in idx
                for y1, y2, x1, x2 in [coords[i]]
            ]
        )
        masked = faces.copy()
        masked[:, IMG_SIZE // 2 :] = 0
        img = np.concatenate((masked, faces), axis=3) / 255.0
        mels = np.asarray(chunks[start : start + len(idx)])[:, None]
        pred = wav2lip(torch.FloatTensor(mels), torch.FloatTensor(img.transpose(0, 3, 1, 2)))
        pred = pred.numpy().transpose(0, 2, 3, 1) * 255.0
        for p, i in zip(pred, idx, strict=True):
            y1, y2, x1, x2 = coords[i]
            frame = frames[i].copy()
            frame[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
            out.append(frame)
    return np.asarray(out)
