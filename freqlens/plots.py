"""Figures of frequency-domain convergence.

Every function takes an analysed run and an optional ``ax`` (or returns a new
figure) and returns the figure. Undefined values (NaN, e.g. the high part of a
constant target) are drawn hatched grey with a note, never as a colour.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.patches import Patch

from freqlens.analysis import SpectralAnalysis

HEATMAP_ROWS = (("backdoor", "low"), ("clean", "low"), ("backdoor", "high"), ("clean", "high"))
CMAP = "viridis"  # perceptually uniform and colour-blind safe


def _step_edges(steps: np.ndarray) -> np.ndarray:
    steps = np.asarray(steps, dtype=float)
    if steps.size == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    middle = (steps[1:] + steps[:-1]) / 2.0
    return np.concatenate([[steps[0] - (middle[0] - steps[0])], middle, [steps[-1] + (steps[-1] - middle[-1])]])


def _check_view(analysis: SpectralAnalysis, view: str) -> None:
    if view not in analysis.curves:
        raise ValueError(f"Expected `view` to be one of {tuple(analysis.curves)} but got {view!r}.")


def _step_axis(ax: plt.Axes, steps: np.ndarray) -> None:
    """A symmetric-log step axis when the snapshots are log-spaced, else linear."""
    if steps.size > 2 and steps[-1] > 20 * max(steps[1], 1):
        ax.set_xscale("symlog", linthresh=max(1.0, float(steps[1])))
    ax.set_xlabel("training step")


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
    _step_axis(ax, analysis.steps)
    ax.set_yticks(np.arange(len(rows)) + 0.5, labels)
    ax.invert_yaxis()
    title = f"{view} view, width {analysis.widths[k]:.3g}"
    ax.set_title(title, fontsize=10)
    if missing:
        ax.legend(handles=[Patch(facecolor="#d9d9d9", hatch="//", edgecolor="#9a9a9a",
                                 label="undefined (NaN): " + ", ".join(missing))],
                  loc="upper right", fontsize=7, framealpha=0.9)
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
    colours = {"clean": "#0072B2", "backdoor": "#D55E00", "control": "#009E73"}
    for name, curves in analysis.curves[view].items():
        colour = colours.get(name, None)
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
