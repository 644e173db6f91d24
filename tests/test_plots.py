import matplotlib.pyplot as plt
import numpy as np
import pytest

from freqlens import analyse
from freqlens.plots import plot_error_curves, plot_heatmap, plot_heatmaps
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
