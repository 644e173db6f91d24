"""Probe sets: fixed examples on which a model's outputs are recorded, and the table of their roles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class ProbeRole:
    """What a probe set is for: one row of :data:`PROBE_ROLES`.

    Attributes:
        name: the role (``"clean"``, ``"backdoor"``, ...); also the probe set's
            name when a run builds it from a dataset.
        split: the attribute of a :class:`~freqlens.data.splits.PoisonedDataset`
            the set's examples are taken from (``"dev_clean"``, ...); a dataset
            without that split (or with it empty) records no such set.
        colour: the colour of the role's lines and titles in every figure (hex).
        joint: whether the set joins the analysis' joint view (one kernel over
            all joint sets; the eigenmode spectra and the verdicts use it). The
            view compares the backdoor with the clean mapping, so it exists
            only where both of those sets are recorded and marked joint.
        optional: whether the set is left out first when the recording budget
            cannot pay for every set (optional roles come last in the table).
        description: one sentence on what the set holds.

    Raises:
        ValueError: a name, split, colour or description that is not one, named.
        TypeError: ``joint`` or ``optional`` not a bool, named.
    """

    name: str
    split: str
    colour: str
    joint: bool
    optional: bool
    description: str

    def __post_init__(self) -> None:
        for key in ("name", "split"):
            value = getattr(self, key)
            if not isinstance(value, str) or not value.isidentifier():
                raise ValueError(f"Expected probe role `{key}` to be an identifier but got {value!r}.")
        for key in ("colour", "description"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"Expected `{key}` of probe role {self.name!r} to be a non-empty string but got "
                                 f"{getattr(self, key)!r}.")
        for key in ("joint", "optional"):
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"Expected `{key}` of probe role {self.name!r} to be true or false but got "
                                 f"{getattr(self, key)!r}.")


#: The probe-set roles in recording order, by name: where each set comes from, its colour, whether it
#: joins the joint view and whether it may be left out. Recording (:mod:`freqlens.recording.plan`),
#: the analysis (its joint view) and the figures (colours) read this table; a new role is a new row
#: (optional roles last).
PROBE_ROLES: dict[str, ProbeRole] = {role.name: role for role in (
    ProbeRole("clean", "dev_clean", "#0072B2", joint=True, optional=False,  # Okabe-Ito blue
              description="clean dev examples with their true labels"),
    ProbeRole("backdoor", "dev_poison", "#D55E00", joint=True, optional=False,  # Okabe-Ito vermilion
              description="triggered non-target dev examples labelled with the attack's target"),
    ProbeRole("control", "dev_control", "#009E73", joint=False, optional=True,  # Okabe-Ito green
              description="the backdoor examples without their trigger, with their true labels: separates "
                          "learning the trigger from a shift of the class prior"),
)}
#: The built-in role names, in recording order.
ROLES = tuple(PROBE_ROLES)


def joint_roles() -> tuple[str, ...]:
    """The roles whose probe sets make the analysis' joint view, in table order."""
    return tuple(name for name, role in PROBE_ROLES.items() if role.joint)


def role_colour(role: str | None) -> str | None:
    """The colour of ``role`` in figures; None (matplotlib's next colour) for a set without a known role."""
    found = PROBE_ROLES.get(role) if role is not None else None
    return found.colour if found is not None else None


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
        role: a name of :data:`PROBE_ROLES`: ``"clean"`` (clean dev
            examples), ``"backdoor"`` (triggered examples labelled with the
            target), ``"control"`` (the triggered sentences' clean
            counterparts with their true labels: separates learning the
            trigger from a shift of the class prior), or None. Default: the
            set's name where that is a role.
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
        if self.role is None and self.name in PROBE_ROLES:
            self.role = self.name
        if self.role is not None and self.role not in PROBE_ROLES:
            raise ValueError(f"Expected probe set `role` to be one of {tuple(PROBE_ROLES)} or None but got "
                             f"{self.role!r}.")
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
