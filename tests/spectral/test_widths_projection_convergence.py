"""Width choice and checks, the projection view, and convergence steps."""

import warnings

import numpy as np
import pytest
import torch

from freqlens.spectral import (
    DegenerateTargetWarning,
    FilterBank,
    WidthCheck,
    WidthWarning,
    check_widths,
    convergence_steps,
    principal_projection,
    projection_spectrum,
    suggest_widths,
)

from . import reference as ref


def _unit_inputs(seed, n, dim=8):
    return np.random.default_rng(seed).normal(size=(n, dim))


# ----------------------------------------------------------------------- widths
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("n", [60, 150])
def test_suggested_widths_hit_log_spaced_neighbour_counts(distance, n):
    x = _unit_inputs(n, n)
    widths = suggest_widths(x, num=8, distance=distance)
    assert widths.shape == (8,)
    assert np.all(widths > 0) and np.all(np.diff(widths) < 0)
    counts = FilterBank(x, widths, distance=distance).neighbour_counts()
    # widest first: the neighbour counts run from N/2 down to 2
    targets = np.geomspace(2.0, n / 2.0, 8)[::-1]
    np.testing.assert_allclose(counts, targets, rtol=0.2)
    assert np.all(np.diff(counts) < 0)


def test_suggested_widths_follow_a_custom_neighbour_range_and_the_scale_of_the_data():
    x = _unit_inputs(1, 80)
    widths = suggest_widths(x, num=5, neighbours=(3.0, 10.0))
    counts = FilterBank(x, widths).neighbour_counts()
    np.testing.assert_allclose(counts, np.geomspace(3.0, 10.0, 5)[::-1], rtol=0.2)
    # euclidean widths scale with the inputs, squared widths with their square
    np.testing.assert_allclose(suggest_widths(7.0 * x, num=5, neighbours=(3.0, 10.0)),
                               7.0 * widths, rtol=1e-6)
    squared = suggest_widths(x, num=5, distance="squared")
    np.testing.assert_allclose(suggest_widths(7.0 * x, num=5, distance="squared"),
                               49.0 * squared, rtol=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_quantile_widths_are_halved_distance_quantiles(distance):
    x = _unit_inputs(2, 70)
    widths = suggest_widths(x, num=6, distance=distance, method="quantiles")
    d = ref.distances(x, distance)
    off_diagonal = d[~np.eye(len(d), dtype=bool)]
    assert widths.shape == (6,) and np.all(np.diff(widths) < 0)
    assert off_diagonal.min() / 2 <= widths.min() and widths.max() <= off_diagonal.max() / 2
    expected = np.quantile(off_diagonal, np.linspace(0.01, 0.5, 6))[::-1] / 2.0
    np.testing.assert_allclose(widths, expected, rtol=1e-6)
    custom = suggest_widths(x, num=3, distance=distance, method="quantiles",
                            quantiles=(0.2, 0.8))
    np.testing.assert_allclose(custom, np.quantile(off_diagonal, [0.8, 0.5, 0.2]) / 2.0,
                               rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    pytest.param(dict(num=0), r"`num`", id="num_zero"),
    pytest.param(dict(num=2.5), r"`num`", id="num_not_integer"),
    pytest.param(dict(method="random"), r"`method`", id="unknown_method"),
    pytest.param(dict(distance="l1"), r"`distance`", id="unknown_distance"),
    pytest.param(dict(neighbours=(0.5, 4.0)), r"`neighbours`", id="neighbours_below_one"),
    pytest.param(dict(neighbours=(4.0, 2.0)), r"`neighbours`", id="neighbours_reversed"),
    pytest.param(dict(neighbours=(2.0, 1000.0)), r"`neighbours`", id="neighbours_above_n"),
    pytest.param(dict(method="quantiles", quantiles=(0.5, 1.5)), r"`quantiles`",
                 id="quantiles_above_one"),
    pytest.param(dict(method="quantiles", quantiles=0.5), r"`quantiles`", id="quantiles_scalar"),
])
def test_suggest_widths_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        suggest_widths(_unit_inputs(3, 20), **kwargs)


def test_suggest_widths_rejects_too_few_or_identical_inputs():
    with pytest.raises(ValueError, match=r"`inputs`.*at least 3"):
        suggest_widths(_unit_inputs(4, 2))
    with pytest.raises(ValueError, match=r"`inputs`.*distinct"):
        suggest_widths(np.ones((10, 3)))
    with pytest.raises(ValueError, match=r"`inputs`.*2-D"):
        suggest_widths(np.arange(10.0))


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_check_widths_warns_when_no_width_is_useful(distance):
    x = _unit_inputs(5, 50)
    with pytest.warns(WidthWarning, match=r"suggest_widths"):
        check = check_widths(x, [1e-6, 1e6], distance=distance)
    assert isinstance(check, WidthCheck)
    assert check.status == ("identity", "uniform")
    assert check.n == 50
    np.testing.assert_array_equal(check.widths, [1e-6, 1e6])
    np.testing.assert_allclose(check.neighbours, [1.0, 50.0], rtol=1e-6)
    assert not check.useful.any()
    assert check.to_dict()["status"] == ["identity", "uniform"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", WidthWarning)
        check_widths(x, [1e-6, 1e6], distance=distance, warn=False)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_check_widths_accepts_suggested_widths_silently(distance):
    x = _unit_inputs(6, 50)
    widths = suggest_widths(x, num=6, distance=distance)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WidthWarning)
        check = check_widths(x, widths, distance=distance)
        from_bank = check_widths(FilterBank(x, widths, distance=distance))
    assert check.status == ("useful",) * 6 and check.useful.all()
    assert from_bank.status == check.status
    np.testing.assert_allclose(from_bank.neighbours, check.neighbours)


def test_check_widths_marks_each_width_and_warns_only_if_none_is_useful():
    x = _unit_inputs(7, 50)
    useful = suggest_widths(x, num=1, neighbours=(5.0, 6.0))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", WidthWarning)
        check = check_widths(x, [1e6, useful, 1e-6])
    assert check.status == ("uniform", "useful", "identity")
    assert check.useful.tolist() == [False, True, False]


def test_check_widths_needs_widths_for_raw_inputs():
    with pytest.raises(ValueError, match=r"`widths`"):
        check_widths(_unit_inputs(8, 10))
    with pytest.raises(ValueError, match=r"`widths`.*> 0"):
        check_widths(_unit_inputs(8, 10), [0.0])


# ------------------------------------------------------------------- projection
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num_frequencies", [1, 9])
def test_projection_spectrum_matches_reference_nudft_at_given_positions(seed, num_frequencies):
    x, h, y = ref.random_problem(seed, n=50, steps=3)
    positions = np.random.default_rng(seed).uniform(-3.0, 5.0, size=50)  # unsorted
    frequencies, errors = projection_spectrum(x, h, y, num_frequencies=num_frequencies,
                                              positions=positions)
    assert errors.shape == (3, num_frequencies)
    for t in range(3):
        ref_k, ref_errors = ref.projection_errors(positions, h[t], y, num_frequencies)
        np.testing.assert_allclose(frequencies, ref_k, rtol=1e-12)
        np.testing.assert_allclose(errors[t], ref_errors, rtol=1e-5)
        _, single = projection_spectrum(x, h[t], y, num_frequencies=num_frequencies,
                                        positions=positions)
        assert single.shape == (num_frequencies,)
        np.testing.assert_allclose(single, errors[t], rtol=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_projection_spectrum_on_the_principal_direction_does_not_depend_on_its_sign(seed):
    x, h, y = ref.random_problem(seed, n=60, offset=10.0)
    centred = x - x.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    _, ref_plus = ref.projection_errors(centred @ direction, h, y, 16)
    _, ref_minus = ref.projection_errors(-(centred @ direction), h, y, 16)
    np.testing.assert_allclose(ref_plus, ref_minus, rtol=1e-9)
    frequencies, errors = projection_spectrum(torch.tensor(x), torch.tensor(h), torch.tensor(y),
                                              num_frequencies=16)
    np.testing.assert_allclose(frequencies, 2 * np.pi * np.arange(16))
    np.testing.assert_allclose(errors, ref_plus, rtol=1e-5)


def test_cosine_error_shows_up_at_its_frequency():
    n = 200
    rng = np.random.default_rng(9)
    line = np.linspace(0.0, 1.0, n)
    direction = rng.normal(size=5)
    direction /= np.linalg.norm(direction)
    x = 3.0 + np.outer(10.0 * line, direction)
    y = rng.integers(0, 2, n)
    h = np.eye(2)[y] + 0.01 * np.cos(2 * np.pi * 5 * line)[:, None] * np.array([1.0, -1.0])
    _, errors = projection_spectrum(x, h, y, num_frequencies=12)
    assert np.argmax(errors) == 5
    assert errors[5] > 10 * np.delete(errors, 5).max()


def test_principal_projection_recovers_line_coordinates_up_to_sign():
    rng = np.random.default_rng(10)
    t = rng.uniform(-4.0, 9.0, size=30)
    direction = rng.normal(size=6)
    direction /= np.linalg.norm(direction)
    x = rng.normal(size=6) + np.outer(t, direction)
    p = principal_projection(x)
    centred = t - t.mean()
    sign = np.sign(p @ centred)
    np.testing.assert_allclose(sign * p, centred, atol=1e-10)
    # the sign convention: the direction's largest component is positive
    expected_sign = np.sign(direction[np.argmax(np.abs(direction))])
    assert sign == expected_sign
    np.testing.assert_allclose(principal_projection(torch.tensor(x)), p)


@pytest.mark.parametrize("shape", [(300, 210), (210, 300)], ids=["more_rows", "more_columns"])
def test_principal_projection_of_large_inputs_matches_dense_svd(shape):
    # min(N, D) > 200 takes the iterative (svds) path
    rng = np.random.default_rng(11)
    n, dim = shape
    x = rng.normal(size=(n, dim)) + np.outer(rng.normal(size=n) * 5.0, rng.normal(size=dim))
    centred = x - x.mean(axis=0)
    expected = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    p = principal_projection(x)
    np.testing.assert_allclose(np.abs(p), np.abs(expected), rtol=1e-6, atol=1e-8)


def test_projection_spectrum_is_nan_where_the_target_transform_is_zero():
    n = 20
    x = np.linspace(0.0, 1.0, n)[:, None]
    # soft targets that sum to zero: their transform vanishes at frequency 0
    y = np.stack([(-1.0) ** np.arange(n), np.zeros(n)], axis=1)
    h = y + 0.1
    with pytest.warns(DegenerateTargetWarning, match=r"zero"):
        _, errors = projection_spectrum(x, h, y, num_frequencies=4)
    assert np.isnan(errors[0]) and np.all(np.isfinite(errors[1:]))


@pytest.mark.parametrize("kwargs, error, match", [
    pytest.param(dict(positions=np.zeros(5)), ValueError, r"`positions`.*\(10,\)",
                 id="positions_wrong_shape"),
    pytest.param(dict(positions=np.r_[np.linspace(0, 1, 9), np.nan]), ValueError,
                 r"`positions`", id="positions_nan"),
    pytest.param(dict(num_frequencies=0), ValueError, r"`num_frequencies`", id="no_frequencies"),
    pytest.param(dict(outputs=np.zeros((9, 2))), ValueError, r"`outputs`.*N=10", id="mismatched_n"),
    pytest.param(dict(targets=np.full(10, 2)), ValueError, r"`targets`", id="label_out_of_range"),
    pytest.param(dict(inputs=np.zeros((0, 3))), ValueError, r"`inputs`.*empty", id="empty"),
])
def test_projection_spectrum_rejects_bad_arguments(kwargs, error, match):
    rng = np.random.default_rng(12)
    args = dict(inputs=rng.normal(size=(10, 3)), outputs=np.full((10, 2), 0.5),
                targets=np.arange(10) % 2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        projection_spectrum(args.pop("inputs"), args.pop("outputs"), args.pop("targets"), **args)


# ------------------------------------------------------------------ convergence
STEPS = [0, 10, 20, 30]


@pytest.mark.parametrize("steps, curve, threshold, relative, expected", [
    pytest.param(STEPS, [0.9, 0.6, 0.4, 0.2], 0.5, False, 20.0, id="converges"),
    pytest.param(STEPS, [0.1, 0.2, 0.3, 0.4], 0.5, False, 0.0, id="below_from_the_start"),
    pytest.param(STEPS, [0.9, 0.4, 0.6, 0.3], 0.5, False, 30.0, id="dips_rises_then_falls"),
    pytest.param(STEPS, [0.9, 0.4, 0.3, 0.6], 0.5, False, np.nan, id="dips_then_rises_at_end"),
    pytest.param(STEPS, [0.9, 0.8, 0.7, 0.6], 0.5, False, np.nan, id="never"),
    pytest.param(STEPS, [np.nan] * 4, 0.5, False, np.nan, id="nan_curve"),
    pytest.param(STEPS, [0.9, np.nan, 0.3, 0.2], 0.5, False, 20.0, id="nan_then_below"),
    pytest.param(STEPS, [0.9, 0.5, 0.5, 0.4], 0.5, False, 30.0, id="threshold_is_strict"),
    pytest.param([1, 5, 100, 1000], [3.0, 1.0, 0.2, 0.1], 0.5, False, 100.0, id="uneven_steps"),
    pytest.param(STEPS, [2.0, 1.5, 0.9, 0.5], 0.5, True, 20.0, id="relative"),
    pytest.param(STEPS, [0.2, 0.15, 0.09, 0.05], 0.5, True, 20.0, id="relative_small_curve"),
    pytest.param(STEPS, [2.0, 1.5, 0.9, 0.5], 0.5, False, np.nan, id="absolute_same_curve"),
])
def test_convergence_step_of_one_curve(steps, curve, threshold, relative, expected):
    got = convergence_steps(steps, curve, threshold, relative=relative)
    assert np.shape(got) == ()
    np.testing.assert_equal(float(got), expected)
    if not relative:
        np.testing.assert_equal(ref.convergence_step(steps, curve, threshold), expected)


@pytest.mark.parametrize("relative", [False, True])
def test_convergence_steps_of_many_curves_match_one_by_one(relative):
    rng = np.random.default_rng(13)
    steps = np.cumsum(rng.integers(1, 5, size=12))
    errors = np.abs(rng.normal(size=(12, 3, 4))) * np.linspace(1.0, 0.1, 12)[:, None, None]
    errors[:, 0, 0] = np.nan
    got = convergence_steps(steps, errors, 0.6, relative=relative)
    assert got.shape == (3, 4)
    for a in range(3):
        for b in range(4):
            curve = errors[:, a, b]
            level = 0.6 * curve[0] if relative else 0.6
            np.testing.assert_equal(got[a, b], ref.convergence_step(steps, curve, level))
    assert np.isnan(got[0, 0])
    # a (T, K) array of relative errors, as a FilterBank returns; torch works too
    flat = convergence_steps(torch.tensor(steps), torch.tensor(errors[:, 1]), 0.6,
                             relative=relative)
    np.testing.assert_equal(flat, got[1])


@pytest.mark.parametrize("steps, errors, threshold, match", [
    pytest.param([0, 1, 2], [0.1, 0.2], 0.5, r"`errors`.*T=3", id="length_mismatch"),
    pytest.param([0, 1, 2], np.zeros((2, 3)), 0.5, r"`errors`.*T=3", id="steps_on_wrong_axis"),
    pytest.param([0, 1, 2], 0.1, 0.5, r"`errors`", id="scalar_errors"),
    pytest.param([0, 2, 1], [0.1, 0.2, 0.3], 0.5, r"`steps`.*increasing", id="decreasing"),
    pytest.param([0, 1, 1], [0.1, 0.2, 0.3], 0.5, r"`steps`.*increasing", id="repeated"),
    pytest.param([], [], 0.5, r"`steps`.*non-empty", id="empty"),
    pytest.param([[0, 1]], [[0.1, 0.2]], 0.5, r"`steps`.*1-D", id="steps_2d"),
    pytest.param([0, np.nan], [0.1, 0.2], 0.5, r"`steps`.*finite", id="steps_nan"),
    pytest.param([0, 1], [0.1, 0.2], 0.0, r"`threshold`", id="threshold_zero"),
    pytest.param([0, 1], [0.1, 0.2], -1.0, r"`threshold`", id="threshold_negative"),
    pytest.param([0, 1], [0.1, 0.2], np.nan, r"`threshold`", id="threshold_nan"),
])
def test_convergence_steps_rejects_bad_arguments(steps, errors, threshold, match):
    with pytest.raises(ValueError, match=match):
        convergence_steps(steps, errors, threshold)
