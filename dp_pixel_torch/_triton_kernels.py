"""Triton kernels, imported on first use (Triton reads ``TRITON_INTERPRET`` when it defines a kernel, and importing it
costs time that CPU users need not pay): the ChaCha20 keystream of :mod:`dp_pixel_torch.keystream_cuda`, and the
single-launch uniform DP-Pix of :func:`dp_pixel_torch.kernels.fused_dp_pixelize`."""

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
def chacha20_block(state_ptr, counter):
    """The 16 output words (uint32) of the RFC 8439 block at ``counter`` (a uint32 tensor) for the 15 state words at
    ``state_ptr``: the constants, the key, the 96-bit nonce."""
    zero = counter * 0
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
    i13 = zero + tl.load(state_ptr + 12)
    i14 = zero + tl.load(state_ptr + 13)
    i15 = zero + tl.load(state_ptr + 14)
    x0, x1, x2, x3, x4, x5, x6, x7 = i0, i1, i2, i3, i4, i5, i6, i7
    x8, x9, x10, x11, x12, x13, x14, x15 = i8, i9, i10, i11, counter, i13, i14, i15
    for _ in range(10):  # 20 rounds: a column round and a diagonal round each time
        x0, x4, x8, x12 = quarter(x0, x4, x8, x12)
        x1, x5, x9, x13 = quarter(x1, x5, x9, x13)
        x2, x6, x10, x14 = quarter(x2, x6, x10, x14)
        x3, x7, x11, x15 = quarter(x3, x7, x11, x15)
        x0, x5, x10, x15 = quarter(x0, x5, x10, x15)
        x1, x6, x11, x12 = quarter(x1, x6, x11, x12)
        x2, x7, x8, x13 = quarter(x2, x7, x8, x13)
        x3, x4, x9, x14 = quarter(x3, x4, x9, x14)
    return (
        x0 + i0, x1 + i1, x2 + i2, x3 + i3, x4 + i4, x5 + i5, x6 + i6, x7 + i7,
        x8 + i8, x9 + i9, x10 + i10, x11 + i11, x12 + counter, x13 + i13, x14 + i14, x15 + i15,
    )  # fmt: skip


@triton.jit
def chacha20(state_ptr, out_ptr, first_block, n_blocks, BLOCK: tl.constexpr):
    """Blocks ``first_block .. first_block + n_blocks - 1`` of the keystream, 16 uint32 words each."""
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: 16 words per block overflow int32
    inside = index < n_blocks
    out = chacha20_block(state_ptr, (index + first_block).to(tl.uint32))
    base = out_ptr + index * 16
    for k in tl.static_range(16):
        tl.store(base + k, out[k], mask=inside)


@triton.jit
def keystream_word(state_ptr, word):
    """Word ``word`` (int64 tensor) of the keystream as int64: bytes 8·word .. 8·word+7, little-endian."""
    out = chacha20_block(state_ptr, (word // 8).to(tl.uint32))
    k = word % 8
    lo = out[0]
    hi = out[1]
    for pair in tl.static_range(1, 8):
        lo = tl.where(k == pair, out[2 * pair], lo)
        hi = tl.where(k == pair, out[2 * pair + 1], hi)
    return (lo.to(tl.uint64) | (hi.to(tl.uint64) << 32)).to(tl.int64, bitcast=True)


@triton.jit
def dp_pixelize_uint8(
    x_ptr,
    out_ptr,
    state_ptr,
    n_cells,
    height,
    width,
    rows,
    cols,
    scale,
    half_one_plus_a,
    B: tl.constexpr,
    BB: tl.constexpr,
    AREA: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Uniform DP-Pix of uint8 planes ``[P, height, width]`` in one pass: each cell's exact sum, its keystream word
    (word = cell index, so the words are those of ``KeyStream.words``), discrete Laplace noise, the clipped mean
    rounded half to even, and the fill. ``BB`` is the next power of two >= ``B``."""
    cell = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = cell < n_cells
    plane = cell // (rows * cols)
    row = (cell // cols) % rows
    col = cell % cols
    offset = tl.arange(0, BB * BB)
    dy = offset // BB
    dx = offset % BB
    y = row[:, None] * B + dy[None, :]
    x = col[:, None] * B + dx[None, :]
    inside = valid[:, None] & (dy < B)[None, :] & (dx < B)[None, :] & (y < height) & (x < width)
    pixel = plane[:, None] * height * width + y * width + x
    total = tl.sum(tl.load(x_ptr + pixel, mask=inside, other=0).to(tl.int32), axis=1)
    word = keystream_word(state_ptr, cell)
    q = 2.0 - ((word & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000).to(tl.float64, bitcast=True)
    magnitude = tl.maximum(tl.floor(tl.log(q * half_one_plus_a) * -scale), 0.0)
    noise = tl.where(((word >> 52) & 1) == 1, -magnitude, magnitude)
    if AREA:
        divisor = tl.maximum(tl.sum(inside.to(tl.int32), axis=1).to(tl.float64), 1.0)  # 1 past the last cell
    else:
        divisor = B * B * 1.0
    mean = tl.minimum(tl.maximum((noise + total.to(tl.float64)) / divisor, 0.0), 255.0)
    low = tl.floor(mean)
    up = (mean - low > 0.5) | ((mean - low == 0.5) & (low % 2 == 1))  # round half to even, as torch.round
    value = tl.where(up, low + 1.0, low).to(tl.uint8)
    tl.store(out_ptr + pixel, tl.broadcast_to(value[:, None], (BLOCK, BB * BB)), mask=inside)
