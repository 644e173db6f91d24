"""Bootstrap uncertainty of spectral measurements: resample probe rows, keep the filters.

freqlens' uncertainty is a bootstrap over probe examples **with the filters
held fixed**: the kernel (and the eigenbasis) is built once from all N
probes, and each resample redraws the probe *rows* over which an error is
reduced, as multinomial counts used as row weights. Resampling the kernel's
inputs instead would put duplicated points into the kernel (distance 0
between copies), which inflates every row's neighbour mass and biases the
filters towards the identity (measured in ``benchmarks/static_spectrum.py``);
and it would cost one kernel, or one eigendecomposition, per resample.

So a resampled measurement uses weights ``w_n`` (how often row n was drawn)
on the fixed filters: the filters' errors are the same kernel products
reduced with weighted means and weighted sums of squares
(:meth:`FilterBank.measure` with ``weights``); the eigenmode band errors
weight a probe set's residual rows *before* projecting them on the modes (a
multiplier bootstrap, :meth:`EigenBasis.band_errors` with ``weights``), since
a set's band energy is a property of its whole residual signal, not a sum
over rows. The resamples are stratified by probe set (clean rows from the
clean rows, backdoor rows from the backdoor rows), so each resample keeps the
design's set sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from freqlens._checks import ArrayLike, check_positive_int, to_numpy


def bootstrap_weights(sizes: int | Sequence[int], resamples: int = 200, *, seed: int = 0) -> np.ndarray:
    """Row weights of a stratified bootstrap: multinomial counts within each group.

    Args:
        sizes: the group sizes (one int for a single group), e.g.
            ``[n_clean, n_backdoor]`` for the rows of a joint view laid out
            clean rows first; every size >= 1.
        resamples: number of resamples R (>= 1).
        seed: seed of ``numpy.random.default_rng``; the same seed gives the
            same weights.

    Returns:
        float64 array of shape (R, sum(sizes)): row r holds, for each row n,
        how many times resample r drew it; within each group the counts sum
        to the group's size.

    Raises:
        ValueError: a size or ``resamples`` that is not a positive integer.

    Example:
        >>> w = bootstrap_weights([3, 2], resamples=4, seed=1)
        >>> w.shape, w[:, :3].sum(axis=1).tolist(), w[:, 3:].sum(axis=1).tolist()
        ((4, 5), [3.0, 3.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0])
    """
    groups = [sizes] if isinstance(sizes, (int, np.integer)) else list(sizes)
    if not groups:
        raise ValueError("Expected `sizes` to hold at least one group size but got none.")
    groups = [check_positive_int(s, f"sizes[{i}]") for i, s in enumerate(groups)]
    resamples = check_positive_int(resamples, "resamples")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"Expected `seed` to be an integer but got {seed!r}.")
    rng = np.random.default_rng(int(seed))
    parts = [rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) for n in groups]
    return np.concatenate(parts, axis=1).astype(np.float64)


def percentile_interval(samples: ArrayLike, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of bootstrap samples, ignoring NaN samples.

    Args:
        samples: bootstrap estimates; ``axis`` runs over the resamples.
        level: coverage in (0, 1): the interval runs from the
            ``(1 - level) / 2`` to the ``(1 + level) / 2`` quantile (linear
            interpolation, numpy's default).
        axis: the resample axis.

    Returns:
        ``(low, high)``, each of the samples' shape without ``axis``; NaN
        where every sample is NaN.

    Raises:
        ValueError: ``level`` outside (0, 1), or no samples.

    Example:
        >>> low, high = percentile_interval(np.arange(101.0), level=0.9)
        >>> round(float(low), 6), round(float(high), 6)
        (5.0, 95.0)
    """
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < level < 1.0:
        raise ValueError(f"Expected `level` to be a number in (0, 1) but got {level!r}.")
    values = np.asarray(to_numpy(samples, "samples"), dtype=np.float64)
    if values.ndim == 0 or values.shape[axis] == 0:
        raise ValueError(f"Expected `samples` with at least one resample along axis {axis} "
                         f"but got shape {values.shape}.")
    quantiles = [50.0 * (1.0 - level), 50.0 * (1.0 + level)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as documented
        low, high = np.nanpercentile(values, quantiles, axis=axis)
    return low, high


def centred_interval(estimate: ArrayLike, samples: ArrayLike, level: float = 0.95,
                     axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bootstrap interval around ``estimate`` with the spread of the resamples and not their shift.

    The percentile interval of ``samples - median(samples) + estimate``. The
    resampling schemes of freqlens hold the kernel fixed and reweight probe
    rows; for the eigenmode bands the reweighted residual is rougher than a
    fresh probe sample (rows drawn twice or not at all add energy across all
    modes), which shifts every resample by a bias that says nothing about the
    probes (measured in ``benchmarks/spectrum_speed.py``: up to 80 standard
    deviations in high bands where a set has little energy). Centring the
    resamples on the estimate keeps their spread, the part that measures how
    much other probe examples would move the number, and drops that shift; the
    median, not the mean, because ratios of small energies have heavy tails.
    freqlens' choice; with unbiased resamples it equals the percentile interval.

    Args:
        estimate: the value on all probes, the samples' shape without ``axis``.
        samples: bootstrap values; ``axis`` runs over the resamples.
        level, axis: as in :func:`percentile_interval`.

    Returns:
        ``(low, high)``; NaN where every sample or the estimate is NaN.

    Raises:
        ValueError: as :func:`percentile_interval`.

    Example:
        >>> low, high = centred_interval(0.0, 10.0 + np.linspace(-1, 1, 101), level=0.9)
        >>> round(float(low), 6), round(float(high), 6)
        (-0.9, 0.9)
    """
    values = np.asarray(to_numpy(samples, "samples"), dtype=np.float64)
    centre = np.asarray(to_numpy(estimate, "estimate"), dtype=np.float64)
    if values.ndim == 0:
        raise ValueError(f"Expected `samples` with at least one resample along axis {axis} but got a scalar.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        median = np.nanmedian(values, axis=axis, keepdims=True)
    shifted = values - median + np.expand_dims(centre, axis)
    return percentile_interval(shifted, level, axis=axis)


def conservative_interval(estimate: ArrayLike, samples: ArrayLike, level: float = 0.95,
                          axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The hull of the percentile interval and the centred interval: freqlens' default.

    The percentile interval of the resamples (:func:`percentile_interval`) is
    shifted wherever the resampling scheme biases them (see
    :func:`centred_interval`), and may then exclude the estimate itself; the
    centred interval trusts the estimate where it is unstable (a ratio of small
    energies, whose resamples scatter widely). Their hull holds the estimate,
    the resamples' spread and their shift, so a verdict drawn from it ("the
    interval excludes 0") holds under both readings. freqlens' choice.

    Returns:
        ``(low, high)`` as :func:`percentile_interval`.

    Example:
        >>> low, high = conservative_interval(0.0, 10.0 + np.linspace(-1, 1, 101), level=0.9)
        >>> round(float(low), 6), round(float(high), 6)
        (-0.9, 10.9)
    """
    low, high = percentile_interval(samples, level, axis=axis)
    centred_low, centred_high = centred_interval(estimate, samples, level, axis=axis)
    return np.fmin(low, centred_low), np.fmax(high, centred_high)


def as_weights(weights: ArrayLike, rows: int, name: str = "weights") -> np.ndarray:
    """``weights`` as a finite, non-negative float64 (R, rows) array; a ValueError naming ``name`` else."""
    array = np.asarray(to_numpy(weights, name), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != rows or array.shape[0] == 0:
        raise ValueError(
            f"Expected `{name}` of shape (R, {rows}) (one weight per reduced row, R >= 1 resamples) "
            f"but got shape {array.shape}."
        )
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"Expected `{name}` to be finite and non-negative.")
    if np.any(array.sum(axis=1) <= 0):
        raise ValueError(f"Expected every resample of `{name}` to give some row a positive weight.")
    return np.ascontiguousarray(array)
