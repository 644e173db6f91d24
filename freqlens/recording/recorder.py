"""The recorder: model outputs on fixed probe sets, over training, on disk."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from freqlens._checks import check_positive_int
from freqlens.models import embedding_inputs, predict_proba, resolve_probe_layer
from freqlens.recording.probes import ProbeSet
from freqlens.recording.schedule import Schedule
from freqlens.recording.storage import Trajectory, TrajectoryWriter, load_trajectory


class Recorder:
    """Records softmax outputs on probe sets while a model trains.

    At :meth:`start` it computes each probe set's kernel inputs (the
    embedding-layer outputs of the model as it is before training) and records
    step 0; then :meth:`step` is called once per optimisation step and records
    when the schedule says so. Every snapshot goes to disk at once, atomically
    (see :mod:`freqlens.recording.storage`), so a crash loses nothing already
    recorded. Use it from a plain PyTorch loop::

        with Recorder("run/trajectory", probes, schedule=Schedule.log(60)) as recorder:
            recorder.start(model, total_steps=len(loader) * epochs)
            for step, batch in enumerate(batches, start=1):
                ...  # forward, backward, optimizer.step()
                recorder.step(step)

    or in a Hugging Face ``Trainer`` via :meth:`callback`.

    Args:
        directory: where the trajectory is written.
        probes: the probe sets (``ProbeSet`` objects, or a mapping name -> set).
        schedule: when to record (default: 50 log-spaced snapshots).
        batch_size: probe examples per forward pass.
        embedding_layer: the module whose output gives the kernel inputs
            (default: the model's embedding layer, read where
            :func:`freqlens.models.probe_embedding_layer` says: GPT-2's first
            block at its input, other families at the embeddings' output).
        overwrite: replace a trajectory already in ``directory``.
        metadata: extra JSON-serialisable fields for meta.json.

    Attributes:
        seconds: wall time spent recording (kernel inputs and snapshots).
        recorded_steps: the steps recorded so far.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        probes: Sequence[ProbeSet] | Mapping[str, ProbeSet],
        *,
        schedule: Schedule | str = "log:50",
        batch_size: int = 128,
        embedding_layer: nn.Module | None = None,
        overwrite: bool = False,
        metadata: Mapping | None = None,
    ) -> None:
        if isinstance(probes, ProbeSet):
            probes = [probes]
        sets = list(probes.values()) if isinstance(probes, Mapping) else list(probes)
        if not sets or not all(isinstance(p, ProbeSet) for p in sets):
            raise ValueError(f"Expected `probes` to be a non-empty list of ProbeSet but got {probes!r}.")
        names = [p.name for p in sets]
        if len(set(names)) != len(names):
            raise ValueError(f"Expected probe set names to be unique but got {names}.")
        self.probes = {p.name: p for p in sets}
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.schedule = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
        self.embedding_layer = embedding_layer
        self.directory = os.fspath(directory)
        self._writer = TrajectoryWriter(directory, overwrite=overwrite)
        self._metadata = dict(metadata or {})
        self._model: nn.Module | None = None
        self._due: set[int] | None = None
        self._joint, self._bounds = _joint_encodings(sets)
        self._total: int | None = None
        self.seconds = 0.0
        self.recorded_steps: list[int] = []
        self._recorded: set[int] = set()
        self.closed = False

    # ----------------------------------------------------------------- control
    def start(self, model: nn.Module, total_steps: int | None = None, **scalars: float) -> None:
        """Compute the kernel inputs from ``model`` as it is now and record step 0.

        Args:
            model: the model about to be trained.
            total_steps: the run's number of optimisation steps (needed by the
                log-spaced schedule).
            **scalars: numbers stored with the step-0 snapshot.
        """
        if self._model is not None:
            raise RuntimeError("Recorder.start() was called twice; use one Recorder per run.")
        if self.closed:
            raise RuntimeError("Recorder is closed; use a new Recorder for a new run.")
        # Everything that can fail on a bad argument runs before any state is kept.
        due = None
        if self.schedule.kind != "every" or total_steps is not None:
            due = set(self.schedule.steps(total_steps))
        began = time.perf_counter()
        # A peft wrapper (LoRA, prompt tuning) is looked through: the kernel inputs are the
        # base model's embeddings, without virtual tokens (identical for LoRA at its start).
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layer, mode = resolve_probe_layer(base, self.embedding_layer)
        inputs = {
            name: embedding_inputs(base, probe.encodings, module=layer, mode=mode,
                                   batch_size=self.batch_size)
            for name, probe in self.probes.items()
        }
        self._model, self._total, self._due = model, total_steps, due
        for name, probe in self.probes.items():
            self._writer.write_probe(
                name,
                inputs=inputs[name],
                labels=probe.labels.numpy(),
                poison=probe.poison,
                texts=probe.texts,
                role=probe.role,
            )
        self._writer.update_meta(
            schedule=str(self.schedule),
            total_steps=total_steps,
            model=type(base).__name__ if base is model else f"{type(model).__name__} of {type(base).__name__}",
            embedding_layer=f"{mode} of {type(layer).__name__}",
            **self._metadata,
        )
        self.seconds += time.perf_counter() - began
        self.record(0, **scalars)

    def due(self, step: int) -> bool:
        """Whether the schedule records ``step``."""
        if self._due is not None:
            return step in self._due
        return self.schedule.due(step)

    def step(self, step: int, **scalars: float) -> bool:
        """Call once per optimisation step; records if the schedule says so.

        Returns:
            Whether a snapshot was recorded.
        """
        if self.closed:
            raise RuntimeError("Recorder.step() after close(): use a new Recorder for a new run.")
        if self._model is None:
            raise RuntimeError("Call Recorder.start(model) before Recorder.step().")
        if step in self._recorded or not self.due(step):
            return False
        self.record(step, **scalars)
        return True

    def record(self, step: int, **scalars: float) -> None:
        """Record a snapshot at ``step`` now, whatever the schedule."""
        if self._model is None or self.closed:
            raise RuntimeError("Recorder.record() needs a started, unclosed recorder.")
        began = time.perf_counter()
        outputs = self._predict()
        self._writer.write_snapshot(step, outputs, **scalars)
        self.recorded_steps.append(int(step))
        self._recorded.add(int(step))
        self.seconds += time.perf_counter() - began

    def _predict(self) -> dict:
        """Outputs per probe set: one length-sorted pass over all sets when they can be
        joined (fewer, fuller batches), else set by set."""
        if self._joint is None:
            return {name: predict_proba(self._model, probe.encodings, batch_size=self.batch_size)
                    for name, probe in self.probes.items()}
        joint = predict_proba(self._model, self._joint, batch_size=self.batch_size)
        return {name: joint[a:b] for name, a, b in zip(self.probes, self._bounds[:-1], self._bounds[1:])}

    def close(self, status: str = "complete") -> None:
        """Mark the trajectory finished; idempotent."""
        if self.closed:
            return
        self.closed = True
        self._writer.close(status, recording_seconds=round(self.seconds, 3), snapshots=len(self.recorded_steps))
        self._model = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close("complete" if kind is None else "failed")

    def trajectory(self) -> Trajectory:
        """Load what has been recorded so far."""
        return load_trajectory(self.directory)

    def callback(self):
        """A ``transformers.TrainerCallback`` that drives this recorder."""
        from freqlens.recording.callback import RecorderCallback

        return RecorderCallback(self)


def _joint_encodings(sets: Sequence[ProbeSet]) -> tuple[dict | None, np.ndarray | None]:
    """All probe sets' encodings as one batch and each set's row bounds, when they share
    columns and width; (None, None) for a single set or sets that cannot be joined."""
    encodings = [probe.encodings for probe in sets]
    keys, widths = {tuple(e) for e in encodings}, {tuple(v.shape[1] for v in e.values()) for e in encodings}
    if len(encodings) == 1 or len(keys) != 1 or len(widths) != 1:
        return None, None
    joint = {k: torch.cat([e[k] for e in encodings]) for k in encodings[0]}
    return joint, np.cumsum([0] + [len(p) for p in sets])
