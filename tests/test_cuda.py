"""CUDA-only behaviour (device-generic tests elsewhere also run on CUDA through the ``device`` fixture)."""

import pytest
import torch

from dp_pixel_torch import DPPixelize, KeyStream, dp_pixelize, dp_pixelize_adaptive, kernels
from dp_pixel_torch.keystream_cuda import chacha20_words

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


def test_the_gpu_keystream_kernel_writes_the_cpu_words():
    """KeyStream words on CUDA come from the Triton ChaCha20 kernel; they equal OpenSSL's, piece by piece."""
    assert kernels.compiler_available(torch.device("cuda"))
    stream = KeyStream(bytes(range(32)))
    call = stream.reserve(10_000_000)
    whole = stream.words_at(call, 0, 10_000_000)
    assert torch.equal(stream.words_at(call, 0, 10_000_000, "cuda").cpu(), whole)
    assert torch.equal(stream.words_at(call, 12_345, 1_000, "cuda").cpu(), whole[12_345:13_345])
    assert torch.equal(chacha20_words(stream.key, call, 3, 77, "cuda").cpu(), whole[24:101])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_the_compiled_cuda_path_is_bit_identical_to_eager(dtype):
    x = torch.rand(4, 3, 270, 481, generator=torch.Generator().manual_seed(0))
    x = (x * 255).to(torch.uint8) if dtype == torch.uint8 else x
    x = x.cuda()
    for b in (4, 8, 16):
        fast = dp_pixelize(x, 1.0, b, generator=KeyStream.from_seed(b), backend="compiled")
        eager = dp_pixelize(x, 1.0, b, generator=KeyStream.from_seed(b), backend="eager")
        assert torch.equal(fast, eager)  # the same device; across devices only the words are equal
    boxes = torch.tensor([[10.0, 5.0, 130.0, 120.0]])
    fast = dp_pixelize_adaptive(x, 1.0, boxes=boxes, generator=KeyStream.from_seed(1), backend="compiled")
    assert torch.equal(
        fast, dp_pixelize_adaptive(x, 1.0, boxes=boxes, generator=KeyStream.from_seed(1), backend="eager")
    )


def test_uint8_frames_on_cuda_take_the_single_launch_kernel():
    from dp_pixel_torch import keystream_cuda

    x = torch.randint(0, 256, (1, 3, 1080, 1920), dtype=torch.uint8, device="cuda")
    layer = DPPixelize(1.0, 8, seed=3)
    released = layer(x)
    assert "dp_pixelize_uint8" in keystream_cuda._LAUNCHED and not keystream_cuda._FAILED
    assert torch.equal(released, dp_pixelize(x, 1.0, 8, generator=KeyStream.from_seed(3), backend="eager"))
    assert torch.equal(released, DPPixelize(1.0, 8, seed=3, backend="compiled").release(x).restore())
