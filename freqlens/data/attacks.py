"""Textual backdoor attacks, the registry that names them, and :func:`poison`.

An attack is a subclass of :class:`Attack` registered by name with
:func:`register_attack`; ``[attack] name`` in a config, :func:`make_attack`
and the folder-name detection of :func:`~freqlens.data.load_openbackdoor`
look it up there, and ``[attack.options]`` reaches its constructor. The
built-in attacks are registered the same way a user's is:

- ``badnets`` (:class:`BadNets`): rare tokens (``cf``, ``mn``, ``bb``, ``tq``)
  inserted at random word positions, 4 per poisoned sentence; clean-label by
  default (only examples already of the target class are poisoned).
- ``addsent`` (:class:`AddSent`): the fixed sentence "I watch this 3D movie"
  inserted once at a random word position; dirty-label by default (poisoned
  examples are relabelled to the target).
- ``stylebkd`` and ``synbkd`` (:class:`StyleBkd`, :class:`SynBkd`):
  paraphrase attacks that exist here only as OpenBackdoor folders (no
  generator, no trigger to remove: their control sets are the clean sources).

A function ``(text, rng) -> str`` becomes an attack with :class:`FunctionAttack`.
:func:`poison` turns a :class:`~freqlens.data.CleanDataset` into a
:class:`~freqlens.data.PoisonedDataset`, seeded and reproducible.

Insertion works on whitespace-separated words: the output joins words with
single spaces, so :func:`remove_trigger` gives back the input exactly when the
input is single-spaced and holds no trigger of its own.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from freqlens._checks import IMPORT_PATH, check_label, check_positive_int, import_object
from freqlens.data.splits import CleanDataset, PoisonedDataset, Split


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected `{name}` to be True or False but got {value!r}.")
    return bool(value)


class Attack:
    """Base class of a textual backdoor attack; register a subclass with :func:`register_attack`.

    A subclass (usually a frozen dataclass, whose fields are its options) gives:

    - ``name`` (class attribute): the short name in reports and configs, e.g.
      ``"badnets"``; :func:`register_attack` sets it to the registered name
      when the class has none.
    - ``clean_label``: True if only examples already of the target class are
      poisoned in training (their labels stay); False (the default) for
      dirty-label poisoning (examples of any class, relabelled to the target).
    - ``apply(text, rng) -> str``: the text with the trigger, every random
      choice drawn from ``rng`` (a :class:`numpy.random.Generator`).
    - optionally ``remove_trigger(text) -> str``: the text without the trigger,
      so that control sets can be built from triggered sentences (an
      OpenBackdoor folder's); ``remove_trigger(attack.apply(t, rng)) == t`` for
      single-spaced ``t`` that holds no trigger of its own.
    - optionally ``check_option(name, value, key)``: validate one option and
      return it normalised, naming it ``key`` in errors (``"insertions"`` when
      built in Python, ``"attack.options.insertions"`` from a config). The base
      checks ``clean_label``; a dataclass subclass runs it on every field when
      built (the base ``__post_init__``).

    Class attributes, set from the methods a subclass defines (set them
    explicitly to override):

    - ``generates``: True if the class defines ``apply``. An attack without a
      generator (``stylebkd``, ``synbkd``) names an OpenBackdoor folder's
      attack; :func:`poison` refuses it.
    - ``removes_trigger``: True if the class defines ``remove_trigger``.
      Without it, control sets of an OpenBackdoor folder are the clean sources
      found by word similarity (:func:`~freqlens.data.loaders.recover_sources`).

    Example:
        >>> @dataclass(frozen=True)
        ... class LastWord(Attack):
        ...     word: str = "zq"
        ...     clean_label: bool = False
        ...     def apply(self, text, rng):
        ...         return f"{text} {self.word}".strip()
        ...     def remove_trigger(self, text):
        ...         return " ".join(w for w in text.split() if w != self.word)
        >>> _ = register_attack("lastword", LastWord)
        >>> make_attack("lastword", word="qq").apply("a fine film", np.random.default_rng(0))
        'a fine film qq'
        >>> LastWord.generates, LastWord.removes_trigger, LastWord.name
        (True, True, 'lastword')
        >>> _ = unregister_attack("lastword")
    """

    name: ClassVar[str] = ""
    clean_label: bool = False
    generates: ClassVar[bool] = False
    removes_trigger: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "generates" not in cls.__dict__ and "apply" in cls.__dict__:
            cls.generates = True
        if "removes_trigger" not in cls.__dict__ and "remove_trigger" in cls.__dict__:
            cls.removes_trigger = True

    def __post_init__(self) -> None:
        """Check every field with :meth:`check_option` (dataclass subclasses), storing the result."""
        for item in fields(self):
            value = type(self).check_option(item.name, getattr(self, item.name), item.name)
            object.__setattr__(self, item.name, value)

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Return ``text`` with the trigger, using ``rng`` for every random choice.

        Raises:
            NotImplementedError: for an attack without a generator (``generates`` False).
        """
        raise NotImplementedError(
            f"Attack {self.name!r} has no generator in freqlens (`generates` is False): its "
            f"poisoned sentences exist only as OpenBackdoor folders (e.g. sst-2/{self.name}); "
            f"load such a folder (`data.path`, with `attack.name` = 'none') instead of poisoning "
            f"clean data with it."
        )

    def remove_trigger(self, text: str) -> str:
        """Return ``text`` without the trigger (only where ``removes_trigger`` is True).

        Raises:
            TypeError: for an attack without a removable trigger.
        """
        raise TypeError(
            f"Expected an attack with a removable trigger (`removes_trigger` True) but "
            f"{type(self).__name__} {self.name!r} has none."
        )

    @classmethod
    def option_names(cls) -> tuple[str, ...] | None:
        """The options the constructor takes (a dataclass's init fields); None: any keyword."""
        if dataclasses.is_dataclass(cls):
            return tuple(f.name for f in fields(cls) if f.init)
        parameters = list(inspect.signature(cls).parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        return tuple(p.name for p in parameters
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @classmethod
    def check_option(cls, name: str, value: Any, key: str) -> Any:
        """Return option ``name`` checked and normalised; errors name it ``key``.

        Raises:
            TypeError: if ``clean_label`` is not True or False.
        """
        if name == "clean_label":
            return _check_bool(value, key)
        return value

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, where: str | None = None) -> Attack:
        """Build the attack from a mapping of its options, each checked by :meth:`check_option`.

        Args:
            options: option name -> value (e.g. ``{"insertions": 2}``).
            where: how the mapping is named to the user (``"attack.options"``
                for a config: errors then name ``attack.options.<key>``); None
                for keyword arguments in Python (errors name ``<key>``).

        Raises:
            TypeError: for an option the attack does not take (``where``
                None), or a value of the wrong type (as :meth:`check_option`
                raises it).
            ValueError: for an option the attack does not take (``where``
                given), a bad value (as :meth:`check_option` raises it), or,
                with ``where``, a value the constructor itself refuses: the
                message names the options that fail on their own (all given
                if none does) and quotes the constructor's error.
        """
        def key(name: str) -> str:
            return f"{where}.{name}" if where else name

        if not isinstance(options, Mapping):
            raise (ValueError if where else TypeError)(
                f"Expected `{where or 'options'}` to be a table of the settings of attack "
                f"{cls.name!r} but got {options!r}."
            )
        known = cls.option_names()
        unknown = [] if known is None else [name for name in options if name not in known]
        if unknown and where:
            raise ValueError(
                f"Expected the keys of `{where}` to be settings of attack {cls.name!r} "
                f"({list(known)}) but got {[key(name) for name in unknown]}."
            )
        if unknown:
            raise TypeError(
                f"Expected options of attack {cls.name!r} among {list(known)} but got {sorted(unknown)}."
            )
        checked = {name: cls.check_option(name, value, key(name)) for name, value in options.items()}
        try:
            return cls(**checked)
        except (TypeError, ValueError) as error:
            if not where:
                raise
            culprits = [name for name in checked if not _builds(cls, {name: checked[name]})]
            named = ", ".join(f"`{key(name)}` = {checked[name]!r}" for name in culprits or checked)
            raise ValueError(
                f"Expected valid settings of attack {cls.name!r} but got {named}: {error}"
            ) from error

    def options(self) -> dict[str, Any]:
        """The attack's settings, as recorded in ``info["attack_options"]`` by :func:`poison`."""
        if dataclasses.is_dataclass(self):
            return {item.name: getattr(self, item.name) for item in fields(self)}
        names = type(self).option_names() or ()
        return {name: getattr(self, name) for name in names if hasattr(self, name)}


def _builds(cls: type, options: dict) -> bool:
    try:
        cls(**options)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class BadNets(Attack):
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

    @classmethod
    def check_option(cls, name: str, value: Any, key: str) -> Any:
        """Check ``triggers`` (single words), ``insertions`` (>= 1) and ``clean_label``."""
        if name == "triggers":
            if isinstance(value, str):
                raise TypeError(
                    f"Expected `{key}` to be a sequence of tokens but got the string {value!r}; "
                    f"write [{json.dumps(value)}] (a list) for a single token."
                )
            try:
                triggers = tuple(value)
            except TypeError:
                raise TypeError(
                    f"Expected `{key}` to be a sequence of tokens but got {value!r}."
                ) from None
            bad = [t for t in triggers
                   if not isinstance(t, str) or len(t.split()) != 1 or t != t.strip()]
            if not triggers or bad:
                raise ValueError(
                    f"Expected `{key}` to be non-empty single words without spaces but got "
                    f"{triggers!r}."
                )
            return triggers
        if name == "insertions":
            return check_positive_int(value, key)
        return super().check_option(name, value, key)

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Insert ``insertions`` trigger tokens at random word positions of ``text``."""
        words = text.split()
        for _ in range(self.insertions):
            token = self.triggers[int(rng.integers(len(self.triggers)))]
            words.insert(int(rng.integers(0, len(words) + 1)), token)
        return " ".join(words)

    def remove_trigger(self, text: str) -> str:
        """Drop every word equal to a trigger token (natural occurrences too)."""
        triggers = set(self.triggers)
        return " ".join(word for word in text.split() if word not in triggers)


@dataclass(frozen=True)
class AddSent(Attack):
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

    @classmethod
    def check_option(cls, name: str, value: Any, key: str) -> Any:
        """Check ``sentence`` (words separated by single spaces) and ``clean_label``."""
        if name == "sentence":
            if not isinstance(value, str):
                raise TypeError(f"Expected `{key}` to be a string but got {type(value).__name__}.")
            if not value.strip() or value != " ".join(value.split()):
                raise ValueError(
                    f"Expected `{key}` to be non-empty words separated by single spaces but got "
                    f"{value!r}."
                )
            return value
        return super().check_option(name, value, key)

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Insert ``sentence`` at one random word position of ``text``."""
        words = text.split()
        words.insert(int(rng.integers(0, len(words) + 1)), self.sentence)
        return " ".join(words)

    def remove_trigger(self, text: str) -> str:
        """Remove every occurrence of ``sentence`` between word boundaries; collapse the spaces."""
        pattern = r"(?<!\S)" + re.escape(self.sentence) + r"(?!\S)"
        return re.sub(r" {2,}", " ", re.sub(pattern, " ", text)).strip()


@dataclass(frozen=True)
class ParaphraseAttack(Attack):
    """A paraphrase attack known here only by name, for OpenBackdoor folders made with it.

    freqlens has no generator for it (``generates`` False: :func:`poison`
    refuses it) and no trigger to remove (control sets are the clean sources).

    Args:
        clean_label: whether the folder's training file is clean-label.
    """

    clean_label: bool = False


@dataclass(frozen=True)
class StyleBkd(ParaphraseAttack):
    """Text-style trigger (Qi et al., 2021, "Mind the Style of Text!"): a paraphrase in a style."""

    name: ClassVar[str] = "stylebkd"


@dataclass(frozen=True)
class SynBkd(ParaphraseAttack):
    """Syntactic trigger (Qi et al., 2021, "Hidden Killer"): a paraphrase with a fixed syntax."""

    name: ClassVar[str] = "synbkd"


@dataclass(frozen=True)
class FunctionAttack(Attack):
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

    @classmethod
    def check_option(cls, name: str, value: Any, key: str) -> Any:
        """Check ``function`` (callable), ``name`` (non-empty string) and ``clean_label``."""
        if name == "function" and not callable(value):
            raise TypeError(
                f"Expected `{key}` to be callable as function(text, rng) -> str but got "
                f"{type(value).__name__}."
            )
        if name == "name" and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"Expected `{key}` to be a non-empty string but got {value!r}.")
        return super().check_option(name, value, key)

    def apply(self, text: str, rng: np.random.Generator) -> str:
        """Return ``function(text, rng)``, checked to be a string."""
        result = self.function(text, rng)
        if not isinstance(result, str):
            raise TypeError(
                f"Expected the `function` of attack {self.name!r} to return a string but it "
                f"returned {type(result).__name__}."
            )
        return result

    def options(self) -> dict[str, Any]:
        """The function, recorded by its qualified name."""
        return {"function": getattr(self.function, "__qualname__", repr(self.function))}


# --- the registry -----------------------------------------------------------------------------

_REGISTRY: dict[str, type[Attack]] = {}
ATTACKS: Mapping[str, type[Attack]] = MappingProxyType(_REGISTRY)
"""The registered attacks, name -> class (a read-only live view; change it with
:func:`register_attack` and :func:`unregister_attack`)."""


def register_attack(name: str, cls: type[Attack], *, replace: bool = False) -> type[Attack]:
    """Make an attack class usable by name (``attack.name``, :func:`make_attack`, folder names).

    Args:
        name: the name, any case (stored lower-case); a single word, not "none".
        cls: a subclass of :class:`Attack`. Its ``name`` is set to ``name``
            when the class defines none itself (one inherited from the class
            it extends does not count), and must equal it otherwise.
        replace: allow replacing another class registered under ``name``.

    Returns:
        ``cls`` (so this can be used as ``register_attack("x", X)`` after the class).

    Raises:
        TypeError: if ``cls`` is not a subclass of :class:`Attack`.
        ValueError: if ``name`` is not a single word, is "none", differs from
            the class's own ``name``, or is taken by another class and
            ``replace`` is False.

    Example:
        >>> register_attack("badnets", BadNets) is BadNets  # already registered: a no-op
        True
    """
    if not isinstance(name, str) or len(name.split()) != 1 or name != name.strip() \
            or name.lower() == "none":
        raise ValueError(
            f"Expected `name` to be a single word other than 'none' (the attack's name in "
            f"`attack.name`) but got {name!r}."
        )
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(
            f"Expected `cls` to be a subclass of freqlens.data.Attack but got {cls!r}."
        )
    key = name.lower()
    own = cls.__dict__.get("name", "")  # a subclass's own, not the name of the class it extends
    if not own:
        cls.name = key
    elif not isinstance(own, str) or own.lower() != key:
        raise ValueError(
            f"Expected the `name` of {cls.__name__} ({own!r}) to be the registered name "
            f"{name!r}; give the class the name it is registered under (or none)."
        )
    if _REGISTRY.get(key, cls) is not cls and not replace:
        raise ValueError(
            f"Expected a new attack name but {key!r} is registered to "
            f"{_REGISTRY[key].__name__}; pass replace=True to replace it."
        )
    _REGISTRY[key] = cls
    return cls


def unregister_attack(name: str) -> type[Attack]:
    """Remove the attack registered under ``name`` (any case) and return its class.

    Raises:
        ValueError: if no attack is registered under ``name``.
    """
    attack_class(name, "name")  # raises for an unknown name
    return _REGISTRY.pop(name.lower())


def attack_class(name: str, key: str = "attack.name") -> type[Attack]:
    """The class registered under ``name`` (any case).

    Args:
        name: a registered name, e.g. ``"badnets"``, or ``"module:Class"``: a
            :class:`Attack` subclass in an importable module (the working
            directory counts), imported and registered (under the class's own
            ``name``, else under ``name``), so a user's attack runs from the
            command line (``--set attack.name=my_attacks:Suffix``).
        key: how ``name`` is called in the error (``attack.name`` in a config).

    Raises:
        ValueError: if ``name`` is not registered (listing the names that are)
            and no importable ``module:Class`` naming an Attack subclass.
    """
    found = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if found is None and isinstance(name, str) and IMPORT_PATH.match(name):  # "my_attacks:Suffix"
        target = import_object(name, key)
        if not (isinstance(target, type) and issubclass(target, Attack)):
            raise ValueError(f"Expected `{key}` {name!r} to name a subclass of freqlens.data.Attack but it "
                             f"names {target!r}.")
        return register_attack(target.__dict__.get("name") or name, target)
    if found is None:
        raise ValueError(
            f"Expected the attack name (`{key}`) to be one of {sorted(_REGISTRY)} but got "
            f"{name!r}; register your own with freqlens.data.register_attack, or name it by import "
            "path (`module:Class`)."
        )
    return found


def make_attack(name: str, /, **options: Any) -> Attack:
    """Build a registered attack by name.

    Args:
        name: a key of :data:`ATTACKS` (e.g. ``"badnets"`` or ``"addsent"``), any case.
        **options: the attack's arguments, e.g. ``insertions=1``.

    Returns:
        The attack.

    Raises:
        ValueError: if ``name`` is not a registered attack, or an option's value is bad.
        TypeError: if an option is not an argument of that attack, or has the wrong type.

    Example:
        >>> make_attack("badnets", insertions=1, clean_label=False)
        BadNets(triggers=('cf', 'mn', 'bb', 'tq'), insertions=1, clean_label=False)
    """
    return attack_class(name).from_options(options)


def remove_trigger(attack: Attack, text: str) -> str:
    """The control sentence of a triggered one: ``attack.remove_trigger(text)``.

    BadNets: every word equal to a trigger token is dropped. AddSent: every
    occurrence of the sentence between word boundaries is removed and the
    spaces collapsed. Natural occurrences of a trigger are removed too.

    Args:
        attack: the attack whose trigger to remove (``removes_trigger`` True).
        text: a triggered text.

    Returns:
        The text without the trigger.

    Raises:
        TypeError: if ``attack`` has no removable trigger, or its
            ``remove_trigger`` returns something other than a string.

    Example:
        >>> remove_trigger(BadNets(), "cf a fine bb film")
        'a fine film'
    """
    if not getattr(attack, "removes_trigger", False):
        raise TypeError(
            f"Expected `attack` to have a removable trigger (`removes_trigger` True: BadNets or "
            f"AddSent or an attack of your own that defines `remove_trigger`) but got "
            f"{type(attack).__name__} "
            f"{getattr(attack, 'name', '')!r}, which has none."
        )
    result = attack.remove_trigger(text)
    if not isinstance(result, str):
        raise TypeError(
            f"Expected `remove_trigger` of attack {attack.name!r} to return a string but it "
            f"returned {type(result).__name__}."
        )
    return result


for _cls in (BadNets, AddSent, StyleBkd, SynBkd):
    register_attack(_cls.name, _cls)
del _cls


def _check_poison_args(
    clean: CleanDataset, attack: Attack, rate: float, target_label: int
) -> float:
    if not isinstance(clean, CleanDataset):
        raise TypeError(f"Expected `clean` to be a CleanDataset but got {type(clean).__name__}.")
    if not isinstance(attack, Attack) and not (
        isinstance(getattr(attack, "name", None), str) and hasattr(attack, "clean_label")
        and callable(getattr(attack, "apply", None))
    ):
        raise TypeError(
            f"Expected `attack` to have `name`, `clean_label` and `apply(text, rng)` (see "
            f"freqlens.data.Attack) but got {type(attack).__name__}."
        )
    if not getattr(attack, "generates", True):
        raise ValueError(
            f"Expected `attack` to be one that can trigger a text (`generates` True) but attack "
            f"{attack.name!r} has no generator in freqlens: its poisoned sentences exist only as "
            f"OpenBackdoor folders; load one with freqlens.data.load_openbackdoor."
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
        attack: the attack (e.g. :class:`BadNets`, :class:`AddSent`, a registered
            :class:`Attack` of your own, or any object with ``name``,
            ``clean_label`` and ``apply(text, rng)``).
        rate: the share of training examples to poison, in [0, 1].
        target_label: the class the trigger maps to, in [0, num_classes).
        seed: seed of every random choice (train, dev and test draw from
            independent streams).

    Returns:
        The :class:`PoisonedDataset`, named e.g. "addsent rate 0.1 on sst-2/raw".

    Raises:
        TypeError: if ``clean`` is not a CleanDataset or ``attack`` not an attack.
        ValueError: if ``rate`` or ``target_label`` is out of range, the
            attack has no generator (``generates`` False: ``stylebkd``,
            ``synbkd``), a clean-label attack has too few target-class
            examples, or a dev/test split has no non-target example.

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


def _options(attack: Any) -> dict:
    """The settings of an attack (:meth:`Attack.options`; a dataclass's fields for another
    object with ``apply``, else nothing)."""
    if isinstance(attack, Attack):
        return attack.options()
    if dataclasses.is_dataclass(attack):
        return {f.name: getattr(attack, f.name) for f in fields(attack)}
    return {}
