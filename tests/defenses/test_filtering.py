"""The base of the filtering defenses (freqlens/defenses/filtering.py): detection metrics, the final
phase on the kept examples from the initial weights, the plug-in contract, and `rows=` in the loss hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freqlens.defenses import DefenseConfig, make_defense, register_defense, unregister_defense
from freqlens.defenses.filtering import FilteringDefense, Flags, detection_metrics, subset
from freqlens.training import TrainConfig, train

from .helpers import build, inputs


# ------------------------------------------------------------------ detection metrics
@pytest.mark.parametrize("seed", range(5))
def test_detection_metrics_are_the_counts_of_hits_misses_and_false_alarms(seed):
    rng = np.random.default_rng(seed)
    poison = rng.random(200) < 0.1
    flagged = rng.random(200) < 0.15
    hits, alarms, misses = (flagged & poison).sum(), (flagged & ~poison).sum(), (~flagged & poison).sum()
    got = detection_metrics(flagged, poison)
    precision, recall = hits / (hits + alarms), hits / (hits + misses)
    assert got["flagged"] == flagged.sum() and got["poisoned"] == poison.sum()
    assert got["precision"] == pytest.approx(precision)
    assert got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_detection_metrics_edge_cases():
    poison = np.array([True, False, False, True])
    assert detection_metrics(np.zeros(4, bool), poison)["precision"] == 0.0  # nothing flagged
    assert detection_metrics(np.zeros(4, bool), poison)["recall"] == 0.0
    assert detection_metrics(poison, poison)["f1"] == 1.0
    clean = np.zeros(4, bool)  # clean data: nothing to recall; a flag is a false alarm
    assert detection_metrics(clean, clean) == {"flagged": 0, "poisoned": 0, "precision": None, "recall": None,
                                               "f1": None}
    assert detection_metrics(poison, clean) == {"flagged": 2, "poisoned": 0, "precision": 0.0, "recall": None,
                                                "f1": None}
    unknown = detection_metrics(poison, None)
    assert unknown["flagged"] == 2 and unknown["precision"] is None and unknown["poisoned"] is None
    with pytest.raises(ValueError, match="one poison flag per training example"):
        detection_metrics(np.zeros(4, bool), np.zeros(3, bool))


# ------------------------------------------------------------------ the loss hook's rows
def test_a_loss_function_taking_rows_gets_the_row_indices_of_each_batch():
    model = build("bert")
    encodings = inputs("bert", n=10)
    labels = torch.arange(10) % 2
    seen = []

    def loss_fn(model, batch, labels_, rows):
        seen.append(rows.clone())
        assert torch.equal(batch["input_ids"], subset(encodings, rows.numpy())["input_ids"][:, :batch["input_ids"].shape[1]])
        assert torch.equal(labels_, labels[rows])
        return model(**batch, labels=labels_).loss

    train(model, encodings, labels, TrainConfig(epochs=2, batch_size=4, lr=1e-3, seed=0), progress=False,
          loss_fn=loss_fn)
    per_epoch = [torch.cat(seen[:3]), torch.cat(seen[3:])]
    for rows in per_epoch:  # every example exactly once per epoch
        assert sorted(rows.tolist()) == list(range(10))


# ------------------------------------------------------------------ the final phase
MARK = 7  # the token id that marks the "poisoned" rows of the test set


class MarkFilter(FilteringDefense):
    """Trains the model a bit (so that restarting matters), then flags the rows holding MARK."""

    def flag(self, model, encodings, labels, config, *, reference, progress):
        train(model, encodings, labels, config, progress=False)
        return Flags((encodings["input_ids"] == MARK).any(dim=1).numpy(), {"rule": "token 7"})


@pytest.fixture
def mark_filter():
    register_defense("mark-filter", MarkFilter)
    yield
    unregister_defense("mark-filter")


def _data(n: int = 24):
    encodings = inputs("bert", n=n, length=8, seed=1)
    ids = encodings["input_ids"]
    ids[ids == MARK] = MARK + 1
    marked = np.arange(n) % 4 == 0
    ids[torch.as_tensor(marked), 2] = MARK
    labels = torch.as_tensor(np.where(marked, 1, np.arange(n) % 2))
    return encodings, labels, marked


def test_the_final_model_is_trained_on_the_kept_rows_from_the_initial_weights(mark_filter):
    encodings, labels, marked = _data()
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=0)
    poison = marked.copy()
    poison[1] = True  # one poisoned row the filter misses

    torch.manual_seed(5)
    model = build("bert")
    defense = make_defense(DefenseConfig(name="mark-filter"))
    defense.prepare(model)
    result, info = defense.fit(model, encodings, labels, config, poison=poison, progress=False)

    torch.manual_seed(5)  # the independent reference: plain training on the kept rows, same start and draws
    reference = build("bert")
    kept = np.flatnonzero(~marked)
    expected = train(reference, subset(encodings, kept), labels[kept], config, progress=False)
    assert result.steps == expected.steps == 2 * 3  # 18 kept rows, batches of 8
    assert result.losses == pytest.approx(expected.losses, abs=1e-6)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert info["removed"] == marked.sum() and info["trained_on"] == len(kept) and info["rule"] == "token 7"
    assert info["flagged_rows"] == np.flatnonzero(marked).tolist() and "note" not in info
    assert info["detection"]["precision"] == 1.0
    assert info["detection"]["recall"] == pytest.approx(marked.sum() / poison.sum())
    assert info["clean_examples"] == 0


class BadFilter(FilteringDefense):
    returned = None

    def flag(self, model, encodings, labels, config, *, reference, progress):
        return type(self).returned


@pytest.mark.parametrize(("returned", "error", "match"), [
    (np.zeros(24, bool), TypeError, r"BadFilter.flag \(defense 'bad-filter'\) to return .*Flags"),
    (Flags(np.zeros(23, bool)), ValueError, r"one boolean per training example \(24\)"),
    (Flags(np.ones(24, bool)), ValueError, r"keep some training examples but it flagged all 24"),
])
def test_a_filter_that_breaks_the_contract_is_named(returned, error, match):
    register_defense("bad-filter", BadFilter)
    try:
        BadFilter.returned = returned
        encodings, labels, _ = _data()
        model = build("bert")
        defense = make_defense(DefenseConfig(name="bad-filter"))
        defense.prepare(model)
        with pytest.raises(error, match=match):
            defense.fit(model, encodings, labels, TrainConfig(epochs=1, batch_size=8), progress=False)
    finally:
        unregister_defense("bad-filter")


class NothingFilter(FilteringDefense):
    """Trains a bit and draws from every generator, then flags nothing: the run must be plain fine-tuning."""

    def flag(self, model, encodings, labels, config, *, reference, progress):
        import random

        train(model, encodings, labels, config, progress=False)
        random.random(), np.random.random(), torch.rand(3)
        return Flags(np.zeros(len(labels), bool))


def test_a_filter_that_flags_nothing_trains_as_plain_fine_tuning_and_says_so():
    register_defense("nothing-filter", NothingFilter)
    try:
        encodings, labels, _ = _data()
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, seed=0)
        torch.manual_seed(3)
        model = build("bert", dropout=0.1)  # dropout draws from torch's generator in the final phase
        defense = make_defense(DefenseConfig(name="nothing-filter"))
        defense.prepare(model)
        result, info = defense.fit(model, encodings, labels, config, progress=False)
        torch.manual_seed(3)
        reference = build("bert", dropout=0.1)
        expected = train(reference, encodings, labels, config, progress=False)
        assert result.losses == pytest.approx(expected.losses, abs=1e-6)
        assert info["removed"] == 0 and info["flagged_rows"] == [] and "flagged no training example" in info["note"]
        assert info["detection"] == {"flagged": 0, "poisoned": None, "precision": None, "recall": None, "f1": None}
    finally:
        unregister_defense("nothing-filter")
