"""Noise samplers and the randomness they draw on (SPEC §4).

Both samplers turn one float64 uniform per value into noise by an inverse CDF, from ``torch.rand(..., generator=)``, so
an explicit :class:`torch.Generator` is honoured and the same generator state gives the same noise on the same device.

Precision. Uniforms are float64 (53 random bits); float32 would truncate the tail at about 17 scales. The tail variable
``q`` is kept in ``[2**-53, 1]`` because CPU uniforms can be exactly 0 and CUDA uniforms exactly 1 (log would give
inf). The largest magnitude is therefore about 36.7 scales: the sampled law differs from the exact one only on events of
probability below ``2**-52`` per value. That is the only gap between the implementation and pure ε-DP.

* ``laplace_noise``: continuous Laplace in float64. Like every textbook floating-point Laplace sampler it is open to
  the attack of Mironov (CCS 2012) on the low-order bits; use it for reproduction and speed, not for hostile settings.
* ``discrete_laplace_noise``: the two-sided geometric law ``P(k) ∝ exp(-|k|/scale)`` on the integers, added to integer
  cell sums. The release lies on a lattice, which defeats that attack.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from torch.utils.data import get_worker_info

from ._validation import check_generator

_TINY = 2.0**-54


def _sign_and_tail(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None):
    """From one float64 uniform u: a sign carrier ``u - 1/2`` and an independent ``min(u, 1-u)``, uniform on
    ``[2**-54, 1/2]``. (The inverse-CDF passes below are memory-bound, so they are written in place.)"""
    u = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    half_tail = torch.minimum(u, 1.0 - u).clamp_(min=_TINY)
    return u.sub_(0.5), half_tail


def laplace_noise(
    shape: tuple[int, ...],
    scale: float,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continuous Laplace(0, ``scale``) noise, float64 of the given shape: ``±scale·(-log q)``, q uniform on (0, 1]."""
    sign, half_tail = _sign_and_tail(tuple(shape), torch.device(device), generator)
    return half_tail.mul_(2.0).log_().mul_(-scale).copysign_(sign)


def discrete_laplace_noise(
    shape: tuple[int, ...],
    scale: float,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Discrete Laplace noise ``P(k) = (1-a)/(1+a)·a^|k|``, ``a = exp(-1/scale)``: exact integers held in float64.

    Inverse CDF of the magnitude: ``P(|K| >= k) = 2a^k/(1+a)`` for k >= 1, so ``|K| = floor(-scale·log(q(1+a)/2))``
    for q uniform on (0, 1]; an independent fair sign completes it. The variance is ``2a/(1-a)^2`` (≈ 2·scale²).
    """
    a = float(np.exp(-1.0 / scale))
    sign, half_tail = _sign_and_tail(tuple(shape), torch.device(device), generator)
    # q(1+a)/2 = half_tail·(1+a) < 1, so the magnitude is >= 0; clamp only guards rounding at absurd scales.
    magnitude = half_tail.mul_(1.0 + a).log_().mul_(-scale).floor_().clamp_(min=0.0)
    return magnitude.copysign_(sign)


def discrete_laplace_variance(scale: float) -> float:
    """Exact variance of :func:`discrete_laplace_noise` at ``scale``."""
    a = float(np.exp(-1.0 / scale))
    return 2.0 * a / (1.0 - a) ** 2


def os_entropy_generator(device: torch.device | str) -> torch.Generator:
    """A fresh generator seeded with 64 bits from the operating system's CSPRNG (``secrets``)."""
    return torch.Generator(device=device).manual_seed(secrets.randbits(64))


class NoiseSource:
    """Where a layer's randomness comes from, resolved per call, per device and per DataLoader worker.

    * ``secure=True``: a fresh OS-entropy generator for every call; no generator or seed is accepted.
    * ``generator``: the caller's generator (its device must match the input's).
    * ``seed``: one generator per device, created on first use and seeded with ``seed``. Anyone who knows the seed
      can subtract the noise: seeds are for experiments, never for deployment.
    * neither: torch's global RNG, which DataLoader already seeds differently in every worker.

    A generator (or seed) is copied with the **same state** into every DataLoader worker. In a worker it is
    therefore re-seeded once from a mix of its own state and the worker's seed (which DataLoader draws anew for every
    worker of every epoch), so workers draw independent streams and stay reproducible under a seeded DataLoader.
    """

    def __init__(self, *, generator: torch.Generator | None = None, seed: int | None = None, secure: bool = False):
        if not isinstance(secure, bool):
            raise TypeError(f"secure must be a bool, got {type(secure).__name__}")
        if secure and (generator is not None or seed is not None):
            raise ValueError("secure=True draws its seed from OS entropy and refuses a generator or seed")
        if generator is not None and seed is not None:
            raise ValueError("give at most one of generator and seed")
        check_generator(generator)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise TypeError(f"seed must be a non-negative int, got {seed!r}")
        self.secure = secure
        self.seed = seed
        self._generator = generator
        self._per_device: dict[str, torch.Generator] = {}
        self._worker_seed: int | None = None

    def __getstate__(self) -> dict:
        # Generators travel as plain bytes: torch's own pickling of a generator's state tensor goes through shared
        # memory under multiprocessing and fails in spawned DataLoader workers.
        state = self.__dict__.copy()
        state["_generator"] = None if self._generator is None else _freeze(self._generator)
        state["_per_device"] = {key: _freeze(g) for key, g in self._per_device.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        state["_generator"] = None if state["_generator"] is None else _thaw(state["_generator"])
        state["_per_device"] = {key: _thaw(frozen) for key, frozen in state["_per_device"].items()}
        self.__dict__.update(state)

    def generator_for(self, device: torch.device) -> torch.Generator | None:
        """The generator to draw this call's noise from, on ``device`` (None: torch's global RNG)."""
        if self.secure:
            return os_entropy_generator(device)
        self._split_for_worker()
        if self._generator is not None:
            return self._generator
        if self.seed is not None:
            key = str(device)
            if key not in self._per_device:
                self._per_device[key] = torch.Generator(device=device).manual_seed(self._mixed(self.seed))
            return self._per_device[key]
        return None

    def _mixed(self, value: int) -> int:
        if self._worker_seed is None:
            return value
        return int(np.random.SeedSequence([value, self._worker_seed]).generate_state(1, np.uint64)[0])

    def _split_for_worker(self) -> None:
        info = get_worker_info()
        if info is None or info.seed == self._worker_seed:
            return
        self._worker_seed = info.seed
        self._per_device.clear()
        if self._generator is not None:
            state = int(torch.randint(2**62, (1,), generator=self._generator, device=self._generator.device).item())
            self._generator.manual_seed(self._mixed(state))


def _freeze(generator: torch.Generator) -> tuple[str, bytes]:
    return str(generator.device), generator.get_state().numpy().tobytes()


def _thaw(frozen: tuple[str, bytes]) -> torch.Generator:
    device, state = frozen
    generator = torch.Generator(device=device)
    generator.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return generator
