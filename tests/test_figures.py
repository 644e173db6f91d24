"""One table of figures: `SpectralAnalysis.plot`, the run report and the comparison report read it."""

from __future__ import annotations

import html
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from freqlens import analyse
from freqlens import figures as figure_table
from freqlens.analysis import SpectralAnalysis
from freqlens.compare import Run, write_comparison
from freqlens.figures import FIGURES, Figure, RunFile, register_figure
from freqlens.report import write_run_outputs
from tests.synthetic import make_trajectory

# What the run report wrote before the table (freqlens 34593fc), in order: file and caption.
RUN_REPORT = [
    ("speed_spectrum.png", ("Learning-speed spectrum: how fast each eigenmode band is learned, with its "
                            "bootstrap interval")),
    ("mode_heatmap.png", "Error per eigenmode band over training"),
    ("static_spectrum.png", ("Static target spectrum: where the clean and the backdoor mapping put their "
                             "energy, per input space")),
    ("heatmap.png", "Joint view: one kernel over clean + backdoor probes (freqlens' default)"),
    ("heatmap_separate.png", "Separate view: a kernel per probe set (the paper's)"),
    ("curves.png", "Error curves at the middle width (joint view)"),
]
# What the comparison report drew before the table, per group and per run (file-name kind: caption end),
# and since issue 15 each defense's learning-speed spectrum beside vanilla's (speed_vs_vanilla).
GROUP_FIGURES = ["metrics", "speed_spectrum", "speed_vs_vanilla", "static_spectrum", "convergence_spectrum"]
RUN_FIGURES = {"mode_heatmap": "error per eigenmode band over training", "heatmap": "heat map (joint view)",
               "error_curves": "relative-error curves", "band_spectrum": "band spectrum over training",
               "frequency_ratios": "LFR / HFR over training", "projection_spectrum": "projection spectrum"}


@pytest.fixture(scope="module")
def analysis():
    return analyse(make_trajectory(), num_widths=3, bootstrap=20)


@pytest.fixture
def table():
    """The figure table, restored after the test (rows registered in it are dropped)."""
    saved = dict(FIGURES)
    yield FIGURES
    FIGURES.clear()
    FIGURES.update(saved)


def plot_widths(analysis, *, marker: str = "o"):
    """A new figure: the filter widths, widest first."""
    fig, ax = plt.subplots(figsize=(3.0, 2.0))
    ax.plot(analysis.widths, marker)
    ax.set_title("filter widths")
    return fig


WIDTHS = Figure("widths", plot_widths, "the filter widths, widest first",
                run=(RunFile("widths.png", "Filter widths (new figure)"),), compare="run")


def _report_figures(out: Path) -> list[tuple[str, str]]:
    page = (out / "report.html").read_text(encoding="utf-8")
    found = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,[^"]+"><figcaption>([^<]*)</figcaption>', page)
    return [(html.unescape(alt), html.unescape(caption)) for alt, caption in found]


def _runs(analysis: SpectralAnalysis, tmp_path: Path) -> list[Run]:
    """Two runs of one experiment (vanilla and a defense) over the same analysis."""
    runs = []
    for defense, asr in (("vanilla", 1.0), ("lora", 0.4)):
        directory = tmp_path / defense
        directory.mkdir()
        runs.append(Run(directory=directory, results={"cacc": 0.9, "asr": asr, "false_trigger_rate": 0.1,
                                                      "defense": {"name": defense}},
                        analysis=analysis, label=defense, group="synthetic", config={"defense.name": defense},
                        experiment={"dataset": "synthetic"}))
    return runs


def test_the_run_report_writes_the_tables_files_and_captions_in_order(analysis, tmp_path):
    assert [(f.file, f.caption) for row in FIGURES.values() for f in row.run] == RUN_REPORT
    write_run_outputs(tmp_path, title="t", analysis=analysis, metrics={"cacc": 0.9}, details={})
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(name for name, _ in RUN_REPORT)
    assert [caption for _, caption in _report_figures(tmp_path)] == [caption for _, caption in RUN_REPORT]


def test_a_registered_figure_is_drawn_by_plot_the_run_report_and_the_comparison(analysis, tmp_path, table):
    assert "widths" not in SpectralAnalysis.PLOTS
    register_figure(WIDTHS)
    assert SpectralAnalysis.PLOTS[-1] == analysis.PLOTS[-1] == "widths"
    fig = analysis.plot("widths", marker="s")
    assert fig.axes[0].get_title() == "filter widths" and fig.axes[0].lines[0].get_marker() == "s"
    plt.close(fig)

    for kind in [k for k in table if k not in ("curves", "widths")]:  # quick: one built-in row and the new one
        del table[kind]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_outputs(run_dir, title="t", analysis=analysis, metrics={"cacc": 0.9}, details={})
    assert sorted(p.name for p in run_dir.glob("*.png")) == ["curves.png", "widths.png"]
    assert [c for _, c in _report_figures(run_dir)] == [RUN_REPORT[-1][1], "Filter widths (new figure)"]

    paths = write_comparison(_runs(analysis, tmp_path), tmp_path / "compare")
    assert sorted(p.name for p in (tmp_path / "compare" / "figures").glob("*.png")) == [
        f"synthetic_{run}_{kind}.png" for run in ("lora", "vanilla") for kind in ("error_curves", "widths")]
    assert "![vanilla: the filter widths, widest first](figures/synthetic_vanilla_widths.png)" in (
        paths["markdown"].read_text(encoding="utf-8"))


def test_the_comparison_draws_the_tables_group_figures_then_each_runs(analysis, tmp_path, monkeypatch):
    from freqlens import compare, plots

    saved = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.append(Path(path).name))  # drawn, not saved
    monkeypatch.setattr(compare, "figure_to_data_uri", lambda fig: "data:image/png;base64,")
    paths = write_comparison(_runs(analysis, tmp_path), tmp_path / "compare")
    assert saved == ([f"synthetic_{kind}" for kind in GROUP_FIGURES]
                     + [f"synthetic_{run}_{kind}" for run in ("vanilla", "lora") for kind in RUN_FIGURES])
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for run in ("vanilla", "lora"):
        for kind, what in RUN_FIGURES.items():
            assert f"![{run}: {what}](figures/synthetic_{run}_{kind}.png)" in markdown
    assert "![Static target spectrum of the probe sets (before training; from vanilla)]" in markdown
    assert "one line per configuration: band = the run's bootstrap interval over probe rows](" in markdown
    assert ("![Learning-speed spectrum of each defense (colour) beside vanilla (grey), one row per configuration, "
            "same axes: band = the run's bootstrap interval over probe rows](figures/synthetic_speed_vs_vanilla.png)"
            in markdown)


def test_a_group_figure_row_gets_its_input_and_caption_fields(analysis, tmp_path, table):
    drawn = {}

    def per_group(runs, *, view="joint"):
        drawn.update(runs=dict(runs), view=view)
        return plt.figure()

    table.clear()
    register_figure(Figure("overlay", per_group, "all runs of a group in one picture", compare="runs",
                           compare_caption="{view} view: every run{mark}", compare_view=True))
    paths = write_comparison(_runs(analysis, tmp_path), tmp_path / "compare", view="separate")
    assert list(drawn["runs"]) == ["vanilla", "lora"] and drawn["view"] == "separate"
    assert "![separate view: every run](figures/synthetic_overlay.png)" in paths["markdown"].read_text()


def test_a_figure_that_does_not_apply_is_left_out(analysis, tmp_path, table):
    table.clear()
    register_figure(WIDTHS)
    register_figure(Figure("never", plot_widths, "drawn for no analysis", applies=lambda a: False,
                           run=(RunFile("never.png", "never"),), compare="run"))
    write_run_outputs(tmp_path, title="t", analysis=analysis, metrics={}, details={})
    assert [p.name for p in tmp_path.glob("*.png")] == ["widths.png"]
    assert "never" in analysis.PLOTS  # .plot draws any kind it is asked for (the function says what it lacks)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: Figure("Bad Kind", plot_widths, "x"), r"figure `kind` to be a lower-case name .* got 'Bad Kind'"),
    (lambda: Figure("k", "plot_widths", "x"), r"`draw` of figure 'k' to be callable"),
    (lambda: Figure("k", plot_widths, ""), r"`description` of figure 'k'"),
    (lambda: Figure("k", plot_widths, "x", compare="group"), r"`compare` of figure 'k' to be one of"),
    (lambda: Figure("k", plot_widths, "x", compare="run", compare_caption="{run} at {step}"),
     r"`compare_caption` of figure 'k' to use only the fields .* got \['run', 'step'\]"),
    (lambda: Figure("k", plot_widths, "x", run=("k.png",)), r"`run` of figure 'k' to be RunFile entries"),
    (lambda: RunFile("a.png", "a", options=["view"]), r"`options` of a.png to be a mapping"),
    (lambda: Figure("k", plot_widths, "x", run=(RunFile("a.png", "a"),), compare="metrics"),
     r"no `run` files for figure 'k'"),
    (lambda: Figure("k", plot_widths, "x", run=(RunFile("a.png", "a"),), compare="baseline"),
     r"no `run` files for figure 'k': with compare = 'baseline'"),
    (lambda: RunFile("heat map.pdf", "c"), r"`file` to be a PNG file name .* got 'heat map.pdf'"),
    (lambda: RunFile("a.png", ""), r"`caption` of a.png"),
])
def test_a_bad_row_names_the_field(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_registering_refuses_a_taken_kind_file_or_comparison_name(table):
    with pytest.raises(ValueError, match=r"'heatmaps' is registered; pass replace=True"):
        register_figure(Figure("heatmaps", plot_widths, "x"))
    with pytest.raises(ValueError, match=r"heatmap.png by 'heatmaps'"):
        register_figure(Figure("other", plot_widths, "x", run=(RunFile("heatmap.png", "c"),)))
    with pytest.raises(ValueError, match=r"captions of figure 'other' that no other figure uses .* by 'curves'"):
        register_figure(Figure("other", plot_widths, "x", run=(RunFile("o.png", RUN_REPORT[-1][1]),)))
    with pytest.raises(ValueError, match=r"'error_curves' is 'curves''s"):
        register_figure(Figure("other", plot_widths, "x", compare="run", compare_name="error_curves"))
    assert list(FIGURES) == list(table)  # nothing was added
    register_figure(Figure("heatmaps", plot_widths, "replaced"), replace=True)
    assert FIGURES["heatmaps"].description == "replaced"


def test_plot_names_the_kinds_of_the_table(analysis):
    with pytest.raises(ValueError, match=r"`kind` to be one of \('speeds', 'modes', .*'projection'\) but got "
                                         r"'metrics'"):
        analysis.plot("metrics")  # a figure of the runs' metrics, not of an analysis
    assert figure_table.plot_kinds() == SpectralAnalysis.PLOTS


def _fails(analysis, **options):
    raise RuntimeError("drawing failed")


BROKEN = Figure("broken", _fails, "a figure whose function raises", run=(RunFile("broken.png", "Broken"),),
                compare="run")


def test_a_figure_that_fails_is_a_note_and_the_rest_of_the_run_is_written(tmp_path, table):
    """A user's figure that raises must not cost a run its results.json (written after the figures)
    nor its report: the run warns, naming the figure, and writes everything else."""
    import json

    from freqlens.cli import main
    from tests.test_run import _tiny_experiment

    register_figure(BROKEN)
    config = _tiny_experiment(tmp_path, '[train]\nepochs = 1\n[record]\nschedule = "every:4"\nprobe_size = 16\n'
                                        "[analysis]\nnum_widths = 3\nbootstrap = 10")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["cacc"] is not None and not (out / "broken.png").exists() and (out / "curves.png").is_file()
    note = [w for w in results["warnings"] if "'broken'" in w]
    assert note and "RuntimeError: drawing failed" in note[0] and "broken.png is missing" in note[0]
    assert html.escape(note[0]) in (out / "report.html").read_text(encoding="utf-8")


def test_a_figure_that_fails_in_the_comparison_is_a_note_in_its_place(analysis, tmp_path, table):
    for kind in [k for k in table if k != "curves"]:
        del table[kind]
    register_figure(BROKEN)
    paths = write_comparison(_runs(analysis, tmp_path), tmp_path / "compare")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "*vanilla: a figure whose function raises: the figure 'broken' could not be drawn (RuntimeError: " \
           "drawing failed).*" in markdown
    assert sorted(p.name for p in (tmp_path / "compare" / "figures").glob("*.png")) == [
        f"synthetic_{run}_error_curves.png" for run in ("lora", "vanilla")]
    assert "could not be drawn" in paths["html"].read_text(encoding="utf-8")


def test_each_defense_is_drawn_beside_the_complete_vanilla_configuration_of_its_group(analysis, tmp_path, table):
    from freqlens.compare import configurations

    drawn = []

    def beside(configs):
        drawn.append({label: len(analyses) for label, analyses in configs.items()})
        return plt.figure()

    table.clear()
    register_figure(Figure("beside", beside, "each defense beside vanilla", compare="baseline",
                           compare_caption="beside {source}: {spread}"))
    assert "beside" not in SpectralAnalysis.PLOTS  # it needs a group, not one analysis
    vanilla, lora = _runs(analysis, tmp_path)
    muscle = Run(directory=tmp_path / "muscle", results={"cacc": 0.9, "asr": 0.2, "false_trigger_rate": 0.1},
                 analysis=analysis, label="muscle", group="synthetic", config={"defense.name": "muscle"},
                 experiment={"dataset": "synthetic"})
    paths = write_comparison([lora, muscle, vanilla], tmp_path / "a")  # vanilla given last, drawn first
    assert drawn == [{"vanilla": 1, "lora": 1, "muscle": 1}]
    assert "![beside vanilla: band = the run's bootstrap interval" in paths["markdown"].read_text()
    write_comparison([lora, muscle], tmp_path / "b")  # no vanilla run: nothing to draw beside
    partial = Run(directory=tmp_path / "vanilla", results={}, analysis=analysis, label="vanilla (partial)",
                  group="synthetic", config={"defense.name": "vanilla"}, experiment={"dataset": "synthetic"},
                  partial="partial: killed at step 4 of 10")
    write_comparison([partial, lora], tmp_path / "c")  # a killed vanilla run is no baseline
    write_comparison([vanilla], tmp_path / "d")  # vanilla alone: no defense to draw
    assert len(drawn) == 1
    assert list(configurations([lora, muscle, vanilla])) == ["lora", "muscle", "vanilla"]
