"""Training data released once (SPEC §6).

Pixelizing the same image again in every epoch is a new release each time, so E epochs would cost E·ε. A
:class:`ReleasedOnce` dataset releases each sample the first time it is read and serves the very same release on every
later read, in every epoch and every DataLoader worker, so a sample costs ε once.
"""

from __future__ import annotations

import json
import multiprocessing.context
import numbers
import operator
import os
import types
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils._pytree import tree_leaves
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ._validation import check_value_range, no_release_inside
from .mechanisms import _DPLayer, check_nothing_raw
from .noise import KeyStream, image_digest
from .storage import NoisyGrid, store_first

#: The file in a cache directory that binds its records to one dataset and one layer.
MANIFEST = "released_once.json"


class ReleasedOnce(Dataset):
    """Wrap ``dataset`` so that its images are DP-pixelized by ``layer`` exactly once per sample.

    Args:
        dataset: a map-style dataset whose samples are a RAW image (tensor ``[C, H, W]``, ``tv_tensors.Image`` or
            PIL) or a tuple/list whose first element is the image (labels and the rest pass through). It must not
            release anything itself: a DP layer in its transform would draw fresh noise on every read, a new release
            every epoch. One found in its transforms (also inside Compose, ProtectDetected, Subset, ConcatDataset),
            or a ReleasedOnce wrapped again, raises ValueError here; any other release that runs while a sample is
            read from it (a layer or ``dp_pixelize`` called in its ``__getitem__``) raises ValueError then, before
            any charge or noise. Give the layer to ReleasedOnce instead.
        layer: a :class:`~dp_pixel_torch.DPPixelize` or :class:`~dp_pixel_torch.RegionAdaptiveDPPixelize` whose
            release is a function of the sample alone: ``region="mask"`` (the mask would travel with each sample) and
            ``region="previous"`` (the cells would follow whichever sample was released before) are refused.
        cache_dir: keep releases as NoisyGrid files here (shared by workers and runs); else in memory.
        dataset_id: required with ``cache_dir``: a name for the dataset's contents (``"celeba-train-v1"``). The cache
            is bound to it, to the dataset's type and length, and to the layer's guarantee; every record is also
            checked against the sample's shape and dtype. Any mismatch raises: a record is never served under
            another guarantee, and a sample is never released a second time. (Records carry no digest of the raw
            image: one would let whoever holds the cache confirm an exact image. So a dataset whose contents change
            under the same id needs a new cache_dir.)
        transform: applied to every served sample *after* the release, e.g. random crops and flips. Augmenting before
            the release would make every epoch a new release.

    Determinism: a sample's noise comes from a ChaCha20 stream keyed by BLAKE2b of a 256-bit secret drawn from OS
    entropy when the wrapper is made and a digest of the image (negative indices count from the end, so ``ds[-1]`` is
    ``ds[len(ds) - 1]``). Any worker that (re)computes sample i gets the same release, so nothing beyond that one
    release is revealed, and samples that hold the same image (a duplicate in the dataset) get the same release: one
    image, one release (SPEC §4). A process that has released an image serves that release to its duplicates without
    releasing (or charging) again, also for secure layers. The secret is one wrapper's: wrappers that share a
    ``cache_dir`` (DDP ranks, restarts) serve each index's first stored release, but a duplicate at another index
    that another wrapper (or, for a secure layer, another worker) releases is a second release of that image.
    The dataset must return the same image for the same index: one that
    returns another image (a random crop inside the dataset) gets independent noise for it, never the same noise on
    two images (whose difference would be the exact difference of the images), but that is a second release at
    another ε, and only a process that reads both raises. DataLoader workers are new processes every epoch unless
    ``persistent_workers=True``, so without ``cache_dir`` such a dataset is released again every epoch; with
    ``cache_dir`` the first release of each index is served. The secret travels only into DataLoader workers (pickled
    while a worker process is being started); any other pickle or copy of the wrapper carries no secret, serves the
    releases it already holds and refuses to release more. Neither the secret nor a digest of an image is ever
    written anywhere. Layers with ``secure=True`` keep their own per-call OS entropy instead and need ``cache_dir``,
    whose files are created atomically: the first release stored wins.

    Each wrapper is one release of its samples. Without ``cache_dir``, a new wrapper over the same data (a restart,
    another DDP rank) releases them again at another ε; use one ``cache_dir`` for all of them.
    Everything of a sample but its image (labels, boxes) passes through unchanged, so it must not hold an image:
    such a sample raises TypeError, as the layers do.
    """

    def __init__(
        self,
        dataset: Dataset,
        layer: _DPLayer,
        *,
        cache_dir: str | Path | None = None,
        dataset_id: str | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(layer, _DPLayer):
            raise TypeError(f"layer must be a DPPixelize or RegionAdaptiveDPPixelize, got {type(layer).__name__}")
        region = getattr(layer, "region", None)
        if region == "mask":
            raise ValueError("ReleasedOnce does not take region='mask' layers: their mask travels with each sample")
        if region == "previous":
            raise ValueError(
                "ReleasedOnce does not take region='previous' layers: sample i's cells would depend on the sample "
                "released before it in the same process, so workers and epochs would release it differently"
            )
        if layer.guarantee.secure and cache_dir is None:
            raise ValueError(
                "a secure layer draws fresh OS entropy on every call: give cache_dir= to keep its releases"
            )
        if cache_dir is not None and (not isinstance(dataset_id, str) or not dataset_id):
            raise TypeError(f"cache_dir needs dataset_id=, a non-empty name for the dataset, got {dataset_id!r}")
        _refuse_release_inside(dataset)
        self.dataset, self.layer, self.transform = dataset, layer, transform
        self.dataset_id = dataset_id
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self._bind_cache()
        self._secret: KeyStream | None = KeyStream.from_os_entropy()
        self._memory: dict[int, tuple[bytes | None, NoisyGrid]] = {}  # index -> (keyed image tag, release)
        self._same: dict[bytes, NoisyGrid] = {}  # content tag (keyed by _tags) -> its release, for duplicates
        self._tags: KeyStream | None = None  # this object's key of those tags: only DataLoader workers get it

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:  # not a worker being started: a checkpoint, a copy
            state["_secret"] = None  # whoever holds the pickle must not recompute (and subtract) the noise
            state["_memory"] = {index: (None, grid) for index, (_, grid) in self._memory.items()}
            state["_same"], state["_tags"] = {}, None
        return state

    @property
    def guarantee(self) -> str:
        """The per-sample guarantee: the layer's, spent once per sample whatever the number of epochs."""
        again = "" if self.cache_dir is not None else " (a new wrapper without cache_dir releases again)"
        return f"{self.layer.guarantee}; released once per sample and reused in every epoch: ε is spent once{again}"

    releases_per_sample = 1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = self._normalised(index)
        with no_release_inside(f"ReleasedOnce read sample {index} from its dataset"):
            sample = self.dataset[index]
        rest = None
        if isinstance(sample, (tuple, list)):
            image, rest = sample[0], sample[1:]
            check_nothing_raw(tree_leaves(list(rest)), "ReleasedOnce")
        else:
            image = sample
        released = _like(self._release(index, _as_tensor(image)).restore(), image)
        out = released if rest is None else type(sample)([released, *rest])
        return self.transform(out) if self.transform is not None else out

    def _normalised(self, index: object) -> int:
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(f"ReleasedOnce takes integer indices, got {type(index).__name__}") from None
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for {n} samples")
        return i % n

    def _manifest(self) -> dict:
        kind = type(self.dataset)
        manifest = {
            "format": 1,
            "dataset_id": self.dataset_id,
            "dataset_type": f"{kind.__module__}.{kind.__qualname__}",
            "length": len(self.dataset),
            "guarantee": asdict(self.layer.guarantee),
            "value_range": self.layer.value_range,
        }
        return json.loads(json.dumps(manifest))  # as it reads back: tuples become lists

    def _bind_cache(self) -> None:
        expected = self._manifest()
        path = self.cache_dir / MANIFEST
        if not path.exists() and any(self.cache_dir.glob("*.dpxg")):
            raise ValueError(
                f"{str(self.cache_dir)!r} holds releases but no {MANIFEST} (written by an older version, another "
                "tool, or its manifest was removed): nothing says under which guarantee they were made, so they are "
                "not served. Use another cache_dir"
            )
        try:
            stored = json.loads(store_first(path, json.dumps(expected, sort_keys=True).encode()))
        except (ValueError, RecursionError, OSError):
            stored = None
        if not isinstance(stored, dict):
            raise ValueError(f"{str(path)!r} is not a ReleasedOnce manifest: use another cache_dir")
        differ = [key for key in sorted(set(expected) | set(stored)) if expected.get(key) != stored.get(key)]
        if differ:
            details = "; ".join(f"{key}: stored {stored.get(key)!r}, now {expected.get(key)!r}" for key in differ)
            raise ValueError(
                f"{str(self.cache_dir)!r} was written under other settings ({details}). Serving its records would "
                "misstate their privacy, so nothing is served: use another cache_dir"
            )

    def _release(self, index: int, x: torch.Tensor) -> NoisyGrid:
        digest = image_digest(x)
        # What is remembered of the image is keyed by the secret: a digest alone would let whoever reads this object
        # confirm a guessed image exactly.
        tag = None if self._secret is None else self._secret.derive("image", index, digest).key
        if index in self._memory:
            seen, grid = self._memory[index]
            if seen is not None and tag is not None and seen != tag:
                raise ValueError(
                    f"the dataset returned another image for index {index} than before: ReleasedOnce releases each "
                    "index once, so the dataset must return the same image for it (random augmentations go in "
                    "transform=, after the release)"
                )
            return grid
        path = None if self.cache_dir is None else self.cache_dir / f"{index}.dpxg"
        if path is not None and path.exists():
            grid = self._checked(NoisyGrid.load(path), index, x)
        else:
            # A duplicate of an image this process released: its release again, uncharged (one image, one release).
            self._tags = self._tags or KeyStream.from_os_entropy()  # also in a copy without the secret
            same = self._tags.derive("content", digest).key
            grid = self._same.get(same)
            if grid is None:
                stream = None
                if not self.layer.guarantee.secure:
                    if self._secret is None:
                        raise RuntimeError(
                            "this ReleasedOnce is a pickled copy and carries no secret (only DataLoader workers get "
                            f"it), so it cannot release sample {index}: release it in the original, or use cache_dir="
                        )
                    stream = self._secret.derive("sample", digest)
                grid = self.layer.release(x, storage="exact", generator=stream)
            self._same.setdefault(same, grid)
            if path is not None:
                data = grid.to_bytes()
                stored = store_first(path, data)
                if stored != data:  # another worker stored this sample first: only that release is ever served
                    grid = self._checked(NoisyGrid.from_bytes(stored), index, x)
        self._memory[index] = tag, grid
        return grid

    def _checked(self, grid: NoisyGrid, index: int, x: torch.Tensor) -> NoisyGrid:
        """``grid`` if it is a release of a sample like ``x`` under this layer's guarantee; else raise."""
        bounds = check_value_range(self.layer.value_range, x.dtype)
        problems = [
            f"{what} {got} (expected {want})"
            for what, got, want in (
                ("guarantee", grid.guarantee, self.layer.guarantee),
                ("shape", grid.shape, tuple(x.shape)),
                ("dtype", grid.dtype, x.dtype),
                ("value range", grid.value_range, bounds),
            )
            if got != want
        ]
        if problems:
            raise ValueError(
                f"the cached release of sample {index} does not fit: {'; '.join(problems)}. It is not served, and the "
                "sample is not released again (that would spend ε twice): remove the record or use another cache_dir"
            )
        return grid


#: Where datasets keep per-sample transforms (searched through), and where wrappers (Subset, ConcatDataset) keep the
#: datasets they wrap (searched like a dataset).
_TRANSFORMS = ("transform", "transforms", "target_transform")
_WRAPPED = ("dataset", "datasets")
#: Values that hold no transform.
_LEAVES = (str, bytes, numbers.Number, os.PathLike, type, types.ModuleType, torch.Tensor, np.ndarray)


def _refuse_release_inside(dataset: Dataset) -> None:
    """Raise ValueError when ``dataset`` (or a dataset it wraps) is a ReleasedOnce or holds a DP layer in its
    transforms: either releases on every read. A search of at most 10,000 objects; what it misses (a layer called in
    ``__getitem__``) is refused at the first read by :func:`~dp_pixel_torch._validation.no_release_inside`."""
    seen: set[int] = set()
    todo: list[tuple[Any, str, bool]] = [(dataset, "dataset", False)]  # (value, where, inside a transform)
    while todo and len(seen) < 10_000:
        value, where, in_transform = todo.pop()
        if isinstance(value, ReleasedOnce):
            raise ValueError(
                f"{where} is a ReleasedOnce: its samples are released already. Wrap the raw dataset in one ReleasedOnce"
            )
        if isinstance(value, _DPLayer):
            raise ValueError(
                f"{where} is a {type(value).__name__}: the dataset would release every sample again on every read "
                "(every epoch in DataLoader workers), while ReleasedOnce promises one release. Take it out of the "
                "dataset's transform and give it to ReleasedOnce: ReleasedOnce(dataset, layer)"
            )
        if id(value) in seen or isinstance(value, _LEAVES):
            continue
        seen.add(id(value))
        if isinstance(value, (list, tuple)):
            todo += [(item, f"{where}[{i}]", in_transform) for i, item in enumerate(value[:256])]
        elif isinstance(value, dict):
            todo += [(item, f"{where}[{key!r}]", in_transform) for key, item in list(value.items())[:256]]
        elif isinstance(value, torch.nn.Module) and in_transform:
            todo += [(item, f"{where}.{name}", True) for name, item in vars(value).items() if name != "_modules"]
            todo += [(item, f"{where}.{name}", True) for name, item in value.named_children()]
        elif isinstance(getattr(value, "__dict__", None), dict):
            names = vars(value) if in_transform else [n for n in (*_TRANSFORMS, *_WRAPPED) if n in vars(value)]
            todo += [(vars(value)[n], f"{where}.{n}", in_transform or n in _TRANSFORMS) for n in names]


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
