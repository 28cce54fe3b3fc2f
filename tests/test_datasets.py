"""ReleasedOnce: each sample is released once and served identically in every epoch and worker."""

import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch.datasets import ReleasedOnce


class Faces(Dataset):
    """Eight random 'images' with labels, as a real dataset would return them."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=g), i


def epochs(dataset: Dataset, n: int = 2, workers: int = 2) -> list[dict[int, torch.Tensor]]:
    loader = DataLoader(
        dataset, batch_size=3, shuffle=True, num_workers=workers, generator=torch.Generator().manual_seed(0)
    )
    out = []
    for _ in range(n):
        seen = {}
        for images, labels in loader:
            seen.update({int(label): image for image, label in zip(images, labels)})
        out.append(seen)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda: DPPixelize(1.0, 4),
        lambda: DPPixelize(1.0, 4, noise="laplace", seed=3),
        lambda: RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="complexity", partition_epsilon=0.5),
    ],
    ids=["uniform", "uniform-seeded", "adaptive-complexity"],
)
def test_two_epochs_with_two_workers_serve_bit_identical_releases(make):
    first, second = epochs(ReleasedOnce(Faces(), make()))
    assert sorted(first) == sorted(second) == list(range(8))
    assert all(torch.equal(first[i], second[i]) for i in range(8))
    assert not torch.equal(first[0], Faces()[0][0])  # and it is a release, not the raw image


def test_disk_cache_serves_the_same_release_across_runs(tmp_path):
    first, _ = epochs(ReleasedOnce(Faces(), DPPixelize(1.0, 4, secure=True), cache_dir=tmp_path), n=1 + 1)
    assert len(list(tmp_path.glob("*.dpxg"))) == 8
    again = epochs(ReleasedOnce(Faces(), DPPixelize(1.0, 4, secure=True), cache_dir=tmp_path), n=1)[0]
    assert all(torch.equal(first[i], again[i]) for i in range(8))


def test_the_guarantee_reports_one_release_per_sample():
    data = ReleasedOnce(Faces(), DPPixelize(2.0, 4))
    assert data.releases_per_sample == 1
    assert data.guarantee.startswith("ε = 2 per image") and "released once per sample" in data.guarantee


def test_random_augmentations_come_after_the_release():
    flip = v2.RandomHorizontalFlip(p=0.5)
    data = ReleasedOnce(Faces(), DPPixelize(1.0, 4), transform=lambda s: (flip(s[0]), s[1]))
    views = [data[0][0] for _ in range(12)]
    base = views[0]
    # Every view is the one release, flipped or not: augmentation never triggers a new release.
    assert all(torch.equal(v, base) or torch.equal(v, base.flip(-1)) for v in views)
    assert any(not torch.equal(v, base) for v in views)


def test_types_pass_through_and_bad_layers_are_refused():
    class PILs(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return PIL.Image.new("RGB", (16, 8), (10 * i, 20, 30))

    out = ReleasedOnce(PILs(), DPPixelize(1.0, 4))[1]
    assert isinstance(out, PIL.Image.Image) and out.size == (16, 8)

    class Images(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return [tv_tensors.Image(torch.zeros(3, 8, 8, dtype=torch.uint8)), "label"]

    image, label = ReleasedOnce(Images(), DPPixelize(1.0, 4))[0]
    assert isinstance(image, tv_tensors.Image) and label == "label"
    with pytest.raises(ValueError, match="cache_dir"):
        ReleasedOnce(Faces(), DPPixelize(1.0, 4, secure=True))
    with pytest.raises(ValueError, match="region='mask'"):
        ReleasedOnce(Faces(), RegionAdaptiveDPPixelize(1.0))
    with pytest.raises(TypeError, match="layer"):
        ReleasedOnce(Faces(), v2.RandomHorizontalFlip())
