"""PrivacyAccountant: sequential composition, caps enforced before any noise, w-event windows, JSON state."""

import pytest
import torch

from dp_pixel_torch import DPPixelize, PrivacyAccountant, RegionAdaptiveDPPixelize
from dp_pixel_torch.accounting import BudgetExceededError

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
