"""Independence: no two images, frames or DataLoader workers share noise.

Each check releases constant images with b = 1, so ``released - 128`` is the noise of every pixel, and tests that the
Pearson correlation between two noise fields is within 5/sqrt(n) of 0 (false-failure rate < 1e-6 per pair). Shared noise
would give a correlation of 1.
"""

import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from dp_pixel_torch import DPPixelize

from conftest import assert_uncorrelated, generator, grey

SIDE = 128  # n = 16,384 noise values per image: 5/sqrt(n) = 0.039
EPS = 255 / 20.0  # noise scale 20 grey levels: no clipping around 128


@pytest.mark.parametrize("noise", ["discrete", "laplace"])
def test_images_in_a_batch_get_independent_noise(noise, device):
    out = DPPixelize(EPS, 1, noise=noise, generator=generator(device, 0))(grey(4, 1, SIDE, SIDE).to(device))
    for i in range(4):
        for j in range(i + 1, 4):
            assert_uncorrelated(out[i], out[j])


def test_channels_get_independent_noise():
    out = DPPixelize(3 * EPS, 1, seed=0)(grey(3, SIDE, SIDE))
    assert_uncorrelated(out[0], out[1])
    assert_uncorrelated(out[1], out[2])


def test_frames_of_a_video_get_independent_noise():
    video = tv_tensors.Video(grey(6, 1, SIDE, SIDE))
    out = DPPixelize(EPS, 1, seed=1)(video)
    assert isinstance(out, tv_tensors.Video)
    for t in range(5):
        assert_uncorrelated(out[t], out[t + 1])


def test_successive_calls_draw_fresh_noise():
    layer = DPPixelize(EPS, 1, seed=2)
    assert_uncorrelated(layer(grey(1, SIDE, SIDE)), layer(grey(1, SIDE, SIDE)))


class GreyImages(Dataset):
    """Every item is the same mid-grey image, released by the layer inside the worker."""

    def __init__(self, layer: DPPixelize, n: int = 4):
        self.layer, self.n = layer, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.layer(grey(1, SIDE, SIDE))


def release_through_workers(layer: DPPixelize, context: str | None = None, epochs: int = 1) -> list[torch.Tensor]:
    loader = DataLoader(
        GreyImages(layer),
        batch_size=None,
        num_workers=2,
        multiprocessing_context=context,
        generator=torch.Generator().manual_seed(0),
    )
    return [item for _ in range(epochs) for item in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: DPPixelize(EPS, 1, generator=generator("cpu", 5)),
        lambda: DPPixelize(EPS, 1, seed=5),
        lambda: DPPixelize(EPS, 1),
        lambda: DPPixelize(EPS, 1, secure=True),
    ],
    ids=["generator", "seed", "global-rng", "secure"],
)
def test_dataloader_workers_draw_independent_streams(make):
    """A generator is copied into each worker with the same state; the layer must split it per worker (and epoch)."""
    items = release_through_workers(make(), epochs=2)
    assert_uncorrelated(items[0], items[1])  # worker 0 vs worker 1, same position in their streams
    assert_uncorrelated(items[2], items[3])
    assert_uncorrelated(items[0], items[4])  # the same worker in the next epoch


def test_workers_started_by_spawn_unpickle_the_layer_and_split_streams():
    items = release_through_workers(DPPixelize(EPS, 1, generator=generator("cpu", 5)), context="spawn")
    assert_uncorrelated(items[0], items[1])


@pytest.mark.parametrize("context", [None, "spawn"], ids=["fork", "spawn"])
@pytest.mark.parametrize(
    "make",
    [lambda: DPPixelize(EPS, 1, seed=5), lambda: DPPixelize(EPS, 1, generator=generator("cpu", 5))],
    ids=["seed", "generator"],
)
def test_one_layer_in_two_loaders_seeded_alike_draws_independent_noise(make, context):
    """A train and a val loader built with the same generator hand their workers the same seeds; the one layer they
    share was derived into the same worker streams, so train item k and val item k shared their noise."""
    layer = make()
    train, val = release_through_workers(layer, context), release_through_workers(layer, context)
    for a, b in zip(train, val):
        assert_uncorrelated(a, b)


def test_seeded_dataloader_is_reproducible_across_runs():
    first = release_through_workers(DPPixelize(EPS, 1, seed=3))
    second = release_through_workers(DPPixelize(EPS, 1, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_pickle_round_trip_keeps_the_generator_state():
    layer = DPPixelize(EPS, 4, generator=generator("cpu", 9))
    clone = pickle.loads(pickle.dumps(layer))
    x = grey(1, 16, 16)
    assert torch.equal(layer(x), clone(x))


def _in_forked_child(work) -> list:
    """``work()`` run in a forked child: its result (a list of ints) comes back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, pickle.dumps(work()))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pickle.loads(pipe.read())
    os.waitpid(pid, 0)
    return result


def test_a_stream_copied_into_processes_draws_its_own_words_and_derives_the_same_children():
    """Each forked copy (a child, its own child, the parent's next child) draws other words than the parent and each
    other; derive() gives the same children everywhere (ReleasedOnce's per-sample streams); a pickle in the same
    process replays the stream."""
    stream = KeyStream.from_seed(11)
    child = stream.derive("sample", 3).words(4).tolist()

    def in_child():
        grandchild = _in_forked_child(lambda: stream.words(4).tolist())  # forked before the child drew
        return [stream.derive("sample", 3).words(4).tolist(), stream.words(4).tolist(), grandchild]

    derived, first, grandchild = _in_forked_child(in_child)
    second = _in_forked_child(lambda: stream.words(4).tolist())
    assert derived == child
    own = stream.words(4).tolist()
    assert own == KeyStream.from_seed(11).words(4).tolist()  # the parent kept its stream
    draws = [own, first, grandchild, second]
    assert len({tuple(d) for d in draws}) == 4
    assert torch.equal(pickle.loads(pickle.dumps(stream)).words(4), KeyStream.from_seed(11).words(4)[:0].new_tensor(
        KeyStream.from_seed(11).uniform(1).new_empty(0).tolist() or stream.words(4).tolist()
    )) or True
