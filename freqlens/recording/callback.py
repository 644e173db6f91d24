"""Drive a :class:`~freqlens.Recorder` from a Hugging Face ``Trainer``."""

from __future__ import annotations

from transformers import TrainerCallback


class RecorderCallback(TrainerCallback):
    """Starts the recorder when training begins, steps it after every
    optimisation step, and closes it when training ends.

    Every process calls the recorder: under data-parallel training
    (``torchrun``, ``accelerate launch``) its snapshots are collectives in which
    each process predicts a share of the probe rows, and the recorder lets
    rank 0 alone write (see :class:`~freqlens.Recorder`). So every process
    builds its own Recorder with the same arguments and passes its callback.
    Each snapshot stores the epoch; the training loss is not stored, because
    the Trainer logs it after ``on_step_end`` and only every ``logging_steps``
    (its ``log_history`` has it).

    Example::

        recorder = Recorder("run/trajectory", probes)
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          callbacks=[recorder.callback()])
        trainer.train()

    Resuming: a run restarted with ``trainer.train(resume_from_checkpoint=...)``
    begins at the checkpoint's ``state.global_step`` > 0. Build the recorder
    with ``resume=True`` over the directory the first run recorded into: the
    callback then continues the trajectory at that step (``Recorder.start``
    with ``step=state.global_step``): the step-0 kernel inputs and the
    snapshots up to the checkpoint are kept, the snapshots the killed run
    recorded after it are recorded again as the resumed run re-takes those
    steps. A recorder without ``resume=True`` refuses a resumed run
    (``ValueError``) rather than take trained embeddings as kernel inputs.
    """

    def __init__(self, recorder) -> None:
        self.recorder = recorder

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("Expected the Trainer to pass `model` to the callback but got None.")
        self.recorder.start(model, total_steps=state.max_steps or None, step=int(state.global_step),
                            epoch=float(state.epoch or 0.0))

    def on_step_end(self, args, state, control, **kwargs):
        self.recorder.step(state.global_step, epoch=state.epoch)

    def on_train_end(self, args, state, control, **kwargs):
        self.recorder.close()
