"""DRSformer: sparse Transformer for single-image rain removal (Chen, Li, Li, Pan, CVPR 2023)."""

__version__ = "0.1.0"
