"""Y-channel PSNR/SSIM as the paper's MATLAB scripts compute them (NumPy) and on tensors (torch)."""

from .matlab import PROTOCOLS, Score, evaluate_pair

__all__ = ["PROTOCOLS", "Score", "evaluate_pair"]
