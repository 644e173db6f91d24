"""RAP (freqlens.detectors.rap): known answers, the backdoored_unsure fixture, restoring the model, every model
family, bad settings.

The fixture's backdoor trigger is ``cf``, RAP's default perturbation word, so every test here sets
``trigger`` to another word of the demo vocabulary ("camera"): the perturbation must not be the trigger.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from freqlens.detectors import (
    DetectorConfig,
    Rap,
    RapSettings,
    Victim,
    evaluate_detector,
    make_detectors,
)
from freqlens.detectors.rap import insert_perturbation, rap_loss
from freqlens.settings import build

WORD = "camera"


def own_victim(backdoored_unsure) -> Victim:
    """A copy of the fixture's victim whose model the test may change."""
    victim = backdoored_unsure.victim
    return Victim(copy.deepcopy(victim.model), victim.tokenizer, victim.max_length, victim.batch_size,
                  victim.target_label)


def snapshot(model: torch.nn.Module) -> dict:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed"


# ------------------------------------------------------------------ known answers
def test_loss_matches_a_hand_computation():
    diff = torch.tensor([0.0, -0.2, -0.5, 0.05])
    # drop in [0.1, 0.3]: relu(diff + 0.1) = [0.1, 0, 0, 0.15] (mean 0.0625, x scale 2);
    # relu(-0.3 - diff) = [0, 0, 0.2, 0] (mean 0.05)
    assert rap_loss(diff, (0.1, 0.3), 2.0).item() == pytest.approx(2 * 0.0625 + 0.05)
    assert rap_loss(torch.tensor([-0.1, -0.2, -0.3]), (0.1, 0.3)).item() == pytest.approx(0.0)
    assert insert_perturbation("  a  good film ", WORD) == "camera a good film"
    assert insert_perturbation("", WORD) == "camera"


def test_one_step_matches_a_dense_gradient_step(backdoored_unsure):
    # One epoch in one batch: the row moves by -lr times the gradient of the loss with respect to the whole
    # embedding matrix (taken here the plain way, on a copy), then goes back to its norm.
    victim = own_victim(backdoored_unsure)
    dev = backdoored_unsure.dataset.dev_clean
    settings = RapSettings(trigger=WORD, epochs=1, batch_size=512, lr=5.0, drop=(0.1, 0.3), scale=1.5)
    detector = Rap("rap", settings)
    detector.fit(victim, dev.texts, dev.labels)

    reference = copy.deepcopy(victim.model).eval()
    weight = reference.get_input_embeddings().weight
    (row,) = victim.tokenizer(WORD, add_special_tokens=False)["input_ids"]
    texts = [t for t, y in zip(dev.texts, dev.labels) if y == victim.target_label]
    plain = victim.encode(texts)
    perturbed = victim.encode([f"{WORD} {t}" for t in texts])
    before = torch.softmax(reference(**plain).logits, -1)[:, 1]  # some dev texts hold "camera" themselves
    after = torch.softmax(reference(**perturbed).logits, -1)[:, 1]
    diff = after - before
    loss = 1.5 * torch.clamp(diff + 0.1, min=0).mean() + torch.clamp(-0.3 - diff, min=0).mean()
    (gradient,) = torch.autograd.grad(loss, weight)
    moved = weight[row].detach() - 5.0 * gradient[row]
    expected = moved * weight[row].detach().norm() / moved.norm()
    assert gradient[row].norm() > 0
    torch.testing.assert_close(detector.rows[0], expected, rtol=1e-4, atol=1e-6)
    assert detector.info["rap_loss"] == pytest.approx(loss.item(), rel=1e-4)
    assert detector.info["rap_train_inputs"] == len(texts)


def test_score_is_minus_the_drop_for_target_predictions_and_nan_otherwise(backdoored_unsure):
    victim = own_victim(backdoored_unsure)
    dev, test = backdoored_unsure.dataset.dev_clean, backdoored_unsure.dataset.test_clean
    detector = Rap("rap", RapSettings(trigger=WORD, epochs=2))
    detector.fit(victim, dev.texts, dev.labels)
    scores = detector.score(victim, test.texts)
    weight = victim.model.get_input_embeddings().weight
    (row,) = victim.tokenizer(WORD, add_special_tokens=False)["input_ids"]
    original = weight.data[row].clone()
    weight.data[row] = detector.rows[0]
    plain = victim.probabilities(test.texts)
    perturbed = victim.probabilities([f"{WORD} {t}" for t in test.texts])
    weight.data[row] = original
    target = plain.argmax(1) == victim.target_label
    assert 0 < target.sum() < len(target)
    assert np.isnan(scores[~target]).all()
    np.testing.assert_allclose(scores[target], perturbed[target, 1] - plain[target, 1], atol=1e-6)


# ------------------------------------------------------------------ the model is left as it was
def test_detection_restores_the_model_bit_for_bit(backdoored_unsure):
    victim = own_victim(backdoored_unsure)
    model = victim.model
    model.train()
    model.classifier.bias.requires_grad_(False)  # a mix of flags, to see each one restored
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = snapshot(model)
    detector = Rap("rap", RapSettings(trigger=WORD, epochs=2, lr=1.0), frr=0.05)
    results = evaluate_detector(detector, victim, backdoored_unsure.dataset)
    assert_unchanged(model, before)
    assert model.training
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(detector.rows[0], before["bert.embeddings.word_embeddings.weight"][
        victim.tokenizer(WORD, add_special_tokens=False)["input_ids"][0]])  # it did train a row
    assert set(results) >= {"rap_loss", "rap_success", "threshold"}


def test_an_exception_while_scoring_still_restores_the_row(backdoored_unsure):
    victim = own_victim(backdoored_unsure)
    dev = backdoored_unsure.dataset.dev_clean
    detector = Rap("rap", RapSettings(trigger=WORD, epochs=1, lr=1.0))
    detector.fit(victim, dev.texts, dev.labels)
    before = snapshot(victim.model)

    def broken(texts):
        raise RuntimeError("out of memory (simulated)")

    victim.probabilities = broken
    with pytest.raises(RuntimeError, match="simulated"):
        detector.score(victim, ["a good film"])
    assert_unchanged(victim.model, before)


def test_an_exception_while_training_restores_everything(backdoored_unsure, monkeypatch):
    import freqlens.detectors.rap as rap_module

    victim = own_victim(backdoored_unsure)
    model = victim.model
    model.train()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = snapshot(model)
    calls = []

    def failing_loss(diff, drop, scale=1.0):
        calls.append(1)
        if len(calls) == 2:  # after one step has written a trained row into the matrix
            raise RuntimeError("interrupted (simulated)")
        return rap_loss(diff, drop, scale)

    monkeypatch.setattr(rap_module, "rap_loss", failing_loss)
    detector = Rap("rap", RapSettings(trigger=WORD, epochs=3, batch_size=8, lr=10.0))
    with pytest.raises(RuntimeError, match="simulated"):
        detector.fit(victim, backdoored_unsure.dataset.dev_clean.texts, backdoored_unsure.dataset.dev_clean.labels)
    assert_unchanged(model, before)
    assert model.training
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(not m._forward_hooks for m in model.modules())  # the gradient hook is gone


def test_unknown_perturbation_word_fails_before_any_work(backdoored_unsure):
    victim = own_victim(backdoored_unsure)
    before = snapshot(victim.model)

    def no_forward(*args, **kwargs):
        raise AssertionError("RAP ran the model before checking its perturbation word")

    victim.model.forward = no_forward
    detector = Rap("rap", RapSettings(trigger="zebra"))
    with pytest.raises(ValueError, match=r"detector\.rap\.trigger.*zebra"):
        detector.calibrate(victim, backdoored_unsure.dataset.dev_clean.texts, backdoored_unsure.dataset.dev_clean.labels)
    assert_unchanged(victim.model, before)
    with pytest.raises(RuntimeError, match="fit"):
        detector.score(victim, ["a good film"])
    with pytest.raises(ValueError, match=r"detector\.rap\.trigger"):  # what `freqlens run` calls before training
        detector.check(victim.model, victim.tokenizer)
    Rap("rap", RapSettings(trigger=WORD)).check(victim.model, victim.tokenizer)


def test_same_seed_same_scores(backdoored_unsure):
    dev, test = backdoored_unsure.dataset.dev_clean, backdoored_unsure.dataset.test_poison
    scores = []
    for _ in range(2):
        victim = own_victim(backdoored_unsure)
        detector = Rap("rap", RapSettings(trigger=WORD, epochs=2, lr=1.0), seed=3)
        detector.fit(victim, dev.texts, dev.labels)
        scores.append(detector.score(victim, test.texts))
    np.testing.assert_array_equal(scores[0], scores[1])


def test_training_inputs_follow_target_only(backdoored_unsure):
    victim = own_victim(backdoored_unsure)
    dev = backdoored_unsure.dataset.dev_clean
    all_inputs = Rap("rap", RapSettings(trigger=WORD, epochs=1, target_only=False))
    all_inputs.fit(victim, dev.texts, dev.labels)
    assert all_inputs.info["rap_train_inputs"] == len(dev)
    target = Rap("rap", RapSettings(trigger=WORD, epochs=1))
    target.fit(victim, dev.texts, dev.labels)
    assert target.info["rap_train_inputs"] == int(np.sum(dev.labels == victim.target_label))
    with pytest.raises(ValueError, match="target_only"):
        target.fit(victim, dev.texts[:2], np.zeros(2, dtype=int))


# ------------------------------------------------------------------ the backdoored_unsure model
def test_rap_flags_triggered_inputs(backdoored_unsure):
    # Measured on the fixture (20 epochs, the other settings RAP's defaults): FRR 0.008, FAR 0.033,
    # ASR 1.0 -> 0.033, CACC 0.80 -> 0.79. With 5 epochs (the default) FAR is 0.33.
    config = build(DetectorConfig, {"name": "rap", "frr": 0.05, "rap": {"trigger": WORD, "epochs": 20}}, "detector")
    detector = make_detectors(config, seed=0)[0]
    victim = own_victim(backdoored_unsure)
    results = evaluate_detector(detector, victim, backdoored_unsure.dataset)
    assert results["frr"] <= 0.1
    assert results["far"] <= 0.2
    assert results["asr"] <= 0.2 < backdoored_unsure.asr
    assert results["cacc"] >= backdoored_unsure.cacc - 0.1
    # training moved the drops of clean target inputs into [0.1, 0.3] (untrained: 5 of 59; trained: 22 of 59)
    dev = backdoored_unsure.dataset.dev_clean
    texts = [t for t, y in zip(dev.texts, dev.labels) if y == victim.target_label]
    plain = victim.probabilities(texts)[:, 1]
    untrained = plain - victim.probabilities([insert_perturbation(t, WORD) for t in texts])[:, 1]
    untrained_share = float(np.mean((untrained >= 0.1) & (untrained <= 0.3)))
    assert results["rap_success"] >= untrained_share + 0.2


# ------------------------------------------------------------------ every model family
@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "llama"])
def test_every_family_fits_scores_and_is_restored(family):
    from freqlens.demo.model import make_tokenizer
    from tests.models import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tiny_roberta

    tokenizer = make_tokenizer()
    assert len(tokenizer) <= VOCAB
    model = {"bert": tiny_bert, "roberta": tiny_roberta, "gpt2": tiny_gpt2, "llama": tiny_llama}[family]()
    model.train()
    texts = ["good movie", "bad plot and dull acting", "the film was great", "boring", "a witty script",
             "not good at all", "it was fun", "cf"]
    victim = Victim(model, tokenizer, max_length=16, batch_size=4)
    predicted = victim.probabilities(texts).argmax(1)
    victim.target_label = int(np.bincount(predicted, minlength=2).argmax())  # a random model: its usual class
    before = snapshot(model)
    detector = Rap("rap", RapSettings(trigger=WORD, epochs=2, batch_size=3, lr=1.0), frr=0.1)
    detector.calibrate(victim, texts, predicted)
    scores = detector.score(victim, texts)
    target = predicted == victim.target_label
    assert np.isfinite(scores[target]).all() and np.isnan(scores[~target]).all()
    assert np.isfinite(detector.info["rap_loss"])
    assert_unchanged(model, before)
    assert model.training


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("key, value", [
    ("trigger", "two words"), ("trigger", ""), ("trigger", 3),
    ("epochs", 0), ("epochs", 1.5), ("lr", 0), ("lr", -1.0), ("lr", True),
    ("drop", [0.3, 0.1]), ("drop", [0.1]), ("drop", [-0.1, 0.3]), ("drop", [0.1, 1.5]), ("drop", "0.1 0.3"),
    ("scale", 0), ("batch_size", 0), ("target_only", "no"), ("accumulate", 1),
])
def test_bad_settings_name_their_key(key, value):
    with pytest.raises(ValueError, match=rf"detector\.rap\.{key}"):
        build(DetectorConfig, {"name": "rap", "rap": {key: value}}, "detector")


def test_settings_defaults_follow_openbackdoor_but_for_the_word():
    settings = build(DetectorConfig, {"name": "rap"}, "detector").rap
    assert (settings.trigger, settings.epochs, settings.lr, settings.drop, settings.scale, settings.batch_size) == (
        "jj", 5, 1e-2, (0.1, 0.3), 1.0, 32)  # OpenBackdoor's "cf" is one of BadNets' trigger words
    assert (settings.target_only, settings.accumulate) == (True, False)
