"""dp_pixel_torch: differentially private pixelization (DP-Pix) for images and video, native to PyTorch."""

from . import functional, reference
from .accounting import PrivacyGuarantee
from .functional import dp_pixelize
from .mechanisms import DPPixelize
from .partitions import GridPartition

__all__ = ["DPPixelize", "GridPartition", "PrivacyGuarantee", "dp_pixelize", "functional", "reference"]
__version__ = "0.1.0"
