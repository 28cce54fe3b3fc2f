"""DP pixelization layers: thin ``nn.Module`` / torchvision ``v2.Transform`` classes over :mod:`.functional`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import is_pure_tensor

from ._validation import check_input, check_value_range
from .accounting import PrivacyGuarantee
from .functional import pixelize_validated
from .noise import NoiseSource

_PIL_MODES = ("L", "RGB", "RGBA")


class DPPixelize(Transform):
    """Uniform differentially private pixelization (DP-Pix), as a layer and a torchvision v2 transform.

    Each ``b×b`` cell of each channel is averaged, its sum gets Laplace noise of scale ``C·R·m/ε``, and the cell is
    filled with the clipped noisy mean. The output is ε-DP for images that differ in at most ``m`` pixels.

    Args:
        epsilon: privacy budget per image (per channel under ``channel_rule="per_channel"``); see :attr:`guarantee`.
        b: cell side in pixels. Give ``grid=(rows, cols)`` instead to fix the output grid.
        m: pixels that may differ between neighbouring images.
        noise: ``"discrete"`` (default, lattice output) or ``"laplace"`` (float64 continuous).
        border: ``"area"`` (default, unbiased) or ``"zero_pad"`` (the paper's, dark border cells).
        channel_rule: ``"joint"`` (default) or ``"per_channel"``.
        value_range: ``(lo, hi)`` of float inputs (default [0, 1]); uint8 is always [0, 255].
        secure: fresh OS-entropy seed on every call; refuses ``generator`` and ``seed``.
        generator: torch.Generator for reproducible noise, on the device of the inputs.
        seed: alternative to ``generator``: one generator per device, seeded with it. A known seed reveals the noise:
            use generators and seeds for experiments, ``secure=True`` in deployment.

    Accepts ``[..., C, H, W]`` tensors, ``tv_tensors.Image``/``Video`` and PIL images (modes L, RGB, RGBA) and returns
    the same type, shape, dtype and device. Bounding boxes, masks and labels in a sample pass through unchanged.
    The layer has no parameters, tracks no gradients, and pickles into DataLoader workers, where every worker draws
    its own noise stream. Apply random crops and flips *after* it.
    """

    _transformed_types = (is_pure_tensor, tv_tensors.Image, tv_tensors.Video, PIL.Image.Image)

    def __init__(
        self,
        epsilon: float,
        b: int | None = None,
        m: int = 1,
        *,
        grid: Sequence[int] | None = None,
        noise: str = "discrete",
        border: str = "area",
        channel_rule: str = "joint",
        value_range: Sequence[float] | None = None,
        secure: bool = False,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self._guarantee = PrivacyGuarantee(
            epsilon, m, b, None if grid is None else tuple(grid), channel_rule, noise, border, secure
        )
        self.value_range = None if value_range is None else tuple(value_range)
        check_value_range(self.value_range, torch.float32)
        self._noise_source = NoiseSource(generator=generator, seed=seed, secure=secure)

    @property
    def guarantee(self) -> PrivacyGuarantee:
        """What one call promises for each image or frame it releases."""
        return self._guarantee

    def check_inputs(self, flat_inputs: list[Any]) -> None:
        # torchvision passes unknown types through untouched; for a privacy layer that would release raw data.
        if not any(self._needs_transform_list(flat_inputs)):
            found = ", ".join(sorted({type(i).__name__ for i in flat_inputs}))
            raise TypeError(
                "DPPixelize found no image to release: expected a torch.Tensor [..., C, H, W], "
                f"tv_tensors.Image/Video or a PIL image, got {found}"
            )

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            if inpt.mode not in _PIL_MODES:
                raise TypeError(f"PIL images must have mode in {_PIL_MODES}, got {inpt.mode!r}")
            return TF.to_pil_image(self._pixelize(TF.pil_to_tensor(inpt)), mode=inpt.mode)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            return tv_tensors.wrap(self._pixelize(inpt.as_subclass(torch.Tensor)), like=inpt)
        return self._pixelize(inpt)

    @torch.no_grad()
    def _pixelize(self, x: torch.Tensor) -> torch.Tensor:
        x, bounds = check_input(x, self.value_range, "input")
        return pixelize_validated(x, self._guarantee, bounds, self._noise_source.generator_for(x.device))

    def extra_repr(self) -> str:
        g = self._guarantee
        cells = f"b={g.b}" if g.b is not None else f"grid={g.grid}"
        return f"epsilon={g.epsilon:g}, {cells}, m={g.m}, noise={g.noise!r}, border={g.border!r}, secure={g.secure}"
