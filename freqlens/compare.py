"""Compare runs side by side: ``freqlens report RUN_DIR [RUN_DIR ...] --out DIR``.

A run directory is what ``freqlens run`` or ``freqlens demo`` wrote:
``results.json`` and ``trajectory/``. :func:`load_runs` reads them (and says
plainly what is wrong with one it cannot use) and re-analyses each trajectory
with the settings it was analysed with. A run that was killed (a trajectory
with snapshots but no ``results.json``, or a recording that was not closed) is
a *partial* run: its snapshots are analysed, its label says ``(partial)``, and
its missing metrics are shown as missing, never as zero.

Runs are grouped by *experiment*: everything in the config that defines the
data a model was trained and evaluated on and the model itself (the dataset's
folder and training file, its identity as recorded by the run when it
started, the attack, the
target label, the caps on training and evaluation examples, the model) must
be equal; only the defense and how it was trained, recorded and analysed
(``defense.*``, ``train.*``, ``record.*``, ``analysis.*``) may differ within a
group. :func:`comparison_rows` gives one row per run: CACC, ASR,
false-trigger rate, the convergence step per probe set and frequency band, and
the shift against the complete undefended (vanilla) run of its group (of the
same ``train.seed`` where there is one). :func:`write_comparison` writes
``report.html`` (self-contained), ``report.md``, ``runs.csv`` and the figures.

The dataset identity is read from what the run recorded (``results.json``,
else the trajectory's ``meta.json``, else ``checkpoint/identity.json``), never
computed at report time: the files may have changed since. A run that recorded
none (written by an older freqlens) is marked ``dataset.identity = "not
recorded"``: it is grouped only with other such runs of the same config as
written, never with a run that recorded its identity, and the report says so.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import re
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.config import AnalysisConfig, ExperimentConfig
from freqlens.data.identity import FIELDS as identity_fields
from freqlens.figures import FIGURES
from freqlens.metrics import collapse_warning
from freqlens.recording.storage import load_trajectory
from freqlens.report import STYLE, _table, figure_to_data_uri, render_value

UNDEFENDED = "vanilla"
CHECKPOINT_CONFIG = "checkpoint/config.json"  # the config a `freqlens run` stores before training
CHECKPOINT_IDENTITY = "checkpoint/identity.json"  # the dataset identity it stores when the run starts
NOT_RECORDED = "not recorded"  # the `dataset.identity` of a run that recorded none
NOT_RECORDED_NOTE = ("dataset identity not recorded by this freqlens version; grouped by config as written "
                     "(never with runs that recorded their identity).")
IDENTITY_FIELDS = tuple(key for key in identity_fields if key != "name")
UNKNOWN_DEFENSE = "unknown defense"
METRICS = ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect")
#: What a defense recorded in results.json's ``defense`` (key path there): the clean examples it used
#: (``clean_examples``, every defense since that field was added) and, for a defense that removes
#: training examples (:class:`freqlens.defenses.filtering.FilteringDefense`), how many it removed and
#: the detection precision, recall and F1 of the examples it flagged against the poison flags.
#: None (shown "–") for a run that did not record it: an older freqlens, a defense that removes nothing.
DEFENSE_FIELDS = {
    "clean_examples": ("clean_examples",),
    "removed": ("removed",),
    "detection_precision": ("detection", "precision"),
    "detection_recall": ("detection", "recall"),
    "detection_f1": ("detection", "f1"),
}
#: The defense fields averaged over seeds like the metrics (``clean_examples`` is one setting, shown as is).
DETECTION = ("detection_precision", "detection_recall", "detection_f1")
#: What each inference-time detector of a run recorded (results.json's ``detectors[name][key]``): the
#: false rejection and acceptance rates and the metrics after it filtered or repaired the test inputs.
DETECTOR_METRICS = ("frr", "far", *METRICS)

# Config entries that may differ between the runs of one group: the defense, the detectors applied after
# training, and how it was trained, recorded and analysed. Everything else in a run's config defines its experiment.
VARYING_SECTIONS = ("defense.", "detector.", "train.", "record.", "analysis.")
VARYING_KEYS = frozenset({
    "model.device",  # where it ran
    "probe_size", "snapshots", "num_widths", "threshold", "threads",  # the demo's recording and analysis
})


class RunError(ValueError):
    """A run directory that cannot be compared, with the reason."""


@dataclass
class Run:
    """One run, re-analysed.

    Attributes:
        directory: the run directory.
        results: the contents of ``results.json`` (empty for a partial run without one).
        analysis: the spectral analysis of the snapshots recorded.
        label: the defense, plus ``(partial)`` and the directory name where needed.
        group: the readable name of its experiment (set by :func:`load_runs`).
        config: the config as run, flattened to ``"section.key"`` (empty when not recorded).
        experiment: the entries that define its experiment (see :func:`experiment_fields`).
        partial: None for a finished run, else e.g. ``"partial: killed at step 40 of 120"``.
        trajectory_meta: the trajectory's ``meta.json``.
    """

    directory: Path
    results: dict
    analysis: SpectralAnalysis
    label: str
    group: str
    config: dict = field(default_factory=dict)
    experiment: dict = field(default_factory=dict)
    partial: str | None = None
    trajectory_meta: dict = field(default_factory=dict)
    dataset_name: str | None = None  # the readable name of its dataset identity, where there is one

    @property
    def key(self) -> str:
        """The experiment as one string: runs with equal keys are grouped."""
        return json.dumps(self.experiment, sort_keys=True, default=str)

    @property
    def defense(self) -> str:
        name = self.results.get("defense", {}).get("name") or self.config.get("defense.name")
        if name:
            return str(name)
        return UNDEFENDED if self.config else UNKNOWN_DEFENSE  # the demo has no defense section

    @property
    def seed(self):
        return self.config.get("train.seed")

    @property
    def status(self) -> str:
        return self.partial or "complete"

    @property
    def collapse_warning(self) -> str | None:
        """The sentence of :func:`freqlens.metrics.collapse_warning` where its model predicts one class for
        nearly every clean test input (its ASR and net then say nothing about a backdoor), else None."""
        return collapse_warning({"majority_prediction_share": self.metric("majority_prediction_share")})

    @property
    def collapsed(self) -> bool:
        """Whether its model collapsed to one class (:attr:`collapse_warning`)."""
        return self.collapse_warning is not None

    def metric(self, name: str) -> float | None:
        """A metric from results.json, or a field of its ``defense`` (:data:`DEFENSE_FIELDS`); None where
        it was not measured or recorded (a partial run, an older freqlens, a defense that removes nothing)."""
        if name in DEFENSE_FIELDS:
            value = self.results.get("defense")
            for key in DEFENSE_FIELDS[name]:
                value = value.get(key) if isinstance(value, Mapping) else None
            return _number(value)
        if name == "net_backdoor_effect" and "net_backdoor_effect" not in self.results:
            asr, ftr = self.metric("asr"), self.metric("false_trigger_rate")
            return None if asr is None or ftr is None else asr - ftr
        return _number(self.results.get(name))

    @property
    def detectors(self) -> list[str]:
        """The inference-time detectors the run applied after training (results.json's ``detectors``)."""
        recorded = self.results.get("detectors")
        return list(recorded) if isinstance(recorded, Mapping) else []

    def detector_error(self, detector: str) -> str | None:
        """Why the detector failed after training (results.json's ``detectors[detector]["error"]``), or None."""
        entry = (self.results.get("detectors") or {}).get(detector)
        return str(entry["error"]) if isinstance(entry, Mapping) and entry.get("error") else None

    def detector_metric(self, detector: str, name: str) -> float | None:
        """``detectors[detector][name]`` from results.json (:data:`DETECTOR_METRICS`); None where the run did
        not apply that detector or it did not measure the value (FRR and FAR of a repairing detector)."""
        entry = (self.results.get("detectors") or {}).get(detector)
        return _number(entry.get(name)) if isinstance(entry, Mapping) else None


def _number(value) -> float | None:
    """``value`` as a float; None where it is missing or not a number (a plug-in defense may record a
    list or a string under a name the report reads: that run shows "–" there, the report goes on)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def experiment_fields(results: Mapping, meta: Mapping, directory: Path | None = None, *,
                      identity: Mapping | None = None) -> dict:
    """The entries that define a run's experiment: runs are grouped when these are equal.

    The dataset's name and identity as the run recorded it when it started
    (:func:`freqlens.data.identity.dataset_identity`: the training file and
    the SHA-256 of its bytes, or a hub dataset's fingerprint; never computed
    here), the target label, and every config entry except the defense,
    training, recording and analysis settings (:data:`VARYING_SECTIONS`,
    :data:`VARYING_KEYS`). With an identity that names a training file the
    folder as written in the config (``data.path``, relative to where the run
    was started) gives way to the resolved one. A run that recorded no identity
    gets ``dataset.identity = "not recorded"`` (:data:`NOT_RECORDED`) and keeps
    ``data.path`` as written: it never joins a run that recorded one. A run
    that recorded no config at all cannot be matched safely: its directory is
    part of its experiment, so it forms a group of its own.

    Args:
        results: ``results.json`` (empty for a partial run).
        meta: the trajectory's ``meta.json``.
        directory: the run directory (its ``checkpoint/identity.json`` is read
            when neither ``results`` nor ``meta`` holds an identity).
        identity: the identity :func:`_identity` gives for these, when the caller has it.
    """
    config = _flatten(results.get("config") or meta.get("config") or {})
    dataset = results.get("dataset") or {}
    identity = _identity(results, meta, directory) if identity is None else identity
    fields = {"dataset": dataset.get("name") or meta.get("dataset"), "target_label": meta.get("target_label")}
    if identity is None:
        fields["dataset.identity"] = NOT_RECORDED
    else:
        fields.update({f"dataset.identity.{k}": identity.get(k) for k in IDENTITY_FIELDS})
    names_file = identity is not None and bool(identity.get("train_file"))
    for key, value in config.items():
        if key.startswith(VARYING_SECTIONS) or key in VARYING_KEYS or (names_file and key == "data.path"):
            continue
        fields[key] = value
    if not config:
        fields["run directory"] = str(Path(directory).resolve()) if directory is not None else None
    return fields


def _identity(results: Mapping, meta: Mapping, directory: Path | None = None) -> dict | None:
    """The dataset identity the run recorded when it started (``results.json``, the trajectory's
    ``meta.json``, or the ``checkpoint/identity.json`` a killed ``freqlens run`` left); None when it
    recorded none. Never computed from the files as they are now."""
    found = (results.get("dataset") or {}).get("identity") or meta.get("dataset_identity")
    if not found and directory is not None:
        found = _checkpoint_json(Path(directory) / CHECKPOINT_IDENTITY)
    return dict(found) if isinstance(found, Mapping) and found else None


def load_run(directory: str | Path) -> Run:
    """Read and re-analyse one run directory, finished or partial.

    A finished run has ``results.json`` and a closed trajectory. A run killed
    while training has a trajectory with snapshots but no ``results.json``
    (or a trajectory whose status is not ``complete``, whose ``results.json``
    is then an earlier run's and is ignored): it is loaded as a partial run, analysed with the settings of its config (from
    ``results.json``, the trajectory's meta.json, or the
    ``checkpoint/config.json`` that ``freqlens run`` stores before training;
    else the defaults), and its metrics are None. A partial run without any
    stored config forms a group of its own.

    Raises:
        RunError: neither ``results.json`` nor a trajectory, a trajectory
            without a readable snapshot, or a results file without what a
            comparison needs (e.g. from an older freqlens).
    """
    directory = Path(directory)
    path = directory / "results.json"
    if not directory.is_dir():
        raise RunError(f"{directory}: not a directory.")
    results: dict = {}
    if path.is_file():
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RunError(f"{path}: not valid JSON ({error}).") from error
        missing = [k for k in ("cacc", "asr", "analysis", "widths") if k not in results]
        if missing:
            version = results.get("freqlens_version", "unknown")
            raise RunError(f"{path}: lacks {missing} (written by freqlens {version}); rerun it with this version.")
    elif not (directory / "trajectory" / "meta.json").is_file():
        raise RunError(f"{directory}: no results.json and no trajectory/meta.json (not a run directory, or the "
                       "run stopped before it recorded anything).")
    try:
        trajectory = load_trajectory(directory / "trajectory")
    except (FileNotFoundError, ValueError) as error:
        raise RunError(f"{directory}: the trajectory cannot be read ({error}).") from error
    stale = bool(results) and not trajectory.complete
    if stale:  # results.json is written after the recording closes, so it belongs to an earlier run
        results = {}  # (one replaced with --overwrite and killed): never shown as this recording's
    meta = trajectory.meta
    stored = results.get("config") or meta.get("config") or _checkpoint_config(directory)
    stored = ExperimentConfig.upgrade(stored) if stored else stored  # an earlier version's keys in today's form
    config = _unused_detector_settings_dropped(_flatten(stored or {}))
    try:
        analysis = analyse(trajectory, _analysis_config(results, config))
    except ValueError as error:  # e.g. an input space this trajectory did not record
        raise RunError(f"{directory}: cannot be re-analysed with its own settings ({error}).") from error
    partial = None
    if not results:  # (an unclosed trajectory has had its results.json set aside above)
        partial = _partial_note(trajectory) + (" (its results.json, from an earlier run, ignored)" if stale else "")
    with_config = {**results, "config": stored} if stored else results
    identity = _identity(with_config, meta, directory)
    experiment = experiment_fields(with_config, meta, directory, identity=identity)
    run = Run(directory=directory, results=results, analysis=analysis, label="",
              group=str(experiment["dataset"] or "unknown dataset"), config=config, experiment=experiment,
              partial=partial, trajectory_meta=dict(meta), dataset_name=_identity_name(identity))
    run.label = run.defense + (" (partial)" if partial else "")
    return run


def _unused_detector_settings_dropped(config: dict) -> dict:
    """A flattened config without the settings of built-in detectors the run did not apply
    (``detector.rap.*`` when ``detector.name`` does not hold ``rap``): they changed nothing, so they
    neither split configurations nor show as config differences."""
    from freqlens.detectors.config import SECTIONS

    names = config.get("detector.name") or []
    names = [names] if isinstance(names, str) else list(names)
    unused = tuple(f"detector.{name}." for name in SECTIONS if name not in names)
    return {k: v for k, v in config.items() if not k.startswith(unused)}


def _analysis_config(results: Mapping, config: Mapping) -> AnalysisConfig:
    """The settings a run was analysed with (or, partial, would have been): the whole
    :class:`AnalysisConfig` stored in results.json; for a run of an older freqlens the
    few settings it stored, its widths as numbers."""
    settings = results.get("analysis") or {}
    if settings.get("config"):
        return AnalysisConfig(**settings["config"])
    if results:
        return AnalysisConfig(widths=tuple(float(w) for w in results["widths"]),
                              distance=settings.get("distance", "euclidean"),
                              reduction=settings.get("reduction", "mean"),
                              threshold=settings.get("threshold", 0.5),
                              relative=settings.get("threshold_relative_to_first_value", True))
    known = {f.name for f in dataclasses.fields(AnalysisConfig)}
    given = {name: config.get(f"analysis.{name}", config.get(name)) for name in known}
    return AnalysisConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in given.items() if v is not None})


def _identity_name(identity: Mapping | None) -> str | None:
    """The readable name of an identity that names a file or folder (else the dataset's own name is used)."""
    return identity.get("name") if identity and (identity.get("train_file") or identity.get("path")) else None


def _checkpoint_config(directory: Path) -> dict | None:
    """The config a killed ``freqlens run`` stored for ``--resume`` (``checkpoint/config.json``), if any."""
    return _checkpoint_json(directory / CHECKPOINT_CONFIG)


def _checkpoint_json(path: Path) -> dict | None:
    """A JSON object a ``freqlens run`` stored in its checkpoint; None if missing or unreadable."""
    try:
        found = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def _partial_note(trajectory) -> str:
    status = trajectory.meta.get("status", "unknown")
    total = trajectory.meta.get("total_steps")
    last = int(trajectory.steps[-1])
    how = {"recording": "killed", "failed": "failed", "complete": "stopped before results.json, recorded"}.get(
        status, f"status {status!r}")
    return f"partial: {how} at step {last} of {total if total is not None else 'an unknown number'}"


def partial_details(run: Run) -> str:
    """One sentence on what a partial run has and lacks."""
    status = run.trajectory_meta.get("status", "unknown")
    why = "no results.json" if not run.results else f"trajectory status {status!r}"
    if status != "complete":
        why += "; the recording was not closed: the run was killed, failed or is still running"
    return (f"{run.directory} is a partial run, {run.partial.removeprefix('partial: ')} ({why}). Analysed its "
            f"{run.analysis.steps.size} snapshot(s) up to step {int(run.analysis.steps[-1])}; metrics it did "
            "not reach are missing (–), not zero.")


def load_runs(directories: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """Load every run that can be compared; the others become one-line problems.

    Sets each run's ``group`` to a readable name that differs between
    experiments, and makes labels unique within a group.
    """
    runs, problems = [], []
    for directory in directories:
        try:
            runs.append(load_run(directory))
        except RunError as error:
            problems.append(str(error))
    _group_names(runs)
    _unique_labels(runs)
    return runs, problems


def _group_names(runs: list[Run]) -> None:
    """Name each experiment by its dataset; where two experiments share a name, add what tells them apart."""
    experiments: dict[str, Run] = {}
    for run in runs:
        experiments.setdefault(run.key, run)
    base = {key: _dataset_name(run) for key, run in experiments.items()}
    names = {}
    for key, run in experiments.items():
        twins = [experiments[k] for k in experiments if base[k] == base[key]]
        if not run.experiment.get("run directory"):  # told apart from the others by what they recorded
            twins = [t for t in twins if not t.experiment.get("run directory")]
        if len(twins) == 1:
            names[key] = base[key]
            continue
        if run.experiment.get("run directory"):
            names[key] = f"{base[key]} [settings not recorded: {run.experiment['run directory']}]"
            continue
        entries = sorted({k for t in twins for k in t.experiment} - {"dataset", "run directory"})
        differing = [k for k in entries
                     if len({json.dumps(t.experiment.get(k), sort_keys=True, default=str) for t in twins}) > 1]
        shown = ", ".join(f"{k}={_short(run.experiment.get(k))}" for k in differing[:3])
        more = f", +{len(differing) - 3} more" if len(differing) > 3 else ""
        names[key] = f"{base[key]} [{shown}{more}]"
    seen: dict[str, int] = {}
    for key in experiments:  # still alike (they differ only past what is shown): number them
        seen[names[key]] = seen.get(names[key], 0) + 1
        if seen[names[key]] > 1:
            names[key] += f" #{seen[names[key]]}"
    for run in runs:
        run.group = names[run.key]


def _dataset_name(run: Run) -> str:
    return str(run.dataset_name or run.experiment.get("dataset") or "unknown dataset")


def _short(value, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _unique_labels(runs: list[Run]) -> None:
    """Runs of one group with the same label get the directory name appended."""
    seen: dict[tuple[str, str], int] = {}
    for run in runs:
        seen[(run.key, run.label)] = seen.get((run.key, run.label), 0) + 1
    for run in runs:
        if seen[(run.key, run.label)] > 1:
            run.label = f"{run.label} ({run.directory.name})"


def groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by experiment (see :func:`experiment_fields`), keyed by the group name, in the order given."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    return {members[0].group: members for members in by_key.values()}


def baseline(run: Run, members: Sequence[Run]) -> Run | None:
    """The run a member's shift is measured against: a complete vanilla run of its group whose model
    has not collapsed to one class (:attr:`Run.collapsed`: a shift against it would read as a defense).

    The one with the same ``train.seed`` where there is one, else the first;
    None when the group has no such vanilla run.
    """
    vanilla = [m for m in members if m.defense == UNDEFENDED and m.partial is None and not m.collapsed]
    return next((m for m in vanilla if m.seed == run.seed), vanilla[0] if vanilla else None)


#: Config keys that tell repeated runs of one configuration apart (``freqlens run``, ``freqlens demo``).
SEED_KEYS = ("train.seed", "seed")


def configurations(members: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs of one group that differ only in their seed (or in the inference-time detectors applied after
    training, which change nothing in it), in the order given.

    Keyed by a label: the defense, plus the settings that tell configurations
    with the same defense apart (e.g. ``lora [train.lr=0.0005]``). Partial runs
    are configurations of their own (their metrics are missing).
    """
    by_key: dict[str, list[Run]] = {}
    for run in members:
        settings = {k: v for k, v in run.config.items() if k not in SEED_KEYS and not k.startswith("detector.")}
        key = json.dumps([settings, run.partial is not None, str(run.directory) if not run.config else ""],
                         sort_keys=True, default=str)
        by_key.setdefault(key, []).append(run)
    labels: dict[str, str] = {}
    for key, runs in by_key.items():
        twins = [r[0] for r in by_key.values() if r[0].defense == runs[0].defense]
        differing = ([k for k in config_differences(twins) if k not in SEED_KEYS and not k.startswith("detector.")]
                     if len(twins) > 1 else [])
        shown = ", ".join(f"{k}={_short(runs[0].config.get(k), 24)}" for k in differing[:2])
        label = runs[0].defense + (f" [{shown}]" if shown else "") + (" (partial)" if runs[0].partial else "")
        if not runs[0].config and len(twins) > 1:
            label += f" ({runs[0].directory.name})"
        while label in labels.values():
            label += "'"
        labels[key] = label
    return {labels[key]: runs for key, runs in by_key.items()}


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample standard deviation (ddof 1; None for one value) of the values measured."""
    measured = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not measured.size:
        return None, None, 0
    return float(measured.mean()), float(measured.std(ddof=1)) if measured.size > 1 else None, int(measured.size)


def seed_summary(members: Sequence[Run]) -> list[dict]:
    """Per configuration of a group (:func:`configurations`): how many seeds, and the mean and
    spread (sample standard deviation over seeds) of CACC, ASR, false-trigger rate, net
    backdoor effect, the clean examples the defense used and, for a defense that removes
    examples, the detection precision, recall and F1 (:data:`DEFENSE_FIELDS`). Spreads are None
    where fewer than two seeds measured the value; means None where no seed recorded it."""
    rows = []
    for label, runs in configurations(members).items():
        row = {"configuration": label, "defense": runs[0].defense, "seeds": [r.seed for r in runs],
               "collapsed_seeds": [r.seed for r in runs if r.collapsed]}
        for name in (*METRICS, "clean_examples", *DETECTION):
            row[name], row[f"{name}_sd"], row[f"{name}_n"] = _mean_sd([r.metric(name) for r in runs])
        rows.append(row)
    return rows


def config_differences(runs: Sequence[Run]) -> dict[str, list]:
    """The config keys whose values differ between runs: key -> value per run."""
    keys = sorted({k for run in runs for k in run.config})
    return {k: [run.config.get(k) for run in runs] for k in keys
            if len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1}


def comparison_rows(runs: Sequence[Run], view: str = "joint") -> list[dict]:
    """One row per run: status, metrics, convergence steps per probe set and band, shift vs its baseline.

    ``baseline`` names the run the shifts are against (see :func:`baseline`);
    shifts are None when there is none, and every value a run did not reach
    (a partial run's metrics, a band that never converged) is None. The
    defense's own record (:data:`DEFENSE_FIELDS`: ``clean_examples``,
    ``removed``, ``detection_precision``, ``detection_recall``,
    ``detection_f1``) is None where the run did not record it. Each inference-time detector the run
    applied adds ``detector_<name>_<metric>`` (:data:`DETECTOR_METRICS`); each config key whose value
    differs between the runs of the group adds ``config.<key>`` (lists and tables as JSON; empty for
    the runs of other groups). A run whose model predicts one
    class for nearly every clean test input (:func:`freqlens.metrics.collapse_warning`; its
    ``majority_prediction_share`` is a column) has ``status`` ending in ``(collapsed)``: its ASR and net
    say nothing about a backdoor.
    """
    rows = []
    for group, members in groups(runs).items():
        steps = {id(m): _band_steps(m, view) for m in members}  # once per run, baselines included
        differences = config_differences(members)
        for index, run in enumerate(members):
            base = baseline(run, members)
            base_bands = steps[id(base)] if base is not None else {}
            row = {"group": group, "run": run.label, "defense": run.defense,
                   "status": run.status + (" (collapsed)" if run.collapsed else ""),
                   "baseline": None if base is None else base.label, "directory": str(run.directory),
                   "majority_prediction_share": run.metric("majority_prediction_share")}
            for key, values in differences.items():  # what sets the runs of the group apart
                value = values[index]
                row[f"config.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
            for name in (*METRICS, *DEFENSE_FIELDS):
                row[name] = run.metric(name)
            for name in ("clean_examples", "removed"):  # counts, as integers (runs.csv)
                row[name] = _count(row[name])
            for detector in run.detectors:
                for name in DETECTOR_METRICS:
                    row[f"detector_{detector}_{name}"] = run.detector_metric(detector, name)
            for name in METRICS:
                reference = base.metric(name) if base is not None else None
                value = row[name]
                row[f"shift_{name}"] = None if reference is None or value is None else value - reference
            for role, band_steps in steps[id(run)].items():
                for band, step in enumerate(band_steps):
                    row[f"{role}_band{band}_step"] = None if np.isnan(step) else float(step)
                    reference = base_bands.get(role)
                    shift = None
                    if (reference is not None and band < reference.size and np.isfinite(step)
                            and np.isfinite(reference[band])):
                        shift = float(step - reference[band])
                    row[f"shift_{role}_band{band}_step"] = shift
            rows.append(row)
    return rows


def _band_steps(run: Run | None, view: str) -> dict[str, np.ndarray]:
    if run is None or view not in run.analysis.curves:
        return {}
    steps = run.analysis.band_convergence(view)
    roles = run.analysis.roles
    return {role: steps[name] for role, name in roles.items() if name in steps}


def _flatten(config: Mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


# --------------------------------------------------------------------------- writing
def write_comparison(runs: Sequence[Run], out: str | Path, *, problems: Sequence[str] = (),
                     view: str = "joint") -> dict[str, Path]:
    """Write ``report.html``, ``report.md``, ``runs.csv`` and ``figures/`` into ``out``.

    The figures are the rows of the figure table
    (:data:`freqlens.figures.FIGURES`) with a ``compare`` input, named by group
    and the row's ``compare_name``: per group ``<group>_metrics``,
    ``<group>_speed_spectrum``, ``<group>_speed_vs_vanilla`` (each defense's
    learning-speed spectrum beside vanilla's, where the group has a complete
    vanilla run), ``<group>_static_spectrum``,
    ``<group>_convergence_spectrum``, per run ``<group>_<run>_<kind>`` (kinds
    ``mode_heatmap``, ``heatmap``, ``error_curves``, ``band_spectrum``,
    ``frequency_ratios``, ``projection_spectrum``), where they apply; names
    reduced to letters, digits, ``.``, ``-`` and ``_``, each as PDF and PNG.
    Partial runs are marked in every table and figure.

    Returns:
        The paths written, by kind.

    Raises:
        ValueError: no run.
    """
    from freqlens import plots

    if not runs:
        raise ValueError("Expected at least one run that can be compared but got none"
                         + (": " + "; ".join(problems) if problems else "."))
    out = Path(out)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    rows = comparison_rows(runs, view)
    paths = {"csv": _write_csv(rows, out / "runs.csv")}
    html_parts = [f"<h1>freqlens report: {len(runs)} run(s)</h1>"]
    md = [f"# freqlens report: {len(runs)} run(s)", ""]
    for problem in problems:
        html_parts.append(f'<p class="warning">Left out: {html.escape(problem)}</p>')
        md.append(f"> Left out: {problem}")
    if problems:
        md.append("")
    used_stems: set[str] = set()
    group_stems: dict[str, str] = {}
    for group, members in groups(runs).items():
        group_stems[group] = _unique_stem([_dataset_name(members[0])], set(group_stems.values()))
        group_rows = [r for r in rows if r["group"] == group]
        html_parts.append(f"<h2>{html.escape(group)}</h2>")
        md += [f"## {group}", ""]
        notes = [partial_details(m) for m in members if m.partial]
        for member in members:  # a collapsed model's ASR and net are no backdoor: said where the table is
            if member.collapsed:
                notes.append(f"{member.label}: {member.collapse_warning}"
                             + (" It is not used as the baseline of the shifts (Δ)." if member.defense == UNDEFENDED
                                else ""))
        if members[0].experiment.get("dataset.identity") == NOT_RECORDED:
            notes.append(f"{len(members)} run(s) in this group: {NOT_RECORDED_NOTE}")
        if baseline(members[0], members) is None:
            notes.append("No complete vanilla (undefended) run whose model has not collapsed in this group: the "
                         "shifts (Δ) are not computed. "
                         "Runs of other experiments (another dataset, training file, attack, target label, cap "
                         "or model) are never used as the baseline.")
        for note in notes:
            html_parts.append(f'<p class="warning">{html.escape(note)}</p>')
            md += [f"> {note}", ""]
        experiment = {k: v for k, v in members[0].experiment.items() if v is not None}
        html_parts.append("<details><summary>Experiment: the same in every run of this group</summary>"
                          f"{render_value(experiment)}</details>")
        header, table = _summary_table(group_rows)
        html_parts.append(_html_table(header, table))
        md += _md_table(header, table) + [""]
        def section(title: str, header: list[str], table: list[list]) -> None:
            nonlocal html_parts, md
            if table:
                html_parts += [f"<h3>{html.escape(title)}</h3>", _html_table(header, table)]
                md += [f"### {title}", ""] + _md_table(header, table) + [""]

        section("Across seeds: mean ± standard deviation over the seeds of each configuration", *_seed_table(members))
        section("Inference-time detectors: FRR on clean test inputs, FAR on triggered ones, and the metrics after "
                "each detector filtered or repaired the test inputs (mean ± sd over seeds)", *_detector_table(members))
        differences = config_differences(members)
        section("Config differences", ["setting"] + [m.label for m in members],
                [[k] + v for k, v in differences.items()])
        section("Who is learned first: learning speed of the backdoor vs the clean probes with bootstrap intervals "
                "(joint view), and the static spectrum", *_speed_table(members))
        section(f"Convergence step per frequency band ({view} view; 0 = lowest band)", *_band_table(group_rows))
        for (*names, kind), caption, fig in _group_figures(group, members, view):
            if isinstance(fig, str):  # a figure that could not be drawn: its note in its place
                md.append(f"*{caption}: the {fig}.*")
                html_parts.append(f'<p class="warning">{html.escape(caption)}: the {html.escape(fig)}.</p>')
                continue
            stem = _unique_stem(names, used_stems, kind, prefix=group_stems[group])
            plots.save_figure(fig, figures_dir / stem)
            md.append(f"![{caption}](figures/{stem}.png)")
            html_parts.append(f'<figure><img alt="{html.escape(caption)}" src="{figure_to_data_uri(fig)}">'
                              f"<figcaption>{html.escape(caption)}</figcaption></figure>")
            plt.close(fig)  # one figure open at a time, however many runs
        md.append("")
    script = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
              "document.body.dataset.figuresTotal=i.length;"
              "document.body.dataset.figuresLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;});</script>")
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>freqlens report</title>'
            f"<style>{STYLE}</style></head><body>" + "\n".join(html_parts) + script + "</body></html>")
    paths["html"] = out / "report.html"
    paths["html"].write_text(page, encoding="utf-8")
    paths["markdown"] = out / "report.md"
    paths["markdown"].write_text("\n".join(md) + "\n", encoding="utf-8")
    plt.close("all")
    return paths


def slug(text: str, limit: int = 80) -> str:
    """``text`` as a file-name part: letters, digits, ``.`` and ``-`` only, lower case, at most ``limit``."""
    cleaned = re.sub(r"[^a-z0-9.]+", "-", str(text).lower()).strip("-.")
    if len(cleaned) > limit:  # cut at a word boundary where there is one
        cut = cleaned[:limit + 1]
        cleaned = cut.rsplit("-", 1)[0] if "-" in cut else cut[:limit]
    return cleaned.rstrip("-.") or "run"


def _unique_stem(parts: Sequence[str], used: set[str], kind: str = "", *, prefix: str = "") -> str:
    """``prefix`` (a stem already made here) and ``parts`` slugged, joined by ``_``, then ``kind``;
    ``-2``, ``-3``, ... where taken."""
    stem = "_".join(([prefix] if prefix else []) + [slug(p, 48) for p in parts])
    candidate, n = stem, 1
    while (full := f"{candidate}_{kind}" if kind else candidate) in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(full)
    return full


def _summary_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """The runs of a group: metrics, the clean examples each defense used, and, where a run of the group
    removed training examples, how many and their detection precision / recall / F1 ("–" where absent)."""
    header = ["run", "status", "CACC", "ASR", "false-trigger", "net", "clean examples", "Δ vs", "Δ CACC",
              "Δ ASR", "Δ net"]
    table = [[r["run"], r["status"], r["cacc"], r["asr"], r["false_trigger_rate"], r["net_backdoor_effect"],
              _count(r["clean_examples"]), r["baseline"], r["shift_cacc"], r["shift_asr"],
              r["shift_net_backdoor_effect"]] for r in rows]
    if any(r[k] is not None for r in rows for k in ("removed", *DETECTION)):
        header += ["removed", "detection precision", "detection recall", "detection F1"]
        for line, r in zip(table, rows):
            line += [_count(r["removed"]), *(r[k] for k in DETECTION)]
    return header, table


def _count(value: float | None) -> int | None:
    """A count stored as a number (a mean over seeds that agree) as an integer; None stays None."""
    return None if value is None else int(round(value))


def _speed_table(members: Sequence[Run]) -> tuple[list[str], list[list]]:
    """Per run: how many filter widths and eigenmode bands resolve "backdoor first", "clean first" or
    nothing, and the backdoor-minus-clean static low-mode share of its input space with its interval."""
    rows = []
    for run in members:
        verdicts = run.analysis.speed_verdicts.get("joint", {})
        if not verdicts:
            continue
        counts = []
        for family in ("low", "modes"):
            outcomes = verdicts[family].outcomes if family in verdicts else []
            counts.append(" / ".join(str(outcomes.count(o)) for o in ("backdoor first", "clean first",
                                                                       "no difference resolved"))
                          + f" of {len(outcomes)}" if outcomes else "–")
        space = run.analysis.config.input_space if run.analysis.config is not None else None
        spectrum = run.analysis.static_spectra.get(space)
        d = spectrum.difference if spectrum is not None else None
        static = "–" if d is None else (f"{float(d.estimate):+.2f} [{float(d.low):+.2f}, {float(d.high):+.2f}] "
                                        f"({space})")
        rows.append([run.label, *counts, static])
    header = ["run", "widths: backdoor / clean first / unresolved", "mode bands: backdoor / clean first / unresolved",
              "static: backdoor − clean low-mode share"]
    return (header, rows) if rows else ([], [])


def _seed_table(members: Sequence[Run]) -> tuple[list[str], list[list]]:
    """The seed summary as a table; empty when no configuration has two or more seeds."""
    rows = seed_summary(members)
    if not any(len(r["seeds"]) > 1 for r in rows):
        return [], []

    def spread(row: dict, name: str) -> str:
        return _spread(row[name], row[f"{name}_sd"])

    def clean(row: dict) -> str:  # one setting, the same for every seed but where it changed between versions
        mean, sd = row["clean_examples"], row["clean_examples_sd"]
        return "–" if mean is None else f"{mean:.0f}" + ("" if not sd else f" ± {sd:.0f}")

    detection = [name for name in DETECTION if any(r[name] is not None for r in rows)]
    header = (["configuration", "seeds", "CACC", "ASR", "false-trigger", "net", "clean examples"]
              + [f"detection {name.removeprefix('detection_')}".replace("f1", "F1") for name in detection])
    return header, [[r["configuration"], ", ".join(f"{s} (collapsed)" if s in r["collapsed_seeds"] else str(s)
                                                   for s in r["seeds"])]
                    + [spread(r, name) for name in METRICS] + [clean(r)]
                    + [spread(r, name) for name in detection] for r in rows]


def _detector_table(members: Sequence[Run]) -> tuple[list[str], list[list]]:
    """Per configuration (:func:`configurations`) and detector it applied: the seeds, and FRR, FAR, CACC,
    ASR, false-trigger rate and net backdoor effect after detection, mean ± sample sd over the seeds
    (``(n=k)`` where only k of them measured it), and an ``error`` column where a detector failed;
    empty when no run of the group applied a detector. A rejected input counts as neither correct nor
    the target (OpenBackdoor's measure; :func:`freqlens.detectors.evaluate_detector`)."""
    rows = []
    for label, runs in configurations(members).items():
        for detector in dict.fromkeys(d for run in runs for d in run.detectors):
            applied = [run for run in runs if detector in run.detectors]
            line = [label, detector, ", ".join(f"{run.seed} (collapsed)" if run.collapsed else str(run.seed)
                                               for run in applied)]  # as the seed table names them
            for name in DETECTOR_METRICS:
                mean, sd, n = _mean_sd([run.detector_metric(detector, name) for run in applied])
                line.append(_spread(mean, sd) + (f" (n={n})" if 0 < n < len(applied) else ""))
            errors = [f"seed {run.seed}: {run.detector_error(detector)}" for run in applied
                      if run.detector_error(detector)]
            rows.append([*line, "; ".join(errors)])
    header = ["configuration", "detector", "seeds", "FRR", "FAR", "CACC", "ASR", "false-trigger", "net"]
    if any(row[-1] for row in rows):
        header.append("error")
    else:
        rows = [row[:-1] for row in rows]
    return (header, rows) if rows else ([], [])


def _spread(mean: float | None, sd: float | None) -> str:
    """``0.812`` (one seed), ``0.812 ± 0.010`` (a sample sd over several), "–" where nothing was measured."""
    return "–" if mean is None else f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def _band_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    keys = list(dict.fromkeys(k for r in rows for k in r if k.endswith("_step") and not k.startswith("shift_")))
    table = []
    for role in ("backdoor", "clean"):
        role_keys = [k for k in keys if k.startswith(f"{role}_band")]
        for r in rows:
            if role_keys:
                table.append([f"{r['run']}: {role}"] + [r.get(k) for k in role_keys])
    width = max((len(t) for t in table), default=1) - 1
    return ["run: probe set"] + [f"band {b}" for b in range(width)], table


def _headed(fig, heading: str):
    """Put ``heading`` (the run, and whether it is partial) above a figure's own title."""
    own = fig.get_suptitle()
    wrapped = "\n".join(textwrap.fill(line, 110) for line in heading.split("\n"))
    fig.suptitle(wrapped + (f"\n{own}" if own else ""), fontsize=10)
    return fig


def _group_figures(group: str, members: Sequence[Run], view: str) -> Iterator[tuple[tuple, str, object]]:
    """(file-name parts, caption, figure or the note of one that could not be drawn) for a group's
    figures, then each run's: the rows of the
    figure table (:data:`freqlens.figures.FIGURES`) with a ``compare`` input, in table order, each
    drawn when the caller asks for the next."""
    partial = [f"{m.label}: {m.partial.removeprefix('partial: ')}" for m in members if m.partial]
    mark = f" (partial runs, metrics missing: {'; '.join(partial)})" if partial else ""
    for row in FIGURES.values():
        if row.compare is None or row.compare == "run":
            continue
        found = _group_input(row, group, members)
        if found is None:
            continue
        data, fields = found
        caption = row.compare_caption.format(**{"view": view, "mark": mark, "source": "", "spread": "", **fields})
        fig, note = row.draw_or_note(data, **({"view": view} if row.compare_view else {}))
        yield (row.compare_name,), caption, note or (fig if row.compare == "metrics" else _headed(fig, group))
    for m in members:
        a = m.analysis
        v = view if view in a.curves else "separate"
        heading = f"{group}\n{m.label}" + (f": {m.partial.removeprefix('partial: ')}" if m.partial else "")
        caption = m.label + (f" [{m.partial}]" if m.partial else "")
        for row in FIGURES.values():  # drawn one at a time, as the caller saves and closes each
            if row.compare != "run" or not row.applies(a):
                continue
            what = row.compare_caption.format(view=v, mark="", source=m.label, spread="")
            fig, note = row.draw_or_note(a, **({"view": v} if row.compare_view else {}))
            yield (m.label, row.compare_name), f"{caption}: {what}", note or _headed(fig, heading)


def _group_input(row, group: str, members: Sequence[Run]) -> tuple[object, dict] | None:
    """What a group figure of the table draws (by its ``compare`` input) and its caption's fields;
    None where no run of the group has it (e.g. no metrics measured, no eigenmode spectrum)."""
    if row.compare == "metrics":
        records = [{"attack": group, "defense": m.label, "cacc": m.metric("cacc"), "asr": m.metric("asr"),
                    "false_trigger_rate": m.metric("false_trigger_rate")} for m in members]
        measured = any(r[k] is not None for r in records for k in ("cacc", "asr", "false_trigger_rate"))
        return (records, {}) if measured else None  # else: the table says what is missing
    if row.compare in ("configurations", "baseline"):
        found = configurations(members)
        by_configuration = {label: [m.analysis for m in runs if row.applies(m.analysis)]
                            for label, runs in found.items()}
        by_configuration = {k: v for k, v in by_configuration.items() if v}
        fields = {}
        if row.compare == "baseline":  # the complete vanilla configuration first, then the others
            usable = {label: [m.analysis for m in runs if row.applies(m.analysis) and not m.collapsed]
                      for label, runs in found.items()  # a collapsed seed is no baseline (see `baseline`)
                      if runs[0].defense == UNDEFENDED and runs[0].partial is None}
            vanilla = next((label for label, analyses in usable.items() if analyses), None)
            if vanilla is None or len(by_configuration) < 2:
                return None  # nothing to draw beside (the note on the missing vanilla run says why)
            by_configuration.pop(vanilla, None)
            by_configuration = {vanilla: usable[vanilla], **by_configuration}
            fields["source"] = vanilla
        if not by_configuration:
            return None
        several = any(len(v) > 1 for v in by_configuration.values())
        spread = ("mean over seeds, band ± one standard deviation over seeds (one seed: its bootstrap interval)"
                  if several else "band = the run's bootstrap interval over probe rows")
        return by_configuration, {**fields, "spread": spread}
    if row.compare == "one":
        having = [m for m in members if row.applies(m.analysis)]
        chosen = next((m for m in having if m.defense == UNDEFENDED), having[0] if having else None)
        return None if chosen is None else (chosen.analysis, {"source": chosen.label})
    analyses = {m.label: m.analysis for m in members if row.applies(m.analysis)}  # "runs"
    return (analyses, {}) if analyses else None


def _format(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"
    return str(value)


def _html_table(header: list[str], rows: list[list]) -> str:
    return _table(header, rows, cell=lambda v: html.escape(_format(v)))


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def _write_csv(rows: list[dict], path: Path) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
