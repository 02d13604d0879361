"""The look of the paste-back, measured: soft lower-face mask, no seam, colour matching,
the silence gate's cross-fade. Synthetic frames and faces; no models needed."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lipsync import compositing
from lipsync.compositing import gate_weights, lower_face_mask, match_colour, paste_face

SKIN = (110, 140, 190)  # BGR
FRAME_SHAPE = (720, 1280, 3)
BOX = (200, 500, 520, 780)  # (top, bottom, left, right): 300 x 260, a 720p face


def textured_frame(seed: int = 0, amplitude: float = 6.0) -> np.ndarray:
    """A skin-coloured 720p frame with smooth texture (blurred noise): (720, 1280, 3) uint8."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, FRAME_SHAPE[:2]).astype(np.float32)
    texture = cv2.GaussianBlur(noise, (0, 0), 3.0)
    texture *= amplitude / texture.std()
    frame = np.array(SKIN, np.float32) + texture[..., None]
    return np.clip(frame, 0, 255).round().astype(np.uint8)


def crop_of(frame: np.ndarray, box=BOX) -> np.ndarray:
    top, bottom, left, right = box
    return cv2.resize(frame[top:bottom, left:right], (96, 96))


def max_neighbour_step(image: np.ndarray, where: np.ndarray | None = None) -> int:
    """Largest absolute difference between horizontally or vertically adjacent pixels (any
    channel); with `where` (H, W) bool, only pairs with at least one pixel in it."""
    image = image.astype(np.int16)
    dx = np.abs(np.diff(image, axis=1)).max(axis=-1)
    dy = np.abs(np.diff(image, axis=0)).max(axis=-1)
    if where is not None:
        dx = dx[where[:, 1:] | where[:, :-1]]
        dy = dy[where[1:] | where[:-1]]
    return int(max(dx.max(), dy.max()))


def box_mask_in_frame(box=BOX) -> np.ndarray:
    """The soft mask placed in a frame: (720, 1280) float32, 0 outside the box."""
    top, bottom, left, right = box
    full = np.zeros(FRAME_SHAPE[:2], np.float32)
    full[top:bottom, left:right] = lower_face_mask(bottom - top, right - left)
    return full


@pytest.mark.parametrize("size", [(96, 96), (300, 260), (41, 57), (7, 5)])
def test_mask_is_zero_on_the_border_and_above_the_nose(size):
    height, width = size
    mask = lower_face_mask(height, width)
    assert mask.shape == size and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    assert (mask[0] == 0).all() and (mask[-1] == 0).all()
    assert (mask[:, 0] == 0).all() and (mask[:, -1] == 0).all()
    assert (mask[: int(compositing.MASK_TOP * (height - 1)) + 1] == 0).all()
    if min(size) >= 41:
        assert mask[int(0.8 * height), width // 2] == 1.0  # the mouth takes generated pixels


def test_feather_scales_with_the_box():
    def ramp_width(height: int, width: int) -> int:
        row = lower_face_mask(height, width)[int(0.8 * height)]
        return int(np.count_nonzero((row > 0) & (row < 1)))

    small, large = ramp_width(100, 100), ramp_width(400, 400)
    assert small >= 4 and 3.5 * small <= large <= 4.5 * small


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_outside_the_mask_every_pixel_equals_the_input(weight):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
    original = frame.copy()
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    paste_face(frame, BOX, face, crop_of(original), "soft", weight)
    outside = box_mask_in_frame() == 0
    assert (frame[outside] == original[outside]).all()
    inside = box_mask_in_frame() == 1
    assert (frame[inside] != original[inside]).any(axis=-1).mean() > 0.9  # it did paste


@pytest.mark.parametrize("box", [BOX, (300, 400, 600, 690)])  # a 720p face, a small one
def test_no_seam_across_the_mask_edge_with_a_flat_generated_face(box):
    frame = textured_frame()
    original = frame.copy()
    texture_step = max_neighbour_step(original)
    flat = np.full((96, 96, 3), np.subtract(SKIN, 35), np.uint8)  # a face 35 levels darker
    paste_face(frame, box, flat, crop_of(original, box), "soft")
    edge = (box_mask_in_frame(box) > 0) & (box_mask_in_frame(box) < 1)
    assert max_neighbour_step(frame, edge) <= texture_step

    hard = original.copy()  # the reference's paste: the box outline is a step of ~35
    paste_face(hard, box, flat, crop_of(original, box), "none")
    box_edge = np.zeros(FRAME_SHAPE[:2], bool)
    top, bottom, left, right = box
    box_edge[top:bottom, left:right] = True
    box_edge[top + 1 : bottom - 1, left + 1 : right - 1] = False
    assert max_neighbour_step(hard, box_edge) > texture_step + 20


def test_colour_is_matched_to_the_surrounding_skin():
    frame = textured_frame(seed=2)
    original = frame.copy()
    flat = np.full((96, 96, 3), np.subtract(SKIN, 35), np.uint8)
    paste_face(frame, BOX, flat, crop_of(original), "soft")
    lower_face = box_mask_in_frame() == 1
    step = np.abs(frame[lower_face].mean(axis=0) - original[lower_face].mean(axis=0))
    assert step.max() < 2.0, step  # without matching it would be 35


def test_colour_matching_leaves_a_face_already_in_tone():
    crop = crop_of(textured_frame(seed=3))
    assert match_colour(crop, crop) is crop
    shifted = cv2.add(crop, (20, -10, 5, 0), dtype=cv2.CV_8U)
    matched = match_colour(shifted, crop).astype(int)
    assert np.abs(matched.mean(axis=(0, 1)) - crop.mean(axis=(0, 1))).max() < 1.0


def test_blend_none_is_the_reference_paste():
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
    face = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    expected = frame.copy()
    top, bottom, left, right = BOX
    expected[top:bottom, left:right] = cv2.resize(face, (right - left, bottom - top))
    paste_face(frame, BOX, face, crop_of(frame), "none")
    np.testing.assert_array_equal(frame, expected)


def test_gate_weights_fade_monotonically_around_speech():
    silent = np.array([1] * 6 + [0] * 3 + [1] * 8 + [0] + [1] * 2, bool)
    weights = gate_weights(silent, fade_frames=3)
    assert weights.dtype == np.float32 and weights.shape == silent.shape
    assert (weights[~silent] == 1).all()
    # Three fade frames before speech starts at frame 6: 0.25, 0.5, 0.75, then 1.
    np.testing.assert_allclose(weights[:7], [0, 0, 0, 0.25, 0.5, 0.75, 1.0])
    fade_out = weights[8:13]
    assert (np.diff(fade_out) <= 0).all() and fade_out[-1] == 0  # frame 12 is 4 from speech
    # Between two voiced runs the fade goes down and comes back up: never a jump.
    assert np.abs(np.diff(weights)).max() <= 1 / (3 + 1) + 1e-6


def test_gate_weights_edge_cases():
    assert (gate_weights(np.ones(5, bool), 3) == 0).all()
    assert (gate_weights(np.zeros(5, bool), 3) == 1).all()
    assert gate_weights(np.zeros(0, bool), 3).shape == (0,)
    np.testing.assert_array_equal(gate_weights(np.array([1, 0, 1], bool), 0), [0, 1, 0])


def test_cross_fade_moves_monotonically_from_the_original_to_the_generated_face():
    frame = textured_frame(seed=5)
    face = np.full((96, 96, 3), (40, 60, 200), np.uint8)  # far from skin: a visible mouth
    distances = []
    for weight in (0.25, 0.5, 0.75, 1.0):
        out = frame.copy()
        paste_face(out, BOX, face, crop_of(frame), "soft", weight)
        distances.append(np.abs(out.astype(int) - frame).sum())
    assert (np.diff(distances) > 0).all()


def test_blend_none_cross_fades_the_whole_box():
    frame = np.zeros((100, 100, 3), np.uint8)
    face = np.full((96, 96, 3), 200, np.uint8)
    paste_face(frame, (10, 50, 20, 60), face, face, "none", 0.5)
    assert (frame[10:50, 20:60] == 100).all()
    frame[10:50, 20:60] = 0
    assert not frame.any()  # nothing outside the box


@pytest.mark.parametrize("blend", ["soft", "none"])
@pytest.mark.parametrize("box", [BOX, (10, 41, 3, 50), (0, 96, 0, 96)])
def test_paste_changes_nothing_outside_the_pasted_region(blend, box):
    """What patch output sends (`pasted_region`) covers every pixel the paste changes, and
    for "soft" starts below the rows the mask keeps."""
    frame = textured_frame(1)
    face = np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    pasted = frame.copy()
    paste_face(pasted, box, face, crop_of(frame, box), blend)
    top, bottom, left, right = compositing.pasted_region(box, blend)
    outside = np.ones(frame.shape[:2], bool)
    outside[top:bottom, left:right] = False
    assert np.array_equal(pasted[outside], frame[outside])
    changed_rows = np.flatnonzero((pasted != frame).any(axis=(1, 2)))
    assert changed_rows.min() - top <= 2 and bottom - changed_rows.max() <= 4  # and tight
    assert (top > box[0]) == (blend == "soft")
