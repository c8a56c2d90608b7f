"""Y-channel PSNR/SSIM as the paper's MATLAB scripts compute them (NumPy), on tensors (torch), and skimage's;
NIQE/BRISQUE without ground truth.

Importing this package registers the validation metrics in ``METRIC_REGISTRY``.
"""

from . import registered  # noqa: F401  (fills METRIC_REGISTRY)
from .protocols import PROTOCOLS, Score, evaluate_pair

__all__ = ["PROTOCOLS", "Score", "evaluate_pair"]
