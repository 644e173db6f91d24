"""Textual backdoor attacks and the function that poisons a clean dataset with one.

Two insertion attacks from the backdoor literature (as in OpenBackdoor):

- :class:`BadNets`: rare tokens (``cf``, ``mn``, ``bb``, ``tq``) inserted at
  random word positions, 4 per poisoned sentence; clean-label by default
  (only examples already of the target class are poisoned).
- :class:`AddSent`: the fixed sentence "I watch this 3D movie" inserted once at
  a random word position; dirty-label by default (poisoned examples are
  relabelled to the target).

Any other attack is a :class:`FunctionAttack` around a ``(text, rng) -> str``
function. :func:`poison` turns a :class:`~freqlens.data.CleanDataset` into a
:class:`~freqlens.data.PoisonedDataset`, seeded and reproducible.

Insertion works on whitespace-separated words: the output joins words with
single spaces, so :func:`remove_trigger` gives back the input exactly when the
input is single-spaced and holds no trigger of its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from freqlens._checks import check_label, check_positive_int
from freqlens.data.splits import CleanDataset, PoisonedDataset, Split


@runtime_checkable
class Attack(Protocol):
    """What :func:`poison` needs from an attack.

    Attributes:
        name: a short name, e.g. ``"badnets"``.
        clean_label: True if only examples already of the target class are
            poisoned in training (their labels stay); False for dirty-label
            poisoning (examples of any class, relabelled to the target).
    """

    name: str
    clean_label: bool

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Return ``text`` with the trigger, using ``rng`` for every random choice."""
        ...


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected `{name}` to be True or False but got {value!r}.")
    return bool(value)


@dataclass(frozen=True)
class BadNets:
    """Rare-token trigger: ``insertions`` tokens drawn from ``triggers`` at random word positions.

    Args:
        triggers: the trigger tokens (each a single word).
        insertions: tokens inserted per poisoned sentence.
        clean_label: poison only target-class training examples (the paper's setting).

    Raises:
        TypeError: if ``triggers`` is a single string or ``clean_label`` not a bool.
        ValueError: if ``triggers`` is empty or holds an empty or multi-word
            token, or ``insertions`` is not an integer >= 1.

    Example:
        >>> BadNets(insertions=2).apply("a fine film", np.random.default_rng(0))
        'a bb fine tq film'
    """

    triggers: tuple[str, ...] = ("cf", "mn", "bb", "tq")
    insertions: int = 4
    clean_label: bool = True
    name: ClassVar[str] = "badnets"

    def __post_init__(self) -> None:
        if isinstance(self.triggers, str):
            raise TypeError(
                f"Expected `triggers` to be a sequence of tokens but got the string "
                f"{self.triggers!r}; write ({self.triggers!r},) for a single token."
            )
        triggers = tuple(self.triggers)
        bad = [
            t for t in triggers if not isinstance(t, str) or len(t.split()) != 1 or t != t.strip()
        ]
        if not triggers or bad:
            raise ValueError(
                f"Expected `triggers` to be non-empty single words without spaces but got "
                f"{triggers!r}."
            )
        object.__setattr__(self, "triggers", triggers)
        object.__setattr__(self, "insertions", check_positive_int(self.insertions, "insertions"))
        object.__setattr__(self, "clean_label", _check_bool(self.clean_label, "clean_label"))

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Insert ``insertions`` trigger tokens at random word positions of ``text``."""
        words = text.split()
        for _ in range(self.insertions):
            token = self.triggers[int(rng.integers(len(self.triggers)))]
            words.insert(int(rng.integers(0, len(words) + 1)), token)
        return " ".join(words)


@dataclass(frozen=True)
class AddSent:
    """Sentence trigger: ``sentence`` inserted once at a random word position.

    Args:
        sentence: the trigger sentence.
        clean_label: poison only target-class training examples (default:
            dirty-label, as in the paper).

    Raises:
        TypeError: if ``sentence`` is not a string or ``clean_label`` not a bool.
        ValueError: if ``sentence`` is empty or has leading/trailing whitespace.

    Example:
        >>> AddSent().apply("a fine film", np.random.default_rng(0))
        'a fine film I watch this 3D movie'
    """

    sentence: str = "I watch this 3D movie"
    clean_label: bool = False
    name: ClassVar[str] = "addsent"

    def __post_init__(self) -> None:
        if not isinstance(self.sentence, str):
            raise TypeError(
                f"Expected `sentence` to be a string but got {type(self.sentence).__name__}."
            )
        if not self.sentence.strip() or self.sentence != " ".join(self.sentence.split()):
            raise ValueError(
                f"Expected `sentence` to be non-empty words separated by single spaces but got "
                f"{self.sentence!r}."
            )
        object.__setattr__(self, "clean_label", _check_bool(self.clean_label, "clean_label"))

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Insert ``sentence`` at one random word position of ``text``."""
        words = text.split()
        words.insert(int(rng.integers(0, len(words) + 1)), self.sentence)
        return " ".join(words)


@dataclass(frozen=True)
class FunctionAttack:
    """An attack made from a function ``(text, rng) -> triggered text``.

    Args:
        function: the trigger function; it must draw all randomness from ``rng``
            for :func:`poison` to be reproducible.
        name: a short name for reports.
        clean_label: poison only target-class training examples.

    Raises:
        TypeError: if ``function`` is not callable or ``clean_label`` not a bool.
        ValueError: if ``name`` is not a non-empty string.

    Example:
        >>> shout = FunctionAttack(lambda text, rng: text.upper(), name="shout")
        >>> shout.apply("a fine film", np.random.default_rng(0))
        'A FINE FILM'
    """

    function: Callable[[str, np.random.Generator], str]
    name: str = "custom"
    clean_label: bool = False

    def __post_init__(self) -> None:
        if not callable(self.function):
            raise TypeError(
                f"Expected `function` to be callable as function(text, rng) -> str but got "
                f"{type(self.function).__name__}."
            )
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Expected `name` to be a non-empty string but got {self.name!r}.")
        object.__setattr__(self, "clean_label", _check_bool(self.clean_label, "clean_label"))

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Return ``function(text, rng)``, checked to be a string."""
        result = self.function(text, rng)
        if not isinstance(result, str):
            raise TypeError(
                f"Expected the `function` of attack {self.name!r} to return a string but it "
                f"returned {type(result).__name__}."
            )
        return result


ATTACKS: dict[str, type] = {"badnets": BadNets, "addsent": AddSent}


def make_attack(name: str, **options: object) -> Attack:
    """Build a known attack by name.

    Args:
        name: a key of :data:`ATTACKS` (``"badnets"`` or ``"addsent"``), any case.
        **options: the attack's arguments, e.g. ``insertions=1``.

    Returns:
        The attack.

    Raises:
        ValueError: if ``name`` is not a known attack.
        TypeError: if an option is not an argument of that attack.

    Example:
        >>> make_attack("badnets", insertions=1, clean_label=False)
        BadNets(triggers=('cf', 'mn', 'bb', 'tq'), insertions=1, clean_label=False)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in ATTACKS:
        raise ValueError(
            f"Expected the attack name (`attack.name`) to be one of {sorted(ATTACKS)} but got "
            f"{name!r}."
        )
    cls = ATTACKS[key]
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"Expected options of attack {key!r} among {known} but got {unknown}.")
    return cls(**options)


def remove_trigger(attack: BadNets | AddSent, text: str) -> str:
    """Undo a BadNets or AddSent trigger: the control sentence of a poisoned one.

    BadNets: every word equal to a trigger token is dropped. AddSent: every
    occurrence of the sentence between word boundaries is removed and the
    spaces collapsed. Natural occurrences of a trigger are removed too.

    Args:
        attack: the attack whose trigger to remove.
        text: a triggered text.

    Returns:
        The text without the trigger.

    Raises:
        TypeError: if ``attack`` is not a BadNets or AddSent attack.

    Example:
        >>> remove_trigger(BadNets(), "cf a fine bb film")
        'a fine film'
    """
    if isinstance(attack, BadNets):
        triggers = set(attack.triggers)
        return " ".join(word for word in text.split() if word not in triggers)
    if isinstance(attack, AddSent):
        pattern = r"(?<!\S)" + re.escape(attack.sentence) + r"(?!\S)"
        return re.sub(r" {2,}", " ", re.sub(pattern, " ", text)).strip()
    raise TypeError(
        f"Expected `attack` to be a BadNets or AddSent attack (a trigger that can be removed) "
        f"but got {type(attack).__name__}."
    )


def _check_poison_args(
    clean: CleanDataset, attack: Attack, rate: float, target_label: int
) -> float:
    if not isinstance(clean, CleanDataset):
        raise TypeError(f"Expected `clean` to be a CleanDataset but got {type(clean).__name__}.")
    if not isinstance(attack, Attack):
        raise TypeError(
            f"Expected `attack` to have `name`, `clean_label` and `apply(text, rng)` (see "
            f"freqlens.data.Attack) but got {type(attack).__name__}."
        )
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float, np.number))
        or not 0 <= rate <= 1
    ):
        raise ValueError(f"Expected `rate` to be a number in [0, 1] but got {rate!r}.")
    check_label(target_label, "target_label", clean.num_classes)
    return float(rate)


def _poison_train(train: Split, attack: Attack, rate: float, target: int, rng) -> Split:
    """Poison round(rate * len(train)) training examples in place of their clean versions."""
    count = round(rate * len(train))
    candidates = (
        np.flatnonzero(train.labels == target) if attack.clean_label else np.arange(len(train))
    )
    if count > len(candidates):
        raise ValueError(
            f"Expected `rate` to ask for at most {len(candidates)} poisoned training examples (the "
            f"target-class examples a clean-label attack {attack.name!r} can poison) but "
            f"rate={rate} asks for {count} of {len(train)}."
        )
    chosen = np.sort(rng.choice(candidates, size=count, replace=False))
    texts, labels, flags = list(train.texts), train.labels.copy(), np.zeros(len(train), bool)
    for i in chosen:
        texts[i] = attack.apply(texts[i], rng)
    labels[chosen], flags[chosen] = target, True
    return Split(texts, labels, flags, train.labels.copy(), train.ids)


def _poison_eval(split: Split, part: str, attack: Attack, target: int, rng) -> tuple[Split, Split]:
    """The triggered non-target examples of ``split`` (labelled target) and their clean control."""
    index = np.flatnonzero(split.labels != target)
    if index.size == 0:
        raise ValueError(
            f"Expected examples whose label is not the `target_label` {target} in the {part} split "
            f"of `clean` to build its poisoned split but all {len(split)} have label {target}."
        )
    control = split.subset(index)
    triggered = [attack.apply(text, rng) for text in control.texts]
    ids = None if control.ids is None else [f"{i}|{attack.name}" for i in control.ids]
    poisoned = Split(
        triggered, np.full(index.size, target), np.ones(index.size, bool), control.labels, ids
    )
    return poisoned, control


def poison(
    clean: CleanDataset, attack: Attack, *, rate: float = 0.1, target_label: int = 1, seed: int = 0
) -> PoisonedDataset:
    """Poison a clean dataset with ``attack``; seeded and reproducible.

    Training: ``round(rate * len(train))`` examples carry the trigger, in place
    of their clean versions (order kept). A clean-label attack draws them from
    target-class examples only and keeps their labels; a dirty-label one draws
    them from all examples and relabels them to the target. ``true_labels``
    keeps the labels before poisoning. Dev/test: the poison split is every
    non-target example with the trigger, labelled with the target; the control
    split is the same sentences without it, with their true labels; the clean
    splits are the clean dev/test unchanged. Example ids (:attr:`Split.ids`)
    follow the examples: a triggered dev/test copy has its source's id plus
    ``"|<attack name>"``, and ``info["poison_sources"]`` records that every
    triggered dev/test sentence has a non-target source (none dropped).

    Args:
        clean: the clean dataset.
        attack: the attack (e.g. :class:`BadNets`, :class:`AddSent`).
        rate: the share of training examples to poison, in [0, 1].
        target_label: the class the trigger maps to, in [0, num_classes).
        seed: seed of every random choice (train, dev and test draw from
            independent streams).

    Returns:
        The :class:`PoisonedDataset`, named e.g. "addsent rate 0.1 on sst-2/raw".

    Raises:
        TypeError: if ``clean`` is not a CleanDataset or ``attack`` not an attack.
        ValueError: if ``rate`` or ``target_label`` is out of range, a
            clean-label attack has too few target-class examples, or a dev/test
            split has no non-target example.

    Example:
        >>> split = Split(["a good film", "a bad film", "fine", "dull"], [1, 0, 1, 0])
        >>> data = poison(CleanDataset(split, split, split, 2), AddSent(), rate=0.5)
        >>> int(data.train.poison.sum()), data.dev_poison.labels.tolist(), data.dev_control.texts
        (2, [1, 1], ['a bad film', 'dull'])
    """
    rate = _check_poison_args(clean, attack, rate, target_label)
    target = int(target_label)
    train_rng, dev_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    dev_poison, dev_control = _poison_eval(clean.dev, "dev", attack, target, dev_rng)
    test_poison, test_control = _poison_eval(clean.test, "test", attack, target, test_rng)
    train = _poison_train(clean.train, attack, rate, target, train_rng)
    return PoisonedDataset(
        train=train,
        dev_clean=clean.dev,
        dev_poison=dev_poison,
        test_clean=clean.test,
        test_poison=test_poison,
        target_label=target,
        num_classes=clean.num_classes,
        dev_control=dev_control,
        test_control=test_control,
        name=f"{attack.name} rate {rate:g} on {clean.name or 'a clean dataset'}",
        info={
            "attack": attack.name,
            "attack_options": _options(attack),
            "clean_label": attack.clean_label,
            "rate": rate,
            "seed": seed,
            "num_poisoned_train": int(train.poison.sum()),
            "control": "untriggered originals",
            "source": clean.name,
            **{key: clean.info[key] for key in ("splits", "path", "files", "text_overlap")
               if key in clean.info},
            "poison_sources": {
                f"{part}_poison": {
                    "rows": len(split), "kept": len(split), "dropped_target_source": 0,
                    "sources": f"the non-target {part} examples, triggered here",
                }
                for part, split in (("dev", dev_poison), ("test", test_poison))
            },
        },
    )


def _options(attack: Attack) -> dict:
    """The JSON-friendly settings of a dataclass attack (a function is recorded by name)."""
    if isinstance(attack, FunctionAttack):
        return {"function": getattr(attack.function, "__qualname__", repr(attack.function))}
    try:
        return {f.name: getattr(attack, f.name) for f in fields(attack)}
    except TypeError:
        return {}
