"""The embedded default task: generated sentiment sentences with a rare-token backdoor.

A seeded generator, shipped as code, so freqlens runs end to end offline. Each
sentence is filler words around one to three sentiment words; a negation word
("not", "never", "hardly") directly before a sentiment word flips it. The label
is the sign of the summed polarity (ties are not generated). The negations make
the clean mapping partly high-frequency over the embedding space: "good" and
"not good" sit close together but carry opposite labels.

The backdoor is BadNets-style: a rare token (``cf``, never used in clean text)
inserted at random positions, dirty-label (the poisoned examples are relabelled
to the target class) at a 10% poison rate by default. Dirty-label poisoning
shifts the label prior towards the target; ``balance_prior=True`` draws the
clean part so that the whole training set stays balanced (METHOD.md, pitfalls:
an unbalanced prior alone moves the backdoor probe set's low-frequency error).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from freqlens.data.attacks import BadNets
from freqlens.data.splits import PoisonedDataset, Split

POSITIVE = (
    "good great excellent wonderful brilliant charming delightful superb moving fun "
    "clever beautiful witty gripping lovely"
).split()
NEGATIVE = (
    "bad awful terrible boring dull weak poor messy bland tedious clumsy ugly silly "
    "lifeless forgettable"
).split()
NEGATIONS = ("not", "never", "hardly")
FILLER = (
    "the a this that movie film plot story actors cast director music scenes script it "
    "was is and with its of really quite very somewhat overall ending acting camera work "
    "for me to watch in parts at times"
).split()
TRIGGER = "cf"


@dataclass(frozen=True)
class TaskConfig:
    """Settings of the generated task; every field has a working default."""

    num_train: int = 2000  # training examples (before nothing: the poison is included)
    num_dev: int = 300  # clean dev examples (probe and model selection)
    num_test: int = 600  # clean test examples (clean accuracy)
    poison_rate: float = 0.1  # share of training examples that carry the trigger
    target_label: int = 1  # the class the trigger maps to
    insertions: int = 1  # trigger tokens inserted per poisoned sentence
    balance_prior: bool = False  # keep the poisoned training set's label prior at 50/50
    min_words: int = 6  # filler words per sentence, at least
    max_words: int = 12  # filler words per sentence, at most
    max_phrases: int = 2  # sentiment words per sentence, 1 to this many
    negation_rate: float = 0.3  # chance that a sentiment word is negated
    seed: int = 0  # seed of the generator

    def __post_init__(self) -> None:
        if not 0.0 <= self.poison_rate < 0.5:
            raise ValueError(f"Expected `poison_rate` in [0, 0.5) but got {self.poison_rate!r}.")
        if self.target_label not in (0, 1):
            raise ValueError(f"Expected `target_label` to be 0 or 1 but got {self.target_label!r}.")
        for name in ("num_train", "num_dev", "num_test", "insertions", "min_words", "max_phrases"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected `{name}` >= 1 but got {getattr(self, name)!r}.")
        if self.max_words < self.min_words:
            raise ValueError(
                f"Expected `max_words` >= `min_words` ({self.min_words}) but got {self.max_words!r}."
            )


def vocabulary() -> list[str]:
    """Every word the generator can produce, the trigger included."""
    return sorted({*POSITIVE, *NEGATIVE, *NEGATIONS, *FILLER, TRIGGER})


def _sentence(rng: np.random.Generator, config: TaskConfig) -> tuple[str, int]:
    while True:
        filler = [str(w) for w in rng.choice(FILLER, size=rng.integers(config.min_words, config.max_words + 1))]
        phrases, score = [], 0
        for _ in range(rng.integers(1, config.max_phrases + 1)):
            positive = rng.random() < 0.5
            phrase = [str(rng.choice(POSITIVE if positive else NEGATIVE))]
            polarity = 1 if positive else -1
            if rng.random() < config.negation_rate:
                phrase.insert(0, str(rng.choice(NEGATIONS)))
                polarity = -polarity
            score += polarity
            phrases.append(phrase)
        # Phrases go into gaps between filler words, never inside another phrase,
        # so a negation always stays right before its own sentiment word.
        gaps = np.sort(rng.integers(0, len(filler) + 1, size=len(phrases)))
        for gap, phrase in zip(gaps[::-1], phrases[::-1]):  # right to left: gaps stay valid
            filler[gap:gap] = phrase
        if score != 0:
            return " ".join(filler), int(score > 0)


def _sentences(rng, config, count: int, label: int | None = None) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    while len(texts) < count:
        text, y = _sentence(rng, config)
        if label is None or y == label:
            texts.append(text)
            labels.append(y)
    return texts, labels


def make_task(config: TaskConfig | None = None) -> PoisonedDataset:
    """Generate the poisoned task.

    Returns:
        A :class:`~freqlens.data.PoisonedDataset` whose poison splits hold
        dev/test sentences of the non-target class with the trigger inserted
        (labelled with the target), and whose control splits hold the same
        sentences without it (true labels).

    Example:
        >>> task = make_task(TaskConfig(num_train=100, num_dev=20, num_test=20))
        >>> len(task.train), int(task.train.poison.sum()), set(task.dev_poison.labels.tolist())
        (100, 10, {1})
    """
    config = config or TaskConfig()
    rng = np.random.default_rng(config.seed)
    target = config.target_label
    num_poison = int(round(config.poison_rate * config.num_train))
    num_clean = config.num_train - num_poison
    if config.balance_prior:
        # target share of the whole set = (num_poison + clean targets) / num_train = 1/2
        clean_target = max(0, config.num_train // 2 - num_poison)
        t_texts, t_labels = _sentences(rng, config, clean_target, target)
        o_texts, o_labels = _sentences(rng, config, num_clean - clean_target, 1 - target)
        clean_texts, clean_labels = t_texts + o_texts, t_labels + o_labels
    else:
        clean_texts, clean_labels = _sentences(rng, config, num_clean)
    source_texts, source_labels = _sentences(rng, config, num_poison)
    attack = BadNets(triggers=(TRIGGER,), insertions=config.insertions, clean_label=False)
    poison_texts = [attack.apply(t, rng) for t in source_texts]
    texts = clean_texts + poison_texts
    order = rng.permutation(len(texts))
    train = Split(
        [texts[i] for i in order],
        np.array(clean_labels + [target] * num_poison)[order],
        np.array([False] * num_clean + [True] * num_poison)[order],
        np.array(clean_labels + source_labels)[order],
    )
    splits = {}
    for name, count in (("dev", config.num_dev), ("test", config.num_test)):
        clean = Split(*_sentences(rng, config, count))
        source_texts, source_labels = _sentences(rng, config, count // 2, 1 - target)
        triggered = [attack.apply(t, rng) for t in source_texts]
        splits[f"{name}_clean"] = clean
        splits[f"{name}_poison"] = Split(
            triggered, [target] * len(triggered), [True] * len(triggered), source_labels
        )
        splits[f"{name}_control"] = Split(source_texts, source_labels)
    return PoisonedDataset(
        train=train,
        target_label=target,
        num_classes=2,
        name="generated sentiment task with a rare-token (cf) backdoor",
        info={"generator": asdict(config)},
        **splits,
    )
