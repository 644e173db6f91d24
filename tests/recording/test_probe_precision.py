"""The probe passes' precision: bfloat16 on a CPU only where it agrees with float32 to 1e-3 on
the run's own probes, checked at the start and at the last snapshot; float32 otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import PROBE_LENGTH as LENGTH
from models import random_encodings, random_labels, tiny_bert

from freqlens.models import predict_proba, set_compute_dtype
from freqlens.recording import Recorder, budget, load_trajectory
from freqlens.recording.budget import plan_probes
from freqlens.recording.precision import TOLERANCE


def disagreeing_bert():
    """A tiny BERT whose logits sit near 200, where bfloat16's spacing is 1.0, and differ by about
    1 between the classes: its probabilities under bfloat16 differ from float32's by far more
    than 1e-3."""
    model = tiny_bert(dropout=0.0)
    with torch.no_grad():
        model.classifier.weight *= 100.0
        model.classifier.bias += 200.0
    return model


def train_with_two_recorders(model, probes, tmp_path, precision: str, steps: int = 6):
    """Train ``model`` while a recorder in ``precision`` and a float32 one (the dense
    reference) both record every step."""
    batch = random_encodings(8, LENGTH, seed=10, pad_from=5)
    labels = random_labels(8, seed=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with Recorder(tmp_path / "tried", probes, schedule="every:1", precision=precision) as tried, \
            Recorder(tmp_path / "reference", probes, schedule="every:1", precision="float32") as reference:
        reference.start(model)
        tried.start(model)
        for step in range(1, steps + 1):
            model.train()
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            reference.step(step)
            tried.step(step)
    return load_trajectory(tmp_path / "tried"), load_trajectory(tmp_path / "reference"), tried


def test_auto_uses_bfloat16_where_it_agrees_and_matches_a_float32_reference(bert, probes, tmp_path):
    tried, reference, recorder = train_with_two_recorders(bert, probes, tmp_path, "auto")
    info = tried.meta["probe_precision"]
    assert info["requested"] == "auto" and info["used"] == "bfloat16"
    assert 0 < info["start_max_abs_diff"] <= TOLERANCE and info["tolerance"] == TOLERANCE
    assert info["end_step"] == 6 and info["end_max_abs_diff"] is not None
    assert recorder.probe_precision == info
    assert tried.steps.tolist() == reference.steps.tolist() == list(range(7))
    for name in tried.names:
        # step 0 and the last snapshot are float32: equal to the reference
        np.testing.assert_array_equal(tried.outputs[name][0], reference.outputs[name][0])
        np.testing.assert_array_equal(tried.outputs[name][-1], reference.outputs[name][-1])
        difference = np.abs(tried.outputs[name] - reference.outputs[name]).max()
        assert difference <= TOLERANCE
        middle = np.abs(tried.outputs[name][1:-1] - reference.outputs[name][1:-1]).max()
        assert middle > 0  # really computed in bfloat16
    assert info["end_max_abs_diff"] <= TOLERANCE


def test_auto_falls_back_to_float32_where_bfloat16_disagrees(probes, tmp_path):
    tried, reference, _ = train_with_two_recorders(disagreeing_bert(), probes, tmp_path, "auto", steps=2)
    info = tried.meta["probe_precision"]
    assert info["used"] == "float32" and info["start_max_abs_diff"] > TOLERANCE
    assert "above the tolerance" in info["reason"] and info["end_max_abs_diff"] is None
    for name in tried.names:
        np.testing.assert_array_equal(tried.outputs[name], reference.outputs[name])


@pytest.mark.parametrize("asked", [{}, {"precision": "float32"}])
def test_float32_the_default_takes_no_bfloat16_pass(bert, probes, tmp_path, monkeypatch, asked):
    calls = []
    original = Recorder._predict
    monkeypatch.setattr(Recorder, "_predict", lambda self, precision="float32": calls.append(precision)
                        or original(self, precision))
    with Recorder(tmp_path / "run", probes, schedule="every:1", **asked) as recorder:
        recorder.start(bert)
        recorder.record(1)
    assert calls == ["float32", "float32"]
    info = load_trajectory(tmp_path / "run").meta["probe_precision"]
    assert info["used"] == "float32" and info["requested"] == "float32" and info["start_max_abs_diff"] is None


def test_bfloat16_asked_for_is_used_even_where_it_disagrees(probes, tmp_path):
    with pytest.warns(RuntimeWarning, match="differed from float32 by .* at the last snapshot"):
        tried, reference, _ = train_with_two_recorders(disagreeing_bert(), probes, tmp_path, "bfloat16", steps=2)
    info = tried.meta["probe_precision"]
    assert info["used"] == "bfloat16" and info["start_max_abs_diff"] > TOLERANCE
    assert info["end_max_abs_diff"] > TOLERANCE and info["end_step"] == 2
    assert np.abs(tried.outputs["clean"][1] - reference.outputs["clean"][1]).max() > TOLERANCE
    np.testing.assert_array_equal(tried.outputs["clean"][-1], reference.outputs["clean"][-1])


def test_a_model_with_its_own_compute_dtype_keeps_it(bert, probes, tmp_path):
    set_compute_dtype(bert, "bfloat16")
    with Recorder(tmp_path / "run", probes, schedule="every:1", precision="auto") as recorder:
        recorder.start(bert)
    info = load_trajectory(tmp_path / "run").meta["probe_precision"]
    assert info["used"] == "float32" and "computes in bfloat16" in info["reason"]
    assert info["start_max_abs_diff"] is None


def test_a_bad_precision_is_named(probes, tmp_path):
    with pytest.raises(ValueError, match=r"`precision` to be one of \('auto', 'float32', 'bfloat16'\) but got "
                                         r"'float16'"):
        Recorder(tmp_path / "run", probes, precision="float16")


def test_a_resumed_run_goes_on_in_the_precision_chosen_at_its_start(bert, probes, tmp_path, manual_loop):
    directory = tmp_path / "run"
    with Recorder(directory, probes, schedule="steps:0,2,4", precision="auto") as recorder:
        manual_loop(bert, recorder, 2, total_steps=4)
    stored = load_trajectory(directory).meta["probe_precision"]
    assert stored["used"] == "bfloat16"
    resumed = Recorder(directory, probes, schedule="steps:0,2,4", resume=True, precision="auto")
    resumed.start(bert, total_steps=4, step=2)
    assert resumed._precision_used == "bfloat16"
    resumed.step(3)
    resumed.record(4)
    resumed.close()
    info = load_trajectory(directory).meta["probe_precision"]
    assert info["start_max_abs_diff"] == stored["start_max_abs_diff"] and info["end_step"] == 4


@pytest.mark.parametrize(("model", "expected"), [(lambda: tiny_bert(dropout=0.0), "bfloat16"),
                                                 (disagreeing_bert, "float32")])
def test_the_plan_times_the_probe_pass_in_the_precision_it_will_use(monkeypatch, model, expected):
    seen = []
    original = budget.predict_proba

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    monkeypatch.setattr(budget, "predict_proba", spy)
    timed = []

    def fastest(work, model, repeats):
        seen.clear()
        work()
        timed.append(list(seen))
        return 1.0

    monkeypatch.setattr(budget, "_fastest", fastest)
    encodings, labels = random_encodings(16, LENGTH, seed=3, pad_from=6), random_labels(16, seed=3)
    plan = plan_probes(model(), encodings, labels, budget=0.1, train_examples=100, epochs=1, snapshots=5,
                       num_sets=2, batch_size=8, precision="auto")
    assert plan.probe_precision == expected
    assert timed[1] == [expected == "bfloat16"]  # the probe pass (second timing) under autocast or not
    plan = plan_probes(model(), encodings, labels, budget=0.1, train_examples=100, epochs=1, snapshots=5,
                       num_sets=2, batch_size=8)  # float32 by default
    assert plan.probe_precision == "float32" and timed[-1] == [False]


def test_probabilities_of_the_disagreeing_model_really_disagree():
    """The premise of the fallback tests, measured."""
    model = disagreeing_bert()
    encodings = random_encodings(6, LENGTH, seed=1, pad_from=4)
    exact = predict_proba(model, encodings)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = predict_proba(model, encodings)
    assert np.abs(exact - low).max() > 10 * TOLERANCE
