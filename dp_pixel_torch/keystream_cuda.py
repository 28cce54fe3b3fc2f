"""ChaCha20 keystream on the GPU: a Triton kernel that writes, on the device, the words OpenSSL writes on the CPU.

A :class:`~dp_pixel_torch.noise.KeyStream` on a CUDA device would otherwise make its keystream on the CPU (about
5 GB/s on one core) and copy it over PCIe: at b=8 a batch of 256 1080p frames needs 200 MB of it. Each Triton program
computes 64-byte blocks of RFC 8439 ChaCha20 (key, 32-bit block counter, 96-bit nonce = the stream's call number),
exactly as OpenSSL does, so seeded noise is the same words on either device and ``secure=True`` keeps its CSPRNG on
the GPU. Tests compare it with OpenSSL bit for bit, on CUDA and, without a GPU, in Triton's interpreter
(``TRITON_INTERPRET=1``, which runs the same kernel on CPU tensors).
"""

from __future__ import annotations

import functools
import struct
import warnings

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


def chacha20_words(key: bytes, call: int, first_block: int, n: int, device: torch.device | str) -> torch.Tensor | None:
    """``n`` int64 words of the ChaCha20 keystream of ``key`` under nonce ``call`` (12 bytes, little-endian), from
    block ``first_block``: the words :meth:`KeyStream.words_at` makes with OpenSSL (None if the kernel does not
    build here)."""
    from ._triton_kernels import chacha20

    triton = _triton()
    blocks = -(-n // 8)
    out = torch.empty(blocks * 16, dtype=torch.uint32, device=device)
    grid = (triton.cdiv(blocks, _BLOCKS_PER_PROGRAM),)
    if not launch(chacha20, grid, state_words(key, call, device), out, first_block, blocks, BLOCK=_BLOCKS_PER_PROGRAM):
        return None
    return out.view(torch.int64)[:n]


def state_words(key: bytes, call: int, device: torch.device | str) -> torch.Tensor:
    """The 15 fixed words of a ChaCha20 block for ``key`` and nonce ``call``: constants, key, nonce (uint32)."""
    words = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<3I", call.to_bytes(12, "little"))]
    return torch.tensor(words, dtype=torch.int64).to(torch.uint32).to(device)
