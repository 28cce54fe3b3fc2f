"""PrivacyAccountant: sequential composition, caps enforced before any noise, w-event windows, JSON state, and a
shared, durable ledger that no worker or process can bypass."""

import copy
import multiprocessing
import os
import pickle
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dp_pixel_torch import DPPixelize, PrivacyAccountant, RegionAdaptiveDPPixelize, load_video
from dp_pixel_torch.accounting import BudgetExceededError, LedgerIntegrityError
from dp_pixel_torch.cli import main
from dp_pixel_torch.video import read_frames, sanitize_stream

from conftest import generator


def frames(n: int) -> torch.Tensor:
    return torch.full((n, 3, 16, 16), 128, dtype=torch.uint8)


def test_composition_arithmetic():
    acc = PrivacyAccountant(fps=25)
    acc.charge(0.5, frames=10)
    acc.charge(2.0)
    acc.charge(0.25, frames=4)
    assert acc.frames == 15 and acc.spent == pytest.approx(0.5 * 10 + 2.0 + 0.25 * 4)
    assert acc.epsilon_for(1) == 2.0  # the worst single frame
    assert acc.epsilon_for(3) == pytest.approx(0.5 + 0.5 + 2.0)  # the worst run of 3 frames
    assert acc.epsilon_for(seconds=0.12) == acc.epsilon_for(3)  # 0.12 s at 25 fps: 3 frames
    assert acc.epsilon_for(1000) == acc.spent  # visible throughout


def test_layers_charge_every_frame_with_the_total_epsilon():
    acc = PrivacyAccountant()
    DPPixelize(0.5, 4, accountant=acc)(frames(4))
    DPPixelize(0.5, 4, channel_rule="per_channel", accountant=acc)(frames(1))  # ε per channel: 3 × 0.5
    RegionAdaptiveDPPixelize(1.0, levels=(4, 8), region="complexity", partition_epsilon=0.5, accountant=acc)(frames(2))
    assert acc.frames == 7 and acc.spent == pytest.approx(4 * 0.5 + 1.5 + 2 * 1.5)


@pytest.mark.parametrize(
    "make",
    [
        lambda g, a: DPPixelize(1.0, 4, generator=g, accountant=a),
        lambda g, a: RegionAdaptiveDPPixelize(
            1.0, levels=(4, 8), region="complexity", partition_epsilon=0.5, generator=g, accountant=a
        ),
    ],
)
def test_cap_raises_before_any_noise_is_drawn(make):
    per_frame = make(None, None).guarantee.total_epsilon(3)  # 1, or 1.5 with the partition's share
    acc, gen = PrivacyAccountant(cap=2 * per_frame), generator("cpu", 0)
    layer = make(gen, acc)
    layer(frames(1))
    state = gen.get_state()
    with pytest.raises(BudgetExceededError, match="over the cap"):
        layer(frames(2))
    assert torch.equal(gen.get_state(), state), "no noise may be drawn for a refused release"
    assert acc.frames == 1
    layer(frames(1))  # what still fits goes through
    assert acc.spent == pytest.approx(acc.cap)


def test_w_event_window_in_frames_and_seconds():
    acc = PrivacyAccountant(window_seconds=0.2, fps=20, window_cap=1.0)  # 4 frames
    assert acc.window == 4
    for _ in range(3):
        acc.charge(0.3)
    with pytest.raises(BudgetExceededError, match="within 4 consecutive frames"):
        acc.charge(0.3)
    acc.charge(0.1)  # 0.3 + 0.3 + 0.3 + 0.1 fits
    assert acc.frames == 4
    acc2 = PrivacyAccountant(window=3, window_cap=1.0)
    acc2.charge(0.5, 2)
    with pytest.raises(BudgetExceededError):
        acc2.charge(0.1)
    acc3 = PrivacyAccountant(window=3, window_cap=1.0)
    with pytest.raises(BudgetExceededError):
        acc3.charge(0.4, frames=5)  # three of them would already share one window
    assert acc3.frames == 0


def expand(runs) -> list[float]:
    return [eps for eps, n in runs for _ in range(n)]


def worst_window_by_brute_force(runs, width: int) -> float:
    eps = expand(runs)
    return max((sum(eps[i : i + width]) for i in range(max(1, len(eps) - width + 1))), default=0.0)


def test_skipped_frames_slide_the_window():
    """Only charged frames advanced the window: with window 3 and cap 1.0, after two charges of 0.5 every later frame
    was refused. A frame the window refuses goes out with nothing; recorded with skip(), it costs 0 and the window
    slides over it."""
    acc = PrivacyAccountant(window=3, window_cap=1.0)
    acc.charge(0.5, 2)
    with pytest.raises(BudgetExceededError, match="skip") as refused:
        acc.charge(0.5)
    assert not refused.value.final  # only the window refused: a later frame may fit
    acc.skip()
    acc.charge(0.5)  # the window [0.5, 0, 0.5]
    acc.charge(0.5)  # [0, 0.5, 0.5]
    with pytest.raises(BudgetExceededError):
        acc.charge(0.5)  # [0.5, 0.5, 0.5]
    assert (acc.frames, acc.skipped, acc.spent) == (4, 1, 2.0)
    assert acc._history.runs() == [(0.5, 2), (0.0, 1), (0.5, 2)]
    assert "4 frames released (1 skipped: nothing released), ε spent = 2" in str(acc)
    for bad in (-1, 1.0, True):
        with pytest.raises(TypeError, match="frames"):
            acc.skip(bad)


def test_the_readme_window_releases_what_a_sliding_window_allows():
    """10 s at 25 fps, at most 5 per window, ε = 0.2 a frame: 25 frames fit in any 250. Only 25 of 500 frames were
    released (the window never slid); frames skipped when refused now let it slide: 50 of 500."""
    acc = PrivacyAccountant(window_seconds=10, window_cap=5.0, fps=25)
    released = 0
    for _ in range(500):
        try:
            acc.charge(0.2)
            released += 1
        except BudgetExceededError as refused:
            assert not refused.final
            acc.skip()
    assert released == acc.frames == 50 and acc.skipped == 450
    assert acc.epsilon_for(seconds=10) == pytest.approx(5.0) == worst_window_by_brute_force(acc._history.runs(), 250)
    assert acc.epsilon_for(seconds=20) == pytest.approx(10.0)  # two windows: 50 frames
    assert acc.epsilon_for(seconds=5) == pytest.approx(5.0)  # the 25 released frames lie within 1 s of each other


def test_a_chunk_over_the_window_cap_names_the_largest_chunk_that_fits():
    """chunk=32 at ε = 0.2 is 6.4 > 5 in one window: it was refused with no hint. The message names the largest
    chunk that fits (25), and a frame that alone passes the window cap is final."""
    acc = PrivacyAccountant(window_seconds=10, window_cap=5.0, fps=25)
    with pytest.raises(BudgetExceededError, match="largest chunk that fits is 25 frame") as refused:
        acc.charge(0.2, frames=32)
    assert not refused.value.final and acc.frames == 0
    acc.charge(0.2, frames=25)
    acc3 = PrivacyAccountant(window=3, window_cap=1.0)
    with pytest.raises(BudgetExceededError, match="largest chunk that fits is 2 frame"):
        acc3.charge(0.4, frames=5)
    with pytest.raises(BudgetExceededError, match="no frame at this ε") as refused:
        acc3.charge(1.5)
    assert refused.value.final
    with pytest.raises(BudgetExceededError, match="over the cap") as refused:
        PrivacyAccountant(cap=1.0, window=3, window_cap=1.0).charge(0.6, 2)
    assert refused.value.final  # the total cap never frees up


def test_skipped_frames_count_as_time_in_epsilon_for():
    acc = PrivacyAccountant(fps=10)
    acc.charge(0.5)
    acc.skip(9)
    acc.charge(0.5)
    assert acc.epsilon_for(seconds=1) == 0.5  # no 10 consecutive frames hold both releases
    assert acc.epsilon_for(seconds=1.1) == acc.epsilon_for(11) == 1.0
    resumed = PrivacyAccountant.from_json(acc.to_json())
    assert (resumed.frames, resumed.skipped, resumed.epsilon_for(10)) == (2, 9, 0.5)
    with pytest.raises(ValueError, match="epsilon"):
        PrivacyAccountant.from_json(acc.to_json().replace("[0.0, 9]", "[-0.0001, 9]"))


@pytest.mark.parametrize("ledger", [False, True], ids=["memory", "ledger"])
def test_no_mix_of_charges_and_skips_passes_the_window_cap(ledger, tmp_path):
    """A hostile caller that skips as it likes, in chunks of any size, from several threads, never gets more than
    the window cap into any ``window`` consecutive frames: a skip only adds frames of ε = 0, and every charge is
    checked against the frames before it in the same step that records it."""
    acc = PrivacyAccountant(window=7, window_cap=1.0, ledger=tmp_path / "w.sqlite" if ledger else None)
    errors = []

    def hostile(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            try:
                if rng.random() < 0.3:
                    acc.skip(rng.choice([1, 1, 2, 6, 7]))
                else:
                    acc.charge(rng.choice([0.1, 0.15, 0.3, 0.5, 1.0]), rng.choice([1, 1, 2, 3, 8]))
            except BudgetExceededError:
                pass
            except Exception as error:  # reported to the test
                errors.append(error)

    threads = [threading.Thread(target=hostile, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    runs = acc._history.runs()
    assert not errors and acc.frames > 20 and acc.skipped > 20
    assert worst_window_by_brute_force(runs, 7) <= 1.0 + 1e-9
    assert acc.epsilon_for(7) == pytest.approx(worst_window_by_brute_force(runs, 7))


def test_skips_in_a_ledger_slide_the_window_for_every_process(tmp_path):
    ledger = tmp_path / "camera.sqlite"
    first = PrivacyAccountant(window=3, window_cap=1.0, ledger=ledger)
    second = PrivacyAccountant(window=3, window_cap=1.0, ledger=ledger)
    first.charge(0.5, 2)
    with pytest.raises(BudgetExceededError):
        second.charge(0.5)
    first.skip()
    second.charge(0.5)
    reopened = PrivacyAccountant(window=3, window_cap=1.0, ledger=ledger)
    assert (reopened.frames, reopened.skipped) == (3, 1)
    assert reopened._history.runs() == [(0.5, 2), (0.0, 1), (0.5, 1)]


def test_a_stream_under_a_window_skips_what_it_refuses_and_goes_on(tmp_path):
    """sanitize_stream stopped at the first refusal of the window. Now a refused chunk is released frame by frame,
    each frame the window refuses goes out black (no record) and is skipped, and the stream goes on: 4 frames of
    ε = 0.25 in every 10."""
    acc = PrivacyAccountant(window=10, window_cap=1.0)
    layer = DPPixelize(0.25, 4, seed=0, accountant=acc)
    out, grids = tmp_path / "released.avi", tmp_path / "released.dpxg"
    source = torch.randint(1, 256, (40, 3, 16, 16), dtype=torch.uint8)
    report = sanitize_stream(list(source), layer, out, grids=grids, chunk=8, progress=False, device="cpu")
    assert (report.frames, report.skipped, acc.frames, acc.skipped) == (40, 24, 16, 24)
    assert "16 of 40 frames" in str(report) and "refused 24" in str(report)
    assert acc._history.runs() == [(0.25, 4), (0.0, 6)] * 4
    assert sum(record.shape[0] for record in load_video(grids)) == 16
    video = list(read_frames(out))
    assert len(video) == 40 and all(video[i].max() < 8 for i in range(40) if i % 10 >= 4)  # black (MJPG: nearly)
    with pytest.raises(BudgetExceededError, match="over the cap"):  # a total cap stops the stream
        sanitize_stream(list(source), DPPixelize(0.25, 4, accountant=PrivacyAccountant(cap=1.0)), progress=False)


def test_json_round_trip_resumes_the_job(tmp_path):
    acc = PrivacyAccountant(cap=2.0, window=10, window_cap=1.5, fps=30)
    acc.charge(0.1, 7)
    acc.charge(0.3)
    acc.save(tmp_path / "budget.json")
    resumed = PrivacyAccountant.load(tmp_path / "budget.json")
    assert (resumed.frames, resumed.spent, resumed.cap, resumed.window, resumed.fps) == (8, acc.spent, 2.0, 10, 30.0)
    assert resumed.epsilon_for(3) == acc.epsilon_for(3)
    with pytest.raises(BudgetExceededError):
        resumed.charge(0.5, 3)
    with pytest.raises(ValueError, match="PrivacyAccountant"):
        PrivacyAccountant.from_json('{"version": 7}')


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(cap=0), "cap"),
        (dict(window=3), "window_cap"),
        (dict(window_seconds=1.0, window_cap=1.0), "fps"),
        (dict(window=0, window_cap=1.0), "window"),
    ],
)
def test_bad_accountant_settings(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PrivacyAccountant(**kwargs)


def test_a_layer_refuses_something_else_as_accountant():
    with pytest.raises(TypeError, match="accountant"):
        DPPixelize(1.0, 4, accountant=3.0)


# --- reach: copies in workers and other processes never charge in silence; a shared, durable ledger ------------------

OLD_STATE = '{"version": 1, "cap": 2.0, "window": 10, "window_cap": 1.5, "fps": 30.0, "frames": [[0.1, 7], [0.3, 1]]}'


class Released(torch.utils.data.Dataset):
    """Twelve images, each released by the layer inside whichever process reads it."""

    def __init__(self, layer):
        self.layer = layer

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return self.layer(frames(1))[0]


def test_an_in_memory_accountant_refuses_to_charge_in_a_dataloader_worker():
    """The layer and its accountant are pickled into each worker: charges there never reached the parent, and twelve
    images went out under a cap of 2 while the parent showed 0 spent."""
    acc = PrivacyAccountant(cap=2.0)
    loader = torch.utils.data.DataLoader(Released(DPPixelize(1.0, 4, accountant=acc)), batch_size=None, num_workers=2)
    with pytest.raises(RuntimeError, match="ledger"):
        list(loader)
    assert acc.spent == 0


def test_copies_of_an_in_memory_accountant_refuse_to_charge():
    acc = PrivacyAccountant(cap=2.0)
    for clone in (
        copy.deepcopy(acc),
        pickle.loads(pickle.dumps(acc)),
        copy.deepcopy(DPPixelize(1.0, 4, accountant=acc)),
    ):
        with pytest.raises(RuntimeError, match="ledger"):
            clone.charge(1.0) if isinstance(clone, PrivacyAccountant) else clone(frames(1))
    acc.charge(1.0)  # the original still works
    assert acc.spent == 1.0


def test_a_shallow_copy_of_a_ledger_accountant_charges_safely_from_threads(tmp_path):
    acc = PrivacyAccountant(cap=1.0, ledger=tmp_path / "b.sqlite")
    twins, accepted, errors = [acc, copy.copy(acc)], [], []

    def run(a):
        for _ in range(60):
            try:
                a.charge(0.01)
                accepted.append(1)
            except BudgetExceededError:
                pass
            except Exception as error:  # reported to the test
                errors.append(error)

    threads = [threading.Thread(target=run, args=(twins[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(accepted) == 100 == acc.frames


def test_a_ledger_is_shared_by_dataloader_workers(tmp_path):
    ledger = tmp_path / "budget.sqlite"
    acc = PrivacyAccountant(cap=2.0, ledger=ledger)
    loader = torch.utils.data.DataLoader(Released(DPPixelize(1.0, 4, accountant=acc)), batch_size=None, num_workers=2)
    with pytest.raises(BudgetExceededError):
        list(loader)
    assert acc.spent == 2.0 and acc.frames == 2
    assert PrivacyAccountant(cap=2.0, ledger=ledger).spent == 2.0  # and it survives the process: a restart resumes


def release_until_refused(ledger, cap, epsilon, barrier, results) -> None:
    layer = DPPixelize(epsilon, 4, seed=0, accountant=PrivacyAccountant(cap=cap, ledger=ledger))
    barrier.wait()
    released = 0
    while True:
        try:
            layer(frames(1))
        except BudgetExceededError:
            break
        released += 1
    results.put(released)


def test_four_processes_share_one_ledger_and_one_cap(tmp_path):
    context = multiprocessing.get_context("spawn")
    ledger, cap, epsilon = str(tmp_path / "budget.sqlite"), 30.0, 0.25  # exactly 120 releases fit
    barrier, results = context.Barrier(4), context.Queue()
    workers = [
        context.Process(target=release_until_refused, args=(ledger, cap, epsilon, barrier, results)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    counts = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sum(counts) == 120, counts
    acc = PrivacyAccountant(cap=cap, ledger=ledger)
    assert acc.frames == 120 and acc.spent == cap


FORKED_POOL = """
import gc, multiprocessing, sys, threading
from dp_pixel_torch import BudgetExceededError, PrivacyAccountant

def charge_sixty(ledger):
    acc, accepted = PrivacyAccountant(cap=1.0, ledger=ledger), 0
    for i in range(60):
        try:
            acc.charge(0.01)
            accepted += 1
        except BudgetExceededError:
            pass
        if i == 2:
            gc.collect()  # collects what the parent dropped: with it, any connection inherited across the fork
    return accepted

if __name__ == "__main__":
    folder = sys.argv[1]
    video = PrivacyAccountant(cap=1.0, ledger=folder + "/video.sqlite")  # another ledger in use in this process
    video.charge(0.9)
    video.charge(0.1)
    watched = [video]

    def monitor():  # a thread that keeps using the ledgers while the main thread forks
        while True:
            for accountant in list(watched):
                accountant.frames

    threading.Thread(target=monitor, daemon=True).start()
    for trial in range(4):
        ledger = f"{folder}/train{trial}.sqlite"
        dropped = PrivacyAccountant(cap=1.0, ledger=ledger)  # e.g. made to create the ledger, then dropped; a cycle
        dropped.cycle = dropped  # keeps it (and its connection) alive until the garbage collector runs
        watched.append(PrivacyAccountant(cap=1.0, ledger=ledger))
        del dropped
        with multiprocessing.get_context("fork").Pool(4) as pool:
            accepted = sum(pool.map_async(charge_sixty, [ledger] * 4).get(timeout=60))  # a hung child fails
        print(accepted, PrivacyAccountant(cap=1.0, ledger=ledger).frames)
"""


def test_forked_processes_keep_the_cap_after_an_accountant_was_dropped(tmp_path):
    """A dropped accountant's SQLite connection lives until the garbage collector runs; forked children inherited it
    and lost each other's charges (160 accepted under a cap of 100). A thread using a ledger while the main thread
    forks could reopen a connection that then crossed the fork, or leave the child a lock it never gets back (hung
    children). Ledgers now close before every fork and stay locked across it. Run in a fresh interpreter, as a user's
    script would be."""
    script = tmp_path / "pool.py"
    script.write_text(FORKED_POOL)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100", "100"] * 4, done.stdout


def open_new_ledger(ledger: str, barrier, results) -> None:
    barrier.wait()
    try:
        PrivacyAccountant(cap=1.0, ledger=ledger).charge(0.01)
        results.put("ok")
    except Exception as error:  # reported to the test
        results.put(f"{type(error).__name__}: {error}")


def test_processes_that_create_a_ledger_at_once_all_succeed(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(5):
        ledger, barrier, results = str(tmp_path / f"new{trial}.sqlite"), context.Barrier(4), context.Queue()
        workers = [context.Process(target=open_new_ledger, args=(ledger, barrier, results)) for _ in range(4)]
        for w in workers:
            w.start()
        outcomes = [results.get(timeout=60) for _ in workers]
        for w in workers:
            w.join()
        assert outcomes == ["ok"] * 4
        assert PrivacyAccountant(cap=1.0, ledger=ledger).frames == 4


KILLED_STREAM = """
import sys
import torch
from dp_pixel_torch import DPPixelize, PrivacyAccountant
ledger, log = sys.argv[1], open(sys.argv[2], "a")
layer = DPPixelize(0.5, 4, seed=0, accountant=PrivacyAccountant(ledger=ledger))
x = torch.full((1, 3, 16, 16), 128, dtype=torch.uint8)
while True:
    layer(x)  # charged and committed, then the noise is drawn
    log.write("released\\n")
    log.flush()
"""


def test_a_process_killed_mid_stream_loses_no_committed_charge(tmp_path):
    ledger, log = tmp_path / "budget.sqlite", tmp_path / "released.log"
    log.touch()
    child = subprocess.Popen([sys.executable, "-c", KILLED_STREAM, str(ledger), str(log)])
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count("\n") < 25 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    released = log.read_text().count("\n")
    assert released >= 25
    charged = PrivacyAccountant(ledger=ledger).frames
    # Every release that went out had been charged; at most the one in flight was charged and not released.
    assert released <= charged <= released + 1
    assert PrivacyAccountant(ledger=ledger).spent == 0.5 * charged


def test_a_ledger_refuses_other_settings(tmp_path):
    PrivacyAccountant(cap=2.0, fps=30, ledger=tmp_path / "b.sqlite").charge(0.5)
    with pytest.raises(ValueError, match="cap"):
        PrivacyAccountant(cap=5.0, fps=30, ledger=tmp_path / "b.sqlite")


@pytest.mark.parametrize("ledger", [False, True], ids=["memory", "ledger"])
def test_a_day_of_video_keeps_a_small_history(ledger, tmp_path):
    """24 h at 30 fps is 2.6 M frames: the history is runs of equal ε, so it stays small and queries stay fast."""
    path = tmp_path / "day.sqlite"
    acc = PrivacyAccountant(fps=30, ledger=path if ledger else None)
    for minute in range(24 * 60):
        acc.charge(0.01 if minute % 60 else 0.02, frames=30 * 60)  # the first minute of every hour costs more
    assert acc.frames == 2_592_000
    assert acc.spent == pytest.approx(24 * 1800 * (59 * 0.01 + 0.02))
    assert acc.epsilon_for(seconds=60) == pytest.approx(1800 * 0.02)
    assert acc.epsilon_for(seconds=90) == pytest.approx(1800 * 0.02 + 900 * 0.01)
    assert len(acc.to_json()) < 4096
    if ledger:
        sizes = {p.name: p.stat().st_size for p in tmp_path.glob("day.sqlite*")}
        assert sizes["day.sqlite"] < 64 * 1024 and sum(sizes.values()) < 1024 * 1024, sizes


def test_a_json_state_of_the_current_format_still_loads():
    acc = PrivacyAccountant.from_json(OLD_STATE)
    assert (acc.frames, acc.cap, acc.window, acc.window_cap, acc.fps) == (8, 2.0, 10, 1.5, 30.0)
    assert acc.spent == pytest.approx(1.0) and acc.epsilon_for(2) == pytest.approx(0.4)
    assert PrivacyAccountant.from_json(acc.to_json()).to_json() == acc.to_json()


# --- integrity: a ledger deleted, replaced or rolled back is refused; a reset is explicit --------------------------


def damage(ledger, how: str, older) -> None:
    """What an operator might do to a ledger in use: delete it, put another ledger in its place, or restore an older
    copy (its write-ahead log and index go with it; the lock file beside it stays)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ledger}{suffix}").unlink(missing_ok=True)
    if how == "other":
        PrivacyAccountant(cap=1.0, ledger=f"{ledger}.other").charge(0.1)
        os.replace(f"{ledger}.other", ledger)
    elif how == "older":
        os.replace(older, ledger)


def backup(ledger, copy_path) -> None:
    source, target = sqlite3.connect(ledger), sqlite3.connect(copy_path)
    source.backup(target)
    source.close()
    target.close()


@pytest.mark.parametrize("how", ["deleted", "other", "older"])
def test_a_ledger_that_lost_its_history_is_refused(how, tmp_path):
    """Deleting a ledger that had spent 0.9 of 1.0 let a new opener start at 0 while the old process kept charging
    the deleted file (1.85 in all); restoring an older copy brought 0.9 back to 0.1. Now the accountant that opened
    it, a pickled copy of it and a new opener all refuse, until PrivacyAccountant.reset_ledger starts over."""
    ledger = tmp_path / "camera.sqlite"
    acc = PrivacyAccountant(cap=1.0, ledger=ledger)
    acc.charge(0.1)
    backup(ledger, tmp_path / "older.sqlite")
    acc.charge(0.8)
    state = pickle.dumps(acc)
    damage(ledger, how, tmp_path / "older.sqlite")
    with pytest.raises(LedgerIntegrityError, match="deleted, replaced or reset"):
        acc.charge(0.05)
    with pytest.raises(LedgerIntegrityError):
        acc.spent
    with pytest.raises(LedgerIntegrityError):
        pickle.loads(state)
    with pytest.raises(LedgerIntegrityError, match=r"reset_ledger\("):
        PrivacyAccountant(cap=1.0, ledger=ledger)
    PrivacyAccountant.reset_ledger(ledger)
    fresh = PrivacyAccountant(cap=2.0, ledger=ledger)  # a new budget, with settings of its own
    assert (fresh.frames, fresh.spent) == (0, 0.0)
    fresh.charge(0.5)
    with pytest.raises(LedgerIntegrityError):
        acc.charge(0.05)  # the old accountant never charges the new budget
    assert PrivacyAccountant(cap=2.0, ledger=ledger).spent == 0.5


def test_a_ledger_rolled_back_while_closed_is_refused(tmp_path):
    """An older copy restored in place (same file, same identity, fewer charges) while no process held it: a new
    opener compares it with the lock file's memory, and an accountant that reopens it with its own."""
    ledger = tmp_path / "camera.sqlite"
    acc = PrivacyAccountant(cap=1.0, ledger=ledger)
    acc.charge(0.1)
    backup(ledger, tmp_path / "older.sqlite")
    acc.charge(0.8)
    acc._history.close()  # the last connection: the log is checkpointed and removed
    shutil.copyfile(tmp_path / "older.sqlite", ledger)
    assert Path(f"{ledger}.lock").read_text().split()[1] == "2"  # the lock file remembers 2 charges
    with pytest.raises(LedgerIntegrityError, match="holds 1 charges, but .* remembers 2"):
        PrivacyAccountant(cap=1.0, ledger=ledger)
    Path(f"{ledger}.lock").unlink()  # the lock file lost too: the accountant still remembers
    with pytest.raises(LedgerIntegrityError, match="went back from 2 to 1 charges"):
        acc.charge(0.05)


def test_a_ledger_survives_restarts_forks_and_a_changed_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    acc = PrivacyAccountant(cap=1.0, ledger="camera.sqlite")  # a relative path
    acc.charge(0.25)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    acc._history.close()  # reopened as after a fork: the same file, not ./camera.sqlite here
    acc.charge(0.25)
    assert pickle.loads(pickle.dumps(acc)).spent == 0.5
    assert PrivacyAccountant(cap=1.0, ledger=tmp_path / "camera.sqlite").spent == 0.5


def test_a_ledger_of_the_previous_format_gains_an_identity(tmp_path):
    ledger = tmp_path / "old.sqlite"
    with sqlite3.connect(ledger) as db:
        db.executescript(
            """CREATE TABLE settings (id INTEGER PRIMARY KEY CHECK (id = 0), cap REAL, window INTEGER,
                   window_cap REAL, fps REAL);
               CREATE TABLE runs (id INTEGER PRIMARY KEY, epsilon REAL NOT NULL, frames INTEGER NOT NULL);
               CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 0), frames INTEGER NOT NULL, spent REAL NOT NULL);
               INSERT INTO settings VALUES (0, 1.0, NULL, NULL, NULL);
               INSERT INTO runs (epsilon, frames) VALUES (0.3, 2);
               INSERT INTO totals VALUES (0, 2, 0.6);"""
        )
    acc = PrivacyAccountant(cap=1.0, ledger=ledger)
    acc.charge(0.3)
    assert (acc.frames, acc.spent) == (3, pytest.approx(0.9))
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE results (x)")
    other.close()
    with pytest.raises(ValueError, match="not a PrivacyAccountant ledger"):
        PrivacyAccountant.reset_ledger(tmp_path / "other.db")  # a reset touches nothing but a ledger


def test_the_cli_refuses_a_deleted_ledger(tmp_path, capsys):
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((16, 16, 3), 128, np.uint8))
    args = ["--epsilon", "0.5", "--b", "4", "--cap", "1", "--ledger", str(tmp_path / "camera.sqlite"), "--quiet"]
    assert main([str(image), "-o", str(tmp_path / "a.png"), *args]) == 0
    (tmp_path / "camera.sqlite").unlink()
    assert main([str(image), "-o", str(tmp_path / "b.png"), *args]) == 3
    assert "reset_ledger" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
