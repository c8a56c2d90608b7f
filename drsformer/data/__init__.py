"""Paired image data: file I/O, datasets, samplers, benchmark preparation and synthetic rain.

Importing this package registers the datasets in ``DATASET_REGISTRY``.
"""

from .paired import PairedImageDataset
from .sampler import ProgressiveBatchSampler, SampleKey, Stage, progressive_schedule

__all__ = ["PairedImageDataset", "ProgressiveBatchSampler", "SampleKey", "Stage", "progressive_schedule"]
