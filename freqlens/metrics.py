"""Backdoor metrics from predicted probabilities or labels."""

from __future__ import annotations

import numpy as np

from freqlens._checks import ArrayLike, to_numpy


def _predictions(outputs: ArrayLike, name: str = "outputs") -> np.ndarray:
    array = to_numpy(outputs, name)
    if array.ndim == 2:
        return array.argmax(axis=1)
    if array.ndim == 1:
        return array.astype(np.int64)
    raise ValueError(f"Expected `{name}` of shape (N, C) or (N,) but got shape {array.shape}.")


def accuracy(outputs: ArrayLike, labels: ArrayLike) -> float:
    """Share of examples whose predicted class equals the label.

    Args:
        outputs: probabilities/logits (N, C) or predicted classes (N,).
        labels: labels (N,).

    Example:
        >>> accuracy([[0.9, 0.1], [0.2, 0.8]], [0, 0])
        0.5
    """
    predicted = _predictions(outputs)
    truth = to_numpy(labels, "labels").reshape(-1)
    if predicted.shape != truth.shape:
        raise ValueError(
            f"Expected `labels` to have {predicted.shape[0]} entries, one per output, but got {truth.shape[0]}."
        )
    if truth.size == 0:
        return float("nan")
    return float(np.mean(predicted == truth))


def attack_success_rate(outputs: ArrayLike, target_label: int) -> float:
    """Share of triggered examples (true label not the target) classified as the target."""
    predicted = _predictions(outputs)
    return float(np.mean(predicted == target_label)) if predicted.size else float("nan")


def false_trigger_rate(outputs: ArrayLike, labels: ArrayLike, target_label: int) -> float:
    """Share of clean non-target examples classified as the target.

    The ASR a shifted class prior alone would give: compare it with
    :func:`attack_success_rate` on the same sentences with the trigger.
    """
    predicted = _predictions(outputs)
    truth = to_numpy(labels, "labels").reshape(-1)
    keep = truth != target_label
    return float(np.mean(predicted[keep] == target_label)) if keep.any() else float("nan")
