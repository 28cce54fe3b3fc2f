"""Datasets that respect the budget (SPEC §6): release every sample once, serve that release ever after.

Pixelizing the same image again in every epoch is a new release each time, so E epochs would cost E·ε. A
:class:`ReleasedOnce` dataset releases each sample the first time it is read and serves the very same release on every
later read, in every epoch and every DataLoader worker, so a sample costs ε once.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .mechanisms import _DPLayer
from .storage import NoisyGrid


class ReleasedOnce(Dataset):
    """Wrap ``dataset`` so that its images are DP-pixelized by ``layer`` exactly once per sample.

    Args:
        dataset: a map-style dataset whose samples are an image (tensor ``[C, H, W]``, ``tv_tensors.Image`` or PIL) or
            a tuple/list whose first element is the image (labels and the rest pass through).
        layer: a :class:`~dp_pixel_torch.DPPixelize` or :class:`~dp_pixel_torch.RegionAdaptiveDPPixelize`
            (``region="mask"`` needs the mask in the sample and is not supported here).
        cache_dir: keep releases as NoisyGrid files here (shared by workers and runs); else in memory.
        transform: applied to every served sample *after* the release, e.g. random crops and flips. Augmenting before
            the release would make every epoch a new release.

    Determinism: sample i's noise comes from a generator seeded by ``(secret, i)``, where the secret is drawn from OS
    entropy when the wrapper is made and travels with it into workers. Any worker that (re)computes sample i gets the
    same release, so nothing beyond the first release is revealed. Layers with ``secure=True`` keep their own OS
    entropy instead and need ``cache_dir``, whose files are created atomically: the first release stored wins.
    """

    def __init__(
        self,
        dataset: Dataset,
        layer: _DPLayer,
        *,
        cache_dir: str | Path | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(layer, _DPLayer):
            raise TypeError(f"layer must be a DPPixelize or RegionAdaptiveDPPixelize, got {type(layer).__name__}")
        if getattr(layer, "region", None) == "mask":
            raise ValueError("ReleasedOnce does not take region='mask' layers: their mask travels with each sample")
        if layer.guarantee.secure and cache_dir is None:
            raise ValueError(
                "a secure layer draws fresh OS entropy on every call: give cache_dir= to keep its releases"
            )
        self.dataset, self.layer, self.transform = dataset, layer, transform
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._secret = secrets.randbits(64)
        self._memory: dict[int, NoisyGrid] = {}

    @property
    def guarantee(self) -> str:
        """The per-sample guarantee: the layer's, spent once per sample whatever the number of epochs."""
        return f"{self.layer.guarantee}; released once per sample and reused in every epoch: ε is spent once"

    releases_per_sample = 1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        rest = None
        if isinstance(sample, (tuple, list)):
            image, rest = sample[0], sample[1:]
        else:
            image = sample
        released = _like(self._release(int(index), _as_tensor(image)).restore(), image)
        out = released if rest is None else type(sample)([released, *rest])
        return self.transform(out) if self.transform is not None else out

    def _release(self, index: int, x: torch.Tensor) -> NoisyGrid:
        if index in self._memory:
            return self._memory[index]
        path = None if self.cache_dir is None else self.cache_dir / f"{index}.dpxg"
        if path is not None and path.exists():
            grid = NoisyGrid.load(path)
        else:
            generator = None
            if not self.layer.guarantee.secure:
                seed = int(np.random.SeedSequence([self._secret, index]).generate_state(1, np.uint64)[0])
                generator = torch.Generator(device=x.device).manual_seed(seed)
            grid = self.layer.release(x, storage="exact", generator=generator)
            if path is not None:
                grid = _store_first(path, grid)
        self._memory[index] = grid
        return grid


def _as_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, PIL.Image.Image):
        return TF.pil_to_tensor(image)
    if isinstance(image, torch.Tensor):
        return image.as_subclass(torch.Tensor)
    raise TypeError(f"the sample's image must be a tensor, tv_tensors.Image or PIL image, got {type(image).__name__}")


def _like(released: torch.Tensor, image: Any) -> Any:
    if isinstance(image, PIL.Image.Image):
        return TF.to_pil_image(released, mode=image.mode)
    if isinstance(image, tv_tensors.TVTensor):
        return tv_tensors.wrap(released, like=image)
    return released


def _store_first(path: Path, grid: NoisyGrid) -> NoisyGrid:
    """Store ``grid`` at ``path`` unless a release is already there; return the one stored (atomic on POSIX)."""
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(grid.to_bytes())
    try:
        os.link(f.name, path)  # fails if another worker stored this sample first
    except FileExistsError:
        grid = NoisyGrid.load(path)  # ours is discarded unseen: only the stored release is ever served
    finally:
        os.unlink(f.name)
    return grid
