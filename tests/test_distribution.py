"""Distribution of the released values: Laplace, discrete Laplace, and agreement with the sequential baseline.

Each test uses a fixed seed and a significance level α; "false-failure rate" is the probability that a correct
implementation fails for a random seed.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from dp_pixel_torch import DPPixelize, GridPartition, dp_pixelize
from dp_pixel_torch.noise import discrete_laplace_noise, laplace_noise
from dp_pixel_torch.reference import dp_pixelize_sequential

from conftest import generator

ALPHA = 1e-3  # false-failure rate of each test below


def test_continuous_noise_is_laplace_ks():
    """KS of end-to-end released means (float64, no clipping) against the Laplace CDF. False-failure rate 1e-3."""
    b, eps = 4, 100.0
    scale = 3 * 1.0 * 1 / eps / (b * b)  # C·R·m/ε on the sum, divided by n_c
    x = torch.full((200, 3, 64, 64), 0.5, dtype=torch.float64)
    out = dp_pixelize(x, eps, b, noise="laplace", generator=generator("cpu", 11))
    z = ((out[..., ::b, ::b] - 0.5) / scale).flatten().numpy()
    assert z.size == 153_600
    assert stats.kstest(z, stats.laplace.cdf).pvalue > ALPHA
    # Power check: the same sample is clearly not Laplace with a 10% larger scale.
    assert stats.kstest(z, stats.laplace(scale=1.1).cdf).pvalue < 1e-12


def test_laplace_sampler_tail_and_sign():
    """The sampler alone: KS against Laplace(0, 7), symmetric, and no infinities. False-failure rate 1e-3."""
    z = laplace_noise((500_000,), 7.0, generator=generator("cpu", 5)).numpy()
    assert np.isfinite(z).all()
    assert stats.kstest(z, stats.laplace(scale=7.0).cdf).pvalue > ALPHA


def discrete_laplace_pmf(k: np.ndarray, scale: float) -> np.ndarray:
    a = np.exp(-1 / scale)
    return (1 - a) / (1 + a) * a ** np.abs(k)


def chi_squared_pvalue(samples: np.ndarray, scale: float, span: int) -> float:
    """Pearson chi-squared against the discrete Laplace PMF on bins -span..span plus two tail bins."""
    k = np.arange(-span, span + 1)
    p = discrete_laplace_pmf(k, scale)
    tail = (1 - p.sum()) / 2
    observed = np.concatenate([[np.sum(samples < -span)], [np.sum(samples == v) for v in k], [np.sum(samples > span)]])
    expected = np.concatenate([[tail], p, [tail]]) * samples.size
    return stats.chisquare(observed, expected).pvalue


def test_discrete_noise_matches_pmf_chi_squared():
    """b = 1, uint8 mid-grey: released - 128 is the integer noise itself. Chi-squared, false-failure rate 1e-3."""
    scale = 2.5
    eps = 255 / scale  # C = 1, m = 1
    x = torch.full((50, 1, 64, 64), 128, dtype=torch.uint8)
    k = (DPPixelize(eps, 1, generator=generator("cpu", 3))(x).long() - 128).flatten().numpy()
    assert k.size == 204_800
    assert chi_squared_pvalue(k, scale, 12) > ALPHA
    assert chi_squared_pvalue(k, scale * 1.05, 12) < 1e-6  # power: a 5% scale error is detected


def test_discrete_sampler_at_large_scale():
    """The sampler alone, at a scale like ε = 1, RGB (765): chi-squared on 40 equiprobable-ish bins. α = 1e-3."""
    scale = 765.0
    k = discrete_laplace_noise((400_000,), scale, generator=generator("cpu", 9)).numpy()
    assert np.array_equal(k, np.round(k))
    edges = np.concatenate([[-np.inf], np.round(stats.laplace(scale=scale).ppf(np.linspace(0, 1, 41)[1:-1])), [np.inf]])
    observed = np.histogram(k, bins=edges)[0]
    support = np.arange(-40 * scale, 40 * scale + 1)
    cdf = np.concatenate([[0], np.cumsum(discrete_laplace_pmf(support, scale))])
    # P(edge_i <= K < edge_{i+1}) from the exact PMF (histogram bins are closed on the left).
    idx = np.clip(np.searchsorted(support, edges, side="left"), 0, support.size)
    expected = np.diff(cdf[idx]) * k.size
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > ALPHA


def test_discrete_release_lies_on_the_lattice():
    """Float input, discrete noise: every released mean is (integer)/(n_c·255), which defeats Mironov's attack."""
    x = torch.rand(4, 3, 10, 10, dtype=torch.float64, generator=generator("cpu", 0))
    out = dp_pixelize(x, 2.0, 4, generator=generator("cpu", 1))
    counts = torch.tensor([[16, 16, 8], [16, 16, 8], [8, 8, 4]], dtype=torch.float64)
    lattice = out[..., ::4, ::4] * 255 * counts
    inside = (out[..., ::4, ::4] > 0) & (out[..., ::4, ::4] < 1)  # clipped cells sit on 0 or 1
    assert inside.any()
    torch.testing.assert_close(lattice[inside], lattice[inside].round(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("border", ["area", "zero_pad"])
@pytest.mark.parametrize("dtype", [np.float64, np.uint8])
def test_parallel_layer_and_sequential_baseline_release_the_same_distribution(border, dtype):
    """Two-sample KS per cell class (interior, edge) on a textured image with a ragged border. α = 1e-3 per class.

    The two implementations share no code on the sample path (NumPy loop + rng.laplace vs batched torch). KS is
    conservative on the discrete uint8 values, so the false-failure rate stays ≤ α there too."""
    rng = np.random.default_rng(0)
    image = rng.integers(60, 196, size=(3, 26, 26), dtype=np.uint8)  # 6×6 full cells of 4 plus a 2-pixel border
    if dtype == np.float64:
        image = image / 255.0
    eps, b, n = 20.0, 4, 400
    sequential = np.stack([dp_pixelize_sequential(image, eps, b, 1, rng, border=border) for _ in range(n)])
    parallel = dp_pixelize(
        torch.from_numpy(image).expand(n, -1, -1, -1),
        eps,
        b,
        noise="laplace",
        border=border,
        generator=generator("cpu", 1),
    ).numpy()
    assert sequential.dtype == parallel.dtype == image.dtype
    partition = GridPartition.blocks(26, 26, b)
    noiseless = partition.cell_sums(torch.from_numpy(image)) / (partition.counts() if border == "area" else b * b)
    noiseless = partition.fill(noiseless).numpy()
    for cells in ((slice(0, 24, b), slice(0, 24, b)), (slice(24, 26, 2), slice(0, 24, b))):
        # Deviation of every released cell from its true (noiseless) mean, pooled over the cells of one class.
        s_dev = (sequential[:, :, cells[0], cells[1]] - noiseless[:, cells[0], cells[1]]).ravel()
        p_dev = (parallel[:, :, cells[0], cells[1]] - noiseless[:, cells[0], cells[1]]).ravel()
        assert stats.ks_2samp(s_dev, p_dev).pvalue > ALPHA
