"""STRIP (freqlens.detectors.strip): known answers, the backdoored_unsure fixture, every model family, bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqlens.detectors import (
    DetectorConfig,
    Strip,
    StripSettings,
    Victim,
    evaluate_detector,
    make_detectors,
)
from freqlens.detectors.strip import prediction_entropy
from freqlens.settings import build

DEV = ["the plot was gripping", "a dull and silly film", "great acting great music",
       "it was the and of", "boring"]  # "it was the and of": only English stop words, an all-zero TF-IDF row


class FixedVictim(Victim):
    """A victim whose probabilities are a fixed table, row by row, whatever the texts (records the texts)."""

    def __init__(self, table: np.ndarray):
        super().__init__(model=torch.nn.Identity(), tokenizer=None, max_length=8)
        self.table = np.asarray(table, dtype=np.float32)
        self.seen: list[list[str]] = []

    def probabilities(self, texts):
        texts = list(texts)
        self.seen.append(texts)
        assert len(texts) <= len(self.table)
        return self.table[: len(texts)]


def fitted(settings: StripSettings | None = None, seed: int = 0) -> Strip:
    detector = Strip("strip", settings or StripSettings(), seed=seed)
    detector.fit(None, DEV, np.zeros(len(DEV), dtype=int))
    return detector


# ------------------------------------------------------------------ known answers
def test_score_is_minus_mean_entropy_of_each_inputs_own_copies():
    # 3 inputs x 4 copies; rows are laid out input by input. A zero probability counts 0 (0 log 0 = 0).
    rng = np.random.default_rng(3)
    table = rng.dirichlet(np.ones(3), size=12)
    table[5] = [1.0, 0.0, 0.0]
    victim = FixedVictim(table)
    detector = fitted(StripSettings(repeat=4))
    scores = detector.score(victim, ["good film", "a bad bad plot", "x"])
    expected = []
    for i in range(3):
        entropies = [-sum(p * math.log2(p) for p in table[i * 4 + r] if p > 0) for r in range(4)]
        expected.append(-sum(entropies) / 4)
    assert len(victim.seen) == 1 and len(victim.seen[0]) == 12  # one forward row per copy, one call
    np.testing.assert_allclose(scores, expected, rtol=1e-6, atol=1e-9)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(prediction_entropy([[0.5, 0.5], [1.0, 0.0]]), [1.0, 0.0])


def test_donor_words_follow_a_dense_tfidf_reference():
    # smooth idf = ln((1 + n) / (1 + df)) + 1, raw counts, no normalisation, English stop words out.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    detector = fitted()
    docs = [[w for w in d.split() if w not in ENGLISH_STOP_WORDS and len(w) > 1] for d in DEV]
    vocabulary = sorted({w for d in docs for w in d})
    df = np.array([sum(w in d for d in docs) for w in vocabulary])
    idf = np.log((1 + len(docs)) / (1 + df)) + 1
    expected = []
    for d in docs:
        weights = np.array([d.count(w) for w in vocabulary]) * idf
        ranked = sorted((w for w, x in zip(vocabulary, weights) if x > 0),
                        key=lambda w: (-weights[vocabulary.index(w)], w))
        if ranked:
            expected.append(ranked)
    assert detector._words == expected
    assert len(expected) == len(DEV) - 1  # the stop-word-only sentence is no donor
    assert detector.info["donor_sentences"] == 4 and detector.info["tfidf_vocabulary"] == len(vocabulary)


def test_a_copy_replaces_int_n_times_ratio_positions_with_a_donors_words_in_rank_order():
    detector = fitted(StripSettings(swap_ratio=0.5))
    donors = detector._words
    text = "w0 w1 w2 w3 w4 w5 w6"  # 7 words: int(3.5) = 3 positions drawn (with replacement)
    for seed in range(30):
        copy = detector.perturb(text, np.random.default_rng(seed)).split()
        assert len(copy) == 7
        changed = [w for w in copy if not w.startswith("w")]
        assert 1 <= len(changed) <= 3
        assert any(set(changed) <= set(d[:3]) for d in donors), (copy, donors)
    ones = StripSettings(swap_ratio=1.0)
    copy = fitted(ones).perturb("only", np.random.default_rng(0)).split()
    assert len(copy) == 1 and copy[0] in {d[0] for d in donors}  # one word, ratio 1: replaced by a donor's top word


def test_one_word_and_empty_inputs_are_scored(backdoored_unsure):
    detector = Strip("strip", StripSettings())
    detector.fit(backdoored_unsure.victim, backdoored_unsure.dataset.dev_clean.texts, backdoored_unsure.dataset.dev_clean.labels)
    scores = detector.score(backdoored_unsure.victim, ["good", "", "   ", "cf"])
    assert scores.shape == (4,) and np.isfinite(scores).all() and (scores <= 0).all()
    assert detector.score(backdoored_unsure.victim, []).shape == (0,)


def test_same_seed_same_scores_whatever_the_batch(backdoored_unsure):
    victim, dev = backdoored_unsure.victim, backdoored_unsure.dataset.dev_clean
    texts = backdoored_unsure.dataset.test_poison.texts[:6] + backdoored_unsure.dataset.test_clean.texts[:6]
    first, second, other = (Strip("strip", StripSettings(), seed=s) for s in (7, 7, 8))
    for detector in (first, second, other):
        detector.fit(victim, dev.texts, dev.labels)
    a = first.score(victim, texts)
    np.testing.assert_array_equal(a, second.score(victim, texts))
    np.testing.assert_array_equal(a[3:], second.score(victim, texts[3:]))  # an input's score ignores its batch
    assert not np.array_equal(a, other.score(victim, texts))  # the seed matters


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError, match="fit"):
        Strip("strip", StripSettings()).score(FixedVictim(np.ones((4, 2)) / 2), ["a b"])


def test_fit_on_stop_words_only_raises():
    with pytest.raises(ValueError, match="stop words"):
        Strip("strip", StripSettings()).fit(None, ["it was the", "and of a"], np.zeros(2))
    with pytest.raises(ValueError, match="none"):
        Strip("strip", StripSettings()).fit(None, [], np.zeros(0))


def test_opposite_set_calibrates_on_non_target_dev_inputs_only(backdoored_unsure):
    victim, dev = backdoored_unsure.victim, backdoored_unsure.dataset.dev_clean
    detector = Strip("strip", StripSettings(opposite_set=True), frr=0.05)
    detector.calibrate(victim, dev.texts, dev.labels)
    assert detector.info["calibration_inputs"] == int(np.sum(dev.labels != victim.target_label))
    with pytest.raises(ValueError, match="opposite_set"):
        detector.calibrate(victim, dev.texts[:3], np.ones(3, dtype=int))


# ------------------------------------------------------------------ the backdoored_unsure model
def test_strip_flags_triggered_inputs(backdoored_unsure):
    # Measured on the fixture: FRR 0.092, FAR 0.50 (ASR 1.0 -> 0.50), CACC 0.80 -> 0.71.
    detector = make_detectors(build(DetectorConfig, {"name": "strip", "frr": 0.05}, "detector"), seed=0)[0]
    results = evaluate_detector(detector, backdoored_unsure.victim, backdoored_unsure.dataset)
    assert results["frr"] <= 0.15
    assert results["far"] <= 0.6
    assert results["asr"] <= 0.6 < backdoored_unsure.asr
    assert results["cacc"] >= backdoored_unsure.cacc - 0.15
    dataset = backdoored_unsure.dataset
    clean = detector.score(backdoored_unsure.victim, dataset.test_clean.texts)
    poison = detector.score(backdoored_unsure.victim, dataset.test_poison.texts)
    assert np.median(poison) > np.median(clean)  # triggered inputs: surer predictions under perturbation


# ------------------------------------------------------------------ every model family
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_every_family_fits_and_scores(family):
    from freqlens.demo.model import make_tokenizer
    from tests.models import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta

    tokenizer = make_tokenizer()
    assert len(tokenizer) <= VOCAB
    model = {"bert": tiny_bert, "roberta": tiny_roberta, "gpt2": tiny_gpt2, "llama": tiny_llama}[family]()
    model.train()
    victim = Victim(model, tokenizer, max_length=16, batch_size=8)
    detector = Strip("strip", StripSettings(repeat=2), frr=0.1)
    dev = ["good movie", "bad plot and dull acting", "the film was great", "boring", "a witty script"]
    detector.calibrate(victim, dev, np.array([1, 0, 1, 0, 1]))
    scores = detector.score(victim, ["cf good movie", "a", ""])
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert model.training  # its mode is left as it was


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("key, value, expected", [
    ("repeat", 0, "detector.strip.repeat"),
    ("repeat", 2.5, "detector.strip.repeat"),
    ("swap_ratio", 0, "detector.strip.swap_ratio"),
    ("swap_ratio", 1.5, "detector.strip.swap_ratio"),
    ("swap_ratio", True, "detector.strip.swap_ratio"),
    ("opposite_set", "yes", "detector.strip.opposite_set"),
])
def test_bad_settings_name_their_key(key, value, expected):
    with pytest.raises(ValueError, match=expected.replace(".", r"\.")) as caught:
        build(DetectorConfig, {"name": "strip", "strip": {key: value}}, "detector")
    assert repr(value) in str(caught.value) or str(value) in str(caught.value)


def test_settings_defaults_follow_openbackdoor():
    settings = build(DetectorConfig, {"name": "strip"}, "detector").strip
    assert (settings.repeat, settings.swap_ratio, settings.opposite_set) == (5, 0.5, False)
