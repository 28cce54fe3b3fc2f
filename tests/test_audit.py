"""The empirical audit: its lower bound stays within ε for correct layers and catches mis-calibrated ones.

Each bound holds at 99.9% confidence, so a correct mechanism fails a check with probability < 1e-3 (for a random
seed). The mis-calibrated mechanisms really have ε = 2 or 3 while claiming 1, so their bounds land near 2 and 3.
"""

import pytest
import torch

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.audit import AuditResult, audit, worst_case_pair

CONFIDENCE = 0.999


@pytest.mark.parametrize("noise", ["discrete", "laplace"])
@pytest.mark.parametrize(
    "make",
    [
        lambda noise: DPPixelize(1.0, 4, noise=noise, seed=0),
        lambda noise: DPPixelize(1.0, 8, 4, noise=noise, border="zero_pad", seed=1),
        lambda noise: RegionAdaptiveDPPixelize(
            0.7, levels=(4, 8), region="complexity", partition_epsilon=0.3, noise=noise, seed=2
        ),
    ],
    ids=["uniform", "uniform-m4-zero_pad", "adaptive-complexity"],
)
def test_bound_stays_within_epsilon_for_correct_layers(make, noise):
    layer = make(noise)
    m = layer.guarantee.m
    result = audit(layer, m=m, samples=100_000, confidence=CONFIDENCE)
    assert isinstance(result, AuditResult) and result.epsilon_claimed == 1.0
    assert result.consistent, str(result)
    assert result.epsilon_lower_bound > 0.5  # and the audit has power: it certifies most of the ε


@pytest.mark.parametrize("noise", ["discrete", "laplace"])
def test_adaptive_mask_layer_on_a_pair_straddling_fine_and_coarse_cells(noise):
    x = torch.zeros(1, 8, 16, dtype=torch.uint8)
    y = x.clone()
    y[0, 0, 0] = y[0, 0, 15] = 255  # m = 2: one pixel in a fine 4×4 cell, one in the coarse 8×8 cell
    mask = torch.zeros(8, 16, dtype=torch.bool)
    mask[:, :8] = True
    layer = RegionAdaptiveDPPixelize(1.0, 2, levels=(4, 8), noise=noise, seed=3)
    result = audit(
        lambda batch: layer.release(batch, mask=mask).restore(),
        x,
        y,
        epsilon=1.0,
        samples=200_000,
        confidence=CONFIDENCE,
    )
    assert result.consistent and result.epsilon_lower_bound > 0.8, str(result)
    half_noise = RegionAdaptiveDPPixelize(2.0, 2, levels=(4, 8), noise=noise, seed=3)
    caught = audit(
        lambda batch: half_noise.release(batch, mask=mask).restore(),
        x,
        y,
        epsilon=1.0,
        samples=200_000,
        confidence=CONFIDENCE,
    )
    assert caught.epsilon_lower_bound > 1.5, str(caught)


@pytest.mark.parametrize(
    ("layer", "truth"),
    [
        (DPPixelize(2.0, 4, seed=0), 2.0),  # noise at half the scale
        (DPPixelize(1.0, 4, channel_rule="per_channel", seed=0), 3.0),
    ],  # C = 3 treated as C = 1
    ids=["half-noise", "C-as-1"],
)
def test_mis_calibrated_mechanisms_are_caught(layer, truth):
    result = audit(layer, epsilon=1.0, samples=100_000, confidence=CONFIDENCE)
    assert not result.consistent and result.epsilon_lower_bound > 1.0 + 0.6 * (truth - 1.0), str(result)
    assert "VIOLATES" in str(result)


def test_worst_case_pair_packs_m_pixels_into_one_cell():
    x, y = worst_case_pair((3, 16, 16), m=5, b=4)
    changed = (x != y).any(0)
    assert changed.sum() == 5 and changed[:4, :4].sum() == 5 and (y[:, changed] == 255).all()
    with pytest.raises(ValueError, match="cannot hold"):
        worst_case_pair((1, 4, 4), m=17, b=4)


def test_audit_rejects_identical_images():
    x = torch.zeros(1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="identical"):
        audit(DPPixelize(1.0, 4), x, x.clone())
