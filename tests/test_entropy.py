"""Entropy of the noise (SPEC §4): every bit of a seed counts, secure mode reads ≥ 128 bits of OS entropy into a
CSPRNG, and derived streams (per sample, worker, copy) never share noise.

Statistical checks use fixed keys and state their false-failure rate; the correlation checks are those of
``test_independence`` (|r| < 5/sqrt(n), false-failure rate < 1e-6 per pair).
"""

import os
import pickle
import random
import types

import numpy as np
import pytest
import torch
from scipy import stats

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize, dp_pixelize
from dp_pixel_torch.noise import KeyStream, discrete_laplace_noise, laplace_noise

from conftest import assert_uncorrelated, grey

EPS = 255 / 20.0  # noise scale 20 grey levels on a b = 1, one-channel image: no clipping around 128
ALPHA = 1e-3


@pytest.mark.parametrize(
    "make",
    [
        lambda seed: DPPixelize(EPS, 1, seed=seed),
        lambda seed: RegionAdaptiveDPPixelize(EPS / 4, levels=(1, 2), region="previous", seed=seed),  # 2×2 cells
    ],
    ids=["uniform", "adaptive"],
)
def test_seeds_that_differ_only_above_bit_32_give_different_noise(make):
    """torch's CPU generator keeps the low 32 bits of a seed; the layer's seed must not pass through it."""
    x = grey(1, 128, 128)
    assert_uncorrelated(make(0x123456789ABCDEF0)(x), make(0x9ABCDEF0)(x))
    assert_uncorrelated(make(1 << 200)(x), make(0)(x))  # seeds of any size count in full


def test_distinct_seeds_give_distinct_keys_and_bad_seeds_are_refused():
    seeds = [*range(10_000), *(1 << k for k in range(32, 256, 8)), *((1 << k) + 5 for k in range(32, 256, 8))]
    keys = {KeyStream.from_seed(s).key for s in seeds}
    assert len(keys) == len(seeds) and all(len(k) == 32 for k in keys)
    for bad in (-1, 1.5, True, "7"):
        with pytest.raises(TypeError, match="seed"):
            DPPixelize(1.0, 4, seed=bad)


class FakeEntropy:
    """Stands in for the operating system's entropy: every request returns ``tag`` followed by zero bytes, so two
    tags differ only in the first byte; records how many bytes each request asked for."""

    def __init__(self) -> None:
        self.tag, self.requests = 1, []

    def __call__(self, n: int) -> bytes:
        self.requests.append(n)
        return bytes([self.tag]) + bytes(n - 1)


def test_secure_noise_uses_every_bit_of_at_least_128_bits_of_os_entropy(monkeypatch):
    """A torch generator seeded from 64 OS bits keeps 32 on the CPU, so one release could be de-noised by trying 2^32
    seeds. Secure noise must depend on ≥ 128 bits of OS entropy, on all of them, and on nothing else."""
    entropy = FakeEntropy()
    monkeypatch.setattr(os, "urandom", entropy)
    monkeypatch.setattr(random, "_urandom", entropy)  # where secrets/SystemRandom read the OS entropy
    x = grey(1, 128, 128)
    layer = DPPixelize(EPS, 1, secure=True)
    first = layer(x)
    assert sum(entropy.requests) >= 16, f"secure release read only {sum(entropy.requests)} bytes of OS entropy"
    entropy.tag = 2
    assert_uncorrelated(first, layer(x))
    entropy.tag = 1
    assert torch.equal(layer(x), first), "secure noise must come from the OS entropy alone"
    assert torch.equal(dp_pixelize(x, EPS, 1, secure=True), first)


def test_secure_layers_draw_a_fresh_key_per_call():
    layer = DPPixelize(EPS, 1, secure=True)
    torch.manual_seed(0)
    first = layer(grey(1, 128, 128))
    torch.manual_seed(0)  # torch's RNG plays no part
    assert_uncorrelated(first, layer(grey(1, 128, 128)))


def test_one_million_derived_sample_keys_are_distinct():
    """ReleasedOnce derives sample i's key from a 256-bit secret; 202,599 CelebA samples collided in 4 pairs under the
    old 64-bit seeds (32 bits on the CPU). 10^6 derived keys of 256 bits: a collision has probability < 2^-200."""
    secret = KeyStream(bytes(range(32)))
    keys = {secret.derive("sample", i).key for i in range(1_000_000)}
    assert len(keys) == 1_000_000 and {len(k) for k in keys} == {32}
    # Labels are encoded without ambiguity: ("ab", "c") and ("a", "bc") are different streams.
    assert secret.derive("ab", "c").key != secret.derive("a", "bc").key
    assert secret.derive(1).key != secret.derive("1").key != secret.derive(b"\x01").key


def test_the_keystream_replays_calls_and_never_reuses_them():
    a, b = KeyStream(bytes(32)), KeyStream(bytes(32))
    first, second = a.uniform(1000), a.uniform(1000)
    assert torch.equal(first, b.uniform(1000)) and torch.equal(second, b.uniform(1000))
    assert not torch.equal(first, second)
    assert first.dtype == torch.float64 and 0 <= first.min() and first.max() < 1
    # 53 random bits per uniform: every value is a multiple of 2^-53, and the low bits are used.
    scaled = (a.uniform(100_000) * 2.0**53).numpy()
    assert np.array_equal(scaled, np.round(scaled)) and (scaled.astype(np.int64) & 1).mean() > 0.49
    clone = pickle.loads(pickle.dumps(a))
    assert torch.equal(clone.uniform(10), a.uniform(10))  # a pickled stream carries its position


def test_keystream_laplace_noise_is_laplace_ks():
    """KS of 500,000 draws against Laplace(0, 7). False-failure rate 1e-3."""
    z = laplace_noise((500_000,), 7.0, generator=KeyStream(b"k" * 32)).numpy()
    assert np.isfinite(z).all()
    assert stats.kstest(z, stats.laplace(scale=7.0).cdf).pvalue > ALPHA
    assert stats.kstest(z, stats.laplace(scale=7.7).cdf).pvalue < 1e-12  # power: a 10% scale error is detected


def discrete_chi_squared_pvalue(samples: np.ndarray, scale: float, span: int) -> float:
    a = np.exp(-1 / scale)
    k = np.arange(-span, span + 1)
    p = (1 - a) / (1 + a) * a ** np.abs(k)
    tail = (1 - p.sum()) / 2
    observed = np.concatenate([[np.sum(samples < -span)], [np.sum(samples == v) for v in k], [np.sum(samples > span)]])
    return stats.chisquare(observed, np.concatenate([[tail], p, [tail]]) * samples.size).pvalue


def test_keystream_discrete_noise_matches_the_pmf():
    """Chi-squared of 400,000 draws against the discrete Laplace PMF. False-failure rate 1e-3."""
    k = discrete_laplace_noise((400_000,), 2.5, generator=KeyStream(b"d" * 32)).numpy()
    assert np.array_equal(k, np.round(k))
    assert discrete_chi_squared_pvalue(k, 2.5, 12) > ALPHA
    assert discrete_chi_squared_pvalue(k, 2.5 * 1.05, 12) < 1e-6


def test_secure_layer_releases_the_discrete_laplace_law(monkeypatch):
    """End to end, b = 1 on mid-grey: released - 128 is the noise. The OS entropy is replaced by a fixed sequence of
    keys so the test is reproducible. Chi-squared, false-failure rate 1e-3."""
    keys = np.random.default_rng(0)
    monkeypatch.setattr(os, "urandom", lambda n: keys.bytes(n))
    scale = 2.5
    out = DPPixelize(255 / scale, 1, secure=True)(grey(50, 1, 64, 64))
    k = (out.long() - 128).flatten().numpy()
    assert discrete_chi_squared_pvalue(k, scale, 12) > ALPHA


def test_an_unseeded_layer_is_keyed_from_os_entropy_and_its_copies_do_not_replay_it():
    """Without seed or generator, a layer used torch's global RNG, whose default seed is a constant and whose CPU seed
    has 32 bits. Now each layer (and each copy of it in another process or pickle) has its own 256-bit OS key."""
    x = grey(1, 128, 128)
    torch.manual_seed(0)
    a = DPPixelize(EPS, 1)(x)
    torch.manual_seed(0)
    assert_uncorrelated(a, DPPixelize(EPS, 1)(x))
    layer = DPPixelize(EPS, 1)
    clone = pickle.loads(pickle.dumps(layer))
    assert_uncorrelated(layer(x), clone(x))
    torch.manual_seed(0)
    assert_uncorrelated(dp_pixelize(x, EPS, 1), dp_pixelize(x, EPS, 1))


@pytest.mark.parametrize(
    "make",
    [lambda: DPPixelize(EPS, 1, seed=3), lambda: DPPixelize(EPS, 1, generator=torch.Generator().manual_seed(3))],
    ids=["seed", "generator"],
)
def test_worker_streams_use_every_bit_of_the_worker_seed(make, monkeypatch):
    """DataLoader hands each worker a 64-bit seed; two workers whose seeds agree on the low 32 bits must not share
    noise (re-seeding a CPU generator with them would)."""
    outputs = []
    for worker_seed in (0x1_0000_0007, 0x2_0000_0007):
        layer = make()
        info = types.SimpleNamespace(id=0, num_workers=2, seed=worker_seed)
        monkeypatch.setattr("dp_pixel_torch.noise.get_worker_info", lambda: info)
        outputs.append(layer(grey(1, 128, 128)))
    assert_uncorrelated(*outputs)
