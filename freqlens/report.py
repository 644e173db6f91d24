"""A small self-contained HTML report of one analysed run."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from freqlens.figures import FIGURES
from freqlens.spectral.eigenmodes import mode_band_names

if TYPE_CHECKING:  # annotations only: freqlens.analysis uses this module's tables (no import cycle)
    from freqlens.analysis import SpectralAnalysis

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right}
th:first-child,td:first-child{text-align:left}
thead th{background:#f2f2f2}
table.mapping{margin:0;font-size:1em}
table.mapping th{text-align:left;font-weight:normal;color:#555;background:#fafafa}
table.mapping td{text-align:left}
td ol{margin:0;padding-left:1.4em}
.verdict{padding:.7em 1em;border-left:4px solid #0072B2;background:#f4f8fb}
.warning{padding:.7em 1em;border-left:4px solid #D55E00;background:#fdf3ec}
.note{color:#555;font-size:.9em}
img{max-width:100%}
code{background:#f2f2f2;padding:0 .25em}
"""


METRIC_NAMES = {
    "cacc": "clean accuracy (CACC)",
    "asr": "attack success rate (ASR)",
    "false_trigger_rate": "false-trigger rate (non-target clean inputs predicted as the target)",
}


def figure_to_data_uri(fig) -> str:
    """A PNG data URI of a matplotlib figure (closes the figure); nothing drawn is cut off."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_value(value) -> str:
    """``value`` as escaped HTML: a mapping as a two-column table (nested mappings nested),
    a list of plain values as one comma-separated line, a list with mappings as a numbered list."""
    if isinstance(value, Mapping):
        if not value:
            return "&ndash;"
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{render_value(v)}</td></tr>" for k, v in value.items())
        return f'<table class="mapping"><tbody>{rows}</tbody></table>'
    if isinstance(value, (list, tuple)):
        if not value:
            return "&ndash;"
        if any(isinstance(v, (Mapping, list, tuple)) for v in value):
            return "<ol>" + "".join(f"<li>{render_value(v)}</li>" for v in value) + "</ol>"
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return _cell(value)


def _table(header: list[str], rows: list[list], cell=_cell) -> str:
    """An HTML table; ``cell`` turns a value into escaped cell text."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _convergence_table(analysis: SpectralAnalysis, view: str) -> str:
    header = ["probe set / part"] + [f"{w:.3g}" for w in analysis.widths]
    rows = []
    for name, parts in analysis.convergence[view].items():
        for part, steps in parts.items():
            rows.append([f"{name} {part}"] + [None if np.isnan(s) else int(s) for s in steps])
    verdicts = analysis.verdicts(view)
    if verdicts:
        rows.append(["low part: who converged first"] + verdicts)
    return _table(header, rows)


def _interval(estimate, low, high) -> str:
    """``0.412 [0.380, 0.441]``; without an interval the number alone; ``–`` for NaN."""
    if estimate is None or not np.isfinite(estimate):
        return "–"
    if low is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{estimate:.3g}"
    return f"{estimate:.3g} [{low:.3g}, {high:.3g}]"


def _speed_table(analysis: SpectralAnalysis, view: str, family: str) -> str:
    """Speeds of the backdoor and clean probes per width or mode band, their difference and the verdict."""
    verdicts = analysis.speed_verdicts.get(view, {}).get(family)
    speeds = analysis.speeds.get(view, {})
    names = [analysis.roles.get(r) for r in ("backdoor", "clean")]
    if verdicts is None or not all(n in speeds and family in speeds[n] for n in names):
        return ""
    if family == "modes" and analysis.modes is not None:
        columns = mode_band_names(analysis.modes.edges)
    elif view == "joint" and analysis.effective_neighbours is not None:  # the joint kernel's counts
        columns = [f"{c:.3g}" for c in analysis.effective_neighbours]
    else:  # a kernel per set: the widths (each set's counts are in the widths table)
        columns = [f"δ {w:.3g}" for w in analysis.widths]
    size = verdicts.difference.estimate.size
    columns = (columns + ["rest"])[:size]
    rows = []
    for role, name in zip(("backdoor", "clean"), names):
        e = speeds[name][family]
        rows.append([f"{role} speed"] + [_interval(*v) for v in zip(e.estimate, e.low, e.high)])
    d = verdicts.difference
    rows.append(["backdoor − clean"] + [_interval(*v) for v in zip(d.estimate, d.low, d.high)])
    rows.append(["verdict"] + list(verdicts.outcomes))
    first = ("mode band" if family == "modes" else "median effective neighbours" if view == "joint"
             else "filter width")
    return _table([first] + columns, rows)


def _static_table(analysis: SpectralAnalysis) -> str:
    """Per input space: the share of each target's energy in the lowest quarter of the modes."""
    rows = []
    for space, spectrum in analysis.static_spectra.items():
        share = spectrum.low_share
        cells = [_interval(float(share[r].estimate), float(share[r].low), float(share[r].high))
                 if r in share else "–" for r in ("clean", "backdoor")]
        d = spectrum.difference
        rows.append([space, *cells, "–" if d is None else _interval(float(d.estimate), float(d.low), float(d.high)),
                     f"{spectrum.flat:.2f}"])
    return _table(["input space", "clean mapping (true label)", "backdoor (poison flag)", "backdoor − clean",
                   "flat spectrum"], rows)


#: The rows of the run report's defense table: (label, key path in results.json's ``defense``).
DEFENSE_ROWS = (
    ("defense", ("name",)),
    ("clean examples used (reference set)", ("clean_examples",)),
    ("training examples removed", ("removed",)),
    ("training examples trained on", ("trained_on",)),
    ("flagged as poisoned", ("detection", "flagged")),
    ("poisoned in the training set", ("detection", "poisoned")),
    ("detection precision (flagged that are poisoned)", ("detection", "precision")),
    ("detection recall (poisoned that are flagged)", ("detection", "recall")),
    ("detection F1", ("detection", "f1")),
)


def _defense_section(defense: Mapping) -> str:
    """The defense a run trained with: its name, the clean examples it used and, for a defense that
    removes training examples, how many and how well they match the poison flags; then everything
    else it recorded (a nested table). A field the defense did not record (an older freqlens, a
    defense that removes nothing) is left out; the clean examples are shown as missing (–)."""
    rows = []
    for label, path in DEFENSE_ROWS:
        value = defense
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is not None or path == ("clean_examples",):
            rows.append([label, value])
    shown = {path[0] for _, path in DEFENSE_ROWS}
    rest = {k: v for k, v in defense.items() if k not in shown}
    more = (f"<details><summary>Everything the defense recorded</summary>{render_value(rest)}</details>"
            if rest else "")
    return "<h2>Defense</h2>" + _table(["", "value"], rows) + more


#: The columns of a run's detector table: (header, key in results.json's ``detectors[name]``).
DETECTOR_COLUMNS = (("FRR", "frr"), ("FAR", "far"), ("CACC", "cacc"), ("ASR", "asr"),
                    ("false-trigger", "false_trigger_rate"), ("net", "net_backdoor_effect"))


def _detector_section(detectors: Mapping) -> str:
    """The inference-time detectors applied to the trained model: FRR on clean test inputs, FAR on
    triggered ones, and CACC / ASR / false-trigger rate / net backdoor effect after each filtered (or
    repaired) the test inputs; then everything each recorded."""
    entries = {name: entry if isinstance(entry, Mapping) else {} for name, entry in detectors.items()}
    columns = list(DETECTOR_COLUMNS) + ([("error", "error")] if any(e.get("error") for e in entries.values()) else [])
    rows = [[name, *(entry.get(key) for _, key in columns)] for name, entry in entries.items()]
    header = ["detector", *(h for h, _ in columns)]
    shown = {key for _, key in DETECTOR_COLUMNS} | {"error"}
    rest = {name: {k: v for k, v in entry.items() if k not in shown} for name, entry in entries.items()}
    return ("<h2>Inference-time detectors</h2>" + _table(header, rows)
            + '<p class="note">FRR: clean test inputs rejected; FAR: triggered test inputs accepted (a repairing '
            "detector rejects nothing: –). CACC, ASR and the false-trigger rate count a rejected input as "
            "neither correct nor the target (OpenBackdoor's measure), on the inputs as the detector left them."
            "</p>" + f"<details><summary>Everything the detectors recorded</summary>{render_value(rest)}</details>")


def write_report(
    path: str | Path,
    *,
    title: str,
    analysis: SpectralAnalysis,
    metrics: Mapping[str, float],
    figures: Mapping[str, object],
    details: Mapping[str, object] | None = None,
    warnings: Sequence[str] = (),
    defense: Mapping[str, object] | None = None,
    detectors: Mapping[str, Mapping] | None = None,
) -> Path:
    """Write one self-contained HTML page (figures embedded) for a run.

    Args:
        path: the HTML file to write.
        title: the page title.
        analysis: the analysed run.
        metrics: headline numbers (clean accuracy, attack success rate, ...).
        figures: caption -> matplotlib figure (embedded as PNG; closed here).
        details: further key -> value rows (settings, timings); a mapping
            value is shown as a nested table, a list as one line.
        warnings: sentences shown under the title (e.g. small probe sets).
        defense: what the defense recorded (results.json's ``defense``), shown
            under the metrics: its name, the clean examples it used, the
            examples it removed and their detection precision / recall / F1
            (:data:`DEFENSE_ROWS`), then the rest; None (the demo): no section.
        detectors: results.json's ``detectors`` (detector name -> its metrics),
            shown as a table (:data:`DETECTOR_COLUMNS`) after the defense;
            None or empty: no section.

    Returns:
        The path written.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="warning">{html.escape(w)}</p>' for w in warnings]
    parts.append(_table(["metric", "value"], [[METRIC_NAMES.get(k, k), v] for k, v in metrics.items()]))
    if defense is not None:
        parts.append(_defense_section(defense))
    if detectors:
        parts.append(_detector_section(detectors))
    summary = analysis.summary()
    for view in analysis.convergence:
        statement = summary.get(view, {}).get("statement")
        if statement:
            parts.append(f'<p class="verdict"><b>{view} view:</b> {html.escape(statement)}.</p>')
    threshold = (
        f"below {analysis.threshold:g} &times; its first value"
        if analysis.relative
        else f"below {analysis.threshold:g}"
    )
    parts.append(
        f'<p class="note">Convergence step: the first recorded step after which a relative-error '
        f"curve stays {threshold}. Widths are chosen from the probe inputs "
        f"({html.escape(analysis.distance)} distance, {html.escape(analysis.reduction)} reduction); "
        "the <i>joint</i> view uses one kernel over the clean and backdoor probes, the "
        "<i>separate</i> view (the paper's) one kernel per probe set, where a backdoor set whose "
        "targets are all one class has no high-frequency part (drawn hatched, reported as "
        "&ndash;).</p>"
    )
    for caption, fig in figures.items():
        parts.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"{figure_to_data_uri(fig)}\">"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if analysis.static_spectra:
        top = next(iter(analysis.static_spectra.values()))
        parts.append(f"<h2>Static target spectrum: share of energy in the lowest {top.top} of {top.n} "
                     "eigenmodes, before training</h2>")
        parts.append(_static_table(analysis))
        parts.append('<p class="note">Higher than the flat spectrum: smoother over the probe inputs (lower '
                     'frequency). Intervals: bootstrap over probe rows, the eigenbasis held fixed.</p>')
    level = int(round(100 * analysis.config.level)) if analysis.config is not None else 95
    method = analysis.config.speed if analysis.config is not None else "area"
    for view, families in analysis.speed_verdicts.items():
        for family in families:
            table = _speed_table(analysis, view, family)
            if table:
                what = "eigenmode band" if family == "modes" else "filter width (low part)"
                parts.append(f"<h2>Learning speed per {what}, {view} view, with {level}% intervals</h2>")
                parts.append(table)
    if analysis.speed_verdicts:
        faster = "higher" if method == "area" else "lower"
        parts.append(f'<p class="note">Learning speed ({html.escape(method)}): {faster} = learned faster. '
                     f"A verdict is \"backdoor first\" or \"clean first\" only where the {level}% "
                     "bootstrap interval of the speed difference excludes 0; else \"no difference "
                     "resolved\".</p>")
    for view in analysis.convergence:
        parts.append(f"<h2>Convergence steps, {view} view (columns: filter width)</h2>")
        parts.append(_convergence_table(analysis, view))
    checks = analysis.width_checks
    if checks:
        parts.append("<h2>Widths: effective neighbours per probe set</h2>")
        header = ["probe set"] + [f"{w:.3g}" for w in analysis.widths]
        rows = [[name] + [f"{n:.1f} ({s})" for n, s in zip(c.neighbours, c.status)] for name, c in checks.items()]
        parts.append(_table(header, rows))
    if details:
        parts.append("<h2>Run</h2>")
        parts.append(_table(["setting", "value"], [[k, v] for k, v in details.items()], cell=render_value))
    page = (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def write_run_outputs(out: Path, *, title: str, analysis: SpectralAnalysis,
                  metrics: Mapping[str, float], details: Mapping, warnings: Sequence[str] = (),
                  defense: Mapping | None = None, detectors: Mapping | None = None) -> list[str]:
    """Write the figures (PNG, 130 dpi) and ``report.html`` of a run into ``out``.

    The figures are the ``run`` files of every row of the figure table
    (:data:`freqlens.figures.FIGURES`) that applies to ``analysis``, in table
    order: the learning-speed spectrum, the eigenmode heat map and the static
    target spectrum where the run has clean and backdoor probe sets, then the
    paper's heat maps (``heatmap.png`` joint view, ``heatmap_separate.png``)
    and the error curves (``curves.png``); the report shows them in that order
    with the rows' captions. ``defense`` (results.json's ``defense``) and
    ``detectors`` (its ``detectors``) are shown under the metrics (:func:`write_report`).

    Returns:
        A warning for each figure that could not be drawn
        (:meth:`~freqlens.figures.Figure.draw_or_note`; also shown in the
        report): the caller adds them to ``results.json``.
    """
    figures, failed = {}, []
    for row in FIGURES.values():
        if row.run and row.applies(analysis):
            for entry in row.run:
                fig, note = row.draw_or_note(analysis, **entry.options)
                if fig is None:
                    failed.append(f"The {note}; {entry.file} is missing, the run's other outputs are written.")
                else:
                    figures[entry.file] = (entry.caption, fig)
    for name, (_, fig) in figures.items():
        fig.savefig(out / name, dpi=130)
    figures = {caption: fig for caption, fig in figures.values()}
    write_report(out / "report.html", title=title, analysis=analysis, metrics=metrics,
                 figures=figures, details=details, warnings=[*warnings, *failed], defense=defense,
                 detectors=detectors)
    plt.close("all")
    return failed
