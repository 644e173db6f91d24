"""From a recorded trajectory to frequency-domain convergence curves.

:func:`analyse` measures every snapshot of every probe set against its targets
at every filter width, in two views:

- ``"separate"``: each probe set with its own kernel, as in the paper. A
  backdoor set whose targets are all the target class has no high part there
  (NaN, METHOD.md pitfalls).
- ``"joint"``: one kernel over the clean and the backdoor probes together, the
  errors reduced over each set's rows. It stays defined for the backdoor and
  puts both sets on one frequency scale; freqlens' default for verdicts.

and derives convergence steps and a verdict per width: does the backdoor
mapping's low-frequency error converge before the clean mapping's?
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass, field

import numpy as np

from freqlens._checks import check_choice
from freqlens.recording.storage import Trajectory
from freqlens.spectral import (
    DISTANCES,
    REDUCTIONS,
    DegenerateTargetWarning,
    FilterBank,
    WidthCheck,
    check_widths,
    convergence_steps,
    learning_speed,
    projection_spectrum,
    suggest_widths,
)

VIEWS = ("separate", "joint")
PARTS = ("low", "high")


@dataclass
class Curves:
    """Error curves of one probe set in one view; arrays are (T, K) or (T, K + 1)."""

    low: np.ndarray
    high: np.ndarray
    bands: np.ndarray
    lfr: np.ndarray | None = None
    hfr: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in self.__dict__.items() if v is not None}


@dataclass
class SpectralAnalysis:
    """Frequency-domain convergence of a recorded run.

    Attributes:
        steps: the recorded steps (T,).
        widths: filter widths (K,), decreasing: index 0 has the lowest cut-off.
        distance, reduction: the kernel's distance and the error reduction.
        threshold, relative: the level that defines convergence (a fraction
            of each curve's first value when ``relative``).
        curves: ``curves[view][probe_set]`` -> :class:`Curves`.
        convergence: ``convergence[view][probe_set][part]`` -> (K,) steps at
            which that error curve converged (NaN: never, or undefined).
        projection: per probe set, ``(frequencies, errors (T, M))``.
        width_checks: per probe set, how each width filters it.
        roles: probe-set name per role (``"clean"``, ``"backdoor"``, ...).
    """

    steps: np.ndarray
    widths: np.ndarray
    distance: str
    reduction: str
    threshold: float
    relative: bool
    curves: dict[str, dict[str, Curves]]
    convergence: dict[str, dict[str, dict[str, np.ndarray]]]
    projection: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    width_checks: dict[str, WidthCheck] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def verdicts(self, view: str = "joint", part: str = "low") -> list[str]:
        """Per width: which of the backdoor and clean mappings converged first."""
        clean, backdoor = self.roles.get("clean"), self.roles.get("backdoor")
        if clean is None or backdoor is None or view not in self.convergence:
            return []
        c = self.convergence[view][clean][part]
        b = self.convergence[view][backdoor][part]
        return [_verdict(bk, ck) for bk, ck in zip(b, c)]

    def band_convergence(self, view: str = "joint") -> dict[str, np.ndarray]:
        """Per probe set, the step at which each frequency band's error converged.

        Bands run from low (index 0, below the widest filter's cut-off) to high
        (index K); convergence uses the analysis' threshold rule. NaN: never,
        or undefined (a band with no target part).
        """
        check_choice(view, "view", tuple(self.curves))
        return {name: convergence_steps(self.steps, c.bands, self.threshold, relative=self.relative)
                for name, c in self.curves[view].items()}

    def learning_speeds(self, view: str = "joint", *, method: str = "area") -> dict[str, dict[str, np.ndarray]]:
        """Per probe set, the learning speed of every error curve: ``"low"`` and
        ``"high"`` (K,) per width, ``"bands"`` (K + 1,) per frequency band.

        Unlike a convergence step, a speed is defined for every curve that
        starts above 0 (:func:`freqlens.spectral.learning_speed`): with
        ``"area"`` (default), 1 minus the mean normalised error over log-steps,
        higher = learned faster; with ``"half_drop"``, the step at which a curve
        has made half of its own drop. So a defended run whose errors never
        halve still gets a point on a speed spectrum. NaN: an undefined curve
        (a band with no target part).
        """
        check_choice(view, "view", tuple(self.curves))
        return {name: {"low": learning_speed(self.steps, c.low, method=method),
                       "high": learning_speed(self.steps, c.high, method=method),
                       "bands": learning_speed(self.steps, c.bands, method=method)}
                for name, c in self.curves[view].items()}

    PLOTS = ("heatmaps", "curves", "bands", "convergence", "ratios", "projection")

    def plot(self, kind: str = "heatmaps", **kwargs):
        """Draw this analysis (inline in a notebook); returns the figure.

        ``kind``: ``"heatmaps"`` (the paper's), ``"curves"`` (relative errors,
        convergence marked), ``"bands"`` (band spectrum over training),
        ``"convergence"`` (steps to converge per band), ``"ratios"`` (LFR/HFR)
        or ``"projection"``; ``kwargs`` go to the function of
        :mod:`freqlens.plots` that draws it.
        """
        from freqlens import plots

        check_choice(kind, "kind", self.PLOTS)
        draw = {"heatmaps": plots.plot_heatmaps, "curves": plots.plot_error_curves,
                "bands": plots.plot_band_spectrum, "convergence": plots.plot_convergence_spectrum,
                "ratios": plots.plot_frequency_ratios, "projection": plots.plot_projection_spectrum}[kind]
        return draw(self, **kwargs)

    def _repr_html_(self) -> str:
        """A notebook summary: snapshots, widths, verdicts and convergence steps per view."""
        from freqlens.report import _convergence_table

        views = "".join(f"<li><b>{v} view:</b> {html.escape(info['statement'])}</li>"
                        for v, info in self.summary().items())
        tables = "".join(f"<details><summary>convergence steps, {v} view</summary>{_convergence_table(self, v)}"
                         f"</details>" for v in self.convergence)
        return (f"<div><b>SpectralAnalysis</b>: {self.steps.size} snapshots (steps {int(self.steps[0])}"
                f"&ndash;{int(self.steps[-1])}), {self.widths.size} widths ({self.widths[0]:.3g}&ndash;"
                f"{self.widths[-1]:.3g}), probe sets {', '.join(html.escape(n) for n in self.curves['separate'])}"
                f"<ul>{views}</ul>{tables}<small>.plot(kind) draws one of {', '.join(self.PLOTS)}</small></div>")

    def __repr__(self) -> str:
        return (f"SpectralAnalysis(snapshots={self.steps.size}, widths={self.widths.size}, "
                f"probe_sets={list(self.curves['separate'])}, views={list(self.curves)})")

    def summary(self) -> dict:
        """A short account of what was measured, for results.json and reports."""
        out = {}
        for view in self.convergence:
            verdicts = self.verdicts(view)
            counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
            out[view] = {"verdicts": verdicts, "counts": counts, "statement": _statement(counts, len(verdicts))}
        return out

    def to_dict(self) -> dict:
        return {
            "steps": self.steps.tolist(),
            "widths": self.widths.tolist(),
            "distance": self.distance,
            "reduction": self.reduction,
            "threshold": self.threshold,
            "threshold_relative_to_first_value": self.relative,
            "roles": self.roles,
            "convergence_steps": {
                view: {s: {p: _jsonable(v) for p, v in parts.items()} for s, parts in sets.items()}
                for view, sets in self.convergence.items()
            },
            "learning_speeds": {  # method "area": 1 - mean normalised error over log-steps, higher = faster
                view: {s: {p: _jsonable(v) for p, v in parts.items()} for s, parts in self.learning_speeds(view).items()}
                for view in self.curves
            },
            "summary": self.summary(),
            "width_checks": {s: c.to_dict() for s, c in self.width_checks.items()},
        }


def _verdict(backdoor: float, clean: float) -> str:
    if np.isnan(backdoor) and np.isnan(clean):
        return "neither converged"
    if np.isnan(clean):
        return "backdoor only"
    if np.isnan(backdoor):
        return "clean only"
    if backdoor < clean:
        return "backdoor first"
    return "clean first" if clean < backdoor else "tie"


def _statement(counts: dict[str, int], total: int) -> str:
    if not total:
        return "no clean and backdoor probe sets to compare"
    first = counts.get("backdoor first", 0) + counts.get("backdoor only", 0)
    if first == total:
        return f"the backdoor's low-frequency error converged first at all {total} widths"
    if first == 0:
        return f"the backdoor's low-frequency error did NOT converge first at any of the {total} widths"
    parts = ", ".join(f"{v}: {n}" for v, n in counts.items())
    return f"mixed: the backdoor's low-frequency error converged first at {first} of {total} widths ({parts})"


def _jsonable(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _roles(trajectory: Trajectory) -> dict[str, str]:
    roles = {}
    for name, info in trajectory.meta.get("probe_sets", {}).items():
        role = info.get("role")
        if role and role not in roles:
            roles[role] = name
    return roles


def analyse(
    trajectory: Trajectory,
    *,
    widths: np.ndarray | None = None,
    num_widths: int = 12,
    distance: str = "euclidean",
    reduction: str = "mean",
    threshold: float = 0.5,
    relative: bool = True,
    num_frequencies: int = 24,
) -> SpectralAnalysis:
    """Frequency-domain convergence of every probe set in a trajectory.

    Args:
        trajectory: a recorded run (:func:`freqlens.load_trajectory`).
        widths: filter widths; default: :func:`~freqlens.spectral.suggest_widths`
            from the clean and backdoor inputs together.
        num_widths: K, when the widths are chosen from the data.
        distance, reduction: see :func:`freqlens.spectral.relative_errors`.
        threshold: the level below which a curve counts as converged: a
            fraction of its first value (``relative=True``, default) or an
            error level (``relative=False``). Relative is the default because
            the low-frequency error of a balanced clean set is already small
            at the start (an untrained model's uniform prediction is close to
            the smoothed labels), so an absolute level says little there.
        relative: see ``threshold``.
        num_frequencies: frequencies of the projection view.

    Returns:
        A :class:`SpectralAnalysis`.
    """
    check_choice(distance, "distance", DISTANCES)
    check_choice(reduction, "reduction", REDUCTIONS)
    roles = _roles(trajectory)
    joint_sets = [roles[r] for r in ("clean", "backdoor") if r in roles]
    pooled = np.concatenate([trajectory.inputs[s] for s in (joint_sets or trajectory.names)])
    if widths is None:
        widths = suggest_widths(pooled, num_widths, distance=distance)
    widths = np.sort(np.asarray(widths, dtype=np.float64))[::-1]
    curves: dict[str, dict[str, Curves]] = {"separate": {}}
    checks, projection = {}, {}
    with warnings.catch_warnings():
        # NaN where a target part is zero is expected here (constant backdoor
        # targets in the separate view); it is reported in the results instead.
        warnings.simplefilter("ignore", DegenerateTargetWarning)
        for name in trajectory.names:
            bank = FilterBank(trajectory.inputs[name], widths, distance=distance)
            checks[name] = check_widths(bank, warn=False)
            curves["separate"][name] = _measure(bank, trajectory.outputs[name], trajectory.labels[name], reduction)
            projection[name] = projection_spectrum(
                trajectory.inputs[name], trajectory.outputs[name], trajectory.labels[name],
                num_frequencies=num_frequencies,
            )
        if len(joint_sets) == 2:
            curves["joint"] = _measure_joint(trajectory, joint_sets, widths, distance, reduction)
    convergence = {
        view: {
            name: {part: convergence_steps(trajectory.steps, getattr(c, part), threshold, relative=relative) for part in PARTS}
            for name, c in sets.items()
        }
        for view, sets in curves.items()
    }
    return SpectralAnalysis(
        steps=trajectory.steps.copy(),
        widths=widths,
        distance=distance,
        reduction=reduction,
        threshold=threshold,
        relative=relative,
        curves=curves,
        convergence=convergence,
        projection=projection,
        width_checks=checks,
        roles=roles,
    )


def _measure(bank: FilterBank, outputs, labels, reduction, subset=None, targets=None) -> Curves:
    targets = labels if targets is None else targets
    return Curves(**bank.measure(outputs, targets, reduction=reduction, subset=subset))


def _measure_joint(trajectory, names, widths, distance, reduction) -> dict[str, Curves]:
    inputs = np.concatenate([trajectory.inputs[s] for s in names])
    outputs = np.concatenate([trajectory.outputs[s] for s in names], axis=1)
    labels = np.concatenate([trajectory.labels[s] for s in names])
    bank = FilterBank(inputs, widths, distance=distance)
    offsets = np.cumsum([0] + [len(trajectory.labels[s]) for s in names])
    return {
        name: _measure(bank, outputs, labels, reduction, subset=np.arange(offsets[i], offsets[i + 1]))
        for i, name in enumerate(names)
    }
