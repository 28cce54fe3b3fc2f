"""The Triton kernel of :mod:`dp_pixel_torch.keystream_cuda`, imported on first use (Triton reads
``TRITON_INTERPRET`` when it defines a kernel, and importing it costs time that CPU users need not pay)."""

import triton
import triton.language as tl


@triton.jit
def rotl(v, r: tl.constexpr):
    return (v << r) | (v >> (32 - r))


@triton.jit
def quarter(a, b, c, d):
    a = a + b
    d = rotl(d ^ a, 16)
    c = c + d
    b = rotl(b ^ c, 12)
    a = a + b
    d = rotl(d ^ a, 8)
    c = c + d
    b = rotl(b ^ c, 7)
    return a, b, c, d


@triton.jit
def chacha20(state_ptr, out_ptr, first_block, n_blocks, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: 16 words per block overflow int32
    inside = index < n_blocks
    zero = tl.zeros([BLOCK], dtype=tl.uint32)
    i0 = zero + tl.load(state_ptr + 0)
    i1 = zero + tl.load(state_ptr + 1)
    i2 = zero + tl.load(state_ptr + 2)
    i3 = zero + tl.load(state_ptr + 3)
    i4 = zero + tl.load(state_ptr + 4)
    i5 = zero + tl.load(state_ptr + 5)
    i6 = zero + tl.load(state_ptr + 6)
    i7 = zero + tl.load(state_ptr + 7)
    i8 = zero + tl.load(state_ptr + 8)
    i9 = zero + tl.load(state_ptr + 9)
    i10 = zero + tl.load(state_ptr + 10)
    i11 = zero + tl.load(state_ptr + 11)
    i12 = (index + first_block).to(tl.uint32)  # the block counter
    i13 = zero + tl.load(state_ptr + 12)
    i14 = zero + tl.load(state_ptr + 13)
    i15 = zero + tl.load(state_ptr + 14)
    x0, x1, x2, x3, x4, x5, x6, x7 = i0, i1, i2, i3, i4, i5, i6, i7
    x8, x9, x10, x11, x12, x13, x14, x15 = i8, i9, i10, i11, i12, i13, i14, i15
    for _ in range(10):  # 20 rounds: a column round and a diagonal round each time
        x0, x4, x8, x12 = quarter(x0, x4, x8, x12)
        x1, x5, x9, x13 = quarter(x1, x5, x9, x13)
        x2, x6, x10, x14 = quarter(x2, x6, x10, x14)
        x3, x7, x11, x15 = quarter(x3, x7, x11, x15)
        x0, x5, x10, x15 = quarter(x0, x5, x10, x15)
        x1, x6, x11, x12 = quarter(x1, x6, x11, x12)
        x2, x7, x8, x13 = quarter(x2, x7, x8, x13)
        x3, x4, x9, x14 = quarter(x3, x4, x9, x14)
    base = out_ptr + index * 16
    tl.store(base + 0, x0 + i0, mask=inside)
    tl.store(base + 1, x1 + i1, mask=inside)
    tl.store(base + 2, x2 + i2, mask=inside)
    tl.store(base + 3, x3 + i3, mask=inside)
    tl.store(base + 4, x4 + i4, mask=inside)
    tl.store(base + 5, x5 + i5, mask=inside)
    tl.store(base + 6, x6 + i6, mask=inside)
    tl.store(base + 7, x7 + i7, mask=inside)
    tl.store(base + 8, x8 + i8, mask=inside)
    tl.store(base + 9, x9 + i9, mask=inside)
    tl.store(base + 10, x10 + i10, mask=inside)
    tl.store(base + 11, x11 + i11, mask=inside)
    tl.store(base + 12, x12 + i12, mask=inside)
    tl.store(base + 13, x13 + i13, mask=inside)
    tl.store(base + 14, x14 + i14, mask=inside)
    tl.store(base + 15, x15 + i15, mask=inside)
