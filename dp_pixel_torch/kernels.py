"""Fused pixel passes: the compiled fast path of the layers, and the choice between it and the eager path.

The pixels are read once (exact integer cell sums) and written once (the fill); between the two, every cell's noise and
mean is one fused pass over the cells. ``torch.compile`` generates the kernels: C++ with OpenMP on the CPU, Triton on
CUDA. The compiled functions are the eager ones (:func:`block_sums`, :func:`fill_blocks` and the cell pass of
:func:`~dp_pixel_torch.functional.noisy_values`), so with the same noise words both paths give bit-identical output;
the tests check this for every dtype, border rule and level set. One exception: float64 images with continuous noise
(``noise="laplace"``), whose float64 ``log`` comes from different vector-math routines in eager torch and in the
compiled kernel; they differ in the last bit for about 0.7% of cells, and so do those outputs (by one unit in the last
place).

``backend`` (of the layers and functions):

* ``"auto"`` (the default): eager until compiling has been shown to pay, per release signature and process
  (:class:`AutoChoice`). A signature (the guarantee, the input's shape, dtype and device) runs eagerly until its eager
  calls have taken :data:`AUTO_COMPILE_AFTER_S` seconds in this process; then it compiles, times
  :data:`AUTO_TRIAL_CALLS` compiled calls, and keeps whichever path was faster per call. A job that is short in one
  process (a DataLoader worker, a CLI run on a clip, a first call) never compiles, so it runs at the eager speed; a
  long one pays one compile, and at most that, for kernels that make the rest of it faster. Never compiled where
  compilation is disabled (``TORCH_COMPILE_DISABLE=1``) or has no compiler, or for inputs with fewer than
  :data:`AUTO_MIN_VALUES` values. Where a compile fails (a broken compiler toolchain, say), the call that met the
  failure runs the same function eagerly on the same arguments (the noise words already drawn, so the release is
  the one the compiled path would have made, and no word is drawn twice), with one warning, and every later
  ``"auto"`` call on that device type runs eagerly.
* ``"compiled"``: always compiled; raises where no compiler is found or a compile fails.
* ``"eager"``: plain torch operations.

Every compiled function specialises on its shapes (``dynamic=False``: the fastest code, and the code whose ``log``
matches eager torch), so each new batch size or resolution compiles once: 3.5-15 s on 2 CPU cores with a cold cache,
0.2-2 s from Inductor's cache. At most :data:`MAX_SHAPES` shapes per function are compiled; later ones run eagerly,
with one warning, so a stream of changing shapes never recompiles without bound (Dynamo's ``recompile_limit``, 8 by
default, is raised to that budget during these calls only). On the CPU the fill stays eager: ``repeat_interleave``
already writes at the speed of a copy there, and the compiled gather measured slower.

On CUDA a release of a few uint8 frames under discrete noise (one video frame, say) is one Triton launch
(:func:`fused_dp_pixelize`): sums, keystream, noise, rounding and fill in one kernel, with no intermediate tensors,
instead of the four launches of the compiled path. It draws the same keystream words, so it releases the same image.
That kernel, like the keystream kernel, checks itself before its first use on each device and cell shape, in each
process (:data:`FUSED_CHECK`): two small releases (strong and weak noise, border cells, several programs) through it
and through the eager path, from the same words on the same device, must be equal bit for bit. A kernel that differs
is dropped on that device with one warning; its releases take the compiled path there (eager under
``backend="auto"`` from then on, as after a failed compile).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator

import torch
import torch.nn.functional as F

from . import keystream_cuda
from .noise import KeyStream, half_one_plus_a
from .partitions import GridPartition

BACKENDS = ("auto", "compiled", "eager")
#: Inputs with fewer values than this run eagerly under ``backend="auto"``.
AUTO_MIN_VALUES = 1 << 18
#: Seconds of eager calls per release signature and process after which ``backend="auto"`` tries the compiled path:
#: about what a cold compile costs on 2 CPU cores (3.5-15 s), so a job loses at most that once, and only a job that
#: has already run this long eagerly.
AUTO_COMPILE_AFTER_S = 20.0
#: Compiled calls (after the one that compiles) that ``backend="auto"`` times before it keeps the faster path.
AUTO_TRIAL_CALLS = 3
#: Signatures whose eager time ``backend="auto"`` keeps per process; further ones run eagerly, untimed.
AUTO_MAX_SIGNATURES = 4096
#: Shapes compiled per function; more run eagerly.
MAX_SHAPES = 16
#: Block sides whose sums are one pass over b² shifted views; larger blocks sum rows first, then columns.
_ONE_PASS_MAX_B = 8
#: The largest block side summed by a compiled kernel: its loops are unrolled (compile time grows with b), and int32
#: holds b²·255 far beyond it. Larger cells take the eager sums, which widen to int64 as needed.
_COMPILED_MAX_B = 64


#: True inside a ``backend="compiled"`` release: a compile failure raises there instead of falling back to eager.
_STRICT = contextvars.ContextVar("dp_pixel_torch_strict_compile", default=False)
#: Device types on which a compile has failed, or the single-launch kernel failed its self-test, in this process:
#: ``backend="auto"`` runs eagerly there from then on.
_FAILED: set[str] = set()


def check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def use_compiled(backend: str, x: torch.Tensor) -> bool:
    """Whether ``x`` may take the compiled path under ``backend`` (under ``"auto"``, :func:`choose` decides when)."""
    if backend == "eager":
        return False
    if backend == "compiled":
        if not compiler_available(x.device):
            raise RuntimeError(
                f"backend='compiled' needs torch.compile on {x.device.type}: "
                + ("Triton and a CUDA device" if x.device.type == "cuda" else "a C++ compiler (g++ or clang++)")
                + "; use backend='auto' to fall back to the eager path"
            )
        return True
    return x.numel() >= AUTO_MIN_VALUES and x.device.type not in _FAILED and compiler_available(x.device)


@dataclasses.dataclass
class _Tally:
    """What ``backend="auto"`` has measured of one release signature."""

    eager_s: float = 0.0
    eager_calls: int = 0
    compiled_s: float = 0.0
    compiled_calls: int = -1  # the first compiled call compiles: it is not timed
    plan: str = "eager"  # "eager", "trial", "compiled" or "eager for good"


class AutoChoice:
    """The choice of ``backend="auto"`` in one process: per release signature, eager until the eager calls have taken
    :data:`AUTO_COMPILE_AFTER_S` seconds, then :data:`AUTO_TRIAL_CALLS` timed compiled calls (after the one that
    compiles), then whichever path was faster per call, for good.

    This is the ski-rental rule: a job that ends before the threshold runs at the eager speed; one that goes on pays
    one compile (about the threshold again, cold) and then runs on the faster path, so no job loses more than one
    compile. A compiled path that turns out slower per call (per-sample calls, where guards and launches outweigh
    the work) is dropped after the trial. Both paths release the same image, so the choice never shows in the output.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: dict[Hashable, _Tally] = {}

    def compiled(self, signature: Hashable) -> bool:
        """Whether the next call of ``signature`` takes the compiled path."""
        return self.plan(signature) in ("trial", "compiled")

    def plan(self, signature: Hashable) -> str | None:
        """``"eager"``, ``"trial"``, ``"compiled"``, ``"eager for good"``, or None for a signature not seen yet."""
        with self._lock:
            tally = self._tallies.get(signature)
        return None if tally is None else tally.plan

    def record(self, signature: Hashable, seconds: float, compiled: bool) -> None:
        """Count one call of ``signature`` that took ``seconds`` on the path it was given."""
        with self._lock:
            tally = self._tallies.get(signature)
            if tally is None:
                if len(self._tallies) >= AUTO_MAX_SIGNATURES:
                    return
                tally = self._tallies[signature] = _Tally()
            if tally.plan == "eager" and not compiled:
                tally.eager_s += seconds
                tally.eager_calls += 1
                if tally.eager_s >= AUTO_COMPILE_AFTER_S:
                    tally.plan = "trial"
            elif tally.plan == "trial" and compiled:
                if tally.compiled_calls >= 0:
                    tally.compiled_s += seconds
                tally.compiled_calls += 1
                if tally.compiled_calls >= AUTO_TRIAL_CALLS:
                    faster = tally.compiled_s / tally.compiled_calls < tally.eager_s / tally.eager_calls
                    tally.plan = "compiled" if faster else "eager for good"


#: The choice of ``backend="auto"`` in this process.
AUTO = AutoChoice()


@contextlib.contextmanager
def choose(backend: str, x: torch.Tensor, release: Hashable) -> Iterator[bool]:
    """Whether the release of ``x`` in the ``with`` block takes the compiled path under ``backend``; under ``"auto"``
    the block's time is counted for the signature (``release`` — the guarantee, say — and ``x``'s shape, dtype and
    device) by :data:`AUTO`. A block that raises is not counted."""
    if backend == "compiled":
        strict = _STRICT.set(use_compiled(backend, x))
        try:
            yield True
        finally:
            _STRICT.reset(strict)
        return
    if backend == "eager" or x.numel() < AUTO_MIN_VALUES:
        yield False
        return
    signature = (release, tuple(x.shape), x.dtype, x.device)
    compiled = AUTO.compiled(signature) and use_compiled(backend, x)  # the compiler is looked for once it may pay
    start = time.perf_counter()
    yield compiled
    AUTO.record(signature, time.perf_counter() - start, compiled)


def compiler_available(device: torch.device) -> bool:
    """Whether torch.compile can generate kernels for ``device`` in this process."""
    if os.environ.get("TORCH_COMPILE_DISABLE", "") not in ("", "0") or torch._dynamo.config.disable:
        return False
    return _can_compile_for(device.type)


@functools.cache
def _can_compile_for(device_type: str) -> bool:
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return torch.cuda.is_available() and has_triton()
    if device_type != "cpu":
        return False
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # noqa: BLE001 - any failure to find a compiler means: no compiled CPU kernels
        return False
    return True


class Compiled:
    """``fn`` compiled by ``torch.compile(dynamic=False)``, for at most :data:`MAX_SHAPES` argument signatures
    (shapes, dtypes, devices and plain values); other signatures run ``fn`` eagerly, with one warning. Dynamo's own
    ``recompile_limit`` is raised to the budget during these calls, so that the budget, not Dynamo, decides when to
    stop compiling. A compile that fails raises inside a ``backend="compiled"`` release; anywhere else the call runs
    ``fn`` eagerly on the same arguments (the same output: ``fn`` is pure), warns once, and marks the device type as
    failed for ``backend="auto"``."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._compiled: Callable | None = None
        self._signatures: set[tuple] = set()
        self._lock = threading.Lock()
        self._warned = False
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        signature = tuple(
            (tuple(a.shape), a.dtype, a.device.type, a.device.index) if isinstance(a, torch.Tensor) else a for a in args
        )
        with self._lock:
            known = signature in self._signatures
            if not known and len(self._signatures) < MAX_SHAPES:
                self._signatures.add(signature)
                known = True
        if known:
            if self._compiled is None:  # made on first use: importing torch._dynamo takes a while
                self._compiled = torch.compile(self.fn, dynamic=False)
            try:
                with torch._dynamo.config.patch(recompile_limit=MAX_SHAPES):
                    return self._compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as error:
                if _STRICT.get():
                    raise
                _fall_back(args, error)
                return self.fn(*args)
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"{self.fn.__name__}: {MAX_SHAPES} shapes are compiled already; new shapes run eagerly "
                "(same output, slower). Pad or resize inputs to a few shapes to keep the compiled path.",
                RuntimeWarning,
                stacklevel=3,
            )
        return self.fn(*args)


def _fall_back(args: tuple, error: Exception) -> None:
    """Mark the device type of ``args`` as failed for ``backend="auto"``, with one warning."""
    device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
    if device not in _FAILED:
        _FAILED.add(device)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"torch.compile failed on {device} ({reason}); backend='auto' runs eagerly there from now on (same "
            "output, slower). backend='compiled' raises instead; backend='eager' or TORCH_COMPILE_DISABLE=1 skips "
            "compiling.",
            RuntimeWarning,
            stacklevel=4,
        )


def block_sums(x: torch.Tensor, b: int) -> torch.Tensor:
    """Exact sums of the ``b×b`` cells of uint8 ``x [N, H, W]`` from the top-left corner: int32 ``[N, ⌈H/b⌉, ⌈W/b⌉]``.

    Cut-short border cells sum their real pixels: zero padding adds nothing to an integer sum. One pass over the
    pixels: each cell adds its b² pixels (or, for large b, its b row-sums) in registers.
    """
    n, height, width = x.shape
    rows, cols = -(-height // b), -(-width // b)
    cells = F.pad(x, (0, cols * b - width, 0, rows * b - height)).view(n, rows, b, cols, b)
    if b <= _ONE_PASS_MAX_B:
        total = cells[:, :, 0, :, 0].to(torch.int32)
        for i in range(b):
            for j in range(b):
                if i or j:
                    total = total + cells[:, :, i, :, j]
        return total
    row_sums = cells[:, :, 0].to(torch.int32)
    for i in range(1, b):
        row_sums = row_sums + cells[:, :, i]
    total = row_sums[..., 0]
    for j in range(1, b):
        total = total + row_sums[..., j]
    return total


def fill_blocks(values: torch.Tensor, b: int, height: int, width: int) -> torch.Tensor:
    """Paint ``b×b`` cells: ``values [N, rows, cols]`` -> ``[N, height, width]``, each pixel its cell's value (one
    gather per output pixel)."""
    rows = torch.arange(height, device=values.device) // b
    cols = torch.arange(width, device=values.device) // b
    return values[:, rows[:, None], cols[None, :]]


compiled_block_sums = Compiled(block_sums)
compiled_fill_blocks = Compiled(fill_blocks)


def cell_sums(partition: GridPartition, x: torch.Tensor, compiled: bool) -> torch.Tensor:
    """:meth:`GridPartition.cell_sums` of ``x [..., H, W]``, by the compiled :func:`block_sums` when ``compiled``, ``x``
    is uint8 and the cells are square blocks of side <= 64 (the same integers, as int32)."""
    b = partition.block_side
    if not compiled or b is None or b > _COMPILED_MAX_B or x.dtype != torch.uint8:
        return partition.cell_sums(x)
    flat = x.reshape(-1, *x.shape[-2:]).contiguous()
    return compiled_block_sums(flat, b).reshape(*x.shape[:-2], *partition.shape)


def fill(partition: GridPartition, values: torch.Tensor, compiled: bool) -> torch.Tensor:
    """:meth:`GridPartition.fill`, by the compiled :func:`fill_blocks` when ``compiled``, the cells are square blocks
    and the values are on CUDA (on the CPU the eager fill is the faster)."""
    b = partition.block_side
    if not compiled or b is None or values.device.type != "cuda":
        return partition.fill(values)
    flat = values.reshape(-1, *values.shape[-2:]).contiguous()
    return compiled_fill_blocks(flat, b, *partition.image_shape).reshape(*values.shape[:-2], *partition.image_shape)


#: The largest cell side of the single-launch kernel: one program holds next_pow2(b)² pixels per cell.
FUSED_MAX_B = 32
#: The most cells the single-launch kernel serves (a few 1080p frames). It computes one ChaCha20 block per cell, 8×
#: the keystream kernel's work, so larger batches take the compiled path until a GPU measures which is faster.
FUSED_MAX_CELLS = 1 << 20


def fused_applies(x: torch.Tensor, b: int | None, noise: str, generator: object, compiled: bool) -> bool:
    """Whether :func:`fused_dp_pixelize` serves this release: the compiled path on CUDA with Triton, uint8 square
    cells of side <= 32, at most :data:`FUSED_MAX_CELLS` cells, discrete noise and a KeyStream (a torch generator
    draws its own words)."""
    return (
        compiled
        and x.device.type == "cuda"
        and keystream_cuda.available()
        and x.dtype == torch.uint8
        and noise == "discrete"
        and b is not None
        and b <= FUSED_MAX_B
        and x.numel() <= FUSED_MAX_CELLS * b * b
        and isinstance(generator, KeyStream)
    )


def fused_dp_pixelize(x: torch.Tensor, b: int, scale: float, area: bool, stream: KeyStream) -> torch.Tensor | None:
    """Uniform DP-Pix of uint8 ``x [..., C, H, W]`` with ``b×b`` cells in **one kernel launch** (Triton): each cell's
    exact sum, the keystream word of its index (the next call of ``stream``, the same words as
    :meth:`KeyStream.words` gives the other paths), discrete Laplace noise of ``scale``, the clipped mean rounded half
    to even, divided by the cell's area (``area``) or by b², and the fill. For one frame this replaces the keystream,
    sums, cell and fill launches (and their intermediate tensors) of the compiled path. None if the kernel does not
    build here (see :func:`~dp_pixel_torch.keystream_cuda.launch`) or fails its self-test on ``x``'s device
    (:data:`FUSED_CHECK`): the caller then takes the compiled path, and ``stream`` has drawn nothing."""
    if not FUSED_CHECK.passes(x.device, (b, area)):
        _FAILED.add(x.device.type)
        return None
    return _fused_launch(x, b, scale, area, stream)


def _fused_launch(x: torch.Tensor, b: int, scale: float, area: bool, stream: KeyStream) -> torch.Tensor | None:
    """:func:`fused_dp_pixelize` by the kernel, unchecked."""
    from ._triton_kernels import dp_pixelize_uint8

    height, width = x.shape[-2:]
    planes = x.reshape(-1, height, width).contiguous()
    rows, cols = -(-height // b), -(-width // b)
    n_cells = planes.shape[0] * rows * cols
    side = 1 << (b - 1).bit_length()  # the next power of two
    block = max(1, 4096 // (side * side))  # cells per program
    out = torch.empty_like(planes)
    call = stream.reserve(n_cells)  # first: a copy in another process re-keys itself here, before the key is read
    state = keystream_cuda.state_words(stream.key, call, x.device)
    grid = (-(-n_cells // block),)
    launched = keystream_cuda.launch(
        dp_pixelize_uint8, grid, planes, out, state, n_cells, height, width, rows, cols, scale,
        half_one_plus_a(scale), B=b, BB=side, AREA=area, BLOCK=block,
    )  # fmt: skip
    return out.reshape(x.shape) if launched else None


#: The key of the self-test's releases.
_CHECK_KEY = bytes(range(32))


def _fused_agrees(device: torch.device, variant: tuple[int, bool]) -> bool | None:
    """Whether the single-launch kernel releases what the eager path releases from the same words on ``device``, for
    ``b×b`` cells divided by their area or by b² (``variant``), bit for bit (None: it did not build). The image: one
    frame of 3 channels, random levels, cut-short border cells on both sides, and more cells than one program holds;
    released under strong noise (clipped at 0 and 255) and weak noise (rounding), at two calls of the stream."""
    from .accounting import PrivacyGuarantee
    from .functional import noisy_cell_values

    b, area = variant
    per_program = max(1, 4096 // (1 << (b - 1).bit_length()) ** 2)
    side = math.isqrt(per_program // 3) + 2  # 3 planes of at least side² cells: more than one program's
    shape = (1, 3, side * b - b // 2, side * b + (b + 1) // 3)
    x = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(b), dtype=torch.uint8, device="cpu")
    x = x.to(device)
    partition = GridPartition.for_cells(*shape[-2:], b, None)
    fused_stream, eager_stream = KeyStream(_CHECK_KEY), KeyStream(_CHECK_KEY)
    for epsilon in (0.5, 50.0):
        guarantee = PrivacyGuarantee(epsilon, 1, b, None, "joint", "discrete", "area" if area else "zero_pad", False)
        fused = _fused_launch(x, b, guarantee.noise_scale(shape[-3], 255.0), area, fused_stream)
        if fused is None:
            return None
        eager = partition.fill(noisy_cell_values(x, guarantee, partition, (0.0, 255.0), eager_stream))
        if not torch.equal(fused, eager):
            return False
    return True


#: The self-test of the single-launch kernel, per device and ``(b, area)``: against the eager path.
FUSED_CHECK = keystream_cuda.SelfTest("dp_pixelize_uint8", "the torch path", _fused_agrees)
