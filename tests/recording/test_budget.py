"""Probe sets sized to a recording budget: the arithmetic, the limits, no trace on the model."""

from __future__ import annotations

import pytest
import torch
from models import random_encodings, random_labels, tiny_bert

from freqlens.recording import budget
from freqlens.recording.budget import SMALL_PROBE_SET, plan_probes


@pytest.fixture
def data():
    return random_encodings(24, 12, seed=3, pad_from=6), random_labels(24, seed=3)


def _fixed_costs(monkeypatch, train_seconds: float, probe_seconds: float) -> None:
    """Make the calibration return known per-batch times (train first, probe second)."""
    times = iter([train_seconds, probe_seconds])
    monkeypatch.setattr(budget, "_fastest", lambda work, model, repeats: next(times))


def _plan(model, data, **kwargs):
    encodings, labels = data
    settings = dict(budget=0.1, train_examples=2000, epochs=2, snapshots=51, num_sets=3, batch_size=8,
                    margin=1.0)
    settings.update(kwargs)
    return plan_probes(model, encodings, labels, **settings)


def test_size_follows_the_share_formula(monkeypatch, data):
    # per example: training 40 ms, probing 8 ms (batches of 8 rows)
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    plan = _plan(tiny_bert(), data, budget=0.2, num_sets=2, minimum=1)
    allowed = 0.2 / 0.8 * 2000 * 2 * 0.040  # seconds of recording the budget allows
    assert plan.size == int(allowed / (51 * 2 * 0.008))
    assert plan.limited == "budget"
    recording = plan.size * 2 * 51 * 0.008
    assert plan.expected_share == pytest.approx(recording / (recording + 4000 * 0.040), abs=1e-4)
    assert plan.expected_share <= 0.2


def test_margin_shrinks_the_plan(monkeypatch, data):
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    full = _plan(tiny_bert(), data, budget=0.2, minimum=1)
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    half = _plan(tiny_bert(), data, budget=0.2, minimum=1, margin=0.5)
    assert half.size == pytest.approx(full.size / 2, abs=1)


def test_optional_set_is_dropped_before_going_below_the_minimum(monkeypatch, data):
    # 10% of 4,000 examples x 40 ms over 51 snapshots x 8 ms: about 43 probes per snapshot
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    plan = _plan(tiny_bert(), data, num_sets=3, optional_sets=1, minimum=16)
    assert plan.num_sets == 2 and plan.size == 21 and plan.limited == "budget"


def test_minimum_and_maximum_bound_the_size(monkeypatch, data):
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    low = _plan(tiny_bert(), data, minimum=64)
    assert low.size == 64 and low.limited == "minimum" and low.expected_share > 0.1
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    high = _plan(tiny_bert(), data, epochs=1000, maximum=100)
    assert high.size == 100 and high.limited == "maximum"


def test_small_sets_come_with_a_warning(monkeypatch, data):
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    plan = _plan(tiny_bert(), data, minimum=1)
    assert plan.size < SMALL_PROBE_SET and "coarse" in plan.warning
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    assert _plan(tiny_bert(), data, epochs=100).warning is None


def test_calibration_leaves_no_trace(data):
    model = tiny_bert()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    plan = _plan(model, data, repeats=1)
    assert torch.equal(torch.rand(3), expected)  # the random stream is where it was
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert plan.train_seconds_per_example > 0 and plan.probe_seconds_per_example > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0.0}, r"`budget` in \(0, 1\)"),
        ({"budget": 1.0}, r"`budget` in \(0, 1\)"),
        ({"snapshots": 0}, r"`snapshots` to be an integer >= 1"),
        ({"optional_sets": 3}, r"`optional_sets` < `num_sets`"),
        ({"minimum": 10, "maximum": 5}, r"`minimum` <= `maximum`"),
        ({"margin": 0.0}, r"`margin` in \(0, 1\]"),
    ],
)
def test_bad_arguments_are_named(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _plan(tiny_bert(), data, **kwargs)


def test_a_log_schedule_is_thinned_rather_than_the_budget_overrun(monkeypatch, data):
    # 5% of 4,000 examples x 40 ms = 8.4 s; 16 examples x 2 sets x 8 ms = 0.256 s a snapshot
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    plan = _plan(tiny_bert(), data, budget=0.05, num_sets=2, minimum=16, min_snapshots=20)
    allowed = 0.05 / 0.95 * 4000 * 0.040
    assert plan.limited == "snapshots" and plan.size == 16
    assert plan.snapshots == int(allowed / (16 * 2 * 0.008)) and plan.requested_snapshots == 51
    assert plan.expected_share <= 0.05
    assert "32 of the 51 snapshots" in plan.warning
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    floor = _plan(tiny_bert(), data, budget=0.05, num_sets=2, minimum=16, min_snapshots=40)
    assert floor.snapshots == 40 and floor.expected_share > 0.05
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    fixed = _plan(tiny_bert(), data, budget=0.05, num_sets=2, minimum=16)  # not a log schedule
    assert fixed.limited == "minimum" and fixed.snapshots == 51


@pytest.mark.parametrize("requested", [3, 11, 20])
def test_a_schedule_shorter_than_min_snapshots_is_never_lengthened_and_the_overrun_is_said(
        monkeypatch, data, requested):
    """A short run's log schedule asks for fewer snapshots than `min_snapshots`: the plan keeps the
    schedule's count (never "20 of the 11 asked for") and says the budget is overrun."""
    _fixed_costs(monkeypatch, 8 * 0.040, 8 * 0.008)
    plan = _plan(tiny_bert(), data, budget=0.05, num_sets=2, minimum=16, min_snapshots=20,
                 snapshots=requested, train_examples=100, epochs=1)
    assert plan.snapshots == requested and plan.limited == "minimum"
    assert plan.expected_share > 0.05
    assert f"{plan.expected_share:.0%} of the wall time, above the 5% budget" in plan.warning
