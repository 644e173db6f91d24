"""The in-memory form of a poisoned experiment: labelled texts in named splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    """Texts with a label and a poison flag each.

    Attributes:
        texts: the examples.
        labels: the label each example is trained or evaluated against
            (for a poisoned example: the attack's target label).
        poison: whether each example carries the trigger.
        true_labels: for poisoned examples, the label before poisoning
            (equal to ``labels`` for clean ones).
    """

    texts: list[str]
    labels: np.ndarray
    poison: np.ndarray | None = None
    true_labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.texts)
        if self.labels.shape != (n,):
            raise ValueError(f"Expected {n} `labels`, one per text, but got {self.labels.shape[0]}.")
        self.poison = np.zeros(n, bool) if self.poison is None else np.asarray(self.poison, bool)
        self.true_labels = self.labels.copy() if self.true_labels is None else np.asarray(self.true_labels, np.int64)
        if self.poison.shape != (n,) or self.true_labels.shape != (n,):
            raise ValueError(f"Expected `poison` and `true_labels` of shape ({n},).")

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class PoisonedDataset:
    """A poisoned training set with its clean and triggered evaluation splits.

    Attributes:
        train: the (poisoned) training split.
        dev_clean, test_clean: clean examples.
        dev_poison, test_poison: triggered examples whose true label is not
            the target, labelled with the target (ASR = accuracy on them).
        dev_control, test_control: the same sentences as the poison splits
            without the trigger, with their true labels, where available.
        target_label: the attack's target class.
        num_classes: the number of classes.
        name: a short description.
    """

    train: Split
    dev_clean: Split
    dev_poison: Split
    test_clean: Split
    test_poison: Split
    target_label: int = 1
    num_classes: int = 2
    dev_control: Split | None = None
    test_control: Split | None = None
    name: str = ""
    info: dict = field(default_factory=dict)
