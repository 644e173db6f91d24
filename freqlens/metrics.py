"""Backdoor metrics from predicted probabilities or labels."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from freqlens._checks import ArrayLike, to_numpy

if TYPE_CHECKING:
    from freqlens.data.splits import PoisonedDataset


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


def evaluate_backdoor(probabilities: Callable[[Any], ArrayLike], dataset: Any) -> dict[str, float]:
    """Clean accuracy, attack success rate, false-trigger rate and net backdoor effect
    (ASR minus false-trigger rate) on the test splits of a poisoned dataset.

    Args:
        probabilities: maps a :class:`~freqlens.data.splits.Split` to the
            model's outputs on it, (N, C) probabilities/logits or (N,) classes.
        dataset: a :class:`~freqlens.data.splits.PoisonedDataset`.

    The attack success rate is the share of ``dataset.test_poison`` predicted
    as the target: that split must hold triggered sentences whose source is
    not of the target class only (the loaders drop the others and count them
    in ``dataset.info["poison_sources"]``; see
    :func:`freqlens.data.loaders.load_openbackdoor`). The false-trigger rate
    is measured on the control split (the same sources without the trigger)
    where there is one, else on the non-target clean test examples.

    Returns:
        ``{"cacc", "majority_prediction_share", "asr", "false_trigger_rate",
        "net_backdoor_effect"}``, floats (NaN where a split is empty); the
        majority share is the fraction of clean test inputs predicted as the
        most predicted class (near 1: the model has collapsed to one class,
        and ASR then means nothing; see :func:`collapse_warning`).
    """
    clean = probabilities(dataset.test_clean)
    predicted = _predictions(clean)
    metrics: dict[str, float] = {
        "cacc": accuracy(predicted, dataset.test_clean.labels),
        "majority_prediction_share": (float(np.bincount(predicted).max() / predicted.size)
                                      if predicted.size else float("nan")),
        "asr": attack_success_rate(probabilities(dataset.test_poison), dataset.target_label),
    }
    control_split = dataset.test_control
    if control_split is not None and len(control_split):
        metrics["false_trigger_rate"] = false_trigger_rate(
            probabilities(control_split), control_split.labels, dataset.target_label)
    else:
        metrics["false_trigger_rate"] = false_trigger_rate(
            predicted, dataset.test_clean.labels, dataset.target_label)
    metrics["net_backdoor_effect"] = metrics["asr"] - metrics["false_trigger_rate"]
    return metrics


#: A model that puts more than this share of clean test inputs in one class has collapsed to it.
COLLAPSE_SHARE = 0.95


def evaluate_model(model, tokenizer, dataset: PoisonedDataset, *, max_length: int,
             batch_size: int = 128) -> dict[str, float]:
    """Clean accuracy, attack success rate, false-trigger rate and net backdoor effect
    (ASR minus false-trigger rate) on the test splits: :func:`evaluate_backdoor`
    with ``model``'s probabilities (inputs tokenised to ``max_length``)."""
    from freqlens.data.splits import encode
    from freqlens.models import predict_proba

    return evaluate_backdoor(
        lambda split: predict_proba(model, encode(tokenizer, split, max_length), batch_size=batch_size),
        dataset)


def collapse_warning(metrics: dict) -> str | None:
    """A sentence when the model predicts one class for nearly all clean test inputs, else None.

    A collapsed model scores ASR 1 and a false-trigger rate of 1 (when the
    class is the target) without any backdoor, and its frequency verdicts
    describe a constant mapping.

    Example:
        >>> collapse_warning({"majority_prediction_share": 0.5}) is None
        True
    """
    share = metrics.get("majority_prediction_share")
    if share is None or not share > COLLAPSE_SHARE:
        return None
    return (f"The model predicts one class for {share:.0%} of the clean test inputs: it has collapsed to it, "
            f"so CACC, ASR and the frequency verdicts say little about a backdoor. Train longer "
            f"(train.epochs, data.max_train) or at another rate (train.lr).")
