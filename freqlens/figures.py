"""The table of figures: every figure of an analysed run, where it is drawn, under which name.

One row (:class:`Figure`) per kind of figure says which function of
:mod:`freqlens.plots` draws it, when it applies, which PNG files and captions
it gives a run directory and its ``report.html`` (``freqlens run``,
``freqlens demo``), and how the comparison report (``freqlens report``) draws
it: once per run, or once per group of runs. Three readers use the table and
nothing else:

- :meth:`freqlens.analysis.SpectralAnalysis.plot` draws any row of an
  analysis by its kind (``analysis.plot("heatmaps")``), and
  ``SpectralAnalysis.PLOTS`` lists them;
- :func:`freqlens.report.write_run_outputs` writes the ``run`` files of every
  row that applies, in table order;
- :func:`freqlens.compare.write_comparison` draws the rows with a ``compare``
  input, group figures first, then each run's.

A new figure is a drawing function and one row: ``register_figure(Figure(...))``.

Example:
    >>> from freqlens.figures import FIGURES
    >>> [f.file for f in FIGURES["heatmaps"].run]
    ['heatmap.png', 'heatmap_separate.png']
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt

from freqlens import plots

if TYPE_CHECKING:
    from freqlens.analysis import SpectralAnalysis

#: How the comparison report draws a figure. ``"run"``: once per run, of its analysis. Once per group of
#: runs: ``"runs"`` (a mapping run label -> analysis), ``"configurations"`` (configuration label -> the
#: analyses of its seeds; one seed: the run's own interval, several: mean ± one standard deviation over
#: seeds), ``"baseline"`` (as ``"configurations"``, the group's complete vanilla configuration first;
#: drawn only where the group has one and another configuration), ``"one"`` (one run's analysis: the
#: group's vanilla run where there is one) or ``"metrics"`` (the runs' metrics from results.json as records
#: with ``attack``, ``defense``, ``cacc``, ``asr`` and ``false_trigger_rate``: not an analysis).
COMPARE_INPUTS = ("run", "runs", "configurations", "baseline", "one", "metrics")
#: The fields a ``compare_caption`` template may use.
CAPTION_FIELDS = ("view", "mark", "source", "spread")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def always(analysis: SpectralAnalysis) -> bool:
    """Every analysis has the figure."""
    return True


def has_modes(analysis: SpectralAnalysis) -> bool:
    """The analysis has an eigenmode spectrum: clean and backdoor probe sets (3 probes or more)."""
    return analysis.modes is not None


def has_static_spectra(analysis: SpectralAnalysis) -> bool:
    """The analysis has static target spectra: clean and backdoor probe sets."""
    return bool(analysis.static_spectra)


def has_projection(analysis: SpectralAnalysis) -> bool:
    """The analysis has a projection spectrum (every probe set has one)."""
    return bool(analysis.projection)


@dataclass(frozen=True)
class RunFile:
    """One PNG a figure gives a run directory, and its caption in the run's ``report.html``.

    Attributes:
        file: the file name (``"heatmap.png"``), in the run directory.
        caption: the caption under the figure in ``report.html``.
        options: keyword arguments of the drawing function for this file
            (e.g. ``{"view": "separate"}``).
    """

    file: str
    caption: str
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.file, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+\.png", self.file):
            raise ValueError(f"Expected `file` to be a PNG file name (letters, digits, '_', '.', '-', ending "
                             f"in .png) but got {self.file!r}.")
        if not isinstance(self.caption, str) or not self.caption:
            raise ValueError(f"Expected `caption` of {self.file} to be a non-empty string but got {self.caption!r}.")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"Expected `options` of {self.file} to be a mapping of keyword arguments but got "
                             f"{self.options!r}.")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


@dataclass(frozen=True)
class Figure:
    """One kind of figure: a row of :data:`FIGURES`.

    Attributes:
        kind: its name, lower case (``"heatmaps"``): ``SpectralAnalysis.plot(kind)``.
        draw: the function that draws it and returns the matplotlib figure:
            ``draw(analysis, **options)`` (``SpectralAnalysis.plot``, run
            files, per-run comparison figures), or ``draw(input)`` with the
            group input of ``compare`` (one analysis for ``"one"``, a mapping
            for ``"runs"``, ``"configurations"`` and ``"baseline"``, records for
            ``"metrics"``: the one figure not of an analysis). A ``"metrics"``
            or ``"baseline"`` figure is one ``SpectralAnalysis.plot`` does not
            draw and a run does not write.
        description: what it shows, one line (the comparison report's
            caption where ``compare_caption`` is empty).
        applies: whether an analysis has this figure (default: every one);
            the run report and the comparison report skip the rest.
        run: the PNG files (and captions) it gives a run directory and its
            ``report.html``, in order; empty: none.
        compare: how ``freqlens report`` draws it, one of
            :data:`COMPARE_INPUTS`, or None (not drawn there).
        compare_name: its file-name kind in the comparison report
            (``<group>_<kind>``, per run ``<group>_<run>_<kind>``).
        compare_caption: its caption there, a :meth:`str.format` template
            with the fields ``view`` (the view it is drawn in), ``mark``
            (a note on partial runs, or empty), ``source`` (the run drawn,
            for ``"one"``; the baseline's label for ``"baseline"``) and
            ``spread`` (what a line's band is, for ``"configurations"`` and
            ``"baseline"``). Per run the run's label comes before it.
        compare_view: whether the comparison report passes its view
            (``view=``) to ``draw``.

    Raises:
        ValueError: a field with a bad value, named as above.
        TypeError: ``draw`` or ``applies`` not callable, or ``run`` entries that are
            not :class:`RunFile`.
    """

    kind: str
    draw: Callable[..., object]
    description: str
    applies: Callable[[SpectralAnalysis], bool] = always
    run: tuple[RunFile, ...] = ()
    compare: str | None = None
    compare_name: str = ""
    compare_caption: str = ""
    compare_view: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _NAME.fullmatch(self.kind):
            raise ValueError(f"Expected figure `kind` to be a lower-case name (letters, digits, '_') but got "
                             f"{self.kind!r}.")
        for name in ("draw", "applies"):
            if not callable(getattr(self, name)):
                raise TypeError(f"Expected `{name}` of figure {self.kind!r} to be callable but got "
                                 f"{getattr(self, name)!r}.")
        if not isinstance(self.description, str) or not self.description:
            raise ValueError(f"Expected `description` of figure {self.kind!r} to be a non-empty string.")
        run = (self.run,) if isinstance(self.run, RunFile) else tuple(self.run)
        if not all(isinstance(f, RunFile) for f in run):
            raise TypeError(f"Expected `run` of figure {self.kind!r} to be RunFile entries but got {self.run!r}.")
        object.__setattr__(self, "run", run)
        if self.compare is not None and self.compare not in COMPARE_INPUTS:
            raise ValueError(f"Expected `compare` of figure {self.kind!r} to be one of {COMPARE_INPUTS} or None "
                             f"but got {self.compare!r}.")
        if self.compare is not None:
            name = self.compare_name or self.kind
            if not _NAME.fullmatch(name):
                raise ValueError(f"Expected `compare_name` of figure {self.kind!r} to be a lower-case name but "
                                 f"got {name!r}.")
            object.__setattr__(self, "compare_name", name)
            object.__setattr__(self, "compare_caption", self.compare_caption or self.description)
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(self.compare_caption) if f is not None}
            except ValueError as error:
                raise ValueError(f"Expected `compare_caption` of figure {self.kind!r} to be a str.format template "
                                 f"but got {self.compare_caption!r} ({error}).") from None
            unknown = sorted(fields - set(CAPTION_FIELDS))
            if unknown:
                raise ValueError(f"Expected `compare_caption` of figure {self.kind!r} to use only the fields "
                                 f"{CAPTION_FIELDS} but got {unknown}.")
        if self.compare in ("metrics", "baseline") and run:
            what = ("drawn from the runs' metrics, not from an analysis" if self.compare == "metrics"
                    else "drawn from a group's configurations beside its baseline, not from one analysis")
            raise ValueError(f"Expected no `run` files for figure {self.kind!r}: with compare = "
                             f"{self.compare!r} it is {what}.")

    def draw_or_note(self, data, **options) -> tuple[object | None, str | None]:
        """``(draw(data, **options), None)``, or ``(None, note)`` where drawing raised: the reports
        then write everything else and show the note (naming this figure and the error) in its
        place, so that one figure that fails (a user's, say) never costs a run its
        ``results.json`` or a comparison its report."""
        try:
            return self.draw(data, **options), None
        except Exception as error:  # noqa: BLE001 - any failure of a drawing function becomes a note
            plt.close("all")  # what the failed drawing left open
            return None, f"figure {self.kind!r} could not be drawn ({type(error).__name__}: {error})"

    @property
    def of_analysis(self) -> bool:
        """Whether ``draw`` takes an analysis: every figure but the metrics (``compare = "metrics"``) and
        those that need a baseline beside the others (``compare = "baseline"``), which
        ``SpectralAnalysis.plot`` does not draw."""
        return self.compare not in ("metrics", "baseline")


FIGURES: dict[str, Figure] = {}
"""The figure table, kind -> :class:`Figure`, in the order the reports show them. Add rows with
:func:`register_figure`."""


def register_figure(figure: Figure, *, replace: bool = False) -> Figure:
    """Add ``figure`` to :data:`FIGURES` (last), so that ``SpectralAnalysis.plot``, the run
    report and the comparison report draw it.

    Raises:
        TypeError: ``figure`` is not a :class:`Figure`.
        ValueError: its kind is taken (and ``replace`` is False), or one of its run files, their
            captions or its comparison name is another figure's.
    """
    if not isinstance(figure, Figure):
        raise TypeError(f"Expected a Figure but got {type(figure).__name__}.")
    if figure.kind in FIGURES and not replace:
        raise ValueError(f"Expected a new figure kind but {figure.kind!r} is registered; pass replace=True "
                         "to replace it.")
    others = [f for f in FIGURES.values() if f.kind != figure.kind]
    files = {r.file: f.kind for f in others for r in f.run}
    taken = [r.file for r in figure.run if r.file in files]
    if taken or len({r.file for r in figure.run}) < len(figure.run):
        raise ValueError(f"Expected run files of figure {figure.kind!r} that no other figure writes but got "
                         f"{[r.file for r in figure.run]} ({', '.join(f'{t} by {files[t]!r}' for t in taken)}).")
    captions = {r.caption: f.kind for f in others for r in f.run}
    shared = [r.caption for r in figure.run if r.caption in captions]
    if shared or len({r.caption for r in figure.run}) < len(figure.run):  # report.html shows one per caption
        owners = ", ".join(f"{c!r} by {captions[c]!r}" for c in shared)
        raise ValueError(f"Expected run-file captions of figure {figure.kind!r} that no other figure uses but got "
                         f"{[r.caption for r in figure.run]} ({owners}).")
    names = {f.compare_name: f.kind for f in others if f.compare is not None}
    if figure.compare is not None and figure.compare_name in names:
        raise ValueError(f"Expected a `compare_name` of figure {figure.kind!r} that no other figure uses but "
                         f"{figure.compare_name!r} is {names[figure.compare_name]!r}'s.")
    FIGURES[figure.kind] = figure
    return figure


def plot_kinds() -> tuple[str, ...]:
    """The kinds ``SpectralAnalysis.plot`` draws, in table order."""
    return tuple(kind for kind, figure in FIGURES.items() if figure.of_analysis)


# The built-in figures, in report order: the run report shows speed_spectrum, mode_heatmap,
# static_spectrum, heatmap, heatmap_separate, curves; the comparison report the group figures
# (metrics, speed_spectrum, speed_vs_vanilla, static_spectrum, convergence_spectrum), then each run's.
for _figure in (
    Figure("metrics", plots.plot_defense_comparison, "CACC, ASR and false-trigger rate per defense and attack",
           compare="metrics", compare_caption="CACC, ASR and false-trigger rate per run{mark}"),
    Figure("speeds", plots.plot_speed_spectrum,
           "learning-speed spectrum: speed per eigenmode band (or filter width) with intervals",
           applies=has_modes,
           run=(RunFile("speed_spectrum.png", "Learning-speed spectrum: how fast each eigenmode band is "
                                              "learned, with its bootstrap interval"),),
           compare="configurations", compare_name="speed_spectrum",
           compare_caption="Learning-speed spectrum per eigenmode band, one line per configuration: "
                           "{spread}{mark}"),
    Figure("speeds_vs_vanilla", plots.plot_speed_beside_baseline,
           "learning-speed spectrum of each defense beside vanilla's, same axes", applies=has_modes,
           compare="baseline", compare_name="speed_vs_vanilla",
           compare_caption="Learning-speed spectrum of each defense (colour) beside {source} (grey), one row "
                           "per configuration, same axes: {spread}{mark}"),
    Figure("modes", plots.plot_mode_heatmap, "error per eigenmode band over training", applies=has_modes,
           run=(RunFile("mode_heatmap.png", "Error per eigenmode band over training"),),
           compare="run", compare_name="mode_heatmap"),
    Figure("static", plots.plot_static_spectrum, "static target spectrum per input space, before training",
           applies=has_static_spectra,
           run=(RunFile("static_spectrum.png", "Static target spectrum: where the clean and the backdoor "
                                               "mapping put their energy, per input space"),),
           compare="one", compare_name="static_spectrum",
           compare_caption="Static target spectrum of the probe sets (before training; from {source})"),
    Figure("heatmaps", plots.plot_heatmaps, "the paper's heat maps (relative error by part and step)",
           run=(RunFile("heatmap.png", "Joint view: one kernel over clean + backdoor probes (freqlens' default)"),
                RunFile("heatmap_separate.png", "Separate view: a kernel per probe set (the paper's)",
                        {"view": "separate"})),
           compare="run", compare_name="heatmap", compare_caption="heat map ({view} view)", compare_view=True),
    Figure("curves", plots.plot_error_curves, "relative-error curves, convergence marked",
           run=(RunFile("curves.png", "Error curves at the middle width (joint view)"),),
           compare="run", compare_name="error_curves", compare_caption="relative-error curves",
           compare_view=True),
    Figure("convergence", plots.plot_convergence_spectrum, "steps to converge per frequency band",
           compare="runs", compare_name="convergence_spectrum",
           compare_caption="Convergence spectrum: steps to converge per frequency band, one line per probe set "
                           "and run{mark}", compare_view=True),
    Figure("bands", plots.plot_band_spectrum, "band spectrum over training",
           compare="run", compare_name="band_spectrum", compare_view=True),
    Figure("ratios", plots.plot_frequency_ratios, "LFR / HFR over training",
           compare="run", compare_name="frequency_ratios", compare_view=True),
    Figure("projection", plots.plot_projection_spectrum, "projection spectrum", applies=has_projection,
           compare="run", compare_name="projection_spectrum"),
):
    register_figure(_figure)
del _figure
