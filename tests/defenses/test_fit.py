"""fit_defense: the loop each defense trains with; ABL's phases; reference-only's length."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from freqlens.defenses import DefenseConfig, fit_defense, prepare_model, train_abl
from freqlens.defenses.abl import per_example_losses
from freqlens.training import TrainConfig, steps_per_epoch

from .helpers import build, inputs, labels

N = 20


def task(n: int = N, seed: int = 31):
    return inputs("bert", n=n, length=10, seed=seed), labels(n, seed=seed).numpy()


def reference(n: int = 6):
    return task(n, seed=32)


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_span_larger_than_the_reference_batch_fails_before_training_naming_the_key():
    config = DefenseConfig(name="muscle", ga={"subspace": 7})  # the reference batch: 6 examples
    prepared = prepare_model(build("bert"), config)
    before = state(prepared.model)
    enc, y = task()
    with pytest.raises(ValueError, match=r"`defense\.ga\.subspace` <= the reference batch \(6 examples\) but got 7"):
        fit_defense(prepared.model, enc, y, config, TrainConfig(epochs=1, batch_size=8), reference=reference(),
                    progress=False)
    after = state(prepared.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["ga", "ga+lora", "muscle", "muscle-paper", "reference-only"])
def test_a_defense_that_needs_a_reference_set_fails_before_training_without_one(name):
    prepared = prepare_model(build("bert"), DefenseConfig(name=name))
    before = state(prepared.model)
    enc, y = task()
    with pytest.raises(ValueError, match="reference"):
        fit_defense(prepared.model, enc, y, DefenseConfig(name=name), TrainConfig(epochs=1, batch_size=4),
                    progress=False)
    after = state(prepared.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name, subspace", [("ga", 1), ("muscle", 1), ("muscle", 3)])
def test_gradient_aligned_defenses_align_every_step(name, subspace):
    config = DefenseConfig(name=name, ga={"subspace": subspace})
    prepared = prepare_model(build("bert"), config)
    enc, y = task()
    result, info = fit_defense(prepared.model, enc, y, config, TrainConfig(epochs=2, batch_size=8),
                               reference=reference(), progress=False)
    assert result.steps == 2 * steps_per_epoch(N, 8) == 6
    assert info["alignment"]["pure_steps"] + info["alignment"]["mixed_steps"] == result.steps
    assert len(result.alignment["branch"]) == result.steps
    assert info["name"] == name and info["selection"] == "last"  # no selector given


def test_fit_defense_reports_the_lr_and_trainable_share():
    config = DefenseConfig(name="mslr")
    prepared = prepare_model(build("bert"), config)
    enc, y = task()
    _, info = fit_defense(prepared.model, enc, y, config, TrainConfig(epochs=1, batch_size=8, lr=2e-5),
                          progress=False)
    assert info["lr"] == 5e-4
    assert 0 < info["trainable_parameters"] < info["total_parameters"]
    assert "alignment" not in info


def test_fit_defense_keeps_the_best_dev_epoch():
    config = DefenseConfig(name="lora")
    prepared = prepare_model(build("bert"), config)
    enc, y = task()
    scores = iter([0.5, 0.9, 0.7])
    result, info = fit_defense(prepared.model, enc, y, config, TrainConfig(epochs=3, batch_size=8),
                               selector=lambda model: next(scores), progress=False)
    assert info["selection"] == "best-dev"
    assert result.best_epoch == info["best_epoch"] == 2
    assert info["epoch_dev_accuracy"] == [0.5, 0.9, 0.7]


def test_gradient_alignment_through_fit_defense_accumulates_like_one_big_batch():
    """Accumulation only splits the step's work: batch 8 x 2 must train as batch 16 x 1, GA included."""
    n = 16
    enc, y = task(n)
    ref = reference(16)
    results = []
    for batch_size, accumulation in ((8, 2), (16, 1)):
        config = DefenseConfig(name="ga")
        model = prepare_model(build("bert", dropout=0.0), config).model
        fit_defense(model, enc, y, config, TrainConfig(epochs=1, batch_size=batch_size,
                                                       accumulation_steps=accumulation, lr=1e-3),
                    reference=ref, progress=False)
        results.append(model)
    for (name, p), q in zip(results[0].named_parameters(), results[1].parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------ reference-only
@pytest.mark.parametrize("batch_size, accumulation", [(4, 1), (3, 2)])
def test_reference_only_trains_as_many_steps_as_the_poisoned_set(batch_size, accumulation):
    enc, y = task()
    train_config = TrainConfig(epochs=2, batch_size=batch_size, accumulation_steps=accumulation)
    config = DefenseConfig(name="reference-only")
    model = prepare_model(build("bert"), config).model
    result, _ = fit_defense(model, enc, y, config, train_config, reference=reference(6), progress=False)
    vanilla = prepare_model(build("bert"), DefenseConfig()).model
    expected, _ = fit_defense(vanilla, enc, y, DefenseConfig(), train_config, progress=False)
    assert result.steps == expected.steps == 2 * steps_per_epoch(N, batch_size, accumulation)


def test_reference_only_never_sees_the_poisoned_set():
    enc, y = task()
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = build("bert")

        def forward(self, input_ids, **kwargs):
            seen.append(input_ids.clone())
            return self.inner(input_ids=input_ids, **kwargs)

    ref_enc, ref_y = reference(6)
    fit_defense(Spy(), enc, y, DefenseConfig(name="reference-only"), TrainConfig(epochs=1, batch_size=4),
                reference=(ref_enc, ref_y), progress=False)
    allowed = {tuple(row[row != 0].tolist()) for row in ref_enc["input_ids"]}
    rows = [tuple(row[row != 0].tolist()) for batch in seen for row in batch]
    assert len(rows) == N
    assert set(rows) <= allowed


# ------------------------------------------------------------------ ABL
ABL_CONFIG = TrainConfig(epochs=3, batch_size=4, lr=1e-3)


@pytest.mark.parametrize(("budget", "clean_epochs"), [("full", 3), ("shared", 1)])
def test_abl_isolates_the_requested_share_and_adds_up_its_phases(budget, clean_epochs):
    enc, y = task()
    poison = np.zeros(N, bool)
    poison[:5] = True
    result, abl = train_abl(build("bert"), enc, y, ABL_CONFIG, isolation_rate=0.1, poison=poison, progress=False,
                            budget=budget)
    assert len(abl.isolated) == 2 == round(0.1 * N)
    assert np.array_equal(abl.isolated, np.unique(abl.isolated))  # sorted, no repeats
    assert abl.isolated.min() >= 0 and abl.isolated.max() < N
    assert abl.isolated_poison_share == pytest.approx(float(poison[abl.isolated].mean()))
    assert len(abl.phases) == 3
    # isolation: one epoch on all N; clean: `clean_epochs` on the N - 2 kept; unlearning: one on the 2 isolated
    assert [p.steps for p in abl.phases] == [steps_per_epoch(N, 4), clean_epochs * steps_per_epoch(N - 2, 4),
                                             steps_per_epoch(2, 4)]
    assert result.steps == sum(p.steps for p in abl.phases) == 5 + 5 * clean_epochs + 1
    assert len(result.losses) == result.steps


def test_abl_isolates_at_least_one_example():
    enc, y = task()
    _, abl = train_abl(build("bert"), enc, y, replace(ABL_CONFIG, epochs=1), isolation_rate=0.001, progress=False)
    assert len(abl.isolated) == 1
    assert abl.isolated_poison_share is None


def test_abl_isolates_the_lowest_loss_examples_after_isolation():
    enc, y = task()
    model = build("bert", dropout=0.0)
    _, abl = train_abl(model, enc, y, replace(ABL_CONFIG, epochs=1), isolation_rate=0.2, unlearn_epochs=0,
                       progress=False, budget="shared")
    assert len(abl.phases) == 1  # isolation only: the model is as it was when isolating
    losses = per_example_losses(model, enc, y)
    assert set(abl.isolated) == set(np.argsort(losses, kind="stable")[:4])
    assert losses[abl.isolated].max() <= np.delete(losses, abl.isolated).min()


def test_abl_with_a_shared_budget_needs_enough_epochs_for_its_phases():
    enc, y = task()
    with pytest.raises(ValueError, match=r"`train\.epochs` \(1\) >= .*budget` = 'shared'"):
        train_abl(build("bert"), enc, y, replace(ABL_CONFIG, epochs=1), isolation_epochs=1, unlearn_epochs=1,
                  progress=False, budget="shared")
    with pytest.raises(ValueError, match=r"`defense\.abl\.budget` to be one of \('full', 'shared'\)"):
        train_abl(build("bert"), enc, y, ABL_CONFIG, progress=False, budget="epochs")


def test_abl_through_fit_defense():
    enc, y = task()
    config = DefenseConfig(name="abl", abl={"isolation_rate": 0.1})
    model = prepare_model(build("bert"), config).model
    poison = np.arange(N) < 4
    result, info = fit_defense(model, enc, y, config, ABL_CONFIG, poison=poison, progress=False)
    assert info["abl"]["isolated"] == 2
    assert info["abl"]["isolated_poison_share"] in (0.0, 0.5, 1.0)
    assert info["abl"]["budget"] == "full" and info["abl"]["phase_steps"] == [5, 3 * 5, 1]
    assert result.steps == 5 + 3 * 5 + 1  # the clean phase trains all 3 epochs of train.epochs
    share = info["abl"]["isolated_poison_share"]
    assert info["detection"]["flagged"] == 2 and info["detection"]["poisoned"] == 4
    assert info["detection"]["precision"] == pytest.approx(share)
    assert info["detection"]["recall"] == pytest.approx(share * 2 / 4)
