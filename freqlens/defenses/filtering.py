"""Defenses that flag poisoned training examples, drop them, and train the final model on the rest.

A :class:`FilteringDefense` runs in two phases:

1. :meth:`FilteringDefense.flag` looks at the training set (usually after a
   short first phase of training, which it runs itself) and returns the
   examples it suspects, as a boolean mask;
2. the model's weights go back to what they were before phase 1 (with
   ``restart = True``, the default of every built-in filter) and the final
   model trains on the unflagged examples for the run's ``train.epochs``,
   with the recorder on: the trajectory and the spectra are those of the
   final model.

``results.json`` gets, under ``defense``, the number of examples removed and
trained on, which ones were flagged (``flagged_rows``: row indices into the
training set as loaded, in file order after ``data.max_train``), and their
detection precision, recall and F1 against the poison flags
(:func:`detection_metrics`); the benchmark and the comparison report read
them from there. A filter that flags nothing says so (``note``).

With a training checkpoint (``freqlens run``), the flags are saved with every
epoch of the final phase, so a resumed run does not flag again. Under
data-parallel training every process trains the first phase alike and rank
0's flags are used by all (broadcast), so every process trains on the same
examples.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from freqlens import distributed
from freqlens.checkpoint import random_states, set_random_states
from freqlens.defenses.base import Defense
from freqlens.training import TrainConfig, TrainResult, train


@dataclass
class Flags:
    """What :meth:`FilteringDefense.flag` found."""

    flagged: np.ndarray  # (N,) bool: the training examples to drop
    info: dict = field(default_factory=dict)  # what to add to results.json's `defense` (method-specific)


def detection_metrics(flagged: np.ndarray, poison: np.ndarray | None) -> dict:
    """Precision, recall and F1 of ``flagged`` training examples against the poison flags.

    Args:
        flagged: (N,) booleans, the examples a defense flagged.
        poison: (N,) booleans, the examples that are poisoned; None when
            unknown (then only the counts are returned).

    Returns:
        ``{"flagged": int, "poisoned": int | None, "precision", "recall",
        "f1"}`` (floats in [0, 1], None when ``poison`` is None). Precision
        is 0 when nothing is flagged (scikit-learn's ``zero_division=0``).
        On clean data (no poisoned example) there is nothing to recall:
        recall and F1 are None, and precision is 0 when anything was
        flagged (every flag a false alarm), None otherwise.

    Raises:
        ValueError: the two arrays differ in length.
    """
    from sklearn.metrics import precision_recall_fscore_support

    flagged = np.asarray(flagged, dtype=bool)
    out = {"flagged": int(flagged.sum()), "poisoned": None, "precision": None, "recall": None, "f1": None}
    if poison is None:
        return out
    poison = np.asarray(poison, dtype=bool)
    if poison.shape != flagged.shape:
        raise ValueError(f"Expected one poison flag per training example ({flagged.shape[0]}) but got "
                         f"{poison.shape[0]}.")
    out["poisoned"] = int(poison.sum())
    if not poison.any():  # nothing to find: recall is undefined, every flag is a false alarm
        return {**out, "precision": 0.0 if flagged.any() else None}
    p, r, f, _ = precision_recall_fscore_support(poison, flagged, average="binary", zero_division=0)
    return {**out, "precision": float(p), "recall": float(r), "f1": float(f)}


def subset(encodings: Mapping[str, torch.Tensor], rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The rows ``rows`` (indices) of tokenised inputs."""
    index = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    return {k: v[index] for k, v in encodings.items()}


class FilteringDefense(Defense):
    """Base of the defenses that drop suspected poisoned examples, then train on the rest.

    A subclass implements :meth:`flag`. Its options dataclass (if any) may
    carry ``restart: bool`` (train the final model from the weights before
    phase 1; default True); :meth:`train` does the rest.
    """

    restart_default: bool = True

    def flag(self, model: nn.Module, encodings: Mapping[str, torch.Tensor], labels: np.ndarray,
             config: TrainConfig, *, reference, progress: bool) -> Flags:
        """The training examples to drop (subclasses implement it; ``model`` may be trained here).

        Args:
            model: the prepared model, with the weights the run starts from.
            encodings, labels: the (poisoned) training set, (N, L) and (N,).
            config: the run's optimisation settings (lr already this defense's).
            reference: the clean reference set (encodings, labels), or None.
            progress: show progress bars.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement flag().")

    def train(self, model, encodings, labels, config, *, reference, selector, poison, recorder, progress,
              checkpoint):
        labels = np.asarray(labels)
        saved = checkpoint.state if checkpoint is not None else None
        stored = (saved or {}).get("filter")
        if stored is not None:  # resumed in the final phase: the flags of the interrupted run
            flagged = stored["flagged"].numpy().astype(bool)
            info = dict(stored["info"])
        else:
            restart = getattr(self.settings, "restart", self.restart_default)
            initial = copy.deepcopy(model.state_dict()) if restart else None
            rng = random_states()  # Python, numpy, torch and CUDA: the final phase draws as a plain run would
            found = self.flag(model, encodings, labels, config, reference=reference, progress=progress)
            if not isinstance(found, Flags):
                raise TypeError(f"Expected {type(self).__name__}.flag (defense {self.name!r}) to return "
                                f"freqlens.defenses.filtering.Flags but it returned {type(found).__name__}.")
            flagged = np.asarray(found.flagged, dtype=bool)
            if flagged.shape != labels.shape:
                raise ValueError(f"Expected {type(self).__name__}.flag to flag one boolean per training example "
                                 f"({len(labels)}) but it returned shape {flagged.shape}.")
            flagged = _agree(flagged)
            info = dict(found.info)
            if initial is not None:
                model.load_state_dict(initial)
            set_random_states(rng)
        kept = np.flatnonzero(~flagged)
        if len(kept) == 0:
            raise ValueError(f"Expected defense {self.name!r} to keep some training examples but it flagged all "
                             f"{len(labels)}; loosen its `defense.options`.")
        if checkpoint is not None:
            checkpoint.extra["filter"] = {"flagged": torch.as_tensor(flagged), "info": info}
        result: TrainResult = train(model, subset(encodings, kept), labels[kept], config, recorder=recorder,
                                    progress=progress, selector=selector, checkpoint=checkpoint)
        detection = detection_metrics(flagged, poison)
        done = {**info, "removed": int(flagged.sum()), "trained_on": int(len(kept)), "detection": detection,
                "flagged_rows": np.flatnonzero(flagged).tolist()}
        if not flagged.any():
            done["note"] = "flagged no training example: the final model is plain fine-tuning on all of them"
        return result, done


def _agree(flagged: np.ndarray) -> np.ndarray:
    """Rank 0's flags on every process (a no-op in a single process)."""
    if not distributed.is_distributed():
        return flagged
    tensor = torch.as_tensor(flagged.astype(np.uint8))
    distributed.broadcast_([tensor])
    return tensor.numpy().astype(bool)
