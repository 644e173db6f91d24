"""Epoch checkpoints of a ``freqlens run``, so that a killed run can go on (``--resume``).

A :class:`Checkpoint` is one directory (``OUT/checkpoint/`` for ``freqlens
run``) holding:

- ``config.json``: the experiment config as run (written before training, so
  that ``--resume`` can refuse another config);
- ``identity.json``: the identity of the training data
  (:func:`freqlens.data.identity.dataset_identity`: the file read and the
  SHA-256 of its bytes), written when the run starts, so that ``--resume``
  refuses training data that changed since;
- ``plan.json``: the probe plan (probe-set size, sets, schedule), so a resumed
  run probes the same examples with the same schedule although the automatic
  plan depends on timings;
- ``state.pt``: the latest training state, replaced at the end of every epoch
  (only the latest is kept): the trainable weights and buffers, the
  optimiser, the learning-rate schedule, the random states (Python, NumPy,
  torch, CUDA, and the shuffling generator of :func:`freqlens.training.train`),
  the epoch index, the losses and selection state so far (scores, best epoch
  and its weights), the gradient aligner's state and log, and ABL's phase
  state. It is written with ``torch.save`` to a temporary file and renamed,
  so a kill leaves the previous state or the new one, never half of one, and
  read back with ``torch.load(weights_only=True)`` (no pickled code).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from freqlens import distributed
from freqlens.recording.storage import _atomic_write, write_json

STATE = "state.pt"
CONFIG = "config.json"
PLAN = "plan.json"
IDENTITY = "identity.json"
VERSION = 1


class Checkpoint:
    """The latest epoch checkpoint of one training run, in ``directory``.

    :func:`freqlens.training.train` (and :func:`freqlens.defenses.fit_defense`,
    ABL included) save into it at the end of each epoch when given one, and
    restore from the state found at construction, once.

    Args:
        directory: where the files live; created on the first write.

    Attributes:
        state: the training state found at construction (None if none), as
            saved: ``{"version", "train": {...}, ...}``.
        extra: fields saved along with every training state (ABL's phases).
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.extra: dict = {}
        self.state: dict | None = None
        self._taken = False
        path = self.directory / STATE
        if path.is_file():
            try:
                self.state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as error:  # writes are atomic: only a damaged or foreign file gets here
                raise ValueError(
                    f"Expected {path} to be a freqlens checkpoint but it cannot be read: {error}") from error
            if not isinstance(self.state, Mapping) or self.state.get("version") != VERSION:
                raise ValueError(f"Expected {path} to be a freqlens checkpoint of version {VERSION}.")

    # -------------------------------------------------------------- files
    def save(self, train_state: Mapping) -> None:
        """Atomically replace ``state.pt`` with ``train_state`` plus :attr:`extra`."""
        payload = {"version": VERSION, **self.extra, "train": dict(train_state)}
        _atomic_write(self.directory / STATE, lambda file: torch.save(payload, file))

    def write_config(self, config: Mapping) -> None:
        write_json(self.directory / CONFIG, config)

    def read_config(self) -> dict | None:
        path = self.directory / CONFIG
        return json.loads(path.read_text()) if path.is_file() else None

    def write_identity(self, identity: Mapping) -> None:
        """Store the dataset identity the run starts with (``identity.json``)."""
        write_json(self.directory / IDENTITY, identity)

    def read_identity(self) -> dict | None:
        """The stored dataset identity (None when none was stored)."""
        path = self.directory / IDENTITY
        return json.loads(path.read_text()) if path.is_file() else None

    def check_identity(self, identity: Mapping) -> None:
        """Refuse to resume on other training data than the checkpoint was trained on.

        Args:
            identity: the identity of the data loaded now (same fields as stored).

        Raises:
            ValueError: no identity is stored (a checkpoint of an older
                freqlens: the data cannot be checked), or it differs from
                ``identity``; the message names the file and the hashes.
        """
        from freqlens.data.identity import identity_changes

        stored = self.read_identity()
        where = self.directory / IDENTITY
        if stored is None:
            raise ValueError(
                f"Expected the identity of the training data next to the training state ({where}) but it is "
                "missing (a checkpoint written by an older freqlens): whether the data changed cannot be checked, "
                "so the run cannot be continued; pass --overwrite to start again.")
        changes = identity_changes(stored, identity)
        if changes:
            raise ValueError(
                f"Expected the training data the run in {self.directory.parent} was trained on, "
                f"{stored.get('train_file') or stored.get('path')!r} (sha256 {stored.get('train_sha256')}), but "
                f"the data loaded now differs (stored -> now): {'; '.join(changes)}. The run cannot be continued "
                f"on other data ({where}); restore the data or pass --overwrite to start again.")

    def write_plan(self, plan: Mapping) -> None:
        write_json(self.directory / PLAN, plan)

    def read_plan(self) -> dict | None:
        path = self.directory / PLAN
        return json.loads(path.read_text()) if path.is_file() else None

    def delete(self) -> None:
        """Remove the checkpoint directory (after a successful run)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    # ------------------------------------------------------------ restore
    def train_state(self, step_offset: int) -> dict | None:
        """The saved state of the training phase that starts after ``step_offset``
        steps, the first time it is asked for (None otherwise): a state is
        restored once, by the phase that saved it."""
        if self.state is None or self._taken:
            return None
        saved = self.state["train"]
        if int(saved["step_offset"]) != int(step_offset):
            return None
        self._taken = True
        return saved

    @property
    def global_step(self) -> int:
        """The optimisation steps taken when the found state was saved (0 without one)."""
        if self.state is None:
            return 0
        saved = self.state["train"]
        return int(saved["step_offset"]) + int(saved["result"]["steps"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of ``model``'s trainable parameters and its buffers, on the CPU."""
    state = {f"param:{name}": p.detach().to("cpu", copy=True)
             for name, p in model.named_parameters() if p.requires_grad}
    state.update({f"buffer:{name}": b.detach().to("cpu", copy=True) for name, b in model.named_buffers()})
    return state


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` back into ``model``.

    Raises:
        ValueError: the names differ from the model's trainable parameters and
            buffers (another model or defense), or a shape differs.
    """
    targets = {f"param:{name}": p for name, p in model.named_parameters() if p.requires_grad}
    targets.update({f"buffer:{name}": b for name, b in model.named_buffers()})
    if set(targets) != set(state):
        missing, unexpected = sorted(set(targets) - set(state)), sorted(set(state) - set(targets))
        raise ValueError(
            f"Expected the checkpoint to hold the model's trainable parameters and buffers but "
            f"{len(missing)} are missing (e.g. {missing[:3]}) and {len(unexpected)} are unexpected "
            f"(e.g. {unexpected[:3]}): it was written for another model or defense."
        )
    with torch.no_grad():
        for key, target in targets.items():
            value = state[key]
            if value.shape != target.shape:
                raise ValueError(f"Expected {key} of shape {tuple(target.shape)} in the checkpoint but got "
                                 f"{tuple(value.shape)}: it was written for another model.")
            target.copy_(value.to(target.device, target.dtype))


def frozen_fingerprint(model: nn.Module) -> torch.Tensor:
    """Per frozen parameter, its sum and sum of squares (float64): a cheap check that a
    resumed run's frozen weights (its base model, a randomly initialised frozen head)
    are the ones the checkpoint was trained on, since they are not saved."""
    rows = [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]).cpu()
            for _, p in sorted(model.named_parameters(), key=lambda item: item[0]) if not p.requires_grad]
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def check_frozen(model: nn.Module, saved: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``model``'s frozen weights differ from those fingerprinted."""
    now = frozen_fingerprint(model)
    if now.shape != saved.shape or not torch.allclose(now, saved, rtol=1e-6, atol=1e-9):
        raise ValueError(
            "Expected the frozen weights of the resumed model to be those the checkpoint was trained on, but "
            "they differ (another base model, or a frozen layer initialised at random with another seed): "
            "the run cannot be continued."
        )


def random_states() -> dict:
    """The Python, NumPy, torch and (where initialised) CUDA random states."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_states(state: Mapping) -> None:
    """Restore what :func:`random_states` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_out(out: Path, config, *, overwrite: bool,
                 resume: bool) -> tuple[Checkpoint, bool]:
    """Check ``out`` before anything is loaded; writes nothing.

    ``resume`` checks the stored config against ``config``. Returns the
    checkpoint directory and whether the run starts afresh (a new run,
    ``overwrite``, or a resume of a run killed before its first epoch ended):
    then :func:`start_out` replaces what is in ``out`` once every setting has
    been checked, so a refused run leaves ``out`` as it was.

    Under data-parallel training (a collective) rank 0 checks ``out`` and
    every process gets its answer or its error, the checkpoint's training
    state included (so a resumed process need not see rank 0's files).
    """
    return distributed.on_main(_prepare_out, out, config, overwrite=overwrite, resume=resume)


def _prepare_out(out: Path, config, *, overwrite: bool, resume: bool) -> tuple[Checkpoint, bool]:
    if overwrite and resume:
        raise ValueError("Expected at most one of --overwrite and --resume (overwrite=, resume=) but got both.")
    checkpoint = Checkpoint(out / "checkpoint")
    held = [name for name in ("results.json", "trajectory/meta.json") if (out / name).is_file()]
    if held and not (overwrite or resume):
        raise FileExistsError(
            f"Expected `--out` {out} to hold no run yet but it holds one ({', '.join(held)}); pass --overwrite "
            "to replace it or --resume to continue it (from Python: the `overwrite` or `resume` argument)."
        )
    stored = checkpoint.read_config() if resume else None
    if resume and stored is None and held:
        finished = "results.json" in held
        raise FileExistsError(
            f"Expected a run to resume in `--out` {out} but "
            + ("it is finished (results.json) and its checkpoint is gone" if finished else
               f"it has no stored config ({checkpoint.directory / 'config.json'})")
            + ": there is nothing to continue; pass --overwrite to run it again."
        )
    given = json.loads(json.dumps(config.to_dict(), default=str))
    if stored is not None:  # a checkpoint of an earlier version: its keys in today's form first
        stored = type(config).upgrade(stored) if hasattr(type(config), "upgrade") else stored
        differing = [key for key in _differing_keys(stored, given) if not key.startswith(RESUMABLE_WITH_OTHER)]
        if differing:
            raise ValueError(
                f"Expected the config of the run in `--out` {out} for --resume but these keys differ "
                f"(stored -> given): {'; '.join(differing)}. Resume with the stored config "
                f"({checkpoint.directory / 'config.json'}) or pass --overwrite to start again."
            )
    if resume and checkpoint.state is None and (out / "results.json").is_file():
        raise FileExistsError(f"Expected a run to resume in `--out` {out} but it is finished (results.json); "
                              "pass --overwrite to run it again.")
    return checkpoint, checkpoint.state is None or not resume


#: What a finished run writes into ``out`` besides ``trajectory/`` (which the Recorder replaces) and the
#: figures of :data:`freqlens.figures.FIGURES` (see :func:`run_outputs`).
RUN_OUTPUTS = ("results.json", "report.html", "model")


def run_outputs() -> tuple[str, ...]:
    """Every file or folder name a finished run may hold besides ``trajectory/``: ``results.json``
    first, the report, the saved model and each registered figure's PNG files."""
    from freqlens.figures import FIGURES

    return RUN_OUTPUTS + tuple(run.file for figure in FIGURES.values() for run in figure.run)


def start_out(out: Path, config, identity: Mapping) -> Checkpoint:
    """Clear ``out`` of an earlier run and store the config and data identity of this one.

    ``results.json`` goes first, so that a run killed from here on is never
    reported with the earlier run's metrics beside its own partial trajectory.
    Under data-parallel training (a collective) rank 0 alone writes, and every
    process gets the new (empty) checkpoint, or rank 0's error.
    """
    return distributed.on_main(_start_out, out, config, identity)


def _start_out(out: Path, config, identity: Mapping) -> Checkpoint:
    out.mkdir(parents=True, exist_ok=True)
    for name in run_outputs():
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    checkpoint = Checkpoint(out / "checkpoint")
    checkpoint.delete()
    checkpoint = Checkpoint(out / "checkpoint")
    checkpoint.write_config(json.loads(json.dumps(config.to_dict(), default=str)))
    checkpoint.write_identity(identity)
    return checkpoint




#: Config sections a resumed run may change: the inference-time detectors act on the trained model after
#: training, so a run killed (or whose detector failed) may resume with other detectors.
RESUMABLE_WITH_OTHER = ("detector.",)


def _differing_keys(stored: Mapping, given: Mapping, prefix: str = "") -> list[str]:
    """``section.key (stored -> given)`` for every leaf that differs between two config dicts."""
    differing = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key, "<absent>"), given.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differing += _differing_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            differing.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return differing
