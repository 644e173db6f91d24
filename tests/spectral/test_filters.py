"""The low-pass filters of freqlens.spectral against the dense reference.

Covers relative errors (low/high), band errors, ratios and the joint view for
both distances and both reductions, the chunked (non-cached) kernel path,
known answers, the degenerate-target NaN case and argument checking.
"""

import itertools
import warnings

import numpy as np
import pytest
import torch

import freqlens.spectral.filters as filters_module
from freqlens.spectral import (
    DegenerateTargetWarning,
    FilterBank,
    band_errors,
    joint_relative_errors,
    pairwise_distances,
    relative_errors,
)

from . import reference as ref

RTOL = 1e-5
#: float32 kernel products agree with each other to about this (summation order differs).
SELF_RTOL = 1e-6
#: Tolerances per FilterBank dtype for element-wise signals (low parts, bands).
ELEMENTWISE = {"float32": {"rtol": RTOL, "atol": 1e-6}, "float64": {"rtol": 1e-10, "atol": 1e-12}}
COMBOS = list(itertools.product(("euclidean", "squared"), ("mean", "frobenius")))
SEEDS = (0, 1, 2)
# (offset, spread) of the inputs: unit scale, and a large norm with a small spread.
SCALES = {"unit": (0.0, 1.0), "offset100": (100.0, 0.01)}


def problem_cases():
    return [
        pytest.param(distance, reduction, seed, scale, id=f"{distance}-{reduction}-seed{seed}-{scale}")
        for (distance, reduction), seed, scale in itertools.product(COMBOS, SEEDS, SCALES)
    ]


def _problem(seed, scale, distance, **kwargs):
    offset, spread = SCALES[scale]
    x, h, y = ref.random_problem(seed, offset=offset, spread=spread, **kwargs)
    return x, h, y, ref.quantile_widths(x, distance)


@pytest.fixture
def no_cache(monkeypatch):
    """Force the chunked path: the distances are not cached."""
    monkeypatch.setattr(filters_module, "DISTANCE_CACHE_BYTES", 0)


# ------------------------------------------------------------ against reference
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("scale", list(SCALES))
def test_pairwise_distances_match_explicit_differences(distance, scale):
    x, _, _, _ = _problem(3, scale, distance)
    got = pairwise_distances(x, distance=distance)
    expected = ref.distances(x, distance)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12 * expected.max())
    np.testing.assert_array_equal(np.diag(got), 0.0)
    np.testing.assert_array_equal(got, got.T)


@pytest.mark.parametrize("distance, reduction, seed, scale", problem_cases())
def test_relative_errors_match_reference(distance, reduction, seed, scale):
    x, h, y, widths = _problem(seed, scale, distance)
    low, high = relative_errors(x, h, y, widths, distance=distance, reduction=reduction)
    ref_low, ref_high = ref.relative_errors(x, h, y, widths, distance, reduction)
    assert low.shape == high.shape == (len(widths),)
    np.testing.assert_allclose(low, ref_low, rtol=RTOL)
    np.testing.assert_allclose(high, ref_high, rtol=RTOL)


@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_far_apart_clusters_with_a_small_spread_match_reference(distance, reduction):
    # Centring cannot remove this offset: the clusters sit at +-100 with spread
    # 0.01, so the Gram-trick distances lose digits (still ~1e-8 relative here;
    # at spread 1e-4 the loss reaches ~1e-5).
    rng = np.random.default_rng(21)
    x = np.concatenate([100.0 + 0.01 * rng.normal(size=(20, 16)),
                        -100.0 + 0.01 * rng.normal(size=(20, 16))])
    _, h, y = ref.random_problem(21, n=40)
    d = ref.distances(x, distance)
    within = d[:20, :20][~np.eye(20, dtype=bool)]
    widths = np.quantile(within, [0.1, 0.5, 0.9]) / 2.0
    np.testing.assert_allclose(pairwise_distances(x, distance=distance), d, rtol=RTOL)
    low, high = relative_errors(x, h, y, widths, distance=distance, reduction=reduction)
    ref_low, ref_high = ref.relative_errors(x, h, y, widths, distance, reduction)
    np.testing.assert_allclose(low, ref_low, rtol=RTOL)
    np.testing.assert_allclose(high, ref_high, rtol=RTOL)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_kernel_and_split_match_reference(distance, dtype):
    x, h, _, widths = _problem(4, "unit", distance)
    bank = FilterBank(x, widths, distance=distance, dtype=dtype)
    low, high = bank.split(h)
    assert low.shape == high.shape == (len(widths), len(x), h.shape[1])
    for k, width in enumerate(widths):
        g = ref.kernel(x, width, distance)
        np.testing.assert_allclose(bank.kernel(k), g, rtol=ELEMENTWISE[dtype]["rtol"], atol=1e-14)
        np.testing.assert_allclose(low[k], g @ h, **ELEMENTWISE[dtype])
        np.testing.assert_allclose(high[k], h - g @ h, **ELEMENTWISE[dtype])


@pytest.mark.parametrize("distance, reduction", COMBOS)
@pytest.mark.parametrize("seed", SEEDS)
def test_stacked_snapshots_equal_single_calls(distance, reduction, seed):
    x, h, y = ref.random_problem(seed, steps=4)
    widths = ref.quantile_widths(x, distance)
    bank = FilterBank(x, widths, distance=distance)
    low, high = bank.relative_errors(h, y, reduction=reduction)
    bands = bank.band_errors(h, y, reduction=reduction)
    lfr, hfr = bank.ratios(h, reduction=reduction)
    assert low.shape == high.shape == lfr.shape == hfr.shape == (4, len(widths))
    assert bands.shape == (4, len(widths) + 1)
    for t in range(4):
        single_low, single_high = bank.relative_errors(h[t], y, reduction=reduction)
        np.testing.assert_allclose(low[t], single_low, rtol=SELF_RTOL)
        np.testing.assert_allclose(high[t], single_high, rtol=SELF_RTOL)
        np.testing.assert_allclose(bands[t], bank.band_errors(h[t], y, reduction=reduction),
                                   rtol=SELF_RTOL)
        single_lfr, single_hfr = bank.ratios(h[t], reduction=reduction)
        np.testing.assert_allclose(lfr[t], single_lfr, rtol=SELF_RTOL)
        np.testing.assert_allclose(hfr[t], single_hfr, rtol=SELF_RTOL)
        ref_low, ref_high = ref.relative_errors(x, h[t], y, widths, distance, reduction)
        np.testing.assert_allclose(low[t], ref_low, rtol=RTOL)
        np.testing.assert_allclose(high[t], ref_high, rtol=RTOL)
    # the one-call form takes stacks too
    top_low, top_high = relative_errors(x, h, y, widths, distance=distance, reduction=reduction)
    np.testing.assert_allclose(top_low, low, rtol=SELF_RTOL)
    np.testing.assert_allclose(top_high, high, rtol=SELF_RTOL)


@pytest.mark.parametrize("distance, reduction, seed, scale", problem_cases())
def test_band_errors_match_reference(distance, reduction, seed, scale):
    x, h, y, widths = _problem(seed, scale, distance)
    got = band_errors(x, h, y, widths, distance=distance, reduction=reduction)
    expected = ref.band_errors(x, h, y, widths, distance, reduction)
    assert got.shape == (len(widths) + 1,)
    np.testing.assert_allclose(got, expected, rtol=RTOL)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_bands_match_reference(distance, dtype, seed):
    x, h, y, widths = _problem(seed, "unit", distance)
    bank = FilterBank(x, widths, distance=distance, dtype=dtype)
    got = bank.bands(h)
    np.testing.assert_allclose(got, ref.bands(x, h, widths, distance), **ELEMENTWISE[dtype])
    np.testing.assert_array_equal(bank.band_edges(), np.sort(widths)[::-1])


@pytest.mark.parametrize("distance, reduction, seed, scale", problem_cases())
def test_ratios_match_reference(distance, reduction, seed, scale):
    x, h, _, widths = _problem(seed, scale, distance)
    lfr, hfr = FilterBank(x, widths, distance=distance).ratios(h, reduction=reduction)
    ref_lfr, ref_hfr = ref.ratios(x, h, widths, distance, reduction)
    np.testing.assert_allclose(lfr, ref_lfr, rtol=RTOL)
    np.testing.assert_allclose(hfr, ref_hfr, rtol=RTOL)


@pytest.mark.parametrize("distance, reduction", COMBOS)
@pytest.mark.parametrize("seed", SEEDS)
def test_joint_view_matches_reference_over_each_sets_rows(distance, reduction, seed):
    x_clean, h_clean, y_clean = ref.random_problem(seed, n=30)
    x_poison, h_poison, _ = ref.random_problem(seed + 100, n=12)
    y_poison = np.full(12, 1)  # backdoor: every example labelled with the target class
    widths = ref.quantile_widths(np.concatenate([x_clean, x_poison]), distance)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateTargetWarning)
        result = joint_relative_errors(
            {"clean": x_clean, "poison": x_poison},
            {"poison": h_poison, "clean": h_clean},  # order of the mappings does not matter
            {"clean": y_clean, "poison": y_poison},
            widths, distance=distance, reduction=reduction,
        )
    assert set(result) == {"clean", "poison"}
    x = np.concatenate([x_clean, x_poison])
    h = np.concatenate([h_clean, h_poison])
    y = np.concatenate([y_clean, y_poison])
    rows = {"clean": np.arange(30), "poison": np.arange(30, 42)}
    bank = FilterBank(x, widths, distance=distance)
    for name in ("clean", "poison"):
        low, high = result[name]
        ref_low, ref_high = ref.relative_errors(x, h, y, widths, distance, reduction, rows[name])
        np.testing.assert_allclose(low, ref_low, rtol=RTOL)
        np.testing.assert_allclose(high, ref_high, rtol=RTOL)
        assert np.all(np.isfinite(high))
        # subset= on a bank over the union is the same view; a boolean mask too
        mask = np.zeros(len(x), dtype=bool)
        mask[rows[name]] = True
        for subset in (rows[name], mask):
            sub_low, sub_high = bank.relative_errors(h, y, reduction=reduction, subset=subset)
            np.testing.assert_allclose(sub_low, low, rtol=1e-12)
            np.testing.assert_allclose(sub_high, high, rtol=1e-12)
        np.testing.assert_allclose(
            bank.band_errors(h, y, reduction=reduction, subset=rows[name]),
            ref.band_errors(x, h, y, widths, distance, reduction, rows[name]),
            rtol=RTOL,
        )


def test_joint_view_with_snapshot_stacks():
    x_a, h_a, y_a = ref.random_problem(5, n=20, steps=3)
    x_b, h_b, y_b = ref.random_problem(6, n=15, steps=3)
    widths = ref.quantile_widths(np.concatenate([x_a, x_b]))
    result = joint_relative_errors({"a": x_a, "b": x_b}, {"a": h_a, "b": h_b},
                                   {"a": y_a, "b": y_b}, widths)
    x, y = np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b])
    for t in range(3):
        h = np.concatenate([h_a[t], h_b[t]])
        ref_low, ref_high = ref.relative_errors(x, h, y, widths, rows=np.arange(20, 35))
        np.testing.assert_allclose(result["b"][0][t], ref_low, rtol=RTOL)
        np.testing.assert_allclose(result["b"][1][t], ref_high, rtol=RTOL)


@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_torch_tensors_and_one_hot_targets_give_the_same_result(distance, reduction):
    x, h, y, widths = _problem(7, "unit", distance)
    expected = relative_errors(x, h, y, widths, distance=distance, reduction=reduction)
    one_hot = np.eye(h.shape[1])[y]
    got = relative_errors(
        torch.tensor(x), torch.tensor(h, requires_grad=True), torch.tensor(y),
        torch.tensor(widths), distance=distance, reduction=reduction,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    got = relative_errors(x, h, torch.tensor(one_hot), widths, distance=distance,
                          reduction=reduction)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # float32 tensors: same as the float64 reference of the float32 values
    x32, h32 = torch.tensor(x, dtype=torch.float32), torch.tensor(h, dtype=torch.float32)
    got = relative_errors(x32, h32, torch.tensor(y), widths, distance=distance,
                          reduction=reduction)
    ref_low, ref_high = ref.relative_errors(x32.double().numpy(), h32.double().numpy(), y,
                                            widths, distance, reduction)
    np.testing.assert_allclose(got[0], ref_low, rtol=RTOL)
    np.testing.assert_allclose(got[1], ref_high, rtol=RTOL)


@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_chunked_bank_equals_cached_bank(no_cache, distance, reduction):
    x, h, y = ref.random_problem(8, n=37, steps=2)
    widths = ref.quantile_widths(x, distance)
    chunked = FilterBank(x, widths, distance=distance, chunk_size=5)
    assert chunked._dist is None  # distances recomputed per block of 5 rows
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(filters_module, "DISTANCE_CACHE_BYTES", 256 * 2**20)
        cached = FilterBank(x, widths, distance=distance)
    assert cached._dist is not None and cached.chunk_size == 37
    subset = np.arange(3, 30, 2)
    same = {"rtol": SELF_RTOL, "atol": 1e-7}
    for bank_kwargs in ({}, {"subset": subset}):
        np.testing.assert_allclose(
            chunked.relative_errors(h, y, reduction=reduction, **bank_kwargs),
            cached.relative_errors(h, y, reduction=reduction, **bank_kwargs), rtol=SELF_RTOL)
        np.testing.assert_allclose(
            chunked.band_errors(h, y, reduction=reduction, **bank_kwargs),
            cached.band_errors(h, y, reduction=reduction, **bank_kwargs), rtol=SELF_RTOL)
        np.testing.assert_allclose(
            chunked.ratios(h, reduction=reduction, **bank_kwargs),
            cached.ratios(h, reduction=reduction, **bank_kwargs), rtol=SELF_RTOL)
    np.testing.assert_allclose(chunked.bands(h[0]), cached.bands(h[0]), **same)
    np.testing.assert_allclose(chunked.split(h[0]), cached.split(h[0]), **same)
    np.testing.assert_allclose(chunked.kernel(2), cached.kernel(2), rtol=SELF_RTOL, atol=1e-12)
    np.testing.assert_allclose(chunked.neighbour_counts(), cached.neighbour_counts(), rtol=SELF_RTOL)
    ref_low, ref_high = ref.relative_errors(x, h[1], y, widths, distance, reduction)
    low, high = chunked.relative_errors(h[1], y, reduction=reduction)
    np.testing.assert_allclose(low, ref_low, rtol=RTOL)
    np.testing.assert_allclose(high, ref_high, rtol=RTOL)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_neighbour_counts_match_reference(distance):
    # N odd: the median is one row's value, whatever the median convention
    x, _, _ = ref.random_problem(9, n=41)
    widths = ref.quantile_widths(x, distance)
    counts = FilterBank(x, widths, distance=distance).neighbour_counts()
    expected = [np.median(ref.neighbour_counts_per_row(x, w, distance)) for w in widths]
    np.testing.assert_allclose(counts, expected, rtol=RTOL)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_neighbour_counts_lie_between_the_two_middle_rows_for_even_n(distance):
    # N even: freqlens takes torch.median (the lower middle value), numpy the
    # average of the two; either is inside [lower middle, upper middle].
    x, _, _ = ref.random_problem(9, n=40)
    widths = ref.quantile_widths(x, distance)
    counts = FilterBank(x, widths, distance=distance).neighbour_counts()
    for count, width in zip(counts, widths):
        rows = np.sort(ref.neighbour_counts_per_row(x, width, distance))
        assert rows[19] * (1 - RTOL) <= count <= rows[20] * (1 + RTOL)


# ----------------------------------------------------------------- known answers
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_constant_signal_is_all_low_frequency(distance, reduction, dtype):
    x, _, _, widths = _problem(10, "unit", distance)
    constant = np.tile([0.2, 0.5, 0.3], (len(x), 1))
    bank = FilterBank(x, widths, distance=distance, dtype=dtype)
    atol = ELEMENTWISE[dtype]["atol"]
    low, high = bank.split(constant)
    np.testing.assert_allclose(low, np.broadcast_to(constant, low.shape), atol=atol)
    np.testing.assert_allclose(high, 0.0, atol=atol)
    lfr, hfr = bank.ratios(constant, reduction=reduction)
    np.testing.assert_allclose(lfr, 1.0, atol=10 * atol)
    np.testing.assert_allclose(hfr, 0.0, atol=10 * atol)


@pytest.mark.parametrize("distance, width", [("euclidean", 1.0), ("squared", 1.0)])
@pytest.mark.parametrize("reduction", ["mean", "frobenius"])
def test_alternating_signal_on_a_line_is_mostly_high_frequency(distance, width, reduction):
    x = np.arange(40.0)[:, None]
    alternating = ((-1.0) ** np.arange(40))[:, None] * np.array([[1.0, -1.0]])
    bank = FilterBank(x, [width], distance=distance)
    lfr, hfr = bank.ratios(alternating, reduction=reduction)
    assert hfr[0] > lfr[0]
    assert hfr[0] > 0.9 and lfr[0] < 0.5
    low, high = bank.split(alternating)
    assert ref.reduce(high[0], reduction) > 2 * ref.reduce(low[0], reduction)
    # a smooth signal on the same points is the opposite
    smooth = np.sin(np.arange(40.0) / 8.0)[:, None]
    lfr, hfr = bank.ratios(smooth, reduction=reduction)
    assert lfr[0] > hfr[0]


@pytest.mark.parametrize("distance, reduction", COMBOS)
@pytest.mark.parametrize("seed", SEEDS)
def test_bands_sum_to_the_signal(distance, reduction, seed):
    x, h, _, _ = _problem(seed, "unit", distance)
    widths = ref.quantile_widths(x, distance, levels=(0.02, 0.1, 0.3, 0.5, 0.9))
    bands = FilterBank(x, widths, distance=distance).bands(h)
    assert bands.shape == (len(widths) + 1,) + h.shape
    np.testing.assert_allclose(bands.sum(axis=0), h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_band_errors_do_not_depend_on_the_order_of_widths(distance, reduction):
    x, h, y, _ = _problem(11, "unit", distance)
    widths = ref.quantile_widths(x, distance, levels=(0.02, 0.1, 0.3, 0.5, 0.9))
    expected = band_errors(x, h, y, np.sort(widths)[::-1], distance=distance, reduction=reduction)
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = rng.permutation(widths)
        got = band_errors(x, h, y, shuffled, distance=distance, reduction=reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-12)
        # the low/high errors follow the given order instead
        low, _ = relative_errors(x, h, y, shuffled, distance=distance, reduction=reduction)
        ref_low, _ = ref.relative_errors(x, h, y, shuffled, distance, reduction)
        np.testing.assert_allclose(low, ref_low, rtol=RTOL)


@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_larger_width_gives_smaller_low_frequency_ratio(distance, reduction):
    rng = np.random.default_rng(12)
    x = np.arange(40.0)[:, None]
    signal = np.sin(x / 3.0) + 0.3 * rng.normal(size=(40, 2))
    widths = np.geomspace(0.05, 50.0, 30)
    lfr, hfr = FilterBank(x, widths, distance=distance).ratios(signal, reduction=reduction)
    assert np.all(np.diff(lfr) < 0)
    assert np.all(np.diff(hfr) > 0)
    # shuffled widths give the same values in the shuffled order
    order = rng.permutation(30)
    lfr_shuffled, _ = FilterBank(x, widths[order], distance=distance).ratios(
        signal, reduction=reduction)
    np.testing.assert_allclose(lfr_shuffled, lfr[order], rtol=1e-12)


# ---------------------------------------------------------- degenerate targets
@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_constant_targets_give_nan_high_errors_with_a_warning(distance, reduction):
    x, h, _, widths = _problem(13, "unit", distance)
    targets = np.full(len(x), 2)
    with pytest.warns(DegenerateTargetWarning, match=r"high part.*constant"):
        low, high = relative_errors(x, h, targets, widths, distance=distance, reduction=reduction)
    assert np.all(np.isnan(high))
    assert np.all(np.isfinite(low))
    np.testing.assert_allclose(low, ref.relative_errors(x, h, targets, widths, distance,
                                                        reduction)[0], rtol=RTOL)
    with pytest.warns(DegenerateTargetWarning, match=r"band .*constant"):
        bands = band_errors(x, h, targets, widths, distance=distance, reduction=reduction)
    # only the lowest band of a constant target is non-zero
    assert np.isfinite(bands[0]) and np.all(np.isnan(bands[1:]))
    # a stack of snapshots: NaN in every row
    with pytest.warns(DegenerateTargetWarning):
        _, high = relative_errors(x, np.stack([h, h]), targets, widths, distance=distance,
                                  reduction=reduction)
    assert high.shape == (2, len(widths)) and np.all(np.isnan(high))


@pytest.mark.parametrize("distance, reduction", COMBOS)
def test_band_errors_are_nan_only_where_the_target_band_is_zero(distance, reduction):
    x, h, y, _ = _problem(14, "unit", distance)
    w = ref.quantile_widths(x, distance, levels=(0.1, 0.5))
    # a repeated width makes the band between the two copies exactly zero
    widths = [w[1], w[0], w[0]]  # decreasing: w[1] > w[0] = w[0]
    target_bands = ref.bands(x, np.eye(3)[y], widths, distance)
    zero = np.array([np.abs(b).max() == 0 for b in target_bands])
    assert zero.tolist() == [False, False, True, False]
    with pytest.warns(DegenerateTargetWarning, match=r"band 2 of 4"):
        got = band_errors(x, h, y, widths, distance=distance, reduction=reduction)
    np.testing.assert_array_equal(np.isnan(got), zero)
    np.testing.assert_allclose(got, ref.band_errors(x, h, y, widths, distance, reduction),
                               rtol=RTOL)


def test_identity_width_gives_nan_high_error_with_a_warning():
    x, h, y = ref.random_problem(15)
    with pytest.warns(DegenerateTargetWarning, match=r"suggest_widths"):
        low, high = relative_errors(x, h, y, [1e-9, 1.0])
    assert np.isnan(high[0]) and np.isfinite(high[1]) and np.all(np.isfinite(low))


def test_joint_view_gives_finite_high_errors_for_a_constant_target_set():
    x_clean, h_clean, y_clean = ref.random_problem(16, n=30, classes=2)
    rng = np.random.default_rng(16)
    # backdoor probes sit among the clean ones, all labelled with class 1
    x_poison = x_clean[:10] + 0.1 * rng.normal(size=(10, x_clean.shape[1]))
    h_poison = np.tile([0.1, 0.9], (10, 1))
    y_poison = np.ones(10, dtype=int)
    widths = ref.quantile_widths(np.concatenate([x_clean, x_poison]))
    with pytest.warns(DegenerateTargetWarning, match="constant"):
        _, alone = relative_errors(x_poison, h_poison, y_poison, widths)
    assert np.all(np.isnan(alone))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateTargetWarning)
        joint = joint_relative_errors(
            {"clean": x_clean, "poison": x_poison}, {"clean": h_clean, "poison": h_poison},
            {"clean": y_clean, "poison": y_poison}, widths)
    for name in ("clean", "poison"):
        low, high = joint[name]
        assert np.all(np.isfinite(low)) and np.all(np.isfinite(high))


# ---------------------------------------------------------------- bad input
def _bad_input_cases():
    x, h, y = ref.random_problem(17, n=10)
    widths = [0.5, 2.0]
    ok = dict(inputs=x, outputs=h, targets=y, widths=widths)
    return [
        ("mismatched_n", dict(ok, outputs=h[:9]), ValueError, r"`outputs`.*N=10"),
        ("targets_wrong_length", dict(ok, targets=y[:8]), ValueError, r"`targets`.*N=10"),
        ("targets_wrong_shape", dict(ok, targets=np.eye(4)[np.zeros(10, int)]), ValueError,
         r"`targets`.*shape"),
        ("label_too_large", dict(ok, targets=np.r_[y[:9], 3]), ValueError,
         r"`targets`.*\[0, 3\).*\[3\]"),
        ("label_negative", dict(ok, targets=np.r_[y[:9], -1]), ValueError, r"`targets`.*\[-1\]"),
        ("label_not_integer", dict(ok, targets=np.r_[y[:9], 0.5]), ValueError, r"`targets`"),
        ("width_zero", dict(ok, widths=[0.0, 1.0]), ValueError, r"`widths`.*> 0"),
        ("width_negative", dict(ok, widths=[-1.0]), ValueError, r"`widths`.*> 0"),
        ("widths_empty", dict(ok, widths=[]), ValueError, r"`widths`.*non-empty"),
        ("width_nan", dict(ok, widths=[1.0, np.nan]), ValueError, r"`widths`.*finite"),
        ("width_inf", dict(ok, widths=[np.inf]), ValueError, r"`widths`.*finite"),
        ("unknown_distance", dict(ok, distance="l1"), ValueError, r"`distance`.*'l1'"),
        ("unknown_reduction", dict(ok, reduction="max"), ValueError, r"`reduction`.*'max'"),
        ("nan_outputs", dict(ok, outputs=np.where(np.arange(10)[:, None] == 3, np.nan, h)),
         ValueError, r"`outputs`.*finite"),
        ("nan_inputs", dict(ok, inputs=np.where(np.arange(10)[:, None] == 3, np.nan, x)),
         ValueError, r"`inputs`.*finite"),
        ("empty_probe_set", dict(ok, inputs=np.zeros((0, 6)), outputs=np.zeros((0, 3)),
                                 targets=np.zeros(0, int)), ValueError, r"`inputs`.*empty"),
        ("one_dimensional_inputs", dict(ok, inputs=x[:, 0]), ValueError, r"`inputs`.*2-D"),
        ("outputs_4d", dict(ok, outputs=h[None, None]), ValueError, r"`outputs`.*shape"),
        ("complex_outputs", dict(ok, outputs=h + 0j), TypeError, r"`outputs`.*real"),
    ]


@pytest.mark.parametrize("kwargs, error, match",
                         [pytest.param(*case[1:], id=case[0]) for case in _bad_input_cases()])
def test_bad_input_is_rejected_naming_the_argument(kwargs, error, match):
    kwargs = dict(kwargs)
    args = [kwargs.pop(k) for k in ("inputs", "outputs", "targets", "widths")]
    with pytest.raises(error, match=match):
        relative_errors(*args, **kwargs)


@pytest.mark.parametrize("subset, error, match", [
    pytest.param([0, 10], ValueError, r"`subset`.*\[0, 10\)", id="index_too_large"),
    pytest.param([-11], ValueError, r"`subset`", id="index_too_negative"),
    pytest.param(np.ones(9, dtype=bool), ValueError, r"`subset`.*\(10,\)", id="mask_wrong_length"),
    pytest.param(np.zeros(10, dtype=bool), ValueError, r"`subset`.*none", id="empty_mask"),
    pytest.param([0.5, 1.0], TypeError, r"`subset`", id="float_indices"),
])
def test_bad_subset_is_rejected(subset, error, match):
    x, h, y = ref.random_problem(18, n=10)
    bank = FilterBank(x, [1.0])
    for call in (lambda: bank.relative_errors(h, y, subset=subset),
                 lambda: bank.band_errors(h, y, subset=subset),
                 lambda: bank.ratios(h, subset=subset)):
        with pytest.raises(error, match=match):
            call()


def test_bank_methods_check_their_arguments():
    x, h, y = ref.random_problem(19, n=10)
    bank = FilterBank(x, [0.5, 2.0])
    with pytest.raises(ValueError, match=r"`reduction`"):
        bank.relative_errors(h, y, reduction="median")
    with pytest.raises(ValueError, match=r"`reduction`"):
        bank.ratios(h, reduction="median")
    with pytest.raises(ValueError, match=r"`outputs`.*N=10"):
        bank.band_errors(h[:5], y)
    with pytest.raises(ValueError, match=r"`signal`"):
        bank.bands(np.stack([h, h]))
    with pytest.raises(ValueError, match=r"`signal`.*N=10"):
        bank.split(h[:4])
    with pytest.raises(ValueError, match=r"`width_index`"):
        bank.kernel(2)
    with pytest.raises(ValueError, match=r"`distance`"):
        FilterBank(x, [1.0], distance="cosine")
    with pytest.raises(ValueError, match=r"`distance`"):
        pairwise_distances(x, distance="l1")


def test_joint_view_checks_the_probe_set_names_and_snapshots():
    x, h, y = ref.random_problem(20, n=10)
    with pytest.raises(ValueError, match=r"`outputs`.*probe sets"):
        joint_relative_errors({"a": x, "b": x}, {"a": h}, {"a": y, "b": y}, [1.0])
    with pytest.raises(ValueError, match=r"`targets`.*probe sets"):
        joint_relative_errors({"a": x}, {"a": h}, {"c": y}, [1.0])
    with pytest.raises(ValueError, match=r"same number of snapshots"):
        joint_relative_errors({"a": x, "b": x}, {"a": h, "b": np.stack([h, h])},
                              {"a": y, "b": y}, [1.0])
    with pytest.raises(ValueError, match=r"`outputs\['b'\]`.*N=10"):
        joint_relative_errors({"a": x, "b": x}, {"a": h, "b": h[:7]}, {"a": y, "b": y}, [1.0])


@pytest.mark.parametrize("reduction", ["mean", "frobenius"])
@pytest.mark.parametrize("subset", [None, np.arange(5, 25)])
@pytest.mark.parametrize("constant", [False, True])
def test_measure_equals_the_separate_methods(reduction, subset, constant):
    rng = np.random.default_rng(3)
    x, h = rng.normal(size=(30, 4)), rng.dirichlet([1, 1], size=(5, 30))
    y = np.ones(30, dtype=int) if constant else rng.integers(0, 2, 30)
    bank = FilterBank(x, [0.5, 3.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateTargetWarning)
        got = bank.measure(h, y, reduction=reduction, subset=subset)
        low, high = bank.relative_errors(h, y, reduction=reduction, subset=subset)
        lfr, hfr = bank.ratios(h, reduction=reduction, subset=subset)
        bands = bank.band_errors(h, y, reduction=reduction, subset=subset)
    for name, want in {"low": low, "high": high, "bands": bands, "lfr": lfr, "hfr": hfr}.items():
        np.testing.assert_allclose(got[name], want, rtol=SELF_RTOL, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bank_leaves_the_callers_inputs_and_outputs_alone(dtype):
    x, h, y = ref.random_problem(5, offset=3.0, steps=2)
    x, h = x.astype(dtype), h.astype(dtype)
    x_before, h_before = x.copy(), h.copy()
    bank = FilterBank(x, ref.quantile_widths(x))
    bank.measure(h, y)
    bank.split(h[0])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(h, h_before)


def test_sketched_bank_reads_row_chunks_and_keeps_the_errors_close():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(120, 3000)).astype(np.float32)
    _, h, y = ref.random_problem(6, n=120, classes=2)
    widths = ref.quantile_widths(x)
    exact = FilterBank(x, widths).relative_errors(h, y)
    chunks = (x[a : a + 50] for a in range(0, 120, 50))  # never the whole matrix
    bank = FilterBank(chunks, widths, sketch=1500)
    assert bank.n == 120 and 0 < bank.sketch_error < 1
    assert bank._x.shape == (120, 1500)
    sketched = bank.relative_errors(h, y)
    # distances within 1 +- eps move the errors by far less than eps here
    np.testing.assert_allclose(sketched, exact, rtol=0.05)
    with pytest.raises(ValueError, match="`sketch`"):
        FilterBank(x, widths, sketch=0)


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_distances_from_symmetric_blocks_match_explicit_differences(distance):
    x, _, _ = ref.random_problem(11, n=37)
    bank = FilterBank(x, [1.0], distance=distance, dtype="float64")
    blocks = bank._all_distances(block=7)  # 6 x 6 blocks, 21 of them computed
    np.testing.assert_allclose(blocks.numpy(), ref.distances(x, distance), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(blocks.numpy(), blocks.numpy().T)
    np.testing.assert_array_equal(np.diag(blocks.numpy()), 0.0)
