"""Bootstrap primitives: stratified row weights, percentile intervals, and the weighted
reductions of FilterBank and EigenBasis against a dense numpy reference written out here."""

import itertools
import warnings

import numpy as np
import pytest

from freqlens.spectral import (
    DegenerateTargetWarning,
    FilterBank,
    bootstrap_weights,
    eigenbasis,
    percentile_interval,
)

from . import reference as ref

COMBOS = list(itertools.product(("euclidean", "squared"), ("mean", "frobenius")))


# ------------------------------------------------------------------ weights
def test_bootstrap_weights_are_stratified_multinomial_counts():
    w = bootstrap_weights([5, 3], resamples=400, seed=7)
    assert w.shape == (400, 8) and w.dtype == np.float64
    assert np.all(w >= 0) and np.all(w == np.round(w))
    np.testing.assert_array_equal(w[:, :5].sum(axis=1), 5.0)
    np.testing.assert_array_equal(w[:, 5:].sum(axis=1), 3.0)
    # each row is drawn once per resample on average, variance (1 - 1/n) per row
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.15)
    np.testing.assert_allclose(w[:, :5].var(axis=0), 1 - 1 / 5, atol=0.2)


def test_bootstrap_weights_seeded_and_single_group():
    np.testing.assert_array_equal(bootstrap_weights(6, 10, seed=3), bootstrap_weights([6], 10, seed=3))
    assert not np.array_equal(bootstrap_weights(6, 10, seed=3), bootstrap_weights(6, 10, seed=4))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([],), {}, "`sizes`"),
        (([3, 0],), {}, r"`sizes\[1\]`"),
        ((3,), {"resamples": 0}, "`resamples`"),
        ((3,), {"seed": 1.5}, "`seed`"),
    ],
)
def test_bootstrap_weights_reject_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_weights(*args, **kwargs)


def test_percentile_interval_matches_numpy_and_ignores_nan():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(500, 3))
    low, high = percentile_interval(samples, 0.9)
    np.testing.assert_allclose(low, np.percentile(samples, 5, axis=0))
    np.testing.assert_allclose(high, np.percentile(samples, 95, axis=0))
    with_nan = samples.copy()
    with_nan[:10, 0] = np.nan
    with_nan[:, 2] = np.nan
    low, high = percentile_interval(with_nan, 0.9)
    np.testing.assert_allclose(low[0], np.percentile(samples[10:, 0], 5))
    assert np.isnan(low[2]) and np.isnan(high[2])
    low, high = percentile_interval(samples.T, 0.9, axis=1)
    np.testing.assert_allclose(low, np.percentile(samples, 5, axis=0))


@pytest.mark.parametrize("level", [0, 1, 1.5, "0.95", True])
def test_percentile_interval_rejects_bad_level(level):
    with pytest.raises(ValueError, match="`level`"):
        percentile_interval(np.ones((3, 2)), level)


# ------------------------------------------------------------ weighted filters
def _weighted_reference(x, h, y, widths, distance, reduction, rows, w):
    """(low (R, T, K), high (R, T, K), bands (R, T, K + 1)) by the weighted formulas, dense.

    mean:      sum_n w_n ||e_n|| / sum_n w_n   over   sum_n w_n ||y_n|| / sum_n w_n
    frobenius: sqrt(sum_n w_n ||e_n||^2)       over   sqrt(sum_n w_n ||y_n||^2)
    """
    y = ref.one_hot(y, h.shape[2])

    def size(f, weights):  # f (rows, C)
        if reduction == "mean":
            return np.sum(weights * np.linalg.norm(f, axis=1)) / np.sum(weights)
        return np.sqrt(np.sum(weights * np.sum(f * f, axis=1)))

    kernels = [ref.kernel(x, width, distance) for width in widths]
    low = np.empty((len(w), len(h), len(widths)))
    high = np.empty_like(low)
    bands = np.empty((len(w), len(h), len(widths) + 1))
    for r, weights in enumerate(w):
        for t, snapshot in enumerate(h):
            error = snapshot - y
            for k, g in enumerate(kernels):
                low[r, t, k] = size((g @ error)[rows], weights) / size((g @ y)[rows], weights)
                high[r, t, k] = size((error - g @ error)[rows], weights) / size((y - g @ y)[rows], weights)
            parts_e = ref.bands(x, error, widths, distance)
            parts_y = ref.bands(x, y, widths, distance)
            for b in range(len(widths) + 1):
                bands[r, t, b] = size(parts_e[b][rows], weights) / size(parts_y[b][rows], weights)
    return low, high, bands


@pytest.mark.parametrize("distance, reduction", COMBOS)
@pytest.mark.parametrize("subset", [None, "half"])
def test_weighted_measure_matches_the_dense_weighted_reference(distance, reduction, subset):
    x, h, y = ref.random_problem(1, n=30, steps=4)
    widths = ref.quantile_widths(x, distance)
    rows = np.arange(30) if subset is None else np.arange(5, 20)
    w = bootstrap_weights(rows.size, resamples=5, seed=2)
    bank = FilterBank(x, widths, distance=distance, dtype="float64")
    out = bank.measure(h, y, reduction=reduction, subset=None if subset is None else rows, weights=w)
    low, high, bands = _weighted_reference(x, h, y, widths, distance, reduction, rows, w)
    assert out["low"].shape == (5, 4, 3) and out["bands"].shape == (5, 4, 4)
    np.testing.assert_allclose(out["low"], low, rtol=1e-9)
    np.testing.assert_allclose(out["high"], high, rtol=1e-9)
    np.testing.assert_allclose(out["bands"], bands, rtol=1e-9)
    # the separate methods agree with measure
    lo, hi = bank.relative_errors(h, y, reduction=reduction, subset=None if subset is None else rows, weights=w)
    np.testing.assert_allclose(lo, out["low"], rtol=1e-12)
    np.testing.assert_allclose(bank.band_errors(h, y, reduction=reduction,
                                                subset=None if subset is None else rows, weights=w),
                               out["bands"], rtol=1e-12)


@pytest.mark.parametrize("distance, reduction", COMBOS)
@pytest.mark.parametrize("single", [False, True])
def test_all_ones_weights_equal_the_unweighted_numbers(distance, reduction, single):
    x, h, y = ref.random_problem(3, n=25, steps=None if single else 5)
    widths = ref.quantile_widths(x, distance)
    bank = FilterBank(x, widths, distance=distance)
    rows = np.arange(3, 17)
    for subset, n_rows in ((None, 25), (rows, rows.size)):
        plain = bank.measure(h, y, reduction=reduction, subset=subset)
        weighted = bank.measure(h, y, reduction=reduction, subset=subset, weights=np.ones((1, n_rows)))
        for key, value in plain.items():
            assert weighted[key].shape == (1, *value.shape), key
            np.testing.assert_allclose(weighted[key][0], value, rtol=1e-12, err_msg=key)


def test_chunked_weighted_measure_equals_one_chunk():
    x, h, y = ref.random_problem(4, n=33, steps=3)
    widths = ref.quantile_widths(x)
    w = bootstrap_weights([20, 13], resamples=7, seed=0)
    whole = FilterBank(x, widths, dtype="float64").measure(h, y, weights=w)
    chunked = FilterBank(x, widths, dtype="float64", chunk_size=4).measure(h, y, weights=w)
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-10, err_msg=key)


def test_weighted_constant_targets_give_nan_with_a_warning():
    x, h, _ = ref.random_problem(5, n=20, steps=2)
    bank = FilterBank(x, ref.quantile_widths(x))
    with pytest.warns(DegenerateTargetWarning):
        _, high = bank.relative_errors(h, np.zeros(20, dtype=int), weights=bootstrap_weights(20, 3))
    assert high.shape == (3, 2, 3) and np.all(np.isnan(high))


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.ones(20), r"shape \(R, 20\)"),
        (np.ones((2, 19)), r"shape \(R, 20\)"),
        (-np.ones((2, 20)), "non-negative"),
        (np.zeros((2, 20)), "positive weight"),
    ],
)
def test_bad_weights_are_rejected_naming_the_argument(weights, match):
    x, h, y = ref.random_problem(6, n=20)
    bank = FilterBank(x, ref.quantile_widths(x))
    with pytest.raises(ValueError, match="`weights`"):
        bank.measure(h, y, weights=weights)
    with pytest.raises(ValueError, match=match):
        bank.measure(h, y, weights=weights)


# ------------------------------------------------------- weighted eigen-bands
def _dense_band_errors(basis, h, y, edges, rows, w):
    """The per-set formula written out: the signal s = w_n (h_n - y_n) on the set's rows, 0
    elsewhere (N, C); c_m = u_m^T s; e_b = sqrt(sum_{m in b} ||c_m||^2), per resample, snapshot
    and band (plus, for a partial basis, the rest ||s||^2 - sum_m ||c_m||^2)."""
    u = basis.modes
    bands = len(edges) - 1 + (0 if basis.complete else 1)
    out = np.empty((len(w), len(h), bands))
    for r, weights in enumerate(w):
        for t, snapshot in enumerate(h):
            signal = np.zeros_like(snapshot, dtype=np.float64)
            signal[rows] = weights[:, None] * (snapshot - y)[rows]
            per_mode = np.sum((u.T @ signal) ** 2, axis=1)
            energy = [per_mode[edges[b]:edges[b + 1]].sum() for b in range(len(edges) - 1)]
            if not basis.complete:
                energy.append(np.sum(signal ** 2) - per_mode.sum())
            out[r, t] = np.sqrt(energy)
    return out


def _outputs(kind, h):
    """Probabilities as recorded (float32), logits (rows not summing to 1), or one class."""
    if kind == "float32 probabilities":
        return h.astype(np.float32).astype(np.float64)
    if kind == "logits":
        return np.log(h) + 0.3
    return h[..., :1]


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("kind", ["float32 probabilities", "logits", "one class"])
def test_weighted_eigen_band_errors_match_the_dense_reference(partial, kind):
    x, h, labels = ref.random_problem(7, n=40, steps=5)
    h = _outputs(kind, h)
    y = ref.one_hot(labels, 3)[:, :h.shape[2]]
    basis = eigenbasis(x, num_modes=9) if partial else eigenbasis(x)
    edges = basis.band_edges(6)
    rows = np.arange(10, 30)
    w = bootstrap_weights(rows.size, resamples=4, seed=1)
    expected = _dense_band_errors(basis, h, y, edges, rows, w)
    got = basis.band_errors(h, y, 6, relative_to="none", subset=rows, weights=w)
    assert got.shape == expected.shape == (4, 5, len(edges) - 1 + partial)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * expected.max())
    initial = basis.band_errors(h, y, 6, relative_to="initial", subset=rows, weights=w)
    np.testing.assert_allclose(initial, expected / expected[:, :1], rtol=1e-8)
    target = basis.band_errors(h, y, 6, relative_to="target", subset=rows, weights=w)
    target_norm = _dense_band_errors(basis, np.zeros((1, *y.shape)), -y, edges, rows, w)  # the targets' own
    np.testing.assert_allclose(target, expected / target_norm, rtol=1e-8)
    # unweighted subset: weights of ones; a boolean mask selects the same rows
    unweighted = _dense_band_errors(basis, h, y, edges, rows, np.ones((1, rows.size)))[0]
    np.testing.assert_allclose(basis.band_errors(h, y, 6, relative_to="none", subset=rows),
                               unweighted, rtol=1e-9, atol=1e-12 * unweighted.max())
    mask = np.zeros(40, dtype=bool)
    mask[rows] = True
    np.testing.assert_allclose(basis.band_errors(h, y, 6, relative_to="none", subset=mask, weights=w), got,
                               rtol=1e-12)


@pytest.mark.parametrize("relative_to", ["initial", "target", "none"])
@pytest.mark.parametrize("partial", [False, True])
def test_all_rows_all_ones_eigen_band_errors_equal_todays(relative_to, partial):
    x, h, labels = ref.random_problem(8, n=48, steps=4)
    basis = eigenbasis(x, num_modes=10) if partial else eigenbasis(x)
    assert basis.complete is not partial
    plain = basis.band_errors(h, labels, 5, relative_to=relative_to)
    # today's: || U_b^T r || per band, written out
    coeff = np.einsum("nm,tnc->tmc", basis.modes, h - ref.one_hot(labels, 3)[None])
    edges = basis.band_edges(5)
    norms = np.sqrt([[np.sum(coeff[t, a:b] ** 2) for a, b in zip(edges[:-1], edges[1:])] for t in range(4)])
    if relative_to == "none":
        np.testing.assert_allclose(plain[:, :len(edges) - 1], norms, rtol=1e-10)
    weighted = basis.band_errors(h, labels, 5, relative_to=relative_to, weights=np.ones((1, 48)))
    everything = basis.band_errors(h, labels, 5, relative_to=relative_to, subset=np.arange(48))
    assert weighted.shape == (1, *plain.shape)
    np.testing.assert_allclose(weighted[0], plain, rtol=1e-9)
    np.testing.assert_allclose(everything, plain, rtol=1e-9)
    single = basis.band_errors(h[1], labels, 5, relative_to="none", weights=np.ones((2, 48)))
    np.testing.assert_allclose(single, np.stack([basis.band_errors(h[1], labels, 5, relative_to="none")] * 2),
                               rtol=1e-9)


def test_a_set_is_its_residual_zeroed_elsewhere_and_keeps_parseval():
    """Independent of the reference: a set's band errors are the whole-basis band errors of
    outputs equal to the targets outside the set (weights scaling the residual inside), and
    (complete basis) its bands hold sum_n w_n^2 ||r_n||^2."""
    x, h, labels = ref.random_problem(9, n=30, steps=3)
    y = ref.one_hot(labels, 3)
    basis = eigenbasis(x)
    rows = np.arange(12, 30)
    w = bootstrap_weights(rows.size, resamples=3, seed=5)
    got = basis.band_errors(h, y, 4, relative_to="none", subset=rows, weights=w)
    for r in range(3):
        masked = np.broadcast_to(y, h.shape).copy()
        masked[:, rows] += w[r][None, :, None] * (h - y)[:, rows]
        np.testing.assert_allclose(got[r], basis.band_errors(masked, y, 4, relative_to="none"), rtol=1e-9)
        energy = np.einsum("n,tnc->t", w[r] ** 2, (h - y)[:, rows] ** 2)
        np.testing.assert_allclose((got[r] ** 2).sum(axis=1), energy, rtol=1e-10)


def test_single_mode_bands_tell_two_sets_apart():
    """Two sets with different residuals: their normalised curves differ in every band, mode 0
    and mode 1 alone included (the old row-reduced projection gave one curve for both)."""
    x, h, labels = ref.random_problem(13, n=40, steps=6)
    basis = eigenbasis(x)
    edges = basis.band_edges(6)
    assert edges[1] == 1 and edges[2] == 2  # bands 0 and 1 are single modes
    first, second = np.arange(20), np.arange(20, 40)
    a = basis.band_errors(h, labels, 6, subset=first)
    b = basis.band_errors(h, labels, 6, subset=second)
    assert np.all(np.abs(a[1:] - b[1:]).max(axis=0) > 1e-3)
    w = bootstrap_weights(20, resamples=5, seed=0)
    resampled = basis.band_errors(h, labels, 6, subset=first, weights=w)
    assert np.all(np.abs(resampled[:, 1:, :2] - a[None, 1:, :2]).max(axis=(1, 2)) > 1e-6)  # resamples move


def test_chunked_eigen_band_errors_equal_one_chunk(monkeypatch):
    from freqlens.spectral import eigenmodes

    x, h, labels = ref.random_problem(14, n=36, steps=7)
    basis = eigenbasis(x)
    w = bootstrap_weights(20, resamples=9, seed=2)
    whole = basis.band_errors(h, labels, 5, relative_to="none", subset=np.arange(16, 36), weights=w)
    monkeypatch.setattr(eigenmodes, "BAND_CHUNK_BYTES", 8 * 36 * 5)  # 5 columns: 2 snapshots, 1 resample
    chunked = basis.band_errors(h, labels, 5, relative_to="none", subset=np.arange(16, 36), weights=w)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12)


def test_probability_rounding_shortcut_is_within_its_bound():
    """Rows of float32 probabilities sum to 1 only up to rounding: the shortcut that skips the
    row-sum axis moves at most sum_n w_n^2 (sum_c r_nc)^2 / C of energy into the last band."""
    x, h, labels = ref.random_problem(15, n=40, steps=4)
    h = h.astype(np.float32).astype(np.float64)
    y = ref.one_hot(labels, 3)
    basis = eigenbasis(x)
    edges = basis.band_edges(5)
    rows = np.arange(40)
    w = bootstrap_weights(40, resamples=3, seed=3)
    exact = basis._set_band_energy(h - y[None], edges, rows, w)  # every class column computed
    fast = basis.band_errors(h, y, 5, relative_to="none", weights=w) ** 2
    bound = np.square(w) @ np.square((h - y[None]).sum(axis=2)).T / 3  # (R, T)
    assert np.all(bound <= 1e-12 * np.square(w).sum(axis=1)[:, None] / 3)
    np.testing.assert_allclose(fast.sum(axis=2), exact.sum(axis=2), rtol=1e-12)
    assert np.all(np.abs(fast[..., :-1] - exact[..., :-1]) <= bound[..., None] + 1e-12 * exact.max())


def test_eigen_band_errors_reject_bad_weights_and_subset():
    x, h, labels = ref.random_problem(10, n=20, steps=2)
    basis = eigenbasis(x)
    with pytest.raises(ValueError, match=r"`weights` of shape \(R, 5\)"):
        basis.band_errors(h, labels, 4, subset=np.arange(5), weights=np.ones((2, 20)))
    with pytest.raises(ValueError, match="`subset`"):
        basis.band_errors(h, labels, 4, subset=np.zeros(20, dtype=bool))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basis.band_errors(h, labels, 4, subset=np.arange(5), weights=np.ones((2, 5)))


def test_weighted_cumulative_share_matches_the_dense_formula_and_ones_give_the_share():
    x, _, labels = ref.random_problem(11, n=36)
    basis = eigenbasis(x)
    signal = ref.one_hot(labels, 3)
    f = signal - signal.mean(axis=0)
    u = basis.modes[:, :9]
    low_rows = np.sum((u @ (u.T @ f)) ** 2, axis=1)
    whole_rows = np.sum(f ** 2, axis=1)
    w = bootstrap_weights([20, 16], resamples=6, seed=4)
    np.testing.assert_allclose(basis.cumulative_share(signal, 9, weights=w),
                               (w @ low_rows) / (w @ whole_rows), rtol=1e-10)
    ones = basis.cumulative_share(signal, 9, weights=np.ones((2, 36)))
    np.testing.assert_allclose(ones, basis.cumulative_share(signal, 9), rtol=1e-10)
    with pytest.raises(ValueError, match=r"`weights` of shape \(R, 36\)"):
        basis.cumulative_share(signal, 9, weights=np.ones((2, 35)))


@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_default_eigenbasis_width_has_sqrt_n_median_neighbours(distance):
    from freqlens.spectral.eigenmodes import width_for_neighbours

    x, _, _ = ref.random_problem(12, n=81, dim=5)  # odd N: the median is one row's count
    basis = eigenbasis(x, distance=distance)
    counts = ref.neighbour_counts_per_row(x, basis.width, distance)
    assert np.median(counts) == pytest.approx(9.0, rel=1e-5)
    d = ref.distances(x, distance)
    assert width_for_neighbours(d, 30.0) > width_for_neighbours(d, 9.0) == pytest.approx(basis.width, rel=1e-6)
    with pytest.raises(ValueError, match="`target`"):
        width_for_neighbours(d, 100.0)


def test_the_default_interval_holds_the_estimate_the_spread_and_the_shift_of_biased_resamples():
    """Resamples shifted by a scheme's bias (the multiplier bootstrap of the eigenmode bands) would give a
    percentile interval that excludes the estimate; the hull with the centred interval never does, and
    with unbiased resamples it is the percentile interval."""
    from freqlens.spectral import centred_interval, conservative_interval, percentile_interval

    rng = np.random.default_rng(0)
    spread = rng.normal(size=(400, 3))
    estimate = np.array([0.0, 1.0, -2.0])
    biased = estimate + 5.0 + spread
    low, high = percentile_interval(biased)
    assert np.all(low > estimate)  # the plain interval misses the estimate
    c_low, c_high = centred_interval(estimate, biased)
    np.testing.assert_allclose(c_high - c_low, high - low)  # same spread, centred on the estimate
    assert np.all((c_low < estimate) & (estimate < c_high))
    h_low, h_high = conservative_interval(estimate, biased)
    np.testing.assert_allclose(h_low, c_low) and np.testing.assert_allclose(h_high, high)
    unbiased = estimate + spread - np.median(spread, axis=0)
    np.testing.assert_allclose(conservative_interval(estimate, unbiased), percentile_interval(unbiased))
