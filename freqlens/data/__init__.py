"""Datasets for backdoor experiments."""

from freqlens.data.splits import EVAL_SPLITS, PoisonedDataset, Split

__all__ = ["EVAL_SPLITS", "PoisonedDataset", "Split"]
