"""Independence: no two images, frames or DataLoader workers share noise.

Each check releases constant images with b = 1, so ``released - 128`` is the noise of every pixel, and tests that the
Pearson correlation between two noise fields is within 5/sqrt(n) of 0 (false-failure rate < 1e-6 per pair). Shared noise
would give a correlation of 1.
"""

import multiprocessing
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from dp_pixel_torch import (
    DPPixelize,
    KeyStream,
    PrivacyAccountant,
    RegionAdaptiveDPPixelize,
    dp_pixelize,
    dp_pixelize_adaptive,
)

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


# --- explicit randomness given to the functional API inside DataLoader workers (issue 18, finding 6) ------------------

SMALL = 32  # n = 1,024 noise values per image: 5/sqrt(n) = 0.16


class GreyThroughFunctions(Dataset):
    """Every item is the same mid-grey image, released by ``dp_pixelize(..., generator=randomness)`` in the worker."""

    def __init__(self, randomness, n: int = 2):
        self.randomness, self.n = randomness, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return dp_pixelize(grey(1, SMALL, SMALL), EPS, 1, generator=self.randomness)


@pytest.mark.parametrize("persistent", [False, True], ids=["fresh-workers", "persistent"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_generator_given_to_functions_in_workers_is_split_per_worker(context, persistent):
    """DataLoader copies a KeyStream into every worker with the same key and position: ``dp_pixelize(x, ...,
    generator=stream)`` drew the same noise in every worker and every epoch (correlation 1). A copy in another process
    now re-keys itself before its first draw there; the parent keeps its stream."""
    stream = KeyStream.from_seed(7)
    loader = DataLoader(
        GreyThroughFunctions(stream),
        batch_size=None,
        num_workers=2,
        multiprocessing_context=context,
        persistent_workers=persistent,
        generator=torch.Generator().manual_seed(0),
    )
    items = [item for _ in range(2) for item in loader]  # items 0, 2 from worker 0; 1, 3 from worker 1
    for i in range(4):
        for j in range(i + 1, 4):
            assert_uncorrelated(items[i], items[j])  # workers, and epochs (a persistent worker's stream moved on)
    assert stream.position == 0  # the parent drew nothing
    parent = dp_pixelize(grey(1, SMALL, SMALL), EPS, 1, generator=stream)
    assert all(not torch.equal(parent, item) for item in items)
    assert torch.equal(parent, dp_pixelize(grey(1, SMALL, SMALL), EPS, 1, generator=KeyStream.from_seed(7)))


class PerCallRelease(Dataset):
    """Releases item i with the torch generator given to it; returns the error message if it is refused."""

    def __init__(self, release, n: int = 2):
        self.release, self.n = release, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:
        try:
            self.release(grey(1, SMALL, SMALL), torch.Generator().manual_seed(i))
        except ValueError as error:
            return str(error)
        return "released"


def _functional(x, g):
    return dp_pixelize(x, EPS, 1, generator=g)


def _adaptive(x, g):
    return dp_pixelize_adaptive(x, EPS, levels=(2, 4), region="previous", generator=g)


@pytest.mark.parametrize("release", ["dp_pixelize", "dp_pixelize_adaptive", "DPPixelize", "RegionAdaptiveDPPixelize"])
def test_a_torch_generator_given_per_call_in_a_worker_is_refused(release, tmp_path):
    """A torch generator given for one call is copied into every worker with the same state (and keeps 32 bits of
    seed on the CPU): it is refused in a worker, with a message, before the accountant is charged; outside workers it
    is used as given."""
    ledger = tmp_path / "budget.sqlite"
    layer = DPPixelize(EPS, 1, accountant=PrivacyAccountant(cap=10 * EPS, ledger=ledger))
    calls = {
        "dp_pixelize": _functional,
        "dp_pixelize_adaptive": _adaptive,
        "DPPixelize": lambda x, g: layer.release(x, generator=g),
        "RegionAdaptiveDPPixelize": lambda x, g: RegionAdaptiveDPPixelize(
            EPS, levels=(2, 4), region="complexity", partition_epsilon=1.0
        ).release(x, generator=g),
    }
    call = calls[release]
    loader = DataLoader(PerCallRelease(call), batch_size=None, num_workers=1)
    for message in loader:
        assert "torch.Generator given for one call in a DataLoader worker is refused" in message
        assert "KeyStream" in message
    assert PrivacyAccountant(cap=10 * EPS, ledger=ledger).spent == 0.0  # nothing was charged
    call(grey(1, SMALL, SMALL), torch.Generator().manual_seed(0))  # outside a worker: used as given


# --- a source made by another thread while the main thread forks (issue 18, fork race) ---------------------------------

RACE = """
import logging, os, sys, threading, time
from dp_pixel_torch.noise import KeyStream, NoiseSource

def child_report(made):
    # In the child: every source the parent had finished is a counted copy, and every stream draws other words.
    uncounted = sum(1 for s in list(made) if isinstance(s, NoiseSource) and s._sent < 1)
    shared = sum(1 for s in list(made) if isinstance(s, KeyStream) and s.words(4).tolist() == s.derived_words)
    return uncounted, shared

def make(made):
    for kind in (NoiseSource, KeyStream):
        s = kind(seed=1) if kind is NoiseSource else KeyStream.from_seed(len(made))
        if isinstance(s, KeyStream):
            s.derived_words = KeyStream.from_seed(len(made)).words(4).tolist()  # what the parent draws next
        made.append(s)

made, stop = [], threading.Event()
def maker():
    while not stop.is_set():
        make(made)
        del made[:-200]
sys.setswitchinterval(1e-6)
threads = [threading.Thread(target=maker) for _ in range(2)]
for t in threads:
    t.start()

def stall_the_fork():
    # logging's fork hook runs after this library's: while it waits for logging's lock, a thread makes sources.
    # Before the fix they were registered after the count, and the child held them uncounted.
    with logging._lock:
        ready.set()
        time.sleep(0.05)  # the main thread is now in the fork, waiting for logging's lock
        worker = threading.Thread(target=make, args=(made,), daemon=True)
        worker.start()
        worker.join(0.2)  # made at once, or (fixed) waits for the fork to end

bad = [0, 0]
for i in range(int(sys.argv[1])):
    ready = threading.Event()
    staller = None
    if i % 5 == 0 and hasattr(logging, "_lock"):
        staller = threading.Thread(target=stall_the_fork)
        staller.start()
        ready.wait()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, ("%d %d" % child_report(made)).encode())
        os._exit(0)
    os.close(w)
    uncounted, shared = map(int, os.read(r, 100).split())
    os.close(r)
    os.waitpid(pid, 0)
    if staller is not None:
        staller.join()
    bad[0] += uncounted
    bad[1] += shared
stop.set()
for t in threads:
    t.join()
print("uncounted", bad[0], "shared", bad[1])
"""


def test_a_source_made_during_a_fork_is_counted_before_it_or_made_after_it(tmp_path):
    """The fork hook counted the sources under its lock but released it before the fork: a NoiseSource made by another
    thread in between was in the child uncounted, a copy that did not know it was one. The lock is now held across
    the fork. Threads make sources and streams while the main thread forks; some forks are stalled in logging's fork
    hook (which runs after this library's) while a thread makes more. Run in a fresh interpreter: forking a process
    whose threads are in arbitrary states is not for the test runner's."""
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), "40"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["uncounted", "0", "shared", "0"], done.stdout


def _in_forked_child(work) -> list:
    """``work()`` run in a forked child: its result (a list) comes back through a pipe."""
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
    process replays the stream, re-keyed or not."""
    stream = KeyStream.from_seed(11)
    child = stream.derive("sample", 3).words(4).tolist()

    def in_child():
        grandchild = _in_forked_child(lambda: stream.words(4).tolist())  # forked before the child drew
        drawn = stream.words(4).tolist()
        clone = pickle.loads(pickle.dumps(stream))
        return [
            stream.derive("sample", 3).words(4).tolist(),
            drawn,
            grandchild,
            clone.words(4).tolist() == stream.words(4).tolist(),
        ]

    derived, first, grandchild, replayed = _in_forked_child(in_child)
    second = _in_forked_child(lambda: stream.words(4).tolist())
    assert derived == child
    assert replayed
    own = stream.words(4).tolist()
    assert own == KeyStream.from_seed(11).words(4).tolist()  # the parent kept its stream
    assert len({tuple(d) for d in [own, first, grandchild, second]}) == 4
    clone = pickle.loads(pickle.dumps(stream))
    assert torch.equal(clone.words(4), stream.words(4))


# --- streams and layers sent to worker pools as task arguments (issue 28, finding 1) -----------------------------------


def _words_in_task(stream: KeyStream) -> list[int]:
    return stream.words(64).tolist()


def _release_in_task(randomness) -> torch.Tensor:
    """A mid-grey image released in a pool task by a layer, or by ``dp_pixelize`` with a stream."""
    if isinstance(randomness, KeyStream):
        return dp_pixelize(grey(1, SIDE, SIDE), EPS, 1, generator=randomness)
    return randomness(grey(1, SIDE, SIDE))


def _pool(context: str, workers: int, kind: str):
    """A started pool: its workers exist before any task argument is pickled (what made the copies replay). Each
    worker runs torch on one thread, as DataLoader's do: torch's thread pool does not survive a fork."""
    ctx = multiprocessing.get_context(context)
    if kind == "Pool":
        pool = ctx.Pool(workers, initializer=torch.set_num_threads, initargs=(1,))
        pool.map(int, range(workers))
        return pool
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(1,))
    list(pool.map(int, range(workers)))
    return pool


@pytest.mark.parametrize("kind", ["Pool", "ProcessPoolExecutor"])
@pytest.mark.parametrize("workers", [1, 2], ids=["one-worker", "two-workers"])
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_stream_sent_to_pool_tasks_draws_other_words_in_every_task(context, workers, kind):
    """Pools pickle task arguments after their workers started: each copy kept its maker's key and position, so every
    task drew the parent's next words (the difference of two tasks' releases was the exact difference of the images).
    A pickle unpickled in another process now re-keys from fresh entropy, once per unpickle: four tasks, in one worker
    or two, draw four sets of words, none of them the parent's; the parent keeps its stream."""
    stream = KeyStream.from_seed(13)
    with _pool(context, workers, kind) as pool:
        drawn = pool.map(_words_in_task, [stream] * 4)
    drawn = [tuple(words) for words in drawn]
    assert stream.position == 0
    own = tuple(stream.words(64).tolist())
    assert own == tuple(KeyStream.from_seed(13).words(64).tolist())  # the parent's words are its own
    assert len(set(drawn)) == 4 and own not in drawn


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: KeyStream.from_os_entropy(),
        lambda: DPPixelize(EPS, 1, seed=5),
        lambda: DPPixelize(EPS, 1, generator=generator("cpu", 5)),
    ],
    ids=["stream", "seeded-layer", "generator-layer"],
)
def test_releases_in_pool_tasks_draw_independent_noise(make, context):
    """The reported attack: ``dp_pixelize(x, generator=stream)`` (or a seeded layer, or one given a torch generator)
    in two tasks of a started pool; the noise of the two tasks and of the parent's next release are uncorrelated."""
    randomness = make()
    with _pool(context, 2, "ProcessPoolExecutor") as pool:
        first, second = pool.map(_release_in_task, [randomness] * 2)
    parent = _release_in_task(randomness)
    assert_uncorrelated(first, second)
    assert_uncorrelated(first, parent)
    assert_uncorrelated(second, parent)


def test_a_copy_not_yet_rekeyed_sent_on_to_a_pool_rekeys_again():
    """A forked copy that has not drawn yet carries its copy number; sent on to pool tasks from there, each task still
    draws its own words (the number, reused by two unpickles, would have given them one key)."""

    def in_child():
        with _pool("fork", 2, "ProcessPoolExecutor") as pool:
            return [tuple(w) for w in pool.map(_words_in_task, [stream] * 2)] + [tuple(stream.words(64).tolist())]

    stream = KeyStream.from_seed(17)
    drawn = _in_forked_child(in_child)
    assert len(set(drawn)) == 3


def _derived_words_in_task(stream: KeyStream, task: int) -> list[int]:
    return stream.derive("task", task).words(64).tolist()


def test_derive_gives_reproducible_per_task_streams_in_pools():
    """``derive(label)`` is the way to reproducible per-task streams: a task that derives its child from the stream it
    was sent gets the same child as the parent would, while the stream's own draws there are re-keyed."""
    stream = KeyStream.from_seed(19)
    with _pool("spawn", 2, "ProcessPoolExecutor") as pool:
        drawn = list(pool.map(_derived_words_in_task, [stream] * 3, range(3)))
        sent = list(pool.map(_words_in_task, [stream.derive("task", 0)] * 2))
    assert drawn == [KeyStream.from_seed(19).derive("task", i).words(64).tolist() for i in range(3)]
    assert stream.derive("task", 0).words(64).tolist() not in sent  # a derived stream sent as it is re-keys too


class _Grey(Dataset):
    def __init__(self, layer: DPPixelize):
        self.layer = layer

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.layer(grey(1, SIDE, SIDE))


def _release_in_a_task_through_a_dataloader(layer: DPPixelize) -> torch.Tensor:
    return next(iter(DataLoader(_Grey(layer), batch_size=None, num_workers=1)))


def _release_in_a_child_of_the_task(layer: DPPixelize) -> torch.Tensor:
    def release() -> torch.Tensor:
        torch.set_num_threads(1)  # as in a DataLoader worker: torch's thread pool does not survive a fork
        return layer(grey(1, SIDE, SIDE))

    return _in_forked_child(release)


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize(
    "make",
    [lambda: DPPixelize(EPS, 1, seed=5), lambda: DPPixelize(EPS, 1, generator=generator("cpu", 5))],
    ids=["seed", "generator"],
)
@pytest.mark.parametrize(
    "task", [_release_in_a_task_through_a_dataloader, _release_in_a_child_of_the_task], ids=["dataloader", "fork"]
)
def test_a_layer_sent_to_pool_tasks_that_start_processes_draws_other_noise_in_each(task, make, context):
    """A layer sent to two pool tasks, each of which releases in a process of its own (a DataLoader worker, a forked
    child) before drawing itself. The worker stream was derived from the layer's root key, not from the key it was
    re-keyed to in the task, and a forked child replaced a generator's pending re-key by its fork number: both tasks
    drew the same noise (forked pool workers even share DataLoader's base seed). Now each task's noise is its own."""
    layer = make()
    with _pool(context, 2, "ProcessPoolExecutor") as pool:
        first, second = pool.map(task, [layer] * 2)
    assert_uncorrelated(first, second)
    assert_uncorrelated(first, task(layer))  # the maker's own release by the same route
