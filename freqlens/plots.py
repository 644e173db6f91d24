"""Figures of frequency-domain convergence.

Every function takes an analysed run and an optional ``ax`` (or returns a new
figure) and returns the figure. Undefined values (NaN, e.g. the high part of a
constant target) are drawn hatched grey with a note, never as a colour.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Patch

from freqlens.recording.probes import joint_roles, role_colour
from freqlens.spectral.eigenmodes import mode_band_names

if TYPE_CHECKING:  # annotations only: freqlens.analysis draws with this module (no import cycle)
    from freqlens.analysis import SpectralAnalysis

HEATMAP_ROWS = (("backdoor", "low"), ("clean", "low"), ("backdoor", "high"), ("clean", "high"))
CMAP = "viridis"  # perceptually uniform and colour-blind safe


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around each recorded step; never below step 0 (there are no negative steps)."""
    steps = np.asarray(steps, dtype=float)
    if steps.size == 1:
        edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    else:
        middle = (steps[1:] + steps[:-1]) / 2.0
        edges = np.concatenate([[steps[0] - (middle[0] - steps[0])], middle,
                                [steps[-1] + (steps[-1] - middle[-1])]])
    if steps[0] >= 0:
        edges[0] = max(edges[0], 0.0)
    return edges


def _check_view(analysis: SpectralAnalysis, view: str) -> None:
    if view not in analysis.curves:
        raise ValueError(f"Expected `view` to be one of {tuple(analysis.curves)} but got {view!r}.")


def _step_axis(ax: plt.Axes, steps: np.ndarray, *, cells: bool = False) -> None:
    """A symmetric-log step axis when the snapshots are log-spaced, else linear; limits from the data.

    The axis runs from the first to the last recorded step (``cells``: the
    edges of the cells drawn around them), never into negative steps.
    """
    if steps.size > 2 and steps[-1] > 20 * max(steps[1], 1):
        ax.set_xscale("symlog", linthresh=max(1.0, float(steps[1])))
    ax.set_xlabel("training step")
    if cells or steps.size == 1:
        edges = _step_edges(steps)
        ax.set_xlim(edges[0], edges[-1])
    else:
        ax.set_xlim(float(steps[0]), float(steps[-1]))


def _width_index(analysis: SpectralAnalysis, width_index: int | None) -> int:
    k = analysis.widths.size
    if width_index is None:
        return k // 2
    if not -k <= width_index < k:
        raise ValueError(f"Expected `width_index` in [{-k}, {k}) but got {width_index}.")
    return width_index % k


def plot_heatmap(
    analysis: SpectralAnalysis,
    *,
    width_index: int | None = None,
    view: str = "joint",
    ax: plt.Axes | None = None,
    vmin: float = 0.1,
    vmax: float = 1.0,
    colorbar: bool = True,
):
    """The paper's heat map: relative error over training for one width.

    Rows backdoor-low, clean-low, backdoor-high, clean-high; steps on x (a
    symmetric-log axis when the snapshots are log-spaced); relative error as
    colour from ``vmin`` to ``vmax`` (the paper: 0.1 to 1.0).

    Args:
        analysis: from :func:`freqlens.analyse`.
        width_index: which width (index into ``analysis.widths``, default the
            middle one).
        view: ``"joint"`` (one kernel over clean + backdoor, default) or
            ``"separate"`` (the paper's: a kernel per probe set).
        ax: axes to draw into (default: a new figure).
        vmin, vmax: colour range.
        colorbar: add a colour bar.

    Returns:
        The matplotlib figure.
    """
    _check_view(analysis, view)
    k = _width_index(analysis, width_index)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 2.6), layout="constrained")
    fig = ax.figure
    rows, labels, missing = [], [], []
    for role, part in HEATMAP_ROWS:
        name = analysis.roles.get(role)
        curves = analysis.curves[view].get(name) if name else None
        values = getattr(curves, part)[:, k] if curves is not None else np.full(analysis.steps.size, np.nan)
        rows.append(values)
        labels.append(f"{role}-{part}")
        if np.all(np.isnan(values)):
            missing.append(f"{role}-{part}")
    data = np.ma.masked_invalid(np.array(rows))
    ax.set_facecolor("#d9d9d9")
    mesh = ax.pcolormesh(
        _step_edges(analysis.steps), np.arange(len(rows) + 1), data,
        cmap=CMAP, norm=Normalize(vmin=vmin, vmax=vmax), shading="flat",
    )
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="//",
                               edgecolor="#9a9a9a", linewidth=0, zorder=0))
    _step_axis(ax, analysis.steps, cells=True)
    ax.set_yticks(np.arange(len(rows)) + 0.5, labels)
    ax.invert_yaxis()
    title = f"{view} view, width {analysis.widths[k]:.3g}"
    ax.set_title(title, fontsize=10, loc="left")
    if missing:  # above the axes, right of the title: never over a row
        ax.legend(handles=[Patch(facecolor="#d9d9d9", hatch="//", edgecolor="#9a9a9a",
                                 label="undefined (NaN): " + ", ".join(missing))],
                  loc="lower right", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2, fontsize=7,
                  frameon=False)
    if colorbar:
        fig.colorbar(mesh, ax=ax, label="relative error", fraction=0.05, pad=0.02)
    return fig


def plot_heatmaps(analysis: SpectralAnalysis, *, view: str = "joint", width_indices=None):
    """Heat maps at several widths (default: widest, middle, narrowest), stacked."""
    k = analysis.widths.size
    indices = list(width_indices) if width_indices is not None else sorted({0, k // 2, k - 1})
    fig, axes = plt.subplots(len(indices), 1, figsize=(7.5, 2.3 * len(indices)), layout="constrained",
                             squeeze=False)
    for ax, index in zip(axes[:, 0], indices):
        plot_heatmap(analysis, width_index=index, view=view, ax=ax)
    fig.suptitle("Relative error by frequency over training (rows: probe set and part)", fontsize=11)
    return fig


def plot_error_curves(analysis: SpectralAnalysis, *, width_index: int | None = None,
                      view: str = "joint", ax: plt.Axes | None = None):
    """Low- and high-frequency relative error of each probe set, convergence marked."""
    _check_view(analysis, view)
    k = _width_index(analysis, width_index)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    for name, curves in analysis.curves[view].items():
        colour = role_colour(analysis_role(analysis, name))
        for part, style in (("low", "-"), ("high", "--")):
            values = getattr(curves, part)[:, k]
            if np.all(np.isnan(values)):
                continue
            line, = ax.plot(analysis.steps, values, style, color=colour, label=f"{name} {part}")
            step = analysis.convergence[view][name][part][k]
            if np.isfinite(step):
                ax.axvline(step, color=line.get_color(), linestyle=":", linewidth=1)
    _step_axis(ax, analysis.steps)
    ax.set_ylabel("relative error")
    ax.set_title(f"{view} view, width {analysis.widths[k]:.3g} (dotted: convergence step)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return ax.figure


RUN_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _missing_note(ax: plt.Axes, what: str, prefix: str = "undefined (NaN)") -> None:
    ax.text(0.5, 0.5, f"{prefix}: {what}", transform=ax.transAxes, ha="center", va="center",
            fontsize=8, color="#555555")


def plot_band_spectrum(analysis: SpectralAnalysis, *, view: str = "joint", probe_set: str | None = None,
                       ax: plt.Axes | None = None, vmin: float = 0.0, vmax: float = 1.0):
    """The band spectrum over training: band (low to high) by step, colour = relative error.

    With ``probe_set`` None, the clean and backdoor sets side by side in a new
    figure; with a name, that set alone (into ``ax`` if given). Bands with no
    target part (NaN) are drawn hatched grey.
    """
    _check_view(analysis, view)
    sets = analysis.curves[view]
    if probe_set is None:
        names = [analysis.roles[r] for r in joint_roles() if analysis.roles.get(r) in sets] or list(sets)
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.0), layout="constrained",
                                 squeeze=False, sharey=True)
        for axis, name in zip(axes[0], names):
            plot_band_spectrum(analysis, view=view, probe_set=name, ax=axis, vmin=vmin, vmax=vmax)
        fig.suptitle(f"Band spectrum over training ({view} view)", fontsize=11)
        return fig
    if probe_set not in sets:
        raise ValueError(f"Expected `probe_set` to be one of {tuple(sets)} but got {probe_set!r}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.0), layout="constrained")
    bands = sets[probe_set].bands  # (T, K + 1), low to high
    data = np.ma.masked_invalid(bands.T)
    ax.set_facecolor("#d9d9d9")
    mesh = ax.pcolormesh(_step_edges(analysis.steps), np.arange(bands.shape[1] + 1), data, cmap=CMAP,
                         norm=Normalize(vmin=vmin, vmax=vmax), shading="flat")
    ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="//",
                               edgecolor="#9a9a9a", linewidth=0, zorder=0))
    _step_axis(ax, analysis.steps, cells=True)
    ax.set_ylabel("frequency band (low → high)")
    ax.set_title(probe_set, fontsize=10)
    if np.all(np.isnan(bands)):
        _missing_note(ax, f"every band of {probe_set}")
    ax.figure.colorbar(mesh, ax=ax, label="relative error", fraction=0.05, pad=0.02)
    return ax.figure


def plot_convergence_spectrum(analyses, *, view: str = "joint", ax: plt.Axes | None = None):
    """Steps to converge against frequency band, one line per probe set (and per run).

    Args:
        analyses: one :class:`SpectralAnalysis`, or a mapping label -> analysis
            (e.g. defense -> run): each run gets its own line style, each probe
            set its colour, so a defense that shifts what is learned first
            shows as lines that move.
        view: ``"joint"`` or ``"separate"``.
        ax: axes to draw into.

    Bands that never converged (or are undefined) are left out of a line and
    listed in a note.
    """
    runs = dict(analyses) if isinstance(analyses, Mapping) else {"": analyses}
    if not runs:
        raise ValueError("Expected at least one analysis but got none.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.4), layout="constrained")
    never = []
    for i, (label, analysis) in enumerate(runs.items()):
        if view not in analysis.curves:
            raise ValueError(f"Expected `view` {view!r} in run {label or 0!r}, which has {tuple(analysis.curves)}.")
        style = RUN_STYLES[i % len(RUN_STYLES)]
        for name, steps in analysis.band_convergence(view).items():
            bands = np.arange(steps.size)
            finite = np.isfinite(steps)
            name_label = f"{label}: {name}" if label else name
            if not finite.any():
                never.append(name_label)
                continue
            ax.plot(bands[finite], steps[finite], style, marker=_MARKERS[i % len(_MARKERS)], markersize=4,
                    color=role_colour(analysis_role(analysis, name)), label=name_label)
            if not finite.all():
                never.append(f"{name_label} (bands {', '.join(str(b) for b in bands[~finite])})")
    ax.set_xlabel("frequency band (0 = lowest)")
    ax.set_ylabel("convergence step")
    ax.set_title(f"Convergence spectrum ({view} view): lower = learned earlier", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    if never:
        import textwrap

        note = textwrap.fill("never converged / undefined: " + "; ".join(never), 130)
        ax.annotate(note, xy=(0.0, 0.0), xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -3),
                    textcoords="offset points", va="top", fontsize=6.5, color="#555555",
                    annotation_clip=False)  # under the x label, off the lines
    return ax.figure


def analysis_role(analysis: SpectralAnalysis, name: str) -> str:
    """The role of probe set ``name`` (``"clean"``, ``"backdoor"``, ...), or the name itself."""
    return next((role for role, n in analysis.roles.items() if n == name), name)


def plot_frequency_ratios(analysis: SpectralAnalysis, *, width_index: int | None = None, view: str = "joint",
                          ax: plt.Axes | None = None):
    """LFR and HFR over training: the share of each output's norm below / above the cut-off."""
    _check_view(analysis, view)
    k = _width_index(analysis, width_index)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    missing = []
    for name, curves in analysis.curves[view].items():
        for part, values, style in (("LFR", curves.lfr, "-"), ("HFR", curves.hfr, "--")):
            series = values[:, k] if values is not None else np.full(analysis.steps.size, np.nan)
            if np.all(np.isnan(series)):
                missing.append(f"{name} {part}")
                continue
            ax.plot(analysis.steps, series, style, color=role_colour(analysis_role(analysis, name)),
                    label=f"{name} {part}", marker="o" if analysis.steps.size == 1 else None)
    _step_axis(ax, analysis.steps)
    ax.set_ylabel("LFR, HFR (share of output norm)")
    ax.set_ylim(bottom=0.0)
    ax.set_title(f"Low/high-frequency ratios ({view} view, width {analysis.widths[k]:.3g})", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    if missing:
        _missing_note(ax, ", ".join(missing))
    return ax.figure


def plot_projection_spectrum(analysis: SpectralAnalysis, *, probe_set: str | None = None,
                             ax: plt.Axes | None = None):
    """The projection method: |error| by frequency (first principal direction) over training."""
    if not analysis.projection:
        raise ValueError("Expected an analysis with a projection spectrum but it has none.")
    name = probe_set or analysis.roles.get("backdoor") or next(iter(analysis.projection))
    if name not in analysis.projection:
        raise ValueError(f"Expected `probe_set` to be one of {tuple(analysis.projection)} but got {name!r}.")
    frequencies, errors = analysis.projection[name]
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    data = np.ma.masked_invalid(np.asarray(errors).T)
    ax.set_facecolor("#d9d9d9")
    edges = np.concatenate([[frequencies[0] - 0.5], (frequencies[1:] + frequencies[:-1]) / 2,
                            [frequencies[-1] + 0.5]]) if frequencies.size > 1 else np.array(
        [frequencies[0] - 0.5, frequencies[0] + 0.5])
    mesh = ax.pcolormesh(_step_edges(analysis.steps), edges, data, cmap=CMAP, shading="flat")
    _step_axis(ax, analysis.steps, cells=True)
    ax.set_ylabel("frequency (projection)")
    ax.set_title(f"Projection spectrum of the error, {name}", fontsize=10)
    if np.all(np.isnan(np.asarray(errors))):
        _missing_note(ax, name)
    ax.figure.colorbar(mesh, ax=ax, label="|error|", fraction=0.05, pad=0.02)
    return ax.figure


DEFENSE_METRICS = (("cacc", "CACC"), ("asr", "ASR"), ("false_trigger_rate", "false-trigger rate"))
METRIC_AXIS_LABELS = {  # what each rate counts (all in [0, 1])
    "cacc": "share of clean test inputs correct",
    "asr": "share of triggered inputs → target",
    "false_trigger_rate": "share of clean non-target inputs → target",
}


def plot_defense_comparison(rows, *, ax=None, metrics=DEFENSE_METRICS):
    """CACC, ASR and false-trigger rate per defense and attack; spread over seeds as error bars.

    Args:
        rows: records (dicts, or a pandas DataFrame) with ``attack``,
            ``defense`` and the metric columns; several rows of one (attack,
            defense) are seeds, drawn as mean ± standard deviation with the
            seeds as dots.
        ax: a sequence of one axes per metric (default: a new figure).
        metrics: (column, label) pairs; each panel's y axis is labelled with
            what the rate counts (:data:`METRIC_AXIS_LABELS`, else the label).

    The legend (one colour per attack) is drawn right of the last panel; with
    one attack there is none, and a new figure is titled with the attack.
    """
    import seaborn as sns

    records = rows.to_dict("records") if hasattr(rows, "to_dict") else [dict(r) for r in rows]
    if not records:
        raise ValueError("Expected at least one result row but got none.")
    for needed in ("attack", "defense", *[m for m, _ in metrics]):
        if needed not in records[0]:
            raise ValueError(f"Expected result rows with a {needed!r} column but got {sorted(records[0])}.")
    long = [{"attack": r["attack"], "defense": r["defense"], "metric": label, "value": r[m]}
            for r in records for m, label in metrics if r.get(m) is not None]
    if ax is None:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), layout="constrained",
                                 sharey=True, squeeze=False)
        axes = axes[0]
    else:
        axes = list(ax) if np.iterable(ax) else [ax]
        fig = axes[0].figure
    defenses = list(dict.fromkeys(r["defense"] for r in records))
    attacks = list(dict.fromkeys(r["attack"] for r in records))
    palette = dict(zip(attacks, sns.color_palette("colorblind", len(attacks))))
    for axis, (column, label) in zip(axes, metrics):
        ylabel = f"{METRIC_AXIS_LABELS.get(column, label)} (0–1)"
        axis.set_ylabel(ylabel, fontsize=8)
        data = [r for r in long if r["metric"] == label]
        if not data:
            _missing_note(axis, label, prefix="not measured")
            continue
        sns.barplot(x=[r["defense"] for r in data], y=[r["value"] for r in data], hue=[r["attack"] for r in data],
                    order=defenses, hue_order=attacks, palette=palette, errorbar="sd", ax=axis, alpha=0.85)
        sns.stripplot(x=[r["defense"] for r in data], y=[r["value"] for r in data],
                      hue=[r["attack"] for r in data], order=defenses, hue_order=attacks, dodge=True,
                      palette=palette, size=3, color="black", ax=axis, legend=False, edgecolor="black", linewidth=0.5)
        for x, defense in enumerate(defenses):  # a run without the metric (e.g. partial): missing, not zero
            if not any(r["defense"] == defense for r in data):
                axis.text(x, 0.02, "not\nmeasured", ha="center", va="bottom", fontsize=7, color="#555555")
        axis.set_title(label, fontsize=10)
        axis.set_ylim(0, 1.02)
        axis.set_ylabel(ylabel, fontsize=8)  # again: seaborn may have replaced it
        axis.tick_params(axis="x", rotation=45, labelsize=8)
        for tick in axis.get_xticklabels():
            tick.set_horizontalalignment("right")
        if axis.get_legend():
            axis.get_legend().remove()
    handles = {label: (handle, label) for axis in axes for handle, label in zip(*axis.get_legend_handles_labels())}
    if len(attacks) == 1:  # one colour: the attack is named above the panels instead of in a legend
        if ax is None:
            import textwrap

            fig.suptitle(textwrap.fill(f"attack: {attacks[0]}", 110), fontsize=10)
    elif handles:  # outside the panels, so no bar is covered
        axes[-1].legend(*zip(*handles.values()), title="attack", loc="upper left", bbox_to_anchor=(1.02, 1.0),
                        borderaxespad=0.0, fontsize=7, title_fontsize=7, frameon=False)
    return fig


def save_figure(fig, path) -> list:
    """Write ``fig`` as vector PDF and PNG next to each other (``path`` without suffix or with either)."""
    from pathlib import Path

    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix in (".pdf", ".png") else stem  # "a_0.1" keeps its ".1"
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, options in ((".pdf", {}), (".png", {"dpi": 150})):  # tight: no label or legend cut off
        target = stem.parent / f"{stem.name}{suffix}"
        fig.savefig(target, bbox_inches="tight", pad_inches=0.05, **options)
        written.append(target)
    return written


# ------------------------------------------------------------ eigenmode spectrum figures
SPEED_FAMILIES = {"modes": "eigenmode band", "low": "filter width (low part)", "bands": "filter band"}


def _speed_axis_labels(analysis: SpectralAnalysis, family: str, size: int) -> tuple[list[str], str]:
    if family == "modes" and analysis.modes is not None:
        return (mode_band_names(analysis.modes.edges, rest=not analysis.modes.complete)[:size],
                "eigenmode band: modes (0 = smoothest) → higher graph frequency")
    if family == "low" and analysis.effective_neighbours is not None:
        return ([f"{n:.3g}" for n in analysis.effective_neighbours[:size]],
                "filter width: median effective neighbours (wide, low cut-off → narrow)")
    return [str(i) for i in range(size)], f"{SPEED_FAMILIES.get(family, family)} (0 = lowest frequency)"


def _speed_signature(analysis: SpectralAnalysis, family: str, view: str) -> tuple:
    """What must agree for two runs' speeds to be averaged band by band: the mode-band edges
    (they follow N), or the number of widths / filter bands (log-spaced over 2..N/2 either way)."""
    if family == "modes":
        return tuple(analysis.modes.edges.tolist()) if analysis.modes is not None else ()
    sizes = {e[family].estimate.size for e in analysis.speeds.get(view, {}).values() if family in e}
    return tuple(sorted(sizes))


def _speed_line(members, role: str, family: str, view: str):
    """``(mean, low, high, spread)`` of one probe set's speeds over the analyses ``members`` (the seeds
    of one configuration): one analysis, its speed and bootstrap interval; several, the mean over
    seeds ± one standard deviation (ddof 1). None where no analysis has these speeds."""
    values = []
    for a in members:
        speeds = a.speeds.get(view, {}).get(a.roles.get(role, role), {})
        if family in speeds:
            values.append(speeds[family])
    if not values:
        return None
    estimate = np.array([v.estimate for v in values], dtype=float)
    if len(values) == 1:
        spread = f"{int(round(100 * members[0].config.level))}% CI" if members[0].config else "CI"
        return estimate[0], np.asarray(values[0].low, dtype=float), np.asarray(values[0].high, dtype=float), spread
    mean = np.nanmean(estimate, axis=0)
    sd = np.nanstd(estimate, axis=0, ddof=1)
    return mean, mean - sd, mean + sd, f"±1 sd over {len(values)} seeds"


def plot_speed_spectrum(analyses, *, family: str = "modes", view: str = "joint", axes=None):
    """The learning-speed spectrum: speed against frequency, one line and interval per run.

    One panel per probe set (backdoor, clean); in each, one line per run (a
    defense), so a defense that shifts what is learned first moves its line.

    Args:
        analyses: one :class:`SpectralAnalysis`, or a mapping label -> analysis,
            or label -> list of analyses (the seeds of one configuration).
            One analysis: the line is its speed and the band its bootstrap
            interval (``analysis.config.level``, probe rows resampled). Several
            seeds: the line is the mean over seeds and the band ± one standard
            deviation over seeds (the caption says which).
        family: ``"modes"`` (eigenmode bands, default), ``"low"`` (the low
            part at each filter width) or ``"bands"`` (filter bands).
        view: ``"joint"`` (the eigenmode bands exist only there) or ``"separate"``.
        axes: a sequence of two axes to draw into.

    Returns:
        The figure.

    Raises:
        ValueError: no analysis, an unknown family or view, or an analysis
            without learning speeds (made by freqlens before intervals existed:
            re-analyse it with :func:`freqlens.analyse`).
    """
    if family not in SPEED_FAMILIES:
        raise ValueError(f"Expected `family` to be one of {tuple(SPEED_FAMILIES)} but got {family!r}.")
    runs = {"": [analyses]} if not isinstance(analyses, Mapping) else {
        label: list(a) if isinstance(a, (list, tuple)) else [a] for label, a in analyses.items()}
    if not runs or not all(runs.values()):
        raise ValueError("Expected at least one analysis per run but got none.")
    roles = ("backdoor", "clean")
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10.0, 3.6), layout="constrained", sharey=True)
    methods = {a.config.speed if a.config is not None else "area" for members in runs.values() for a in members}
    if len(methods) > 1:
        raise ValueError(f"Expected analyses with one learning-speed method (analysis.speed) but got "
                         f"{sorted(methods)}: their speeds are on different scales.")
    method = methods.pop()
    notes = []
    split = {}
    for label, members in runs.items():  # seeds whose bands differ (other probe sizes) are not averaged
        kinds = {_speed_signature(a, family, view) for a in members}
        if len(members) > 1 and len(kinds) > 1:
            notes.append(f"{label}: its {len(members)} runs have different bands (other probe sizes), drawn "
                         "one by one, not averaged")
            split.update({f"{label} [{j + 1}]": [a] for j, a in enumerate(members)})
        else:
            split[label] = members
    runs = split
    x_names: list[str] = []
    x_label = ""
    for i, (label, members) in enumerate(runs.items()):
        colour = f"C{i % 10}"
        for ax, role in zip(axes, roles):
            line = _speed_line(members, role, family, view)
            if line is None:
                notes.append(f"{label or 'run'}: no {role} {family} speeds ({view} view)")
                continue
            mean, low, high, spread = line
            x = np.arange(mean.size)
            name = f"{label} ({spread})" if label else spread
            ax.plot(x, mean, "-", marker=_MARKERS[i % len(_MARKERS)], markersize=3.5, color=colour, label=name)
            if np.isfinite(low).any():
                ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)
            if len(x) > len(x_names):
                x_names, x_label = _speed_axis_labels(members[0], family, len(x))
    if not any(ax.lines for ax in axes):
        plt.close(axes[0].figure)
        raise ValueError(f"Expected analyses with {family!r} learning speeds of the backdoor and clean probe "
                         f"sets ({view} view) but none has them ({'; '.join(notes)}); re-analyse the "
                         "trajectory with freqlens.analyse.")
    higher = method == "area"
    drawn = [line.get_ydata() for ax in axes for line in ax.lines]
    drawn += [c.get_paths()[0].vertices[:, 1] for ax in axes for c in ax.collections if c.get_paths()]
    lowest = min((np.nanmin(y) for y in drawn if np.isfinite(y).any()), default=0.0)
    if higher and lowest < -1.0:  # a few bands whose error grew: keep the rest readable
        for ax in axes:
            ax.set_yscale("symlog", linthresh=0.5, linscale=2.0)
    for ax, role in zip(axes, roles):
        ax.set_title(f"{role} probes", fontsize=10, color=role_colour(role))
        ax.set_xticks(np.arange(len(x_names)), x_names, rotation=45 if len(x_names) > 8 else 0, fontsize=7)
        ax.set_xlabel(x_label, fontsize=8)
        ax.grid(alpha=0.3)
    scale = "\nlinear within ±0.5, log beyond" if axes[0].get_yscale() == "symlog" else ""
    axes[0].set_ylabel(f"learning speed ({method})\nhigher = faster, < 0 = error grew{scale}"
                       if higher else f"learning speed: step ({method}; lower = faster)", fontsize=8)
    if any(ax.lines for ax in axes):
        axes[-1].legend(fontsize=7, loc="best")
    title = f"Learning-speed spectrum ({view} view): how fast each frequency is learned"
    axes[0].figure.suptitle(title + ("\n" + textwrap.fill("; ".join(notes), 150) if notes else ""), fontsize=11
                            if not notes else 9)
    return axes[0].figure


def plot_speed_beside_baseline(configurations, *, family: str = "modes", view: str = "joint"):
    """Each defense's learning-speed spectrum beside the undefended run's, on the same axes.

    One row per configuration after the first, one panel per probe set
    (backdoor, clean): the configuration's speed per frequency band in
    colour, the first configuration's (the baseline, vanilla in the
    comparison report) in grey under it, so that what a defense changes in
    what is learned, and how fast, is the gap between the two lines. Every
    panel shares the x axis (band) and the y axis (speed). A line's band is
    the run's bootstrap interval (one seed) or ± one standard deviation over
    seeds (several). Only runs whose bands are the baseline's are averaged
    and overlaid: seeds with other bands (other probe sizes) are left out, a
    configuration with none is drawn alone (its first run), and the panel
    title says so.

    Args:
        configurations: a mapping label -> analysis or list of analyses (the
            seeds of one configuration), the baseline first; at least two entries.
        family: ``"modes"`` (eigenmode bands, default), ``"low"`` or ``"bands"``.
        view: ``"joint"`` (the eigenmode bands exist only there) or ``"separate"``.

    Returns:
        The figure: (configurations - 1) x 2 panels, 2.3 inches high a row.

    Raises:
        ValueError: fewer than two configurations, an unknown family, analyses
            with different learning-speed methods, or a baseline without
            backdoor and clean speeds of ``family``.
    """
    if family not in SPEED_FAMILIES:
        raise ValueError(f"Expected `family` to be one of {tuple(SPEED_FAMILIES)} but got {family!r}.")
    runs = {label: list(a) if isinstance(a, (list, tuple)) else [a] for label, a in configurations.items()}
    if len(runs) < 2 or not all(runs.values()):
        raise ValueError(f"Expected a baseline and at least one other configuration, each with an analysis, but "
                         f"got {list(runs)}.")
    methods = {a.config.speed if a.config is not None else "area" for members in runs.values() for a in members}
    if len(methods) > 1:
        raise ValueError(f"Expected analyses with one learning-speed method (analysis.speed) but got "
                         f"{sorted(methods)}: their speeds are on different scales.")
    method = methods.pop()
    (base_label, base), *others = runs.items()
    signatures = [_speed_signature(a, family, view) for a in base]
    signature = max(signatures, key=signatures.count)  # the bands most of the baseline's seeds have
    base = [a for a, s in zip(base, signatures) if s == signature]
    roles = ("backdoor", "clean")
    base_lines = {role: _speed_line(base, role, family, view) for role in roles}
    if any(line is None for line in base_lines.values()):
        raise ValueError(f"Expected the baseline {base_label!r} to have backdoor and clean {family!r} learning "
                         f"speeds ({view} view) but it has not; re-analyse its trajectory with freqlens.analyse.")
    fig, axes = plt.subplots(len(others), 2, figsize=(10.0, 0.9 + 2.3 * len(others)), layout="constrained",
                             sharex=True, sharey=True, squeeze=False)
    size = base_lines["backdoor"][0].size
    for i, ((label, members), row) in enumerate(zip(others, axes)):
        colour = f"C{i % 10}"
        used = [a for a in members if _speed_signature(a, family, view) == signature]
        alike, note = bool(used), ""
        if not used:  # nothing comparable: the first run alone
            used, note = members[:1], f"bands differ from {base_label}'s (other probe sizes): drawn alone"
        elif len(used) < len(members):
            note = (f"{len(members) - len(used)} of {len(members)} runs left out: bands differ from "
                    f"{base_label}'s (other probe sizes)")
        for ax, role in zip(row, roles):
            if alike:
                mean, low, high, spread = base_lines[role]
                x = np.arange(mean.size)
                ax.plot(x, mean, "-", color="0.45", linewidth=1.3, label=f"{base_label} ({spread})")
                ax.fill_between(x, low, high, color="0.6", alpha=0.25, linewidth=0)
            line = _speed_line(used, role, family, view)
            title = f"{label}: {role} probes"
            if line is None:
                title += f" (no {family} speeds)"
            else:
                mean, low, high, spread = line
                x = np.arange(mean.size)
                size = max(size, mean.size)
                ax.plot(x, mean, "-", marker=_MARKERS[i % len(_MARKERS)], markersize=3.5, color=colour,
                        label=f"{label} ({spread})")
                if np.isfinite(low).any():
                    ax.fill_between(x, low, high, color=colour, alpha=0.22, linewidth=0)
            if note:
                title += f"\n({note})"
            ax.set_title(title, fontsize=9)  # black: the line colours are the defenses'
            ax.grid(alpha=0.3)
        row[-1].legend(fontsize=7, loc="best")
    higher = method == "area"
    drawn = [line.get_ydata() for ax in axes.flat for line in ax.lines]
    drawn += [c.get_paths()[0].vertices[:, 1] for ax in axes.flat for c in ax.collections if c.get_paths()]
    lowest = min((np.nanmin(y) for y in drawn if np.isfinite(y).any()), default=0.0)
    if higher and lowest < -1.0:  # a few bands whose error grew: keep the rest readable
        axes[0, 0].set_yscale("symlog", linthresh=0.5, linscale=2.0)  # shared by every panel
    names, x_label = _speed_axis_labels(base[0], family, size)
    for ax in axes[-1]:
        ax.set_xticks(np.arange(len(names)), names, rotation=45 if len(names) > 8 else 0, fontsize=7)
        ax.set_xlabel(x_label, fontsize=8)
    scale = "; linear within ±0.5, log beyond" if axes[0, 0].get_yscale() == "symlog" else ""
    fig.supylabel(f"learning speed ({method}; higher = learned faster, < 0 = error grew{scale})" if higher
                  else f"learning speed: step ({method}; lower = faster)", fontsize=9)
    fig.suptitle(f"Learning-speed spectrum of each defense (colour) beside {base_label} (grey), {view} view",
                 fontsize=11)
    return fig


def plot_static_spectrum(analysis: SpectralAnalysis, *, spaces=None):
    """The static target spectrum: where the clean and the backdoor mapping put their energy.

    One panel per input space the run recorded: the share of each target's
    (mean-removed) energy per eigenmode band of the probe kernel, before any
    training, against a flat spectrum (each band's share of the modes). The
    title gives the share in the lowest quarter of the modes with its
    interval. A backdoor that sits lower in frequency than the clean mapping
    (the premise of Wu et al., arXiv 2402.12026) has more energy on the left.

    Raises:
        ValueError: the analysis holds no static spectra (no clean and
            backdoor probe sets), or ``spaces`` names one it does not hold.
    """
    held = analysis.static_spectra
    if not held:
        raise ValueError("Expected an analysis with static target spectra (clean and backdoor probe sets) "
                         "but it has none.")
    spaces = list(held) if spaces is None else list(spaces)
    unknown = [s for s in spaces if s not in held]
    if unknown:
        raise ValueError(f"Expected `spaces` among {list(held)} but got {unknown}.")
    fig, axes = plt.subplots(1, len(spaces), figsize=(max(6.5, 4.3 * len(spaces)), 3.6), layout="constrained",
                             squeeze=False, sharey=True)
    for ax, space in zip(axes[0], spaces):
        spectrum = held[space]
        edges = np.asarray(spectrum.edges)
        size = next(iter(spectrum.shares.values())).size
        x = np.arange(size)
        flat = np.diff(edges) / spectrum.n
        if size > flat.size:  # a partial basis: the rest
            flat = np.append(flat, 1.0 - flat.sum())
        ax.step(x, flat, where="mid", color="#777777", linestyle=":", label="flat spectrum")
        parts = []
        for role in ("clean", "backdoor"):
            if role not in spectrum.shares:
                continue
            ax.plot(x, spectrum.shares[role], marker="o", markersize=3, color=role_colour(role),
                    label={"clean": "clean mapping (true label)", "backdoor": "backdoor (poison flag)"}[role])
            share = spectrum.low_share.get(role)
            if share is not None:
                interval = ("" if not np.isfinite(share.low) else f" [{float(share.low):.2f}, {float(share.high):.2f}]")
                parts.append(f"{role} {float(share.estimate):.2f}{interval}")
        ax.set_yscale("log")
        ax.set_xticks(x, mode_band_names(edges, rest=size > edges.size - 1), rotation=45, fontsize=7)
        ax.set_xlabel("eigenmode band (0 = smoothest)", fontsize=8)
        ax.set_title(f"{space}: share in the lowest {spectrum.top} of {spectrum.n} modes\n" + ", ".join(parts)
                     + f" (flat {spectrum.flat:.2f})", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of the target's energy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Static target spectrum: where each mapping's energy sits, before training\n"
                 "(left = smooth over the probe inputs, low frequency)", fontsize=10)
    return fig


def plot_mode_heatmap(analysis: SpectralAnalysis, *, vmin: float = 0.0, vmax: float = 1.0):
    """The error per eigenmode band over training: band (low to high) by step, one panel per probe set.

    Colour: the band's error (the set's residual over the joint eigenbasis)
    divided by its value at the first snapshot, or by a floor where that was
    tiny (:attr:`~freqlens.analysis.ModeSpectrum.errors`; 1 = nothing learned
    yet, 0 = learned). Undefined bands are hatched grey.

    Raises:
        ValueError: the analysis has no eigenmode spectrum (no clean and backdoor probe sets).
    """
    modes = analysis.modes
    if modes is None:
        raise ValueError("Expected an analysis with an eigenmode spectrum (clean and backdoor probe sets) "
                         "but it has none.")
    names = [analysis.roles[r] for r in ("backdoor", "clean") if analysis.roles.get(r) in modes.errors] \
        or list(modes.errors)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.3), layout="constrained",
                             squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        errors = np.asarray(modes.errors[name])  # (T, B)
        ax.set_facecolor("#d9d9d9")
        ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="//",
                                   edgecolor="#9a9a9a", linewidth=0, zorder=0))
        mesh = ax.pcolormesh(_step_edges(analysis.steps), np.arange(errors.shape[1] + 1),
                             np.ma.masked_invalid(errors.T), cmap=CMAP, norm=Normalize(vmin=vmin, vmax=vmax),
                             shading="flat")
        _step_axis(ax, analysis.steps, cells=True)
        labels = mode_band_names(modes.edges, rest=errors.shape[1] > modes.edges.size - 1)
        ax.set_yticks(np.arange(len(labels)) + 0.5, labels, fontsize=7)
        ax.set_title(f"{name} probes", fontsize=10, color=role_colour(analysis_role(analysis, name)))
        if np.all(np.isnan(errors)):
            _missing_note(ax, f"every band of {name}")
    axes[0][0].set_ylabel("eigenmode band (modes; low → high frequency)", fontsize=8)
    fig.colorbar(mesh, ax=axes[0].tolist(), label="error / error at step 0 (floored)", fraction=0.04, pad=0.02,
                 extend="max" if np.nanmax([np.nanmax(np.asarray(e), initial=0) for e in modes.errors.values()])
                 > vmax else "neither")
    fig.suptitle(f"Error per eigenmode band over training (kernel over {modes.n} probes)", fontsize=11)
    return fig
