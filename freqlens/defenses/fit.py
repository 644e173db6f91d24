"""Train a prepared model with a named defense: :func:`fit_defense`, the function form of ``Defense.fit``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from freqlens.defenses.base import make_defense
from freqlens.defenses.registry import DefenseConfig
from freqlens.training import TrainConfig, TrainResult


def fit_defense(
    model: nn.Module,
    encodings: Mapping[str, torch.Tensor],
    labels: np.ndarray,
    config: DefenseConfig,
    train_config: TrainConfig,
    *,
    reference: tuple[Mapping[str, torch.Tensor], np.ndarray] | None = None,
    selector: Callable[[nn.Module], float] | None = None,
    poison: np.ndarray | None = None,
    recorder=None,
    progress: bool = True,
    checkpoint=None,
) -> tuple[TrainResult, dict]:
    """Train ``model`` (already prepared by :func:`~freqlens.defenses.prepare_model`) with ``config``'s defense.

    The same as ``make_defense(config).fit(...)``
    (:meth:`freqlens.defenses.base.Defense.fit`, which documents the
    arguments, the returned ``(TrainResult, dict)`` and the errors: no
    reference set for a defense that needs one; inputs that with prefix
    tuning's ``defense.prefix.tokens`` do not fit the model's position table).
    """
    return make_defense(config).fit(model, encodings, labels, train_config, reference=reference, selector=selector,
                                    poison=poison, recorder=recorder, progress=progress, checkpoint=checkpoint)
