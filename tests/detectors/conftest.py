"""Shared fixtures of the detector tests: small BERTs trained to be backdoored on the demo's trigger ``cf``."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pytest
import torch

from freqlens.data.splits import PoisonedDataset, Split, encode
from freqlens.detectors import Victim

MAX_LENGTH = 16  # tokens per input: at most 6 filler + 2 sentiment + 2 negation words, 2 cf, CLS, SEP (+ RAP's word)


class Backdoored(NamedTuple):
    """A trained, backdoored victim and its task; ``cacc`` and ``asr`` as measured on the test splits."""

    victim: Victim
    dataset: PoisonedDataset
    cacc: float
    asr: float


def _backdoored(task: dict, *, flip: float, epochs: int, seed: int) -> Backdoored:
    """The demo task shrunk by ``task`` (TaskConfig fields), ``flip`` of its clean training labels flipped,
    and a 2-layer BERT (hidden 32) trained on it for ``epochs`` (batch 32, lr 3e-3), seeded, on one thread.
    Asserts CACC >= 0.8 and ASR >= 0.9 on the test splits, so that a fixture that did not learn the task or
    the backdoor fails here instead of passing a detector test."""
    from freqlens.demo.model import make_model, make_tokenizer
    from freqlens.demo.task import TaskConfig, make_task
    from freqlens.training import TrainConfig, train

    dataset = make_task(TaskConfig(num_train=600, num_dev=120, num_test=120, min_words=3, max_words=6, seed=seed,
                                   **task))
    if flip:
        split = dataset.train
        flipped = ~split.poison & (np.random.default_rng(seed + 100).random(len(split)) < flip)
        dataset = dataclasses.replace(dataset, train=Split(
            split.texts, np.where(flipped, 1 - split.labels, split.labels), split.poison, split.true_labels))
    tokenizer = make_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            model = make_model(len(tokenizer), hidden_size=32, heads=2, layers=2, max_length=MAX_LENGTH,
                               seed=seed)
            train(model, encode(tokenizer, dataset.train, MAX_LENGTH), torch.as_tensor(dataset.train.labels),
                  TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed), progress=False)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    victim = Victim(model, tokenizer, MAX_LENGTH, batch_size=64, target_label=dataset.target_label)
    cacc = float(np.mean(victim.probabilities(dataset.test_clean.texts).argmax(1) == dataset.test_clean.labels))
    asr = float(np.mean(victim.probabilities(dataset.test_poison.texts).argmax(1) == dataset.target_label))
    assert cacc >= 0.8, f"the backdoored fixture did not learn the task: CACC {cacc:.3f} < 0.8"
    assert asr >= 0.9, f"the backdoored fixture did not learn the backdoor: ASR {asr:.3f} < 0.9"
    return Backdoored(victim, dataset, cacc, asr)


@pytest.fixture(scope="session")
def backdoored() -> Backdoored:
    """The demo task (word-level sentences, BadNets trigger ``cf`` inserted once, target label 1, 10%
    dirty-label poison) shrunk to 600 training sentences of 3-6 filler words and one sentiment word (negated
    10% of the time), and a 2-layer BERT (hidden 32) trained on it for 8 epochs (about 1.5 s). Measured: CACC
    0.933, ASR 1.0. The model is left in eval mode.

    A model this small trained to near-zero loss is sure of everything: STRIP finds no entropy gap on it
    (FAR ~1) and RAP's gradient vanishes; they are tested on :func:`backdoored_unsure`.
    """
    return _backdoored(dict(max_phrases=1, negation_rate=0.1), flip=0.0, epochs=8, seed=0)


@pytest.fixture(scope="session")
def backdoored_unsure() -> Backdoored:
    """A backdoored model that is unsure of clean inputs and sure of triggered ones, for STRIP and RAP.

    The demo task shrunk to 600 training sentences of 3-6 filler words and one or two sentiment words (each
    negated 20% of the time), the trigger ``cf`` inserted twice, 10% of the clean training labels flipped,
    and a 2-layer BERT (hidden 32) trained on it for 10 epochs (about 2 s). Measured: CACC 0.800, ASR 1.0.

    Why this shape: STRIP and RAP read how sure the model is, and a tiny model trained to zero loss is sure
    of everything (prediction entropy ~0 on clean and triggered inputs alike, a target probability of
    0.9999 that no single inserted word moves, so RAP's gradient vanishes). The flipped clean labels keep
    its clean predictions near 0.85-0.95 while the (noise-free) backdoor stays at ~1; two sentiment words
    with negations make it compose words, so an inserted word can move its prediction; two triggers let a
    STRIP copy keep one. Detection quality on such a tiny model still depends on the seed: this one was
    chosen among four, measured, so that both STRIP and RAP have a signal to find.
    """
    return _backdoored(dict(max_phrases=2, negation_rate=0.2, insertions=2), flip=0.1, epochs=10, seed=1)
