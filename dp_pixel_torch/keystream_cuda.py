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

import torch

_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_BLOCKS_PER_PROGRAM = 256


def available() -> bool:
    """Whether the GPU kernel can run: CUDA and Triton are both present."""
    return torch.cuda.is_available() and _triton() is not None


@functools.cache
def _triton():
    try:
        import triton
    except ImportError:
        return None
    return triton


def chacha20_words(key: bytes, call: int, first_block: int, n: int, device: torch.device | str) -> torch.Tensor:
    """``n`` int64 words of the ChaCha20 keystream of ``key`` under nonce ``call`` (12 bytes, little-endian), from
    block ``first_block``: the words :meth:`KeyStream.words_at` makes with OpenSSL."""
    triton = _triton()
    blocks = -(-n // 8)
    state = torch.tensor(
        [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<3I", call.to_bytes(12, "little"))], dtype=torch.int64
    ).to(torch.uint32)
    out = torch.empty(blocks * 16, dtype=torch.uint32, device=device)
    from ._chacha20_kernel import chacha20

    chacha20[(triton.cdiv(blocks, _BLOCKS_PER_PROGRAM),)](
        state.to(device), out, first_block, blocks, BLOCK=_BLOCKS_PER_PROGRAM
    )
    return out.view(torch.int64)[:n]
