import math

import pytest
import torch

#: Every device-generic test runs on the CPU and, when one is present, on CUDA (skipped otherwise, as in CI).
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


def generator(device: torch.device | str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def grey(*shape: int) -> torch.Tensor:
    """A mid-grey uint8 image: with b = 1, ``released - 128`` is the noise of every pixel."""
    return torch.full(shape, 128, dtype=torch.uint8)


def assert_uncorrelated(a: torch.Tensor, b: torch.Tensor) -> None:
    """The noise fields ``a - 128`` and ``b - 128`` are uncorrelated: |Pearson r| < 5/sqrt(n) (false-failure rate
    < 1e-6 per pair). Shared noise would give r = 1."""
    a, b = a.double().flatten() - 128, b.double().flatten() - 128
    assert a.std() > 10 and b.std() > 10
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(a.numel()), f"noise correlation {r:.3f}"
