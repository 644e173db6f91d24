import matplotlib.pyplot as plt
import numpy as np
import pytest

from freqlens import analyse
from freqlens.plots import (
    plot_error_curves,
    plot_heatmap,
    plot_heatmaps,
    plot_mode_heatmap,
    plot_speed_beside_baseline,
    plot_speed_spectrum,
    plot_static_spectrum,
)
from tests.synthetic import make_trajectory


@pytest.fixture(scope="module")
def analysis():
    return analyse(make_trajectory(), num_widths=4)


def test_heatmap_draws_nan_rows_as_missing_with_a_note(analysis):
    fig = plot_heatmap(analysis, view="separate")
    ax = fig.axes[0]
    data = ax.collections[0].get_array()
    assert np.ma.is_masked(data) and data.mask.reshape(4, -1)[2].all()  # backdoor-high
    assert "undefined (NaN): backdoor-high" in ax.get_legend().get_texts()[0].get_text()
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "backdoor-low", "clean-low", "backdoor-high", "clean-high"]
    plt.close(fig)


def test_joint_view_has_no_missing_rows(analysis):
    fig = plot_heatmap(analysis, view="joint", width_index=0)
    assert fig.axes[0].get_legend() is None
    plt.close(fig)


def test_heatmaps_and_curves_render(analysis, tmp_path):
    for fig in (plot_heatmaps(analysis), plot_error_curves(analysis)):
        fig.savefig(tmp_path / "figure.png")
        assert (tmp_path / "figure.png").stat().st_size > 0
        plt.close(fig)


def test_a_single_snapshot_renders(tmp_path):
    single = analyse(make_trajectory(steps=np.array([0])), num_widths=3)
    for fig in (plot_heatmaps(single), plot_error_curves(single)):
        fig.savefig(tmp_path / "single.png")
        plt.close(fig)


def test_into_given_axes(analysis):
    fig, ax = plt.subplots()
    assert plot_heatmap(analysis, ax=ax, colorbar=False) is fig
    plt.close(fig)


def test_bad_arguments(analysis):
    with pytest.raises(ValueError, match="`width_index`"):
        plot_heatmap(analysis, width_index=9)
    with pytest.raises(ValueError, match="`view`"):
        plot_heatmap(analysis, view="sideways")


# ------------------------------------------------------------- spectra over training, several runs
from freqlens.plots import (  # noqa: E402
    plot_band_spectrum,
    plot_convergence_spectrum,
    plot_defense_comparison,
    plot_frequency_ratios,
    plot_projection_spectrum,
    save_figure,
)

SPECTRUM_PLOTS = (plot_band_spectrum, plot_convergence_spectrum, plot_frequency_ratios, plot_projection_spectrum)


@pytest.mark.parametrize("plot", SPECTRUM_PLOTS)
@pytest.mark.parametrize("view", ["joint", "separate"])
def test_spectrum_plots_render_in_both_views(analysis, plot, view, tmp_path):
    fig = plot(analysis) if plot is plot_projection_spectrum else plot(analysis, view=view)
    fig.savefig(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 0
    plt.close(fig)


@pytest.mark.parametrize("plot", SPECTRUM_PLOTS)
def test_spectrum_plots_with_a_single_snapshot(plot, tmp_path):
    single = analyse(make_trajectory(steps=np.array([0])), num_widths=3)
    fig = plot(single)
    fig.savefig(tmp_path / "single.png")
    plt.close(fig)


def test_band_spectrum_masks_undefined_bands(analysis):
    # separate view: the all-target backdoor set has only its lowest band defined
    fig = plot_band_spectrum(analysis, view="separate", probe_set="backdoor")
    data = fig.axes[0].collections[0].get_array().reshape(analysis.widths.size + 1, -1)
    assert not data.mask[0].any() and data.mask[1:].all()
    plt.close(fig)


def test_band_spectrum_all_nan_gets_a_note(analysis):
    import copy

    broken = copy.deepcopy(analysis)
    broken.curves["joint"]["clean"].bands[:] = np.nan
    fig = plot_band_spectrum(broken, probe_set="clean")
    assert any("undefined (NaN)" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def test_convergence_spectrum_one_line_per_set_and_run(analysis):
    later = analyse(make_trajectory(backdoor_at=150.0), num_widths=4)
    fig = plot_convergence_spectrum({"vanilla": analysis, "muscle": later})
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["vanilla: clean", "vanilla: backdoor", "muscle: clean", "muscle: backdoor"]
    styles = {line.get_label().split(":")[0]: line.get_linestyle() for line in fig.axes[0].lines}
    assert styles["vanilla"] != styles["muscle"]
    backdoor = {line.get_label(): line.get_ydata() for line in fig.axes[0].lines if "backdoor" in line.get_label()}
    assert backdoor["muscle: backdoor"][0] > backdoor["vanilla: backdoor"][0]  # learned later
    plt.close(fig)


def test_convergence_spectrum_notes_bands_that_never_converged(analysis):
    fig = plot_convergence_spectrum(analysis, view="separate")  # backdoor high bands are undefined
    notes = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "never converged / undefined" in notes and "backdoor" in notes
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    note = next(t for t in fig.axes[0].texts if "never converged" in t.get_text()).get_window_extent(renderer)
    assert not note.overlaps(fig.axes[0].get_window_extent(renderer))  # off the lines
    assert not note.overlaps(fig.axes[0].xaxis.label.get_window_extent(renderer))
    plt.close(fig)


def test_frequency_ratios_draw_the_recorded_lfr_and_hfr(analysis):
    fig = plot_frequency_ratios(analysis, width_index=0)
    lines = {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in fig.axes[0].lines}
    np.testing.assert_allclose(lines["clean LFR"], analysis.curves["joint"]["clean"].lfr[:, 0])
    np.testing.assert_allclose(lines["backdoor HFR"], analysis.curves["joint"]["backdoor"].hfr[:, 0])
    assert fig.axes[0].get_ylim()[1] >= max(v.max() for v in lines.values())  # nothing clipped
    plt.close(fig)


def _rows(seeds=3):
    return [{"attack": attack, "defense": defense, "seed": seed, "cacc": 0.8 + 0.01 * seed,
             "asr": 0.9 if defense == "vanilla" else 0.1, "false_trigger_rate": 0.1}
            for attack in ("badnets", "addsent") for defense in ("vanilla", "muscle") for seed in range(seeds)]


def test_defense_comparison_one_panel_per_metric_with_seed_spread(tmp_path):
    fig = plot_defense_comparison(_rows())
    assert [ax.get_title() for ax in fig.axes[:3]] == ["CACC", "ASR", "false-trigger rate"]
    assert any(len(ax.lines) > 0 for ax in fig.axes[:3])  # error bars over the seeds
    written = save_figure(fig, tmp_path / "comparison")
    assert [p.suffix for p in written] == [".pdf", ".png"] and all(p.stat().st_size > 0 for p in written)
    plt.close(fig)


def test_defense_comparison_single_seed_and_missing_metric():
    rows = [{**r, "false_trigger_rate": None} for r in _rows(seeds=1)]
    fig = plot_defense_comparison(rows)
    assert any("not measured" in t.get_text() for t in fig.axes[2].texts)
    plt.close(fig)


def test_defense_comparison_bad_rows():
    with pytest.raises(ValueError, match="at least one result row"):
        plot_defense_comparison([])
    with pytest.raises(ValueError, match="'asr' column"):
        plot_defense_comparison([{"attack": "a", "defense": "d", "cacc": 0.5}])


def test_spectrum_plot_bad_arguments(analysis):
    with pytest.raises(ValueError, match="`probe_set` to be one of"):
        plot_band_spectrum(analysis, probe_set="nope")
    with pytest.raises(ValueError, match="`view` to be one of"):
        plot_frequency_ratios(analysis, view="nope")
    with pytest.raises(ValueError, match="at least one analysis"):
        plot_convergence_spectrum({})


# ------------------------------------------------------------- what a reader sees: limits, labels, legends
STEP_PLOTS = {  # every figure with training steps on x: (draw, drawn as cells around the steps)
    "heatmap": (lambda a: plot_heatmap(a, view="separate"), True),
    "heatmaps": (lambda a: plot_heatmaps(a, view="separate"), True),
    "error_curves": (lambda a: plot_error_curves(a), False),
    "band_spectrum": (lambda a: plot_band_spectrum(a), True),
    "frequency_ratios": (lambda a: plot_frequency_ratios(a), False),
    "projection_spectrum": (lambda a: plot_projection_spectrum(a), True),
}


@pytest.mark.parametrize("name", sorted(STEP_PLOTS))
@pytest.mark.parametrize("steps", [None, np.array([0, 5, 10, 15, 20]), np.array([3])],
                         ids=["log-spaced", "linear", "single"])
def test_step_axis_runs_over_the_recorded_steps_never_below_zero(name, steps):
    draw, cells = STEP_PLOTS[name]
    analysis = analyse(make_trajectory(steps=steps), num_widths=3)
    fig = draw(analysis)
    first, last = float(analysis.steps[0]), float(analysis.steps[-1])
    for ax in fig.axes:
        if ax.get_xlabel() != "training step":
            continue  # colour bars
        low, high = ax.get_xlim()
        assert low >= 0.0
        if analysis.steps.size > 1 and not cells:
            assert (low, high) == (first, last)
        else:  # cells: from the first cell's edge (clamped at 0) to the last cell's
            assert low <= first and last <= high <= last + max(0.5, (last - first) / 2)
            assert low >= max(0.0, first - max(0.5, (last - first) / 2))
    plt.close(fig)


def _inside(extent, box, slack=1.0) -> bool:
    return (extent.x0 >= box.x0 - slack and extent.y0 >= box.y0 - slack
            and extent.x1 <= box.x1 + slack and extent.y1 <= box.y1 + slack)


def test_separate_heatmap_legend_is_outside_the_rows(analysis):
    for fig in (plot_heatmap(analysis, view="separate"), plot_heatmaps(analysis, view="separate")):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in [a for a in fig.axes if a.get_legend() is not None]:
            legend = ax.get_legend().get_window_extent(renderer)
            rows = ax.get_window_extent(renderer)
            assert not legend.overlaps(rows), "the NaN legend covers heat-map rows"
            assert _inside(legend, fig.bbox)
        plt.close(fig)


ALL_PLOTS = {
    **{name: draw for name, (draw, _) in STEP_PLOTS.items()},
    "convergence_spectrum": lambda a: plot_convergence_spectrum(a, view="separate"),  # with its note
    "defense_comparison": lambda a: plot_defense_comparison(_rows()),
    "speed_spectrum": lambda a: plot_speed_spectrum({"vanilla": a, "muscle (3 seeds)": [a, a, a]}),
    "speed_beside_baseline": lambda a: plot_speed_beside_baseline({"vanilla": a, "muscle (3 seeds)": [a, a, a],
                                                                   "lora": a}),
    "static_spectrum": lambda a: plot_static_spectrum(a),
    "mode_heatmap": lambda a: plot_mode_heatmap(a),
}


@pytest.mark.parametrize("name", sorted(ALL_PLOTS))
def test_no_label_title_or_legend_is_cut_off(analysis, name):
    fig = ALL_PLOTS[name](analysis)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig.get_suptitle() and fig._suptitle]  # noqa: SLF001 (the figure's own title artist)
    for ax in fig.axes:
        texts += [ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax.get_legend(), *ax.texts]  # noqa: SLF001
    for artist in [t for t in texts if t and (not hasattr(t, "get_text") or t.get_text())]:
        extent = artist.get_window_extent(renderer)
        assert _inside(extent, fig.bbox), f"{name}: {getattr(artist, 'get_text', lambda: artist)()!r} is cut off"
    plt.close(fig)


def test_defense_comparison_panels_say_what_they_count():
    fig = plot_defense_comparison(_rows())
    labels = [ax.get_ylabel() for ax in fig.axes[:3]]
    assert all(labels) and len(set(labels)) == 3 and all("(0–1)" in label for label in labels)
    legend = fig.axes[2].get_legend()
    assert sorted(t.get_text() for t in legend.get_texts()) == ["addsent", "badnets"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert not any(legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    plt.close(fig)


def test_defense_comparison_shows_a_run_without_metrics_as_not_measured():
    rows = _rows(seeds=1)[:2] + [{"attack": "badnets", "defense": "muscle (partial)", "cacc": None, "asr": None,
                                  "false_trigger_rate": None}]
    fig = plot_defense_comparison(rows)
    for ax in fig.axes[:3]:
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert "muscle (partial)" in ticks
        notes = [t for t in ax.texts if "not\nmeasured" in t.get_text()]
        assert len(notes) == 1 and notes[0].get_position()[0] == ticks.index("muscle (partial)")
    plt.close(fig)


def test_saved_figures_keep_everything_inside(analysis, tmp_path):
    fig = plot_frequency_ratios(analysis)
    fig.set_size_inches(3.0, 1.6)  # too small for its labels: saving must still not cut them
    pdf, png = save_figure(fig, tmp_path / "ratios")
    from matplotlib.image import imread

    image = imread(png)
    assert image.shape[1] > 3.0 * 150  # the saved canvas grew to hold the labels
    plt.close(fig)


# ------------------------------------------------- the eigenmode figures (issue 13, item 8)
def test_speed_spectrum_one_line_and_interval_per_run_per_probe_set(analysis):
    fig = plot_speed_spectrum({"vanilla": analysis, "muscle": analysis})
    backdoor, clean = fig.axes[:2]
    assert backdoor.get_title() == "backdoor probes" and clean.get_title() == "clean probes"
    speeds = analysis.speeds["joint"]["backdoor"]["modes"]
    for ax in (backdoor, clean):
        assert len(ax.lines) == 2 and len(ax.collections) == 2  # a line and its interval per run
    np.testing.assert_allclose(backdoor.lines[0].get_ydata(), speeds.estimate)
    band = backdoor.collections[0].get_paths()[0].vertices[:, 1]
    assert np.nanmin(band) == pytest.approx(np.nanmin(speeds.low)) and np.nanmax(band) == pytest.approx(
        np.nanmax(speeds.high))
    labels = [t.get_text() for t in clean.get_legend().get_texts()]
    assert labels == ["vanilla (95% CI)", "muscle (95% CI)"]
    plt.close(fig)


def test_speed_spectrum_of_seeds_is_their_mean_and_spread(analysis):
    other = analyse(make_trajectory(backdoor_at=60.0, seed=1), num_widths=4)
    fig = plot_speed_spectrum({"vanilla": [analysis, other]}, family="low")
    ax = fig.axes[0]
    a, b = (x.speeds["joint"]["backdoor"]["low"].estimate for x in (analysis, other))
    np.testing.assert_allclose(ax.lines[0].get_ydata(), (a + b) / 2)
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    sd = np.std([a, b], axis=0, ddof=1)
    assert np.nanmax(band) == pytest.approx(np.nanmax((a + b) / 2 + sd))
    assert "±1 sd over 2 seeds" in fig.axes[1].get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_static_spectrum_one_panel_per_input_space_with_the_flat_reference(analysis):
    fig = plot_static_spectrum(analysis)
    assert len(fig.axes) == len(analysis.static_spectra)
    ax = fig.axes[0]
    spectrum = next(iter(analysis.static_spectra.values()))
    drawn = {line.get_label(): line.get_ydata() for line in ax.lines}
    np.testing.assert_allclose(drawn["backdoor (poison flag)"], spectrum.shares["backdoor"])
    assert "flat spectrum" in drawn and f"{float(spectrum.low_share['backdoor'].estimate):.2f}" in ax.get_title()
    plt.close(fig)


def test_mode_heatmap_draws_each_sets_band_errors(analysis):
    fig = plot_mode_heatmap(analysis)
    names = [analysis.roles["backdoor"], analysis.roles["clean"]]
    for ax, name in zip(fig.axes, names):
        data = ax.collections[0].get_array().reshape(-1, analysis.steps.size)
        np.testing.assert_allclose(np.ma.filled(data, np.nan), analysis.modes.errors[name].T, equal_nan=True)
    plt.close(fig)


def test_eigenmode_figures_refuse_an_analysis_without_them(analysis):
    import dataclasses

    bare = dataclasses.replace(analysis, modes=None, static_spectra={}, speeds={})
    with pytest.raises(ValueError, match="eigenmode spectrum"):
        plot_mode_heatmap(bare)
    with pytest.raises(ValueError, match="static target spectra"):
        plot_static_spectrum(bare)
    with pytest.raises(ValueError, match="`spaces`"):
        plot_static_spectrum(analysis, spaces=["hidden:7"])
    with pytest.raises(ValueError, match="`family`"):
        plot_speed_spectrum(analysis, family="wavelets")
    with pytest.raises(ValueError, match="at least one"):
        plot_speed_spectrum({})
    with pytest.raises(ValueError, match="re-analyse"):
        plot_speed_spectrum(bare)


def test_seeds_with_other_bands_are_drawn_one_by_one_and_methods_never_mixed(analysis):
    from tests.synthetic import make_trajectory as make

    small = make(seed=1)
    for field in ("inputs", "labels", "outputs"):
        for name in ("clean", "backdoor", "control"):
            getattr(small, field)[name] = getattr(small, field)[name][..., :8, :] if field == "outputs" \
                else getattr(small, field)[name][:8]
    other = analyse(small, num_widths=4)
    assert not np.array_equal(other.modes.edges, analysis.modes.edges)
    fig = plot_speed_spectrum({"cfg": [analysis, other]})
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        "cfg [1] (95% CI)", "cfg [2] (95% CI)"]
    assert "not averaged" in fig.get_suptitle()
    plt.close(fig)
    half = analyse(make(), num_widths=4, speed="half_drop")
    with pytest.raises(ValueError, match="one learning-speed method"):
        plot_speed_spectrum({"area": analysis, "half": half})


def _small(seed: int = 1):
    """An analysis of a trajectory with 8 probes per set: other eigenmode bands than the fixture's."""
    small = make_trajectory(seed=seed)
    for field in ("inputs", "labels", "outputs"):
        for name in ("clean", "backdoor", "control"):
            getattr(small, field)[name] = getattr(small, field)[name][..., :8, :] if field == "outputs" \
                else getattr(small, field)[name][:8]
    return analyse(small, num_widths=4)


def test_each_defense_beside_the_baseline_one_row_each_baseline_grey_same_axes(analysis):
    slower = analyse(make_trajectory(backdoor_at=60.0, seed=1), num_widths=4)
    third = analyse(make_trajectory(backdoor_at=30.0, seed=2), num_widths=4)
    fig = plot_speed_beside_baseline({"vanilla": analysis, "muscle": [slower, third], "lora": slower})
    assert len(fig.axes) == 4  # two defenses x (backdoor, clean)
    assert [ax.get_title() for ax in fig.axes] == ["muscle: backdoor probes", "muscle: clean probes",
                                                   "lora: backdoor probes", "lora: clean probes"]
    shared = fig.axes[0].get_shared_y_axes()
    assert all(shared.joined(fig.axes[0], ax) for ax in fig.axes)  # one speed scale for every panel
    for ax, role in zip(fig.axes, ("backdoor", "clean") * 2):
        grey, line = ax.lines
        assert grey.get_color() == "0.45" and line.get_color() != grey.get_color()
        np.testing.assert_allclose(grey.get_ydata(), analysis.speeds["joint"][analysis.roles[role]]["modes"].estimate)
    mine = [x.speeds["joint"]["backdoor"]["modes"].estimate for x in (slower, third)]
    np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), np.mean(mine, axis=0))
    np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(), mine[0])
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        "vanilla (95% CI)", "muscle (±1 sd over 2 seeds)"]
    assert "beside vanilla (grey)" in fig.get_suptitle()
    plt.close(fig)


def test_beside_the_baseline_runs_with_other_bands_are_left_out_or_drawn_alone(analysis):
    other = _small()
    fig = plot_speed_beside_baseline({"vanilla": analysis, "mixed": [other, analysis], "apart": other})
    mixed, apart = fig.axes[0], fig.axes[2]
    assert "1 of 2 runs left out" in mixed.get_title() and len(mixed.lines) == 2
    np.testing.assert_allclose(mixed.lines[1].get_ydata(), analysis.speeds["joint"]["backdoor"]["modes"].estimate)
    assert "drawn alone" in apart.get_title() and len(apart.lines) == 1  # no grey line to compare with
    np.testing.assert_allclose(apart.lines[0].get_ydata(), other.speeds["joint"]["backdoor"]["modes"].estimate)
    plt.close(fig)
    with pytest.raises(ValueError, match="a baseline and at least one other"):
        plot_speed_beside_baseline({"vanilla": analysis})
    with pytest.raises(ValueError, match="`family`"):
        plot_speed_beside_baseline({"vanilla": analysis, "m": analysis}, family="wavelets")
    import dataclasses

    with pytest.raises(ValueError, match="baseline 'vanilla' to have backdoor and clean"):
        plot_speed_beside_baseline({"vanilla": dataclasses.replace(analysis, speeds={}), "m": analysis})
