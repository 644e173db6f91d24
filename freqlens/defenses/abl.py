"""Anti-Backdoor Learning (Li et al., NeurIPS 2021, arXiv 2110.11571), on freqlens' training loop.

ABL rests on the same observation as MuScleLoRA: backdoor examples are
learned faster than clean ones. It trains in three phases (the paper's
Section 4: local gradient ascent, backdoor isolation, backdoor unlearning):

1. isolation: ``isolation_epochs`` of local gradient ascent (LGA), the loss
   ``sign(L - gamma) L``, which holds the training loss near ``gamma`` so that
   only the examples learned fastest (the poisoned ones) fall below it;
2. the ``isolation_rate`` share of training examples with the lowest loss is
   isolated (the paper: 1%); training goes on without them;
3. unlearning: ``unlearn_epochs`` of gradient ascent (negated cross-entropy)
   on the isolated examples, at a small learning rate.

How long the clean phase trains is ``defense.abl.budget``:

- ``"full"`` (the default): the clean phase (2) trains for the run's whole
  ``train.epochs``, so the final model is trained as long as a vanilla run,
  with the isolation and unlearning epochs on top (``isolation_epochs +
  train.epochs + unlearn_epochs`` epochs in all). This keeps the paper's
  shape, short isolation and unlearning phases around a clean phase as long
  as ordinary training (the authors' code, github.com/bboylyg/ABL: 10
  isolation, 60 clean and 5 unlearning epochs on CIFAR-10).
- ``"shared"`` (what earlier freqlens did, and what their stored configs are
  read as): the three phases share ``train.epochs`` (the clean phase gets
  ``train.epochs - isolation_epochs - unlearn_epochs``). At a small budget
  (``train.epochs = 2`` on CPU) that leaves no clean phase at all:
  isolation, then unlearning, which is not the method.

The isolated examples are ABL's detection: ``results.json`` gets their
precision, recall and F1 against the poison flags under
``defense.detection`` (:func:`freqlens.defenses.filtering.detection_metrics`).

The recorder sees all phases as one run (steps continue across phases).
With a training checkpoint (``checkpoint=``, as ``freqlens run`` passes) the
phases completed, their results and the isolated examples are saved with
every epoch's state, so a resumed run skips the phases done and continues
the one it was in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_choice, check_positive_int
from freqlens.defenses.base import Defense, register_defense
from freqlens.models import compute_autocast, eval_mode, model_device, trim_padding
from freqlens.training import TrainConfig, TrainResult, steps_per_epoch, train

BUDGETS = ("full", "shared")  # what `defense.abl.budget` may be (the module docstring says what each means)
#: The budget of runs stored before ``defense.abl.budget`` existed (:meth:`ABL.upgrade_stored`).
EARLIER_BUDGET = "shared"


@dataclass(frozen=True)
class ABLSettings:
    """Anti-Backdoor Learning's settings, the config's ``[defense.abl]`` table (errors name ``defense.abl.<key>``)."""

    KEY: ClassVar[str] = "defense.abl."

    budget: str = "full"  # "full": the clean phase trains train.epochs, the other phases on top; "shared": all phases within train.epochs
    isolation_rate: float = 0.01  # share of training examples isolated as suspected poison, in (0, 1)
    isolation_epochs: int = 1  # epochs of local gradient ascent before isolating
    gamma: float = 0.5  # the loss floor of local gradient ascent
    unlearn_epochs: int = 1  # final epochs of gradient ascent on the isolated examples
    unlearn_lr: float | None = None  # the unlearning lr; None: a tenth of the training lr

    def __post_init__(self) -> None:
        key = self.KEY
        check_choice(self.budget, f"{key}budget", BUDGETS)
        rate = self.isolation_rate
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate < 1):
            raise ValueError(f"Expected `{key}isolation_rate` in (0, 1) but got {rate!r}.")
        check_positive_int(self.isolation_epochs, f"{key}isolation_epochs")
        check_positive_int(self.unlearn_epochs, f"{key}unlearn_epochs", minimum=0)
        if not (isinstance(self.gamma, (int, float)) and not isinstance(self.gamma, bool) and self.gamma >= 0):
            raise ValueError(f"Expected `{key}gamma` >= 0 but got {self.gamma!r}.")
        lr = self.unlearn_lr
        if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
            raise ValueError(f"Expected `{key}unlearn_lr` > 0 or None but got {lr!r}.")


@dataclass
class ABLResult:
    """What ABL did."""

    isolated: np.ndarray  # indices of the isolated training examples
    isolated_poison_share: float | None  # share of them that are poisoned (when known)
    phases: list[TrainResult] = field(default_factory=list)


def lga_loss(gamma: float):
    """Local gradient ascent: ``sign(L - gamma) * L`` on the batch-mean loss."""
    def loss_fn(model, batch, labels):
        loss = model(**batch, labels=labels).loss
        return torch.sign(loss.detach() - gamma) * loss
    return loss_fn


def ascent_loss(model, batch, labels):
    """Negated cross-entropy: unlearn what these examples taught."""
    return -model(**batch, labels=labels).loss


def per_example_losses(model: nn.Module, encodings, labels, *, batch_size: int = 128) -> np.ndarray:
    """Cross-entropy of each example under ``model`` in eval mode."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    device = model_device(model)
    losses = []
    with eval_mode(model), torch.inference_mode(), compute_autocast(model):
        for start in range(0, len(labels), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(labels)))
            batch = trim_padding({k: v[rows] for k, v in encodings.items()})
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            losses.append(nn.functional.cross_entropy(logits, labels[rows].to(device), reduction="none").cpu())
    losses = torch.cat(losses).numpy()
    if not np.isfinite(losses).all():
        raise FloatingPointError(
            f"Expected finite per-example losses (ABL's isolation, a filter's flags) but "
            f"{int((~np.isfinite(losses)).sum())} "
            f"of {len(losses)} are NaN/inf: the model's outputs are not finite (float16 overflow with "
            f"`model.dtype` = 'float16', or a learning rate too high in the phase before).")
    return losses


def train_abl(model: nn.Module, encodings, labels, config: TrainConfig, *, isolation_rate: float = 0.01,
              isolation_epochs: int = 1, gamma: float = 0.5, unlearn_epochs: int = 1,
              unlearn_lr: float | None = None, poison: np.ndarray | None = None, recorder=None,
              progress: bool = True, selector=None, checkpoint=None,
              budget: str = "full") -> tuple[TrainResult, ABLResult]:
    """Train ``model`` with ABL: isolation, training without the isolated examples, unlearning.

    Args:
        model, encodings, labels: as in :func:`freqlens.training.train`
            (encodings (N, L), N labels).
        config: the run's optimisation settings; ``config.epochs`` is the
            clean phase's epochs with ``budget="full"``, all phases' with
            ``"shared"``.
        isolation_rate: share of the N examples isolated, in (0, 1); at
            least one is.
        isolation_epochs, gamma: epochs of local gradient ascent and its
            loss floor.
        unlearn_epochs, unlearn_lr: epochs of gradient ascent on the
            isolated examples and its lr (None: ``config.lr / 10``).
        poison: (N,) booleans, the poisoned examples (for the isolated
            share), or None.
        recorder, progress, selector: as in :func:`freqlens.training.train`
            (the selector scores the clean phase's epochs).
        checkpoint: a :class:`freqlens.checkpoint.Checkpoint` to save each
            epoch's state into and resume from (see
            :func:`freqlens.training.train`).
        budget: ``"full"`` (the clean phase trains ``config.epochs``, the
            other phases on top) or ``"shared"`` (all phases within
            ``config.epochs``); see the module docstring.

    Returns:
        The combined :class:`TrainResult` (steps of all phases) and an
        :class:`ABLResult`.

    Raises:
        ValueError: ``budget`` not one of :data:`BUDGETS`; with
            ``"shared"``, ``config.epochs`` < ``isolation_epochs +
            unlearn_epochs``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    check_choice(budget, "defense.abl.budget", BUDGETS)
    clean_epochs = config.epochs if budget == "full" else config.epochs - isolation_epochs - unlearn_epochs
    if clean_epochs < 0:
        raise ValueError(
            f"Expected `train.epochs` ({config.epochs}) >= `defense.abl.isolation_epochs` ({isolation_epochs}) + "
            f"`defense.abl.unlearn_epochs` ({unlearn_epochs}) with `defense.abl.budget` = 'shared': ABL's phases "
            f"take that many epochs (with 'full' the clean phase trains `train.epochs` and the others come on top)."
        )
    isolated_count = max(1, int(round(isolation_rate * n)))
    kept_count = n - isolated_count
    per_epoch_kept = steps_per_epoch(kept_count, config.batch_size, config.accumulation_steps)
    total = (steps_per_epoch(n, config.batch_size, config.accumulation_steps) * isolation_epochs
             + per_epoch_kept * clean_epochs
             + steps_per_epoch(isolated_count, config.batch_size, config.accumulation_steps) * unlearn_epochs)
    saved = checkpoint.state if checkpoint is not None else None
    done = (saved or {}).get("abl") or {"phases": [], "isolated": None}
    if recorder is not None and not recorder.started:
        if saved is not None:  # the weights of the resumed step, for a snapshot due there
            from freqlens.checkpoint import load_trainable_state

            load_trainable_state(model, saved["train"]["model"])
        recorder.start(model, total_steps=total, step=checkpoint.global_step if saved is not None else 0,
                       epoch=0.0)
    phases = [TrainResult(**result) for result in done["phases"]]  # completed before the checkpoint
    offset = sum(p.steps for p in phases)
    isolated = None if done["isolated"] is None else done["isolated"].numpy()

    def phase(index, enc, lab, epochs, loss_fn, lr, select):
        nonlocal offset
        if index < len(phases):
            return
        if checkpoint is not None:
            checkpoint.extra["abl"] = {"phases": [asdict(p) for p in phases],
                                       "isolated": None if isolated is None else torch.as_tensor(isolated)}
        result = train(model, enc, lab, replace(config, epochs=epochs, lr=lr), recorder=recorder,
                       progress=progress, loss_fn=loss_fn, step_offset=offset,
                       selector=selector if select else None, checkpoint=checkpoint)
        offset += result.steps
        phases.append(result)

    phase(0, encodings, labels, isolation_epochs, lga_loss(gamma), config.lr, False)
    if isolated is None:
        losses = per_example_losses(model, encodings, labels)
        isolated = np.sort(np.argsort(losses, kind="stable")[:isolated_count])
    kept = np.setdiff1d(np.arange(n), isolated)
    rows = torch.as_tensor(kept)
    if clean_epochs:
        phase(1, {k: v[rows] for k, v in encodings.items()}, labels[kept], clean_epochs, None, config.lr, True)
    if unlearn_epochs:
        rows = torch.as_tensor(isolated)
        phase(1 + bool(clean_epochs), {k: v[rows] for k, v in encodings.items()}, labels[isolated], unlearn_epochs,
              ascent_loss, unlearn_lr or config.lr / 10, False)
    clean_phase = phases[1] if clean_epochs else None
    best = None if clean_phase is None or clean_phase.best_epoch is None else isolation_epochs + clean_phase.best_epoch
    combined = TrainResult(
        steps=offset,
        losses=[x for p in phases for x in p.losses],
        seconds=sum(p.seconds for p in phases),
        recording_seconds=sum(p.recording_seconds for p in phases),
        epoch_scores=[x for p in phases for x in p.epoch_scores],
        best_epoch=best,
    )
    share = float(np.mean(poison[isolated])) if poison is not None else None
    return combined, ABLResult(isolated=isolated, isolated_poison_share=share, phases=phases)


class ABL(Defense):
    """Anti-Backdoor Learning as a defense (``defense.name = "abl"``, settings in ``[defense.abl]``).

    ``results.json`` gets, under ``defense``: ``abl`` (how many examples were
    isolated, the share of them that are poisoned, the budget and the steps
    of each phase) and ``detection``, the isolated examples' precision,
    recall and F1 against the poison flags
    (:func:`freqlens.defenses.filtering.detection_metrics`).
    """

    @classmethod
    def upgrade_stored(cls, table: dict) -> dict:
        """Runs stored before ``defense.abl.budget`` existed shared ``train.epochs`` among ABL's phases: an
        ``abl`` table without ``budget`` gets :data:`EARLIER_BUDGET` (so it groups with, and resumes as, a
        run of this version with ``budget = "shared"``)."""
        upgraded = dict(table)
        abl = upgraded.get("abl")
        abl = dict(abl) if isinstance(abl, dict) else {} if abl is None else abl
        if isinstance(abl, dict) and "budget" not in abl:
            abl["budget"] = EARLIER_BUDGET
        upgraded["abl"] = abl
        return upgraded

    def train(self, model, encodings, labels, config, *, reference, selector, poison, recorder, progress,
              checkpoint):
        from freqlens.defenses.filtering import detection_metrics

        settings = self.config.abl
        result, abl = train_abl(
            model, encodings, labels, config, isolation_rate=settings.isolation_rate,
            isolation_epochs=settings.isolation_epochs, gamma=settings.gamma,
            unlearn_epochs=settings.unlearn_epochs, unlearn_lr=settings.unlearn_lr, poison=poison,
            recorder=recorder, progress=progress, selector=selector, checkpoint=checkpoint, budget=settings.budget,
        )
        isolated = np.zeros(len(labels), dtype=bool)
        isolated[abl.isolated] = True
        return result, {"abl": {"isolated": int(len(abl.isolated)), "isolated_poison_share": abl.isolated_poison_share,
                                "budget": settings.budget, "phase_steps": [p.steps for p in abl.phases]},
                        "removed": int(isolated.sum()), "trained_on": int((~isolated).sum()),
                        "detection": detection_metrics(isolated, poison),
                        "flagged_rows": np.flatnonzero(isolated).tolist()}


register_defense("abl", ABL)
