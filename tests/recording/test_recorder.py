"""The Recorder in a plain PyTorch loop and in freqlens.training.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import HIDDEN, forward_hooks, random_encodings, random_labels, tiny_bert
from models import PROBE_LENGTH as LENGTH

from freqlens.models import embedding_inputs
from freqlens.recording import ProbeSet, Recorder, Schedule, load_trajectory
from freqlens.training import TrainConfig, train


def test_manual_loop_records_the_schedule(bert, probes, directory, manual_loop):
    with Recorder(directory, probes, schedule="every:4", metadata={"run": "manual"}) as recorder:
        returned = manual_loop(bert, recorder, 12)
    assert recorder.recorded_steps == [0, 4, 8, 12]
    assert returned == [step in (4, 8, 12) for step in range(1, 13)]
    assert recorder.seconds > 0
    assert recorder.closed

    trajectory = load_trajectory(directory)
    assert trajectory.steps.tolist() == [0, 4, 8, 12]
    assert trajectory.complete and trajectory.meta["status"] == "complete"
    assert trajectory.names == ["clean", "backdoor"]
    meta = trajectory.meta
    assert meta["schedule"] == "every:4" and meta["total_steps"] is None
    assert meta["model"] == "BertForSequenceClassification"
    assert meta["embedding_layer"] == "output of BertEmbeddings"
    assert meta["snapshots"] == 4 and meta["run"] == "manual"
    assert meta["recording_seconds"] >= 0
    backdoor = dict(meta["probe_sets"]["backdoor"])
    assert len(backdoor.pop("fingerprint")) == 64  # a SHA-256, checked when a run resumes
    assert backdoor == {"n": 6, "dim": LENGTH * HIDDEN, "role": "backdoor",
                        "spaces": {"flattened": {"key": "inputs", "dim": LENGTH * HIDDEN},
                                   "mean-pooled": {"key": "inputs_1", "dim": HIDDEN},
                                   "hidden:-1": {"key": "inputs_2", "dim": HIDDEN}}}


def test_trajectory_shapes_and_probabilities(bert, probes, directory, manual_loop):
    with Recorder(directory, probes, schedule=Schedule.every(4)) as recorder:
        manual_loop(bert, recorder, 8)
    trajectory = recorder.trajectory()
    for probe in probes:
        n = len(probe)
        outputs = trajectory.outputs[probe.name]
        assert outputs.shape == (3, n, 2)
        assert np.all(outputs >= 0) and np.all(outputs <= 1)
        np.testing.assert_allclose(outputs.sum(-1), 1.0, atol=1e-5)
        assert trajectory.inputs[probe.name].shape == (n, LENGTH * HIDDEN)
        assert trajectory.labels[probe.name].tolist() == probe.labels.tolist()
        assert trajectory.poison[probe.name].tolist() == probe.poison.tolist()
    assert trajectory.texts == {"clean": probes[0].texts}
    # the snapshots follow the training, not a stale copy of the model
    assert not np.allclose(trajectory.outputs["clean"][0], trajectory.outputs["clean"][-1])
    # the loss passed to step() is stored; step 0 had none
    loss = trajectory.scalars["loss"]
    assert np.isnan(loss[0]) and np.all(np.isfinite(loss[1:]))


def test_total_steps_adds_the_last_step(bert, probes, directory, manual_loop):
    with Recorder(directory, probes, schedule="every:4") as recorder:
        manual_loop(bert, recorder, 10, total_steps=10)
    assert recorder.recorded_steps == [0, 4, 8, 10]


def test_log_schedule_in_a_manual_loop(bert, probes, directory, manual_loop):
    with Recorder(directory, probes, schedule=Schedule.log(5)) as recorder:
        manual_loop(bert, recorder, 30, total_steps=30)
    assert recorder.recorded_steps == Schedule.log(5).steps(30)
    assert recorder.recorded_steps[-1] == 30


def test_step_records_once_and_record_ignores_the_schedule(bert, probes, directory):
    with Recorder(directory, probes, schedule="every:4") as recorder:
        recorder.start(bert)
        assert recorder.step(0) is False  # already recorded by start()
        assert recorder.step(3) is False
        assert recorder.step(4) is True
        assert recorder.step(4) is False
        recorder.record(5, note=1.0)
    assert recorder.recorded_steps == [0, 4, 5]
    trajectory = load_trajectory(directory)
    assert trajectory.steps.tolist() == [0, 4, 5]
    np.testing.assert_array_equal(trajectory.scalars["note"], [np.nan, np.nan, 1.0])


def test_start_scalars_go_with_step_zero(bert, probes, directory):
    with Recorder(directory, probes, schedule="every:1") as recorder:
        recorder.start(bert, epoch=0.0)
        recorder.step(1, epoch=0.5)
    np.testing.assert_array_equal(load_trajectory(directory).scalars["epoch"], [0.0, 0.5])


# ------------------------------------------------------------- kernel inputs
def test_kernel_inputs_are_zero_at_padding(bert, probes, directory):
    with Recorder(directory, probes, schedule="every:1") as recorder:
        recorder.start(bert)
    trajectory = load_trajectory(directory)
    for probe in probes:
        mask = probe.encodings["attention_mask"].numpy().astype(bool)
        assert not mask.all(), "the fixture must have padding"
        inputs = trajectory.inputs[probe.name].reshape(len(probe), LENGTH, HIDDEN)
        assert np.all(inputs[~mask] == 0)
        assert np.all(np.abs(inputs[mask]).sum(-1) > 0)


def test_kernel_inputs_do_not_depend_on_the_batch_size(probes, tmp_path):
    trajectories = []
    for batch_size in (3, 64):
        directory = tmp_path / f"batch-{batch_size}"
        with Recorder(directory, probes, schedule="every:1", batch_size=batch_size) as recorder:
            recorder.start(tiny_bert())
        trajectories.append(load_trajectory(directory))
    small, large = trajectories
    for name in small.names:
        np.testing.assert_allclose(small.inputs[name], large.inputs[name], rtol=0, atol=1e-6)
        np.testing.assert_allclose(small.outputs[name], large.outputs[name], rtol=0, atol=1e-5)


def test_kernel_inputs_are_computed_in_eval_mode(bert, encodings):
    bert.train()
    first = embedding_inputs(bert, encodings)
    second = embedding_inputs(bert, encodings)
    assert bert.training  # restored
    np.testing.assert_array_equal(first, second)  # dropout (p=0.1) would make these differ
    bert.eval()
    np.testing.assert_array_equal(first, embedding_inputs(bert, encodings))
    assert not bert.training
    # and dropout is really on in train mode, so the check above means something
    bert.train()
    with torch.no_grad():
        output = bert.bert.embeddings(input_ids=encodings["input_ids"])
    assert not torch.allclose(output, bert.bert.embeddings(input_ids=encodings["input_ids"]))


@pytest.mark.parametrize("training", [True, False])
def test_training_mode_is_restored(bert, probes, directory, training):
    bert.train(training)
    with Recorder(directory, probes, schedule="every:1") as recorder:
        recorder.start(bert)
        assert bert.training is training
        bert.train(not training)
        recorder.record(1)
        assert bert.training is (not training)
    assert forward_hooks(bert) == 0


def test_explicit_embedding_layer(bert, probes, directory):
    layer = bert.bert.embeddings.word_embeddings  # word embeddings only: no position, no LayerNorm
    with Recorder(directory, probes, schedule="every:1", embedding_layer=layer) as recorder:
        recorder.start(bert)
    trajectory = load_trajectory(directory)
    assert trajectory.meta["embedding_layer"] == "output of Embedding"
    clean = probes[0]
    expected = layer.weight.detach()[clean.encodings["input_ids"]] * clean.encodings["attention_mask"][..., None]
    np.testing.assert_allclose(trajectory.inputs["clean"], expected.reshape(len(clean), -1).numpy(), atol=1e-6)


# ----------------------------------------------------------------- misuse
def test_step_or_record_before_start(probes, directory):
    recorder = Recorder(directory, probes)
    with pytest.raises(RuntimeError, match=r"Call Recorder\.start\(model\) before Recorder\.step\(\)"):
        recorder.step(1)
    with pytest.raises(RuntimeError, match=r"record\(\) needs a started, unclosed recorder"):
        recorder.record(1)


def test_start_twice(bert, probes, directory):
    recorder = Recorder(directory, probes, schedule="every:1")
    recorder.start(bert)
    with pytest.raises(RuntimeError, match="called twice"):
        recorder.start(bert)
    recorder.close()


def test_closed_recorder_refuses_work(bert, probes, directory):
    recorder = Recorder(directory, probes, schedule="every:1")
    recorder.start(bert)
    recorder.close()
    recorder.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        recorder.start(bert)
    with pytest.raises(RuntimeError, match="unclosed"):
        recorder.record(3)
    with pytest.raises(RuntimeError, match=r"after close\(\)"):
        recorder.step(3)
    assert load_trajectory(directory).meta["status"] == "complete"


def test_a_failed_start_can_be_retried(bert, probes, directory):
    recorder = Recorder(directory, probes)  # log:50 needs the run length
    with pytest.raises(ValueError, match="`total_steps`"):
        recorder.start(bert)
    recorder.start(bert, total_steps=10)
    assert recorder.recorded_steps == [0]


def test_directory_with_a_trajectory_is_refused(bert, probes, directory):
    with Recorder(directory, probes, schedule="every:1") as recorder:
        recorder.start(bert)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        Recorder(directory, probes)
    with Recorder(directory, probes, schedule="every:1", overwrite=True) as recorder:
        recorder.start(bert)
        recorder.step(1)
    assert load_trajectory(directory).steps.tolist() == [0, 1]


def test_log_schedule_needs_total_steps(bert, probes, directory):
    recorder = Recorder(directory, probes, schedule="log:10")
    with pytest.raises(ValueError, match="`total_steps` for the 'log' schedule"):
        recorder.start(bert)


def _probe(name="clean", n=2):
    return ProbeSet(name, random_encodings(n, 4, seed=3), random_labels(n))


@pytest.mark.parametrize(
    "make_probes, match",
    [
        (lambda: [], r"`probes` to be a non-empty list of ProbeSet"),
        (lambda: {}, r"`probes` to be a non-empty list of ProbeSet"),
        (lambda: [_probe("a"), _probe("a")], r"names to be unique but got \['a', 'a'\]"),
        (lambda: ["clean"], r"`probes` to be a non-empty list of ProbeSet"),
        (lambda: [_probe(), {"input_ids": torch.zeros(2, 4)}], r"list of ProbeSet"),
    ],
)
def test_invalid_probes(make_probes, match, directory):
    with pytest.raises(ValueError, match=match):
        Recorder(directory, make_probes())
    assert not directory.exists()  # nothing written for a refused recorder


def test_a_bare_probe_set_is_accepted(directory):
    recorder = Recorder(directory, _probe())
    assert len(recorder.probes) == 1


def test_probes_as_a_mapping(bert, probes, directory):
    with Recorder(directory, {p.name: p for p in probes}, schedule="every:1") as recorder:
        recorder.start(bert)
    assert load_trajectory(directory).names == ["clean", "backdoor"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "two words"}, r"`name` to be an identifier not starting with '__'"),
        ({"name": "__step__"}, r"`name` to be an identifier not starting with '__'"),
        ({"role": "poison"}, r"`role` to be one of \('clean', 'backdoor', 'control'\)"),
        ({"labels": torch.zeros(3)}, r"`encodings\['input_ids'\]` .* to have 3 rows"),
        ({"labels": []}, r"at least one example"),
        ({"texts": ["only one"]}, r"Expected 2 `texts`"),
        ({"poison": [True]}, r"`poison` of shape \(2,\)"),
        ({"encodings": {}}, r"`encodings` .* non-empty mapping"),
    ],
)
def test_invalid_probe_set(kwargs, match):
    arguments = {"name": "clean", "encodings": random_encodings(2, 4), "labels": torch.zeros(2)} | kwargs
    with pytest.raises(ValueError, match=match):
        ProbeSet(**arguments)


@pytest.mark.parametrize(
    "name, role, expected",
    [("clean", None, "clean"), ("backdoor", None, "backdoor"), ("control", None, "control"),
     ("dev", None, None), ("dev", "clean", "clean")],
)
def test_probe_set_role(name, role, expected):
    assert ProbeSet(name, random_encodings(2, 4), torch.zeros(2), role=role).role == expected


# ------------------------------------------------------------ status on exit
def test_failed_block_marks_the_trajectory_failed(bert, probes, directory, manual_loop):
    with pytest.raises(RuntimeError, match="loss is NaN"):
        with Recorder(directory, probes, schedule="every:2") as recorder:
            manual_loop(bert, recorder, 5)
            raise RuntimeError("loss is NaN")
    assert recorder.closed
    trajectory = load_trajectory(directory)
    assert trajectory.meta["status"] == "failed" and not trajectory.complete
    assert trajectory.steps.tolist() == [0, 2, 4]
    assert trajectory.meta["snapshots"] == 3
    assert np.all(np.isfinite(trajectory.outputs["clean"]))


def test_unclosed_recorder_is_incomplete(bert, probes, directory):
    recorder = Recorder(directory, probes, schedule="every:1")
    recorder.start(bert)
    recorder.step(1)
    trajectory = recorder.trajectory()
    assert trajectory.meta["status"] == "recording" and not trajectory.complete
    assert trajectory.steps.tolist() == [0, 1]


# ------------------------------------------------------ freqlens.training
def test_train_drives_the_recorder(bert, probes, directory):
    n, config = 20, TrainConfig(epochs=2, batch_size=4, lr=1e-3, seed=0)
    data = random_encodings(n, LENGTH, seed=5, pad_from=5)
    total = 2 * 5
    recorder = Recorder(directory, probes, schedule="log:4")
    result = train(bert, data, random_labels(n, seed=5), config, recorder=recorder, progress=False)
    assert result.steps == total and len(result.losses) == total
    assert recorder.recorded_steps == Schedule.log(4).steps(total) == [0, 1, 2, 5, 10]
    assert 0 < result.recording_seconds <= result.seconds
    assert not recorder.closed  # train() leaves closing to the caller
    recorder.close()

    trajectory = load_trajectory(directory)
    assert trajectory.complete and trajectory.meta["total_steps"] == total
    steps = trajectory.steps
    np.testing.assert_allclose(trajectory.scalars["epoch"], steps / 5)  # 5 steps per epoch
    np.testing.assert_allclose(trajectory.scalars["loss"][1:], [result.losses[s - 1] for s in steps[1:]])
    assert np.isnan(trajectory.scalars["loss"][0])


def test_train_with_a_started_recorder_does_not_restart_it(bert, probes, directory):
    n = 8
    data = random_encodings(n, LENGTH, seed=6)
    with Recorder(directory, probes, schedule="every:1") as recorder:
        recorder.start(bert, total_steps=2)
        train(bert, data, random_labels(n), TrainConfig(epochs=1, batch_size=4), recorder=recorder, progress=False)
    assert recorder.recorded_steps == [0, 1, 2]


# ---------------------------------------------------------- the demo task
def test_demo_task_probes_from_texts(directory):
    from freqlens.demo.model import make_model, make_tokenizer
    from freqlens.demo.task import TaskConfig, make_task

    task = make_task(TaskConfig(num_train=20, num_dev=8, num_test=4, seed=0))
    tokenizer = make_tokenizer()
    probes = [
        ProbeSet.from_texts("clean", task.dev_clean.texts, task.dev_clean.labels, tokenizer, max_length=24),
        ProbeSet.from_texts(
            "backdoor", task.dev_poison.texts, task.dev_poison.labels, tokenizer, max_length=24,
            poison=[True] * len(task.dev_poison.texts),
        ),
    ]
    model = make_model(len(tokenizer), hidden_size=16, layers=1, heads=2)
    with Recorder(directory, probes, schedule="every:1") as recorder:
        recorder.start(model)
    trajectory = load_trajectory(directory)
    assert trajectory.texts["clean"] == list(task.dev_clean.texts)
    assert trajectory.inputs["clean"].shape == (8, 24 * 16)
    assert trajectory.meta["probe_sets"]["backdoor"]["role"] == "backdoor"
    assert trajectory.poison["backdoor"].all()
    with pytest.raises(ValueError, match="at least one text"):
        ProbeSet.from_texts("clean", [], [], tokenizer)


@pytest.mark.parametrize("adapter", ["lora", "prompt"])
def test_kernel_inputs_look_through_a_peft_wrapper(probes, tmp_path, adapter):
    """LoRA or prompt tuning leaves the kernel inputs those of the base model's embeddings."""
    from freqlens.defenses import add_lora, add_prefix

    plain, wrapped = tmp_path / "plain", tmp_path / "wrapped"
    with Recorder(plain, probes, schedule="every:1") as recorder:
        recorder.start(tiny_bert())
    model = add_lora(tiny_bert()) if adapter == "lora" else add_prefix(tiny_bert(), num_virtual_tokens=3)
    with Recorder(wrapped, probes, schedule="every:1") as recorder:
        recorder.start(model)
    expected, got = load_trajectory(plain), load_trajectory(wrapped)
    assert "BertEmbeddings" in got.meta["embedding_layer"]
    for name in expected.names:
        np.testing.assert_allclose(got.inputs[name], expected.inputs[name], rtol=0, atol=1e-6)
