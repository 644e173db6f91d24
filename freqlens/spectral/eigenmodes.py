"""The eigenmode (graph-Fourier) spectrum of signals over a probe set.

The Gaussian filters of :mod:`freqlens.spectral.filters` split a signal into
a low and a high part at a few cut-offs. The eigenvectors of the probe kernel
give the whole spectrum instead: with ``K_ij = exp(-dist_ij / (2 delta))``
(the filters' kernel) and ``d_i = sum_j K_ij``, the symmetric normalised
kernel ``S = D^-1/2 K D^-1/2`` has eigenvalues in (0, 1] (K is positive
definite for both distances freqlens uses), and its eigenvectors, ordered by
decreasing eigenvalue, run from smooth over the probe inputs (low frequency)
to rough (high frequency). ``1 - eigenvalue`` is the eigenvalue of the
normalised graph Laplacian ``I - S``, the usual graph frequency (Shuman et
al., IEEE Signal Processing Magazine 2013, "The emerging field of signal
processing on graphs"; Belkin and Niyogi, Neural Computation 2003). On points
evenly spaced on a ring the kernel is circulant and the eigenvectors are the
discrete Fourier modes: mode 0 is the constant, modes 2k-1 and 2k hold
cos(k theta) and sin(k theta) (tested).

Two views follow (freqlens' own, not the papers'):

- the **static target spectrum**: where a target signal (the clean labels,
  the poison flags) puts its energy before any training, the premise of Wu et
  al. (arXiv 2402.12026) that the backdoor mapping is lower-frequency than the
  clean one, measured;
- the **error per mode band over training**: the residual ``outputs - targets``
  of each snapshot projected on bands of modes, a frequency-by-step map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse.linalg

from freqlens._checks import ArrayLike, as_matrix, as_targets, check_choice, check_positive_int, to_numpy
from freqlens.spectral.filters import DISTANCES, pairwise_distances

#: Up to this many probes the decomposition is exact (dense ``eigh``); above, Lanczos finds the top modes.
MAX_DENSE = 4096
#: Modes kept by the partial (Lanczos) decomposition when ``num_modes`` is not given.
PARTIAL_MODES = 512


@dataclass(frozen=True)
class EigenBasis:
    """Eigenmodes of the symmetric normalised probe kernel, low frequency first.

    Attributes:
        eigenvalues: shape (M,), the kernel's eigenvalues in decreasing order
            (1 for the smoothest mode).
        modes: shape (N, M), orthonormal columns; column m is eigenmode m.
        width: the kernel width ``delta``.
        distance: ``"euclidean"`` or ``"squared"``.
        complete: whether all N modes are held (exact decomposition); with a
            partial one the energy beyond mode M is reported as one ``rest``.
    """

    eigenvalues: np.ndarray
    modes: np.ndarray
    width: float
    distance: str
    complete: bool

    @property
    def n(self) -> int:
        """Number of probe inputs N."""
        return int(self.modes.shape[0])

    @property
    def num_modes(self) -> int:
        """Number of modes held M."""
        return int(self.modes.shape[1])

    @property
    def frequencies(self) -> np.ndarray:
        """Graph frequency of each mode, ``1 - eigenvalue``, shape (M,), increasing, in [0, 1)."""
        return np.clip(1.0 - self.eigenvalues, 0.0, None)

    def energy(self, signal: ArrayLike, *, centre: bool = True) -> tuple[np.ndarray, float]:
        """Energy per mode, and the energy beyond the modes held.

        Returns:
            ``(per_mode, rest)``: shape (M,), the squared coefficients summed
            over the columns; ``rest`` is the squared norm not in those modes
            (0 up to rounding when the basis is complete).
        """
        f = _signal(signal, self.n)
        if centre:
            f = f - f.mean(axis=0, keepdims=True)
        per_mode = np.square(self.modes.T @ f).sum(axis=1)
        rest = max(float(np.square(f).sum() - per_mode.sum()), 0.0)
        return per_mode, rest

    def cumulative_share(self, signal: ArrayLike, top: int, *, centre: bool = True) -> float:
        """Share of the signal's energy in the ``top`` lowest-frequency modes, in [0, 1].

        A flat spectrum gives ``top / N``; a signal smooth over the probe
        inputs gives more. NaN for a signal with no energy (a constant).
        """
        top = check_positive_int(top, "top")
        if top > self.num_modes:
            raise ValueError(f"Expected `top` <= the {self.num_modes} modes held but got {top}.")
        per_mode, rest = self.energy(signal, centre=centre)
        total = per_mode.sum() + rest
        return float(per_mode[:top].sum() / total) if total > 0 else math.nan

    def band_edges(self, num_bands: int) -> np.ndarray:
        """Mode-index edges of ``num_bands`` log-spaced bands: band b holds modes
        ``edges[b] <= m < edges[b + 1]``; the first band is mode 0 alone (the
        smoothest), later bands double roughly in width, so the few low modes
        are resolved one by one and the many high ones pooled.

        Returns:
            Shape (B + 1,) integers from 0 to M, strictly increasing (B may be
            smaller than ``num_bands`` when M is too small to give distinct edges).
        """
        num_bands = check_positive_int(num_bands, "num_bands")
        m = self.num_modes
        if num_bands == 1 or m == 1:
            return np.array([0, m])
        inner = np.unique(np.round(np.geomspace(1, m, num_bands)).astype(np.int64))
        return np.unique(np.concatenate([[0], inner[inner < m], [m]]))

    def band_energy(self, signal: ArrayLike, num_bands: int = 12, *, centre: bool = True) -> np.ndarray:
        """Energy per mode band (plus a last ``rest`` entry for a partial basis).

        Returns:
            Shape (B,) or (B + 1,) when the basis is partial, float64.
        """
        per_mode, rest = self.energy(signal, centre=centre)
        edges = self.band_edges(num_bands)
        bands = np.add.reduceat(per_mode, edges[:-1])
        return bands if self.complete else np.append(bands, rest)

    def band_errors(self, outputs: ArrayLike, targets: ArrayLike, num_bands: int = 12,
                    *, relative_to: str = "initial") -> np.ndarray:
        """Error per mode band for each snapshot: ``|| U_b^T (outputs_t - targets) ||``.

        Args:
            outputs: shape (T, N, C) (or (N, C) for one snapshot): class probabilities.
            targets: shape (N, C) one-hot / soft targets, or (N,) integer labels.
            num_bands: bands as in :meth:`band_edges`.
            relative_to: ``"initial"`` divides each band's error by its value
                at the first snapshot (a normalised error curve, 1 at the
                start; NaN where that is 0); ``"target"`` by the band's norm
                of the (uncentred) targets, the filtering method's relative
                error; ``"none"`` leaves the norms.

        Returns:
            Shape (T, B) (B + 1 with the ``rest`` of a partial basis), float64.
        """
        check_choice(relative_to, "relative_to", ("initial", "target", "none"))
        y = to_numpy(outputs, "outputs").astype(np.float64)
        single = y.ndim == 2
        if single:
            y = y[None]
        if y.ndim != 3 or y.shape[1] != self.n:
            raise ValueError(f"Expected `outputs` of shape (T, N, C) with N={self.n} but got {y.shape}.")
        t = as_targets(targets, self.n, y.shape[2])
        edges = self.band_edges(num_bands)
        residual = y - t[None]  # (T, N, C)
        coeff = np.einsum("nm,tnc->tmc", self.modes, residual)
        per_mode = np.square(coeff).sum(axis=2)  # (T, M)
        bands = np.add.reduceat(per_mode, edges[:-1], axis=1)
        if not self.complete:
            rest = np.square(residual).sum(axis=(1, 2)) - per_mode.sum(axis=1)
            bands = np.concatenate([bands, np.maximum(rest, 0.0)[:, None]], axis=1)
        norms = np.sqrt(bands)
        if relative_to == "initial":
            with np.errstate(divide="ignore", invalid="ignore"):
                norms = np.where(norms[:1] > 0, norms / norms[:1], np.nan)
        elif relative_to == "target":
            tb = self.band_energy(t, num_bands, centre=False)
            with np.errstate(divide="ignore", invalid="ignore"):
                norms = np.where(tb > 0, norms / np.sqrt(tb), np.nan)
        return norms[0] if single else norms

    def to_dict(self) -> dict:
        """The basis' settings and eigenvalues (not the modes) for results.json."""
        return {"width": float(self.width), "distance": self.distance, "n": self.n,
                "num_modes": self.num_modes, "complete": self.complete,
                "eigenvalues": self.eigenvalues.tolist()}


def eigenbasis(
    inputs: ArrayLike,
    width: float | None = None,
    *,
    distance: str = "euclidean",
    num_modes: int | None = None,
    max_dense: int = MAX_DENSE,
    seed: int = 0,
) -> EigenBasis:
    """The eigenmodes of the symmetric normalised probe kernel.

    Args:
        inputs: probe inputs, shape (N, D) (kernel inputs as recorded).
        width: kernel width ``delta`` (same units as the filters' widths);
            default: the width whose median effective neighbour count is
            ``sqrt(N)`` (at least 4, at most N / 2), chosen with
            :func:`~freqlens.spectral.suggest_widths`: narrower kernels make
            S near the identity (all modes degenerate), wider ones leave one
            mode.
        distance: ``"euclidean"`` (default) or ``"squared"``.
        num_modes: modes to keep (low frequency first); default all for an
            exact decomposition, :data:`PARTIAL_MODES` for a partial one.
        max_dense: up to this N the decomposition is exact (LAPACK ``eigh``,
            float64, O(N^3)); above it, or when ``num_modes`` is smaller than
            N / 4, the top ``num_modes`` modes come from Lanczos iterations
            (``scipy.sparse.linalg.eigsh``, ARPACK), to its default tolerance
            (machine precision).
        seed: seed of the Lanczos start vector (partial decompositions).

    Returns:
        An :class:`EigenBasis`.

    Raises:
        ValueError: fewer than 3 inputs, a bad width, or ``num_modes`` out of [1, N].

    Example:
        >>> theta = 2 * np.pi * np.arange(64) / 64
        >>> basis = eigenbasis(np.c_[np.cos(theta), np.sin(theta)], width=0.2)
        >>> round(basis.cumulative_share(np.sin(3 * theta), top=7), 6)
        1.0
    """
    x = as_matrix(inputs, "inputs")
    check_choice(distance, "distance", DISTANCES)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"Expected `inputs` to hold at least 3 probe inputs but got {n}.")
    if width is None:
        from freqlens.spectral.widths import suggest_widths

        target = min(max(math.sqrt(n), 4.0), n / 2.0)
        width = float(suggest_widths(x, num=1, distance=distance,
                                     neighbours=(target, min(target * 1.01, float(n))))[0])
    if not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"Expected `width` to be a positive finite number but got {width!r}.")
    dist = pairwise_distances(x, distance=distance)
    return basis_from_distances(dist, width, distance=distance, num_modes=num_modes, max_dense=max_dense,
                                seed=seed)


def basis_from_distances(
    distances: np.ndarray,
    width: float,
    *,
    distance: str = "euclidean",
    num_modes: int | None = None,
    max_dense: int = MAX_DENSE,
    seed: int = 0,
) -> EigenBasis:
    """:func:`eigenbasis` from precomputed pairwise distances (N, N), e.g. the rows and
    columns of a bootstrap resample ``d[np.ix_(rows, rows)]`` of one distance matrix.

    ``distance`` only labels the basis: the values are used as they are.
    """
    dist = np.asarray(distances, dtype=np.float64)
    n = dist.shape[0]
    if dist.ndim != 2 or dist.shape != (n, n) or n < 3:
        raise ValueError(f"Expected `distances` of shape (N, N) with N >= 3 but got {dist.shape}.")
    if num_modes is not None:
        num_modes = check_positive_int(num_modes, "num_modes")
        if num_modes > n:
            raise ValueError(f"Expected `num_modes` <= N = {n} but got {num_modes}.")
    kernel = np.exp(dist / (-2.0 * float(width)))
    scale = 1.0 / np.sqrt(kernel.sum(axis=1))
    kernel *= scale[:, None]
    kernel *= scale[None, :]
    kernel = 0.5 * (kernel + kernel.T)
    partial = n > max_dense or (num_modes is not None and num_modes < n // 4)
    if not partial:
        values, vectors = scipy.linalg.eigh(kernel)
        values, vectors = values[::-1], vectors[:, ::-1]
        if num_modes is not None:
            values, vectors = values[:num_modes], vectors[:, :num_modes]
    else:
        k = min(num_modes or PARTIAL_MODES, n - 1)
        v0 = np.random.default_rng(seed).standard_normal(n)
        values, vectors = scipy.sparse.linalg.eigsh(kernel, k=k, which="LA", v0=v0)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
    vectors = _fix_signs(np.ascontiguousarray(vectors))
    return EigenBasis(eigenvalues=np.ascontiguousarray(values), modes=vectors, width=float(width),
                      distance=distance, complete=vectors.shape[1] == n)


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors with their largest-magnitude entry positive (a deterministic sign)."""
    rows = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def _signal(signal: ArrayLike, n: int) -> np.ndarray:
    f = to_numpy(signal, "signal").astype(np.float64)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"Expected `signal` of shape (N,) or (N, C) with N={n} but got {f.shape}.")
    return f
