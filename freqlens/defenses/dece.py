"""DeCE, the deceptive cross-entropy (Yang et al., 2024, arXiv 2407.08956), as a freqlens defense.

DeCE replaces the cross-entropy of fine-tuning with a bounded loss, so that
no example, a poisoned one included, can pull the model with an ever
larger gradient once it is fitted badly (the paper's analysis: the
unboundedness of cross-entropy is what lets a model overfit the trigger after
its "early learning" of the clean task). For logits ``z`` of an example with
label ``y`` among ``K`` classes, in epoch ``t`` (1, 2, ...):

- the label-smoothed target ``q``: ``q_y = 1 - eps`` and ``q_k = eps / (K - 1)``
  for ``k != y`` (``eps`` = ``smoothing``);
- the model's prediction ``p = softmax(z)``, clamped to ``[1e-7, 1]``;
- the deceptive (blended) prediction ``p~ = alpha_t p + (1 - alpha_t) q`` with
  ``alpha_t = alpha_base ** t``, so the blend leans more on the target as
  training goes on;
- the loss ``L = - sum_k q_k log p~_k``, averaged over the batch.

Since ``p~_k >= (1 - alpha_t) q_k``, the loss of any example is at most
``- sum_k q_k log((1 - alpha_t) q_k)`` (finite for ``alpha_t < 1`` and
``eps > 0``), and its gradient in ``p`` is bounded by ``alpha_t / ((1 -
alpha_t) q_k)``; cross-entropy has neither bound. With ``alpha_base = 1``
and ``smoothing = 0`` DeCE is cross-entropy (on ``p >= 1e-7``).

Source: the paper's method section (label smoothing, the blended
"deceptive" distribution and the epoch schedule of ``alpha``) and the
authors' reference implementation (github.com/NTDXYG/DeCE, the ``DeCE``
loss of its README: ``alpha = alpha_base ** epoch`` with the 1-based epoch,
``eps / (K - 1)`` on the other classes, the clamp). Its defaults: ``smoothing
= 0.05``; ``alpha_base`` is 0.985 in the class signature, 0.99 in the
README's usage and 0.8 in the repository's training scripts; freqlens
takes the README's 0.99. The paper trains generation models (token-level
losses); a sequence classifier's loss is the same formula over its labels.

DeCE is a loss, not a filter: it trains once, for ``train.epochs``, at the
cost of a vanilla run, and writes no detection metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from freqlens import distributed
from freqlens.defenses.base import Defense, register_defense
from freqlens.training import TrainConfig, train

PROBABILITY_FLOOR = 1e-7  # p is clamped to [PROBABILITY_FLOOR, 1] before blending (the reference implementation's)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DeCEOptions:
    """DeCE's settings, the config's ``[defense.options]`` table (errors name ``defense.options.<key>``)."""

    smoothing: float = 0.05  # label smoothing eps: the true class's target is 1 - eps, each other class's eps / (K - 1); in [0, 1)
    alpha_base: float = 0.99  # the blend weight of the model's prediction in epoch t is alpha_base ** t; in (0, 1]

    def __post_init__(self) -> None:
        if not (_number(self.smoothing) and 0 <= self.smoothing < 1):
            raise ValueError(f"Expected `defense.options.smoothing` in [0, 1) but got {self.smoothing!r}.")
        if not (_number(self.alpha_base) and 0 < self.alpha_base <= 1):
            raise ValueError(f"Expected `defense.options.alpha_base` in (0, 1] but got {self.alpha_base!r}.")


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """DeCE's label-smoothed targets: ``1 - smoothing`` on the label, ``smoothing / (K - 1)`` on the others.

    Args:
        labels: (B,) class indices in ``[0, num_classes)``.
        num_classes: K >= 2.
        smoothing: in [0, 1).

    Returns:
        (B, K) float32 rows that sum to 1.

    Raises:
        ValueError: ``num_classes`` < 2.
    """
    if num_classes < 2:
        raise ValueError(f"Expected at least 2 classes for DeCE's label smoothing but got {num_classes}.")
    targets = torch.full((labels.shape[0], num_classes), smoothing / (num_classes - 1), dtype=torch.float32,
                         device=labels.device)
    return targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing)


def dece_loss(logits: torch.Tensor, labels: torch.Tensor, *, epoch: int, smoothing: float = 0.05,
              alpha_base: float = 0.99, reduction: str = "mean") -> torch.Tensor:
    """The deceptive cross-entropy of ``logits`` against ``labels`` in ``epoch`` (Yang et al., arXiv 2407.08956).

    ``L = - sum_k q_k log(alpha p_k + (1 - alpha) q_k)`` with ``q`` the
    label-smoothed target (:func:`smoothed_targets`), ``p`` the softmax of
    ``logits`` clamped to ``[1e-7, 1]`` and ``alpha = alpha_base ** epoch``
    (see the module docstring). Computed in float32 whatever the logits'
    dtype.

    Args:
        logits: (B, K) unnormalised class scores.
        labels: (B,) class indices.
        epoch: the 1-based epoch (``alpha_base ** epoch`` weighs the model's
            prediction).
        smoothing: eps in [0, 1).
        alpha_base: in (0, 1]; 1 with ``smoothing = 0`` is cross-entropy.
        reduction: ``"mean"`` (a scalar) or ``"none"`` ((B,) per example).

    Returns:
        The loss, a float32 scalar or (B,).

    Raises:
        ValueError: ``epoch`` < 1, ``reduction`` unknown, fewer than 2 classes.
    """
    if epoch < 1:
        raise ValueError(f"Expected DeCE's epoch to be 1-based (>= 1) but got {epoch}.")
    if reduction not in ("mean", "none"):
        raise ValueError(f"Expected DeCE's reduction to be 'mean' or 'none' but got {reduction!r}.")
    alpha = float(alpha_base) ** int(epoch)
    targets = smoothed_targets(labels, logits.shape[-1], smoothing)
    probabilities = functional.softmax(logits.float(), dim=-1).clamp(min=PROBABILITY_FLOOR, max=1.0)
    blended = alpha * probabilities + (1.0 - alpha) * targets
    losses = -(targets * torch.log(blended)).sum(dim=-1)
    return losses.mean() if reduction == "mean" else losses


def _examples_per_epoch(n: int, config: TrainConfig) -> int:
    """Rows this process's loss function sees in one epoch of :func:`freqlens.training.train` on ``n`` rows.

    A single process sees all ``n``; under data-parallel training each
    process gets its :func:`freqlens.distributed.shard` of every batch (the
    batch sizes of an epoch are fixed, their order is not).
    """
    if not distributed.is_distributed():
        return n
    seen = 0
    step_rows = config.batch_size * config.accumulation_steps
    for start in range(0, n, step_rows):
        in_step = min(step_rows, n - start)
        for micro in range(0, in_step, config.batch_size):
            size = min(config.batch_size, in_step - micro)
            share = distributed.shard(size)
            seen += share.stop - share.start
    return seen


class EpochLoss:
    """DeCE as a ``loss_fn`` for :func:`freqlens.training.train`, which knows its epoch by counting rows.

    The training loop does not pass the epoch to its loss function; every
    epoch shows this process the same number of rows
    (:func:`_examples_per_epoch`), so the epoch of a batch is ``1 + rows seen
    before it // rows per epoch``.

    Args:
        options: the :class:`DeCEOptions`.
        examples_per_epoch: rows this process sees per epoch (> 0).
        first_epoch: epochs already done (a resumed run starts after them).
    """

    def __init__(self, options: DeCEOptions, examples_per_epoch: int, first_epoch: int = 0) -> None:
        if examples_per_epoch < 1:
            raise ValueError(f"Expected at least one row per epoch but got {examples_per_epoch}.")
        self.options = options
        self.examples_per_epoch = int(examples_per_epoch)
        self.seen = int(first_epoch) * self.examples_per_epoch

    @property
    def epoch(self) -> int:
        """The 1-based epoch the next batch belongs to."""
        return 1 + self.seen // self.examples_per_epoch

    def __call__(self, model, batch, labels, *, rows) -> torch.Tensor:
        epoch = self.epoch
        self.seen += len(rows)
        logits = model(**batch).logits
        return dece_loss(logits, labels, epoch=epoch, smoothing=self.options.smoothing,
                         alpha_base=self.options.alpha_base)


class DeCE(Defense):
    """Full fine-tuning with the deceptive cross-entropy (``defense.name = "dece"``; Yang et al., arXiv 2407.08956).

    Settings in ``[defense.options]`` (:class:`DeCEOptions`): ``smoothing``
    (0.05) and ``alpha_base`` (0.99). Costs what a vanilla run costs.
    ``results.json`` gets ``dece``: the settings and the blend weight
    ``alpha`` of the last epoch trained.
    """

    options = DeCEOptions

    def train(self, model, encodings, labels, config, *, reference, selector, poison, recorder, progress,
              checkpoint):
        options = self.settings or DeCEOptions()
        labels = np.asarray(labels)
        saved = checkpoint.state if checkpoint is not None else None
        first_epoch = int(saved["train"]["epoch"]) if saved is not None else 0  # resumed after these epochs
        loss = EpochLoss(options, _examples_per_epoch(len(labels), config), first_epoch)
        result = train(model, encodings, labels, config, loss_fn=loss, recorder=recorder, progress=progress,
                       selector=selector, checkpoint=checkpoint)
        return result, {"dece": {"smoothing": options.smoothing, "alpha_base": options.alpha_base,
                                 "final_alpha": options.alpha_base ** config.epochs}}


register_defense("dece", DeCE)
