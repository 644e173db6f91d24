import json

import numpy as np
import pytest

from freqlens import analyse
from freqlens.analysis import _verdict
from freqlens.recording.storage import write_json
from tests.synthetic import make_trajectory


@pytest.mark.parametrize(
    ("backdoor_at", "clean_at", "expected"),
    [(10.0, 100.0, "backdoor first"), (100.0, 10.0, "clean first")],
)
def test_verdict_follows_the_order_of_learning(backdoor_at, clean_at, expected):
    analysis = analyse(make_trajectory(backdoor_at, clean_at), num_widths=4)
    assert set(analysis.verdicts("joint")) == {expected}
    assert set(analysis.verdicts("separate")) == {expected}


def test_separate_view_backdoor_high_is_undefined_joint_view_is_not():
    analysis = analyse(make_trajectory(), num_widths=4)
    assert np.all(np.isnan(analysis.curves["separate"]["backdoor"].high))
    assert np.all(np.isfinite(analysis.curves["joint"]["backdoor"].high))
    assert np.all(np.isfinite(analysis.curves["separate"]["clean"].high))
    assert set(analysis.curves) == {"separate", "joint"}
    assert set(analysis.curves["joint"]) == {"clean", "backdoor"}


def test_shapes_roles_and_widths():
    trajectory = make_trajectory()
    analysis = analyse(trajectory, num_widths=5, num_frequencies=7)
    t = trajectory.steps.size
    assert analysis.roles == {"clean": "clean", "backdoor": "backdoor", "control": "control"}
    assert analysis.widths.shape == (5,) and np.all(np.diff(analysis.widths) < 0)
    curves = analysis.curves["separate"]["clean"]
    assert curves.low.shape == (t, 5) and curves.bands.shape == (t, 6) and curves.lfr.shape == (t, 5)
    frequencies, errors = analysis.projection["clean"]
    assert frequencies.shape == (7,) and errors.shape == (t, 7)
    assert analysis.convergence["joint"]["clean"]["low"].shape == (5,)


def test_given_widths_are_used_widest_first():
    analysis = analyse(make_trajectory(), widths=[1.0, 4.0, 2.0])
    np.testing.assert_array_equal(analysis.widths, [4.0, 2.0, 1.0])


def test_results_are_written_as_strict_json(tmp_path):
    payload = analyse(make_trajectory(), num_widths=3).to_dict()
    write_json(tmp_path / "analysis.json", payload)

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    loaded = json.loads((tmp_path / "analysis.json").read_text(), parse_constant=reject)
    assert loaded["convergence_steps"]["separate"]["backdoor"]["high"] == [None, None, None]
    assert loaded["summary"]["joint"]["statement"]


def test_absolute_threshold_option():
    analysis = analyse(make_trajectory(), num_widths=3, threshold=1e-6, relative=False)
    assert set(analysis.verdicts()) == {"neither converged"}
    assert "did NOT" in analysis.summary()["joint"]["statement"]


@pytest.mark.parametrize(
    ("backdoor", "clean", "expected"),
    [
        (5.0, 10.0, "backdoor first"),
        (10.0, 5.0, "clean first"),
        (5.0, 5.0, "tie"),
        (5.0, np.nan, "backdoor only"),
        (np.nan, 5.0, "clean only"),
        (np.nan, np.nan, "neither converged"),
    ],
)
def test_verdict_cases(backdoor, clean, expected):
    assert _verdict(backdoor, clean) == expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="`distance`"):
        analyse(make_trajectory(), distance="l1")
    with pytest.raises(ValueError, match="`reduction`"):
        analyse(make_trajectory(), reduction="max")


def test_analysis_and_trajectory_show_themselves_in_a_notebook():
    import matplotlib.pyplot as plt

    trajectory = make_trajectory()
    analysis = analyse(trajectory, num_widths=3)
    assert "steps=14" in repr(trajectory) and "clean: 30" in repr(trajectory)
    assert "<table>" in trajectory._repr_html_()
    page = analysis._repr_html_()
    assert "joint view:" in page and "convergence steps, separate view" in page
    assert repr(analysis).startswith("SpectralAnalysis(snapshots=14, widths=3")
    for kind in analysis.PLOTS:
        plt.close(analysis.plot(kind))
    with pytest.raises(ValueError, match="`kind` to be one of"):
        analysis.plot("pie")


@pytest.mark.parametrize(("backdoor_at", "clean_at"), [(10.0, 100.0), (100.0, 10.0)])
def test_learning_speeds_order_the_mappings_as_they_were_learned(backdoor_at, clean_at):
    analysis = analyse(make_trajectory(backdoor_at, clean_at), num_widths=4)
    speeds = analysis.learning_speeds("joint")
    backdoor, clean = speeds["backdoor"]["low"], speeds["clean"]["low"]
    assert backdoor.shape == clean.shape == (4,) and speeds["clean"]["bands"].shape == (5,)
    assert np.all(backdoor > clean) if backdoor_at < clean_at else np.all(backdoor < clean)
    assert analysis.to_dict()["learning_speeds"]["joint"]["clean"]["low"]["estimate"] == pytest.approx(clean.tolist())


def test_a_curve_that_never_converges_still_has_a_learning_speed():
    """Learned after the last snapshot: no convergence step, but a speed from its partial drop."""
    late = analyse(make_trajectory(backdoor_at=150.0, clean_at=1e6), num_widths=4)
    assert np.all(np.isnan(late.convergence["joint"]["clean"]["low"]))
    speed = late.learning_speeds("joint")["clean"]["low"]
    assert np.all(np.isfinite(speed))
    undefined = late.learning_speeds("separate")["backdoor"]["high"]  # no high part: NaN, not a number
    assert np.all(np.isnan(undefined))
    assert np.all(np.isnan(late.to_dict()["learning_speeds"]["separate"]["backdoor"]["high"]["estimate"]))
