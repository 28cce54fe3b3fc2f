"""The paper's Algorithm 1: sequential DP pixelization in NumPy, one cell and one channel at a time.

This is a faithful baseline, kept simple on purpose: it is the reference for runtime comparisons and a cross-check of
the parallel layer's output distribution. It uses continuous Laplace noise and the same sensitivity (``C·R·m``),
channel and border rules as :func:`dp_pixel_torch.dp_pixelize`. Do not use it in production.
"""

from __future__ import annotations

import numpy as np
import torch

from ._validation import check_input
from .accounting import PrivacyGuarantee


def dp_pixelize_sequential(
    image: np.ndarray,
    epsilon: float,
    b: int,
    m: int = 1,
    rng: np.random.Generator | None = None,
    *,
    border: str = "area",
    channel_rule: str = "joint",
) -> np.ndarray:
    """DP-pixelize one ``[C, H, W]`` image (uint8, range 255, or float in [0, 1]) with ``b×b`` cells.

    For every cell and channel: sum the real pixels, add one ``rng.laplace`` draw of scale ``C·R·m/ε``, divide by the
    cell's true area (``border="area"``) or by ``b²`` (``"zero_pad"``), clip to [0, R] and fill the cell.
    Returns a new array of the input's shape and dtype.
    """
    guarantee = PrivacyGuarantee(epsilon, m, b, None, channel_rule, "laplace", border, False)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array of shape [C, H, W], got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"image must have shape [C, H, W], got {image.shape}")
    _, (_, span) = check_input(torch.from_numpy(image), None, "image")
    rng = np.random.default_rng() if rng is None else rng
    channels, height, width = image.shape
    scale = guarantee.noise_scale(channels, span)
    b = guarantee.b
    out = np.empty_like(image)
    for top in range(0, height, b):
        for left in range(0, width, b):
            for c in range(channels):
                cell = image[c, top : top + b, left : left + b]
                total = cell.sum(dtype=np.float64) + rng.laplace(0.0, scale)
                mean = min(max(total / (cell.size if border == "area" else b * b), 0.0), span)
                out[c, top : top + b, left : left + b] = np.rint(mean) if image.dtype == np.uint8 else mean
    return out
