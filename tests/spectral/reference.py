"""Dense float64 numpy reference for the spectral formulas of the method spec.

Written from the formulas, independently of ``freqlens.spectral``: distances by
explicit differences (no Gram trick), kernels by explicit exponentials divided
by their row sums, reductions by plain norms. Slow (O(N^2 D) memory) and only
meant for the small probe sets of the tests.
"""

from __future__ import annotations

import numpy as np

#: A target part smaller than this share of the whole target counts as zero.
ZERO_SHARE = 1e-9


def one_hot(targets, classes: int) -> np.ndarray:
    """Integer labels (N,) to one-hot (N, C); (N, C) targets pass through."""
    targets = np.asarray(targets)
    if targets.ndim == 1:
        out = np.zeros((targets.size, classes))
        out[np.arange(targets.size), targets.astype(int)] = 1.0
        return out
    return targets.astype(np.float64)


def distances(x, distance: str = "euclidean") -> np.ndarray:
    """d_ij = ||x_i - x_j|| or its square, by explicit differences."""
    x = np.asarray(x, dtype=np.float64)
    diff = x[:, None, :] - x[None, :, :]
    squared = np.einsum("ijd,ijd->ij", diff, diff)
    if distance == "squared":
        return squared
    if distance == "euclidean":
        return np.sqrt(squared)
    raise ValueError(distance)


def kernel(x, width: float, distance: str = "euclidean") -> np.ndarray:
    """G[i, j] = exp(-d_ij / (2 width)), each row divided by its row sum."""
    g = np.exp(-distances(x, distance) / (2.0 * width))
    return g / g.sum(axis=1, keepdims=True)


def reduce(f: np.ndarray, reduction: str) -> float:
    """Size of an (N, C) block: mean row norm or Frobenius norm."""
    if reduction == "mean":
        return float(np.mean(np.linalg.norm(f, axis=1)))
    if reduction == "frobenius":
        return float(np.sqrt(np.sum(f * f)))
    raise ValueError(reduction)


def _relative(error_part, target_part, target_whole, reduction) -> float:
    denominator = reduce(target_part, reduction)
    if denominator <= ZERO_SHARE * reduce(target_whole, reduction):
        return np.nan
    return reduce(error_part, reduction) / denominator


def relative_errors(x, h, y, widths, distance="euclidean", reduction="mean", rows=None):
    """(low, high) relative errors per width for one snapshot h (N, C).

    ``rows``: reduce over these rows only; the kernel spans all of ``x``.
    """
    h = np.asarray(h, dtype=np.float64)
    y = one_hot(y, h.shape[1])
    rows = np.arange(h.shape[0]) if rows is None else np.asarray(rows)
    low, high = [], []
    for width in widths:
        g = kernel(x, width, distance)
        h_low, y_low = g @ h, g @ y
        h_high, y_high = h - h_low, y - y_low
        low.append(_relative((h_low - y_low)[rows], y_low[rows], y[rows], reduction))
        high.append(_relative((h_high - y_high)[rows], y_high[rows], y[rows], reduction))
    return np.array(low), np.array(high)


def bands(x, f, widths, distance="euclidean") -> np.ndarray:
    """G_1 f, G_2 f - G_1 f, ..., f - G_K f with the widths sorted decreasing."""
    f = np.asarray(f, dtype=np.float64)
    lows = [kernel(x, w, distance) @ f for w in sorted(widths, reverse=True)]
    parts = [lows[0]]
    for previous, current in zip(lows[:-1], lows[1:]):
        parts.append(current - previous)
    parts.append(f - lows[-1])
    return np.stack(parts)


def band_errors(x, h, y, widths, distance="euclidean", reduction="mean", rows=None):
    """Relative error per band, lowest frequency first (K + 1 values)."""
    h = np.asarray(h, dtype=np.float64)
    y = one_hot(y, h.shape[1])
    rows = np.arange(h.shape[0]) if rows is None else np.asarray(rows)
    error_bands = bands(x, h - y, widths, distance)
    target_bands = bands(x, y, widths, distance)
    return np.array(
        [
            _relative(e[rows], t[rows], y[rows], reduction)
            for e, t in zip(error_bands, target_bands)
        ]
    )


def ratios(x, h, widths, distance="euclidean", reduction="mean"):
    """(LFR, HFR) per width: size of h_low (h_high) over size of h."""
    h = np.asarray(h, dtype=np.float64)
    whole = reduce(h, reduction)
    lfr, hfr = [], []
    for width in widths:
        h_low = kernel(x, width, distance) @ h
        lfr.append(reduce(h_low, reduction) / whole)
        hfr.append(reduce(h - h_low, reduction) / whole)
    return np.array(lfr), np.array(hfr)


def neighbour_counts_per_row(x, width, distance="euclidean") -> np.ndarray:
    """1 / sum_j G_ij^2 for every row i (its median is the neighbour count)."""
    g = kernel(x, width, distance)
    return 1.0 / np.sum(g * g, axis=1)


def scaled_positions(p) -> np.ndarray:
    """s_i = (p_i - min p) / (max p - min p)."""
    p = np.asarray(p, dtype=np.float64)
    return (p - p.min()) / (p.max() - p.min())


def projection_errors(positions, h, y, num_frequencies):
    """||F[h](k) - F[y](k)|| / ||F[y](k)|| at k = 2 pi m, by an explicit NUDFT."""
    h = np.asarray(h, dtype=np.float64)
    y = one_hot(y, h.shape[1])
    s = scaled_positions(positions)
    errors = []
    for m in range(num_frequencies):
        k = 2.0 * np.pi * m
        phase = np.array([np.exp(-1j * k * s_i) for s_i in s])  # (N,)
        fh = (phase[:, None] * h).sum(axis=0)
        fy = (phase[:, None] * y).sum(axis=0)
        errors.append(np.linalg.norm(fh - fy) / np.linalg.norm(fy))
    return 2.0 * np.pi * np.arange(num_frequencies), np.array(errors)


def convergence_step(steps, curve, threshold) -> float:
    """First step from which every later value of ``curve`` is < threshold."""
    for t in range(len(steps)):
        if all(value < threshold for value in curve[t:]):
            return float(steps[t])
    return np.nan


# --------------------------------------------------------------- test data
def random_problem(seed: int, n: int = 40, dim: int = 6, classes: int = 3, *, offset: float = 0.0,
                   spread: float = 1.0, steps: int | None = None):
    """Inputs (N, D), softmax outputs (N, C) or (T, N, C), and integer labels (N,).

    The labels depend smoothly on the inputs plus some noise, so every part of
    the targets is non-zero.
    """
    rng = np.random.default_rng(seed)
    x = offset + spread * rng.normal(size=(n, dim))
    score = (x - x.mean(axis=0)) @ rng.normal(size=(dim, classes)) / spread
    y = np.argmax(score + 0.5 * rng.normal(size=score.shape), axis=1)
    y[:classes] = np.arange(classes)  # every class present
    shape = (n, classes) if steps is None else (steps, n, classes)
    logits = rng.normal(size=shape)
    h = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return x, h, y


def quantile_widths(x, distance: str = "euclidean", levels=(0.05, 0.25, 0.6)) -> np.ndarray:
    """Widths at which the kernel falls to 1/e at these quantiles of the distances."""
    d = distances(x, distance)
    off_diagonal = d[~np.eye(len(d), dtype=bool)]
    return np.quantile(off_diagonal, levels) / 2.0
