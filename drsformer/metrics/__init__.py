"""Y-channel PSNR/SSIM as the paper's MATLAB scripts compute them (NumPy) and on tensors (torch)."""

from .matlab import DATASET_PROTOCOLS, PROTOCOLS, Score, evaluate_pair

__all__ = ["DATASET_PROTOCOLS", "PROTOCOLS", "Score", "evaluate_pair"]
