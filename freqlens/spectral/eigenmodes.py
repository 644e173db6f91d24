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

import itertools
import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse.linalg
import torch

from freqlens._checks import (
    ArrayLike,
    as_index,
    as_matrix,
    as_targets,
    check_choice,
    check_positive_int,
    to_numpy,
)
from freqlens.spectral.filters import DISTANCES, pairwise_distances
from freqlens.spectral.uncertainty import as_weights

#: Up to this many probes the decomposition is exact (dense ``eigh``); above, Lanczos finds the top modes.
MAX_DENSE = 4096
#: ``relative_to="floored"``: a band's first error counts as at least this fraction of what a
#: flat spectrum would give it (norms; 0.1 = 1% of the flat share of the energy).
FLOOR_SHARE = 0.1
#: Modes kept by the partial (Lanczos) decomposition when ``num_modes`` is not given.
PARTIAL_MODES = 512
#: Rows sampled (evenly) for the median effective neighbour count of a width.
NEIGHBOUR_ROWS = 1024
#: Relative precision of the default width (bisection on its logarithm).
WIDTH_RTOL = 1e-7
#: Memory of one chunk of the per-set band energies (:meth:`EigenBasis.band_errors` with a subset or weights).
BAND_CHUNK_BYTES = 64 * 2**20
#: Row sums of a residual (outputs - targets) within this of 0 count as probabilities' rounding.
ROW_SUM_TOL = 1e-6


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

    def cumulative_share(self, signal: ArrayLike, top: int, *, centre: bool = True,
                         weights: ArrayLike | None = None) -> float | np.ndarray:
        """Share of the signal's energy in the ``top`` lowest-frequency modes, in [0, 1].

        A flat spectrum gives ``top / N``; a signal smooth over the probe
        inputs gives more. NaN for a signal with no energy (a constant).

        With bootstrap row ``weights`` (R, N) (:func:`~freqlens.spectral.bootstrap_weights`)
        the share is reduced over rows with the basis and the (centred) signal
        held fixed: ``sum_n w_n ||(U_top U_top^T f)_n||^2 / sum_n w_n ||f_n||^2``,
        one value per resample, shape (R,); all-ones weights give the share
        itself. (Resampling the basis' inputs would duplicate points and bias
        the kernel, see :mod:`freqlens.spectral.uncertainty`.)
        """
        top = check_positive_int(top, "top")
        if top > self.num_modes:
            raise ValueError(f"Expected `top` <= the {self.num_modes} modes held but got {top}.")
        if weights is not None:
            f = _signal(signal, self.n)
            if centre:
                f = f - f.mean(axis=0, keepdims=True)
            w = as_weights(weights, self.n)
            own = self.modes[:, :top]
            low = np.square(own @ (own.T @ f)).sum(axis=1)
            whole = np.square(f).sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                total = w @ whole
                return np.where(total > 0, (w @ low) / total, np.nan)
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
                    *, relative_to: str = "initial", subset: ArrayLike | None = None,
                    weights: ArrayLike | None = None) -> np.ndarray:
        """Error per mode band for each snapshot: the band energy of a probe set's own residual.

        With ``r_n = outputs_t[n] - targets[n]`` (C classes) and ``u_m`` the
        eigenmodes, a probe set S (``subset``; all N probes without it) with
        bootstrap row weights ``w`` (``weights``; all ones without them) has
        the coefficients and band errors

            c_m = sum_{n in S} w_n u_m[n] r_n            (a C-vector per mode)
            e_b = sqrt( sum_{m in b} ||c_m||^2 )

        i.e. the set's residual as a signal over the whole basis (zero on the
        probes outside S, ``w_n r_n`` on those in it) and its energy in band
        b's modes. Without ``subset`` and ``weights`` this is
        ``|| U_b^T r ||``; for a partial basis a last ``rest`` band holds the
        energy beyond the modes held. So in the joint view (one basis over
        clean + backdoor probes) each set has its own spectrum, even in a
        band of one mode, and two sets whose residuals differ give different
        curves in every band.

        **Bootstrap** (``weights``): a multiplier bootstrap with the basis
        fixed: each resample weights the set's rows by how often it drew them
        (:func:`~freqlens.spectral.bootstrap_weights`) *before* the
        projection, and the same resample's value at the first snapshot (or
        its targets) normalises its curve. Resampling the basis' inputs would
        duplicate points and bias the kernel (see
        :mod:`freqlens.spectral.uncertainty`). Known approximation: a drawn
        row counts ``w_n`` times in the coefficients (``w_n^2`` in the
        energy) and undrawn rows are zeroed, which adds some roughness to the
        resampled signal (energy moved to higher modes) compared with a new
        probe sample; ``benchmarks/spectrum_speed.py`` reports the bias of
        the resampled learning speeds (their mean minus the estimate).

        **Cost**: coefficients are computed only for the modes outside the
        last band (all held modes for a partial basis); the last band (or a
        partial basis' ``rest``) is, by Parseval, ``sum_n w_n^2 ||r_n||^2``
        minus the other bands (clipped at 0). The C classes are rotated
        (orthonormally, energies unchanged) so that the row-sum axis comes
        first; where outputs and targets are probabilities that axis is 0 up
        to rounding (every row sum within :data:`ROW_SUM_TOL`) and its
        coefficients are skipped, its energy counted in the last band: any
        other band is then low by at most ``1e-12 sum_n w_n^2 / C`` (measured
        effect on learning speeds: < 1e-8). So C = 2 probabilities cost one
        column. One float64 matrix product per chunk of resamples and
        snapshots (``torch.matmul``), memory bounded by :data:`BAND_CHUNK_BYTES`.

        Args:
            outputs: shape (T, N, C) (or (N, C) for one snapshot): class probabilities.
            targets: shape (N, C) one-hot / soft targets, or (N,) integer labels.
            num_bands: bands as in :meth:`band_edges`.
            relative_to: ``"floored"`` divides each band's error by its value
                at the first snapshot or, where that is smaller, by a tenth of
                what a flat spectrum would give the band of the (set's) whole
                first error, ``0.1 ||r(0)|| sqrt(m_b / M)`` (m_b modes in the
                band of M; :data:`FLOOR_SHARE`):
                a band with almost no error at the start then does not turn
                small changes into huge relative ones (freqlens' choice for the
                error per mode band over training); ``"initial"`` divides each band's error by its value
                at the first snapshot (a normalised error curve, 1 at the
                start; NaN where that is 0, e.g. a set with no error in that
                band); ``"target"`` by the same band error of the
                (uncentred) targets over the same rows and weights, the
                filtering method's relative error; ``"none"`` leaves the norms.
            subset: optional boolean mask or indices of the probe set's rows
                (the basis stays over all N probes).
            weights: bootstrap row weights, shape (R, n_rows) with n_rows =
                ``len(subset)`` (its rows in increasing index order) or N;
                each resample a row.

        Returns:
            Shape (T, B) (B + 1 with the ``rest`` of a partial basis), float64;
            (B,) for one snapshot; with ``weights`` a leading R axis: (R, T, B).

        Raises:
            ValueError: outputs, targets, subset or weights of the wrong shape,
                or an unknown ``relative_to``.
        """
        check_choice(relative_to, "relative_to", ("initial", "floored", "target", "none"))
        y = to_numpy(outputs, "outputs").astype(np.float64)
        single = y.ndim == 2
        if single:
            y = y[None]
        if y.ndim != 3 or y.shape[1] != self.n:
            raise ValueError(f"Expected `outputs` of shape (T, N, C) with N={self.n} but got {y.shape}.")
        t = as_targets(targets, self.n, y.shape[2])
        edges = self.band_edges(num_bands)
        residual = y - t[None]  # (T, N, C)
        if subset is None and weights is None:
            coeff = np.einsum("nm,tnc->tmc", self.modes, residual)
            per_mode = np.square(coeff).sum(axis=2)  # (T, M)
            bands = np.add.reduceat(per_mode, edges[:-1], axis=1)
            if not self.complete:
                rest = np.square(residual).sum(axis=(1, 2)) - per_mode.sum(axis=1)
                bands = np.concatenate([bands, np.maximum(rest, 0.0)[:, None]], axis=1)
            if relative_to == "target":
                target = self.band_energy(t, num_bands, centre=False)
        else:
            rows = np.arange(self.n) if subset is None else as_index(subset, self.n)
            w = np.ones((1, rows.size)) if weights is None else as_weights(weights, rows.size)
            signal = residual[:, rows]
            if relative_to == "target":  # the targets as a last snapshot
                signal = np.concatenate([signal, t[rows][None]], axis=0)
            energy = self._class_band_energy(signal, edges, rows, w)  # (R, T [+ 1], B)
            if weights is None:
                energy = energy[0]
            bands, target = (energy[..., :-1, :], energy[..., -1, :]) if relative_to == "target" else (energy, None)
        norms = np.sqrt(bands)
        with np.errstate(divide="ignore", invalid="ignore"):
            if relative_to == "initial":
                first = norms[..., :1, :]
                norms = np.where(first > 0, norms / first, np.nan)
            elif relative_to == "floored":
                # the band's share of the set's whole initial error under a flat spectrum: m_b / M
                sizes = np.diff(edges).astype(np.float64)
                if norms.shape[-1] > sizes.size:  # a partial basis' rest
                    sizes = np.append(sizes, self.n - edges[-1])
                total = np.sqrt(bands[..., :1, :].sum(axis=-1, keepdims=True))
                floor = FLOOR_SHARE * total * np.sqrt(sizes / sizes.sum())
                first = np.maximum(norms[..., :1, :], floor)
                norms = np.where(first > 0, norms / first, np.nan)
            elif relative_to == "target":
                target = target[..., None, :]
                norms = np.where(target > 0, norms / np.sqrt(target), np.nan)
        return norms[..., 0, :] if single else norms

    def _class_band_energy(self, signal: np.ndarray, edges: np.ndarray, rows: np.ndarray,
                           weights: np.ndarray) -> np.ndarray:
        """:meth:`_set_band_energy` with the class axis rotated so that probabilities cost C - 1 columns.

        An orthonormal rotation of the C classes, first axis ``(1, ..., 1) / sqrt(C)``,
        leaves every energy unchanged. On that first axis a row's residual is
        ``sum_c r_nc / sqrt(C)``: 0 up to rounding when outputs and targets
        are both probabilities. Snapshots where every such row sum is within
        :data:`ROW_SUM_TOL` skip that axis' coefficients and count its energy
        ``sum_n w_n^2 (sum_c r_nc)^2 / C`` in the last band (which holds the
        rest by Parseval anyway): every other band's energy is then low by at
        most that amount (<= 1e-12 sum_n w_n^2 / C). Other snapshots (e.g.
        the targets themselves, or logits) compute it exactly.
        """
        classes = signal.shape[2]
        if classes == 1:
            return self._set_band_energy(signal, edges, rows, weights)
        basis = np.linalg.qr(np.column_stack([np.ones(classes), np.eye(classes)[:, :classes - 1]]))[0]
        rotated = signal @ basis  # (T, n_rows, C); axis 0 the row sums / sqrt(C)
        energy = self._set_band_energy(rotated[..., 1:], edges, rows, weights)
        sums = rotated[..., 0]  # (T, n_rows)
        exact = np.max(np.abs(sums), axis=1) * math.sqrt(classes) > ROW_SUM_TOL
        if exact.any():
            energy[:, exact] += self._set_band_energy(sums[exact][..., None], edges, rows, weights)
        if not exact.all():
            energy[:, ~exact, -1] += np.square(weights) @ np.square(sums[~exact]).T
        return energy

    def _set_band_energy(self, signal: np.ndarray, edges: np.ndarray, rows: np.ndarray,
                         weights: np.ndarray) -> np.ndarray:
        """Per resample r, snapshot t and band b: ``sum_{m in b} ||sum_n w_rn u_m[n] f_t[n]||^2``.

        ``signal`` is (T, n_rows, C) on ``rows``, ``weights`` (R, n_rows);
        returns (R, T, B) (B + 1 with a partial basis' rest), float64.
        """
        steps, n_rows, classes = signal.shape
        resamples = weights.shape[0]
        bands = edges.size - 1
        keep = int(edges[-2]) if self.complete else self.num_modes  # modes with computed coefficients
        computed = bands - 1 if self.complete else bands
        out = np.empty((resamples, steps, bands if self.complete else bands + 1))
        # Parseval: the weighted signal's whole energy, sum_n w_n^2 ||f_n||^2, (R, T)
        total = np.square(weights) @ np.square(signal).sum(axis=2).T
        if keep:
            own = torch.from_numpy(np.ascontiguousarray(self.modes[rows, :keep].T))  # (keep, n_rows), float64
            flat = torch.from_numpy(np.ascontiguousarray(signal.transpose(1, 0, 2)))  # (n_rows, T, C)
            w = torch.from_numpy(weights)
            # columns of one product: (resamples in the chunk) x (snapshots in the chunk) x C
            columns = max(classes, BAND_CHUNK_BYTES // (8 * max(keep, n_rows)))
            step_chunk = max(1, min(steps, columns // classes))
            resample_chunk = max(1, columns // (step_chunk * classes))
            starts = edges[:computed]
            for t0 in range(0, steps, step_chunk):
                part = flat[:, t0:t0 + step_chunk]  # (n_rows, Tc, C)
                tc = part.shape[1]
                for r0 in range(0, resamples, resample_chunk):
                    wc = w[r0:r0 + resample_chunk]  # (Rc, n_rows)
                    scaled = wc.T[:, :, None, None] * part[:, None]  # (n_rows, Rc, Tc, C)
                    coeff = own @ scaled.reshape(n_rows, -1)  # (keep, Rc Tc C)
                    energy = coeff.square_().reshape(keep, -1, classes).sum(dim=2)  # (keep, Rc Tc)
                    summed = np.add.reduceat(energy.numpy(), starts, axis=0)  # (computed, Rc Tc)
                    out[r0:r0 + wc.shape[0], t0:t0 + tc, :computed] = (
                        summed.reshape(computed, wc.shape[0], tc).transpose(1, 2, 0))
        else:
            out[..., :computed] = 0.0
        out[..., -1] = np.maximum(total - out[..., :-1].sum(axis=2), 0.0)
        return out

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
            ``sqrt(N)`` (at least 4, at most N / 2), found on the distances
            themselves (:func:`width_for_neighbours`): narrower kernels make
            S near the identity (all modes degenerate), wider ones leave one
            mode.
        distance: ``"euclidean"`` (default) or ``"squared"``.
        num_modes: modes to keep (low frequency first); default all for an
            exact decomposition, :data:`PARTIAL_MODES` for a partial one.
        max_dense: up to this N the decomposition is exact (LAPACK ``syevd``, divide and conquer,
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
    if width is not None and not (isinstance(width, (int, float)) and math.isfinite(width) and width > 0):
        raise ValueError(f"Expected `width` to be a positive finite number but got {width!r}.")
    dist = pairwise_distances(x, distance=distance)
    if width is None:
        width = width_for_neighbours(dist, min(max(math.sqrt(n), 4.0), n / 2.0))
    return basis_from_distances(dist, width, distance=distance, num_modes=num_modes, max_dense=max_dense,
                                seed=seed)


def width_for_neighbours(distances: np.ndarray, target: float, *, max_rows: int = NEIGHBOUR_ROWS) -> float:
    """The kernel width whose median effective neighbour count is ``target``.

    With ``G`` the row-normalised kernel ``exp(-d_ij / (2 width))`` (the
    filters'), row i's effective neighbour count is ``1 / sum_j G_ij^2``: 1
    for the identity, N for a uniform kernel. It grows with the width, so the
    width is found by bisection on its logarithm, from a bracket of 1/100 of
    the smallest positive distance to 100 times the largest, to a relative
    precision of :data:`WIDTH_RTOL`; the median is over at most ``max_rows``
    evenly spaced rows of the distances.

    Args:
        distances: pairwise distances (N, N) as the kernel uses them
            (plain or squared), e.g. :func:`~freqlens.spectral.pairwise_distances`.
        target: the median effective neighbour count, in [1, N].

    Returns:
        The width (a float > 0).

    Raises:
        ValueError: a target outside [1, N], or distances that are all zero.
    """
    dist = np.asarray(distances, dtype=np.float64)
    n = dist.shape[0]
    if not 1.0 <= target <= n:
        raise ValueError(f"Expected `target` in [1, N = {n}] but got {target!r}.")
    positive = dist[dist > 0]
    if positive.size == 0:
        raise ValueError("Expected `distances` with some positive entry but every distance is 0.")
    rows = dist[np.unique(np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64))]

    def median_neighbours(width: float) -> float:
        kernel = np.exp(rows / (-2.0 * width))
        return float(np.median(kernel.sum(axis=1) ** 2 / np.square(kernel).sum(axis=1)))

    low, high = math.log(positive.min() / 100.0), math.log(positive.max() * 100.0)
    while high - low > WIDTH_RTOL:
        middle = 0.5 * (low + high)
        if median_neighbours(math.exp(middle)) < target:
            low = middle
        else:
            high = middle
    return math.exp(0.5 * (low + high))


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
        values, vectors = scipy.linalg.eigh(kernel, driver="evd")  # divide and conquer: exact, fastest here
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


def mode_band_names(edges: ArrayLike, rest: bool = False) -> list[str]:
    """Labels of mode bands from their edges (B + 1,) (:meth:`EigenBasis.band_edges`):
    ``"0"``, ``"1"``, ``"2-3"``, ... (a band of one mode by its index, else its first and
    last mode), and ``"rest"`` after them for a partial basis' remainder (``rest=True``).

    Returns:
        B labels (B + 1 with ``rest``).
    """
    edges = np.asarray(edges).tolist()
    names = [str(a) if b - a == 1 else f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)]
    return names + (["rest"] if rest else [])


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
