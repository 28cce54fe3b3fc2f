"""ReleasedOnce: each sample is released once and served identically in every epoch and worker."""

import pickle

import PIL.Image
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.datasets import FakeData
from torchvision.transforms import v2

from dp_pixel_torch import DPPixelize, PrivacyAccountant, ProtectDetected, RegionAdaptiveDPPixelize, dp_pixelize
from dp_pixel_torch import ReleasedOnce
from dp_pixel_torch.storage import NoisyGridFormatError
from dp_pixel_torch.noise import image_digest

from conftest import assert_uncorrelated, generator, grey


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


def test_rest_of_a_sample_that_holds_an_image_raises():
    class Pairs(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
            return image, {"raw": image.clone(), "label": 1}

    with pytest.raises(TypeError, match="pass through unreleased"):
        ReleasedOnce(Pairs(), DPPixelize(1.0, 4))[0]


def test_a_pickled_copy_carries_no_secret():
    """A checkpoint of the wrapper must not let its holder recompute the noise of past releases."""
    data = ReleasedOnce(Faces(), DPPixelize(1.0, 4))
    first = data[0][0]
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[0][0], first)  # what was released is served
    with pytest.raises(RuntimeError, match="no secret"):
        copy[1]  # what was not cannot be released from the copy
    pickled = pickle.dumps(data)
    assert data._secret.key not in pickled
    # Nor a digest of a raw image, which would let the holder confirm a guessed image exactly.
    assert image_digest(Faces()[0][0]) not in pickled and image_digest(Faces()[0][0]) not in pickle.dumps(copy)


def test_spawned_workers_get_the_secret_and_serve_one_release():
    loader = DataLoader(
        ReleasedOnce(Faces(), DPPixelize(1.0, 4)), batch_size=4, num_workers=2, multiprocessing_context="spawn"
    )
    first, second = [torch.cat([images for images, _ in loader]) for _ in range(2)]
    assert torch.equal(first, second)


class Varying(Dataset):
    """Returns another image for the same index on every read (a random crop inside the dataset): a misuse."""

    def __len__(self):
        return 1

    def __getitem__(self, i):
        seed = int(torch.randint(2**31, ()))
        return grey(1, 64, 64) + torch.randint(0, 20, (1, 64, 64), generator=generator("cpu", seed)).to(
            torch.uint8
        ), seed


def test_a_dataset_that_changes_an_image_never_gets_the_same_noise_twice():
    """Noise keyed by the index alone put the same noise on two crops: their releases' difference was the exact
    difference of the crops. The noise is keyed by the image too, and a process that sees the change raises."""
    data = ReleasedOnce(Varying(), DPPixelize(255 / 20.0, 1))
    loader = DataLoader(data, batch_size=None, num_workers=1)  # a new worker process, and a new image, per epoch
    noise = []
    for _ in range(2):
        ((released, seed),) = list(loader)
        raw = grey(1, 64, 64) + torch.randint(0, 20, (1, 64, 64), generator=generator("cpu", seed)).to(torch.uint8)
        noise.append(released.double() - raw.double() + 128)
    assert_uncorrelated(*noise)
    data[0]
    with pytest.raises(ValueError, match="another image for index 0"):
        data[0]


def test_a_cache_without_manifest_or_with_a_broken_one_is_refused(tmp_path):
    DPPixelize(1.0, 4, seed=0).release(Faces()[0][0]).save(tmp_path / "0.dpxg")  # an old cache: records only
    with pytest.raises(ValueError, match="no released_once.json"):
        ReleasedOnce(Faces(), DPPixelize(1.0, 4), cache_dir=tmp_path, dataset_id="faces")
    for text in ("not json", "[1, 2]"):
        broken = tmp_path / text.replace(" ", "_")
        broken.mkdir()
        (broken / "released_once.json").write_text(text)
        with pytest.raises(ValueError, match="not a ReleasedOnce manifest"):
            ReleasedOnce(Faces(), DPPixelize(1.0, 4), cache_dir=broken, dataset_id="faces")


class PixelizedInside(Faces):
    """The trap of issue 28 (9a): the dataset releases each sample itself, in a place no construction check can see."""

    def __init__(self, release):
        self.release_inside = release

    def __getitem__(self, i: int):
        image, label = super().__getitem__(i)
        return self.release_inside(image), label


def test_a_release_inside_the_wrapped_dataset_raises_in_workers_every_epoch():
    """A DP layer inside the dataset drew fresh noise on every read, so with two workers every epoch was a new release
    (and ReleasedOnce released that again), while the guarantee said ε is spent once. Now every read raises."""
    data = ReleasedOnce(PixelizedInside(DPPixelize(1.0, 4)), DPPixelize(1.0, 4))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"ReleasedOnce read sample \d from its dataset.*ReleasedOnce\(dataset, "):
            epochs(data, n=1)


@pytest.mark.parametrize(
    "release",
    [
        lambda accountant: DPPixelize(1.0, 4, accountant=accountant),
        lambda accountant: lambda x: DPPixelize(1.0, 4, accountant=accountant).release(x).restore(),
        lambda accountant: RegionAdaptiveDPPixelize(
            1.0, levels=(4, 8), region="complexity", partition_epsilon=0.5, accountant=accountant
        ),
        lambda accountant: ProtectDetected(
            RegionAdaptiveDPPixelize(1.0, levels=(8, 16), protect=True, accountant=accountant),
            sources=[],
            zone=torch.ones(24, 32),
        ),
        lambda accountant: lambda x: dp_pixelize(x, 1.0, 4),
    ],
    ids=["layer", "layer-release", "adaptive", "protect-detected", "functional"],
)
def test_a_release_inside_the_wrapped_dataset_raises_before_any_charge(release):
    accountant = PrivacyAccountant()
    inside = release(accountant)
    data = ReleasedOnce(PixelizedInside(inside), DPPixelize(1.0, 4))
    with pytest.raises(ValueError, match="ran while ReleasedOnce read sample 2 from its dataset"):
        data[2]
    assert accountant.frames == 0 and accountant.spent == 0  # refused before the charge (and before any noise)
    assert tuple(inside(Faces()[2][0]).shape) == (3, 24, 32)  # outside a read, the same release runs


def test_a_dp_layer_in_the_datasets_transforms_is_refused_when_wrapped():
    """The common form of the trap is found at once, with where the layer sits."""

    class WithTransform(Faces):
        def __init__(self, transform):
            self.transform = transform

    layer = DPPixelize(1.0, 4)
    protect = ProtectDetected(
        RegionAdaptiveDPPixelize(1.0, levels=(8, 16), protect=True), sources=[], zone=torch.ones(24, 32)
    )
    cases = [
        (WithTransform(layer), "dataset.transform is a DPPixelize"),
        (WithTransform(v2.Compose([v2.ToImage(), layer])), r"dataset.transform.transforms\[1\] is a DPPixelize"),
        (WithTransform(torch.nn.Sequential(layer)), "dataset.transform.0 is a DPPixelize"),
        (WithTransform(protect), "dataset.transform.layer is a RegionAdaptiveDPPixelize"),
        (Subset(WithTransform(layer), [0, 1]), "dataset.dataset.transform is a DPPixelize"),
        (ConcatDataset([Faces(), WithTransform(layer)]), r"dataset.datasets\[1\].transform is a DPPixelize"),
        (FakeData(4, (3, 8, 8), transform=v2.Compose([v2.PILToTensor(), layer])), "transforms.transform.transforms"),
        (ReleasedOnce(Faces(), layer), "dataset is a ReleasedOnce"),
    ]
    for dataset, message in cases:
        with pytest.raises(ValueError, match=message):
            ReleasedOnce(dataset, layer)
    assert len(ReleasedOnce(WithTransform(v2.Compose([v2.ToImage(), v2.ToDtype(torch.uint8)])), layer)[0]) == 2


class WithDuplicates(Dataset):
    """Four samples; samples 0 and 2 hold one image (a photo listed twice), 1 and 3 two others."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(0 if i in (0, 2) else i)
        return torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=g), i


@pytest.mark.parametrize("cache", [False, True], ids=["memory", "disk"])
def test_a_duplicate_sample_gets_the_release_of_the_image_it_copies(cache, tmp_path):
    """One image, one release (SPEC §4, dataset items): a photo listed twice got two independent releases (2ε on
    one image while the guarantee said ε); it now gets one, served at both indices, in workers and across epochs.
    Other images never share noise with it."""
    cached = {"cache_dir": tmp_path / "cache", "dataset_id": "dups"} if cache else {}
    first, second = epochs(ReleasedOnce(WithDuplicates(), DPPixelize(1.0, 2), **cached))
    assert torch.equal(first[0], first[2]) and torch.equal(second[0], first[2])
    assert not torch.equal(first[1], first[3]) and not torch.equal(first[0], first[1])


def test_a_duplicate_is_served_without_a_second_charge_also_under_a_secure_layer(tmp_path):
    """A process that released an image serves that release to its duplicates: the accountant is charged once per
    distinct image (it was charged per index), and a secure layer's duplicate is no second release."""
    budget = PrivacyAccountant()
    data = ReleasedOnce(WithDuplicates(), DPPixelize(1.0, 2, accountant=budget))
    released = [data[i][0] for i in range(4)]
    assert torch.equal(released[0], released[2]) and budget.spent == pytest.approx(3.0)
    secure = ReleasedOnce(WithDuplicates(), DPPixelize(1.0, 2, secure=True), cache_dir=tmp_path, dataset_id="dups")
    assert torch.equal(secure[0][0], secure[2][0]) and not torch.equal(secure[0][0], secure[1][0])


def test_a_pickled_copy_serves_a_duplicate_one_release_too(tmp_path):
    """A copy of the wrapper (a restored checkpoint) carries no secret; under a secure layer it still releases, and
    it served a duplicate a second release because its duplicate lookup needed the secret."""
    data = ReleasedOnce(WithDuplicates(), DPPixelize(1.0, 2, secure=True), cache_dir=tmp_path, dataset_id="dups")
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[0][0], copy[2][0])
