"""Compare finished runs side by side: ``freqlens report RUN_DIR [RUN_DIR ...] --out DIR``.

A run directory is what ``freqlens run`` or ``freqlens demo`` wrote:
``results.json`` and ``trajectory/``. :func:`load_runs` reads them (and says
plainly what is wrong with one it cannot use), re-analyses each trajectory with
the settings it was analysed with, and groups runs by dataset and attack so
that different attacks are never mixed. :func:`comparison_rows` gives one row
per run: the config differences, CACC, ASR, false-trigger rate, the
convergence step per probe set and frequency band, and the shift against the
undefended run of its group. :func:`write_comparison` writes
``report.html`` (self-contained), ``report.md``, ``runs.csv`` and the figures.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.recording.storage import load_trajectory
from freqlens.report import STYLE, _table, figure_to_data_uri

UNDEFENDED = "vanilla"
METRICS = ("cacc", "asr", "false_trigger_rate", "net_backdoor_effect")


class RunError(ValueError):
    """A run directory that cannot be compared, with the reason."""


@dataclass
class Run:
    """One finished run, re-analysed."""

    directory: Path
    results: dict
    analysis: SpectralAnalysis
    label: str  # the defense (or the directory name when the defense is unknown)
    group: str  # the dataset and attack
    config: dict = field(default_factory=dict)  # the config as run, flattened to "section.key"

    @property
    def defense(self) -> str:
        return self.results.get("defense", {}).get("name") or self.config.get("defense.name") or UNDEFENDED

    def metric(self, name: str) -> float | None:
        if name == "net_backdoor_effect" and "net_backdoor_effect" not in self.results:
            asr, ftr = self.results.get("asr"), self.results.get("false_trigger_rate")
            return None if asr is None or ftr is None else asr - ftr
        value = self.results.get(name)
        return None if value is None else float(value)


def load_run(directory: str | Path) -> Run:
    """Read and re-analyse one run directory.

    Raises:
        RunError: no ``results.json`` (the run did not finish), no readable
            trajectory, or a results file without what a comparison needs
            (e.g. from an older freqlens).
    """
    directory = Path(directory)
    path = directory / "results.json"
    if not directory.is_dir():
        raise RunError(f"{directory}: not a directory.")
    if not path.is_file():
        raise RunError(f"{directory}: no results.json (the run did not finish, or this is not a run directory).")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunError(f"{path}: not valid JSON ({error}).") from error
    missing = [k for k in ("cacc", "asr", "analysis", "widths") if k not in results]
    if missing:
        version = results.get("freqlens_version", "unknown")
        raise RunError(f"{path}: lacks {missing} (written by freqlens {version}); rerun it with this version.")
    try:
        trajectory = load_trajectory(directory / "trajectory")
    except (FileNotFoundError, ValueError) as error:
        raise RunError(f"{directory}: the trajectory cannot be read ({error}).") from error
    settings = results["analysis"]
    analysis = analyse(trajectory, widths=np.asarray(results["widths"], dtype=float),
                       distance=settings.get("distance", "euclidean"),
                       reduction=settings.get("reduction", "mean"),
                       threshold=settings.get("threshold", 0.5),
                       relative=settings.get("threshold_relative_to_first_value", True))
    config = _flatten(results.get("config", {}))
    dataset = results.get("dataset", {})
    group = dataset.get("name") or trajectory.meta.get("dataset") or "unknown dataset"
    run = Run(directory=directory, results=results, analysis=analysis, label="", group=str(group), config=config)
    run.label = run.defense
    return run


def load_runs(directories: Iterable[str | Path]) -> tuple[list[Run], list[str]]:
    """Load every run that can be compared; the others become one-line problems."""
    runs, problems = [], []
    for directory in directories:
        try:
            runs.append(load_run(directory))
        except RunError as error:
            problems.append(str(error))
    _unique_labels(runs)
    return runs, problems


def _unique_labels(runs: list[Run]) -> None:
    """Runs of one group with the same defense get the directory name appended."""
    seen: dict[tuple[str, str], int] = {}
    for run in runs:
        seen[(run.group, run.label)] = seen.get((run.group, run.label), 0) + 1
    for run in runs:
        if seen[(run.group, run.label)] > 1:
            run.label = f"{run.label} ({run.directory.name})"


def groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by dataset and attack, in the order given."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.group, []).append(run)
    return out


def config_differences(runs: Sequence[Run]) -> dict[str, list]:
    """The config keys whose values differ between runs: key -> value per run."""
    keys = sorted({k for run in runs for k in run.config})
    return {k: [run.config.get(k) for run in runs] for k in keys
            if len({json.dumps(run.config.get(k), sort_keys=True) for run in runs}) > 1}


def comparison_rows(runs: Sequence[Run], view: str = "joint") -> list[dict]:
    """One row per run: metrics, convergence steps per probe set and band, shift vs the undefended run."""
    rows = []
    for group, members in groups(runs).items():
        baseline = next((r for r in members if r.defense == UNDEFENDED), None)
        base_bands = _band_steps(baseline, view) if baseline is not None else {}
        for run in members:
            row = {"group": group, "run": run.label, "defense": run.defense, "directory": str(run.directory)}
            for name in METRICS:
                row[name] = run.metric(name)
            for name in METRICS:
                base = baseline.metric(name) if baseline is not None else None
                value = row[name]
                row[f"shift_{name}"] = None if base is None or value is None else value - base
            bands = _band_steps(run, view)
            for role, steps in bands.items():
                for band, step in enumerate(steps):
                    row[f"{role}_band{band}_step"] = None if np.isnan(step) else float(step)
                    base = base_bands.get(role)
                    shift = None
                    if base is not None and band < base.size and np.isfinite(step) and np.isfinite(base[band]):
                        shift = float(step - base[band])
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

    Returns:
        The paths written, by kind.
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
    for g, (group, members) in enumerate(groups(runs).items()):
        group_rows = [r for r in rows if r["group"] == group]
        html_parts.append(f"<h2>{html.escape(group)}</h2>")
        md += [f"## {group}", ""]
        header, table = _summary_table(group_rows)
        html_parts.append(_html_table(header, table))
        md += _md_table(header, table) + [""]
        differences = config_differences(members)
        if differences:
            header = ["setting"] + [m.label for m in members]
            table = [[k] + v for k, v in differences.items()]
            html_parts += ["<h3>Config differences</h3>", _html_table(header, table)]
            md += ["### Config differences", ""] + _md_table(header, table) + [""]
        header, table = _band_table(group_rows)
        if table:
            html_parts += [f"<h3>Convergence step per frequency band ({view} view; 0 = lowest band)</h3>",
                           _html_table(header, table)]
            md += [f"### Convergence step per frequency band ({view} view; 0 = lowest band)", ""]
            md += _md_table(header, table) + [""]
        figures = _group_figures(members, view, plots)
        for i, (caption, fig) in enumerate(figures):
            stem = figures_dir / f"group{g + 1}-{i + 1:02d}"
            plots.save_figure(fig, stem)
            md.append(f"![{caption}](figures/{stem.name}.png)")
            html_parts.append(f'<figure><img alt="{html.escape(caption)}" src="{figure_to_data_uri(fig)}">'
                              f"<figcaption>{html.escape(caption)}</figcaption></figure>")
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


def _summary_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    header = ["run", "CACC", "ASR", "false-trigger", "net", "Δ CACC", "Δ ASR", "Δ net"]
    table = [[r["run"], r["cacc"], r["asr"], r["false_trigger_rate"], r["net_backdoor_effect"],
              r["shift_cacc"], r["shift_asr"], r["shift_net_backdoor_effect"]] for r in rows]
    return header, table


def _band_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    keys = [k for k in rows[0] if k.endswith("_step") and not k.startswith("shift_")] if rows else []
    table = []
    for role in ("backdoor", "clean"):
        role_keys = [k for k in keys if k.startswith(f"{role}_band")]
        for r in rows:
            if role_keys:
                table.append([f"{r['run']}: {role}"] + [r[k] for k in role_keys])
    width = max((len(t) for t in table), default=1) - 1
    return ["run: probe set"] + [f"band {b}" for b in range(width)], table


def _group_figures(members: Sequence[Run], view: str, plots) -> list[tuple[str, object]]:
    analyses = {m.label: m.analysis for m in members}
    records = [{"attack": m.group, "defense": m.label, "cacc": m.metric("cacc"), "asr": m.metric("asr"),
                "false_trigger_rate": m.metric("false_trigger_rate")} for m in members]
    figures = [("CACC, ASR and false-trigger rate per run", plots.plot_defense_comparison(records)),
               ("Convergence spectrum: steps to converge per frequency band, one line per probe set and run",
                plots.plot_convergence_spectrum(analyses, view=view))]
    for m in members:
        a = m.analysis
        v = view if view in a.curves else "separate"
        figures += [
            (f"{m.label}: heat map ({v} view)", plots.plot_heatmaps(a, view=v)),
            (f"{m.label}: relative-error curves", plots.plot_error_curves(a, view=v)),
            (f"{m.label}: band spectrum over training", plots.plot_band_spectrum(a, view=v)),
            (f"{m.label}: LFR / HFR over training", plots.plot_frequency_ratios(a, view=v)),
            (f"{m.label}: projection spectrum", plots.plot_projection_spectrum(a)),
        ]
    return figures


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
