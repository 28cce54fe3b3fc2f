"""Same generator state -> same release on the same device; secure mode never repeats and refuses seeds."""

import pytest
import torch

from dp_pixel_torch import DPPixelize, dp_pixelize

from conftest import generator


@pytest.mark.parametrize("noise", ["discrete", "laplace"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_same_generator_seed_same_output(noise, dtype, device):
    x = torch.rand(3, 3, 33, 41, generator=generator("cpu", 0)).to(device)
    x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x
    first = dp_pixelize(x, 1.0, 8, noise=noise, generator=generator(device, 123))
    second = dp_pixelize(x, 1.0, 8, noise=noise, generator=generator(device, 123))
    other = dp_pixelize(x, 1.0, 8, noise=noise, generator=generator(device, 124))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_layers_with_the_same_seed_replay_the_same_sequence(device):
    x = torch.full((2, 3, 16, 16), 0.5, device=device)
    a, b = DPPixelize(1.0, 4, seed=7), DPPixelize(1.0, 4, seed=7)
    a1, a2 = a(x), a(x)
    assert not torch.equal(a1, a2)  # the stream advances: no noise is reused across calls
    assert torch.equal(a1, b(x)) and torch.equal(a2, b(x))


def test_layer_generator_matches_functional_generator():
    x = torch.full((2, 3, 16, 16), 0.5)
    assert torch.equal(
        DPPixelize(1.0, 4, generator=generator("cpu", 3))(x), dp_pixelize(x, 1.0, 4, generator=generator("cpu", 3))
    )


def test_secure_mode_refuses_seeds_and_never_repeats():
    with pytest.raises(ValueError, match="secure"):
        DPPixelize(1.0, 4, secure=True, seed=0)
    with pytest.raises(ValueError, match="secure"):
        DPPixelize(1.0, 4, secure=True, generator=torch.Generator().manual_seed(0))
    layer = DPPixelize(1.0, 4, secure=True)
    x = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    first = layer(x)
    torch.manual_seed(0)  # the global RNG plays no part
    assert not torch.equal(first, layer(x))
    assert not torch.equal(dp_pixelize(x, 1.0, 4, secure=True), dp_pixelize(x, 1.0, 4, secure=True))
