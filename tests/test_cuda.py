"""CUDA-only behaviour (device-generic tests elsewhere also run on CUDA through the ``device`` fixture)."""

import pytest
import torch

from dp_pixel_torch import DPPixelize, KeyStream, dp_pixelize

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]


def test_a_cpu_generator_is_refused_for_cuda_input():
    x = torch.zeros(3, 8, 8, device="cuda")
    with pytest.raises(ValueError, match="generator is on cpu"):
        dp_pixelize(x, 1.0, 4, generator=torch.Generator())
    with pytest.raises(ValueError, match="generator is on cpu"):
        DPPixelize(1.0, 4, generator=torch.Generator())(x)


def test_seed_follows_the_input_to_each_device():
    layer = DPPixelize(1.0, 4, seed=0)
    x = torch.full((2, 3, 16, 16), 128, dtype=torch.uint8)
    assert layer(x).device.type == "cpu"
    assert layer(x.cuda()).device.type == "cuda"
    assert torch.equal(DPPixelize(1.0, 4, seed=0)(x.cuda()), DPPixelize(1.0, 4, seed=0)(x.cuda()))


def test_secure_mode_on_cuda():
    x = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8, device="cuda")
    a, b = DPPixelize(1.0, 4, secure=True)(x), DPPixelize(1.0, 4, secure=True)(x)
    assert a.device.type == "cuda" and not torch.equal(a, b)


def test_a_keystream_draws_its_uniforms_on_cuda_exactly():
    """The keystream is made on the CPU and converted on the GPU: integer shifts and a power-of-two scale are exact,
    so the uniforms are the CPU's, and seeded layers keep every bit of their seed on CUDA too."""
    cpu, gpu = KeyStream(bytes(32)).uniform((1000, 3)), KeyStream(bytes(32)).uniform((1000, 3), "cuda")
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
    x = torch.full((1, 1, 64, 64), 128, dtype=torch.uint8, device="cuda")
    assert not torch.equal(DPPixelize(1.0, 1, seed=0x123456789ABCDEF0)(x), DPPixelize(1.0, 1, seed=0x9ABCDEF0)(x))
