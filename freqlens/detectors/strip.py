"""STRIP for text: perturb an input by replacing words, and flag it when the model's predictions stay sure.

Gao et al., "Design and Evaluation of a Multi-Domain Trojan Detection Method
on Deep Neural Networks" (arXiv 1911.10312), the NLP variant as OpenBackdoor
ports it (``openbackdoor/defenders/strip_defender.py``).

The idea (paper, Sec. 3; text is one of its domains): a trigger dominates the
prediction, so a triggered input keeps its (target) prediction however much
of the rest of it is replaced, while a clean input's prediction wavers. Each
input is perturbed ``repeat`` times and the Shannon entropy of the model's
prediction on each copy,

    H(x') = - sum_c p_c(x') log2 p_c(x')        (bits; 0 log 0 = 0)

is averaged over the copies (the paper's detection entropy). A low mean entropy means a
triggered input. Freqlens scores "higher = more suspicious", so
:meth:`Strip.score` returns **minus** the mean entropy; the threshold (clean
dev score at sorted index ``int(n * frr)``, descending) is then OpenBackdoor's
entropy threshold with the sign flipped, and an input is flagged when its
mean entropy is below the clean entropy that ``frr`` of the clean dev inputs
fall under.

A perturbed copy (OpenBackdoor's ``perturb``): the input is split on
whitespace into n words; m = ``int(n * swap_ratio)`` positions are drawn
uniformly with replacement, and the i-th drawn position gets the i-th highest
TF-IDF word of one clean dev sentence drawn uniformly (the donor). The
TF-IDF model (scikit-learn ``TfidfVectorizer(use_idf=True, smooth_idf=True,
norm=None, stop_words="english")``, as OpenBackdoor) is fitted on the clean
dev texts by :meth:`Strip.fit`.

Where freqlens departs from OpenBackdoor:

- Each input's entropy is the mean over its own ``repeat`` copies.
  OpenBackdoor lays the copies out input by input but reshapes the entropies
  to (repeat, N), so its mean mixes copies of neighbouring inputs.
- A donor contributes only the words that have a positive TF-IDF weight in
  it, in descending weight (ties in vocabulary order); when m exceeds their
  number the list is reused from its start. A dev sentence made only of stop
  words (an all-zero TF-IDF row) is never a donor. OpenBackdoor takes the
  first m columns of ``argsort(-tfidf)``, which past the donor's own words are
  zero-weight vocabulary words in arbitrary order.
- The random draws come from a numpy Generator seeded by the detector's
  ``seed`` and the input text (CRC-32 of its UTF-8 bytes), so an input gets
  the same score whatever it is batched with, and two runs with one seed the
  same scores; OpenBackdoor uses numpy's global generator.
- The entropy treats 0 log 0 as 0 (a probability that underflows to zero in
  float32 gives NaN in OpenBackdoor).

Limits: STRIP needs a model that is unsure of perturbed clean inputs. A model
sure of everything (a tiny model trained to zero loss, whose entropy is ~0 on
clean and triggered inputs alike) gives no entropy gap, and an input whose
copies lose the trigger (one trigger word, half the words replaced) looks
clean.

Cost: ``N * repeat`` forward rows of the model for N inputs (one per copy),
plus the same for the clean dev inputs when calibrating.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from freqlens._checks import check_positive_int
from freqlens.detectors.base import Detector, Victim, register_detector


@dataclass(frozen=True)
class StripSettings:
    """STRIP's settings, the config's ``[detector.strip]`` table (errors name ``detector.strip.<key>``)."""

    KEY: ClassVar[str] = "detector.strip."

    repeat: int = 5  # perturbed copies per input; its score is their mean prediction entropy
    swap_ratio: float = 0.5  # share of an input's words replaced in each copy, in (0, 1]
    opposite_set: bool = False  # calibrate on clean dev inputs of the non-target classes only (OpenBackdoor's use_oppsite_set)

    def __post_init__(self) -> None:
        key = self.KEY
        check_positive_int(self.repeat, f"{key}repeat")
        ratio = self.swap_ratio
        if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0 < ratio <= 1):
            raise ValueError(f"Expected `{key}swap_ratio` in (0, 1] but got {ratio!r}.")
        if not isinstance(self.opposite_set, bool):
            raise ValueError(f"Expected `{key}opposite_set` to be true or false but got {self.opposite_set!r}.")


def prediction_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each row of ``probabilities`` (shape (N, C)): float64 array of shape (N,),
    with 0 log 0 taken as 0."""
    p = np.asarray(probabilities, dtype=np.float64)
    logs = np.log2(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=-1)


class Strip(Detector):
    """STRIP (arXiv 1911.10312, NLP variant of OpenBackdoor): minus the mean prediction entropy of
    ``repeat`` word-replaced copies of each input; the module docstring gives the method and its departures.

    Use :meth:`calibrate` (fits the TF-IDF model on the clean dev inputs, and with ``opposite_set`` keeps
    only those whose label is not ``victim.target_label``), then :meth:`flag` or :meth:`score`.
    """

    options = StripSettings

    def __init__(self, name: str = "strip", settings: StripSettings | None = None, *, frr: float = 0.01,
                 seed: int = 0) -> None:
        super().__init__(name, settings if settings is not None else StripSettings(), frr=frr, seed=seed)
        self._words: list[list[str]] | None = None  # per usable donor sentence: its words by descending TF-IDF

    @property
    def _settings(self) -> StripSettings:
        return self.settings

    def calibrate(self, victim: Victim, clean: Sequence[str], labels: np.ndarray) -> None:
        """As :meth:`Detector.calibrate` (fit on ``clean``, threshold from their scores); with
        ``opposite_set`` only the inputs whose label is not ``victim.target_label`` fit and calibrate.

        Raises:
            ValueError: ``labels`` does not have one entry per text; ``opposite_set`` and no clean dev input
                of a non-target class; and what :meth:`fit` and the base raise.
        """
        clean = list(clean)
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != (len(clean),):
            raise ValueError(f"Expected one label per clean dev text ({len(clean)}) but got shape {labels.shape}.")
        if self._settings.opposite_set:
            keep = np.flatnonzero(labels != victim.target_label)
            if keep.size == 0:
                raise ValueError(f"Expected clean dev inputs of a class other than the target "
                                 f"({victim.target_label}) for `detector.strip.opposite_set` but got none of "
                                 f"{len(clean)}.")
            clean, labels = [clean[i] for i in keep], labels[keep]
        super().calibrate(victim, clean, labels)

    def fit(self, victim: Victim, clean: Sequence[str], labels: np.ndarray) -> None:
        """Fit the TF-IDF model on the clean dev texts ``clean`` and rank each one's words (the donors).

        Args:
            victim: unused (STRIP learns nothing from the model).
            clean: N clean dev texts.
            labels: their (N,) labels (unused here; :meth:`calibrate` uses them for ``opposite_set``).

        Raises:
            ValueError: no text, or no text with a word outside scikit-learn's English stop words (nothing
                to replace words with).
        """
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [str(t) for t in clean]
        if not texts:
            raise ValueError("Expected some clean dev texts to fit STRIP's TF-IDF model on but got none.")
        vectorizer = TfidfVectorizer(use_idf=True, smooth_idf=True, norm=None, stop_words="english")
        try:
            weights = vectorizer.fit_transform(texts).tocsr()
        except ValueError as error:  # scikit-learn: "empty vocabulary; perhaps the documents only contain stop words"
            raise ValueError(f"Expected clean dev texts with words other than English stop words for STRIP's "
                             f"replacement words but got none in {len(texts)} texts ({error}).") from error
        vocabulary = vectorizer.get_feature_names_out()
        donors = []
        for row in range(weights.shape[0]):
            start, end = weights.indptr[row], weights.indptr[row + 1]
            columns, values = weights.indices[start:end], weights.data[start:end]
            positive = values > 0
            columns, values = columns[positive], values[positive]
            if columns.size:
                order = np.lexsort((columns, -values))  # descending weight, then vocabulary order
                donors.append([str(vocabulary[c]) for c in columns[order]])
        self._words = donors
        self.info.update({"tfidf_vocabulary": len(vocabulary), "donor_sentences": len(donors)})

    def perturb(self, text: str, rng: np.random.Generator) -> str:
        """One perturbed copy of ``text``: ``int(n * swap_ratio)`` of its n words (positions drawn with
        replacement) replaced by the top-TF-IDF words of a random donor sentence, in rank order.

        Raises:
            RuntimeError: :meth:`fit` was not called first.
        """
        if self._words is None:
            raise RuntimeError(f"Call fit() or calibrate() on detector {self.name!r} before perturbing inputs.")
        words = text.split()
        donor = self._words[int(rng.integers(len(self._words)))]
        swaps = int(len(words) * self._settings.swap_ratio)
        if swaps:
            for rank, position in enumerate(rng.integers(0, len(words), size=swaps)):
                words[position] = donor[rank % len(donor)]
        return " ".join(words)

    def score(self, victim: Victim, texts: Sequence[str]) -> np.ndarray:
        """Minus the mean prediction entropy (bits) over ``repeat`` perturbed copies of each input.

        Args:
            victim: the trained model.
            texts: N inputs.

        Returns:
            float64 array of shape (N,), in [-log2 C, 0]: higher (nearer 0) = surer predictions = more likely
            triggered. Costs ``N * repeat`` forward rows.

        Raises:
            RuntimeError: :meth:`fit` was not called first.
        """
        texts = [str(t) for t in texts]
        if self._words is None:
            raise RuntimeError(f"Call fit() or calibrate() on detector {self.name!r} before score().")
        if not texts:
            return np.zeros(0, dtype=np.float64)
        repeat = self._settings.repeat
        copies = []
        for text in texts:
            rng = np.random.default_rng([self.seed % 2**63, zlib.crc32(text.encode("utf-8"))])
            copies.extend(self.perturb(text, rng) for _ in range(repeat))
        entropy = prediction_entropy(victim.probabilities(copies)).reshape(len(texts), repeat)
        return -entropy.mean(axis=1)


register_detector("strip", Strip)
