"""ChaCha20 keystream on the GPU: a Triton kernel that writes, on the device, the words OpenSSL writes on the CPU.

A :class:`~dp_pixel_torch.noise.KeyStream` on a CUDA device would otherwise make its keystream on the CPU (about
5 GB/s on one core) and copy it over PCIe: at b=8 a batch of 256 1080p frames needs 200 MB of it. Each Triton program
computes 64-byte blocks of RFC 8439 ChaCha20 (key, 32-bit block counter, 96-bit nonce = the stream's call number),
exactly as OpenSSL does, so seeded noise is the same words on either device and ``secure=True`` keeps its CSPRNG on
the GPU. Tests compare it with OpenSSL bit for bit, on CUDA and, without a GPU, in Triton's interpreter
(``TRITON_INTERPRET=1``, which runs the same kernel on CPU tensors).

A kernel that builds may still compute wrong words on a GPU or Triton version it was never run on, and wrong words
would be released silently. So each hand-written kernel here is checked on its first use on each device, in each
process (:class:`SelfTest`): the keystream kernel against OpenSSL's words (:data:`KEYSTREAM_CHECK`), the single-launch
release of :mod:`dp_pixel_torch.kernels` against the eager path. A kernel that disagrees is dropped on that device
with one warning, and the torch path, which computes the same words and values, takes over.
"""

from __future__ import annotations

import functools
import os
import struct
import threading
import warnings
import weakref
from collections.abc import Callable, Hashable

import torch

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_BLOCKS_PER_PROGRAM = 256


#: Kernels that have run once, and whether one failed to build (then every Triton kernel here stays off).
_LAUNCHED: set[str] = set()
_FAILED: list[str] = []


def available() -> bool:
    """Whether the GPU kernels can run: CUDA and Triton are both present, and none of them failed to build."""
    return torch.cuda.is_available() and _triton() is not None and not _FAILED


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> bool:
    """Launch a Triton kernel. The first launch of each kernel compiles it: if that fails (a Triton or driver version
    this code has not met), the kernels here are turned off with one warning and False is returned, so that callers
    take the torch path, which computes the same words and values. Later errors propagate."""
    name = kernel.fn.__name__
    if name in _LAUNCHED:
        kernel[grid](*args, **kwargs)
        return True
    try:
        kernel[grid](*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - a kernel that does not build here must not break the layer
        _FAILED.append(name)
        warnings.warn(
            f"the Triton kernel {name} failed to build ({type(error).__name__}: {error}); dp_pixel_torch uses its "
            "torch path instead (same output, slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    _LAUNCHED.add(name)
    return True


@functools.cache
def _triton():
    try:
        import triton
    except ImportError:
        return None
    return triton


class SelfTest:
    """A hand-written GPU kernel's check against its reference, run once per device (and per ``variant``: a
    separately compiled version of the kernel) and process, before the kernel's first use there.

    ``check(device, variant)`` computes a small known input both ways on ``device`` and returns whether the outputs are
    equal bit for bit (None where the kernel did not build: :func:`launch` has warned already). A check that disagrees
    or raises drops the kernel on that device for the rest of the process (every variant), with one warning; one that
    agrees is not run again for that device and variant, so a match costs one small check, not one per call.

    Thread-safe: threads that meet an unchecked device together wait for one check. A forked child forgets every
    verdict (and gets a fresh lock, which a thread of the parent may have held at the fork) and checks again on its
    first use: a verdict is about one process's device context and kernel binaries. In practice a CUDA device checked
    in the parent cannot be used in a forked child at all (CUDA refuses a forked context), so nothing is lost."""

    def __init__(self, kernel: str, reference: str, check: Callable[[torch.device, Hashable], bool | None]) -> None:
        self.kernel, self.reference, self.check = kernel, reference, check
        self.forget()
        _SELF_TESTS.add(self)

    def forget(self) -> None:
        """Drop every verdict: each device is checked again on its next use."""
        self._lock = threading.Lock()
        self._passed: set[tuple[torch.device, Hashable]] = set()
        self._failed: set[torch.device] = set()

    def passes(self, device: torch.device | str, variant: Hashable = None) -> bool:
        """Whether the kernel may run on ``device`` (``"cuda"`` means the current CUDA device): checked on first use."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (device, variant)
        if key in self._passed:  # set lookups: the cost of every call after the first
            return True
        if device in self._failed:
            return False
        with self._lock:
            if key in self._passed or device in self._failed:
                return key in self._passed
            try:
                agrees, reason = self.check(device, variant), "gave output that differs from " + self.reference
            except Exception as error:  # noqa: BLE001 - a kernel that crashes in its check must not be used
                agrees, reason = False, f"raised {type(error).__name__}: {error}"
            if agrees:
                self._passed.add(key)
                return True
            self._failed.add(device)
        if agrees is False:
            warnings.warn(
                f"the Triton kernel {self.kernel} {reason} in its self-test on {device}; dp_pixel_torch uses "
                f"{self.reference} on {device} from now on in this process (the intended output, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False


_SELF_TESTS: weakref.WeakSet[SelfTest] = weakref.WeakSet()


def _forget_in_child() -> None:
    for test in list(_SELF_TESTS):
        test.forget()


os.register_at_fork(after_in_child=_forget_in_child)


def chacha20_words(key: bytes, call: int, first_block: int, n: int, device: torch.device | str) -> torch.Tensor | None:
    """``n`` int64 words of the ChaCha20 keystream of ``key`` under nonce ``call`` (12 bytes, little-endian), from
    block ``first_block``: the words :meth:`KeyStream.words_at` makes with OpenSSL (None if the kernel does not
    build here or failed its self-test on ``device``: the caller then takes OpenSSL's words)."""
    if not KEYSTREAM_CHECK.passes(device):
        return None
    return _kernel_words(key, call, first_block, n, device)


def _kernel_words(key: bytes, call: int, first_block: int, n: int, device: torch.device | str) -> torch.Tensor | None:
    """:func:`chacha20_words` by the kernel, unchecked."""
    from ._triton_kernels import chacha20

    triton = _triton()
    blocks = -(-n // 8)
    out = torch.empty(blocks * 16, dtype=torch.uint32, device=device)
    grid = (triton.cdiv(blocks, _BLOCKS_PER_PROGRAM),)
    if not launch(chacha20, grid, state_words(key, call, device), out, first_block, blocks, BLOCK=_BLOCKS_PER_PROGRAM):
        return None
    return out.view(torch.int64)[:n]


#: The key and the pieces ``(call, first block, words)`` of the keystream check: a nonce that fills all three of its
#: words, a block counter with its top bit set, a partial block, and more than two programs' blocks.
_CHECK_KEY = bytes(range(7, 39))
_CHECK_PIECES = ((1, 0, 77), (2**90 + 0x123456789, 2**32 - 600, 2 * 8 * _BLOCKS_PER_PROGRAM + 77))


def _keystream_agrees(device: torch.device, variant: Hashable) -> bool | None:
    """Whether the keystream kernel writes OpenSSL's words on ``device`` (None: it did not build)."""
    from .noise import KeyStream

    reference = KeyStream(_CHECK_KEY)
    for call, first_block, n in _CHECK_PIECES:
        words = _kernel_words(_CHECK_KEY, call, first_block, n, device)
        if words is None:
            return None
        if not torch.equal(words.cpu(), reference.words_at(call, 8 * first_block, n)):
            return False
    return True


#: The self-test of the keystream kernel, against OpenSSL's words.
KEYSTREAM_CHECK = SelfTest("chacha20", "OpenSSL's keystream (made on the CPU, copied over)", _keystream_agrees)


def state_words(key: bytes, call: int, device: torch.device | str) -> torch.Tensor:
    """The 15 fixed words of a ChaCha20 block for ``key`` and nonce ``call``: constants, key, nonce (uint32)."""
    words = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<3I", call.to_bytes(12, "little"))]
    return torch.tensor(words, dtype=torch.int64).to(torch.uint32).to(device)
