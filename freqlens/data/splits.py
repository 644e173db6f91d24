"""The in-memory form of a poisoned experiment: labelled texts in named splits."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from freqlens._checks import check_positive_int

if TYPE_CHECKING:
    import torch


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
        ids: the identity of each example (where it was read from, e.g.
            ``"path/dev.csv:12"``), or None when unknown. Two splits sharing
            an id share that example; :func:`check_disjoint` refuses a test
            split that shares one with a training or reference split.
    """

    texts: list[str]
    labels: np.ndarray
    poison: np.ndarray | None = None
    true_labels: np.ndarray | None = None
    ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.texts)
        if self.labels.shape != (n,):
            raise ValueError(f"Expected {n} `labels`, one per text, but got {self.labels.shape[0]}.")
        self.poison = np.zeros(n, bool) if self.poison is None else np.asarray(self.poison, bool)
        self.true_labels = self.labels.copy() if self.true_labels is None else np.asarray(self.true_labels, np.int64)
        if self.poison.shape != (n,) or self.true_labels.shape != (n,):
            raise ValueError(
                f"Expected `poison` and `true_labels` of shape ({n},), one per text, but got "
                f"shapes {self.poison.shape} and {self.true_labels.shape}."
            )
        if self.ids is not None:
            self.ids = np.array([str(i) for i in self.ids], dtype=object).reshape(-1)
            if self.ids.shape != (n,):
                raise ValueError(f"Expected {n} `ids`, one per text, but got {self.ids.shape[0]}.")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Any) -> Split:
        """The examples at ``index``, in the order given.

        Args:
            index: integer positions or a boolean mask of length ``len(self)``.

        Returns:
            A new :class:`Split` holding the selected examples.

        Raises:
            TypeError: if ``index`` is neither integers nor booleans.
            ValueError: if a mask has the wrong length or a position is out of range.

        Example:
            >>> split = Split(["a", "b", "c"], [0, 1, 0])
            >>> split.subset([2, 0]).texts, split.subset(split.labels == 1).texts
            (['c', 'a'], ['b'])
        """
        n = len(self)
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (n,):
                raise ValueError(
                    f"Expected a boolean `index` of shape ({n},) but got shape {index.shape}."
                )
            index = np.flatnonzero(index)
        elif index.size == 0:
            index = index.astype(np.int64)
        elif not np.issubdtype(index.dtype, np.integer):
            raise TypeError(
                f"Expected `index` to be integer positions or a boolean mask but got dtype "
                f"{index.dtype}."
            )
        index = index.reshape(-1)
        if index.size and (index.min() < -n or index.max() >= n):
            raise ValueError(
                f"Expected `index` positions in [0, {n}) but got {index.min()}..{index.max()}."
            )
        return Split(
            [self.texts[i] for i in index],
            self.labels[index],
            self.poison[index],
            self.true_labels[index],
            None if self.ids is None else self.ids[index],
        )


def _cap_index(split: Split, n: int | None, seed: int, name: str = "n") -> np.ndarray | None:
    """Sorted positions of a seeded, poison-stratified sample of ``n`` examples (None: keep all)."""
    if n is None:
        return None
    n = check_positive_int(n, name)
    if n >= len(split):
        return None
    poisoned, clean = np.flatnonzero(split.poison), np.flatnonzero(~split.poison)
    share = len(poisoned) / len(split)
    k = min(max(round(n * share), n - len(clean)), len(poisoned))
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([
        rng.choice(poisoned, size=k, replace=False),
        rng.choice(clean, size=n - k, replace=False),
    ])
    return np.sort(chosen)


def cap(split: Split, n: int | None, *, seed: int = 0) -> Split:
    """At most ``n`` examples of ``split``, drawn at random but keeping the poison share.

    The sample is stratified by the poison flag (``round(n * share)`` poisoned
    examples, the rest clean) and keeps the original order.

    Args:
        split: the split to shorten.
        n: the most examples to keep; ``None`` (or ``n >= len(split)``) keeps
            the split unchanged.
        seed: seed of the random choice.

    Returns:
        ``split`` itself when nothing is dropped, else a new :class:`Split`.

    Raises:
        ValueError: if ``n`` is not an integer >= 1.

    Example:
        >>> split = Split([str(i) for i in range(10)], [0] * 10, poison=[i < 5 for i in range(10)])
        >>> small = cap(split, 4)
        >>> len(small), int(small.poison.sum())
        (4, 2)
    """
    index = _cap_index(split, n, seed)
    return split if index is None else split.subset(index)


def encode(tokenizer, split: Split, max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise a split's texts with a Hugging Face ``tokenizer``, padded and truncated to
    ``max_length`` tokens (one length for all examples): a dict of (N, max_length) tensors."""
    encoded = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
    return dict(encoded)


def _check_labels(split: Split, name: str, num_classes: int) -> None:
    """Raise a ValueError if a label of ``split`` is outside [0, num_classes)."""
    for kind, labels in (("labels", split.labels), ("true_labels", split.true_labels)):
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            raise ValueError(
                f"Expected `{name}` {kind} in [0, {num_classes}) for `num_classes`={num_classes} "
                f"but got {sorted(set(outside.tolist()))}."
            )


@dataclass
class CleanDataset:
    """A clean (unpoisoned) labelled dataset, the input of :func:`freqlens.data.poison`.

    Attributes:
        train, dev, test: the splits (their poison flags are all False).
        num_classes: the number of classes; every label lies in [0, num_classes).
        name: a short description.
        info: provenance (e.g. ``info["splits"]``: where each split came from).

    Raises:
        ValueError: if dev or test shares an example id with train, or test
            with dev (see :func:`check_disjoint`).
    """

    train: Split
    dev: Split
    test: Split
    num_classes: int
    name: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.num_classes = check_positive_int(self.num_classes, "num_classes", minimum=2)
        for part in ("train", "dev", "test"):
            split = getattr(self, part)
            if not isinstance(split, Split):
                raise TypeError(f"Expected `{part}` to be a Split but got {type(split).__name__}.")
            _check_labels(split, part, self.num_classes)
        check_disjoint(self)

    def capped(
        self, max_train: int | None = None, max_eval: int | None = None, seed: int = 0
    ) -> CleanDataset:
        """The dataset with at most ``max_train`` training and ``max_eval`` dev/test examples.

        Args:
            max_train: the most training examples to keep (None: all).
            max_eval: the most dev and test examples to keep, each (None: all).
            seed: seed of the random choice (see :func:`cap`).

        Returns:
            A new :class:`CleanDataset`.

        Raises:
            ValueError: if ``max_train`` or ``max_eval`` is not None nor an integer >= 1.
        """
        parts = {}
        for part, limit, name in (("train", max_train, "max_train"), ("dev", max_eval, "max_eval"),
                                  ("test", max_eval, "max_eval")):
            split = getattr(self, part)
            index = _cap_index(split, limit, seed, name)
            parts[part] = split if index is None else split.subset(index)
        return replace(self, **parts)


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
        info: provenance (files read, attack settings, the kind of control).

    Raises:
        ValueError: if an evaluation split shares an example id with train, or
            a test split with a dev split (see :func:`check_disjoint`).
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

    def __post_init__(self) -> None:
        check_disjoint(self)

    def capped(
        self, max_train: int | None = None, max_eval: int | None = None, seed: int = 0
    ) -> PoisonedDataset:
        """The dataset with at most ``max_train`` training and ``max_eval`` examples per eval split.

        Every split is shortened with :func:`cap`. A control split of the same
        length as its poison split keeps the same positions, so control ``i``
        stays the clean counterpart of poison ``i``.

        Args:
            max_train: the most training examples to keep (None: all).
            max_eval: the most examples to keep in each dev/test split (None: all).
            seed: seed of the random choice.

        Returns:
            A new :class:`PoisonedDataset`; ``info["capped"]`` records the limits.

        Raises:
            ValueError: if ``max_train`` or ``max_eval`` is not None nor an integer >= 1.
        """
        index = _cap_index(self.train, max_train, seed, "max_train")
        train = self.train if index is None else self.train.subset(index)
        changes: dict[str, Any] = {"train": train}
        for part in ("dev", "test"):
            clean, poisoned = getattr(self, f"{part}_clean"), getattr(self, f"{part}_poison")
            control = getattr(self, f"{part}_control")
            index = _cap_index(clean, max_eval, seed, "max_eval")
            changes[f"{part}_clean"] = clean if index is None else clean.subset(index)
            index = _cap_index(poisoned, max_eval, seed, "max_eval")
            changes[f"{part}_poison"] = poisoned if index is None else poisoned.subset(index)
            if control is not None and len(control) != len(poisoned):
                index = _cap_index(control, max_eval, seed, "max_eval")
            if control is not None and index is not None:
                changes[f"{part}_control"] = control.subset(index)
        info = {**self.info, "capped": {"max_train": max_train, "max_eval": max_eval, "seed": seed}}
        return replace(self, **changes, info=info)


def split_reference(dataset: PoisonedDataset, size: int, *, seed: int = 0,
                    argument: str = "reference_size") -> tuple[PoisonedDataset, Split]:
    """Take a clean reference set of ``size`` random dev-clean examples out of ``dataset``.

    Gradient alignment trains along this set's gradient; it leaves dev-clean,
    so the clean probes and the checkpoint selection never see it. No
    reference example has a text (compared by :func:`normalize_text`) that
    occurs in a test split (``test_clean``, ``test_poison``, ``test_control``),
    so no example the defense trained on is ever scored, even where dev and
    test share a few sentences naturally; ``info["reference_excluded_test_texts"]``
    counts the dev-clean rows left out for that.

    Returns:
        The dataset without those rows in ``dev_clean``, and the reference split.

    Raises:
        ValueError: if ``size`` is not an integer >= 1, dev-clean has no more
            than ``size`` examples (some must stay for probes and selection),
            or fewer than ``size`` of them have a text in no test split; each naming
            ``argument`` (``defense.reference_size`` in ``freqlens run``).
    """
    check_positive_int(size, argument)
    clean = dataset.dev_clean
    if len(clean) <= size:
        raise ValueError(
            f"Expected `{argument}` below the {len(clean)} dev-clean examples of {dataset.name or 'the dataset'} "
            f"but got {size}."
        )
    scored = set()
    for part in ("test_clean", "test_poison", "test_control"):
        split = getattr(dataset, part)
        if split is not None:
            scored.update(normalize_text(text) for text in split.texts)
    eligible = np.array([normalize_text(text) not in scored for text in clean.texts], bool)
    if int(eligible.sum()) < size:
        raise ValueError(
            f"Expected at least `{argument}`={size} dev-clean examples of "
            f"{dataset.name or 'the dataset'} whose text is in no test split (a reference example "
            f"must never be scored) but only {int(eligible.sum())} of {len(clean)} are."
        )
    rows = np.random.default_rng(seed).permutation(len(clean))
    rows = rows[eligible[rows]]  # in the permutation's order, without texts found in a test split
    chosen = np.sort(rows[:size])
    kept = np.setdiff1d(np.arange(len(clean)), chosen)
    info = {**dataset.info, "reference": {"size": size, "seed": seed, "from": "dev_clean"},
            "reference_excluded_test_texts": int((~eligible).sum())}
    reduced = replace(dataset, dev_clean=clean.subset(kept), info=info)
    reference = clean.subset(chosen)
    check_disjoint(reduced, reference=reference)
    return reduced, reference


TRAINED = ("train", "reference")
EVALUATED = {  # split -> the splits it must share no example with
    # dev_control holds the clean sources of dev_poison, which are dev_clean examples: the
    # reference set drawn from dev_clean may hold some of them (control probes, not scores)
    "dev": TRAINED, "dev_clean": TRAINED, "dev_poison": TRAINED, "dev_control": ("train",),
    "test": (*TRAINED, "dev"),
    "test_clean": (*TRAINED, "dev_clean", "dev_poison", "dev_control"),
    "test_poison": (*TRAINED, "dev_clean", "dev_poison", "dev_control"),
    "test_control": (*TRAINED, "dev_clean", "dev_poison", "dev_control"),
}


def _splits_of(dataset: CleanDataset | PoisonedDataset) -> dict[str, Split]:
    """The dataset's splits by attribute name (those that are set)."""
    return {f.name: getattr(dataset, f.name) for f in fields(dataset)
            if isinstance(getattr(dataset, f.name), Split)}


def check_disjoint(dataset: CleanDataset | PoisonedDataset, reference: Split | None = None) -> None:
    """Refuse a dataset whose evaluation splits share an example with what a model trains on.

    No dev split may share an example id (:attr:`Split.ids`) with ``train`` or
    the gradient-alignment ``reference`` set, and no test split with those or
    with a dev split (the checkpoint selection and the probes see dev). Splits
    without ids (made by hand) are not checked. Example identity is where an
    example was read from, not its text: the same sentence in two files is
    two examples.

    Raises:
        ValueError: naming the two splits, how many examples they share and one of them.
    """
    splits = {**_splits_of(dataset), "reference": reference}
    ids = {name: set(split.ids.tolist()) for name, split in splits.items()
           if split is not None and split.ids is not None}  # each split's ids once
    for name, others in EVALUATED.items():
        if name not in ids:
            continue
        split = splits[name]
        for other in others:
            if other not in ids:
                continue
            shared = ids[name] & ids[other]
            if shared:
                raise ValueError(
                    f"Expected the evaluation split `{name}` to share no example with `{other}` "
                    f"(no example a model trained on, or selected by, may be scored) but "
                    f"{len(shared)} of its {len(split)} examples are in both (e.g. "
                    f"{sorted(shared)[0]!r}). Use different splits; a split named for both dev "
                    f"and test, or for train and an evaluation split, is carved into disjoint "
                    f"parts by the loaders (`data.splits`)."
                )


def carve(parts: dict[str, Split], sources: dict[str, Any], *, seed: int = 0,
          holdout: float = 0.1, names: dict[str, str] | None = None
          ) -> tuple[dict[str, Split], dict[str, str]]:
    """Divide a split that serves several roles into disjoint parts, deterministically.

    Roles ("train", "dev", "test") whose ``sources`` are equal read the same
    examples. Each is given its own rows of a seeded permutation: when the
    training split is one of them, every evaluation role takes
    ``round(holdout * n)`` rows (at least 1) and train keeps the rest; else
    dev takes the first half (rounded up) and test the rest. Row order is kept.

    Args:
        parts: role -> split as read.
        sources: role -> the identity of what it was read from (a file path, a
            split name, a dataset fingerprint).
        seed: the permutation's seed.
        names: role -> the name to give its source in the notes (default: the source).
        holdout: the share of the training split each evaluation role carved
            from it takes, in (0, 0.5).

    Returns:
        The parts (disjoint where they shared a source) and, per carved role, a
        note such as ``"validation: 436 of 872 rows (seed 0)"``.

    Raises:
        ValueError: if a shared split has too few rows to give each role one.
    """
    if not (isinstance(holdout, (int, float)) and 0.0 < holdout < 0.5):
        raise ValueError(f"Expected `holdout` in (0, 0.5) but got {holdout!r}.")
    parts, notes = dict(parts), {}
    groups: dict[Any, list[str]] = {}
    for role in parts:
        groups.setdefault(sources[role], []).append(role)
    for source, roles in groups.items():
        if len(roles) < 2:
            continue
        split = parts[roles[0]]
        n = len(split)
        label = names[roles[0]] if names else str(source)
        rows = np.random.default_rng(seed).permutation(n)
        evaluation = [role for role in roles if role != "train"]
        if "train" in roles:
            k = max(1, round(holdout * n))
            sizes = [k] * len(evaluation) + [n - k * len(evaluation)]
            order = [*evaluation, "train"]
        else:
            sizes, order = [n - n // 2, n // 2], evaluation
        if min(sizes) < 1:
            raise ValueError(
                f"Expected enough examples in {label} to carve disjoint {', '.join(roles)} "
                f"splits from it but it has {n}."
            )
        start = 0
        for role, size in zip(order, sizes):
            parts[role] = split.subset(np.sort(rows[start:start + size]))
            notes[role] = f"{label}: {size} of {n} rows (seed {seed})"
            start += size
    return parts, notes


COPY_SHARE = 0.05
"""The largest share of an evaluation split's rows whose text may also be in a split it is
compared with (:func:`check_text_overlap`). Natural duplicates are far rarer: raw SST-2 has
2 of its 1,821 test sentences (0.1%) in train and none in dev; a copied split shares 100%."""

OVERLAP_PAIRS = {  # evaluation split -> the splits its texts are compared with
    "dev": ("train",), "test": ("train", "dev"),  # CleanDataset
    "dev_clean": ("train",), "test_clean": ("train", "dev_clean"),  # PoisonedDataset
    "test_poison": ("train", "dev_poison"),
}


def normalize_text(text: str) -> str:
    """``text`` as the overlap checks compare it: Unicode NFKC, case-folded, runs of
    whitespace as one space, no leading or trailing whitespace.

    Example:
        >>> normalize_text("  A  Good\\tFILM ")
        'a good film'
    """
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def check_text_overlap(dataset: CleanDataset | PoisonedDataset,
                       where: dict[str, str] | None = None) -> dict[str, dict[str, int]]:
    """Refuse an evaluation split that looks like a copy of train or dev; count the texts shared.

    Example ids (:func:`check_disjoint`) say where an example was read from,
    so a test file copied from the dev file, or a test split rebuilt from the
    validation split, passes them. This compares contents: for each
    evaluation split (dev vs train; test vs train and dev; for a
    :class:`PoisonedDataset` also test-poison vs dev-poison) the rows whose
    text (:func:`normalize_text`) also occurs in the other split are counted.
    More than :data:`COPY_SHARE` (5%) of its rows is refused; fewer (natural
    duplicates, e.g. 2 of SST-2's 1,821 test sentences are in its train set)
    are returned, for ``info["text_overlap"]``.

    Args:
        dataset: the dataset as loaded (before any cap).
        where: split -> how to name it in an error (e.g. "`data.splits.test` =
            'validation'"); default: the split's attribute name.

    Returns:
        ``{evaluation split: {other split: rows of it whose text is in the other}}``.

    Raises:
        ValueError: naming both splits and the share, if a share is above
            :data:`COPY_SHARE`.
    """
    where = where or {}
    compared = set(OVERLAP_PAIRS).union(*OVERLAP_PAIRS.values())
    texts = {name: [normalize_text(t) for t in split.texts]
             for name, split in _splits_of(dataset).items() if name in compared}
    sets = {name: set(rows) for name, rows in texts.items()}  # each split's texts once
    counts: dict[str, dict[str, int]] = {}
    for name, others in OVERLAP_PAIRS.items():
        if name not in texts or not texts[name]:
            continue
        for other in others:
            if other not in texts:
                continue
            against = sets[other]
            shared = sum(text in against for text in texts[name])
            counts.setdefault(name, {})[other] = shared
            share = shared / len(texts[name])
            if share > COPY_SHARE:
                label, other_label = where.get(name, f"`{name}`"), where.get(other, f"`{other}`")
                raise ValueError(
                    f"Expected the evaluation split {label} to share at most {COPY_SHARE:.0%} of "
                    f"its texts with {other_label} (a few natural duplicates) but {shared} of its "
                    f"{len(texts[name])} rows ({share:.1%}) have a text that is also there: it "
                    f"looks like a copy of it, and its examples would be trained on or selected by and "
                    f"then scored. Name different splits (`data.splits`); to evaluate on part of "
                    f"one split, name it for both roles and it is carved into disjoint parts."
                )
    return counts
