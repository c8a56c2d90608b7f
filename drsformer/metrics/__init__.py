"""Y-channel PSNR/SSIM as the paper's MATLAB scripts compute them (NumPy), on tensors (torch), and skimage's.

Importing this package registers the validation metrics in ``METRIC_REGISTRY``.
"""

from . import registered  # noqa: F401  (fills METRIC_REGISTRY)
from .matlab import PROTOCOLS, Score, evaluate_pair
from .skimage_protocol import evaluate_skimage

__all__ = ["PROTOCOLS", "Score", "evaluate_pair", "evaluate_skimage"]
