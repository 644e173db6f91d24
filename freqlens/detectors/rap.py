"""RAP: a robustness-aware perturbation token, trained on clean data; a triggered input's target probability
drops less when it is inserted.

Yang et al., "RAP: Robustness-Aware Perturbations for Defending against
Backdoor Attacks on NLP Models" (EMNLP 2021, arXiv 2110.07831), with
OpenBackdoor's port (``openbackdoor/defenders/rap_defender.py``) as the
reference for its defaults.

The idea (paper, Sec. 3): a backdoored model is far more robust on triggered
inputs than on clean ones. RAP inserts a rare word (``trigger``, the
perturbation) before the first word of an input, x -> x+rap, and trains only
that word's token embedding so that on clean inputs of the target class the
target probability drops by an amount in [``drop[0]``, ``drop[1]``]. With
diff = p_t(x+rap) - p_t(x) (p_t: the softmax probability of the target class),
the loss on a batch is the paper's (Sec. 3), written with OpenBackdoor's signs:

    loss = scale * mean(relu(diff + drop[0])) + mean(relu(-drop[1] - diff))

A triggered input, held at the target by the backdoor, drops much less. The
detector's score of an input predicted as the target is minus its drop,
-(p_t(x) - p_t(x+rap)): the paper flags an input whose drop is *smaller* than
the threshold, and freqlens scores "higher = more suspicious". An input not
predicted as the target scores NaN (never flagged): the paper (Sec. 3)
examines only inputs the model assigns to the target class, since the
backdoor only ever produces the target. Calibration then uses the clean dev
inputs predicted as the target (:meth:`Detector.calibrate` skips NaN).

Training (:meth:`Rap.fit`): ``epochs`` passes over the training inputs in
order, in batches of ``batch_size``; each step moves each of the trigger's
embedding rows (``model.get_input_embeddings().weight``, rows = the
tokenizer's ids of the word without special tokens) by ``-lr`` times the
gradient and rescales it to its original norm (OpenBackdoor, the official
code). The model runs in eval mode (no dropout) and every other parameter
keeps its value and its ``requires_grad``; the gradient of the rows is taken
with ``torch.autograd.grad`` through a zero offset added to the embedding
output at the trigger's positions (exactly the rows' gradient for a plain
``nn.Embedding`` lookup; for an embedding module that scales its lookup, the
gradient of its output), so no parameter's ``.grad`` is touched. The trained
rows are written into the embedding matrix only while RAP computes (in
:meth:`fit` and :meth:`score`) and the rows found there are restored
afterwards, bit for bit, also on an exception: after detection the model is
unchanged.

The perturbation word must not be the backdoor's own trigger (inserting the
real trigger gives no drop on any input); it should be a word the tokenizer
knows and the task rarely uses. The paper and OpenBackdoor use ``cf``, which
is also one of BadNets' trigger words (cf, mn, bb, tq: OpenBackdoor's and
the shared SST-2 data's) and the trigger of freqlens' demo task: on BadNets
RAP would insert the attack's own trigger. freqlens' default is ``jj``
instead, a single token of BERT's uncased vocabulary that no SST-2 sentence
holds and no published trigger uses; a tokenizer that does not know it
fails before training, naming ``detector.rap.trigger``.

Where freqlens departs from the references:

- The inputs not predicted as the target score NaN (never flagged).
  OpenBackdoor scores every test input with the threshold from the
  target-predicted clean dev inputs, so it rejects nearly every clean input
  of another class (their target probability has nothing to drop).
- Training uses the clean dev inputs labelled with the target class
  (``target_only = true``, as the official code, lancopku/RAP, which keeps
  only the protected label's clean samples); ``target_only = false`` uses all
  of them, as OpenBackdoor.
- Each step uses the gradient of its own batch. Both references call
  ``loss.backward()`` without zeroing the gradient, so each step moves the
  rows by the sum of all gradients so far (the official code says so, for
  faster convergence); ``accumulate = true`` does the same here, without
  leaving anything in the model's ``.grad``.
- ``info``'s ``rap_loss`` and ``rap_success`` are measured during the last
  epoch, each batch before its step (as OpenBackdoor logs them):
  ``rap_success`` is the share of training inputs whose drop lies in
  [``drop[0]``, ``drop[1]``].

Limits: the loss acts through probabilities, so on a model whose clean
target probability is saturated (0.9999) its gradient vanishes and the
perturbation barely moves; and the row keeps its original norm, so on a
model that ignores words of that norm at the first position no direction
gives the drop. Both happen on tiny models trained to zero loss (freqlens'
tests measured it); ``lr`` is in embedding units, so its default suits
embeddings of norm ~1 (BERT-size models). ``rap_success`` near 0 says the
perturbation did not train.

Cost: :meth:`fit` takes one forward row per training input (the unperturbed
probabilities, computed once; again each step only for inputs that contain
the perturbation word) plus ``epochs`` forward and backward rows per input;
:meth:`score` takes two forward rows per input (x and x+rap).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.detectors.base import Detector, Victim, register_detector

#: Below this ``rap_success`` (the share of training inputs whose drop ended in range) RAP's perturbation
#: has not trained, and ``info["warning"]`` says so (results.json's warnings).
UNTRAINED = 0.1


@dataclass(frozen=True)
class RapSettings:
    """RAP's settings, the config's ``[detector.rap]`` table (errors name ``detector.rap.<key>``)."""

    KEY: ClassVar[str] = "detector.rap."

    trigger: str = "jj"  # the perturbation word inserted first (the paper's "cf" is a BadNets trigger); its embedding rows alone are trained, and restored afterwards
    epochs: int = 5  # passes over the clean dev inputs that train the perturbation
    lr: float = 1e-2  # step size of the perturbation's embedding updates
    drop: tuple[float, float] = (0.1, 0.3)  # the target-probability drop the perturbation is trained to cause on clean inputs, [lower, upper]
    scale: float = 1.0  # weight of the lower-bound term of RAP's loss
    batch_size: int = 32  # inputs per RAP training step
    target_only: bool = True  # train on the clean dev inputs labelled with the target class (the paper's code); false: all of them (OpenBackdoor)
    accumulate: bool = False  # step by the sum of all gradients so far, as both references do (they never zero the gradient)

    def __post_init__(self) -> None:
        key = self.KEY
        if not isinstance(self.trigger, str) or not self.trigger.strip() or len(self.trigger.split()) != 1:
            raise ValueError(f"Expected `{key}trigger` to be one word but got {self.trigger!r}.")
        check_positive_int(self.epochs, f"{key}epochs")
        check_positive_int(self.batch_size, f"{key}batch_size")
        for name in ("lr", "scale"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
                raise ValueError(f"Expected `{key}{name}` > 0 but got {value!r}.")
        drop = self.drop
        if not (isinstance(drop, (list, tuple)) and len(drop) == 2
                and all(isinstance(d, (int, float)) and not isinstance(d, bool) for d in drop)
                and 0 <= drop[0] < drop[1] <= 1):
            raise ValueError(f"Expected `{key}drop` to be [lower, upper] with 0 <= lower < upper <= 1 "
                             f"but got {drop!r}.")
        object.__setattr__(self, "drop", (float(drop[0]), float(drop[1])))
        for name in ("target_only", "accumulate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Expected `{key}{name}` to be true or false but got {getattr(self, name)!r}.")


def rap_loss(diff: torch.Tensor, drop: tuple[float, float], scale: float = 1.0) -> torch.Tensor:
    """RAP's loss (arXiv 2110.07831, Sec. 3) of the (B,) target-probability changes ``diff`` = p_t(x+rap) -
    p_t(x): ``scale * mean(relu(diff + drop[0])) + mean(relu(-drop[1] - diff))``, zero when every drop
    -diff lies in [drop[0], drop[1]]; a scalar tensor."""
    return scale * torch.relu(diff + drop[0]).mean() + torch.relu(-drop[1] - diff).mean()


def insert_perturbation(text: str, word: str) -> str:
    """``text`` with ``word`` inserted before its first word (words re-joined by single spaces)."""
    return " ".join([word, *text.split()])


@contextmanager
def swapped_rows(weight: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor) -> Iterator[None]:
    """Write ``rows`` (shape (k, d)) into rows ``ids`` of the matrix ``weight`` for the block, and put back
    the values found there afterwards, bit for bit (also when the block raises)."""
    saved = weight.data[ids].clone()
    weight.data[ids] = rows.to(device=weight.device, dtype=weight.dtype)
    try:
        yield
    finally:
        weight.data[ids] = saved


class Rap(Detector):
    """RAP (arXiv 2110.07831; OpenBackdoor's ``rap_defender.py``): minus the drop of the target probability
    when a trained perturbation word is inserted, for inputs predicted as the target (NaN otherwise); the
    module docstring gives the method and its departures.

    Use :meth:`calibrate` (trains the perturbation on the clean dev inputs, then sets the threshold from
    those predicted as the target), then :meth:`flag` or :meth:`score`. ``info`` gets ``rap_loss``,
    ``rap_success`` and ``rap_train_inputs``.
    """

    options = RapSettings

    def __init__(self, name: str = "rap", settings: RapSettings | None = None, *, frr: float = 0.01,
                 seed: int = 0) -> None:
        super().__init__(name, settings if settings is not None else RapSettings(), frr=frr, seed=seed)
        self._ids: torch.Tensor | None = None  # the trigger's token ids (unique, sorted)
        self._rows: torch.Tensor | None = None  # their trained embedding rows (k, d), float32 on the CPU

    @property
    def _settings(self) -> RapSettings:
        return self.settings

    @property
    def rows(self) -> torch.Tensor | None:
        """The trained embedding rows of the perturbation word, float32 of shape (k, d) (None before fit)."""
        return self._rows

    def check(self, model: nn.Module, tokenizer) -> None:
        """Fail before training when the perturbation word is unusable (see :meth:`trigger_ids`); ``freqlens
        run`` calls it once the model is loaded.

        Raises:
            ValueError: naming ``detector.rap.trigger``.
        """
        self._trigger_ids(model, tokenizer)

    def trigger_ids(self, victim: Victim) -> list[int]:
        """The tokenizer's ids of the perturbation word, without special tokens, unique in order.

        Raises:
            ValueError: naming ``detector.rap.trigger``: the word gives no token, one of its tokens is the
                tokenizer's unknown token, or an id lies outside the model's embedding matrix.
        """
        return self._trigger_ids(victim.model, victim.tokenizer)

    def _trigger_ids(self, model: nn.Module, tokenizer) -> list[int]:
        word = self._settings.trigger
        ids = list(dict.fromkeys(int(i) for i in tokenizer(word, add_special_tokens=False)["input_ids"]))
        unknown = getattr(tokenizer, "unk_token_id", None)
        if not ids or (unknown is not None and unknown in ids):
            raise ValueError(f"Expected `detector.rap.trigger` to be a word the tokenizer knows but {word!r} "
                             f"tokenises to {ids} (unknown token id {unknown}); choose a word of its vocabulary "
                             f"that is not the backdoor's trigger.")
        size = model.get_input_embeddings().weight.shape[0]
        outside = [i for i in ids if not 0 <= i < size]
        if outside:
            raise ValueError(f"Expected `detector.rap.trigger` {word!r} to tokenise to ids below the model's "
                             f"{size} embedding rows but got {outside}.")
        return ids

    @contextmanager
    def _applied(self, victim: Victim) -> Iterator[None]:
        """The trained rows written into the victim's embedding matrix for the block (restored after)."""
        if self._rows is None or self._ids is None:
            raise RuntimeError(f"Call fit() or calibrate() on detector {self.name!r} before score().")
        weight = victim.model.get_input_embeddings().weight
        with swapped_rows(weight, self._ids.to(weight.device), self._rows):
            yield

    def fit(self, victim: Victim, clean: Sequence[str], labels: np.ndarray) -> None:
        """Train the perturbation word's embedding rows on clean dev inputs with RAP's loss.

        Args:
            victim: the trained model; its embedding matrix is changed only during this call and restored.
            clean: N clean dev texts.
            labels: their (N,) labels (with ``target_only``, those equal to ``victim.target_label`` train).

        Raises:
            ValueError: an unknown ``detector.rap.trigger`` (before any work), labels not one per text, or
                no training input.
        """
        settings = self._settings
        ids = self.trigger_ids(victim)
        texts = [str(t) for t in clean]
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != (len(texts),):
            raise ValueError(f"Expected one label per clean dev text ({len(texts)}) but got shape {labels.shape}.")
        if settings.target_only:
            texts = [t for t, y in zip(texts, labels) if y == victim.target_label]
        if not texts:
            which = f"labelled with the target class {victim.target_label} " if settings.target_only else ""
            raise ValueError(f"Expected clean dev inputs {which}to train RAP's perturbation on but got none "
                             f"(`detector.rap.target_only` = {str(settings.target_only).lower()}).")
        model = victim.model
        weight = model.get_input_embeddings().weight
        index = torch.tensor(ids, dtype=torch.long)
        self._ids = index
        self._rows = weight.detach()[index.to(weight.device)].float().cpu().clone()
        norms = self._rows.norm(dim=1, keepdim=True)
        self.info.update(_train(victim, texts, index, self._rows, norms, settings))
        if self.info["rap_success"] < UNTRAINED:
            self.info["warning"] = (
                f"RAP's perturbation did not train: {self.info['rap_success']:.1%} of its training inputs ended "
                f"with a target-probability drop in [{settings.drop[0]:g}, {settings.drop[1]:g}] (rap_success), so "
                f"its scores say little; raise detector.rap.epochs or detector.rap.lr, or set "
                f"detector.rap.accumulate = true (the references' steps).")

    def score(self, victim: Victim, texts: Sequence[str]) -> np.ndarray:
        """Minus the target-probability drop when the trained perturbation word is inserted.

        Args:
            victim: the trained model (changed only during this call and restored).
            texts: N inputs.

        Returns:
            float64 array of shape (N,): ``p_t(x+rap) - p_t(x)`` for inputs predicted as
            ``victim.target_label`` (higher = smaller drop = more likely triggered), NaN for the others.
            Costs 2N forward rows.

        Raises:
            RuntimeError: :meth:`fit` was not called first.
        """
        texts = [str(t) for t in texts]
        with self._applied(victim):
            if not texts:
                return np.zeros(0, dtype=np.float64)
            word = self._settings.trigger
            probabilities = victim.probabilities(texts + [insert_perturbation(t, word) for t in texts])
        plain, perturbed = probabilities[: len(texts)].astype(np.float64), probabilities[len(texts):]
        target = victim.target_label
        change = perturbed[:, target].astype(np.float64) - plain[:, target]
        return np.where(plain.argmax(axis=1) == target, change, np.nan)


def _train(victim: Victim, texts: list[str], ids: torch.Tensor, rows: torch.Tensor, norms: torch.Tensor,
           settings: RapSettings) -> dict:
    """RAP's training loop; updates ``rows`` (float32, CPU) in place and returns the info entries."""
    from freqlens.models import _logits, compute_autocast, eval_mode, model_device, trim_padding

    model = victim.model
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    device = model_device(model)
    ids_device = ids.to(device)
    target = victim.target_label
    drop, scale, lr = settings.drop, float(settings.scale), float(settings.lr)
    perturbed_texts = [insert_perturbation(t, settings.trigger) for t in texts]
    plain_encoded = victim.encode(texts)
    perturbed_encoded = victim.encode(perturbed_texts)
    # Inputs that hold the perturbation word themselves depend on the rows: recomputed each step, with grad.
    holds_word = torch.isin(plain_encoded["input_ids"], ids).any(dim=1)
    offset = torch.zeros(len(ids), weight.shape[1], device=device, requires_grad=True)

    def add_offset(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        match = (args[0].unsqueeze(-1) == ids_device).to(output.dtype)  # (B, L, k)
        return output + match @ offset.to(output.dtype)

    def target_probability(encoded: dict, rows_: slice) -> torch.Tensor:
        batch = trim_padding({k: v[rows_] for k, v in encoded.items()})
        with compute_autocast(model, unscaled_gradients=True):
            logits = _logits(model(**{k: v.to(device) for k, v in batch.items()}))
        return torch.softmax(logits.float(), dim=-1)[:, target]

    flags = [(p, p.requires_grad) for p in model.parameters()]
    accumulated = torch.zeros_like(rows)
    n, size = len(texts), settings.batch_size
    epoch_loss, in_range = 0.0, 0
    handle = None
    with eval_mode(model), swapped_rows(weight, ids_device, rows):
        try:
            for parameter, _ in flags:
                parameter.requires_grad_(False)
            with torch.no_grad():  # p_t(x) of the inputs without the word does not depend on the rows
                plain = torch.cat([target_probability(plain_encoded, slice(a, a + size)).cpu()
                                   for a in range(0, n, size)])
            handle = embedding.register_forward_hook(add_offset)
            for _epoch in range(settings.epochs):
                epoch_loss, in_range = 0.0, 0
                for start in range(0, n, size):
                    rows_ = slice(start, min(start + size, n))
                    with torch.enable_grad():
                        perturbed = target_probability(perturbed_encoded, rows_)
                        before = plain[rows_].to(device)
                        recompute = holds_word[rows_]
                        if bool(recompute.any()):
                            fresh = target_probability(plain_encoded, rows_)
                            before = torch.where(recompute.to(device), fresh, before)
                        diff = perturbed - before
                        loss = rap_loss(diff, drop, scale)
                        (gradient,) = torch.autograd.grad(loss, offset, allow_unused=True)
                    gradient = torch.zeros_like(rows) if gradient is None else gradient.detach().float().cpu()
                    if settings.accumulate:
                        accumulated += gradient
                        gradient = accumulated
                    rows -= lr * gradient
                    rows *= norms / rows.norm(dim=1, keepdim=True).clamp_min(torch.finfo(rows.dtype).tiny)
                    weight.data[ids_device] = rows.to(device=device, dtype=weight.dtype)
                    decrease = -diff.detach()
                    in_range += int(((decrease >= drop[0]) & (decrease <= drop[1])).sum())
                    epoch_loss += float(loss.detach()) * (rows_.stop - rows_.start)
        finally:
            if handle is not None:
                handle.remove()
            for parameter, flag in flags:
                parameter.requires_grad_(flag)
    return {"rap_loss": epoch_loss / n, "rap_success": in_range / n, "rap_train_inputs": n}


register_detector("rap", Rap)
