"""S3FD decoding, NMS and the reference's box rules, on hand-made score maps."""

import math

import numpy as np
import pytest

from lipsync.face_detection import boxes


def head_outputs(size: int = 64, batch: int = 1) -> list[np.ndarray]:
    """Zero-offset regression and confidently-background logits for every head."""
    outputs = []
    for stride in boxes.STRIDES:
        cells = max(1, size // stride)
        cls = np.zeros((batch, 2, cells, cells), np.float32)
        cls[:, 0] = 10.0  # background logit: p(face) ~ 4.5e-5
        outputs += [cls, np.zeros((batch, 4, cells, cells), np.float32)]
    return outputs


def set_face(outputs, level, row, col, logit, reg=(0, 0, 0, 0), image=0):
    outputs[2 * level][image, :, row, col] = (0.0, logit)
    outputs[2 * level + 1][image, :, row, col] = reg


def test_face_probability_is_the_two_class_softmax():
    logits = np.random.default_rng(0).normal(0, 3, (2, 2, 5, 7)).astype(np.float32)
    expected = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(boxes.face_probability(logits), expected, rtol=1e-6, atol=1e-7)


def test_decode_places_a_zero_offset_prior_on_its_cell():
    outputs = head_outputs()
    set_face(outputs, level=1, row=2, col=3, logit=4.0)  # stride 8, anchor 32
    (dets,) = boxes.decode_detections(outputs, threshold=0.5)
    centre_x, centre_y = 8 / 2 + 3 * 8, 8 / 2 + 2 * 8
    np.testing.assert_allclose(
        dets[0, :4], [centre_x - 16, centre_y - 16, centre_x + 16, centre_y + 16]
    )
    assert dets[0, 4] == pytest.approx(1 / (1 + math.exp(-4.0)), rel=1e-6)
    assert len(dets) == 1


def test_decode_applies_variances_to_offsets():
    outputs = head_outputs()
    set_face(outputs, level=0, row=1, col=1, logit=3.0, reg=(1.0, -2.0, math.log(2) / 0.2, 0.0))
    (dets,) = boxes.decode_detections(outputs, threshold=0.5)
    # stride 4: prior centre (6, 6), anchor 16; centre moves by (0.1 * 16, -0.2 * 16).
    cx, cy, w, h = 6 + 1.6, 6 - 3.2, 32.0, 16.0
    np.testing.assert_allclose(
        dets[0, :4], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], rtol=1e-5
    )


def test_decode_keeps_images_of_a_batch_apart():
    outputs = head_outputs(batch=2)
    set_face(outputs, level=2, row=0, col=1, logit=2.0, image=1)
    first, second = boxes.decode_detections(outputs, threshold=0.5)
    assert len(first) == 0 and len(second) == 1


def test_decode_rejects_a_wrong_number_of_heads():
    with pytest.raises(ValueError, match="12 S3FD outputs"):
        boxes.decode_detections(head_outputs()[:10])


def test_nms_suppresses_overlaps_above_threshold_only():
    dets = np.array(
        [
            [0, 0, 99, 99, 0.9],
            [10, 0, 109, 99, 0.8],  # IoU with the first ~0.82: suppressed
            [70, 0, 169, 99, 0.7],  # IoU with the first ~0.18: kept
            [300, 300, 310, 310, 0.95],
        ],
        np.float32,
    )
    assert boxes.nms(dets, 0.3).tolist() == [3, 0, 2]


def literal_reference_faces(dets):
    """NMS over every candidate, then the > 0.5 filter, as the reference orders it."""
    kept = dets[boxes.nms(dets, 0.3)]
    return kept[kept[:, 4] > 0.5]


@pytest.mark.parametrize("seed", range(5))
def test_filtering_before_nms_matches_the_reference_order(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (300, 2))
    wh = rng.uniform(5, 80, (300, 2))
    dets = np.column_stack([xy, xy + wh, rng.uniform(0.05, 1, 300)]).astype(np.float32)
    np.testing.assert_array_equal(boxes.faces_from_detections(dets), literal_reference_faces(dets))


def test_best_face_is_the_first_reference_face_clipped_and_truncated():
    dets = np.array(
        [[-3.7, 10.9, 50.2, 60.99, 0.7], [5, 5, 9, 9, 0.95], [6, 6, 9, 9, 0.3]], np.float32
    )
    assert boxes.best_face(dets) == (5, 5, 9, 9)
    top = literal_reference_faces(dets[[0, 2]])[0]
    assert boxes.best_face(dets[[0, 2]]) == tuple(int(v) for v in np.clip(top[:4], 0, None))
    assert boxes.best_face(dets[[0, 2]]) == (0, 10, 50, 60)


def test_best_face_requires_a_score_above_one_half():
    assert boxes.best_face(np.array([[0, 0, 10, 10, 0.5]], np.float32)) is None
    assert boxes.best_face(np.zeros((0, 5), np.float32)) is None


def test_pad_box_pads_and_clips_to_the_image():
    assert boxes.pad_box((10, 20, 30, 40), (5, 10, 3, 4), (100, 200, 3)) == (15, 50, 7, 34)
    assert boxes.pad_box((1, 2, 195, 99), (5, 10, 3, 8), (100, 200, 3)) == (0, 100, 0, 200)


def literal_reference_smoothing(boxes_in, window=5):
    out = np.array(boxes_in)
    for i in range(len(out)):
        win = out[len(out) - window :] if i + window > len(out) else out[i : i + window]
        out[i] = np.mean(win, axis=0)
    return out


@pytest.mark.parametrize("n", [5, 6, 9, 17])
def test_smoothing_matches_the_reference_loop(n):
    rng = np.random.default_rng(n)
    raw = rng.integers(0, 500, (n, 4))
    np.testing.assert_array_equal(boxes.smooth_boxes(raw), literal_reference_smoothing(raw))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_smoothing_short_sequences_uses_all_boxes_as_the_window(n):
    # The reference would slice boxes[n - 5:], a negative start; here the window is all boxes.
    raw = np.random.default_rng(n).integers(0, 500, (n, 4))
    smoothed = boxes.smooth_boxes(raw)
    assert smoothed.dtype == np.int64
    assert (smoothed[0] == raw.mean(axis=0).astype(np.int64)).all()
    np.testing.assert_array_equal(smoothed, literal_reference_smoothing(raw, window=n))


def test_validate_box():
    assert boxes.validate_box((1, 5, 2, 8), (10, 10, 3)) == (1, 5, 2, 8)
    for bad in [(5, 5, 0, 4), (0, 11, 0, 4), (-1, 4, 0, 4), (0, 4, 6, 2), (0, 4, 0)]:
        with pytest.raises(ValueError, match="box"):
            boxes.validate_box(bad, (10, 10, 3))
