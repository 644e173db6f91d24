"""``early-loss``: drop the training examples a short first phase learned first, train on the rest.

freqlens' own defense, from its own measurement: the backdoor mapping is
learned before the clean one (the Frequency Principle reading of Wu et al.,
ACL 2024, and freqlens' learning-speed spectra; ABL, Li et al. NeurIPS 2021,
rests on the same observation). After a short first phase of plain
fine-tuning, the poisoned training examples are fitted while most clean ones
are not yet, so their loss is among the lowest.

The method, in two phases (:class:`~freqlens.defenses.filtering.FilteringDefense`):

1. fine-tune for ``first_epochs`` epochs on at most ``first_size`` training
   examples (a random subset drawn with the run's seed; all of them where the
   set is no larger or ``first_size = "all"``; plain cross-entropy, the run's learning rate with its own
   linear decay), then compute every training example's cross-entropy in eval
   mode (one forward pass over the whole training set, the examples the first
   phase did not see included);
2. flag the ``rate`` share of training examples with the lowest loss, go back
   to the initial weights and fine-tune for the run's ``train.epochs`` on the
   rest (the recorded phase).

Cost: ``first_epochs`` epochs over at most ``first_size`` examples plus one
forward pass over the training set; no clean data. The choices (eval-mode
loss after one epoch, not the losses of the training passes or after two
epochs; the rate; a first phase of fixed size, so that the clean mapping is
not yet learned when the losses are taken, whatever the size of the training
set) were measured with ``benchmarks/filter_signals.py``
(``benchmarks/results/filter_signals.md``) and are documented in
docs/defenses.md ("early-loss").
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np
import torch

from freqlens._checks import check_positive_int
from freqlens.defenses.abl import per_example_losses
from freqlens.defenses.base import register_defense
from freqlens.defenses.filtering import FilteringDefense, Flags, subset
from freqlens.training import train


@dataclass(frozen=True)
class EarlyLossOptions:
    """``early-loss``'s settings, the config's ``[defense.options]`` (errors name ``defense.options.<key>``)."""

    KEY: ClassVar[str] = "defense.options."

    rate: float = 0.2  # share of training examples flagged (lowest loss after the first phase), in (0, 1)
    first_epochs: int = 1  # epochs of plain fine-tuning before the losses are taken
    # A fixed size: the backdoor is learned from a few hundred poisoned examples, while a longer first
    # phase lets the clean mapping catch up (SST-2's 6,920 examples in one epoch: recall 0.76, not 0.94-1.00).
    first_size: int | str = 1024  # the first phase trains on at most this many training examples (a seeded random subset); "all": every one
    restart: bool = True  # train the final model from the initial weights (false: go on from the first phase)

    def __post_init__(self) -> None:
        rate = self.rate
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate < 1):
            raise ValueError(f"Expected `{self.KEY}rate` in (0, 1) (the share of training examples flagged) but "
                             f"got {rate!r}.")
        check_positive_int(self.first_epochs, f"{self.KEY}first_epochs")
        size = self.first_size
        if size != "all" and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f'Expected `{self.KEY}first_size` to be an integer >= 1 or "all" (every training '
                             f"example) but got {size!r}.")
        if not isinstance(self.restart, bool):
            raise ValueError(f"Expected `{self.KEY}restart` to be true or false but got {self.restart!r}.")


#: ``first_size`` of runs stored before it existed: their first phase trained on every example
#: (:meth:`EarlyLoss.upgrade_stored`).
EARLIER_FIRST_SIZE = "all"


def first_phase_rows(n: int, size: int | str, seed: int) -> np.ndarray:
    """(min(n, size),) int: the sorted rows of the training set the first phase trains on; every row
    (in order) where ``size`` is ``"all"`` or ``n <= size``, else ``size`` rows drawn without
    replacement by ``numpy.random.default_rng(seed).choice``."""
    if size == "all" or n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def lowest(scores: np.ndarray, rate: float) -> np.ndarray:
    """(N,) bool: the ``round(rate * N)`` (at least 1) examples of lowest score (ties: the earlier row)."""
    scores = np.asarray(scores, dtype=float)
    count = max(1, int(round(rate * len(scores))))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(scores, kind="stable")[:count]] = True
    return flagged


class EarlyLoss(FilteringDefense):
    """Drop the ``rate`` share of training examples with the lowest loss after a first phase of
    ``first_epochs`` epochs on at most ``first_size`` of them (module docs).

    ``results.json`` gets, besides the detection metrics of the base,
    ``first_phase_examples`` (how many the first phase trained on),
    ``loss_threshold`` (the highest loss flagged) and the median losses of
    the flagged and the kept examples.
    """

    options = EarlyLossOptions

    @classmethod
    def upgrade_stored(cls, table: dict) -> dict:
        """Runs stored before ``options.first_size`` existed trained the first phase on every example: an
        ``options`` table without it gets :data:`EARLIER_FIRST_SIZE` (``"all"``), not today's 1024."""
        upgraded = dict(table)
        options = {} if upgraded.get("options") is None else upgraded["options"]
        takes = cls.options is not None and "first_size" in {f.name for f in fields(cls.options)}
        if takes and isinstance(options, dict) and "first_size" not in options:
            upgraded["options"] = {**options, "first_size": EARLIER_FIRST_SIZE}
        return upgraded

    def flag(self, model, encodings, labels, config, *, reference, progress):
        settings = self.settings or EarlyLossOptions()
        rows = first_phase_rows(len(labels), settings.first_size, config.seed)
        first = ((encodings, labels) if len(rows) == len(labels)
                 else (subset(encodings, rows), torch.as_tensor(labels)[torch.as_tensor(rows)]))
        train(model, *first, replace(config, epochs=settings.first_epochs), progress=progress)
        losses = per_example_losses(model, encodings, labels, batch_size=max(config.batch_size, 64))
        flagged = lowest(losses, settings.rate)
        return Flags(flagged, {
            "first_phase_examples": int(len(rows)),
            "loss_threshold": round(float(losses[flagged].max()), 6),
            "median_loss_flagged": round(float(np.median(losses[flagged])), 6),
            "median_loss_kept": round(float(np.median(losses[~flagged])), 6) if (~flagged).any() else None,
        })


register_defense("early-loss", EarlyLoss)
