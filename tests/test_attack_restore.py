"""The re-identification attack on restored releases (experiments/reid_attack.py, ``restore=``): the attacker's
restoration reaches the releases, reads only what is public, and the default ``[fill]`` is the release as it is."""

import sys

import cv2
import pytest
import skimage.data
import torch
from hydra import compose, initialize_config_dir
from test_experiments import ROOT

from dp_pixel_torch import DPPixelize, RegionAdaptiveDPPixelize

sys.path.insert(0, str(ROOT / "experiments"))
import reid_attack
from run import make_release, released_frames

UNIFORM, PROTECTED = "dp_uniform ε=1 b=8 m=1", "dp_protect ε=1 b=8 m=1 m_r=64"
FACES = torch.from_numpy(cv2.resize(skimage.data.camera(), (224, 224))).unflatten(0, (2, 112)).unflatten(2, (2, 112))
FACES = FACES.permute(0, 2, 1, 3).reshape(4, 1, 112, 112).contiguous()  # four 112×112 grey "faces"
BOXES = torch.tensor([[0, 0, 111, 111], [20, 10, 70, 90], [40, 40, 100, 100], [5, 60, 50, 111]], dtype=torch.float32)


def jobs(*overrides: str) -> dict:
    """Condition name -> ``release(images, boxes)`` of the smoke config."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="reid_attack", overrides=["attack=smoke", *overrides])
    return {reid_attack.condition_name(*job[:6]): job[6] for job in reid_attack.conditions(cfg)}


@pytest.fixture
def both():
    """Fresh seeded layers: each call of a condition's release draws new noise."""
    return jobs("restore=[fill,denoise]")


def test_restore_defaults_to_fill_which_attacks_the_releases_as_they_are(both):
    default, fresh = jobs(), jobs()
    assert [c for c in both if c not in default] == [f"{c} restore=denoise" for c in (UNIFORM, PROTECTED)] + [
        "dp_protect ε=1 b=8 m=1 m_r=all restore=denoise"
    ]
    for name, release in default.items():  # the same conditions, the same releases
        assert torch.equal(release(FACES, BOXES), both[name](FACES, BOXES))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        mech = compose(config_name="reid_attack").mechanisms.dp_uniform
    today = torch.stack(released_frames(make_release(mech, 1.0, 8, 1, 0)[0](list(FACES), None)))
    assert torch.equal(fresh[UNIFORM](FACES, BOXES), today)


def test_a_restored_condition_is_its_own_release_restored_from_the_public_cells(both):
    uniform = both[f"{UNIFORM} restore=denoise"](FACES, BOXES)
    layer = DPPixelize(1.0, 8, 1, seed=0)  # the suite releases each face on its own, in order
    assert torch.equal(uniform, torch.stack([layer.release(f).restore("denoise") for f in FACES]))
    assert not torch.equal(uniform, both[UNIFORM](FACES, BOXES))
    layer = RegionAdaptiveDPPixelize(1.0, 1, levels=(8, 16), protect=True, protect_m=64, seed=0)
    expected = torch.stack([layer.release(f, boxes=b[None]).restore("denoise") for f, b in zip(FACES, BOXES)])
    protected = both[f"{PROTECTED} restore=denoise"](FACES, BOXES)
    assert torch.equal(protected, expected) and not torch.equal(protected, both[PROTECTED](FACES, BOXES))


def test_an_image_that_is_not_a_release_of_the_public_cells_is_refused():
    for guarantee in (
        DPPixelize(1.0, 8, 1).guarantee,
        RegionAdaptiveDPPixelize(1.0, 1, levels=(8, 16), protect=True, protect_m=64).guarantee,
    ):
        with pytest.raises(ValueError, match="not constant"):
            reid_attack.restorer(guarantee, "denoise")(FACES, BOXES)
