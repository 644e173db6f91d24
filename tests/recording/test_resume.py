"""Resuming a recording: a run killed after a checkpoint and restarted from it
continues its trajectory under the true global step (issue 12, item 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import random_encodings, random_labels, tiny_bert

from freqlens.recording import ProbeSet, Recorder, load_trajectory

from .test_trainer import N_TRAIN, DictDataset

MAX_STEPS = 8  # 4 optimisation steps per epoch: 2 epochs


class Killed(RuntimeError):
    """Stands in for SIGKILL: raised at the end of a step, after the recorder ran."""


def trainer_callback(kill_at: int | None):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if kill_at is not None and state.global_step == kill_at:
                raise Killed(f"killed at step {kill_at}")

    return Kill()


def trainer(model, recorder, output_dir, *, save_steps: int | None = None, kill_at: int | None = None):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=N_TRAIN // 4, learning_rate=1e-3, report_to=[],
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, max_steps=MAX_STEPS,
        use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0, logging_steps=1,
    )
    # The recorder's callback comes before the killer: a killed step is recorded,
    # its checkpoint (saved after on_step_end) is not: the run died past its last checkpoint.
    return Trainer(model=model, args=args, train_dataset=DictDataset(),
                   callbacks=[recorder.callback(), trainer_callback(kill_at)])


def snapshot(directory) -> dict:
    """Everything a trajectory holds, copied."""
    t = load_trajectory(directory)
    return {"steps": t.steps.tolist(), "inputs": {k: v.copy() for k, v in t.inputs.items()},
            "outputs": {k: v.copy() for k, v in t.outputs.items()}, "meta": t.meta,
            "epoch": t.scalars.get("epoch")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The trajectory of the same Trainer run, never killed."""
    root = tmp_path_factory.mktemp("uninterrupted")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer(tiny_bert(), Recorder(root / "trajectory", _probes(), schedule="every:1"), root / "trainer").train()
    finally:
        torch.set_num_threads(threads)
    return snapshot(root / "trajectory")


def _probes(n_clean: int = 10, n_backdoor: int = 6) -> list[ProbeSet]:
    clean = ProbeSet("clean", random_encodings(n_clean, 12, seed=1, pad_from=4), random_labels(n_clean, seed=1),
                     texts=[f"text {i}" for i in range(n_clean)])
    backdoor = ProbeSet("backdoor", random_encodings(n_backdoor, 12, seed=2, pad_from=6),
                        torch.ones(n_backdoor, dtype=torch.long), poison=[True] * n_backdoor)
    return [clean, backdoor]


@pytest.mark.parametrize(("save_steps", "kill_at"), [(2, 3), (3, 5), (4, 7), (3, 8)])
def test_trainer_resume_continues_the_trajectory(directory, tmp_path, uninterrupted, save_steps, kill_at):
    probes = _probes()
    checkpoint = (kill_at - 1) // save_steps * save_steps  # the last checkpoint before the kill
    with pytest.raises(Killed):
        trainer(tiny_bert(), Recorder(directory, probes, schedule="every:1"), tmp_path / "trainer",
                save_steps=save_steps, kill_at=kill_at).train()
    before = snapshot(directory)
    assert before["steps"] == list(range(kill_at + 1)) and before["meta"]["status"] == "recording"

    # A new process: the model as built, the Trainer restored from its checkpoint.
    recorder = Recorder(directory, probes, schedule="every:1", resume=True)
    trainer(tiny_bert(), recorder, tmp_path / "trainer", save_steps=save_steps).train(
        resume_from_checkpoint=str(tmp_path / "trainer" / f"checkpoint-{checkpoint}"))
    after = snapshot(directory)

    assert after["steps"] == list(range(MAX_STEPS + 1))  # the union, by true global step
    assert after["meta"]["status"] == "complete" and after["meta"]["snapshots"] == MAX_STEPS + 1
    assert after["meta"]["resumed"][0]["step"] == checkpoint
    assert after["meta"]["resumed"][0]["replaced_steps"] == list(range(checkpoint + 1, kill_at + 1))
    for name in before["inputs"]:
        np.testing.assert_array_equal(after["inputs"][name], before["inputs"][name])  # step-0 kernel inputs kept
        np.testing.assert_array_equal(after["outputs"][name][: checkpoint + 1],
                                      before["outputs"][name][: checkpoint + 1])  # earlier snapshots kept
        np.testing.assert_array_equal(after["inputs"][name], uninterrupted["inputs"][name])
        # Every step holds the model of that global step: the same as the run never killed.
        np.testing.assert_allclose(after["outputs"][name], uninterrupted["outputs"][name], atol=1e-5)
    np.testing.assert_allclose(after["epoch"], uninterrupted["epoch"])


def test_a_new_recorder_refuses_a_resumed_trainer(probes, directory, tmp_path):
    with pytest.raises(Killed):
        trainer(tiny_bert(), Recorder(directory, probes, schedule="every:1"), tmp_path / "trainer",
                save_steps=2, kill_at=3).train()
    fresh = tmp_path / "fresh"  # no trajectory to continue: the kernel inputs would be trained embeddings
    with pytest.raises(ValueError, match="resume=True"):
        trainer(tiny_bert(), Recorder(fresh, probes, schedule="every:1"), tmp_path / "trainer",
                save_steps=2).train(resume_from_checkpoint=str(tmp_path / "trainer" / "checkpoint-2"))
    with pytest.raises(ValueError, match="there is none"):
        trainer(tiny_bert(), Recorder(fresh, probes, schedule="every:1", resume=True), tmp_path / "trainer",
                save_steps=2).train(resume_from_checkpoint=str(tmp_path / "trainer" / "checkpoint-2"))
    with pytest.raises(FileExistsError, match="resume=True"):  # the old directory without resume
        Recorder(directory, probes, schedule="every:1")
    assert load_trajectory(directory).steps.tolist() == [0, 1, 2, 3]  # nothing was touched


def test_resume_refuses_other_probe_sets(probes, directory, bert, manual_loop):
    manual_loop(bert, Recorder(directory, probes, schedule="every:1"), 3)
    clean, backdoor = probes
    other_labels = ProbeSet("clean", clean.encodings, 1 - clean.labels, texts=clean.texts)
    other_texts = ProbeSet("clean", clean.encodings, clean.labels, texts=[t + "!" for t in clean.texts])
    other_inputs = ProbeSet("clean", {k: v.flip(0) for k, v in clean.encodings.items()}, clean.labels,
                            texts=clean.texts)
    fewer = ProbeSet("clean", {k: v[:-1] for k, v in clean.encodings.items()}, clean.labels[:-1],
                     texts=clean.texts[:-1])
    for changed, reason in ((other_labels, "differ"), (other_texts, "differ"), (other_inputs, "differ"),
                            (fewer, "examples")):
        with pytest.raises(ValueError, match=f"probe set 'clean'.*{reason}"):
            Recorder(directory, [changed, backdoor], schedule="every:1", resume=True)
    with pytest.raises(ValueError, match="probe sets"):
        Recorder(directory, [clean], schedule="every:1", resume=True)
    with pytest.raises(ValueError, match="schedule"):
        Recorder(directory, probes, schedule="every:2", resume=True).start(bert, step=2)
    assert load_trajectory(directory).steps.tolist() == [0, 1, 2, 3]


def _plain_loop(model, recorder, *, first: int, last: int, state: dict | None, save_at: int | None):
    """AdamW steps ``first..last`` on one batch with dropout on; at ``save_at`` the model,
    optimiser and torch RNG are saved into the returned dict (a checkpoint)."""
    batch, labels = random_encodings(8, 12, seed=10, pad_from=5), random_labels(8, seed=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    recorder.start(model, total_steps=MAX_STEPS, step=first - 1)
    model.train()
    saved = None
    for step in range(first, last + 1):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        recorder.step(step, loss=float(loss.detach()))
        if step == save_at:
            saved = torch.load(_roundtrip({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                           "rng": torch.get_rng_state()}), weights_only=True)
    return saved


def _roundtrip(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize(("save_at", "kill_at"), [(1, 2), (3, 6), (5, 5), (4, 8)])
def test_plain_loop_resume(probes, directory, tmp_path, save_at, kill_at):
    schedule = "log:6"
    torch.manual_seed(0)
    whole = Recorder(tmp_path / "whole", probes, schedule=schedule)
    _plain_loop(tiny_bert(), whole, first=1, last=MAX_STEPS, state=None, save_at=None)
    whole.close()
    reference = snapshot(tmp_path / "whole")

    torch.manual_seed(0)
    state = _plain_loop(tiny_bert(), Recorder(directory, probes, schedule=schedule), first=1, last=kill_at,
                        state=None, save_at=save_at)  # then killed: never closed
    before = snapshot(directory)
    with Recorder(directory, probes, schedule=schedule, resume=True) as recorder:
        _plain_loop(tiny_bert(), recorder, first=save_at + 1, last=MAX_STEPS, state=state, save_at=None)
    after = snapshot(directory)
    assert after["steps"] == reference["steps"] == [0, 1, 2, 3, 4, 6, 8]
    assert after["meta"]["status"] == "complete"
    kept = [i for i, s in enumerate(before["steps"]) if s <= save_at]
    for name in (p.name for p in probes):
        np.testing.assert_array_equal(after["inputs"][name], before["inputs"][name])
        np.testing.assert_array_equal(after["outputs"][name][kept], before["outputs"][name][kept])
        np.testing.assert_allclose(after["outputs"][name], reference["outputs"][name], atol=1e-6)


def test_resume_from_step_zero_replaces_the_trajectory(probes, directory, bert, manual_loop):
    manual_loop(bert, Recorder(directory, probes, schedule="every:1"), 3)
    recorder = Recorder(directory, probes, schedule="every:1", resume=True)
    manual_loop(tiny_bert(), recorder, 2)  # restarted from scratch: records anew from step 0
    recorder.close()
    trajectory = load_trajectory(directory)
    assert trajectory.steps.tolist() == [0, 1, 2] and trajectory.complete
    assert "resumed" not in trajectory.meta


def test_start_at_a_later_step_needs_resume(probes, directory, bert):
    with pytest.raises(ValueError, match="trained embeddings"):
        Recorder(directory, probes).start(bert, total_steps=8, step=4)
    with pytest.raises(ValueError, match="`step`"):
        Recorder(tmp := directory.parent / "other", probes).start(bert, total_steps=8, step=-1)
    assert not (tmp / "meta.json").exists()
