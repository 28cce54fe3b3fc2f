"""dp_pixel_torch: differentially private pixelization (DP-Pix) for images and video, native to PyTorch."""

from . import detectors, functional, kernels, reference, restoration, temporal
from .accounting import BudgetExceededError, LedgerIntegrityError, PrivacyAccountant, PrivacyGuarantee
from .detectors import ProtectDetected
from .functional import dp_pixelize, dp_pixelize_adaptive
from .mechanisms import DPPixelize, RegionAdaptiveDPPixelize, Restore
from .noise import KeyStream
from .partitions import GridPartition, MultiLevelGrid
from .storage import NoisyGrid, NoisyGridFormatError, load_video, save_video
from .training_data import ReleasedOnce

__all__ = [
    "BudgetExceededError",
    "DPPixelize",
    "GridPartition",
    "KeyStream",
    "LedgerIntegrityError",
    "MultiLevelGrid",
    "NoisyGrid",
    "NoisyGridFormatError",
    "PrivacyAccountant",
    "PrivacyGuarantee",
    "ProtectDetected",
    "RegionAdaptiveDPPixelize",
    "ReleasedOnce",
    "Restore",
    "dp_pixelize",
    "detectors",
    "dp_pixelize_adaptive",
    "functional",
    "kernels",
    "load_video",
    "reference",
    "restoration",
    "save_video",
    "temporal",
]
__version__ = "0.1.0"
