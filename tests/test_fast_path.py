"""The compiled fast path (dp_pixel_torch.kernels): bit-identical to the eager path with the same noise, chosen
automatically with a safe fallback, and bounded in how often it compiles."""

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest
import torch

from dp_pixel_torch import (
    DPPixelize,
    KeyStream,
    RegionAdaptiveDPPixelize,
    dp_pixelize,
    dp_pixelize_adaptive,
    functional,
    kernels,
)
from dp_pixel_torch.noise import discrete_laplace_from_words, laplace_from_words
from dp_pixel_torch.partitions import GridPartition

needs_compiler = pytest.mark.skipif(
    not kernels.compiler_available(torch.device("cpu")), reason="no C++ compiler for torch.compile"
)

#: Shapes whose sides do not divide by the cell sides used below, and one that does.
SHAPES = [(2, 3, 37, 53), (1, 1, 64, 48)]


#: Names of the compiled functions called, in order (filled by the fixture below).
COMPILED_CALLS: list[str] = []


@pytest.fixture(autouse=True)
def room_to_compile(monkeypatch):
    """Every signature of these small inputs compiles (by default a budget of shapes, and a floor of cells for the
    cell pass, would send many of them eager), and every call of a compiled function is recorded."""
    monkeypatch.setattr(kernels, "MAX_SHAPES", 10_000)
    monkeypatch.setattr(functional, "_COMPILED_MIN_CELLS", 0)
    original = kernels.Compiled.__call__

    def recorded(self, *args):
        COMPILED_CALLS.append(self.fn.__name__)
        return original(self, *args)

    monkeypatch.setattr(kernels.Compiled, "__call__", recorded)


def image(shape, dtype, seed=0):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    return x.to(dtype)


def both_paths(release):
    """``release(backend)`` under both backends with the same seed; the compiled release must call the compiled cell
    pass, and the eager one no compiled function. Also says whether the compiled release summed by a kernel."""
    COMPILED_CALLS.clear()
    fast = release("compiled")
    assert "noisy_means" in COMPILED_CALLS
    summed = "block_sums" in COMPILED_CALLS
    COMPILED_CALLS.clear()
    eager = release("eager")
    assert not COMPILED_CALLS
    return fast, eager, summed


@needs_compiler
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("dtype", "noise", "border"),
    [
        (torch.uint8, "discrete", "area"),
        (torch.uint8, "discrete", "zero_pad"),
        (torch.uint8, "laplace", "area"),
        (torch.float16, "discrete", "area"),
        (torch.bfloat16, "discrete", "area"),
        (torch.float32, "discrete", "area"),
        (torch.float32, "discrete", "zero_pad"),
        (torch.float32, "laplace", "area"),
        (torch.float64, "discrete", "area"),
        (torch.float64, "laplace", "zero_pad"),
    ],
)
def test_uniform_fast_path_is_bit_identical_to_eager(shape, dtype, noise, border):
    """Equal bits for every dtype under discrete noise, and under continuous noise wherever the output dtype is
    narrower than float64. With float64 images and ``noise="laplace"`` the noise itself is a float64 ``log``: eager
    torch and the compiled kernel take it from different vector-math routines, which differ in the last bit for about
    0.7% of values (measured on 1080p), so there the outputs agree to one unit in the last place."""
    x = image(shape, dtype)
    for b in (3, 8, 16):
        fast, eager, summed = both_paths(
            lambda backend: dp_pixelize(
                x, 0.5, b, noise=noise, border=border, generator=KeyStream.from_seed(b), backend=backend
            )
        )
        assert fast.dtype == dtype and summed == (noise == "discrete" or dtype == torch.uint8)  # integer levels
        if dtype == torch.float64 and noise == "laplace":
            assert (fast - eager).abs().max() <= 2.0**-52, (b, dtype, noise, border)  # values in [0, 1]
            continue
        assert torch.equal(fast, eager), (b, dtype, noise, border)


@needs_compiler
def test_grids_that_are_not_square_blocks_take_the_eager_sums_and_stay_identical():
    x = image((2, 3, 37, 53), torch.uint8)
    fast, eager, summed = both_paths(
        lambda backend: dp_pixelize(x, 1.0, grid=(5, 7), generator=KeyStream.from_seed(1), backend=backend)
    )
    assert not summed and torch.equal(fast, eager)


@needs_compiler
@pytest.mark.parametrize("levels", [(4, 8), (8, 16, 32), (2, 6, 12)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("region", ["mask", "complexity", "previous"])
def test_adaptive_fast_path_is_bit_identical_to_eager(levels, dtype, region):
    x = image((2, 3, 45, 70), dtype)
    options = {"mask": {"boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]])}, "complexity": {"partition_epsilon": 0.3}}
    options["previous"] = {"previous": dp_pixelize_adaptive(x, 2.0, levels=levels, boxes=options["mask"]["boxes"])}
    fast, eager, summed = both_paths(
        lambda backend: dp_pixelize_adaptive(
            x, 1.0, levels=levels, region=region, generator=KeyStream.from_seed(3), backend=backend, **options[region]
        )
    )
    assert summed and torch.equal(fast, eager)


@needs_compiler
@pytest.mark.parametrize("levels", [(4, 8), (2, 6, 12)])
@pytest.mark.parametrize("protect_m", [None, 64])
def test_protected_fast_path_is_bit_identical_to_eager(levels, protect_m):
    """Protected regions, with one m_r per image (None: each image's own protected cells) or one for all."""
    x = image((2, 3, 45, 70), torch.uint8)
    mask = torch.zeros(2, 45, 70, dtype=torch.bool)
    mask[0, 5:20, 10:30] = True
    mask[1, 30:40, 40:70] = True
    fast, eager, summed = both_paths(
        lambda backend: dp_pixelize_adaptive(
            x,
            1.0,
            levels=levels,
            mask=mask,
            protect=True,
            protect_m=protect_m,
            generator=KeyStream.from_seed(5),
            backend=backend,
        )
    )
    assert summed and torch.equal(fast, eager)


@needs_compiler
def test_the_compiled_path_leaves_its_input_untouched_and_noises_every_frame_apart():
    x = image((4, 3, 64, 64), torch.uint8)
    x[:] = x[0]  # four identical frames: shared noise would give identical releases
    before = x.clone()
    for release in (
        lambda: DPPixelize(1.0, 4, seed=9, backend="compiled")(x),
        lambda: dp_pixelize_adaptive(
            x,
            1.0,
            levels=(4, 8),
            boxes=torch.tensor([[0.0, 0.0, 20.0, 20.0]]),
            generator=KeyStream.from_seed(9),
            backend="compiled",
        ),
    ):
        out = release()
        assert torch.equal(x, before) and out.data_ptr() != x.data_ptr()
        assert all(not torch.equal(out[i], out[j]) for i in range(4) for j in range(i))


@needs_compiler
def test_the_cpu_cell_pass_in_pieces_draws_the_same_words_as_in_one(monkeypatch):
    x = image((4, 3, 40, 40), torch.uint8)
    whole = dp_pixelize(x, 1.0, 4, generator=KeyStream.from_seed(5), backend="compiled")
    monkeypatch.setattr(functional, "_CHUNK_WORDS", 150)  # 100 cells per row: one row per piece
    assert torch.equal(dp_pixelize(x, 1.0, 4, generator=KeyStream.from_seed(5), backend="compiled"), whole)
    assert torch.equal(dp_pixelize(x, 1.0, 4, generator=KeyStream.from_seed(5), backend="eager"), whole)


def test_the_layers_are_shells_over_the_functional_core():
    x = image((2, 3, 45, 70), torch.uint8)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0]])
    assert torch.equal(DPPixelize(1.0, 8, seed=4)(x), dp_pixelize(x, 1.0, 8, generator=KeyStream.from_seed(4)))
    layer = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), seed=4)
    released = layer.release(x, boxes=boxes).restore()
    assert torch.equal(
        released, dp_pixelize_adaptive(x, 1.0, levels=(4, 8), boxes=boxes, generator=KeyStream.from_seed(4))
    )
    video = RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="previous", seed=6)
    first, second = video(x), video(x)
    stream = KeyStream.from_seed(6)
    again = dp_pixelize_adaptive(x, 1.0, levels=(4, 8), region="previous", generator=stream)
    assert torch.equal(again, first)
    assert torch.equal(
        dp_pixelize_adaptive(x, 1.0, levels=(4, 8), region="previous", previous=first, generator=stream), second
    )


@needs_compiler
def test_a_new_shape_past_the_budget_runs_eagerly_with_one_warning(monkeypatch):
    monkeypatch.setattr(kernels, "MAX_SHAPES", 2)
    fn = kernels.Compiled(kernels.block_sums)
    shapes = [(1, 16, 16), (2, 16, 16), (3, 16, 16), (4, 16, 16)]
    outs = []
    with pytest.warns(RuntimeWarning, match="2 shapes are compiled already") as caught:
        for shape in shapes:
            x = image(shape, torch.uint8)
            outs.append((fn(x, 4), GridPartition.blocks(16, 16, 4).cell_sums(x)))
    assert len(caught) == 1 and len(fn._signatures) == 2
    assert all(torch.equal(a, b) for a, b in outs)
    fn(image(shapes[0], torch.uint8), 4)  # a known shape stays compiled, without a new warning
    assert len(fn._signatures) == 2


def test_auto_falls_back_to_eager_where_compiling_does_not_pay_or_work(monkeypatch):
    small, large = torch.zeros(3, 16, 16, dtype=torch.uint8), torch.zeros(3, 512, 512, dtype=torch.uint8)
    assert not kernels.use_compiled("auto", small) and not kernels.use_compiled("eager", large)
    assert kernels.use_compiled("auto", large) == kernels.compiler_available(large.device)
    monkeypatch.setenv("TORCH_COMPILE_DISABLE", "1")
    assert not kernels.use_compiled("auto", large)
    monkeypatch.delenv("TORCH_COMPILE_DISABLE")
    monkeypatch.setattr(kernels, "_can_compile_for", lambda device_type: False)  # no C++ compiler, no Triton
    assert not kernels.use_compiled("auto", large)
    with pytest.raises(RuntimeError, match="backend='compiled' needs torch.compile on cpu"):
        DPPixelize(1.0, 8, backend="compiled")(large)
    assert DPPixelize(1.0, 8, backend="auto")(large).shape == large.shape
    with pytest.raises(ValueError, match="backend must be one of"):
        DPPixelize(1.0, 8, backend="fast")


def test_float_sums_and_large_cells_are_not_compiled():
    partition = GridPartition.blocks(20, 20, 4)
    x = image((3, 20, 20), torch.float64)
    assert torch.equal(kernels.cell_sums(partition, x, True), partition.cell_sums(x))
    big = GridPartition.blocks(250, 300, 100)  # unrolled over b: compile time would grow with the cell side
    x = image((1, 250, 300), torch.uint8)
    signatures = len(kernels.compiled_block_sums._signatures)
    assert torch.equal(kernels.cell_sums(big, x, True), big.cell_sums(x))
    assert len(kernels.compiled_block_sums._signatures) == signatures


@needs_compiler
def test_the_compiled_fill_paints_every_pixel_with_its_cell():
    """The fill is compiled on CUDA only (eager is faster on the CPU); its kernel is checked here on the CPU."""
    for height, width, b in [(37, 53, 8), (32, 48, 16), (5, 7, 3)]:
        partition = GridPartition.blocks(height, width, b)
        values = image((2, *partition.shape), torch.uint8)
        assert torch.equal(kernels.compiled_fill_blocks(values, b, height, width), partition.fill(values))


def test_noise_extremes_of_the_words():
    """Tail bits all 0 give q = 1 (magnitude 0); all 1 give q = 2^-52, the largest magnitude, 52·ln 2 ≈ 36 scales.
    Bit 52 is the sign; the bits above it are not used."""
    low, high, sign = 0, (1 << 52) - 1, 1 << 52
    words = torch.tensor([low, high, high | sign, high | (0x3FF << 53), high - (1 << 63)], dtype=torch.int64)
    laplace = laplace_from_words(words, 2.0)
    bound = 2.0 * 52 * torch.log(torch.tensor(2.0, dtype=torch.float64))
    assert laplace[0] == 0 and torch.allclose(laplace[1:], torch.stack([bound, -bound, bound, bound]))
    discrete = discrete_laplace_from_words(words, 2.0, (1 + torch.exp(torch.tensor(-0.5, dtype=torch.float64))) / 2)
    assert discrete[0] == 0 and discrete[1] == -discrete[2] == discrete[3] == discrete[4] > 0
    assert torch.isfinite(laplace).all() and torch.equal(discrete, discrete.round())


def test_keystream_pieces_read_the_same_words_as_one_call():
    stream = KeyStream(bytes(range(32)))
    call = stream.reserve(3000)
    whole = KeyStream(bytes(range(32))).words_at(call, 0, 3000)
    pieces = torch.cat(
        [stream.words_at(call, 0, 13), stream.words_at(call, 13, 1000), stream.words_at(call, 1013, 1987)]
    )
    assert torch.equal(pieces, whole) and stream.position == 1
    with pytest.raises(ValueError, match="outside one call"):
        stream.words_at(call, -8, 16)
    with pytest.raises(ValueError, match="outside one call"):
        stream.words_at(call, 8 << 32, 1)  # past the 32-bit block counter
    assert torch.equal(KeyStream(bytes(range(32))).words(3000), KeyStream(bytes(range(32))).words_at(0, 0, 3000))


def test_the_single_launch_kernel_releases_what_the_eager_path_releases():
    """The one-launch Triton kernel of CUDA frames (sums, keystream, noise, rounding, fill), run by Triton's
    interpreter on the CPU, against the eager path with the same seed: equal bits, border cells and both border rules
    included."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from dp_pixel_torch import KeyStream, dp_pixelize, kernels
        cases = [((2, 3, 37, 53), 3, "area"), ((1, 3, 37, 53), 8, "zero_pad"), ((2, 1, 40, 64), 8, "area"),
                 ((1, 3, 70, 50), 16, "area"), ((1, 1, 9, 9), 32, "area"), ((1, 3, 33, 47), 5, "zero_pad")]
        for shape, b, border in cases:
            x = (torch.rand(shape, generator=torch.Generator().manual_seed(b)) * 256).to(torch.uint8)
            for epsilon in (0.5, 50.0):
                eager = dp_pixelize(x, epsilon, b, border=border, generator=KeyStream.from_seed(b), backend="eager")
                scale = shape[-3] * 255.0 / epsilon
                stream = KeyStream.from_seed(b)
                fused = kernels.fused_dp_pixelize(x, b, scale, border == "area", stream)
                assert fused is not None and stream.position == 1
                assert torch.equal(fused, eager), (shape, b, border, epsilon, int((fused != eager).sum()))
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_a_triton_kernel_that_does_not_build_turns_the_gpu_kernels_off(monkeypatch):
    from dp_pixel_torch import keystream_cuda

    class Broken:
        def fn(self):
            pass

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                raise RuntimeError("ptxas: unsupported GPU")

            return run

    monkeypatch.setattr(keystream_cuda, "_FAILED", [])
    with pytest.warns(RuntimeWarning, match="failed to build .* torch path instead"):
        assert keystream_cuda.launch(Broken(), (1,)) is False
    assert keystream_cuda._FAILED == ["fn"] and not keystream_cuda.available()


def test_the_triton_chacha20_kernel_writes_openssl_keystream():
    """The GPU keystream kernel, run by Triton's interpreter on the CPU, against OpenSSL at several offsets."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch
        from dp_pixel_torch import keystream_cuda
        from dp_pixel_torch.noise import KeyStream
        key = bytes(range(7, 39))
        stream = KeyStream(key)
        call = stream.reserve(5000)
        whole = stream.words_at(call, 0, 5000)
        for first, n in [(0, 5000), (0, 1), (3, 77), (600, 24)]:
            got = keystream_cuda.chacha20_words(key, call, first, n, "cpu")
            assert got.dtype == torch.int64 and torch.equal(got, whole[8 * first : 8 * first + n]), (first, n)
        big = 2**70 + 12345  # every byte of the 96-bit nonce is used
        assert torch.equal(keystream_cuda.chacha20_words(key, big, 0, 64, "cpu"), KeyStream(key).words_at(big, 0, 64))
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_auto_compiles_a_signature_only_once_its_eager_calls_have_taken_the_threshold():
    choice, sig = kernels.AutoChoice(), ("g", (3, 720, 1280))
    assert choice.plan(sig) is None and not choice.compiled(sig)
    for _ in range(19):
        choice.record(sig, 1.0, compiled=False)
    assert choice.plan(sig) == "eager" and not choice.compiled(sig)  # 19 s < 20 s: a short job never compiles
    choice.record(sig, 1.0, compiled=False)
    assert choice.plan(sig) == "trial" and choice.compiled(sig)
    choice.record(sig, 30.0, compiled=True)  # the call that compiles is not held against the compiled path
    for _ in range(kernels.AUTO_TRIAL_CALLS):
        choice.record(sig, 0.5, compiled=True)
    assert choice.plan(sig) == "compiled" and choice.compiled(sig)
    assert choice.plan(("g", (3, 1080, 1920))) is None  # another shape starts over


def test_auto_drops_a_compiled_path_that_is_not_faster_per_call():
    choice, sig = kernels.AutoChoice(), "per-sample"
    for _ in range(2000):
        choice.record(sig, 0.01, compiled=False)
    assert choice.compiled(sig)
    for _ in range(1 + kernels.AUTO_TRIAL_CALLS):
        choice.record(sig, 0.011, compiled=True)
    assert choice.plan(sig) == "eager for good" and not choice.compiled(sig)
    choice.record(sig, 100.0, compiled=False)
    assert choice.plan(sig) == "eager for good"


def test_auto_keeps_a_bounded_number_of_signatures(monkeypatch):
    monkeypatch.setattr(kernels, "AUTO_MAX_SIGNATURES", 2)
    choice = kernels.AutoChoice()
    for sig in "abc":
        choice.record(sig, 1.0, compiled=False)
    assert choice.plan("a") == choice.plan("b") == "eager" and choice.plan("c") is None


@needs_compiler
def test_a_release_under_auto_runs_eagerly_until_compiling_pays_then_compiles_the_same_output(monkeypatch):
    """By default a short job never compiles; past the threshold the same calls compile and release the same image."""
    monkeypatch.setattr(kernels, "AUTO", kernels.AutoChoice())
    monkeypatch.setattr(kernels, "AUTO_MIN_VALUES", 0)
    x = image((2, 3, 37, 53), torch.uint8)
    layer, eager = DPPixelize(1.0, 4, seed=3), DPPixelize(1.0, 4, seed=3, backend="eager")
    COMPILED_CALLS.clear()
    outs = [layer(x) for _ in range(3)]
    assert COMPILED_CALLS == []  # three calls of a few milliseconds: eager
    monkeypatch.setattr(kernels, "AUTO_COMPILE_AFTER_S", 0.0)
    outs += [layer(x) for _ in range(2 + kernels.AUTO_TRIAL_CALLS)]
    assert "noisy_means" in COMPILED_CALLS  # the next call of the signature compiled
    assert kernels.AUTO.plan((layer.guarantee, tuple(x.shape), x.dtype, x.device)) in ("compiled", "eager for good")
    assert all(torch.equal(out, eager(x)) for out in outs)
    COMPILED_CALLS.clear()
    forced = DPPixelize(1.0, 4, seed=3, backend="compiled")
    assert torch.equal(forced(x), outs[0]) and "noisy_means" in COMPILED_CALLS  # compiled still compiles at once


BROKEN_COMPILER = """#!/bin/sh
for arg in "$@"; do [ "$arg" = "--version" ] && exec {cxx} --version; done
echo "this compiler fails every compile" >&2
exit 1
"""

FALL_BACK = """
import warnings
import torch
from dp_pixel_torch import DPPixelize, kernels
kernels.AUTO_COMPILE_AFTER_S = 0.0  # the second call of the signature compiles
x = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
auto, eager = DPPixelize(1.0, 8, seed=5), DPPixelize(1.0, 8, seed=5, backend="eager")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    same = [torch.equal(auto(x), eager(x)) for _ in range(4)]
print("same", same)
print("warnings", sum("torch.compile failed on cpu" in str(w.message) for w in caught))
print("plan", kernels.use_compiled("auto", x))
try:
    DPPixelize(1.0, 8, seed=5, backend="compiled")(x)
except torch._dynamo.exc.BackendCompilerFailed as error:
    print("compiled raised", "CppCompileError" in str(error))
"""


@needs_compiler
def test_auto_falls_back_to_the_eager_release_of_the_same_words_when_a_compile_fails(tmp_path):
    """A C++ compiler that answers ``--version`` but fails every compile (issue 18, finding 9): under ``auto`` the call
    that meets the failure releases what eager releases with the same seed, so the words it drew are used once and the
    stream stays in step for the calls after it; one warning; later calls run eagerly. ``compiled`` raises."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    cxx = tmp_path / "broken-cxx"
    cxx.write_text(BROKEN_COMPILER.format(cxx=get_cpp_compiler()))
    cxx.chmod(0o755)
    env = dict(os.environ, CXX=str(cxx), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    env.pop("TORCH_COMPILE_DISABLE", None)
    done = subprocess.run(
        [sys.executable, "-c", FALL_BACK], capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "same [True, True, True, True]",
        "warnings 1",
        "plan False",
        "compiled raised True",
    ], done.stdout + done.stderr[-3000:]


#: Two CUDA devices by name: a SelfTest only names its devices, so the checks below need no GPU.
GPU0, GPU1 = torch.device("cuda", 0), torch.device("cuda", 1)


def test_a_gpu_kernel_self_test_runs_once_per_device_and_variant_and_warns_once_per_device():
    """Issue 28, finding 10: a kernel is checked on its first use per device (and compiled variant) and process; a
    match is not checked again, a mismatch drops the kernel on that device (every variant) with one warning."""
    from dp_pixel_torch.keystream_cuda import SelfTest

    checks = []
    test = SelfTest("k", "the reference", lambda device, variant: checks.append((device, variant)) or device == GPU0)
    assert all(test.passes(GPU0, 8) for _ in range(5)) and test.passes(GPU0, 16)
    assert checks == [(GPU0, 8), (GPU0, 16)]  # one check per device and variant, none per call
    with pytest.warns(RuntimeWarning, match="kernel k gave output that differs from the reference in its self-test on "
                      "cuda:1; dp_pixel_torch uses the reference on cuda:1 from now on") as caught:  # fmt: skip
        assert not test.passes(GPU1, 8)
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not test.passes(GPU1, 8) and not test.passes(GPU1, 16) and test.passes(GPU0, 8)
    assert checks == [(GPU0, 8), (GPU0, 16), (GPU1, 8)]

    def crashes(device, variant):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.warns(RuntimeWarning, match="raised RuntimeError: CUDA error: an illegal memory access"):
        assert not SelfTest("k", "the reference", crashes).passes(GPU0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kernel that does not build has warned already (keystream_cuda.launch)
        assert not SelfTest("k", "the reference", lambda device, variant: None).passes(GPU0)


def test_threads_that_meet_an_unchecked_device_together_wait_for_one_check():
    from dp_pixel_torch.keystream_cuda import SelfTest

    checks = []

    def slow(device, variant):
        checks.append(device)
        time.sleep(0.05)
        return device == GPU0

    test = SelfTest("k", "the reference", slow)
    start = threading.Barrier(16)
    answers = []

    def use(device):
        start.wait()
        answers.append((device, test.passes(device)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=use, args=(GPU0 if i % 2 else GPU1,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(map(str, checks)) == ["cuda:0", "cuda:1"]
    assert sorted(answers, key=str) == sorted([(GPU0, True)] * 8 + [(GPU1, False)] * 8, key=str)
    assert len([w for w in caught if "self-test on cuda:1" in str(w.message)]) == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_checks_again_even_when_the_parent_forked_in_the_middle_of_a_check():
    """A forked child forgets the parent's verdicts and checks on its first use: verdicts belong to one process's
    device context. A parent thread inside a check at the fork holds the lock; the child has a fresh one."""
    from dp_pixel_torch.keystream_cuda import SelfTest

    checks, inside, release = [], threading.Event(), threading.Event()

    def check(device, variant):
        checks.append(device)
        if device == GPU1:
            inside.set()
            release.wait(30)
        return True

    test = SelfTest("k", "the reference", check)
    assert test.passes(GPU0) and checks == [GPU0]
    holder = threading.Thread(target=test.passes, args=(GPU1,))
    holder.start()
    assert inside.wait(30)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        try:
            signal.alarm(20)  # a deadlock ends the child, and the assertion below fails
            answer = f"{test.passes(GPU0)} {test.passes(GPU0)} {[str(d) for d in checks]}"
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    release.set()
    holder.join()
    assert answer == "True True ['cuda:0', 'cuda:1', 'cuda:0']"  # one new check in the child, then none
    assert [str(d) for d in checks] == ["cuda:0", "cuda:1"]  # the parent checked each device once


@pytest.fixture
def fresh_self_tests(monkeypatch):
    """The GPU kernels' self-tests with no verdicts yet, and no device marked failed; all restored afterwards."""
    from dp_pixel_torch import keystream_cuda

    for test in (kernels.FUSED_CHECK, keystream_cuda.KEYSTREAM_CHECK):
        monkeypatch.setattr(test, "_passed", set())
        monkeypatch.setattr(test, "_failed", set())
    monkeypatch.setattr(kernels, "_FAILED", set())


def test_a_single_launch_kernel_that_disagrees_is_dropped_and_every_release_is_the_eager_one(
    monkeypatch, fresh_self_tests
):
    """The CPU stands in for a GPU whose single-launch kernel writes zeros: the first release on it checks the kernel,
    warns once and releases what the eager path releases with the same seed (the stream draws one call, as eager);
    later releases, any cell side, never launch the kernel again and warn no more; auto runs eagerly there."""
    x = image((1, 3, 37, 53), torch.uint8)
    expected = {(b, s): dp_pixelize(x, 1.0, b, generator=KeyStream.from_seed(s), backend="eager")
                for b in (8, 16) for s in range(3)}  # fmt: skip
    launches = []

    def writes_zeros(x, b, scale, area, stream):
        launches.append(b)
        stream.reserve(x.numel() // b**2)
        return torch.zeros_like(x)

    monkeypatch.setattr(kernels, "_fused_launch", writes_zeros)
    monkeypatch.setattr(
        kernels,
        "fused_applies",
        lambda x, b, noise, generator, compiled: noise == "discrete" and isinstance(generator, KeyStream),
    )
    stream = KeyStream.from_seed(0)
    with pytest.warns(RuntimeWarning, match="dp_pixelize_uint8 gave output that differs from the torch path in its "
                      "self-test on cpu") as caught:  # fmt: skip
        assert torch.equal(dp_pixelize(x, 1.0, 8, generator=stream, backend="eager"), expected[8, 0])
    assert len(caught) == 1 and launches == [8] and stream.position == 1 and kernels._FAILED == {"cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for b, s in [(8, 1), (8, 2), (16, 1)]:
            released = dp_pixelize(x, 1.0, b, generator=KeyStream.from_seed(s), backend="eager")
            assert torch.equal(released, expected[b, s])
    assert launches == [8]


class OneBitOff:
    """A Triton kernel miscompiled by one bit: the first element of its output (argument ``out``) has its lowest bit
    flipped."""

    def __init__(self, kernel, out: int):
        self.kernel, self.fn, self.out = kernel, kernel.fn, out

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.kernel[grid](*args, **kwargs)
            args[self.out].view(-1)[0] ^= 1

        return run


def test_the_gpu_kernels_check_themselves_once_and_a_miscompiled_one_is_dropped():
    """The real Triton kernels in Triton's interpreter (the CPU stands in for a GPU). Genuine: each passes its
    self-test with no warning, once per device and cell shape, and then serves every release, equal to the eager one.
    Then each kernel is miscompiled by one bit (one pixel's lowest bit, one keystream word's): the self-test finds it
    (it compares exactly), warns once, and every release is again the eager one, with no further launch."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import warnings
        import torch
        from dp_pixel_torch import KeyStream, _triton_kernels, dp_pixelize, kernels, keystream_cuda
        warnings.simplefilter("error")
        x = (torch.rand((1, 3, 37, 53), generator=torch.Generator().manual_seed(0)) * 256).to(torch.uint8)
        eager = [dp_pixelize(x, 1.0, 8, generator=KeyStream.from_seed(s), backend="eager") for s in range(4)]
        kernels.fused_applies = lambda x, b, noise, generator, compiled: isinstance(generator, KeyStream)
        checks, launches = [], []
        check, launch = kernels.FUSED_CHECK.check, kernels._fused_launch
        kernels.FUSED_CHECK.check = lambda device, variant: checks.append(variant) or check(device, variant)
        kernels._fused_launch = lambda *args: launches.append(args[1]) or launch(*args)
        for s in range(2):
            assert torch.equal(dp_pixelize(x, 1.0, 8, generator=KeyStream.from_seed(s), backend="eager"), eager[s])
        assert checks == [(8, True)] and launches == [8] * 4, (checks, launches)  # 2 in the check, 1 per release
        key, words = bytes(range(32)), KeyStream(bytes(range(32))).words_at(5, 0, 100)
        for _ in range(3):
            assert torch.equal(keystream_cuda.chacha20_words(key, 5, 0, 100, "cpu"), words)
        _triton_kernels.dp_pixelize_uint8 = OneBitOff(_triton_kernels.dp_pixelize_uint8, 1)
        _triton_kernels.chacha20 = OneBitOff(_triton_kernels.chacha20, 1)
        kernels.FUSED_CHECK.forget()
        keystream_cuda.KEYSTREAM_CHECK.forget()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for s in (2, 3):
                assert torch.equal(dp_pixelize(x, 1.0, 8, generator=KeyStream.from_seed(s), backend="eager"), eager[s])
            assert all(keystream_cuda.chacha20_words(key, 5, 0, 100, "cpu") is None for _ in range(3))
        assert launches == [8] * 5, launches  # the check's first release, then none
        print(" | ".join(sorted(str(w.message).split(" in its")[0] for w in caught)))
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    script = inspect.getsource(OneBitOff) + script
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "the Triton kernel chacha20 gave output that differs from OpenSSL's keystream (made on the CPU, copied over) | "
        "the Triton kernel dp_pixelize_uint8 gave output that differs from the torch path"
    ), result.stdout + result.stderr[-3000:]
