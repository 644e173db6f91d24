"""Trajectories on disk: written as they are recorded, atomically, without pickle.

Layout of a trajectory directory::

    meta.json                  format, version, status, probe sets, schedule, model, ...
    probes/<name>.npz          inputs (N, D) float32, labels (N,) int64, poison (N,) bool;
                               with several input spaces, ``inputs`` is the first one
                               and ``inputs_1``, ``inputs_2``, ... the others, in the
                               order of meta.json's ``input_spaces``
    probes/<name>.json         texts of the probe set (optional)
    snapshots/step-000000042.npz
                               one array per probe set: softmax outputs (N, C) float32,
                               plus ``__step__`` and optional scalars (``__epoch__``, ...)

Every file is written to a temporary name in its directory, flushed to disk
and renamed into place, so a process killed at any moment leaves either the
whole file or none of it: every snapshot finished before the kill is kept,
and :func:`load_trajectory` reads them back. meta.json records, per probe
set, a fingerprint of its examples, and ``resumed``: the steps at which a
killed run was continued (see :class:`~freqlens.Recorder`, ``resume=True``).

**Input spaces.** The kernel inputs may be recorded in several spaces
(:mod:`freqlens.recording.spaces`: ``"flattened"``, ``"mean-pooled"``,
``"hidden:-1"``, a user function). meta.json's ``input_spaces`` lists each
space's ``name`` and ``description`` (layer, pooling, dimension), and each
probe set's entry in ``probe_sets`` maps ``spaces``: space name -> the npz key
and dimension. A trajectory written before input spaces existed holds one
space, ``"flattened"`` (its ``inputs``), and reads back as such.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

FORMAT = "freqlens.trajectory"
VERSION = 1
_SCALAR_PREFIX = "__"
DEFAULT_SPACE = "flattened"  # the kernel inputs' space in a trajectory that names none


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new, empty temporary file next to ``path``: its descriptor and name.

    Created with mode 0666 less the process umask (0644 under umask 022), as
    ``open()`` creates files: ``tempfile.mkstemp`` would give 0600, and the
    rename would carry that private mode over to ``path``.
    """
    for _ in range(100):
        temporary = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"Expected to create a temporary file next to {path} but every name tried exists.")


def _atomic_write(path: Path, write) -> None:
    """Write via ``write(file)`` to a temporary file, fsync, and rename to ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give it (0666
    less the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:  # some file systems refuse fsync on a directory
        pass


def write_json(path: Path, data: Mapping) -> None:
    """Atomically write ``data`` as indented, strict JSON (NaN and inf become null)."""
    text = json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False).encode()
    _atomic_write(Path(path), lambda f: f.write(text))


def _finite(value):
    """``value`` with every non-finite float replaced by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray | np.generic):
        return _finite(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write arrays to an uncompressed ``.npz`` file."""
    _atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


class TrajectoryWriter:
    """Writes one trajectory directory, file by file, as the recording goes.

    Args:
        directory: where to write; created if missing. A directory that
            already holds a trajectory is refused unless ``overwrite`` or
            ``resume``.
        overwrite: replace an existing trajectory's snapshots.
        resume: open an existing trajectory to continue it: its meta.json,
            kernel inputs and snapshots are kept (:attr:`existing` holds the
            meta it had); without one, start a new trajectory.

    Raises:
        FileExistsError: a trajectory exists and neither flag is set.
        ValueError: both flags are set, or ``resume`` finds a meta.json that
            is not a freqlens trajectory this version can continue.
    """

    def __init__(self, directory: str | os.PathLike, *, overwrite: bool = False, resume: bool = False) -> None:
        if overwrite and resume:
            raise ValueError("Expected at most one of `overwrite` and `resume` but got both.")
        self.directory = Path(directory)
        meta = self.directory / "meta.json"
        if meta.exists() and not (overwrite or resume):
            raise FileExistsError(
                f"Expected `directory` to hold no trajectory yet but {meta} exists; "
                "pass overwrite=True to replace it or resume=True to continue it."
            )
        self.existing: dict | None = None
        if resume and meta.exists():
            self.existing = _read_meta(meta)
        if overwrite:
            self.clear()
        (self.directory / "snapshots").mkdir(parents=True, exist_ok=True)
        (self.directory / "probes").mkdir(parents=True, exist_ok=True)
        self.meta: dict = dict(self.existing) if self.existing is not None else self._new_meta()

    @staticmethod
    def _new_meta() -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "status": "recording",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "probe_sets": {},
        }

    def clear(self) -> None:
        """Delete the trajectory in the directory (meta.json first: a half-cleared
        directory is no trajectory) and start a new, empty one in memory."""
        (self.directory / "meta.json").unlink(missing_ok=True)
        for pattern in ("snapshots/step-*.npz", "probes/*.npz", "probes/*.json"):
            for old in self.directory.glob(pattern):
                old.unlink()
        self.existing = None
        self.meta = self._new_meta()

    def _snapshot_path(self, step: int) -> Path:
        return self.directory / "snapshots" / f"step-{int(step):09d}.npz"

    def snapshot_steps(self) -> list[int]:
        """The steps of the snapshot files on disk, increasing (from their names)."""
        return sorted(int(path.stem[len("step-"):]) for path in (self.directory / "snapshots").glob("step-*.npz"))

    def remove_snapshots_after(self, step: int) -> list[int]:
        """Delete the snapshots of steps after ``step``; returns their steps."""
        removed = [s for s in self.snapshot_steps() if s > step]
        for s in removed:
            self._snapshot_path(s).unlink(missing_ok=True)
        return removed

    def update_meta(self, **fields) -> None:
        """Merge ``fields`` into meta.json and write it."""
        self.meta.update(fields)
        write_json(self.directory / "meta.json", self.meta)

    def write_probe(
        self,
        name: str,
        *,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        labels: np.ndarray,
        poison: np.ndarray | None = None,
        texts: list[str] | None = None,
        role: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        """Write one probe set's kernel inputs, labels and texts (``fingerprint``, a
        hash of the set's encodings, labels, flags and texts, goes into meta.json,
        so that a resumed recording can check it probes the same examples).

        Args:
            inputs: the kernel inputs, (N, D): one array (stored as before
                input spaces, read back as the ``"flattened"`` space), or a
                mapping input-space name -> (N, D_space) array, every one with
                N rows; the first is the set's ``inputs``.

        Raises:
            ValueError: an empty mapping, an array that is not 2-D, or spaces
                with different numbers of rows.
        """
        spaces = dict(inputs) if isinstance(inputs, Mapping) else {DEFAULT_SPACE: inputs}
        if not spaces:
            raise ValueError(f"Expected `inputs` of probe set {name!r} to hold at least one input space.")
        keys = {space: ("inputs" if i == 0 else f"inputs_{i}") for i, space in enumerate(spaces)}
        arrays = {keys[space]: np.asarray(values, dtype=np.float32) for space, values in spaces.items()}
        n = len(labels)
        for space, key in keys.items():
            if arrays[key].ndim != 2 or arrays[key].shape[0] != n:
                raise ValueError(f"Expected the {space!r} inputs of probe set {name!r} to have shape ({n}, D) "
                                 f"but got {arrays[key].shape}.")
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
        arrays["poison"] = np.zeros(n, bool) if poison is None else np.asarray(poison, bool)
        write_npz(self.directory / "probes" / f"{name}.npz", arrays)
        if texts is not None:
            write_json(self.directory / "probes" / f"{name}.json", {"texts": list(texts)})
        self.meta["probe_sets"][name] = {
            "n": int(arrays["inputs"].shape[0]),
            "dim": int(arrays["inputs"].shape[1]),
            "role": role or name,
            **({"spaces": {space: {"key": key, "dim": int(arrays[key].shape[1])} for space, key in keys.items()}}
               if isinstance(inputs, Mapping) else {}),
            **({"fingerprint": fingerprint} if fingerprint is not None else {}),
        }
        self.update_meta()

    def write_snapshot(self, step: int, outputs: Mapping[str, np.ndarray], **scalars: float) -> Path:
        """Write the outputs of every probe set at ``step``; returns the file."""
        arrays = {name: np.asarray(values, dtype=np.float32) for name, values in outputs.items()}
        arrays[f"{_SCALAR_PREFIX}step__"] = np.asarray(step, dtype=np.int64)
        for key, value in scalars.items():
            if value is not None:
                arrays[f"{_SCALAR_PREFIX}{key}__"] = np.asarray(value, dtype=np.float64)
        path = self._snapshot_path(step)
        write_npz(path, arrays)
        return path

    def replace_outputs(self, step: int, outputs: Mapping[str, np.ndarray]) -> Path:
        """Rewrite the outputs of the snapshot at ``step`` (its scalars kept), atomically.

        Raises:
            FileNotFoundError: no snapshot at ``step``.
        """
        path = self._snapshot_path(step)
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        arrays.update({name: np.asarray(values, dtype=np.float32) for name, values in outputs.items()})
        write_npz(path, arrays)
        return path

    def close(self, status: str = "complete", **fields) -> None:
        """Mark the trajectory finished (or ``"failed"``) in meta.json."""
        self.update_meta(status=status, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields)


def _read_meta(meta_path: Path) -> dict:
    """The contents of a trajectory's meta.json, checked for format and version."""
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"Expected {meta_path} to have format {FORMAT!r} but got {meta.get('format')!r}.")
    if int(meta.get("version", 0)) > VERSION:
        raise ValueError(
            f"Expected a trajectory of format version <= {VERSION} but {meta_path} has version "
            f"{meta['version']}: upgrade freqlens to read it."
        )
    return meta


@dataclass
class Trajectory:
    """A recorded trajectory: probe sets and their outputs over training steps.

    Attributes:
        steps: recorded optimisation steps, shape (T,), increasing.
        inputs: per probe set, the kernel inputs (N, D).
        labels: per probe set, the target labels (N,).
        outputs: per probe set, softmax outputs (T, N, C).
        poison: per probe set, a poison flag per example (N,).
        texts: per probe set, the texts, where recorded.
        scalars: per scalar name (``"epoch"``, ``"loss"``, ...), values (T,),
            NaN where a snapshot did not record it.
        meta: the contents of meta.json.
        directory: where it was loaded from, if anywhere.
        spaces: per input space (``"flattened"``, ``"mean-pooled"``,
            ``"hidden:-1"``, ...), in recording order, per probe set the kernel
            inputs in that space (N, D_space). Empty for a trajectory recorded
            before input spaces existed (or built without them): its one space
            is ``inputs``, named by :attr:`input_spaces`.
            Read it through :meth:`kernel_inputs`.
    """

    steps: np.ndarray
    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    poison: dict[str, np.ndarray] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    directory: Path | None = None
    spaces: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Probe-set names, in recording order."""
        return list(self.inputs)

    @property
    def input_spaces(self) -> list[str]:
        """The input spaces whose kernel inputs were recorded, the first being
        :attr:`inputs`'s (``["flattened"]`` for a trajectory recorded before
        input spaces existed)."""
        if self.spaces:
            return list(self.spaces)
        recorded = self.meta.get("input_spaces") or [{"name": DEFAULT_SPACE}]
        return [recorded[0]["name"]]

    def kernel_inputs(self, space: str) -> dict[str, np.ndarray]:
        """The kernel inputs in one input space.

        Args:
            space: one of :attr:`input_spaces`.

        Returns:
            Per probe set (in recording order), the inputs, shape (N, D) float32
            (D depends on the space: L*d for ``"flattened"``, d for the pooled ones).

        Raises:
            ValueError: ``space`` was not recorded; the message lists those that were.
        """
        if self.spaces and space in self.spaces:
            return {name: np.asarray(self.spaces[space][name], dtype=np.float32) for name in self.names}
        if not self.spaces and space == self.input_spaces[0]:
            return {name: np.asarray(values, dtype=np.float32) for name, values in self.inputs.items()}
        raise ValueError(f"Expected an input space this trajectory recorded, one of {self.input_spaces}, "
                         f"but got {space!r}.")

    def in_space(self, space: str) -> Trajectory:
        """This trajectory with :attr:`inputs` taken from input space ``space`` (the
        arrays are shared, not copied); raises ``ValueError`` like :meth:`kernel_inputs`."""
        return dataclasses.replace(self, inputs=self.kernel_inputs(space))

    def input_space_description(self, space: str) -> str:
        """How ``space``'s kernel inputs were computed (layer, pooling, dimension), as
        recorded in meta.json; raises ``ValueError`` like :meth:`kernel_inputs`."""
        self.kernel_inputs(space)  # checks the name
        for entry in self.meta.get("input_spaces", []):
            if entry.get("name") == space:
                return str(entry.get("description", space))
        embedding = self.meta.get("embedding_layer")
        return (f"embedding-layer outputs ({embedding}), padding zeroed, flattened" if embedding
                else "embedding-layer outputs, flattened")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{n}</td><td>{self.meta.get('probe_sets', {}).get(n, {}).get('role', '')}</td>"
                       f"<td>{len(self.labels[n])}</td><td>{self.inputs[n].shape[1]}</td></tr>" for n in self.names)
        return (f"<div><b>Trajectory</b>: {self.steps.size} snapshots, status "
                f"{self.meta.get('status', 'unknown')}<table><tr><th>probe set</th><th>role</th><th>examples</th>"
                f"<th>input dim</th></tr>{rows}</table><small>freqlens.analyse(trajectory) computes its spectra"
                f"</small></div>")

    @property
    def complete(self) -> bool:
        """Whether the recording was closed normally (False after a crash or kill)."""
        return self.meta.get("status") == "complete"

    @property
    def num_classes(self) -> int:
        return int(next(iter(self.outputs.values())).shape[2])

    def __repr__(self) -> str:
        sets = ", ".join(f"{k}: {v.shape[0]}" for k, v in self.inputs.items())
        return (
            f"Trajectory(steps={len(self.steps)} from {self.steps[:1].tolist()} to "
            f"{self.steps[-1:].tolist()}, probe sets {{{sets}}}, status={self.meta.get('status')!r})"
        )


def load_trajectory(directory: str | os.PathLike) -> Trajectory:
    """Read a trajectory directory back, complete or cut short by a crash.

    Args:
        directory: a directory written by :class:`TrajectoryWriter` (e.g. by a
            :class:`~freqlens.Recorder`).

    Returns:
        A :class:`Trajectory` with every snapshot that was finished.

    Raises:
        FileNotFoundError: no meta.json in ``directory``.
        ValueError: not a freqlens trajectory, a newer format version, or no
            snapshot at all.
    """
    root = Path(directory)
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"Expected `directory` to hold a freqlens trajectory but {meta_path} does not exist.")
    meta = _read_meta(meta_path)
    inputs, labels, poison, texts = {}, {}, {}, {}
    spaces: dict[str, dict[str, np.ndarray]] = {}
    for name, info in meta.get("probe_sets", {}).items():
        with np.load(root / "probes" / f"{name}.npz", allow_pickle=False) as data:
            inputs[name], labels[name], poison[name] = data["inputs"], data["labels"], data["poison"]
            for space, entry in info.get("spaces", {}).items():
                spaces.setdefault(space, {})[name] = data[entry["key"]]
        text_path = root / "probes" / f"{name}.json"
        if text_path.exists():
            texts[name] = json.loads(text_path.read_text())["texts"]
    steps, per_set, scalar_rows = [], {name: [] for name in inputs}, []
    for path in sorted((root / "snapshots").glob("step-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as data:
                row = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # writes are atomic:
            # only a copy taken mid-write, or a damaged disk, gets here
            warnings.warn(f"Skipping unreadable snapshot {path}: {error}", RuntimeWarning, stacklevel=2)
            continue
        if not all(name in row for name in inputs):
            warnings.warn(f"Skipping snapshot {path}: it lacks a probe set", RuntimeWarning, stacklevel=2)
            continue
        steps.append(int(row[f"{_SCALAR_PREFIX}step__"]))
        for name in inputs:
            per_set[name].append(row[name])
        scalar_rows.append(
            {k[2:-2]: float(v) for k, v in row.items() if k.startswith(_SCALAR_PREFIX) and k != "__step__"}
        )
    if not steps:
        raise ValueError(f"Expected at least one snapshot in {root / 'snapshots'} but found none.")
    keys = sorted({k for row in scalar_rows for k in row})
    scalars = {k: np.array([row.get(k, np.nan) for row in scalar_rows]) for k in keys}
    return Trajectory(
        steps=np.asarray(steps, dtype=np.int64),
        inputs=inputs,
        labels=labels,
        outputs={name: np.stack(values) for name, values in per_set.items()},
        poison=poison,
        texts=texts,
        scalars=scalars,
        meta=meta,
        directory=root,
        spaces=spaces,
    )
