"""Utility metrics against known values."""

import math

import numpy as np
import pytest
import skimage.data
import torch

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.metrics import (
    detect_people,
    foreground_masks,
    masked_scores,
    match_detections,
    mse,
    noise_aware_occupancy,
    occupancy,
    occupancy_agreement,
    psnr,
    ssim,
)


def test_mse_psnr_ssim_known_values():
    a = torch.full((3, 32, 32), 100, dtype=torch.uint8)
    b = a + 10
    assert mse(a, b) == 100.0
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))  # 28.13 dB
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)
    assert ssim(photo, photo) == pytest.approx(1.0)
    assert 0 < ssim(photo, DPPixelize(1.0, 8, seed=0)(photo)) < 0.9
    assert psnr(a.float() / 255, b.float() / 255) == pytest.approx(psnr(a, b), abs=1e-4)


def test_scores_inside_and_outside_a_matte():
    a = torch.zeros(3, 10, 10, dtype=torch.uint8)
    b = a.clone()
    b[:, :5] = 20  # error only in the top half
    matte = torch.zeros(10, 10)
    matte[:5] = 1.0
    scores = masked_scores(a, b, matte)
    assert scores["inside_mse"] == 400 and scores["outside_mse"] == 0 and scores["outside_psnr"] == math.inf


def moving_square(n=12, size=(48, 64), offset=0):
    frames = []
    for t in range(n):
        f = torch.full((3, *size), 90, dtype=torch.uint8)
        x = 4 + 3 * t + offset
        f[:, 16:32, x : x + 12] = 230
        frames.append(f)
    return frames


def test_occupancy_of_a_moving_object():
    masks = foreground_masks(moving_square())
    assert masks[-1][16:32].any() and not masks[-1][:8].any()
    grid = occupancy(masks[-1], 16)
    assert grid.shape == (3, 4) and grid[1].any() and not grid[0].any()
    same = occupancy_agreement(moving_square(), moving_square(), cell=16)
    assert (same.iou, same.accuracy, same.density_error) == (1.0, 1.0, 0.0)
    shifted = occupancy_agreement(moving_square(), moving_square(offset=20), cell=16)
    assert shifted.iou < 0.7 and shifted.accuracy < 1.0


def test_detection_matching_at_iou_half():
    reference = torch.tensor([[0, 0, 10, 20], [50, 50, 60, 70]], dtype=torch.float32)
    predicted = torch.tensor([[1, 1, 11, 21], [100, 100, 110, 120], [0, 0, 10, 20]], dtype=torch.float32)
    score = match_detections(predicted, reference)
    assert (score.true_positives, score.precision, score.recall) == (1, 1 / 3, 0.5)  # each reference matched once
    assert math.isnan(match_detections(torch.zeros(0, 4), torch.zeros(0, 4)).recall)


def test_hog_detector_returns_xyxy_boxes():
    boxes = detect_people(torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1))
    assert boxes.ndim == 2 and boxes.shape[1] == 4
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    assert np.isfinite(boxes.numpy()).all()


@pytest.mark.parametrize("channels", [2, 4])
@pytest.mark.parametrize("reader", ["background", "change"])
def test_noise_aware_occupancy_of_protected_releases_of_2_or_4_channels(channels, reader):
    """Issue 28, finding 8: ``noise_aware_occupancy`` raised cv2.error on protected releases of 2 or 4 channels
    (grey with alpha, RGBA). Both readers read them: the protected block counts as occupied in every frame."""
    video = torch.full((8, channels, 64, 64), 128, dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[40:50, 10:20] = True  # inside the protected 32-px block (1, 0)
    grid = RegionAdaptiveDPPixelize(5.0, levels=(8, 32), protect=True, seed=0).release(video, mask=mask)
    occupied = noise_aware_occupancy([grid], reader=reader)
    assert occupied.shape == (8, 2, 2) and occupied[:, 1, 0].all()
