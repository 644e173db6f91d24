"""`early-loss` (freqlens/defenses/early_loss.py): the examples a short first phase fits first are flagged.

The known answer: a tiny model on a training set whose clean labels are coin flips (nothing to learn
but by memorising) and whose poisoned rows (10%, label 1) are made of one trigger token, the only rule
there is to learn; after the first phase the poisoned rows have the lowest loss, on every model family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freqlens.defenses import DefenseConfig, make_defense
from freqlens.defenses.abl import per_example_losses
from freqlens.defenses.early_loss import EarlyLossOptions, first_phase_rows, lowest
from freqlens.defenses.filtering import subset
from freqlens.training import TrainConfig, train

from .helpers import FAMILIES, build
from .trigger_set import TRIGGER, trigger_set


def backdoored_set(family: str, n: int = 200, seed: int = 0):
    """``trigger_set`` with coin-flip clean labels and every word of a poisoned row the trigger."""
    encodings, labels, poison = trigger_set(family, n=n, seed=seed)
    ids, mask = encodings["input_ids"], encodings["attention_mask"]
    for row in np.flatnonzero(poison):
        ids[row, 1 : int(mask[row].sum()) - 1] = TRIGGER
    labels = np.where(poison, 1, np.random.default_rng(seed + 1).integers(0, 2, n))
    return encodings, torch.as_tensor(labels), poison


@pytest.mark.parametrize("seed", range(4))
def test_lowest_flags_the_lowest_scores_like_a_sort(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 20, 50).astype(float)  # ties: the earlier row first, as a stable sort
    for rate in (0.01, 0.1, 0.33, 0.9):
        expected = np.zeros(50, bool)
        expected[sorted(range(50), key=lambda i: (scores[i], i))[: max(1, round(rate * 50))]] = True
        np.testing.assert_array_equal(lowest(scores, rate), expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_poisoned_rows_are_flagged_and_the_final_model_never_sees_them(family):
    encodings, labels, poison = backdoored_set(family)
    config = TrainConfig(epochs=1, batch_size=16, lr=5e-3, seed=0)
    torch.manual_seed(0)
    model = build(family)
    defense = make_defense(DefenseConfig(name="early-loss", options={"rate": 0.1, "first_epochs": 3}))
    defense.prepare(model)
    result, info = defense.fit(model, encodings, labels, config, poison=poison, progress=False)
    detection = info["detection"]
    assert detection["poisoned"] == 20 and detection["flagged"] == 20
    assert detection["precision"] >= 0.9 and detection["recall"] >= 0.9, detection
    assert info["removed"] == 20 and info["trained_on"] == 180 and result.steps == -(-180 // 16)
    assert info["median_loss_flagged"] < info["median_loss_kept"] and info["clean_examples"] == 0

    # the flags are the lowest losses of an independent first phase from the same start
    torch.manual_seed(0)
    reference = build(family)
    train(reference, encodings, labels, TrainConfig(epochs=3, batch_size=16, lr=5e-3, seed=0), progress=False)
    expected = lowest(per_example_losses(reference, encodings, labels), 0.1)
    assert detection["precision"] == pytest.approx((expected & poison).sum() / 20)


@pytest.mark.parametrize(("options", "match"), [
    ({"rate": 0}, r"`defense.options.rate` in \(0, 1\)"),
    ({"rate": 1.5}, r"`defense.options.rate` in \(0, 1\)"),
    ({"rate": True}, r"`defense.options.rate`"),
    ({"first_epochs": 0}, r"`defense.options.first_epochs`"),
    ({"first_size": 0}, r"`defense.options.first_size`"),
    ({"first_size": 2.5}, r"`defense.options.first_size`"),
    ({"first_size": "every"}, r'`defense.options.first_size` to be an integer >= 1 or "all"'),
    ({"restart": "yes"}, r"`defense.options.restart` to be true or false"),
])
def test_bad_options_name_their_key(options, match):
    with pytest.raises(ValueError, match=match):
        EarlyLossOptions(**options)
    with pytest.raises(ValueError, match=match):
        DefenseConfig(name="early-loss", options=options)


def test_first_phase_rows_are_all_rows_up_to_the_size_else_a_seeded_draw():
    np.testing.assert_array_equal(first_phase_rows(50, 50, seed=3), np.arange(50))
    np.testing.assert_array_equal(first_phase_rows(50, 1024, seed=3), np.arange(50))
    np.testing.assert_array_equal(first_phase_rows(5000, "all", seed=3), np.arange(5000))
    rows = first_phase_rows(500, 64, seed=3)
    np.testing.assert_array_equal(rows, np.sort(np.random.default_rng(3).choice(500, size=64, replace=False)))
    assert len(set(rows.tolist())) == 64 and not np.array_equal(rows, first_phase_rows(500, 64, seed=4))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_first_phase_on_a_subset_flags_the_poisoned_rows_it_never_saw(family):
    """The first phase trains on ``first_size`` rows; every row is scored, and the poisoned rows it did
    not train on are flagged too (the trigger rule generalises, the coin-flip clean labels do not)."""
    encodings, labels, poison = backdoored_set(family, n=240)
    config = TrainConfig(epochs=1, batch_size=16, lr=5e-3, seed=0)
    options = {"rate": 0.1, "first_epochs": 6, "first_size": 120}
    torch.manual_seed(0)
    model = build(family)
    defense = make_defense(DefenseConfig(name="early-loss", options=options))
    defense.prepare(model)
    _, info = defense.fit(model, encodings, labels, config, poison=poison, progress=False)
    assert info["first_phase_examples"] == 120 and info["detection"]["recall"] >= 0.9, info["detection"]

    rows = first_phase_rows(240, 120, seed=0)  # an independent first phase on the same rows
    torch.manual_seed(0)
    reference = build(family)
    train(reference, subset(encodings, rows), labels[rows], TrainConfig(epochs=6, batch_size=16, lr=5e-3, seed=0),
          progress=False)
    expected = lowest(per_example_losses(reference, encodings, labels), 0.1)
    assert info["detection"]["precision"] == pytest.approx((expected & poison).sum() / poison.sum())
    unseen = np.ones(240, bool)
    unseen[rows] = False
    assert (unseen & poison).sum() >= 5 and (expected & poison & unseen).sum() >= 0.9 * (unseen & poison).sum()


def test_a_run_stored_before_first_size_is_read_as_a_first_phase_on_every_example():
    """Runs made before `options.first_size` existed trained the first phase on every example: read back
    (resume, compare, benchmark tables) they are `first_size = "all"`, not today's 1024; a stored run
    that has the key keeps it."""
    from freqlens.config import ExperimentConfig

    before = {"name": "early-loss", "options": {"rate": 0.2, "first_epochs": 1, "restart": True}}
    upgraded = ExperimentConfig.upgrade({"defense": before})["defense"]
    assert upgraded["options"]["first_size"] == "all" and upgraded["options"]["rate"] == 0.2
    now = DefenseConfig(name="early-loss", options={"first_size": 512}).to_dict()
    assert ExperimentConfig.upgrade({"defense": now})["defense"]["options"]["first_size"] == 512
    assert ExperimentConfig.upgrade({"defense": upgraded})["defense"] == upgraded  # stable once upgraded


def test_upgrade_never_refuses_an_odd_stored_defense_table():
    """A stored table that is not what freqlens writes is kept (or completed), never an exception: a
    non-string name is kept as stored; an early-loss table without options reads as the earlier run."""
    from freqlens.config import ExperimentConfig

    assert ExperimentConfig.upgrade({"defense": {"name": ["x"]}})["defense"] == {"name": ["x"]}
    for options in ({}, None):
        table = ExperimentConfig.upgrade({"defense": {"name": "early-loss", "options": options}})["defense"]
        assert table["options"]["first_size"] == "all"
