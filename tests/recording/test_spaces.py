"""Input spaces of the probe kernel: every built-in space in every model family against an
independent reference, user functions, names refused, old trajectories read, resume."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from defenses.helpers import FAMILIES, build, inputs  # noqa: E402
from models import HIDDEN, forward_hooks, random_labels  # noqa: E402

from freqlens.models import embedding_inputs  # noqa: E402
from freqlens.recording import ProbeSet, Recorder, TrajectoryWriter, load_trajectory  # noqa: E402
from freqlens.recording.spaces import (  # noqa: E402
    BUILT_IN,
    DEFAULT_INPUT_SPACES,
    register_input_space,
    resolve_input_spaces,
    unregister_input_space,
)

N, LENGTH = 5, 8


def probe_sets(family: str) -> list[ProbeSet]:
    clean = ProbeSet("clean", inputs(family, n=N, length=LENGTH, seed=3), random_labels(N, seed=1))
    backdoor = ProbeSet("backdoor", inputs(family, n=3, length=LENGTH, seed=4), torch.ones(3, dtype=torch.long),
                        poison=[True] * 3)
    return [clean, backdoor]


def one_by_one(model, encodings, read) -> np.ndarray:
    """The reference: each example alone, cut to its real tokens (no padding at all), read by
    ``read(model, example) -> (length, d)`` and averaged over its tokens."""
    rows = []
    model.eval()
    with torch.no_grad():
        for i in range(len(encodings["input_ids"])):
            length = int(encodings["attention_mask"][i].sum())
            example = {k: v[i : i + 1, :length] for k, v in encodings.items()}
            rows.append(read(model, example).mean(dim=0).numpy())
    return np.stack(rows)


def last_hidden(model, example) -> torch.Tensor:
    return model(**example, output_hidden_states=True).hidden_states[-1][0]


def first_hidden(model, example) -> torch.Tensor:
    return model(**example, output_hidden_states=True).hidden_states[0][0]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_built_in_space_in_every_family_matches_an_unpadded_reference(tmp_path, family):
    model = build(family, dropout=0.1)
    model.train()
    probes = probe_sets(family)
    with Recorder(tmp_path / "run", probes, schedule="every:1") as recorder:
        recorder.start(model)
    trajectory = load_trajectory(tmp_path / "run")
    assert trajectory.input_spaces == list(DEFAULT_INPUT_SPACES)
    assert model.training and forward_hooks(model) == 0  # mode restored, no hook left (ours or transformers')
    for probe in probes:
        flattened = trajectory.kernel_inputs("flattened")[probe.name]
        np.testing.assert_array_equal(flattened, embedding_inputs(model, probe.encodings))
        np.testing.assert_array_equal(trajectory.inputs[probe.name], flattened)  # the first space is `inputs`
        assert flattened.shape == (len(probe), LENGTH * HIDDEN)
        # mean-pooled: the flattened rows, unflattened and averaged over the real tokens
        mask = probe.encodings["attention_mask"].numpy()
        states = flattened.reshape(len(probe), LENGTH, HIDDEN)
        expected = states.sum(1) / mask.sum(1, keepdims=True)
        np.testing.assert_allclose(trajectory.kernel_inputs("mean-pooled")[probe.name], expected, atol=1e-6)
        # hidden:-1: the last hidden state of each example run alone, without padding
        hidden = trajectory.kernel_inputs("hidden:-1")[probe.name]
        assert hidden.shape == (len(probe), HIDDEN) and hidden.dtype == np.float32
        np.testing.assert_allclose(hidden, one_by_one(model, probe.encodings, last_hidden), atol=2e-5)
    spaces = {entry["name"]: entry for entry in trajectory.meta["input_spaces"]}
    assert list(spaces) == list(DEFAULT_INPUT_SPACES)
    assert spaces["flattened"]["dim"] == LENGTH * HIDDEN and spaces["hidden:-1"]["dim"] == HIDDEN
    assert f"{LENGTH} * {HIDDEN} = {LENGTH * HIDDEN}" in spaces["flattened"]["description"]
    assert "attention mask" in spaces["mean-pooled"]["description"]
    assert "output of layer 2 of 2" in spaces["hidden:-1"]["description"]
    assert trajectory.input_space_description("hidden:-1") == spaces["hidden:-1"]["description"]


def test_hidden_state_0_is_the_embedding_output_and_other_layers_differ(tmp_path):
    model = build("bert")
    probes = probe_sets("bert")
    with Recorder(tmp_path / "run", probes, schedule="every:1",
                  input_spaces=["mean-pooled", "hidden:0", "hidden:1", "hidden:-1"]) as recorder:
        recorder.start(model)
    trajectory = recorder.trajectory()
    assert trajectory.input_spaces == ["mean-pooled", "hidden:0", "hidden:1", "hidden:-1"]
    np.testing.assert_array_equal(trajectory.inputs["clean"], trajectory.kernel_inputs("mean-pooled")["clean"])
    np.testing.assert_allclose(trajectory.kernel_inputs("hidden:0")["clean"],
                               trajectory.kernel_inputs("mean-pooled")["clean"], atol=1e-6)
    np.testing.assert_allclose(trajectory.kernel_inputs("hidden:0")["clean"],
                               one_by_one(model, probes[0].encodings, first_hidden), atol=1e-5)
    assert not np.allclose(trajectory.kernel_inputs("hidden:1")["clean"],
                           trajectory.kernel_inputs("hidden:-1")["clean"])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_peft_wrapper_is_looked_through(tmp_path, family):
    from freqlens.defenses.adapters import add_lora

    plain = build(family)
    with Recorder(tmp_path / "plain", probe_sets(family), schedule="every:1") as recorder:
        recorder.start(plain)
    wrapped = add_lora(build(family))
    with Recorder(tmp_path / "lora", probe_sets(family), schedule="every:1") as recorder:
        recorder.start(wrapped)
    a, b = load_trajectory(tmp_path / "plain"), load_trajectory(tmp_path / "lora")
    assert "of" in b.meta["model"]  # recorded through the wrapper
    for space in DEFAULT_INPUT_SPACES:
        for name in ("clean", "backdoor"):  # LoRA starts as the identity
            np.testing.assert_allclose(b.kernel_inputs(space)[name], a.kernel_inputs(space)[name], atol=1e-6)


def lengths(model, encodings):
    """Real tokens per example."""
    return encodings["attention_mask"].sum(1, keepdim=True).float()


def test_a_registered_function_and_an_import_string(tmp_path, monkeypatch):
    module = types.ModuleType("freqlens_user_spaces")
    module.lengths = lengths
    monkeypatch.setitem(sys.modules, "freqlens_user_spaces", module)  # importable by name, wherever pytest runs
    register_input_space("length", lengths)
    try:
        names = ["length", "freqlens_user_spaces:lengths"]
        with Recorder(tmp_path / "run", probe_sets("bert"), schedule="every:1", input_spaces=names) as recorder:
            recorder.start(build("bert"))
    finally:
        unregister_input_space("length")
    trajectory = load_trajectory(tmp_path / "run")
    expected = probe_sets("bert")[0].encodings["attention_mask"].sum(1, keepdims=True).float().numpy()
    assert trajectory.input_spaces == names
    for name in names:
        np.testing.assert_array_equal(trajectory.kernel_inputs(name)["clean"], expected)
        description = trajectory.input_space_description(name)
        assert "test_spaces.lengths" in description and "Real tokens per example" in description


@pytest.mark.parametrize(("bad", "match"), [
    (["flattened", "bogus"], r"`input_spaces` to be one of the built-in spaces .*'flattened', 'mean-pooled', "
                             r"'hidden:K'.* but got 'bogus'"),
    (["hidden:last"], r"but got 'hidden:last'"),
    ([], r"non-empty list"),
    ("flattened", r"non-empty list"),
    (["flattened", "flattened"], r"each input space once but \['flattened'\]"),
    (["no_such_module_here:fn"], r"'no_such_module_here' cannot be imported"),
    (["json:no_such_function"], r"has no 'no_such_function'"),
])
def test_bad_space_names_are_refused_naming_the_argument(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        Recorder(tmp_path / "run", probe_sets("bert"), input_spaces=bad)
    with pytest.raises(ValueError, match=match.replace("`input_spaces`", "`record.input_spaces`")):
        resolve_input_spaces(bad, argument="record.input_spaces")
    assert BUILT_IN == ("flattened", "mean-pooled", "hidden:K")


def test_register_refuses_built_in_names_and_non_functions():
    for name in ("flattened", "mean-pooled", "hidden", "hidden:3", "a:b", ""):
        with pytest.raises(ValueError, match="`name`"):
            register_input_space(name, lengths)
    with pytest.raises(ValueError, match="`function` to be callable"):
        register_input_space("fine", 3)


def test_a_hidden_layer_the_model_lacks_and_a_bad_function_are_errors_at_start(tmp_path):
    with pytest.raises(ValueError, match=r"'hidden:7'.*\[-3, 2\].*got 7"):
        with Recorder(tmp_path / "a", probe_sets("bert"), schedule="every:1", input_spaces=["hidden:7"]) as recorder:
            recorder.start(build("bert"))
    register_input_space("flat", lambda model, encodings: np.zeros(len(encodings["input_ids"])))
    register_input_space("nan", lambda model, encodings: np.full((len(encodings["input_ids"]), 2), np.nan))
    try:
        with pytest.raises(ValueError, match=r"'flat' to return an array of shape \(5, D\).*\(5,\)"):
            with Recorder(tmp_path / "b", probe_sets("bert"), schedule="every:1", input_spaces=["flat"]) as recorder:
                recorder.start(build("bert"))
        with pytest.raises(ValueError, match=r"'nan' to return finite numbers"):
            with Recorder(tmp_path / "c", probe_sets("bert"), schedule="every:1", input_spaces=["nan"]) as recorder:
                recorder.start(build("bert"))
    finally:
        unregister_input_space("flat")
        unregister_input_space("nan")


def write_old_trajectory(directory: Path) -> np.ndarray:
    """A trajectory in the layout freqlens wrote before input spaces: probes/<name>.npz with
    inputs, labels, poison; meta.json without ``input_spaces`` or per-set ``spaces``."""
    (directory / "probes").mkdir(parents=True)
    (directory / "snapshots").mkdir()
    flattened = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(directory / "probes" / "clean.npz", inputs=flattened, labels=np.array([0, 1, 1]),
             poison=np.zeros(3, bool))
    for step in (0, 5):
        np.savez(directory / "snapshots" / f"step-{step:09d}.npz", clean=np.full((3, 2), 0.5, np.float32),
                 __step__=np.asarray(step, np.int64))
    meta = {"format": "freqlens.trajectory", "version": 1, "status": "complete", "schedule": "steps:0,5",
            "total_steps": 5, "embedding_layer": "output of BertEmbeddings",
            "probe_sets": {"clean": {"n": 3, "dim": 4, "role": "clean"}}}
    (directory / "meta.json").write_text(json.dumps(meta))
    return flattened


def test_a_trajectory_from_before_input_spaces_reads_as_flattened(tmp_path):
    flattened = write_old_trajectory(tmp_path)
    trajectory = load_trajectory(tmp_path)
    assert trajectory.input_spaces == ["flattened"]
    np.testing.assert_array_equal(trajectory.kernel_inputs("flattened")["clean"], flattened)
    np.testing.assert_array_equal(trajectory.in_space("flattened").inputs["clean"], flattened)
    assert "BertEmbeddings" in trajectory.input_space_description("flattened")
    with pytest.raises(ValueError, match=r"one of \['flattened'\], but got 'mean-pooled'"):
        trajectory.kernel_inputs("mean-pooled")


def test_unknown_space_names_those_recorded(tmp_path):
    writer = TrajectoryWriter(tmp_path)
    writer.write_probe("clean", inputs={"mean-pooled": np.ones((2, 3)), "hidden:-1": np.zeros((2, 4))},
                       labels=np.array([0, 1]))
    writer.write_snapshot(0, {"clean": np.full((2, 2), 0.5)})
    trajectory = load_trajectory(tmp_path)
    assert trajectory.input_spaces == ["mean-pooled", "hidden:-1"]
    assert trajectory.inputs["clean"].shape == (2, 3)
    assert trajectory.in_space("hidden:-1").inputs["clean"].shape == (2, 4)
    with pytest.raises(ValueError, match=r"one of \['mean-pooled', 'hidden:-1'\], but got 'flattened'"):
        trajectory.kernel_inputs("flattened")
    with pytest.raises(ValueError, match=r"shape \(2, D\)"):
        writer.write_probe("other", inputs={"flattened": np.ones((3, 2))}, labels=np.array([0, 1]))


def test_resume_needs_the_stored_spaces(tmp_path, manual_loop):
    directory = tmp_path / "run"
    probes = probe_sets("bert")
    model = build("bert")
    with Recorder(directory, probes, schedule="steps:0,2,4", input_spaces=["flattened", "hidden:-1"]) as recorder:
        manual_loop(model, recorder, 2, total_steps=4)
    with pytest.raises(ValueError, match=r"stored input spaces \['flattened', 'hidden:-1'\] but got "
                                         r"input_spaces=\['flattened', 'mean-pooled', 'hidden:-1'\]"):
        Recorder(directory, probes, schedule="steps:0,2,4", resume=True).start(model, total_steps=4, step=2)
    recorder = Recorder(directory, probes, schedule="steps:0,2,4", resume=True,
                        input_spaces=["flattened", "hidden:-1"])
    recorder.start(model, total_steps=4, step=2)
    recorder.record(4)
    recorder.close()
    trajectory = load_trajectory(directory)
    assert trajectory.steps.tolist() == [0, 2, 4] and trajectory.input_spaces == ["flattened", "hidden:-1"]


def test_resume_of_a_trajectory_from_before_input_spaces(tmp_path):
    """An old trajectory has one space, "flattened": resuming it with that space works."""
    write_old_trajectory(tmp_path)
    encodings = {"input_ids": torch.tensor([[5, 6], [7, 8], [9, 10]]),
                 "attention_mask": torch.ones(3, 2, dtype=torch.long)}
    probes = [ProbeSet("clean", encodings, torch.tensor([0, 1, 1]))]
    recorder = Recorder(tmp_path, probes, schedule="steps:0,5", resume=True, input_spaces=["flattened"])
    recorder.start(build("bert"), total_steps=5, step=5)
    recorder.close()
    assert load_trajectory(tmp_path).steps.tolist() == [0, 5]
    with pytest.raises(ValueError, match="stored input spaces"):
        Recorder(tmp_path, probes, schedule="steps:0,5", resume=True).start(build("bert"), total_steps=5, step=5)
