"""The Recorder driven by a Hugging Face Trainer through Recorder.callback()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import random_encodings, random_labels

from freqlens.recording import Recorder, Schedule, load_trajectory

N_TRAIN, BATCH = 32, 8  # 4 optimisation steps per epoch


class DictDataset(torch.utils.data.Dataset):
    """Examples as dicts of tensors (input_ids, attention_mask, labels)."""

    def __init__(self, n: int = N_TRAIN, seed: int = 7):
        encodings = random_encodings(n, 12, seed=seed, pad_from=5)
        self.rows = [
            {
                "input_ids": encodings["input_ids"][i],
                "attention_mask": encodings["attention_mask"][i],
                "labels": random_labels(n, seed=seed)[i],
            }
            for i in range(n)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def run_trainer(model, recorder, tmp_path, **arguments):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        **arguments,
    )
    trainer = Trainer(model=model, args=args, train_dataset=DictDataset(), callbacks=[recorder.callback()])
    trainer.train()
    return trainer


def test_trainer_with_max_steps(bert, probes, directory, tmp_path):
    recorder = Recorder(directory, probes, schedule="every:3")
    trainer = run_trainer(bert, recorder, tmp_path, max_steps=8)
    assert trainer.state.global_step == 8
    assert recorder.closed  # on_train_end closes it
    assert recorder.recorded_steps == [0, 3, 6, 8]

    trajectory = load_trajectory(directory)
    assert trajectory.steps.tolist() == [0, 3, 6, 8]
    assert trajectory.complete
    assert trajectory.meta["total_steps"] == 8 and trajectory.meta["schedule"] == "every:3"
    np.testing.assert_allclose(trajectory.scalars["epoch"], [0.0, 0.75, 1.5, 2.0])
    for name, outputs in trajectory.outputs.items():
        assert outputs.shape[0] == 4
        np.testing.assert_allclose(outputs.sum(-1), 1.0, atol=1e-5)
    assert not np.allclose(trajectory.outputs["clean"][0], trajectory.outputs["clean"][-1])


def test_trainer_with_epochs_and_a_log_schedule(bert, probes, directory, tmp_path):
    recorder = Recorder(directory, probes, schedule=Schedule.log(3))
    run_trainer(bert, recorder, tmp_path, num_train_epochs=2)
    total = 2 * N_TRAIN // BATCH
    trajectory = load_trajectory(directory)
    assert trajectory.steps.tolist() == Schedule.log(3).steps(total) == [0, 1, 3, 8]
    assert trajectory.meta["total_steps"] == total and trajectory.complete
    np.testing.assert_allclose(trajectory.scalars["epoch"], trajectory.steps / (N_TRAIN // BATCH))


def test_trainer_snapshots_store_the_epoch_not_the_loss(bert, probes, directory, tmp_path):
    # The Trainer logs the loss after on_step_end: the callback stores only the epoch.
    recorder = Recorder(directory, probes, schedule="every:2")
    run_trainer(bert, recorder, tmp_path, max_steps=4)
    scalars = load_trajectory(directory).scalars
    assert "loss" not in scalars
    np.testing.assert_allclose(scalars["epoch"][1:], [s / (N_TRAIN // BATCH) for s in (2, 4)])
