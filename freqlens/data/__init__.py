"""Datasets for backdoor experiments."""

from freqlens.data.splits import PoisonedDataset, Split

__all__ = ["PoisonedDataset", "Split"]
