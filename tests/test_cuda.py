"""CUDA-only behaviour (device-generic tests elsewhere also run on CUDA through the ``device`` fixture)."""

import warnings

import pytest
import torch
from test_fast_path import OneBitOff

from dp_pixel_torch import DPPixelize, KeyStream, dp_pixelize, dp_pixelize_adaptive, kernels, keystream_cuda
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


def forget_self_tests(monkeypatch):
    """The GPU kernels' self-tests start over (no verdicts, no device marked failed); restored after the test."""
    for test in (kernels.FUSED_CHECK, keystream_cuda.KEYSTREAM_CHECK):
        monkeypatch.setattr(test, "_passed", set())
        monkeypatch.setattr(test, "_failed", set())
    monkeypatch.setattr(kernels, "_FAILED", set())


def test_the_gpu_kernels_pass_their_self_tests_on_this_device(monkeypatch):
    """Issue 28, finding 10: on this GPU the keystream kernel writes OpenSSL's words and the single-launch kernel
    releases the eager path's image bit for bit, for cell sides of each power-of-two class and both border rules, so
    no kernel is dropped (a warning here means a kernel disagrees on this GPU: see docs/speed.md)."""
    forget_self_tests(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keystream_cuda.KEYSTREAM_CHECK.passes("cuda")
        for b in (1, 2, 3, 5, 8, 16, 32):
            for area in (True, False):
                assert kernels.FUSED_CHECK.passes(torch.device("cuda"), (b, area)), (b, area)
    assert not kernels._FAILED and not keystream_cuda._FAILED


def test_a_miscompiled_kernel_on_this_gpu_is_dropped_with_one_warning_and_releases_stay_right(monkeypatch):
    """Both GPU kernels off by one bit on this device: each self-test finds it and warns once; every release (the
    compiled path from then on: the single-launch kernel never runs again) and the keystream words are the ones the
    eager path and OpenSSL give."""
    from dp_pixel_torch import _triton_kernels

    x = torch.randint(0, 256, (1, 3, 270, 481), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).cuda()
    expected = [dp_pixelize(x, 1.0, 8, generator=KeyStream.from_seed(s), backend="eager") for s in range(3)]
    words = KeyStream(bytes(range(32))).words_at(7, 100, 5000)
    forget_self_tests(monkeypatch)
    monkeypatch.setattr(_triton_kernels, "dp_pixelize_uint8", OneBitOff(_triton_kernels.dp_pixelize_uint8, 1))
    monkeypatch.setattr(_triton_kernels, "chacha20", OneBitOff(_triton_kernels.chacha20, 1))
    launches = []
    launch = kernels._fused_launch
    monkeypatch.setattr(kernels, "_fused_launch", lambda *args: launches.append(args[1]) or launch(*args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for s in range(3):
            assert torch.equal(DPPixelize(1.0, 8, seed=s, backend="compiled")(x), expected[s])
        assert torch.equal(KeyStream(bytes(range(32))).words_at(7, 100, 5000, "cuda").cpu(), words)
    kernels_named = sorted(str(w.message).split(" gave output")[0] for w in caught if "self-test" in str(w.message))
    assert kernels_named == ["the Triton kernel chacha20", "the Triton kernel dp_pixelize_uint8"]
    assert launches == [8] and kernels._FAILED == {"cuda"}  # the check's first release only
