"""Probe sets: fixed examples on which a model's outputs are recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

ROLES = ("clean", "backdoor", "control")


@dataclass
class ProbeSet:
    """A fixed set of examples whose outputs are recorded during training.

    Attributes:
        name: the set's name (``"clean"``, ``"backdoor"``, ...), used as a key
            on disk.
        encodings: model inputs, each a tensor with N rows, padded to one
            length (``input_ids``, ``attention_mask``, ...).
        labels: the target label of each example, shape (N,). For a backdoor
            set: the attack's target label; for a control set: the true label.
        texts: the examples' texts, if known.
        poison: whether each example carries the trigger, shape (N,).
        role: ``"clean"`` (clean dev examples), ``"backdoor"`` (triggered
            examples labelled with the target), ``"control"`` (the triggered
            sentences' clean counterparts with their true labels: separates
            learning the trigger from a shift of the class prior), or None.
    """

    name: str
    encodings: dict[str, torch.Tensor]
    labels: torch.Tensor
    texts: list[str] | None = None
    poison: np.ndarray | None = None
    role: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name.startswith("__"):
            raise ValueError(
                f"Expected probe set `name` to be an identifier not starting with '__' but got {self.name!r}."
            )
        if self.role is None and self.name in ROLES:
            self.role = self.name
        if self.role is not None and self.role not in ROLES:
            raise ValueError(f"Expected probe set `role` to be one of {ROLES} or None but got {self.role!r}.")
        if not isinstance(self.encodings, Mapping) or not self.encodings:
            raise ValueError(f"Expected `encodings` of probe set {self.name!r} to be a non-empty mapping of tensors.")
        self.encodings = {k: torch.as_tensor(v) for k, v in self.encodings.items()}
        self.labels = torch.as_tensor(self.labels, dtype=torch.long).reshape(-1)
        n = len(self.labels)
        if n == 0:
            raise ValueError(f"Expected probe set {self.name!r} to hold at least one example but it is empty.")
        for key, value in self.encodings.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise ValueError(
                    f"Expected `encodings[{key!r}]` of probe set {self.name!r} to have {n} rows "
                    f"(one per label) but got shape {tuple(value.shape)}."
                )
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"Expected {n} `texts` for probe set {self.name!r} but got {len(self.texts)}.")
        self.poison = np.zeros(n, bool) if self.poison is None else np.asarray(self.poison, bool)
        if self.poison.shape != (n,):
            raise ValueError(f"Expected `poison` of shape ({n},) for probe set {self.name!r} but got {self.poison.shape}.")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_texts(
        cls,
        name: str,
        texts: Sequence[str],
        labels: Sequence[int],
        tokenizer,
        *,
        max_length: int = 128,
        poison: Sequence[bool] | None = None,
        role: str | None = None,
    ) -> ProbeSet:
        """Tokenise ``texts`` with padding to ``max_length`` (one length for all)."""
        texts = list(texts)
        if not texts:
            raise ValueError(f"Expected probe set {name!r} to hold at least one text but got none.")
        encodings = tokenizer(
            texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
        )
        return cls(name, dict(encodings), torch.as_tensor(list(labels)), texts, poison, role)
