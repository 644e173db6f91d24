"""ONION (freqlens.detectors.onion): perplexities against a dense reference, the removal rule on a stub
language model, a tiny GPT-2 trained on clean sentences removing the ``cf`` trigger from the backdoored
fixture's inputs, loading the language model by folder and its errors, and the settings' checks."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from freqlens.demo.model import make_tokenizer
from freqlens.detectors import (
    DetectorConfig,
    Onion,
    OnionSettings,
    Victim,
    evaluate_detector,
    make_detectors,
)


# ------------------------------------------------------------------ helpers and fixtures
def tiny_causal_lm(family: str, tokenizer, seed: int = 0, *, layers: int = 1, hidden: int = 32, dropout=0.0):
    """A small randomly initialised causal LM over ``tokenizer``'s vocabulary (GPT-2 or Llama)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    ids = {"bos_token_id": tokenizer.cls_token_id, "eos_token_id": tokenizer.sep_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "gpt2":
            config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=hidden, n_layer=layers, n_head=2,
                                resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, **ids)
            return GPT2LMHeadModel(config)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                             max_position_embeddings=32, **ids)
        return LlamaForCausalLM(config)


def dense_perplexity(model: nn.Module, ids: list[int]) -> float:
    """exp(mean next-token cross-entropy) of one unpadded sentence, by hand (numpy log-softmax)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    nll = [-log_probs[t, ids[t + 1]] for t in range(len(ids) - 1)]
    return math.exp(float(np.mean(nll)))


class WordTokenizer:
    """A tokenizer without special tokens (as GPT-2's adds none): one id per whitespace word."""

    pad_token_id = None
    eos_token_id = 0

    def __init__(self, words):
        self.vocab = {w: i + 1 for i, w in enumerate(words)}

    def __call__(self, texts, truncation=True, max_length=None, padding=False):
        ids = [[self.vocab[w] for w in t.split()] for t in texts]
        return {"input_ids": [row[:max_length] if truncation and max_length else row for row in ids]}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def trained_lm(backdoored, tokenizer):
    """A 1-layer GPT-2 (hidden 32) trained for 10 epochs on the fixture's clean training sentences, which
    never hold the trigger ``cf`` (so ``cf`` gets a high surprisal). About 1 s on one thread."""
    clean = [t for t, p in zip(backdoored.dataset.train.texts, backdoored.dataset.train.poison) if not p]
    assert clean and not any("cf" in t.split() for t in clean)
    lm = tiny_causal_lm("gpt2", tokenizer, seed=0)
    encoded = tokenizer(clean, padding=True, return_tensors="pt")
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
        for _ in range(10):
            order = torch.randperm(len(ids))
            for start in range(0, len(ids), 32):
                rows = order[start:start + 32]
                loss = lm(input_ids=ids[rows], attention_mask=mask[rows], labels=labels[rows]).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return lm.eval()


# ------------------------------------------------------------------ (1) perplexity against a dense reference
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_perplexity_matches_dense_reference(tokenizer, family):
    lm = tiny_causal_lm(family, tokenizer, seed=1, layers=2)
    texts = ["good", "the movie was not good at all", "cf awful", "a very dull film with a bad script and cast",
             "it is", ""]
    reference = [dense_perplexity(lm, tokenizer([t])["input_ids"][0]) for t in texts]
    for batch_size in (1, 4, 32):  # mixed lengths per batch: padding must not count
        onion = Onion(settings=OnionSettings(batch_size=batch_size), lm=(lm, tokenizer))
        np.testing.assert_allclose(onion.perplexities(texts), reference, rtol=1e-5)
    # truncated to max_length LM tokens, as the tokenizer truncates (the demo's keeps [SEP] last)
    onion = Onion(settings=OnionSettings(max_length=4), lm=(lm, tokenizer))
    cut = [tokenizer([t], truncation=True, max_length=4)["input_ids"][0] for t in texts]
    assert max(map(len, cut)) == 4
    truncated = [dense_perplexity(lm, ids) for ids in cut]
    np.testing.assert_allclose(onion.perplexities(texts), truncated, rtol=1e-5)
    assert onion.info["lm_rows"] == len(texts)


def test_perplexity_of_a_single_token_is_nan_and_padding_is_masked(tokenizer):
    """A tokenizer without special tokens: one word = one token = no next-token loss (NaN). Padding a
    short sentence next to a long one changes nothing (OpenBackdoor's GPT2LM would average over it)."""
    words = ["good", "bad", "the", "movie", "was"]
    lm = tiny_causal_lm("gpt2", tokenizer, seed=2)
    onion = Onion(settings=OnionSettings(batch_size=8), lm=(lm, WordTokenizer(words)))
    values = onion.perplexities(["good", "the movie", "the movie was good bad the movie was"])
    assert np.isnan(values[0]) and np.isfinite(values[1:]).all()
    alone = Onion(settings=OnionSettings(batch_size=1), lm=(lm, WordTokenizer(words))).perplexities(["the movie"])
    np.testing.assert_allclose(values[1], alone[0], rtol=1e-6)


def test_given_model_mode_is_restored_and_dropout_is_off(tokenizer):
    lm = tiny_causal_lm("gpt2", tokenizer, seed=3, dropout=0.5).train()
    onion = Onion(lm=(lm, tokenizer))
    first = onion.perplexities(["the movie was good", "a dull film"])
    second = onion.perplexities(["the movie was good", "a dull film"])
    assert lm.training  # left as it was
    np.testing.assert_array_equal(first, second)  # eval mode while scoring: no dropout


# ------------------------------------------------------------------ (3) the removal rule on a stub LM
class StubOnion(Onion):
    """Known perplexities per sentence; records what it was asked."""

    table: ClassVar[dict] = {"a b c": 10.0, "b c": 4.0, "a c": 10.0, "a b": 12.0,
             "x y": 5.0, "y": float("nan"), "x": 1.0}

    def perplexities(self, texts, device=None):
        self.asked = getattr(self, "asked", []) + list(texts)
        return np.array([self.table[t] for t in texts], dtype=np.float64)


def stub(threshold: float) -> StubOnion:
    words = ["a", "b", "c", "x", "y", "hello"]
    return StubOnion(settings=OnionSettings(threshold=threshold), lm=(nn.Linear(1, 1), WordTokenizer(words)))


@pytest.mark.parametrize("threshold, expected", [
    (0.0, "c"),  # f = (6, 0, -2): 6 >= 0 and 0 >= 0 go (OpenBackdoor's >= bar)
    (-2.0, ""),  # every word goes
    (1.0, "b c"),
    (6.0, "b c"),  # f_a = 6 >= 6
    (6.5, "a b c"),
])
def test_removal_rule(threshold, expected):
    onion = stub(threshold)
    assert onion.repair(None, ["a b c"]) == [expected]
    np.testing.assert_allclose(onion.suspicion(None, ["a b c"])[0], [6.0, 0.0, -2.0])


def test_short_inputs_kept_and_nan_suspicion_kept():
    onion = stub(0.0)
    texts = ["hello", "", "  hello  ", "x y", "  a   b\tc "]
    # "x y": f_x = 5 - ppl("y") = NaN (kept), f_y = 5 - ppl("x") = 4 (removed); whitespace is normalised
    assert onion.repair(None, texts) == ["hello", "", "  hello  ", "x", "c"]
    assert not {"hello", ""} & set(onion.asked)  # at most one word: never scored
    assert onion.info["threshold"] == 0.0 and onion.info["lm"] == "Linear (given)"


def test_word_past_the_window_is_kept(tokenizer):
    """Removing a word past the LM's window leaves what it sees unchanged: not judged, kept (OpenBackdoor
    would score it 0 and remove it at bar 0)."""
    words = ["a", "b", "c", "d", "e"]
    onion = StubOnion(settings=OnionSettings(threshold=0.0, max_length=2), lm=(nn.Linear(1, 1), WordTokenizer(words)))
    onion.table = {"a b c d e": 3.0, "b c d e": 1.0, "a c d e": 5.0}
    assert onion.repair(None, ["a b c d e"]) == ["b c d e"]
    assert sorted(onion.asked) == sorted(onion.table)  # "a b d e" etc. were not scored


# ------------------------------------------------------------------ (2) the trigger on the backdoored fixture
def test_trained_lm_removes_the_trigger(backdoored, trained_lm, tokenizer):
    dataset = backdoored.dataset
    onion = Onion(lm=(trained_lm, tokenizer))
    repaired = onion.repair(backdoored.victim, dataset.test_poison.texts)
    assert all("cf" in t.split() for t in dataset.test_poison.texts)
    cleaned = float(np.mean(["cf" not in t.split() for t in repaired]))
    assert cleaned >= 0.8, f"ONION removed every cf from only {cleaned:.3f} of the triggered inputs"
    words = sum(len(t.split()) for t in dataset.test_poison.texts)
    assert onion.info["lm_rows"] == words + len(dataset.test_poison)  # one row per word plus one per sentence


@pytest.mark.parametrize("threshold, clean_words", [(0.0, (1.0, 5.0)), (20.0, (0.0, 0.3))])
def test_evaluate_detector_on_the_backdoored_fixture(backdoored, trained_lm, tokenizer, threshold, clean_words):
    """OpenBackdoor's bar 0 removes ~2.8 words per clean input here (CACC drops a little); a bar picked on
    clean data, as the paper does, removes almost none and still every cf (measured: ASR 1.0 -> 0.1,
    CACC 0.933 -> 0.908 at bar 0 and 0.933 at bar 20)."""
    victim, dataset = backdoored.victim, backdoored.dataset
    before = {name: p.detach().clone() for name, p in victim.model.named_parameters()}
    results = evaluate_detector(Onion(settings=OnionSettings(threshold=threshold), lm=(trained_lm, tokenizer)),
                                victim, dataset)
    assert results["repairs"] is True and results["frr"] is None and results["far"] is None
    assert results["asr"] <= backdoored.asr - 0.6, results
    assert results["cacc"] >= backdoored.cacc - 0.1, results
    assert clean_words[0] <= results["words_removed_clean"] <= clean_words[1], results
    assert results["words_removed_triggered"] >= results["words_removed_clean"] + 1, results
    assert results["lm"] == "GPT2LMHeadModel (given)" and results["threshold"] == threshold
    assert not victim.model.training  # the fixture's mode, as it was
    assert all(torch.equal(p, before[name]) for name, p in victim.model.named_parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lm_runs_on_the_victim_device(tokenizer):
    lm = tiny_causal_lm("gpt2", tokenizer, seed=5)
    texts = ["the movie was good", "cf a dull film", "it is"]
    on_cpu = Onion(lm=(lm, tokenizer)).perplexities(texts)
    repaired_on_cpu = Onion(lm=(lm, tokenizer)).repair(None, texts)
    victim = Victim(tiny_classifier("bert", tokenizer).cuda(), tokenizer, 16)
    onion = Onion(lm=(lm, tokenizer))
    assert onion.repair(victim, texts) == repaired_on_cpu
    assert next(lm.parameters()).device.type == "cuda"  # moved to the victim's device
    np.testing.assert_allclose(onion.perplexities(texts), on_cpu, rtol=1e-4)


# ------------------------------------------------------------------ every victim family
def tiny_classifier(family: str, tokenizer, max_length: int = 16):
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if family == "bert":
            return BertForSequenceClassification(BertConfig(
                vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=max_length, pad_token_id=pad))
        if family == "roberta":
            return RobertaForSequenceClassification(RobertaConfig(
                vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=max_length + pad + 2, pad_token_id=pad))
        if family == "gpt2":
            return GPT2ForSequenceClassification(GPT2Config(
                vocab_size=vocab, n_positions=max_length, n_embd=16, n_layer=1, n_head=2, pad_token_id=pad,
                bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=max_length, pad_token_id=pad))


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_every_victim_family(backdoored, trained_lm, tokenizer, family):
    dataset = backdoored.dataset.capped(max_eval=12)
    model = tiny_classifier(family, tokenizer).train()
    victim = Victim(model, tokenizer, 16, batch_size=8, target_label=1)
    onion = Onion(lm=(trained_lm, tokenizer))
    results = evaluate_detector(onion, victim, dataset)
    assert {"cacc", "asr", "false_trigger_rate", "lm", "words_removed_clean"} <= set(results)
    assert model.training  # left as it was
    # the repair depends on the language model only, not on the victim
    assert onion.repair(victim, dataset.test_poison.texts) == onion.repair(None, dataset.test_poison.texts)


# ------------------------------------------------------------------ loading settings.lm by folder
@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    lm = tiny_causal_lm("gpt2", tokenizer, seed=4)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, lm


def test_lm_loaded_from_folder(lm_folder, tokenizer):
    folder, lm = lm_folder
    settings = OnionSettings(lm=str(folder), batch_size=2)
    assert Onion.check_available(settings) == str(folder.resolve())
    onion = Onion(settings=settings)
    texts = ["the movie was good", "cf a dull film", "it is"]
    loaded = onion.perplexities(texts)
    np.testing.assert_allclose(loaded, Onion(lm=(lm, tokenizer)).perplexities(texts), rtol=1e-5)
    model, _ = onion.language_model()
    assert model is onion.language_model()[0] and not model.training  # loaded once, cached
    assert onion.repair(None, texts) == Onion(lm=(lm, tokenizer)).repair(None, texts)
    assert onion.info["lm"] == str(folder)


def test_make_detectors_builds_onion(lm_folder):
    folder, _ = lm_folder
    config = DetectorConfig(name="onion", onion={"lm": str(folder), "threshold": 1.5})
    (onion,) = make_detectors(config, seed=3)
    assert isinstance(onion, Onion) and onion.repairs
    assert onion.settings == OnionSettings(lm=str(folder), threshold=1.5)


# ------------------------------------------------------------------ (4) loading errors name detector.onion.lm
def test_missing_folder_fails_before_any_input(tmp_path):
    missing = str(tmp_path / "no" / "such-lm")
    with pytest.raises(ValueError, match=r"`detector\.onion\.lm`.*no/such-lm.*does not exist"):
        Onion.check_available(OnionSettings(lm=missing))
    onion = StubOnion(settings=OnionSettings(lm=missing))
    with pytest.raises(ValueError, match=r"`detector\.onion\.lm`"):
        onion.repair(None, ["a b c"])
    assert not hasattr(onion, "asked")  # nothing was scored


def test_hub_id_not_cached_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    settings = OnionSettings(lm="freqlens-test/no-such-language-model")
    for call in (lambda: Onion.check_available(settings), lambda: Onion(settings=settings).repair(None, ["a b"])):
        with pytest.raises(ValueError, match=r"`detector\.onion\.lm` 'freqlens-test/no-such-language-model'.*"
                                             r"not available offline \(HF_HUB_OFFLINE=1\).*download it first"):
            call()


def test_folder_that_is_not_a_causal_lm(tmp_path, tokenizer):
    classifier = tiny_classifier("bert", tokenizer)
    classifier.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"`detector\.onion\.lm`.*saved as \['BertForSequenceClassification'\]"):
        Onion.check_available(OnionSettings(lm=str(tmp_path / "bert")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"`detector\.onion\.lm`.*reading its config"):
        Onion(settings=OnionSettings(lm=str(tmp_path / "empty"))).language_model()


def test_folder_without_tokenizer(tmp_path, tokenizer):
    tiny_causal_lm("gpt2", tokenizer).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"`detector\.onion\.lm`.*loading its tokenizer.*empty vocabulary"):
        Onion.check_available(OnionSettings(lm=str(tmp_path / "lm")))
    tokenizer.save_pretrained(tmp_path / "lm")
    Onion.check_available(OnionSettings(lm=str(tmp_path / "lm")))  # with it: fine
    small = tiny_causal_lm("gpt2", tokenizer)
    small.resize_token_embeddings(len(tokenizer) - 10)
    small.save_pretrained(tmp_path / "small")
    tokenizer.save_pretrained(tmp_path / "small")
    with pytest.raises(ValueError, match=r"`detector\.onion\.lm`.*tokenizer has 76 tokens and the model embeds 66"):
        Onion.check_available(OnionSettings(lm=str(tmp_path / "small")))


# ------------------------------------------------------------------ (5) settings
@pytest.mark.parametrize("values, key", [
    ({"lm": ""}, "lm"), ({"lm": 3}, "lm"), ({"threshold": "high"}, "threshold"), ({"threshold": True}, "threshold"),
    ({"threshold": float("nan")}, "threshold"), ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
    ({"max_length": 1}, "max_length"), ({"bogus": 1}, "bogus"),
])
def test_bad_settings_name_the_key(values, key):
    with pytest.raises(ValueError, match=rf"detector\.onion\.{key}"):
        DetectorConfig(name="onion", onion=values)


def test_bad_constructor_arguments(tokenizer):
    with pytest.raises(TypeError, match="OnionSettings"):
        Onion(settings={"lm": "gpt2"})
    with pytest.raises(TypeError, match="pair"):
        Onion(lm=tiny_causal_lm("gpt2", tokenizer))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        Onion(lm=("gpt2", tokenizer))


def test_a_max_length_past_the_language_models_positions_is_cut_to_them(lm_folder, tokenizer):
    folder, lm = lm_folder  # n_positions 32: a longer row would index past the position table
    onion = Onion(settings=OnionSettings(lm=str(folder), max_length=96), lm=(lm, tokenizer))
    assert onion.max_length(lm) == 32
    long = " ".join(["the movie was good"] * 12)  # 48 words: 50 tokens with [CLS]/[SEP]
    repaired = onion.repair(None, [long])
    assert len(repaired) == 1 and onion.info["lm_max_length"] == 32
    assert np.isfinite(onion.perplexities([long])).all()
