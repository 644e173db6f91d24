"""Gradient-aligned defenses: ``ga``, ``ga+lora``, ``muscle`` and ``muscle-paper``.

Each trains along the gradient of a clean reference set
(:class:`~freqlens.defenses.ga.GradientAligner`, settings in
``[defense.ga]``): ``ga`` with full fine-tuning, ``ga+lora`` with LoRA,
``muscle`` with LoRA and MSLR (MuScleLoRA in freqlens' form), and
``muscle-paper`` as published (METHOD.md section 3; the differences are
:data:`~freqlens.defenses.registry.MUSCLE_CHANGES`).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from freqlens.defenses.base import Defense, register_defense
from freqlens.defenses.ga import GradientAligner
from freqlens.defenses.low_rank import MSLR, LoRA
from freqlens.training import train


class GradientAlignment(Defense):
    """Full fine-tuning with gradient alignment on a clean reference set (``defense.ga``).

    One reference batch per optimisation step, as large as its training
    batch (``train.batch_size`` x ``train.accumulation_steps``, unless
    ``defense.ga.batch_size``); ``results.json`` gets the steps of each
    branch, the first and last reference loss and the mean cosine.
    """

    needs_reference = True

    def train(self, model, encodings, labels, config, *, reference, selector, poison, recorder, progress,
              checkpoint):
        ref_encodings, ref_labels = reference
        aligner = GradientAligner(model, ref_encodings, ref_labels, self.config.ga,
                                  batch_size=config.batch_size * config.accumulation_steps,
                                  micro_batch_size=config.batch_size, seed=config.seed)
        result = train(model, encodings, labels, config, recorder=recorder, progress=progress, aligner=aligner,
                       selector=selector, checkpoint=checkpoint)
        branches = result.alignment["branch"]
        return result, {"alignment": {
            "pure_steps": int(sum(b == "pure" for b in branches)),
            "mixed_steps": int(sum(b == "mixed" for b in branches)),
            "first_reference_loss": result.alignment["reference_loss"][0] if branches else None,
            "last_reference_loss": result.alignment["reference_loss"][-1] if branches else None,
            "mean_cosine": float(np.mean(result.alignment["cosine"])) if branches else None,
        }}


class AlignedLoRA(GradientAlignment, LoRA):
    """LoRA with gradient alignment."""


class MuScleLoRA(GradientAlignment, MSLR):
    """LoRA + MSLR + gradient alignment, freqlens' form (MSLR's R starts at zero, 256 reference examples,
    the adapter lr on small models)."""


class MuScleLoRAPaper(MuScleLoRA):
    """LoRA + MSLR + gradient alignment with the published settings: Kaiming-uniform MSLR, 96 reference
    examples, ``train.lr``."""

    mslr_init = "paper"
    default_reference_size = 96

    def default_lr(self, model: nn.Module, train_lr: float) -> float:
        return float(train_lr)


register_defense("ga", GradientAlignment)
register_defense("ga+lora", AlignedLoRA)
register_defense("muscle", MuScleLoRA)
register_defense("muscle-paper", MuScleLoRAPaper)
