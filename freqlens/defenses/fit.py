"""Train a prepared model with a named defense: the piece ``freqlens run`` calls.

:func:`fit_defense` picks the loop (plain, gradient-aligned, reference-only,
ABL), the learning rate and the checkpoint selection for
``DefenseConfig.name``, and returns the training result plus what the defense
did (for ``results.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from freqlens.defenses.abl import train_abl
from freqlens.defenses.adapters import check_input_length
from freqlens.defenses.ga import GradientAligner
from freqlens.defenses.registry import DefenseConfig
from freqlens.training import TrainConfig, TrainResult, train


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
    """Train ``model`` (already prepared by :func:`~freqlens.defenses.prepare_model`).

    Args:
        model: the prepared model.
        encodings, labels: the (poisoned) training set.
        config: the defense and its settings.
        train_config: optimisation settings; its ``lr`` is the train.lr that
            ``config.learning_rate`` may replace.
        reference: the clean reference set (encodings, labels); needed by
            gradient alignment and ``reference-only``.
        selector: clean dev accuracy of a model, for checkpoint selection.
        poison: which training examples are poisoned (for ABL's report).
        recorder, progress, checkpoint: as in :func:`freqlens.training.train`
            (epoch checkpoints to save and resume from, ABL's phases included).

    Returns:
        The :class:`~freqlens.training.TrainResult` and a dict of what the
        defense did (lr, trainable parameters, selection, alignment, isolation).

    Raises:
        ValueError: before any training step: no reference set for a defense
            that needs one; inputs (the encodings' width, ``model.max_length``)
            that with prefix tuning's virtual tokens (``defense.prefix_tokens``)
            do not fit the model's position table.
    """
    spec = config.spec
    if spec.needs_reference and reference is None:
        raise ValueError(f"Expected a clean reference set for defense {config.name!r} but got none.")
    for inputs in (encodings, reference[0] if reference is not None else None):
        width = _width(inputs)
        if width is not None:
            check_input_length(model, width)
    lr = config.learning_rate(model, train_config.lr)
    run_config = replace(train_config, lr=lr)
    select = selector if config.selects_best() else None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info: dict = {"name": config.name, "adapter": getattr(model, "freqlens_adapter", spec.adapter), "lr": lr,
                  "trainable_parameters": int(trainable),
                  "total_parameters": int(sum(p.numel() for p in model.parameters())),
                  "selection": "best-dev" if select else "last"}
    if spec.abl:
        result, abl = train_abl(
            model, encodings, labels, run_config, isolation_rate=config.abl_isolation_rate,
            isolation_epochs=config.abl_isolation_epochs, gamma=config.abl_gamma,
            unlearn_epochs=config.abl_unlearn_epochs, unlearn_lr=config.abl_unlearn_lr, poison=poison,
            recorder=recorder, progress=progress, selector=select, checkpoint=checkpoint,
        )
        info["abl"] = {"isolated": int(len(abl.isolated)), "isolated_poison_share": abl.isolated_poison_share}
    elif spec.reference_only:
        ref_encodings, ref_labels = reference
        rows = torch.arange(len(labels)) % len(ref_labels)  # as many examples per epoch as the poisoned set
        result = train(model, {k: v[rows] for k, v in ref_encodings.items()}, np.asarray(ref_labels)[rows.numpy()],
                       run_config, recorder=recorder, progress=progress, selector=select, checkpoint=checkpoint)
    else:
        aligner = None
        if spec.ga:
            ref_encodings, ref_labels = reference
            try:
                aligner = GradientAligner(  # one reference batch per optimisation step, as large as its training batch
                    model, ref_encodings, ref_labels, config.ga_config(),
                    batch_size=train_config.batch_size * train_config.accumulation_steps,
                    micro_batch_size=train_config.batch_size, seed=train_config.seed)
            except ValueError as error:  # name the config key
                raise ValueError(str(error).replace("`subspace`", "`defense.ga_subspace`")) from error
        result = train(model, encodings, labels, run_config, recorder=recorder, progress=progress,
                       aligner=aligner, selector=select, checkpoint=checkpoint)
        if aligner is not None:
            branches = result.alignment["branch"]
            info["alignment"] = {
                "pure_steps": int(sum(b == "pure" for b in branches)),
                "mixed_steps": int(sum(b == "mixed" for b in branches)),
                "first_reference_loss": result.alignment["reference_loss"][0] if branches else None,
                "last_reference_loss": result.alignment["reference_loss"][-1] if branches else None,
                "mean_cosine": float(np.mean(result.alignment["cosine"])) if branches else None,
            }
    if select is not None:
        info["epoch_dev_accuracy"] = [round(s, 4) for s in result.epoch_scores]
        info["best_epoch"] = result.best_epoch
    return result, info


def _width(encodings: Mapping[str, torch.Tensor] | None) -> int | None:
    """Tokens per row of tokenised inputs (their second dimension), or None."""
    if not encodings:
        return None
    ids = encodings.get("input_ids", next(iter(encodings.values())))
    return int(ids.shape[1]) if getattr(ids, "ndim", 0) >= 2 else None
