"""ReleasedOnce: each sample is released once and served identically in every epoch and worker."""

import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize
from dp_pixel_torch import ReleasedOnce
from dp_pixel_torch.storage import NoisyGridFormatError


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
    first, _ = epochs(ReleasedOnce(Faces(), DPPixelize(1.0, 4, secure=True), cache_dir=tmp_path, dataset_id="faces"))
    assert len(list(tmp_path.glob("*.dpxg"))) == 8
    again = epochs(ReleasedOnce(Faces(), DPPixelize(1.0, 4, secure=True), cache_dir=tmp_path, dataset_id="faces"), 1)[0]
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


def test_layers_whose_partition_follows_the_previous_release_are_refused():
    """With region='previous', sample i's cells would depend on whichever sample the process released before it, so
    workers and epochs would release it differently: several releases, while the guarantee says one."""
    with pytest.raises(ValueError, match="previous"):
        ReleasedOnce(Faces(), RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="previous"))


def test_negative_indices_are_the_same_sample_and_out_of_range_raises():
    data = ReleasedOnce(Faces(), DPPixelize(1.0, 4))
    assert torch.equal(data[-1][0], data[len(data) - 1][0])
    assert torch.equal(data[-8][0], data[0][0])
    for bad in (8, -9):
        with pytest.raises(IndexError):
            data[bad]
    with pytest.raises(TypeError):
        data[1.0]


class OtherFaces(Faces):
    def __getitem__(self, i: int):
        return torch.zeros(3, 24, 32, dtype=torch.uint8), i


@pytest.mark.parametrize(
    ("dataset", "layer", "dataset_id", "message"),
    [
        (Faces, lambda: DPPixelize(0.1, 16), "faces", "guarantee"),  # an ε = 100, b = 1 cache under ε = 0.1, b = 16
        (Faces, lambda: DPPixelize(100.0, 1, noise="laplace"), "faces", "guarantee"),  # same ε, other noise
        (Faces, lambda: DPPixelize(100.0, 1), "other-faces", "dataset"),
        (OtherFaces, lambda: DPPixelize(100.0, 1), "faces", "dataset"),
    ],
    ids=["weaker-layer", "other-noise", "other-dataset-id", "other-dataset-type"],
)
def test_a_cache_written_for_another_layer_or_dataset_is_never_served(tmp_path, dataset, layer, dataset_id, message):
    writer = ReleasedOnce(Faces(), DPPixelize(100.0, 1), cache_dir=tmp_path, dataset_id="faces")
    leaky = writer[0][0]
    assert (leaky.double() - Faces()[0][0].double()).abs().mean() < 10  # ε = 100, b = 1: near the raw image
    with pytest.raises(ValueError, match=message):
        served = ReleasedOnce(dataset(), layer(), cache_dir=tmp_path, dataset_id=dataset_id)[0][0]
        assert not torch.equal(served, leaky)  # not reached: the mismatch raises before anything is served


def test_a_cached_record_that_does_not_fit_the_sample_raises(tmp_path):
    """Records are bound to the layer's guarantee and to the sample's shape and dtype: a record planted or left over
    from another release is refused, never served, and never replaced by a second release."""
    ReleasedOnce(Faces(), DPPixelize(1.0, 4), cache_dir=tmp_path, dataset_id="faces")[0]
    cases = {
        1: (DPPixelize(100.0, 1, seed=0).release(Faces()[1][0]), "guarantee"),
        2: (DPPixelize(1.0, 4, seed=0).release(torch.zeros(3, 16, 16, dtype=torch.uint8)), "shape"),
        3: (DPPixelize(1.0, 4, seed=0).release(torch.zeros(3, 24, 32), storage="exact"), "dtype"),
    }
    for index, (record, message) in cases.items():
        record.save(tmp_path / f"{index}.dpxg")
        with pytest.raises(ValueError, match=message):
            ReleasedOnce(Faces(), DPPixelize(1.0, 4), cache_dir=tmp_path, dataset_id="faces")[index]
    (tmp_path / "4.dpxg").write_bytes(b"DPXG garbage")
    with pytest.raises(NoisyGridFormatError):
        ReleasedOnce(Faces(), DPPixelize(1.0, 4), cache_dir=tmp_path, dataset_id="faces")[4]


def test_a_disk_cache_needs_a_dataset_id(tmp_path):
    with pytest.raises(TypeError, match="dataset_id"):
        ReleasedOnce(Faces(), DPPixelize(1.0, 4), cache_dir=tmp_path)
