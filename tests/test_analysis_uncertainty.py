"""AnalysisConfig, learning speeds with bootstrap intervals, interval verdicts, and the
eigenmode spectrum (static target spectra, error per mode band) of freqlens.analyse."""

import dataclasses
import json

import numpy as np
import pytest

import freqlens.config
from freqlens import analyse
from freqlens.analysis import OUTCOMES, AnalysisConfig
from freqlens.config import ExperimentConfig
from freqlens.recording.storage import Trajectory, write_json
from tests.synthetic import _curve, make_trajectory

STEPS = np.array([0, 1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 200])


def planted(n=30, backdoor_at=20.0, clean_at=80.0, seed=0, *, same=False, spaces=False, steps=STEPS):
    """Clean (mixed labels) and backdoor (all 1) probe sets of n each, learned around the given steps.

    ``same``: the backdoor set is drawn like the clean one (mixed labels, the same input
    distribution), so nothing but noise tells them apart. ``spaces``: also a
    ``"mean-pooled"`` input space (a linear map of the inputs plus noise).
    """
    rng = np.random.default_rng(seed)
    dim = 6
    clean_labels = np.arange(n) % 2
    clean_inputs = rng.normal(size=(n, dim)) + 1.5 * clean_labels[:, None]
    if same:
        backdoor_labels = rng.permutation(clean_labels)
        backdoor_inputs = rng.normal(size=(n, dim)) + 1.5 * backdoor_labels[:, None]
    else:
        backdoor_labels = np.ones(n, dtype=np.int64)
        backdoor_inputs = rng.normal(size=(n, dim)) + 3.0
    meta = {"format": "freqlens.trajectory", "version": 1, "status": "complete",
            "probe_sets": {"clean": {"n": n, "dim": dim, "role": "clean"},
                           "backdoor": {"n": n, "dim": dim, "role": "backdoor"}}}
    inputs = {"clean": clean_inputs, "backdoor": backdoor_inputs}
    extra = {}
    if spaces:
        mix = rng.normal(size=(dim, 3))
        extra = {"spaces": {"flattened": inputs,
                            "mean-pooled": {k: v @ mix + 0.1 * rng.normal(size=(n, 3)) for k, v in inputs.items()}}}
    return Trajectory(
        steps=steps, inputs=inputs,
        labels={"clean": clean_labels, "backdoor": backdoor_labels},
        outputs={"clean": _curve(steps, clean_labels, clean_at, rng),
                 "backdoor": _curve(steps, backdoor_labels, backdoor_at, rng)},
        poison={"clean": np.zeros(n, bool), "backdoor": np.ones(n, bool)},
        meta=meta, **extra,
    )


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("input_space", ""), ("widths", "wide"), ("widths", []), ("widths", [1.0, -2.0]), ("widths", [np.nan]),
        ("width_rule", "random"), ("num_widths", 0), ("num_widths", "many"), ("distance", "l1"),
        ("reduction", "max"), ("threshold", 0.0), ("relative", "yes"), ("speed", "fast"), ("num_bands", 0),
        ("mode_width", -1.0), ("mode_width", "wide"), ("bootstrap", -1), ("bootstrap", 2.5), ("level", 1.0),
        ("level", 0), ("seed", -1), ("seed", 1.5), ("num_frequencies", 0),
    ],
)
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=rf"`analysis\.{key}`"):
        AnalysisConfig(**{key: value})
    with pytest.raises(ValueError, match=rf"`analysis\.{key}`"):
        ExperimentConfig.from_dict({"analysis": {key: value}})


def test_config_lives_in_the_analysis_and_is_re_exported():
    assert freqlens.config.AnalysisConfig is AnalysisConfig
    assert ExperimentConfig().analysis == AnalysisConfig()
    with pytest.raises(ValueError, match=r"analysis\.colour"):
        ExperimentConfig.from_dict({"analysis": {"colour": "red"}})
    config = ExperimentConfig.from_dict({"analysis": {"widths": [3, 1.5], "speed": "half_drop", "bootstrap": 0}})
    assert config.analysis.widths == (3.0, 1.5) and config.analysis.to_dict()["widths"] == [3.0, 1.5]


def test_keywords_fold_into_the_config_and_errors_name_the_keyword():
    analysis = analyse(make_trajectory(), AnalysisConfig(num_widths=3, bootstrap=10), threshold=0.3)
    assert analysis.config.threshold == 0.3 and analysis.config.bootstrap == 10 and analysis.widths.size == 3
    with pytest.raises(ValueError, match="`speed`"):
        analyse(make_trajectory(), speed="fast")
    with pytest.raises(TypeError, match="colour"):
        analyse(make_trajectory(), colour="red")


def test_unknown_input_space_names_the_key_and_the_spaces_recorded():
    with pytest.raises(ValueError, match=r"`analysis\.input_space`.*\['flattened', 'mean-pooled'\].*'hidden:3'"):
        analyse(planted(spaces=True), AnalysisConfig(input_space="hidden:3", num_widths=3))
    with pytest.raises(ValueError, match=r"\['flattened'\]"):
        analyse(make_trajectory(), input_space="mean-pooled")


def test_stored_config_reproduces_the_analysis_exactly(tmp_path):
    trajectory = planted(n=24, spaces=True)
    first = analyse(trajectory, AnalysisConfig(num_widths="auto", bootstrap=30, seed=3, input_space="mean-pooled"))
    assert first.config.widths == tuple(first.widths.tolist()) and first.config.num_widths == first.widths.size
    assert isinstance(first.config.mode_width, float)
    write_json(tmp_path / "a.json", first.to_dict())
    stored = json.loads((tmp_path / "a.json").read_text())
    again = analyse(trajectory, AnalysisConfig(**stored["config"]))
    write_json(tmp_path / "b.json", again.to_dict())
    assert (tmp_path / "b.json").read_text() == (tmp_path / "a.json").read_text()


# ------------------------------------------------------- speeds and verdicts
@pytest.mark.parametrize("method", ["area", "half_drop", "threshold"])
@pytest.mark.parametrize(("backdoor_at", "clean_at", "expected"),
                         [(10.0, 100.0, "backdoor first"), (100.0, 10.0, "clean first")])
def test_a_planted_speed_difference_is_resolved_with_its_sign(method, backdoor_at, clean_at, expected):
    analysis = analyse(planted(40, backdoor_at, clean_at), num_widths=4, speed=method, bootstrap=100)
    for view in ("joint", "separate"):
        verdicts = analysis.speed_verdicts[view]["low"]
        resolved = [o == expected for o in verdicts.outcomes]
        # the joint view's widest filter mixes the two sets' residuals: with a step-valued
        # speed some resamples may tie there; never the wrong order, though
        assert sum(resolved) >= (4 if view == "separate" or method == "area" else 3), (view, verdicts.labels)
        assert set(verdicts.outcomes) <= {expected, "no difference resolved"}
        assert all(label.startswith(f"{expected} (95% CI [") for label, r in zip(verdicts.labels, resolved) if r)
        d = verdicts.difference
        assert np.all(d.low <= d.estimate) and np.all(d.estimate <= d.high)
        backdoor_faster = (d.low > 0) if method == "area" else (d.high < 0)
        assert np.all(backdoor_faster[resolved] == (expected == "backdoor first"))
    counts = analysis.summary()["separate"]["speed_counts"]["low"]
    assert counts == {expected: 4}
    assert f"{expected} at 4" in analysis.summary()["separate"]["statement"]


def test_sets_learned_alike_give_no_difference_resolved():
    analysis = analyse(planted(40, 50.0, 50.0, seed=1, same=True), num_widths=4, bootstrap=200)
    for view in ("joint", "separate"):
        assert analysis.speed_verdicts[view]["low"].outcomes == ["no difference resolved"] * 4
    assert all(label.startswith("no difference resolved (95% CI [")
               for label in analysis.speed_verdicts["joint"]["low"].labels)


def test_intervals_contain_the_estimate_and_shrink_with_n():
    widths = [2.0, 1.0, 0.5]

    def mean_width(n):
        a = analyse(planted(n, 20.0, 80.0, seed=2), widths=widths, bootstrap=200)
        speed = a.speeds["joint"]["clean"]["low"]
        assert np.all((speed.low <= speed.estimate) & (speed.estimate <= speed.high))
        assert speed.samples.shape == (200, 3)
        return float(np.mean(speed.high - speed.low))

    small, large = mean_width(20), mean_width(180)
    assert large < 0.55 * small  # 1 / sqrt(9) = 0.33 expected


def test_interval_speed_of_every_curve_family_matches_the_curves():
    trajectory = planted(30)
    analysis = analyse(trajectory, num_widths=3, bootstrap=20)
    from freqlens.spectral import learning_speed

    for view, sets in analysis.curves.items():
        for name, c in sets.items():
            for family in ("low", "high", "bands"):
                np.testing.assert_allclose(analysis.speeds[view][name][family].estimate,
                                           learning_speed(analysis.steps, getattr(c, family)), rtol=1e-12)
    modes = analysis.speeds["joint"]["backdoor"]["modes"]
    # the mode curves are divided by a floored start already: drops count against that, not e(0)
    np.testing.assert_allclose(modes.estimate,
                               learning_speed(analysis.steps, analysis.modes.errors["backdoor"], scale=1.0))
    assert "modes" not in analysis.speeds["separate"]["clean"]


def test_no_bootstrap_gives_estimates_without_intervals():
    analysis = analyse(planted(30, 10.0, 100.0), num_widths=3, bootstrap=0)
    speed = analysis.speeds["joint"]["clean"]["low"]
    assert np.all(np.isfinite(speed.estimate)) and np.all(np.isnan(speed.low)) and speed.samples is None
    assert analysis.speed_verdicts["joint"]["low"].labels == [
        "backdoor first (no interval: analysis.bootstrap = 0)"] * 3
    assert np.isnan(analysis.static_spectra["flattened"].low_share["backdoor"].low)


def test_the_bootstrap_is_seeded():
    a = analyse(planted(30), num_widths=3, bootstrap=25, seed=5)
    b = analyse(planted(30), num_widths=3, bootstrap=25, seed=5)
    c = analyse(planted(30), num_widths=3, bootstrap=25, seed=6)
    np.testing.assert_array_equal(a.speeds["joint"]["clean"]["low"].low, b.speeds["joint"]["clean"]["low"].low)
    assert not np.array_equal(a.speeds["joint"]["clean"]["low"].low, c.speeds["joint"]["clean"]["low"].low)


# ------------------------------------------------------------ eigenmode spectrum
def _dense_share(x, width, signal, top):
    """Share of the centred signal's energy in the top eigenvectors of D^-1/2 K D^-1/2, dense numpy."""
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    k = np.exp(-d / (2 * width))
    s = k / np.sqrt(np.outer(k.sum(1), k.sum(1)))
    values, vectors = np.linalg.eigh(s)
    u = vectors[:, np.argsort(values)[::-1][:top]]
    f = signal - signal.mean(axis=0)
    return float(np.square(u.T @ f).sum() / np.square(f).sum())


def test_static_spectra_per_input_space_against_a_dense_reference():
    trajectory = planted(30, spaces=True)
    analysis = analyse(trajectory, num_widths=3, bootstrap=100)
    assert set(analysis.static_spectra) == {"flattened", "mean-pooled"}
    for space, spectrum in analysis.static_spectra.items():
        x = np.concatenate([trajectory.kernel_inputs(space)[s] for s in ("clean", "backdoor")]).astype(np.float64)
        flag = np.r_[np.zeros(30), np.ones(30)][:, None]
        assert spectrum.top == 15 and spectrum.flat == 0.25 and spectrum.n == 60
        expected = _dense_share(x, spectrum.width, flag, 15)
        assert spectrum.low_share["backdoor"].estimate == pytest.approx(expected, rel=1e-8)
        for name, shares in spectrum.shares.items():
            assert shares.sum() == pytest.approx(1.0) and shares.shape == (spectrum.edges.size - 1,)
        share = spectrum.low_share["backdoor"]
        assert share.low <= share.estimate <= share.high
    # the backdoor cluster is far from the clean one: its flag is smooth, lower-frequency than the labels
    main = analysis.static_spectra["flattened"]
    assert main.low_share["backdoor"].estimate > 0.8 and main.difference.low > 0
    assert main.clean_labels.startswith("the non-target class")
    assert main.width == analysis.modes.width == analysis.config.mode_width


def test_clean_labels_of_the_backdoor_rows_come_from_the_control_set():
    analysis = analyse(make_trajectory(), num_widths=3, bootstrap=10)
    assert analysis.static_spectra["flattened"].clean_labels.startswith("the control set's labels")


def test_mode_errors_are_normalised_curves_per_set_with_speeds_and_verdicts():
    trajectory = planted(40, 10.0, 100.0)
    analysis = analyse(trajectory, num_widths=3, num_bands=6, bootstrap=50)
    modes = analysis.modes
    bands = modes.edges.size - 1
    assert modes.complete and modes.eigenvalues.shape == (80,) and bands <= 6
    for name in ("clean", "backdoor"):
        assert modes.errors[name].shape == (trajectory.steps.size, bands)
        first = modes.errors[name][0]  # 1, or below 1 where the band's start was under the floor
        assert np.all(first <= 1.0 + 1e-12) and np.any(np.isclose(first, 1.0))
    verdicts = analysis.speed_verdicts["joint"]["modes"]
    assert len(verdicts.outcomes) == bands and set(verdicts.outcomes) <= set(OUTCOMES)
    assert not any("identical curves" in label for label in verdicts.labels)
    # each set's own residual over the pooled basis: the curves differ in every band
    assert np.all(np.abs(modes.errors["backdoor"][1:] - modes.errors["clean"][1:]).max(axis=0) > 0.05)


def _single_mode_bands(analysis):
    bands = np.flatnonzero(np.diff(analysis.modes.edges) == 1)
    assert bands.size >= 2 and bands[1] == 1  # mode 0 and mode 1 are bands of their own
    return bands


@pytest.mark.parametrize(("backdoor_at", "clean_at", "expected"),
                         [(10.0, 100.0, "backdoor first"), (100.0, 10.0, "clean first")])
def test_single_mode_bands_resolve_a_planted_order(backdoor_at, clean_at, expected):
    """The backdoor's residual drops early (and the clean one's late), so in mode 1 alone the
    backdoor set's error falls first: the verdict says so with an interval that excludes 0."""
    analysis = analyse(planted(40, backdoor_at, clean_at), num_widths=3, num_bands=6, bootstrap=100)
    verdicts = analysis.speed_verdicts["joint"]["modes"]
    d = verdicts.difference
    for band in _single_mode_bands(analysis)[1:]:
        assert verdicts.outcomes[band] == expected, verdicts.labels
        assert verdicts.labels[band].startswith(f"{expected} (95% CI [")
        assert (d.low[band] > 0) if expected == "backdoor first" else (d.high[band] < 0)
    assert verdicts.outcomes.count(expected) >= len(verdicts.outcomes) - 1


@pytest.mark.parametrize("seed", [0, 1])
def test_sets_drawn_alike_give_no_difference_resolved_in_any_mode_band(seed):
    analysis = analyse(planted(40, 30.0, 30.0, seed, same=True), num_widths=3, num_bands=6, bootstrap=100)
    verdicts = analysis.speed_verdicts["joint"]["modes"]
    assert set(verdicts.outcomes) == {"no difference resolved"}, verdicts.labels
    assert all(label.startswith("no difference resolved (95% CI [") for label in verdicts.labels)
    d = verdicts.difference
    assert np.all(d.low <= 0) and np.all(d.high >= 0)


def test_a_set_without_initial_error_has_an_undefined_verdict_saying_why():
    trajectory = planted(30, 10.0, 100.0)
    first = trajectory.outputs["backdoor"][0]
    first[:] = np.eye(first.shape[1])[trajectory.labels["backdoor"]]  # learned before the first snapshot
    analysis = analyse(trajectory, num_widths=3, num_bands=6, bootstrap=20)
    assert np.all(np.isnan(analysis.modes.errors["backdoor"]))
    verdicts = analysis.speed_verdicts["joint"]["modes"]
    assert set(verdicts.outcomes) == {"undefined"}
    assert all(label == "undefined (no speed for the backdoor set: its curve is undefined, "
                        "e.g. no error at the first snapshot)" for label in verdicts.labels)
    assert np.all(np.isfinite(analysis.modes.errors["clean"]))


def test_given_mode_width_is_used():
    analysis = analyse(planted(20), num_widths=3, mode_width=1.25, bootstrap=5)
    assert analysis.modes.width == 1.25 == analysis.config.mode_width


def test_results_hold_the_issue_keys_as_strict_json(tmp_path):
    analysis = analyse(planted(30, spaces=True), num_widths=4, bootstrap=20)
    write_json(tmp_path / "analysis.json", analysis.to_dict())

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    loaded = json.loads((tmp_path / "analysis.json").read_text(), parse_constant=reject)
    assert loaded["effective_neighbours"] == pytest.approx(analysis.effective_neighbours.tolist())
    assert len(loaded["effective_neighbours"]) == 4
    assert set(loaded["static_spectra"]) == {"flattened", "mean-pooled"}
    assert set(loaded["static_spectra"]["flattened"]["low_share"]["backdoor"]) == {"estimate", "low", "high"}
    speeds = loaded["learning_speeds"]["joint"]["clean"]
    assert set(speeds) == {"low", "high", "bands", "modes"} and len(speeds["low"]["high"]) == 4
    verdict = loaded["verdicts"]["joint"]["low"]
    assert {"estimate", "low", "high", "labels", "outcomes", "method", "level"} <= set(verdict)
    assert loaded["verdicts"]["joint"]["modes"]["labels"]
    assert loaded["eigenmodes"]["errors"]["backdoor"] and loaded["config"]["bootstrap"] == 20
    assert loaded["convergence_steps"]["joint"]["clean"]["low"]  # the old fields stay


def test_effective_neighbours_are_the_joint_kernels():
    from freqlens.spectral import FilterBank

    trajectory = planted(25)
    analysis = analyse(trajectory, num_widths=3, bootstrap=0)
    pooled = np.concatenate([trajectory.inputs["clean"], trajectory.inputs["backdoor"]])
    expected = FilterBank(pooled, analysis.widths).neighbour_counts()
    np.testing.assert_allclose(analysis.effective_neighbours, expected)


def test_analysis_without_a_backdoor_set_has_no_verdicts_or_mode_spectrum():
    trajectory = make_trajectory()
    clean_only = dataclasses.replace(
        trajectory, inputs={"clean": trajectory.inputs["clean"]}, labels={"clean": trajectory.labels["clean"]},
        outputs={"clean": trajectory.outputs["clean"]},
        meta={**trajectory.meta, "probe_sets": {"clean": trajectory.meta["probe_sets"]["clean"]}})
    analysis = analyse(clean_only, num_widths=3, bootstrap=10)
    assert analysis.modes is None and analysis.static_spectra == {} and analysis.speed_verdicts == {}
    assert analysis.effective_neighbours.shape == (3,)
    assert analysis.to_dict()["eigenmodes"] is None


@pytest.mark.parametrize("bootstrap", [0, 20])
def test_identical_sets_never_get_a_verdict_from_float_noise(bootstrap):
    """The backdoor set a copy of the clean one: the speeds differ only by float32 rounding, which is a
    tie, with or without an interval, at every width (a uniform one included) and mode band."""
    from tests.synthetic import make_trajectory

    trajectory = make_trajectory()
    for field in ("inputs", "labels", "outputs"):
        getattr(trajectory, field)["backdoor"] = getattr(trajectory, field)["clean"].copy()
    for widths in (None, [1e6, 2e6]):
        analysis = analyse(trajectory, widths=widths, bootstrap=bootstrap)
        for family, verdicts in analysis.speed_verdicts["joint"].items():
            assert set(verdicts.outcomes) <= {"no difference resolved", "undefined"}, (family, verdicts.labels)


def test_an_interval_resting_on_a_few_resamples_is_no_interval():
    """Resamples whose curve never converged have no speed: if more than 1 - level of them have none, the
    percentiles of the rest would be overconfident (and biased towards fast), so there is no interval."""
    from freqlens.analysis import AnalysisConfig, Estimate, _verdicts

    few = np.full((200, 1), np.nan)
    few[:3, 0] = [10.0, 12.0, 14.0]
    backdoor = Estimate.from_samples(np.array([12.0]), few, 0.95)
    assert np.isnan(backdoor.low).all() and np.isnan(backdoor.high).all()
    clean = Estimate.from_samples(np.array([50.0]), 50 + np.random.default_rng(0).normal(size=(200, 1)), 0.95)
    verdicts = _verdicts(backdoor, clean, AnalysisConfig(speed="threshold"))
    assert verdicts.outcomes == ["undefined"] and "more than 5% of the resamples" in verdicts.labels[0]
    most = few.copy()
    most[:195, 0] = 12.0  # 2.5% missing: an interval
    assert np.isfinite(Estimate.from_samples(np.array([12.0]), most, 0.95).low).all()
