"""Empirical privacy audit (SPEC §6): a statistical lower bound on the ε a mechanism really has.

Release two neighbouring images many times, reduce each release to one number T (a likelihood-ratio statistic on the
pixels where the two images differ), and compare the tails: for every threshold τ, ε-DP implies
``P_x'(T ≥ τ) ≤ e^ε · P_x(T ≥ τ)``. With Clopper–Pearson intervals on both rates (Bonferroni over thresholds and both
directions), ``log(lower(P_x') / upper(P_x))`` is a lower bound on the true ε at the stated confidence. A correct
mechanism stays below its claim; a mis-calibrated one shows up above it.

The statistic needs no model of the mechanism: a pilot run estimates, for every affected output value, its median
under both images, and T sums the affected values clipped to the interval between the two medians, signed towards the
neighbour. For Laplace noise that is the likelihood-ratio statistic up to per-cell weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._validation import check_epsilon, check_positive_int


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit`.

    Attributes:
        epsilon_claimed: the ε the mechanism promises for this pair.
        epsilon_lower_bound: the ε the samples prove at ``confidence`` (0 when they prove nothing).
        confidence: one-sided confidence of the bound.
        samples: releases of each image.
        threshold: the threshold of T where the bound was reached.
    """

    epsilon_claimed: float
    epsilon_lower_bound: float
    confidence: float
    samples: int
    threshold: float

    @property
    def consistent(self) -> bool:
        """Whether the samples are consistent with the claim (the lower bound does not exceed it)."""
        return self.epsilon_lower_bound <= self.epsilon_claimed

    def __str__(self) -> str:
        verdict = "consistent with the claim" if self.consistent else "VIOLATES the claim"
        return (
            f"empirical ε ≥ {self.epsilon_lower_bound:.3f} at {self.confidence:.1%} confidence "
            f"(claimed ε = {self.epsilon_claimed:g}, {self.samples:,} releases per image): {verdict}"
        )


def worst_case_pair(
    shape: tuple[int, int, int] = (3, 16, 16), m: int = 1, b: int = 8, dtype: torch.dtype = torch.uint8
) -> tuple[torch.Tensor, torch.Tensor]:
    """A black ``[C, H, W]`` image and its neighbour with ``m`` pixels at the maximum in every channel, packed into
    as few ``b×b`` cells as possible from the top-left: every affected cell sum moves by the full range."""
    m, b = check_positive_int(m, "m"), check_positive_int(b, "b")
    channels, height, width = shape
    x = torch.zeros(shape, dtype=dtype)
    y = x.clone()
    top = 255 if dtype == torch.uint8 else 1.0
    cells_per_row = max(1, width // b)
    for k in range(m):  # m is small; fill one cell, then the next
        cell, offset = divmod(k, b * b)
        row = (cell // cells_per_row) * b + offset // b
        col = (cell % cells_per_row) * b + offset % b
        if row >= height or col >= width:
            raise ValueError(f"an image of shape {shape} cannot hold m = {m} changed pixels in {b}×{b} cells")
        y[:, row, col] = top
    return x, y


def protected_pair(
    m: int, cell: int = 8, inside: bool = True, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbours for the two relations of a layer with protected regions (``protect=True``, coarsest cells of side
    ``cell``): a black uint8 ``[C, 2·cell, 4·cell]`` image, its neighbour, and the public box ``[1, 4]`` over the
    left half, whose four protected cells form a 2×2 block.

    ``inside=True``: ``m`` (= m_r) pixels turned white inside the box, spread round-robin over its four cells, so
    every protected cell sum moves; ``inside=False``: ``m`` pixels turned white in the right half, outside every
    protected cell, packed from its top-left corner."""
    m, cell = check_positive_int(m, "m"), check_positive_int(cell, "cell")
    side = 2 * cell
    if m > side * side:
        raise ValueError(f"m = {m} pixels do not fit in the {side}×{side} half of the image")
    x = torch.zeros(channels, side, 2 * side, dtype=torch.uint8)
    y = x.clone()
    for k in range(m):
        if inside:
            block, offset = k % 4, k // 4
            row, col = (block // 2) * cell + offset // cell, (block % 2) * cell + offset % cell
        else:
            row, col = k // side, side + k % side
        y[:, row, col] = 255
    return x, y, torch.tensor([[0.0, 0.0, float(side), float(side)]])


def audit(
    mechanism: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor | None = None,
    x_prime: torch.Tensor | None = None,
    *,
    epsilon: float | None = None,
    m: int = 1,
    b: int | None = None,
    samples: int = 100_000,
    batch: int = 10_000,
    confidence: float = 0.95,
    thresholds: int = 40,
) -> AuditResult:
    """Audit ``mechanism`` (a layer, or any callable from an image batch to its release) on a neighbouring pair.

    Args:
        mechanism: releases ``[N, C, H, W]`` batches; for a masked adaptive layer pass
            ``lambda batch: layer.release(batch, mask=mask).restore()``.
        x, x_prime: ``[C, H, W]`` neighbours; by default :func:`worst_case_pair` for ``m`` and ``b`` (default: the
            mechanism's finest cell).
        epsilon: the claimed ε; default ``mechanism.guarantee.total_epsilon(C)``.
        samples: releases of each image in the main run (a pilot of a tenth more estimates the medians).
        confidence: one-sided confidence of the lower bound.
    """
    try:
        from scipy.stats import beta
    except ImportError as error:  # pragma: no cover - scipy is in the [audit] and [dev] extras
        raise ImportError("dp_pixel_torch.audit needs scipy: pip install 'dp-pixel-torch[audit]'") from error
    guarantee = getattr(mechanism, "guarantee", None)
    if x is None or x_prime is None:
        if b is None:
            b = guarantee.b if guarantee is not None and guarantee.b else (guarantee.levels[0] if guarantee else 8)
        x, x_prime = worst_case_pair(m=m, b=b)
    if x.shape != x_prime.shape or x.ndim != 3:
        raise ValueError(f"x and x_prime must be [C, H, W] images of one shape, got {x.shape} and {x_prime.shape}")
    if epsilon is None:
        if guarantee is None:
            raise ValueError("give epsilon= for a mechanism without a guarantee")
        epsilon = guarantee.total_epsilon(x.shape[0])
    epsilon = check_epsilon(epsilon)
    samples, batch = check_positive_int(samples, "samples"), check_positive_int(batch, "batch")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must lie in (0.5, 1), got {confidence!r}")
    changed = (x != x_prime).flatten(1).any(0)  # affected pixels, all channels of each
    if not changed.any():
        raise ValueError("x and x_prime are identical: nothing to audit")

    def affected(image: torch.Tensor, n: int) -> np.ndarray:
        outputs = []
        for start in range(0, n, batch):  # bounded memory: batches of releases
            out = mechanism(image.expand(min(batch, n - start), *image.shape))
            outputs.append(out.flatten(2)[:, :, changed].flatten(1).double().cpu().numpy())
        return np.concatenate(outputs)

    pilot = max(samples // 10, 1000)
    lo_med, hi_med = np.median(affected(x, pilot), 0), np.median(affected(x_prime, pilot), 0)
    direction = np.sign(hi_med - lo_med)
    direction[direction == 0] = 1.0
    low, high = np.minimum(lo_med, hi_med), np.maximum(lo_med, hi_med)

    def statistic(image: torch.Tensor) -> np.ndarray:
        return (np.clip(affected(image, samples), low, high) * direction).sum(1)

    t_x, t_y = statistic(x), statistic(x_prime)
    tail = (1 - confidence) / (4 * thresholds)  # Bonferroni: both bounds, both directions, every threshold
    best, where = 0.0, float("nan")
    for sign, (a, c) in ((1, (t_y, t_x)), (-1, (-t_x, -t_y))):  # T high favours x', T low favours x
        for tau in np.unique(np.quantile(a, np.linspace(0.5, 1.0, thresholds, endpoint=False))):
            hits_a, hits_c = int((a >= tau).sum()), int((c >= tau).sum())
            if hits_a == 0:
                continue
            lower_a = beta.ppf(tail, hits_a, a.size - hits_a + 1)
            upper_c = beta.ppf(1 - tail, hits_c + 1, c.size - hits_c) if hits_c < c.size else 1.0
            if lower_a > 0 and math.log(lower_a / upper_c) > best:
                best, where = math.log(lower_a / upper_c), sign * float(tau)
    return AuditResult(epsilon, best, confidence, samples, where)
