"""Detectors with a known answer, registered by import path (``tests.detectors.oracles:TriggerWord``), for the
tests of how ``freqlens run`` applies detectors: they know the AddSent trigger sentence of the tiny runs."""

from __future__ import annotations

import numpy as np

from freqlens.data.attacks import AddSent
from freqlens.detectors import Detector

SENTENCE = AddSent().sentence


class TriggerWord(Detector):
    """Flags exactly the inputs holding the trigger sentence (score 1, else 0)."""

    def score(self, victim, texts):
        return np.array([1.0 if SENTENCE in text else 0.0 for text in texts])


class RemoveTrigger(Detector):
    """Repairs each input by cutting the trigger sentence out."""

    repairs = True

    def repair(self, victim, texts):
        return [" ".join(text.replace(SENTENCE, " ").split()) for text in texts]


class NeedsAWord(Detector):
    """Refuses every model before training, naming a setting, as RAP does for a word its tokenizer lacks."""

    def check(self, model, tokenizer):
        raise ValueError("Expected `detector.oracle.word` to be a word the tokenizer knows but got 'zzz'.")

    def score(self, victim, texts):
        return np.zeros(len(texts))


class Fails(Detector):
    """Fails after training, as RAP does when no clean dev input is predicted as the target."""

    def score(self, victim, texts):
        raise ValueError("Expected some clean dev inputs with a finite fails score but got none.")
