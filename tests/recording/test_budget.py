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
                    probe_batch_size=2, margin=1.0)  # 8 rows timed in each pass
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
    assert "32 of the 51 snapshots" in plan.note and "coarse spectrum" in plan.warning  # 16 per set
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


# ------------------------------------------------------------- the defaults (issue 13, item 1)
#: Measured by plan_probes in `freqlens run analysis/sst2-addsent.toml` (all-MiniLM-L6-v2, SST-2,
#: 2 CPU cores): training (forward + backward) and a float32 probe forward, seconds per example.
MINILM_TRAIN, MINILM_PROBE = 0.0215, 0.00386


def _plan_from_config(monkeypatch, data, record, *, probe_seconds=MINILM_PROBE, train_examples=2000,
                      epochs=2, total_steps=126):
    """plan_probes as freqlens run calls it with ``record``, the README's CPU example by default."""
    from freqlens.recording import Schedule

    _fixed_costs(monkeypatch, 8 * MINILM_TRAIN, 8 * probe_seconds)
    encodings, labels = data
    schedule = Schedule.parse(record.schedule)
    return plan_probes(tiny_bert(), encodings, labels, budget=record.budget, train_examples=train_examples,
                       epochs=epochs, snapshots=len(schedule.steps(total_steps)), num_sets=3, optional_sets=1,
                       batch_size=8, probe_batch_size=2, minimum=record.min_probe_size, maximum=record.max_probe_size,
                       min_snapshots=record.min_snapshots if schedule.kind == "log" else None)


def test_the_default_record_settings_give_the_readme_example_a_spectrum(monkeypatch, data):
    """2,000 examples, 2 epochs, batch 32 (126 steps): >= 128 examples per clean and backdoor set,
    >= 20 log-spaced snapshots, recording at most 20% of the wall time."""
    from freqlens.config import RecordConfig

    record = RecordConfig()
    assert record.schedule.startswith("log:") and record.precision == "float32"
    plan = _plan_from_config(monkeypatch, data, record)
    assert plan.size >= 128 and plan.num_sets == 2  # the control set is dropped first
    assert plan.snapshots >= 20 and plan.limited == "snapshots"
    assert plan.expected_share <= 0.20
    assert "20 of the 51 snapshots" in plan.note and plan.to_dict()["note"] == plan.note
    assert plan.warning is None  # the default measurement within its budget: nothing to warn about


@pytest.mark.parametrize("probe_seconds", [0.001, MINILM_PROBE, 0.01, 0.05])
@pytest.mark.parametrize("min_snapshots", [5, 20, 30])
def test_the_minimum_is_kept_and_snapshots_are_thinned_never_below_min_snapshots(
        monkeypatch, data, probe_seconds, min_snapshots):
    from freqlens.config import RecordConfig

    record = RecordConfig(min_snapshots=min_snapshots)
    plan = _plan_from_config(monkeypatch, data, record, probe_seconds=probe_seconds)
    assert plan.size >= record.min_probe_size
    assert min_snapshots <= plan.snapshots <= plan.requested_snapshots == 51
    recording = plan.size * plan.num_sets * plan.snapshots * probe_seconds
    assert plan.expected_share == pytest.approx(recording / (recording + 4000 * MINILM_TRAIN), abs=1e-4)
    if plan.expected_share > record.budget:  # even the minimum overruns: the warning gives the share
        assert plan.snapshots == min_snapshots
        assert (f"expected to take {plan.expected_share:.0%} of the wall time, above the {record.budget:.0%} "
                f"budget") in plan.warning
    else:
        assert "above the" not in (plan.warning or "")


def test_the_probe_pass_is_timed_over_several_length_sorted_batches(monkeypatch, data):
    """The recorder predicts a whole probe set sorted by length, so the plan times a pass over
    4 probe batches' worth of training examples (not one padded training batch)."""
    seen = []
    original = budget.predict_proba
    monkeypatch.setattr(budget, "predict_proba", lambda model, encodings, batch_size: seen.append(
        (len(encodings["input_ids"]), batch_size)) or original(model, encodings, batch_size=batch_size))
    times = iter([8 * 0.040, 20 * 0.008])
    monkeypatch.setattr(budget, "_fastest", lambda work, model, repeats: work() or next(times))
    plan = _plan(tiny_bert(), data, batch_size=8, probe_batch_size=5)
    assert seen == [(20, 5)]  # 4 x 5 rows of the 24, in batches of 5
    assert plan.probe_seconds_per_example == pytest.approx(0.008)
    assert plan.train_seconds_per_example == pytest.approx(0.040)
