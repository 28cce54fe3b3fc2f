"""Calibration: the released cell means have exactly the noise variance SPEC §2 prescribes.

On a constant mid-grey image nothing is clipped, so a cell's released mean is ``v + noise/d`` with d = n_c (area) or
b² (zero_pad), and the noise on the sum has scale ``t = C·R·m/ε``: variance 2t² (Laplace) or 2a/(1-a)², a = e^(-1/t)
(discrete Laplace). uint8 outputs add rounding to the grey level (variance ≈ 1/12).

Statistics: each case compares the sample variance of n ≥ 64,000 released means with the formula. For Laplace-like
noise (kurtosis 6) the relative standard error of the sample variance is sqrt(5/n) ≤ 0.9%; the tolerance is 5 standard
errors, so a correct implementation fails a case with probability < 1e-6 (all cases together < 1e-4). Every
mis-calibration SPEC warns about (C = 1 instead of 3, n_c instead of b², m ignored) moves the variance by ≥ 4×.
"""

import math

import pytest
import torch

from dp_pixel_torch import DPPixelize
from dp_pixel_torch.noise import discrete_laplace_variance

from conftest import generator


def rounded_laplace_moments(scale: float) -> tuple[float, float]:
    """Exact variance and kurtosis of round(Y), Y ~ Laplace(0, scale): P(0) = 1 - e^(-1/(2·scale)) and
    P(±k) = (e^(-(k-1/2)/scale) - e^(-(k+1/2)/scale))/2. (Sheppard's 2s² + 1/12 does not hold for a cusp on an
    integer: at scale 0.625 it says 0.8646, the law has 0.8478.)"""
    k = torch.arange(1, int(80 * scale) + 40, dtype=torch.float64)
    p = 0.5 * (torch.exp(-(k - 0.5) / scale) - torch.exp(-(k + 0.5) / scale))
    variance = 2 * (k**2 * p).sum().item()
    return variance, 2 * (k**4 * p).sum().item() / variance**2


B = 4
K = 32  # full cells per side; the image is 4K + 2 pixels, so the last row and column of cells are 2 pixels thick
SIDE = B * K + 2
MEAN_STD = 6.0  # target std of a released mean, in grey levels: far from 0 and 255, so nothing is clipped


def expected_variance(noise: str, scale_levels: float, d: float, uint8: bool) -> float:
    """Variance of a released mean in grey levels, for noise of scale ``scale_levels`` (grey levels) on the sum."""
    var = discrete_laplace_variance(scale_levels) if noise == "discrete" else 2 * scale_levels**2
    return var / d**2 + (1 / 12 if uint8 else 0.0)


def released_means(layer: DPPixelize, dtype: torch.dtype, channels: int, n: int, device) -> torch.Tensor:
    """One value per (image, channel, cell): the top-left pixel of each cell, in grey levels."""
    x = torch.full((n, channels, SIDE, SIDE), 128, dtype=torch.uint8, device=device)
    if dtype != torch.uint8:
        x = x.to(dtype) / 255
    out = layer(x)
    assert out.dtype == dtype
    return out[..., ::B, ::B].double() * (1 if dtype == torch.uint8 else 255)


@pytest.mark.parametrize("noise", ["laplace", "discrete"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("border", ["area", "zero_pad"])
@pytest.mark.parametrize("m", [1, 3])
def test_cell_mean_variance_matches_formula(noise, dtype, channels, border, m, device):
    n_images = 1000 if channels == 1 else 400
    for where in ("interior", "edge"):
        d_true = B * B if where == "interior" else B * 2
        d = d_true if border == "area" else B * B
        # Choose ε so that the released mean has std MEAN_STD: scale/d = MEAN_STD/sqrt(2).
        scale_levels = MEAN_STD / math.sqrt(2) * d
        epsilon = channels * 255 * m / scale_levels
        layer = DPPixelize(epsilon, B, m, noise=noise, border=border, generator=generator(device, 7))
        grid = released_means(layer, dtype, channels, n_images, device)
        if where == "interior":
            means = grid[..., :K, :K].flatten()
        else:  # right column and bottom row of 4×2 and 2×4 cells (the 2×2 corner is left out)
            means = torch.cat([grid[..., :K, K].flatten(), grid[..., K, :K].flatten()])
        assert means.numel() >= 64_000
        true_mean = 128.0 * d_true / d
        var = means.var().item()
        want = expected_variance(noise, scale_levels, d, dtype == torch.uint8)
        tolerance = 5 * math.sqrt(5 / means.numel())
        assert abs(means.mean().item() - true_mean) < 5 * math.sqrt(want / means.numel()) + 0.5 * (dtype == torch.uint8)
        assert abs(var / want - 1) < tolerance, f"{where}: variance {var:.3f}, formula {want:.3f}"


def test_per_channel_rule_uses_a_third_of_the_noise_for_rgb():
    """Fan's ε-per-channel reading: scale R·m/ε per sum, C·ε in total."""
    n, eps = 300, 255 / (MEAN_STD / math.sqrt(2) * 16)
    joint = DPPixelize(3 * eps, B, noise="laplace", generator=generator("cpu", 1))
    per_channel = DPPixelize(eps, B, noise="laplace", channel_rule="per_channel", generator=generator("cpu", 1))
    assert per_channel.guarantee.total_epsilon(3) == pytest.approx(3 * eps)
    a = released_means(joint, torch.float32, 3, n, "cpu")[..., :K, :K]
    b = released_means(per_channel, torch.float32, 3, n, "cpu")[..., :K, :K]
    assert abs(a.var().item() / MEAN_STD**2 - 1) < 5 * math.sqrt(5 / a.numel())
    torch.testing.assert_close(a, b)  # same generator, same scale: the same release


def test_grid_cells_of_floor_ceil_size_are_calibrated_by_their_own_area():
    """grid=(rows, cols): each cell's mean noise is scale/n_c with its own n_c (3×3, 3×4, 4×3 or 4×4 pixels)."""
    eps = 255 / 60.0
    layer = DPPixelize(eps, grid=(3, 4), noise="laplace", generator=generator("cpu", 3))
    x = torch.full((20_000, 1, 10, 13), 128, dtype=torch.float64) / 255
    out = layer(x).double() * 255
    row_starts, col_starts, rows, cols = (0, 3, 6), (0, 3, 6, 9), (3, 3, 4), (3, 3, 3, 4)
    for i, r in zip(row_starts, rows):
        for j, c in zip(col_starts, cols):
            means = out[:, 0, i, j]
            want = 2 * 60.0**2 / (r * c) ** 2
            assert abs(means.var().item() / want - 1) < 5 * math.sqrt(5 / means.numel())
            assert torch.all(out[:, 0, i : i + r, j : j + c] == means[:, None, None])


def test_1080p_batch_matches_the_exact_law_of_rounded_means(device):
    """uint8 output of a mid-grey 1080p batch at b = 8: each released mean is round(128 + L/64), L ~ Laplace(40), on
    every device. n = 777,600 means; the tolerance is 5 standard errors of the sample variance, sqrt((κ-1)/n)
    relative, so a correct layer fails with probability < 1e-6, and a 2% formula error (Sheppard's) is detected."""
    eps, b = 3 * 255 / 40.0, 8  # scale 40 on each sum: released-mean scale 40/64 = 0.625 grey levels
    x = torch.full((8, 3, 1080, 1920), 128, dtype=torch.uint8, device=device)
    out = DPPixelize(eps, b, noise="laplace", seed=0)(x)[..., ::b, ::b].double().cpu() - 128
    want, kurtosis = rounded_laplace_moments(40.0 / 64)
    assert abs(want - 0.8478) < 5e-4
    tolerance = 5 * math.sqrt((kurtosis - 1) / out.numel())
    assert abs(out.var().item() / want - 1) < tolerance, (out.var().item(), want, tolerance)
