"""The recorder: model outputs on fixed probe sets, over training, on disk."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from freqlens import distributed
from freqlens._checks import check_positive_int
from freqlens.models import predict_proba, resolve_probe_layer
from freqlens.recording import precision as _precision
from freqlens.recording.probes import ProbeSet
from freqlens.recording.schedule import Schedule
from freqlens.recording.spaces import DEFAULT_INPUT_SPACES, resolve_input_spaces
from freqlens.recording.storage import Trajectory, TrajectoryWriter, load_trajectory


class Recorder:
    """Records softmax outputs on probe sets while a model trains.

    At :meth:`start` it computes each probe set's kernel inputs from the model
    as it is before training, in every input space asked for (``input_spaces``:
    by default the paper's flattened embedding-layer outputs, their mean over
    the attention mask, and the last hidden layer's mean; see
    :mod:`freqlens.recording.spaces`), and records step 0; then
    :meth:`step` is called once per optimisation step and records
    when the schedule says so. Every snapshot goes to disk at once, atomically
    (see :mod:`freqlens.recording.storage`), so a crash loses nothing already
    recorded. Use it from a plain PyTorch loop::

        with Recorder("run/trajectory", probes, schedule=Schedule.log(60)) as recorder:
            recorder.start(model, total_steps=len(loader) * epochs)
            for step, batch in enumerate(batches, start=1):
                ...  # forward, backward, optimizer.step()
                recorder.step(step)

    or in a Hugging Face ``Trainer`` via :meth:`callback`.

    **Resuming.** A run restarted from a training checkpoint continues its
    recording with ``resume=True`` over the same directory and
    ``start(model, total_steps, step=k)``, ``k`` being the checkpoint's
    global step (the model already restored to it). The trajectory goes on
    under the true global step: its step-0 kernel inputs and the snapshots at
    steps <= k are kept; snapshots after ``k`` that the killed run recorded
    before it died belong to steps the resumed run takes again, and are
    deleted at ``start`` and recorded anew as it re-takes them (a step is
    never relabelled). Continuing is refused (``ValueError``) when the probe
    sets differ from the stored ones (examples, labels, poison flags, texts),
    or the schedule or ``total_steps`` differ from the stored ones. ``resume``
    with ``step=0`` (a run restarted from scratch) replaces the trajectory;
    ``resume`` over a directory without a trajectory starts a new one. The
    callback does all this from the ``Trainer``'s state (see
    :class:`~freqlens.recording.callback.RecorderCallback`)::

        recorder = Recorder("run/trajectory", probes, resume=True)
        trainer = Trainer(..., callbacks=[recorder.callback()])
        trainer.train(resume_from_checkpoint=True)

    Under data-parallel training (``torchrun``, ``accelerate launch``) every
    process makes its own Recorder with the same arguments and calls
    :meth:`start`, :meth:`step` and :meth:`record` at the same steps (they are
    collectives): each process predicts its contiguous share of the probe
    rows and the outputs are gathered to rank 0 in probe order. Only rank 0
    touches ``directory`` (kernel inputs, snapshots, meta.json, the closing
    status); the others write nothing. A wrapper such as
    ``DistributedDataParallel`` is looked through (its forward would run
    collectives of its own). :attr:`seconds` and :attr:`recorded_steps` are
    kept on every process.

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
        resume: continue a trajectory already in ``directory`` (see above).
        metadata: extra JSON-serialisable fields for meta.json.
        input_spaces: the spaces whose kernel inputs are recorded, names as in
            :mod:`freqlens.recording.spaces` (``"flattened"``,
            ``"mean-pooled"``, ``"hidden:K"``, a registered name,
            ``"package.module:function"``); the first is the trajectory's
            ``inputs``. meta.json's ``input_spaces`` lists each with a
            description (layer, pooling, dimension). A resumed recording must
            ask for the spaces stored.
        precision: the probe passes' precision: ``"float32"`` (the default:
            exact), ``"auto"`` (bfloat16 autocast on a CPU for a float32-compute
            model where its probabilities agree with float32 to within 1e-3 on
            the step-0 probes, else float32; ``record.precision`` in a
            config; see :mod:`freqlens.recording.precision`) or
            ``"bfloat16"``. The step-0 snapshot is always float32; meta.json's
            ``probe_precision`` records the choice and the largest differences
            measured at the start and, in one more float32 pass, at the last
            snapshot (whose outputs are then stored in float32; a difference
            above 1e-3 there is also warned about).

    Raises:
        FileExistsError: ``directory`` holds a trajectory and neither
            ``overwrite`` nor ``resume`` is set.
        ValueError: bad arguments (an unknown input space or precision is named
            with the argument and the choices); with ``resume``, probe sets
            that differ from the stored ones.

    Attributes:
        seconds: wall time spent recording (kernel inputs and snapshots).
        recorded_steps: the steps recorded so far (resumed: with those kept
            from the stored trajectory).
        started: whether :meth:`start` has been called.
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
        resume: bool = False,
        metadata: Mapping | None = None,
        input_spaces: Sequence[str] = DEFAULT_INPUT_SPACES,
        precision: str = "float32",
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
        self.input_spaces = resolve_input_spaces(input_spaces, argument="input_spaces")
        self.precision = _precision.check_precision(precision, "precision")
        self.probe_precision: dict = {}
        self._precision_used = "float32"
        self._latest_step: int | None = None
        self._last_low: tuple[int, dict | None] | None = None
        self.schedule = Schedule.parse(schedule) if isinstance(schedule, str) else schedule
        self.embedding_layer = embedding_layer
        self.directory = os.fspath(directory)
        # only rank 0 writes (the launcher's RANK decides when torch.distributed is not up yet)
        self.resume = bool(resume)
        self._writer = (TrajectoryWriter(directory, overwrite=overwrite, resume=resume)
                        if distributed.is_main() else None)
        if self._writer is not None and self._writer.existing is not None:
            _check_same_probes(self._writer, self.probes)
        self._metadata = dict(metadata or {})
        self._model: nn.Module | None = None
        self._due: set[int] | None = None
        self._joint = _joint_encodings(sets)
        self._bounds = np.cumsum([0] + [len(p) for p in sets])
        self._total: int | None = None
        self.seconds = 0.0
        self.recorded_steps: list[int] = []
        self._recorded: set[int] = set()
        self.closed = False

    # ----------------------------------------------------------------- control
    @property
    def started(self) -> bool:
        """Whether :meth:`start` has been called (and the recorder not closed since)."""
        return self._model is not None

    def start(self, model: nn.Module, total_steps: int | None = None, *, step: int = 0, **scalars: float) -> None:
        """Compute the kernel inputs from ``model`` as it is now and record step 0;
        or, resuming at ``step`` > 0, continue the stored trajectory.

        Args:
            model: the model about to be trained (when resuming: restored to
                the checkpoint of ``step``).
            total_steps: the run's number of optimisation steps (needed by the
                log-spaced schedule).
            step: the optimisation steps the model has already taken: 0 for a
                new run, the checkpoint's global step for a resumed one (needs
                ``resume=True`` and the trajectory the run recorded so far).
            **scalars: numbers stored with the step-0 snapshot (or with the
                snapshot at ``step``, where one is due but missing).

        Raises:
            ValueError: ``step`` > 0 without a trajectory to continue, or with
                a schedule or ``total_steps`` other than the stored ones.
            RuntimeError: called twice, or after :meth:`close`.
        """
        if self._model is not None:
            raise RuntimeError("Recorder.start() was called twice; use one Recorder per run.")
        if self.closed:
            raise RuntimeError("Recorder is closed; use a new Recorder for a new run.")
        step = check_positive_int(step, "step", minimum=0)
        # Everything that can fail on a bad argument runs before any state is kept.
        due = None
        if self.schedule.kind != "every" or total_steps is not None:
            due = set(self.schedule.steps(total_steps))
        if step > 0:
            self._continue(model, total_steps, due, step, scalars)
            return
        if self._writer is not None and self._writer.existing is not None:
            self._writer.clear()  # resumed from scratch: the run re-takes every step, so it records anew
        began = time.perf_counter()
        model = distributed.unwrap(model)
        # A peft wrapper (LoRA, prompt tuning) is looked through: the kernel inputs are the
        # base model's embeddings, without virtual tokens (identical for LoRA at its start).
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layer, mode = resolve_probe_layer(base, self.embedding_layer)
        tried, reason = _precision.candidate(self.precision, model)
        inputs, spaces = None, []
        if self._writer is not None:  # rank 0 alone: one pass per space and probe set, at initialisation
            inputs = {name: {} for name in self.probes}
            for space in self.input_spaces:
                description = None
                for name, probe in self.probes.items():
                    values, text = space.compute(base, probe.encodings, embedding_layer=layer,
                                                 batch_size=self.batch_size)
                    inputs[name][space.name] = values
                    description = description or text
                spaces.append({"name": space.name, "description": description,
                               "dim": int(inputs[next(iter(self.probes))][space.name].shape[1])})
        self._model, self._total, self._due = model, total_steps, due
        if self._writer is not None:
            self._writer.update_meta(input_spaces=spaces)
            for name, probe in self.probes.items():
                self._writer.write_probe(name, inputs=inputs[name], labels=probe.labels.numpy(),
                                         poison=probe.poison, texts=probe.texts, role=probe.role,
                                         fingerprint=_fingerprint(probe))
            self._writer.update_meta(
                schedule=str(self.schedule),
                total_steps=total_steps,
                model=type(base).__name__ if base is model else f"{type(model).__name__} of {type(base).__name__}",
                embedding_layer=f"{mode} of {type(layer).__name__}",
                **self._metadata,
            )
        self.seconds += time.perf_counter() - began
        self._precision_used = "float32"  # step 0 is the float32 reference
        self.record(0, **scalars)
        self._choose_precision(tried, reason)

    def _choose_precision(self, tried: str, reason: str) -> None:
        """After the float32 step-0 snapshot: probe once more in ``tried`` and decide
        the precision of the later snapshots (see ``precision``)."""
        began = time.perf_counter()
        info = {"requested": self.precision, "used": "float32", "reason": reason,
                "tolerance": _precision.TOLERANCE, "start_max_abs_diff": None,
                "end_max_abs_diff": None, "end_step": None}
        if tried == "bfloat16":
            reference = self._last_low[1] if self._last_low is not None else None
            low = self._predict("bfloat16")
            difference = _max_difference(low, reference)
            info["start_max_abs_diff"] = difference
            if self.precision == "bfloat16":
                info["used"] = "bfloat16"
            elif difference is not None and difference <= _precision.TOLERANCE:
                info.update(used="bfloat16", reason=f"bfloat16 agrees with float32 to {difference:.2g} on the "
                                                    f"step-0 probes (tolerance {_precision.TOLERANCE:g})")
            else:
                info["reason"] = (f"bfloat16 differs from float32 by {difference:.2g} on the step-0 probes, "
                                  f"above the tolerance {_precision.TOLERANCE:g}")
        self._precision_used = info["used"]
        self.probe_precision = info
        if self._writer is not None:
            self._writer.update_meta(probe_precision=info)
        self.seconds += time.perf_counter() - began

    def _continue(self, model: nn.Module, total_steps: int | None, due: set[int] | None, step: int,
                  scalars: Mapping) -> None:
        """``start`` at ``step`` > 0: keep the stored trajectory up to ``step`` and go on."""
        if not self.resume:
            raise ValueError(
                f"Expected `step` = 0 for a new recording but got {step}: the model has already trained "
                f"{step} steps, so its kernel inputs would come from trained embeddings. To continue the "
                f"recording of a resumed run, pass resume=True with the directory it recorded into."
            )
        kept: list[int] = []
        if self._writer is not None:
            writer, meta = self._writer, self._writer.existing
            if meta is None:
                raise ValueError(
                    f"Expected a trajectory in {self.directory} to continue at step {step} but there is none: "
                    "the kernel inputs must come from the model before training. Record the run from its "
                    "start, or resume it from step 0."
                )
            stored_schedule, stored_total = meta.get("schedule"), meta.get("total_steps")
            if stored_schedule != str(self.schedule) or stored_total != total_steps:
                raise ValueError(
                    f"Expected the resumed run to record with the stored schedule {stored_schedule!r} over "
                    f"total_steps={stored_total} but got {str(self.schedule)!r} over total_steps={total_steps}: "
                    f"the trajectory in {self.directory} cannot be continued by this run."
                )
            stored_spaces = [entry["name"] for entry in meta.get("input_spaces") or [{"name": "flattened"}]]
            asked = [space.name for space in self.input_spaces]
            if stored_spaces != asked:
                raise ValueError(
                    f"Expected the resumed run to record the stored input spaces {stored_spaces} but got "
                    f"input_spaces={asked}: the trajectory in {self.directory} cannot be continued with "
                    f"other kernel inputs."
                )
            stored_precision = dict(meta.get("probe_precision") or {})
            missing = [name for name in self.probes if not (Path(self.directory) / "probes" / f"{name}.npz").is_file()]
            if missing:
                raise ValueError(f"Expected the kernel inputs of probe set(s) {missing} in "
                                 f"{Path(self.directory) / 'probes'} but they are missing: it cannot be continued.")
            removed = writer.remove_snapshots_after(step)
            kept = writer.snapshot_steps()
            resumed = list(meta.get("resumed", [])) + [{
                "step": step, "replaced_steps": removed,
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}]
            writer.update_meta(status="recording", resumed=resumed, **self._metadata)
        model = distributed.unwrap(model)
        self._model, self._total, self._due = model, total_steps, due
        if self._writer is not None:  # the snapshots go on in the precision the run chose at its start
            used = stored_precision.get("used", "float32")
            self.probe_precision = stored_precision
            if used == "bfloat16" and _precision.candidate("bfloat16" if self.precision == "bfloat16" else "auto",
                                                           model)[0] != "bfloat16":
                used = "float32"
            self._precision_used = used
        self._precision_used = _broadcast_precision(self._precision_used)
        self._latest_step = step
        self.recorded_steps = list(kept)
        self._recorded = set(kept)
        # The snapshot at the checkpoint's step is normally on disk (recorded before the
        # checkpoint was written); where it is due but missing, record it now (rank 0 decides).
        needed = torch.tensor([float(self._writer is not None and self.due(step) and step not in self._recorded)])
        if float(distributed.broadcast_([needed])[0][0]) > 0:
            self.record(step, **scalars)

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
        self._latest_step = max(int(step), self._latest_step or 0)
        if step in self._recorded or not self.due(step):
            return False
        self.record(step, **scalars)
        return True

    def record(self, step: int, **scalars: float) -> None:
        """Record a snapshot at ``step`` now, whatever the schedule."""
        if self._model is None or self.closed:
            raise RuntimeError("Recorder.record() needs a started, unclosed recorder.")
        began = time.perf_counter()
        outputs = self._predict(self._precision_used)
        if self._writer is not None:
            self._writer.write_snapshot(step, outputs, **scalars)
        # kept for the precision checks: the float32 step-0 outputs, later the last low-precision ones
        self._last_low = (int(step), outputs) if step == 0 or self._precision_used != "float32" else None
        self._latest_step = max(int(step), self._latest_step or 0)
        self.recorded_steps.append(int(step))
        self._recorded.add(int(step))
        self.seconds += time.perf_counter() - began

    def _predict(self, precision: str = "float32") -> dict | None:
        """Outputs per probe set (None on ranks other than 0), with the probe passes
        in ``precision`` (``"bfloat16"``: under bfloat16 autocast).

        The probe rows, all sets end to end, are split into one contiguous share
        per process (all of them in a single process). A share is predicted in
        one length-sorted pass when the sets can be joined (fewer, fuller
        batches), else set by set; rank 0 gathers the shares in probe order.
        """
        bounds, n = self._bounds, int(self._bounds[-1])
        mine = distributed.shard(n) if distributed.is_distributed() else slice(0, n)
        parts = []
        with _precision.autocast(precision, self._model):
            if self._joint is not None and mine.start < mine.stop:
                rows = {k: v[mine] for k, v in self._joint.items()}
                parts.append(predict_proba(self._model, rows, batch_size=self.batch_size))
            elif self._joint is None:
                for probe, a, b in zip(self.probes.values(), bounds[:-1], bounds[1:]):
                    lo, hi = max(a, mine.start), min(b, mine.stop)
                    if lo < hi:
                        rows = {k: v[lo - a : hi - a] for k, v in probe.encodings.items()}
                        parts.append(predict_proba(self._model, rows, batch_size=self.batch_size))
        whole = distributed.gather_rows(np.concatenate(parts) if parts else None, n)
        if whole is None:
            return None
        return {name: whole[a:b] for name, a, b in zip(self.probes, bounds[:-1], bounds[1:])}

    def close(self, status: str = "complete") -> None:
        """Mark the trajectory finished; idempotent."""
        if self.closed:
            return
        more = {}
        if status == "complete" and self._model is not None:
            more = self._check_last_snapshot()
        self.closed = True
        if self._writer is not None:
            self._writer.close(status, recording_seconds=round(self.seconds, 3), snapshots=len(self.recorded_steps),
                               **more)
        self._model = None
        self._last_low = None

    def _check_last_snapshot(self) -> dict:
        """With low-precision snapshots: one float32 pass at the last one (when the model
        is still at that step) and the largest difference, for meta.json."""
        last = self._last_low
        if self._precision_used == "float32" or last is None or last[0] in (0, None) or last[0] != self._latest_step:
            return {}
        began = time.perf_counter()
        reference = self._predict("float32")
        difference = _max_difference(last[1], reference)
        self.probe_precision = {**self.probe_precision, "end_max_abs_diff": difference, "end_step": last[0]}
        if self._writer is not None:  # the last snapshot keeps the exact (float32) outputs
            self._writer.replace_outputs(last[0], reference)
        if difference is not None and difference > _precision.TOLERANCE:
            warnings.warn(f"The bfloat16 probe passes differed from float32 by {difference:.2g} at the last "
                          f"snapshot (step {last[0]}, now stored in float32), above the tolerance "
                          f"{_precision.TOLERANCE:g} (at the start: {self.probe_precision.get('start_max_abs_diff')}); "
                          "record with precision 'float32' (record.precision) for exact snapshots.",
                          RuntimeWarning, stacklevel=3)
        self.seconds += time.perf_counter() - began
        return {"probe_precision": self.probe_precision}

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close("complete" if kind is None else "failed")

    def trajectory(self) -> Trajectory:
        """Load what has been recorded so far (rank 0's files: under data-parallel
        training other ranks read them only through a shared file system)."""
        return load_trajectory(self.directory)

    def callback(self):
        """A ``transformers.TrainerCallback`` that drives this recorder."""
        from freqlens.recording.callback import RecorderCallback

        return RecorderCallback(self)


def _broadcast_precision(used: str) -> str:
    """Rank 0's precision on every process (the snapshots are collectives)."""
    if not distributed.is_distributed():
        return used
    flag = torch.tensor([1.0 if used == "bfloat16" else 0.0])
    return "bfloat16" if float(distributed.broadcast_([flag])[0][0]) > 0 else "float32"


def _max_difference(first: Mapping | None, second: Mapping | None) -> float | None:
    """The largest absolute difference between two outputs-per-probe-set (None where
    either is missing, as on ranks other than 0)."""
    if first is None or second is None:
        return None
    return float(max(np.max(np.abs(np.asarray(first[k]) - np.asarray(second[k]))) for k in first))


def _fingerprint(probe: ProbeSet) -> str:
    """A SHA-256 of a probe set's examples: encodings (names, dtypes, shapes, values),
    labels, poison flags and texts."""
    digest = hashlib.sha256()
    for key in sorted(probe.encodings):
        value = probe.encodings[key].detach().cpu().contiguous()
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.numpy().tobytes())
    digest.update(probe.labels.detach().cpu().to(torch.int64).numpy().tobytes())
    digest.update(np.asarray(probe.poison, dtype=bool).tobytes())
    if probe.texts is not None:
        digest.update("\x1f".join(probe.texts).encode())
    return digest.hexdigest()


def _check_same_probes(writer: TrajectoryWriter, probes: Mapping[str, ProbeSet]) -> None:
    """Refuse to continue a stored trajectory whose probe sets differ from ``probes``."""
    where = writer.directory
    stored = writer.existing.get("probe_sets", {})
    if list(stored) != list(probes):
        raise ValueError(
            f"Expected the probe sets {list(probes)} to match those of the trajectory in {where} "
            f"({list(stored)}) but they differ: it cannot be continued with other probe sets."
        )
    for name, probe in probes.items():
        info = stored[name]
        problem = None
        if int(info.get("n", -1)) != len(probe):
            problem = f"{len(probe)} examples against {info.get('n')} stored"
        elif "fingerprint" in info:
            if info["fingerprint"] != _fingerprint(probe):
                problem = "its examples (encodings, labels, poison flags or texts) differ"
        else:  # a trajectory from before fingerprints: compare what is stored
            path = where / "probes" / f"{name}.npz"
            if path.is_file():
                with np.load(path, allow_pickle=False) as data:
                    if not np.array_equal(data["labels"], probe.labels.numpy()):
                        problem = "its labels differ"
                    elif not np.array_equal(data["poison"], np.asarray(probe.poison, bool)):
                        problem = "its poison flags differ"
            text_path = where / "probes" / f"{name}.json"
            texts = json.loads(text_path.read_text())["texts"] if text_path.is_file() else None
            if problem is None and texts is not None and probe.texts is not None and texts != list(probe.texts):
                problem = "its texts differ"
        if problem:
            raise ValueError(
                f"Expected probe set {name!r} to be the one stored in {where} but {problem}: "
                "the trajectory cannot be continued with other probe examples."
            )


def _joint_encodings(sets: Sequence[ProbeSet]) -> dict | None:
    """All probe sets' encodings as one batch, when they share columns and width; None for
    a single set or sets that cannot be joined."""
    encodings = [probe.encodings for probe in sets]
    keys, widths = {tuple(e) for e in encodings}, {tuple(v.shape[1] for v in e.values()) for e in encodings}
    if len(encodings) == 1 or len(keys) != 1 or len(widths) != 1:
        return None
    return {k: torch.cat([e[k] for e in encodings]) for k in encodings[0]}
