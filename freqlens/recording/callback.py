"""Drive a :class:`~freqlens.Recorder` from a Hugging Face ``Trainer``."""

from __future__ import annotations

from transformers import TrainerCallback


class RecorderCallback(TrainerCallback):
    """Starts the recorder when training begins, steps it after every
    optimisation step, and closes it when training ends.

    Only the main process records (``state.is_world_process_zero``). Each
    snapshot stores the epoch; the training loss is not stored, because the
    Trainer logs it after ``on_step_end`` and only every ``logging_steps``
    (its ``log_history`` has it).

    Example::

        recorder = Recorder("run/trajectory", probes)
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          callbacks=[recorder.callback()])
        trainer.train()
    """

    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            if model is None:
                raise ValueError("Expected the Trainer to pass `model` to the callback but got None.")
            self.recorder.start(model, total_steps=state.max_steps or None, epoch=0.0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.recorder.step(state.global_step, epoch=state.epoch)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.recorder.close()
