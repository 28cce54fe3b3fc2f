"""Re-identification attacks: the protocol, the attackers and their scores, on synthetic identities and real faces."""

import numpy as np
import pytest
import skimage.data
import torch
from scipy.stats import binom
from torch import nn

from dp_pixel_torch import DPPixelize
from dp_pixel_torch.attacks import (
    ClassifierConfig,
    FaceEmbedder,
    above_chance,
    linkage_ranks,
    split_identities,
    top_k_accuracy,
    train_classifier,
)
from dp_pixel_torch.functional import pixelize


def synthetic_identities(identities: int, per_identity: int, size: int = 32, seed: int = 0):
    """Grey ``size``×``size`` faces: each identity is a fixed random 4×4 pattern of grey levels, upscaled; each image
    of it (drawn with ``seed``) is shifted by up to 2 pixels and gets Gaussian noise of σ = 12 grey levels."""
    patterns = np.random.default_rng(1234).integers(30, 226, (identities, 4, 4))
    patterns = patterns.repeat(size // 4, 1).repeat(size // 4, 2)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, pattern in enumerate(patterns):
        for _ in range(per_identity):
            shifted = np.roll(pattern, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            images.append(np.clip(shifted + rng.normal(0, 12, shifted.shape), 0, 255).round())
            labels.append(label)
    return torch.tensor(np.stack(images), dtype=torch.uint8)[:, None], torch.tensor(labels)


def test_split_keeps_identities_with_enough_images_and_splits_each_one():
    identities = [5] * 10 + [3] * 4 + [9] * 2 + [7] * 8  # identity 9 has too few images
    split = split_identities(identities, min_images=4, test_fraction=0.25, seed=1)
    assert split.identities == [3, 5, 7] and split.chance == pytest.approx(1 / 3)
    assert not set(split.train) & set(split.test)
    assert sorted(split.train + split.test) == [i for i, n in enumerate(identities) if n != 9]
    for label, identity in enumerate(split.identities):
        n = identities.count(identity)
        n_test = int((split.test_labels == label).sum())
        assert n_test == max(1, round(0.25 * n)) and int((split.train_labels == label).sum()) == n - n_test
        assert all(identities[i] == identity for i, y in zip(split.test, split.test_labels.tolist()) if y == label)
    assert split_identities(identities, min_images=4, max_identities=2).identities == [3, 5]
    assert split_identities(identities, min_images=4, seed=2).test != split.test  # the seed picks the test images


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_images": 1}, "min_images"),
        ({"min_images": 4, "test_fraction": 1.0}, "test_fraction"),
        ({"min_images": 9}, "1 identities"),
    ],
)
def test_split_refuses_protocols_without_an_attack(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_identities([5] * 10 + [3] * 4, **kwargs)


def test_above_chance_is_the_exact_one_sided_binomial_test():
    for trials, chance in ((10, 0.1), (200, 0.01), (5000, 0.001)):
        for hits in range(0, min(trials, 40)):
            assert above_chance(hits, trials, chance) == (binom.sf(hits - 1, trials, chance) < 0.05)
    assert not above_chance(3, 10, 0.1) and above_chance(4, 10, 0.1)  # P(X ≥ 3) = 0.070, P(X ≥ 4) = 0.013


class Fixed(nn.Module):
    """Scores each image by its mean grey level against fixed class prototypes."""

    def __init__(self, prototypes):
        super().__init__()
        self.prototypes = nn.Parameter(torch.tensor(prototypes))

    def forward(self, x):
        return -(x.mean((1, 2, 3))[:, None] - self.prototypes).abs()


def test_top_k_accuracy_counts_the_true_identity_among_the_k_best_guesses():
    model = Fixed([0.1, 0.5, 0.9])
    images = (
        torch.tensor([0.1, 0.5, 0.9, 0.6]).mul(255).round().to(torch.uint8)[:, None, None, None].expand(-1, 1, 4, 4)
    )
    labels = torch.tensor([0, 1, 2, 2])  # the last image is closest to class 1, second closest to class 2
    assert top_k_accuracy(model, images, labels, input_size=4, ks=(1, 2, 3)) == {1: 0.75, 2: 1.0, 3: 1.0}


def test_linkage_ranks_identities_by_their_nearest_gallery_face():
    gallery = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [9.0, 1.0]])
    gallery_labels = torch.tensor([0, 1, 2, 1])
    probes = torch.tensor([[0.5, 0.0], [8.0, 1.0], [7.0, 6.0]])
    ranks = linkage_ranks(probes, torch.tensor([0, 1, 2]), gallery, gallery_labels, ks=(1, 2))
    assert ranks == {1: pytest.approx(2 / 3), 2: 1.0}  # probe 3: identity 1 at 5.4 (its 2nd face), then 2 at 8.1


def test_classifier_learns_synthetic_identities_and_is_reproducible():
    config = ClassifierConfig(epochs=20, batch_size=32)
    train, train_labels = synthetic_identities(6, 20, seed=0)
    test, test_labels = synthetic_identities(6, 10, seed=1)  # the same identities, new shifts and noise
    model = train_classifier(train, train_labels, 6, config, seed=3)
    assert not model.training
    assert top_k_accuracy(model, test, test_labels, config.input_size)[1] >= 0.9  # chance: 1/6
    short = ClassifierConfig(epochs=2, batch_size=32)
    model, again = (train_classifier(train, train_labels, 6, short, seed=3) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_adaptive_attacker_beats_plain_pixelization_but_not_strong_dp():
    """On 8 synthetic identities of 4×4-block faces, plain pixelization at b = 8 keeps the blocks, so the adaptive
    attacker still recognises them. DP-Pix at ε = 0.001 puts noise of scale 255,000 on each 8×8 cell sum, whose
    differences between identities are about 5,000: even the ideal classifier is then within a few points of chance,
    and the trained one must not be above chance (at the 5% level on 160 faces, so a false failure is a 5% event)."""
    config = ClassifierConfig(epochs=20, batch_size=32)
    train, train_labels = synthetic_identities(8, 20, seed=0)
    test, test_labels = synthetic_identities(8, 20, seed=1)
    attack = train_classifier(pixelize(train, 8), train_labels, 8, config)
    assert top_k_accuracy(attack, pixelize(test, 8), test_labels, config.input_size)[1] >= 0.9
    dp = DPPixelize(0.001, 8, seed=0)
    attack = train_classifier(dp(train), train_labels, 8, config)
    hits = round(top_k_accuracy(attack, dp(test), test_labels, config.input_size)[1] * len(test))
    assert not above_chance(hits, len(test), 1 / 8)


@pytest.fixture(scope="module")
def embedder():
    return FaceEmbedder()


def real_faces(n: int = 20, size: int = 112) -> torch.Tensor:
    import cv2

    faces = (skimage.data.lfw_subset()[:n] * 255).round().astype(np.uint8)
    return torch.from_numpy(np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in faces]))[
        :, None
    ]


def test_embedder_links_real_faces_at_their_known_box_and_loses_them_under_strong_dp(embedder):
    faces = real_faces()
    boxes = torch.tensor([0.0, 0.0, 111.0, 111.0]).expand(len(faces), 4)
    gallery = embedder(list(faces), boxes)
    assert gallery.shape == (20, 128) and gallery.dtype == torch.float32
    labels = torch.arange(len(faces))
    mild = torch.from_numpy(np.clip(faces.numpy().astype(int) + 3, 0, 255).astype(np.uint8))  # brighter by 3 levels
    assert linkage_ranks(embedder(list(mild), boxes), labels, gallery, labels)[1] == 1.0
    noisy = DPPixelize(0.05, 16, seed=0)(faces)
    assert linkage_ranks(embedder(list(noisy), boxes), labels, gallery, labels)[1] <= 0.25  # chance: 1/20


def test_embedder_takes_rgb_photos_of_any_size_and_refuses_other_input(embedder):
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)
    box = torch.tensor([[175.0, 70.0, 268.0, 163.0]])
    assert embedder([photo], box).shape == (1, 128)
    with pytest.raises(ValueError, match="uint8"):
        embedder([photo.float()], box)
    with pytest.raises(ValueError, match="boxes"):
        embedder([photo, photo], box)
