"""From a recorded trajectory to frequency-domain convergence curves, speeds and spectra.

:func:`analyse` measures every snapshot of every probe set against its targets
at every filter width, in two views:

- ``"separate"``: each probe set with its own kernel, as in the paper. A
  backdoor set whose targets are all the target class has no high part there
  (NaN, METHOD.md pitfalls).
- ``"joint"``: one kernel over the clean and the backdoor probes together (the
  roles marked ``joint`` in :data:`freqlens.recording.probes.PROBE_ROLES`), the
  errors reduced over each set's rows. It stays defined for the backdoor and
  puts both sets on one frequency scale; freqlens' default for verdicts.

From the curves it derives, per probe set and curve, a learning speed with a
bootstrap interval, and per width (and per eigenmode band) a verdict with its
interval: is the backdoor mapping learned before the clean one? With clean and
backdoor probe sets it also measures the eigenmode (graph-Fourier) spectrum:
where the clean and the backdoor targets put their energy before training
(per recorded input space), and the error per mode band over training.

**Uncertainty** is a bootstrap over probe examples with the filters held
fixed: the kernels and the eigenbasis are built once from all N probes, and
each of ``bootstrap`` resamples redraws the probe rows (stratified: clean rows
from the clean set, backdoor rows from the backdoor set) over which the errors
are reduced, as multinomial row weights
(:func:`~freqlens.spectral.bootstrap_weights`). Resampling the kernel's inputs
would duplicate points (distance 0) and bias the filters; see
:mod:`freqlens.spectral.uncertainty`. Intervals are percentile intervals.

All settings live in one :class:`AnalysisConfig`, stored with the results
(``SpectralAnalysis.config``, ``to_dict()["config"]``), so that
``analyse(trajectory, AnalysisConfig(**results["analysis"]["config"]))``
reproduces an analysis exactly.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from freqlens._checks import check_choice, check_positive_int, check_positive_number
from freqlens.recording.probes import joint_roles
from freqlens.recording.storage import Trajectory
from freqlens.spectral import (
    DISTANCES,
    REDUCTIONS,
    DegenerateTargetWarning,
    EigenBasis,
    FilterBank,
    WidthCheck,
    bootstrap_weights,
    check_widths,
    conservative_interval,
    convergence_steps,
    eigenbasis,
    learning_speed,
    projection_spectrum,
    suggest_widths,
)
from freqlens.spectral.eigenmodes import MAX_DENSE, PARTIAL_MODES
from freqlens.spectral.widths import METHODS as WIDTH_RULES

VIEWS = ("separate", "joint")
PARTS = ("low", "high")
#: Learning-speed methods of the analysis: the two of :func:`~freqlens.spectral.learning_speed`
#: and the paper's threshold rule (the convergence step).
SPEED_METHODS = ("area", "half_drop", "threshold")
#: Whether a higher speed means learned faster, per method (area: yes; steps: no).
HIGHER_IS_FASTER = {"area": True, "half_drop": False, "threshold": False}
#: Share of the modes counted as "low" in the static target spectrum (issue 13's table).
LOW_MODE_SHARE = 0.25
#: Curve families with a speed per element: filter widths (low, high parts), filter bands, mode bands.
FAMILIES = ("low", "high", "bands", "modes")
#: Verdict outcomes (the label starts with one of these).
OUTCOMES = ("backdoor first", "clean first", "no difference resolved", "undefined")
#: A speed difference (and its interval's ends) within this of 0 means the two curves are the same.
#: Speed differences this small are float rounding of curves recorded in float32 (area speeds are
#: unitless, O(1); step speeds are whole steps): a tie, never a verdict.
IDENTICAL = 1e-6


@dataclass(frozen=True)
class AnalysisConfig:
    """How a recorded trajectory is analysed (the ``[analysis]`` section of a config).

    Every invalid value raises ``ValueError`` naming ``analysis.<key>``, what
    was expected and what came.

    Attributes:
        input_space: the kernel inputs' space, one the trajectory recorded
            (``"flattened"``, the paper's; ``"mean-pooled"``, ``"hidden:K"``,
            a user space's name), or ``"auto"`` (default): the first space
            the trajectory recorded, ``"flattened"`` unless
            ``record.input_spaces`` says otherwise. Resolved to the name in
            :attr:`SpectralAnalysis.config`.
        widths: ``"auto"`` (chosen from the clean and backdoor inputs
            together with ``width_rule``) or filter widths (positive numbers,
            in the units of the distances).
        width_rule: ``"neighbours"`` (median effective neighbour counts
            log-spaced from 2 to N/2) or ``"quantiles"`` (distance quantiles);
            :func:`~freqlens.spectral.suggest_widths`.
        num_widths: K, an integer or ``"auto"`` (as many as N resolves).
        distance: ``"euclidean"`` (MuScleLoRA) or ``"squared"`` (Frequency Principle).
        reduction: ``"mean"`` (MuScleLoRA) or ``"frobenius"`` (Frequency Principle).
        threshold: the convergence level (fraction of each curve's first
            value when ``relative``), for convergence steps and ``speed = "threshold"``.
        relative: the threshold is relative to each curve's first value
            (the filter curves; the eigenmode curves are normalised to their
            start already, so for them the threshold is always relative).
        speed: ``"area"`` (1 - mean normalised error over log-steps; higher =
            faster), ``"half_drop"`` (the step at which a curve has made half
            its own drop; lower = faster) or ``"threshold"`` (the paper's
            convergence step; lower = faster, NaN when never converged).
        num_bands: eigenmode bands (log-spaced, mode 0 alone); fewer when N
            cannot give distinct edges.
        mode_width: width of the eigenbasis' kernel, ``"auto"`` (median
            effective neighbours sqrt(N)) or a positive number; applies to
            ``input_space`` (the other spaces' static spectra use ``"auto"``).
        bootstrap: resamples R for the intervals (0: no intervals).
        level: the intervals' coverage, in (0, 1).
        seed: the bootstrap's seed (an integer >= 0).
        num_frequencies: frequencies of the projection view.
    """

    input_space: str = "auto"
    widths: str | tuple[float, ...] = "auto"
    width_rule: str = "neighbours"
    num_widths: int | str = "auto"
    distance: str = "euclidean"
    reduction: str = "mean"
    threshold: float = 0.5
    relative: bool = True
    speed: str = "area"
    num_bands: int = 12
    mode_width: str | float = "auto"
    bootstrap: int = 200
    level: float = 0.95
    seed: int = 0
    num_frequencies: int = 24

    def __post_init__(self) -> None:
        if not isinstance(self.input_space, str) or not self.input_space:
            raise ValueError(f"Expected `analysis.input_space` to be the name of a recorded input space "
                             f"(\"flattened\", \"mean-pooled\", \"hidden:K\", ...) but got {self.input_space!r}.")
        object.__setattr__(self, "widths", _check_widths(self.widths))
        check_choice(self.width_rule, "analysis.width_rule", WIDTH_RULES)
        if self.num_widths != "auto":
            check_positive_int(self.num_widths, "analysis.num_widths")
        check_choice(self.distance, "analysis.distance", DISTANCES)
        check_choice(self.reduction, "analysis.reduction", REDUCTIONS)
        check_positive_number(self.threshold, "analysis.threshold")
        if not isinstance(self.relative, (bool, np.bool_)):
            raise ValueError(f"Expected `analysis.relative` to be true or false but got {self.relative!r}.")
        check_choice(self.speed, "analysis.speed", SPEED_METHODS)
        check_positive_int(self.num_bands, "analysis.num_bands")
        if self.mode_width != "auto":
            check_positive_number(self.mode_width, "analysis.mode_width")
            object.__setattr__(self, "mode_width", float(self.mode_width))
        check_positive_int(self.bootstrap, "analysis.bootstrap", minimum=0)
        if (isinstance(self.level, bool) or not isinstance(self.level, (int, float, np.floating))
                or not 0.0 < self.level < 1.0):
            raise ValueError(f"Expected `analysis.level` to be a number in (0, 1), e.g. 0.95, but got {self.level!r}.")
        check_positive_int(self.seed, "analysis.seed", minimum=0)
        check_positive_int(self.num_frequencies, "analysis.num_frequencies")

    def to_dict(self) -> dict:
        """The settings as plain JSON values (``widths`` a list)."""
        out = asdict(self)
        if isinstance(self.widths, tuple):
            out["widths"] = list(self.widths)
        return out


def _check_widths(widths) -> str | tuple[float, ...]:
    if isinstance(widths, str):
        if widths != "auto":
            raise ValueError(f"Expected `analysis.widths` to be \"auto\" or a list of positive numbers "
                             f"but got {widths!r}.")
        return widths
    try:
        values = np.asarray(widths, dtype=np.float64)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)) \
            or np.any(values <= 0) or isinstance(widths, (bool, np.bool_)):
        raise ValueError(f"Expected `analysis.widths` to be \"auto\" or a non-empty list of positive finite "
                         f"numbers but got {widths!r}.")
    return tuple(float(w) for w in values)


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
class Estimate:
    """Numbers with their bootstrap interval.

    Attributes:
        estimate: the value on all probes, any shape S.
        low, high: the interval's ends, shape S (NaN without resamples, or
            where every resample is undefined): the hull of the percentile
            interval and the interval of the resamples centred on the estimate
            (:func:`~freqlens.spectral.uncertainty.conservative_interval`);
            NaN where more than ``1 - level`` of the resamples have no value
            (a curve that never converged in them is slow, not missing).
        samples: the R bootstrap values, shape (R, *S) (not written to results.json).
    """

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    samples: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_samples(cls, estimate, samples: np.ndarray | None, level: float) -> Estimate:
        estimate = np.asarray(estimate, dtype=np.float64)
        if samples is None or len(samples) == 0:
            nan = np.full(estimate.shape, np.nan)
            return cls(estimate, nan, nan.copy(), None)
        low, high = conservative_interval(estimate, samples, level, axis=0)
        # A resample without a value (a curve that never converged or dropped in it) is not a fast one:
        # where more than 1 - level of them have none, the percentiles of the rest would be overconfident.
        missing = np.isnan(np.asarray(samples, dtype=np.float64)).mean(axis=0)
        low, high = (np.where(missing > 1.0 - level, np.nan, bound) for bound in (low, high))
        return cls(estimate, np.asarray(low), np.asarray(high), samples)

    def to_dict(self) -> dict:
        return {"estimate": _jsonable(self.estimate), "low": _jsonable(self.low), "high": _jsonable(self.high)}


@dataclass
class Verdicts:
    """Who is learned first, per width or per mode band, with the interval of the speed difference.

    Attributes:
        difference: speed(backdoor) - speed(clean) per element (K,) or (B,),
            with its bootstrap interval (paired: one resample redraws both
            sets' rows).
        labels: per element, ``"backdoor first (95% CI [a, b])"`` when the
            interval excludes 0 on the backdoor-faster side, ``"clean first
            (...)"`` on the other side, else ``"no difference resolved
            (...)"``; ``"undefined (no speed for the ... set: ...)"`` where
            a set's speed is NaN (e.g. a mode band in which that set had no
            error at the first snapshot), ``"undefined (no interval: ...)"``
            where too many resamples are. The CI is the difference's.
        outcomes: per element, the label without its interval (one of :data:`OUTCOMES`).
        method: the speed method; with ``"area"`` a positive difference means
            the backdoor is faster, with ``"half_drop"`` / ``"threshold"``
            (steps) a negative one.
        level: the interval's coverage.
    """

    difference: Estimate
    labels: list[str]
    outcomes: list[str]
    method: str
    level: float

    def to_dict(self) -> dict:
        return {**self.difference.to_dict(), "labels": self.labels, "outcomes": self.outcomes,
                "method": self.method, "level": self.level,
                "backdoor_faster_when": "difference > 0" if HIGHER_IS_FASTER[self.method] else "difference < 0"}


@dataclass
class StaticSpectrum:
    """Where the clean and the backdoor targets put their energy over one input space's eigenmodes.

    The basis is the eigenmodes of the normalised kernel over the clean and
    backdoor probes pooled; signals are mean-removed: ``"clean"`` the true
    labels one-hot (per class, energy summed), ``"backdoor"`` the poison flag
    (1 on a triggered probe, 0 on a clean one).

    Attributes:
        space: the input space.
        width: the basis' kernel width.
        n: probes pooled N.
        edges: mode-band edges (B + 1,) (:meth:`EigenBasis.band_edges`).
        shares: per signal, energy share per mode band (B,) (B + 1 with a
            partial basis' rest), summing to 1.
        top: modes counted as low, ``round(N / 4)``.
        low_share: per signal, the share in the ``top`` lowest modes, with a
            row-bootstrap interval (the basis fixed).
        flat: what a flat spectrum gives, ``top / N`` (about 0.25).
        difference: low share of the backdoor signal minus the clean one's,
            with its (paired) interval; > 0: the backdoor is lower-frequency.
        clean_labels: where the clean labels of the backdoor probes came from.
    """

    space: str
    width: float
    n: int
    edges: np.ndarray
    shares: dict[str, np.ndarray]
    top: int
    low_share: dict[str, Estimate]
    flat: float
    difference: Estimate | None
    clean_labels: str

    def to_dict(self) -> dict:
        return {"space": self.space, "width": self.width, "n": self.n, "edges": _jsonable(self.edges),
                "shares": {k: _jsonable(v) for k, v in self.shares.items()}, "top": self.top,
                "low_share": {k: v.to_dict() for k, v in self.low_share.items()}, "flat": self.flat,
                "difference": None if self.difference is None else self.difference.to_dict(),
                "clean_labels": self.clean_labels}


@dataclass
class ModeSpectrum:
    """The error per eigenmode band over training, over the clean and backdoor probes pooled.

    Attributes:
        width, distance: the basis' kernel.
        n: probes pooled N.
        eigenvalues: (M,), decreasing (mode 0 the smoothest).
        complete: whether all N modes are held (else the last band is the rest).
        edges: mode-band edges (B + 1,).
        errors: per probe set, (T, B) band errors divided by their value at
            the first snapshot or, where that is smaller, by a tenth of a flat
            spectrum's share of the set's whole first error
            (``relative_to="floored"``, so 1 or less at the start; B + 1 columns with a
            partial basis' rest): the set's own residual ``outputs - targets``
            as a signal over the pooled probes (zero on the other set's),
            its energy per band (:meth:`~freqlens.spectral.EigenBasis.band_errors`
            with ``subset``), so the two sets' curves differ in every band,
            a band of one mode included. NaN in a band where the set had no
            error at the first snapshot.
    """

    width: float
    distance: str
    n: int
    eigenvalues: np.ndarray
    complete: bool
    edges: np.ndarray
    errors: dict[str, np.ndarray]

    @property
    def num_bands(self) -> int:
        return int(self.edges.size - 1)

    def to_dict(self) -> dict:
        return {"width": self.width, "distance": self.distance, "n": self.n, "complete": self.complete,
                "eigenvalues": _jsonable(self.eigenvalues), "edges": _jsonable(self.edges),
                "errors": {k: _jsonable(v) for k, v in self.errors.items()}}


class _PlotKinds:
    """``SpectralAnalysis.PLOTS``: the kinds :meth:`SpectralAnalysis.plot` draws, read from the
    figure table (:data:`freqlens.figures.FIGURES`) on each access, so a registered figure is one."""

    def __get__(self, instance, owner=None) -> tuple[str, ...]:
        from freqlens.figures import plot_kinds

        return plot_kinds()


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
        config: the :class:`AnalysisConfig` as used, widths (and
            ``num_widths``, ``mode_width``) resolved to numbers.
        effective_neighbours: (K,) median effective neighbour count per width
            of the kernel over the clean and backdoor probes together (over
            all probe sets when there is no such pair).
        speeds: ``speeds[view][probe_set][family]`` -> :class:`Estimate`:
            the learning speed (``config.speed``) of every curve with its
            bootstrap interval; families ``"low"``, ``"high"`` (K,) per
            width, ``"bands"`` (K + 1,) per filter band and, in the joint
            view, ``"modes"`` (B,) per eigenmode band.
        speed_verdicts: ``speed_verdicts[view][family]`` -> :class:`Verdicts`
            for ``"low"`` (per width) and, in the joint view, ``"modes"``
            (per mode band): backdoor first, clean first or no difference
            resolved, with the interval of the speed difference.
        modes: the error per eigenmode band over training
            (:class:`ModeSpectrum`), with clean and backdoor probe sets (3
            probes or more in all); else None.
        static_spectra: per recorded input space, the static target spectrum
            (:class:`StaticSpectrum`), with clean and backdoor probe sets; else empty.
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
    config: AnalysisConfig | None = None
    effective_neighbours: np.ndarray | None = None
    speeds: dict[str, dict[str, dict[str, Estimate]]] = field(default_factory=dict)
    speed_verdicts: dict[str, dict[str, Verdicts]] = field(default_factory=dict)
    modes: ModeSpectrum | None = None
    static_spectra: dict[str, StaticSpectrum] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        """Plain sentences for the run's warnings and the report's banner: filter widths
        that act as one filter or cannot show frequency structure on a probe set
        (:attr:`freqlens.spectral.WidthCheck.message`)."""
        out = []
        for name, check in self.width_checks.items():
            if check.message:
                out.append(f"Probe set {name!r}: {check.message}")
        return out

    def verdicts(self, view: str = "joint", part: str = "low") -> list[str]:
        """Per width, by the paper's convergence steps: which of the backdoor and clean
        mappings converged first (no interval; see :attr:`speed_verdicts` for one)."""
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
        (a band with no target part). Point estimates only; :attr:`speeds`
        holds the analysis' own method with intervals.
        """
        check_choice(view, "view", tuple(self.curves))
        return {name: {"low": learning_speed(self.steps, c.low, method=method),
                       "high": learning_speed(self.steps, c.high, method=method),
                       "bands": learning_speed(self.steps, c.bands, method=method)}
                for name, c in self.curves[view].items()}

    PLOTS = _PlotKinds()

    def plot(self, kind: str = "heatmaps", **kwargs):
        """Draw this analysis (inline in a notebook); returns the matplotlib figure.

        ``kind``: a figure of the table :data:`freqlens.figures.FIGURES`
        (:attr:`PLOTS` lists them): ``"heatmaps"`` (the paper's),
        ``"curves"`` (relative errors, convergence marked), ``"bands"`` (band
        spectrum over training), ``"convergence"`` (steps to converge per
        band), ``"ratios"`` (LFR/HFR), ``"projection"``, ``"speeds"``
        (learning-speed spectrum with intervals), ``"static"`` (static target
        spectrum per input space), ``"modes"`` (error per eigenmode band over
        training), or one added with :func:`freqlens.figures.register_figure`;
        ``kwargs`` go to the function that draws it (:mod:`freqlens.plots`).

        Raises:
            ValueError: an unknown ``kind`` (the message lists the kinds), or
                one this analysis cannot draw (e.g. ``"modes"`` without clean
                and backdoor probe sets).
        """
        from freqlens.figures import FIGURES, plot_kinds

        check_choice(kind, "kind", plot_kinds())
        return FIGURES[kind].draw(self, **kwargs)

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
        """A short account of what was measured, for results.json and reports.

        Per view: ``verdicts`` and ``counts`` by convergence step (the
        paper's rule), ``speed_verdicts`` (per family, the outcome per width
        or mode band) and ``speed_counts`` from the speed differences'
        intervals, and a ``statement`` that leads with the latter.
        """
        out = {}
        for view in self.convergence:
            verdicts = self.verdicts(view)
            counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
            statement = _statement(counts, len(verdicts))
            info = {"verdicts": verdicts, "counts": counts}
            found = self.speed_verdicts.get(view, {})
            if found:
                info["speed_verdicts"] = {family: v.outcomes for family, v in found.items()}
                info["speed_counts"] = {family: _counts(v.outcomes) for family, v in found.items()}
                statement = f"{_speed_statement(found, self.config)}; by convergence step, {statement}"
            info["statement"] = statement
            out[view] = info
        return out

    def to_dict(self) -> dict:
        """Everything measured, as JSON values (``None`` for NaN is left to the writer).

        Keys: ``steps``, ``widths``, ``distance``, ``reduction``, ``threshold``,
        ``threshold_relative_to_first_value``, ``roles``, ``convergence_steps``
        (view -> set -> part -> (K,)), ``learning_speeds`` (view -> set ->
        family -> ``{"estimate", "low", "high"}``), ``learning_speed_method``,
        ``verdicts`` (view -> family -> :meth:`Verdicts.to_dict`), ``summary``,
        ``width_checks``, ``effective_neighbours`` (K,), ``static_spectra``
        (input space -> :meth:`StaticSpectrum.to_dict`), ``eigenmodes``
        (:meth:`ModeSpectrum.to_dict` or None), ``input_space`` and ``config``
        (``AnalysisConfig(**config)`` reproduces this analysis).
        """
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
            "learning_speeds": {
                view: {s: {f: e.to_dict() for f, e in families.items()} for s, families in sets.items()}
                for view, sets in self.speeds.items()
            },
            "learning_speed_method": None if self.config is None else self.config.speed,
            "verdicts": {view: {f: v.to_dict() for f, v in families.items()}
                         for view, families in self.speed_verdicts.items()},
            "summary": self.summary(),
            "width_checks": {s: c.to_dict() for s, c in self.width_checks.items()},
            "effective_neighbours": _jsonable(self.effective_neighbours),
            "static_spectra": {space: s.to_dict() for space, s in self.static_spectra.items()},
            "eigenmodes": None if self.modes is None else self.modes.to_dict(),
            "input_space": None if self.config is None else self.config.input_space,
            "config": None if self.config is None else self.config.to_dict(),
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


def _counts(outcomes: Sequence[str]) -> dict[str, int]:
    return {o: outcomes.count(o) for o in OUTCOMES if o in outcomes}


def _speed_statement(found: dict[str, Verdicts], config: AnalysisConfig | None) -> str:
    """One sentence per family: how many widths / mode bands resolve which order."""
    parts = []
    for family, what in (("low", "widths (low-frequency error)"), ("modes", "eigenmode bands")):
        v = found.get(family)
        if v is None:
            continue
        counts = _counts(v.outcomes)
        listed = ", ".join(f"{o} at {n}" for o, n in counts.items())
        parts.append(f"over {len(v.outcomes)} {what}: {listed}")
    resamples = "no" if config is None or config.bootstrap == 0 else str(config.bootstrap)
    method = "area" if config is None else config.speed
    level = 0.95 if config is None else config.level
    return (f"learning speed ({method}), backdoor vs clean, {level * 100:g}% bootstrap intervals "
            f"({resamples} resamples): " + "; ".join(parts))


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
    config: AnalysisConfig | None = None,
    *,
    widths: Sequence[float] | np.ndarray | None = None,
    **settings,
) -> SpectralAnalysis:
    """Frequency-domain convergence, learning speeds and spectra of every probe set in a trajectory.

    Args:
        trajectory: a recorded run (:func:`freqlens.load_trajectory`).
        config: the settings (:class:`AnalysisConfig`; default: its defaults).
        widths: filter widths, overriding ``config.widths``; default: chosen
            with :func:`~freqlens.spectral.suggest_widths` from the clean and
            backdoor inputs together.
        **settings: any :class:`AnalysisConfig` field by name, overriding
            ``config`` (e.g. ``num_widths=4, threshold=0.3``); an invalid value
            raises ``ValueError`` naming the keyword. The threshold is the
            level below which a curve counts as converged: a fraction of its
            first value (``relative=True``, default) or an error level
            (``relative=False``). Relative is the default because the
            low-frequency error of a balanced clean set is already small at
            the start (an untrained model's uniform prediction is close to
            the smoothed labels), so an absolute level says little there.

    Returns:
        A :class:`SpectralAnalysis` whose ``config`` holds the settings as used.

    Raises:
        ValueError: an invalid setting, or an ``input_space`` the trajectory
            did not record (the message lists those it did).
        TypeError: a keyword that is not an :class:`AnalysisConfig` field.
    """
    config = _resolve_config(config, widths, settings)
    roles = _roles(trajectory)
    names = trajectory.names
    joined = [r for r in joint_roles() if r in roles]  # the roles the probe-role table puts in the joint view
    # the joint view compares the backdoor with the clean mapping: it needs both sets, both joint
    joint_sets = [roles[r] for r in joined] if {"clean", "backdoor"} <= set(joined) else []
    if config.input_space == "auto":
        config = replace(config, input_space=_input_spaces(trajectory)[0])
    inputs = _space_inputs(trajectory, config.input_space)
    pooled = np.concatenate([inputs[s] for s in (joint_sets or names)])
    if config.widths == "auto":
        chosen = suggest_widths(pooled, config.num_widths, distance=config.distance, method=config.width_rule)
    else:
        chosen = np.asarray(config.widths, dtype=np.float64)
    chosen = np.sort(np.asarray(chosen, dtype=np.float64))[::-1].copy()
    config = replace(config, widths=tuple(float(w) for w in chosen), num_widths=int(chosen.size))

    resamples = config.bootstrap
    sizes = [len(trajectory.labels[s]) for s in names]
    columns = dict(zip(names, np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])))
    draws = bootstrap_weights(sizes, resamples, seed=config.seed) if resamples else None

    def weights_of(name: str) -> np.ndarray | None:
        """The all-ones row (the estimate) on top of the set's resampled row weights."""
        if draws is None:
            return None
        own = draws[:, columns[name]]
        return np.concatenate([np.ones((1, own.shape[1])), own])

    curves: dict[str, dict[str, Curves]] = {"separate": {}}
    samples: dict[str, dict[str, dict[str, np.ndarray]]] = {"separate": {}}
    checks, projection = {}, {}
    neighbours = None
    with warnings.catch_warnings():
        # NaN where a target part is zero is expected here (constant backdoor
        # targets in the separate view); it is reported in the results instead.
        warnings.simplefilter("ignore", DegenerateTargetWarning)
        for name in names:
            bank = FilterBank(inputs[name], chosen, distance=config.distance)
            checks[name] = check_widths(bank, warn=False)
            curves["separate"][name], samples["separate"][name] = _measure(
                bank, trajectory.outputs[name], trajectory.labels[name], config.reduction, weights=weights_of(name))
            projection[name] = projection_spectrum(
                inputs[name], trajectory.outputs[name], trajectory.labels[name],
                num_frequencies=config.num_frequencies,
            )
        if joint_sets:
            bank = FilterBank(pooled, chosen, distance=config.distance)
            neighbours = check_widths(bank, warn=False).neighbours
            outputs = np.concatenate([trajectory.outputs[s] for s in joint_sets], axis=1)
            labels = np.concatenate([trajectory.labels[s] for s in joint_sets])
            offsets = np.cumsum([0] + [len(trajectory.labels[s]) for s in joint_sets])
            rows = {name: np.arange(offsets[i], offsets[i + 1]) for i, name in enumerate(joint_sets)}
            curves["joint"], samples["joint"] = {}, {}
            for name in joint_sets:
                curves["joint"][name], samples["joint"][name] = _measure(
                    bank, outputs, labels, config.reduction, subset=rows[name], weights=weights_of(name))
        elif len(names) == 1:
            neighbours = checks[names[0]].neighbours
        else:
            neighbours = check_widths(FilterBank(pooled, chosen, distance=config.distance), warn=False).neighbours
    convergence = {
        view: {
            name: {part: convergence_steps(trajectory.steps, getattr(c, part), config.threshold,
                                           relative=config.relative) for part in PARTS}
            for name, c in sets.items()
        }
        for view, sets in curves.items()
    }
    speeds = {
        view: {name: {family: _speed_estimate(trajectory.steps, getattr(c, family), samples[view][name].get(family),
                                              config) for family in ("low", "high", "bands")}
               for name, c in sets.items()}
        for view, sets in curves.items()
    }
    modes, static = None, {}
    if joint_sets and pooled.shape[0] >= 3:  # an eigenbasis needs 3 probes
        basis = _eigenbasis(pooled, config.mode_width, config.distance)
        config = replace(config, mode_width=float(basis.width))
        mode_errors = _mode_errors(basis, outputs, labels, rows, config, weights_of)
        for name, (errors, resampled) in mode_errors.items():
            # the mode curves are divided by a floored start already ("floored"): drops count against it
            speeds["joint"][name]["modes"] = _speed_estimate(trajectory.steps, errors, resampled, config, 1.0)
        modes = ModeSpectrum(width=float(basis.width), distance=basis.distance, n=basis.n,
                             eigenvalues=basis.eigenvalues,
                             complete=basis.complete, edges=basis.band_edges(config.num_bands),
                             errors={name: errors for name, (errors, _) in mode_errors.items()})
        joint_draws = None if draws is None else draws[:, np.concatenate([columns[s] for s in joint_sets])]
        for space in _input_spaces(trajectory):
            x = pooled if space == config.input_space else np.concatenate(
                [_space_inputs(trajectory, space)[s] for s in joint_sets])
            space_basis = basis if space == config.input_space else _eigenbasis(x, "auto", config.distance)
            static[space] = _static_spectrum(space, space_basis, trajectory, roles, joint_sets, joint_draws, config)
    verdicts = {}
    if joint_sets:
        clean, backdoor = roles["clean"], roles["backdoor"]
        for view, sets in speeds.items():
            families = ("low", "modes") if "modes" in sets[clean] else ("low",)
            verdicts[view] = {f: _verdicts(sets[backdoor][f], sets[clean][f], config) for f in families}
    return SpectralAnalysis(
        steps=trajectory.steps.copy(),
        widths=chosen,
        distance=config.distance,
        reduction=config.reduction,
        threshold=config.threshold,
        relative=config.relative,
        curves=curves,
        convergence=convergence,
        projection=projection,
        width_checks=checks,
        roles=roles,
        config=config,
        effective_neighbours=neighbours,
        speeds=speeds,
        speed_verdicts=verdicts,
        modes=modes,
        static_spectra=static,
    )


def _resolve_config(config: AnalysisConfig | None, widths, settings: dict) -> AnalysisConfig:
    """``config`` with the keyword settings folded in; errors name the keyword as written."""
    if config is None:
        config = AnalysisConfig()
    elif not isinstance(config, AnalysisConfig):
        raise TypeError(f"Expected `config` to be an AnalysisConfig but got {type(config).__name__}.")
    known = set(AnalysisConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"analyse() got unexpected keyword argument(s) {unknown}; the settings are {sorted(known)}.")
    if widths is not None:
        settings = {**settings, "widths": np.asarray(widths, dtype=np.float64).ravel().tolist()
                    if not isinstance(widths, str) else widths}
    if not settings:
        return config
    try:
        return replace(config, **settings)
    except ValueError as error:  # name the keyword as the caller wrote it
        message = str(error)
        for key in settings:
            message = message.replace(f"`analysis.{key}`", f"`{key}`")
        raise ValueError(message) from None


def _input_spaces(trajectory: Trajectory) -> list[str]:
    return list(getattr(trajectory, "input_spaces", None) or ["flattened"])


def _space_inputs(trajectory: Trajectory, space: str) -> dict[str, np.ndarray]:
    """Per probe set, the kernel inputs in ``space`` (``trajectory.inputs`` as they are for the first)."""
    spaces = _input_spaces(trajectory)
    if space not in spaces:
        raise ValueError(f"Expected `analysis.input_space` to be one of the input spaces this trajectory "
                         f"recorded, {spaces}, but got {space!r}.")
    if space == spaces[0]:
        return trajectory.inputs
    return trajectory.kernel_inputs(space)


def _measure(bank: FilterBank, outputs, labels, reduction, subset=None, weights=None):
    """The curves (on all rows) and, with ``weights`` (1 + R, rows) whose first row is all
    ones, the R resampled curves per family (R, T, K) / (R, T, K + 1)."""
    result = bank.measure(outputs, labels, reduction=reduction, subset=subset, weights=weights)
    if weights is None:
        return Curves(**result), {}
    curves = Curves(**{k: v[0] for k, v in result.items()})
    return curves, {k: v[1:] for k, v in result.items() if k in ("low", "high", "bands")}


def _speed(steps: np.ndarray, errors: np.ndarray, config: AnalysisConfig, scale=None) -> np.ndarray:
    """Speed of curves (T, ...) with the config's method (``scale``: see ``learning_speed``)."""
    if config.speed == "threshold":
        return convergence_steps(steps, errors, config.threshold, relative=config.relative)
    return learning_speed(steps, errors, method=config.speed, scale=scale if config.speed == "area" else None)


def _speed_estimate(steps, errors: np.ndarray, resampled: np.ndarray | None, config: AnalysisConfig,
                    scale=None) -> Estimate:
    """The speed of curves (T, E) and its interval from resampled curves (R, T, E)."""
    estimate = _speed(steps, errors, config, scale)
    samples = None if resampled is None else _speed(steps, np.moveaxis(resampled, 0, 1), config, scale)
    return Estimate.from_samples(estimate, samples, config.level)


def _verdicts(backdoor: Estimate, clean: Estimate, config: AnalysisConfig) -> Verdicts:
    """Speed difference backdoor - clean per element, its paired interval, and the verdicts."""
    samples = None if backdoor.samples is None else backdoor.samples - clean.samples
    difference = Estimate.from_samples(backdoor.estimate - clean.estimate, samples, config.level)
    faster = 1.0 if HIGHER_IS_FASTER[config.speed] else -1.0
    labels, outcomes = [], []
    for i, (d, low, high) in enumerate(zip(np.atleast_1d(difference.estimate), np.atleast_1d(difference.low),
                                           np.atleast_1d(difference.high))):
        if abs(d) <= IDENTICAL and (samples is None or np.all(np.abs([low, high]) <= IDENTICAL)):
            # the two sets' normalised curves coincide (up to float32 rounding) in the estimate and in
            # every resample (e.g. a filter so wide that it averages both sets alike): nothing to resolve
            outcome, label = "no difference resolved", "no difference resolved (identical curves for both sets)"
        elif np.isnan(d):
            outcome, label = "undefined", f"undefined ({_undefined_reason(backdoor, clean, i, config)})"
        elif samples is None:
            outcome = ("backdoor first" if faster * d > 0 else "clean first" if faster * d < 0
                       else "no difference resolved")
            label = f"{outcome} (no interval: analysis.bootstrap = 0)"
        elif np.isnan(low) or np.isnan(high):
            outcome, label = "undefined", (f"undefined (no interval: the speed is undefined in more than "
                                           f"{1 - config.level:.0%} of the resamples)")
        else:
            lo, hi = sorted((faster * low, faster * high))  # on the "backdoor faster > 0" scale
            outcome = "backdoor first" if lo > 0 else "clean first" if hi < 0 else "no difference resolved"
            label = f"{outcome} ({config.level * 100:g}% CI [{low:.3g}, {high:.3g}])"
        labels.append(label)
        outcomes.append(outcome)
    return Verdicts(difference=difference, labels=labels, outcomes=outcomes, method=config.speed,
                    level=config.level)


def _undefined_reason(backdoor: Estimate, clean: Estimate, index: int, config: AnalysisConfig) -> str:
    """Which set has no speed at element ``index``, and why a speed can be NaN with the config's method."""
    missing = [name for name, e in (("backdoor", backdoor), ("clean", clean))
               if np.isnan(np.atleast_1d(e.estimate)[index])]
    why = ("it never converged, or its curve is undefined" if config.speed == "threshold"
           else "its curve is undefined, e.g. no error at the first snapshot")
    return f"no speed for the {' and '.join(missing)} set{'s' if len(missing) > 1 else ''}: {why}"


def _eigenbasis(x: np.ndarray, width, distance: str) -> EigenBasis:
    """The eigenbasis of the probes' kernel; a partial one keeps at least the lowest quarter of modes."""
    n = x.shape[0]
    num_modes = max(PARTIAL_MODES, math.ceil(n * LOW_MODE_SHARE) + 1) if n > MAX_DENSE else None
    return eigenbasis(x, None if width == "auto" else float(width), distance=distance, num_modes=num_modes)


def _mode_errors(basis: EigenBasis, outputs: np.ndarray, labels: np.ndarray, rows: dict[str, np.ndarray],
                 config: AnalysisConfig, weights_of) -> dict:
    """Per probe set: (errors (T, B), resampled errors (R, T, B) or None) per mode band: the set's
    own residual (zero on the other set's probes) over the pooled basis, its resamples
    weighting the set's rows before the projection (:meth:`EigenBasis.band_errors`).
    ``outputs`` (T, N, C) and ``labels`` (N,) are the pooled probes', ``rows`` each set's rows in them."""
    out = {}
    for name, subset in rows.items():
        w = weights_of(name)
        errors = basis.band_errors(outputs, labels, config.num_bands, relative_to="floored", subset=subset,
                                   weights=w)
        out[name] = (errors, None) if w is None else (errors[0], errors[1:])
    return out


def _source_labels(trajectory: Trajectory, roles: dict[str, str], classes: int) -> tuple[np.ndarray | None, str]:
    """The backdoor probes' true (source) labels, and where they came from."""
    backdoor = trajectory.labels[roles["backdoor"]]
    control = roles.get("control")
    if control is not None and len(trajectory.labels[control]) == len(backdoor):
        return np.asarray(trajectory.labels[control]), "the control set's labels (the backdoor probes' clean originals)"
    if classes == 2 and np.all(backdoor == backdoor[0]):
        return 1 - np.asarray(backdoor), "the non-target class (a backdoor probe's source is never the target class)"
    return None, "unknown (no control set, and more than two classes): no clean spectrum"


def _static_spectrum(space, basis: EigenBasis, trajectory: Trajectory, roles, joint_sets, draws,
                     config: AnalysisConfig) -> StaticSpectrum:
    """Energy shares of the clean labels and the poison flag over ``basis`` (the joint sets' rows pooled:
    clean and backdoor, and any other role the probe-role table marks ``joint``)."""
    clean, backdoor = roles["clean"], roles["backdoor"]
    classes = int(trajectory.outputs[clean].shape[2])
    source, origin = _source_labels(trajectory, roles, classes)
    flags = []
    for name in joint_sets:
        recorded = trajectory.poison.get(name) if trajectory.poison else None
        n = len(trajectory.labels[name])
        flags.append(np.asarray(recorded, dtype=np.float64) if recorded is not None and len(recorded) == n
                     else np.full(n, 1.0 if name == backdoor else 0.0))
    signals = {"backdoor": np.concatenate(flags)[:, None]}
    if source is not None:
        # the clean mapping's label of each probe: a set's own label, the backdoor probes' source label
        true = {**{name: np.asarray(trajectory.labels[name]) for name in joint_sets}, backdoor: source}
        signals = {"clean": np.eye(classes)[np.concatenate([true[s] for s in joint_sets]).astype(np.int64)],
                   **signals}
    top = max(1, int(round(basis.n * LOW_MODE_SHARE)))
    shares, low = {}, {}
    for name, signal in signals.items():
        energy = basis.band_energy(signal, config.num_bands)
        total = energy.sum()
        shares[name] = energy / total if total > 0 else np.full(energy.shape, np.nan)
        estimate = basis.cumulative_share(signal, top)
        samples = None if draws is None else basis.cumulative_share(signal, top, weights=draws)
        low[name] = Estimate.from_samples(estimate, samples, config.level)
    difference = None
    if "clean" in low:
        b, c = low["backdoor"], low["clean"]
        paired = None if b.samples is None else b.samples - c.samples
        difference = Estimate.from_samples(b.estimate - c.estimate, paired, config.level)
    return StaticSpectrum(space=space, width=float(basis.width), n=basis.n, edges=basis.band_edges(config.num_bands),
                          shares=shares, top=top, low_share=low, flat=top / basis.n, difference=difference,
                          clean_labels=origin)
