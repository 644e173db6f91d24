"""Full fine-tuning defenses: ``vanilla`` (no defense) and ``reference-only`` (the clean reference set alone)."""

from __future__ import annotations

import numpy as np
import torch

from freqlens.defenses.base import Defense, register_defense
from freqlens.training import train


class Vanilla(Defense):
    """Full fine-tuning, no defense: the baseline every defense is compared with."""

    defended = False


class ReferenceOnly(Defense):
    """Full fine-tuning on the clean reference set alone, for as many steps as the poisoned set would take.

    The control for gradient alignment: what the reference set teaches
    without the training data (the reference rows are cycled to the training
    set's length each epoch).
    """

    needs_reference = True

    def train(self, model, encodings, labels, config, *, reference, selector, poison, recorder, progress,
              checkpoint):
        ref_encodings, ref_labels = reference
        rows = torch.arange(len(labels)) % len(ref_labels)  # as many examples per epoch as the poisoned set
        result = train(model, {k: v[rows] for k, v in ref_encodings.items()}, np.asarray(ref_labels)[rows.numpy()],
                       config, recorder=recorder, progress=progress, selector=selector, checkpoint=checkpoint)
        return result, {}


register_defense("vanilla", Vanilla)
register_defense("reference-only", ReferenceOnly)
