"""An inference-time detector as an object, the registry of detectors by name, and how one is measured.

A detector receives a trained model (a :class:`Victim`) and, at test time,
either flags triggered inputs (STRIP, RAP) or repairs inputs by removing
words (ONION). It is a subclass of :class:`Detector` registered under a name
with :func:`register_detector`, as the defenses are
(:func:`freqlens.defenses.register_defense`). What a detector says about
itself:

- ``repairs``: True for a detector that rewrites inputs (:meth:`Detector.repair`)
  instead of flagging them (:meth:`Detector.score`);
- ``options``: a frozen dataclass of its own settings, read from the
  config's ``[detector.<name>]`` table for the built-ins and
  ``[detector.options.<name>]`` for one registered outside freqlens; None
  when it takes none.

A flagging detector scores inputs (higher = more suspicious) and is
calibrated on clean dev inputs: the threshold lets ``detector.frr`` of them
through as rejected (OpenBackdoor's rule, ``openbackdoor/defenders``: the
clean score at sorted index ``int(n * frr)``).

:func:`evaluate_detector` measures a detector the way OpenBackdoor does
(``Attacker.eval``): a rejected input gets no class, so a rejected clean
input counts as misclassified and a rejected triggered input as a failed
attack. Its metrics are the false rejection rate (FRR, on clean test
inputs), the false acceptance rate (FAR, on triggered test inputs), and
CACC, ASR, false-trigger rate and net backdoor effect after filtering or
repair.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from freqlens._registry import Registry


@dataclass
class Victim:
    """A trained classifier and its tokenizer, as a detector sees it: texts in, probabilities out.

    Attributes:
        model: a Hugging Face sequence classifier (or a module with its call
            signature returning logits or an object with ``.logits``).
        tokenizer: its Hugging Face tokenizer.
        max_length: tokens per input (``model.max_length``); longer inputs are truncated.
        batch_size: the most rows per forward pass.
        target_label: the class the backdoor maps to (a detector may use it:
            RAP does, STRIP does not).
    """

    model: nn.Module
    tokenizer: Any
    max_length: int
    batch_size: int = 64
    target_label: int = 1

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """``texts`` tokenised as :func:`freqlens.data.splits.encode` does (padded to ``max_length``)."""
        encoded = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        return dict(encoded)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """Softmax probabilities, float32 of shape (N, C), in eval mode (:func:`freqlens.models.predict_proba`)."""
        from freqlens.models import predict_proba

        texts = list(texts)
        if not texts:
            classes = getattr(getattr(self.model, "config", None), "num_labels", 2)
            return np.zeros((0, classes), dtype=np.float32)
        return predict_proba(self.model, self.encode(texts), batch_size=self.batch_size)


class Detector:
    """Base of every inference-time detector.

    A flagging detector overrides :meth:`score` (and, when it learns
    something from clean data first, :meth:`fit`); :meth:`calibrate` sets the
    threshold and :meth:`flag` applies it. A repairing detector sets
    ``repairs = True`` and overrides :meth:`repair`.

    Args:
        name: the name it is registered (and configured) under.
        settings: its own settings (an instance of :attr:`options`), or None.
        frr: the false rejection rate on clean dev inputs the threshold is set
            for (``detector.frr``), in [0, 1).
        seed: seeds its random perturbations (``train.seed`` in a run).
    """

    repairs: ClassVar[bool] = False  # True: rewrites inputs (repair) instead of flagging them (score)
    options: ClassVar[type | None] = None  # the dataclass of its settings ([detector.<name>]), or None

    def __init__(self, name: str, settings: Any = None, *, frr: float = 0.01, seed: int = 0) -> None:
        self.name = name
        self.settings = settings
        self.frr = float(frr)
        self.seed = int(seed)
        self.threshold: float | None = None  # set by calibrate()
        self.info: dict = {}  # what the detector adds to results.json (e.g. RAP's training loss)

    def check(self, model: nn.Module, tokenizer: Any) -> None:
        """Fail before any training on what this detector will need from ``model`` and ``tokenizer`` (a
        word the tokenizer must know, a language model that must load), naming the setting's key;
        ``freqlens run`` calls it once the model is loaded. The base needs nothing."""

    # ---------------------------------------------------------------- flagging detectors
    def fit(self, victim: Victim, clean: Sequence[str], labels: np.ndarray) -> None:
        """Learn what the detector needs from clean dev inputs ``clean`` (and their (N,) ``labels``) before
        scoring; the base learns nothing."""

    def score(self, victim: Victim, texts: Sequence[str]) -> np.ndarray:
        """Suspicion of each input, float array of shape (N,): higher = more likely triggered; NaN = never
        flagged (e.g. RAP's inputs not predicted as the target)."""
        raise NotImplementedError(f"{type(self).__name__} (detector {self.name!r}) must implement score() "
                                  f"or set repairs = True and implement repair().")

    def calibrate(self, victim: Victim, clean: Sequence[str], labels: np.ndarray) -> None:
        """:meth:`fit`, then the threshold from the clean dev scores: the value at sorted (descending) index
        ``int(n * frr)`` of the n that are not NaN, so that ``int(n * frr)`` of them (ties aside) lie above it.

        Raises:
            ValueError: every clean dev input scores NaN (nothing to set a threshold from).
        """
        self.fit(victim, clean, labels)
        scores = np.asarray(self.score(victim, clean), dtype=np.float64)
        scored = np.sort(scores[~np.isnan(scores)])[::-1]
        if scored.size == 0:
            raise ValueError(f"Expected some clean dev inputs with a {self.name} score (not NaN) to set the "
                             f"threshold from (`detector.frr`) but got none of {len(scores)}.")
        self.threshold = float(scored[min(int(scored.size * self.frr), scored.size - 1)])
        self.info.update({"threshold": self.threshold, "calibration_inputs": int(scored.size)})

    def flag(self, victim: Victim, texts: Sequence[str]) -> np.ndarray:
        """Which inputs the detector rejects as triggered: bool array of shape (N,) (score above the threshold;
        NaN never, +inf always unless the threshold is +inf).

        Raises:
            RuntimeError: :meth:`calibrate` was not called first.
        """
        if self.threshold is None:
            raise RuntimeError(f"Call calibrate() on detector {self.name!r} before flag().")
        scores = np.asarray(self.score(victim, texts), dtype=np.float64)
        return ~np.isnan(scores) & (scores > self.threshold)

    # ---------------------------------------------------------------- repairing detectors
    def repair(self, victim: Victim, texts: Sequence[str]) -> list[str]:
        """The inputs with the words the detector removes removed (a repairing detector's job)."""
        raise NotImplementedError(f"{type(self).__name__} (detector {self.name!r}) sets repairs = True but does "
                                  f"not implement repair().")


# -------------------------------------------------------------------- measuring
def evaluate_detector(detector: Detector, victim: Victim, dataset) -> dict[str, Any]:
    """Calibrate ``detector`` on the clean dev split and measure it on the test splits, as OpenBackdoor does.

    Args:
        detector: a built detector.
        victim: the trained model.
        dataset: a :class:`~freqlens.data.splits.PoisonedDataset`: ``dev_clean``
            calibrates, ``test_clean``, ``test_poison`` (triggered, source not
            the target) and ``test_control`` (the same sources untriggered, where
            there is one; else the non-target clean test inputs) measure.

    Returns:
        A dict for ``results.json``: ``name``, ``repairs``, ``frr_target``,
        ``frr`` (share of clean test inputs rejected), ``far`` (share of
        triggered test inputs accepted; both None for a repairing detector),
        ``cacc`` (clean test inputs accepted and classified correctly),
        ``asr`` (triggered inputs accepted and classified as the target),
        ``false_trigger_rate`` (control inputs accepted and classified as the
        target), ``net_backdoor_effect`` (ASR minus the false-trigger rate),
        ``seconds`` and what the detector adds (its threshold; a repairing
        detector's mean words removed per clean and per triggered input).
    """
    began = time.perf_counter()
    target = victim.target_label
    control = dataset.test_control if dataset.test_control is not None and len(dataset.test_control) else None
    splits = {"clean": dataset.test_clean, "poison": dataset.test_poison}
    splits["control"] = control if control is not None else dataset.test_clean.subset(
        np.flatnonzero(dataset.test_clean.labels != target))
    accepted: dict[str, np.ndarray] = {}
    predicted: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}
    detector.info.clear()
    if detector.repairs:
        for key, split in splits.items():
            repaired = list(detector.repair(victim, split.texts))
            if len(repaired) != len(split.texts):
                raise ValueError(f"Expected {type(detector).__name__}.repair (detector {detector.name!r}) to return "
                                 f"one text per input ({len(split.texts)}) but it returned {len(repaired)}.")
            if key in ("clean", "poison"):
                removed = [len(a.split()) - len(b.split()) for a, b in zip(split.texts, repaired)]
                extra[f"words_removed_{'clean' if key == 'clean' else 'triggered'}"] = (
                    round(float(np.mean(removed)), 4) if removed else None)
            accepted[key] = np.ones(len(repaired), dtype=bool)
            predicted[key] = _classes(victim, repaired)
    else:
        detector.calibrate(victim, dataset.dev_clean.texts, dataset.dev_clean.labels)
        for key, split in splits.items():
            flags = np.asarray(detector.flag(victim, split.texts), dtype=bool)
            if flags.shape != (len(split.texts),):
                raise ValueError(f"Expected {type(detector).__name__}.flag (detector {detector.name!r}) to return "
                                 f"{len(split.texts)} flags but it returned shape {flags.shape}.")
            accepted[key] = ~flags
            predicted[key] = _classes(victim, split.texts)
    correct = predicted["clean"] == dataset.test_clean.labels
    results: dict[str, Any] = {
        "name": detector.name, "repairs": bool(detector.repairs),
        "frr_target": None if detector.repairs else detector.frr,
        "frr": None if detector.repairs else _share(~accepted["clean"]),
        "far": None if detector.repairs else _share(accepted["poison"]),
        "cacc": _share(accepted["clean"] & correct),
        "asr": _share(accepted["poison"] & (predicted["poison"] == target)),
        "false_trigger_rate": _share(accepted["control"] & (predicted["control"] == target)),
    }
    results["net_backdoor_effect"] = (None if results["asr"] is None or results["false_trigger_rate"] is None
                                      else results["asr"] - results["false_trigger_rate"])
    results.update(extra)
    results.update({k: v for k, v in detector.info.items() if k not in results})
    results["seconds"] = round(time.perf_counter() - began, 3)
    return results


def _classes(victim: Victim, texts: Sequence[str]) -> np.ndarray:
    probabilities = victim.probabilities(texts)
    return probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)


def _share(flags: np.ndarray) -> float | None:
    return float(np.mean(flags)) if flags.size else None


# -------------------------------------------------------------------- the registry
_REGISTRY = Registry("detector", Detector, "freqlens.detectors.Detector")


def register_detector(name: str, cls: type[Detector], *, replace: bool = False) -> type[Detector]:
    """Make ``cls`` the detector called ``name`` (``detector.name = name``); returns ``cls``.

    Raises:
        TypeError: ``cls`` is not a subclass of :class:`Detector`, or its
            ``options`` is neither None nor a dataclass.
        ValueError: ``name`` is empty or not a string, or already registered
            and ``replace`` is False.
    """
    return _REGISTRY.register(name, cls, replace=replace)


def unregister_detector(name: str) -> None:
    """Forget the detector called ``name``.

    Raises:
        KeyError: no detector is registered under ``name``.
    """
    _REGISTRY.unregister(name)


def detector_class(name: str, argument: str = "detector.name") -> type[Detector]:
    """The class registered as ``name``; a name written ``module:Class`` imports and registers that class
    (as :func:`freqlens.defenses.base.defense_class` does).

    Raises:
        ValueError: no such detector, naming ``argument`` and the registered names.
    """
    return _REGISTRY.lookup(name, argument)


#: The registered detector names, in registration order: a live view (registering one adds it).
DETECTORS = _REGISTRY.names


__all__ = ["DETECTORS", "Detector", "Victim", "detector_class", "evaluate_detector", "register_detector",
           "unregister_detector"]
