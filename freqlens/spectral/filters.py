"""The filtering method: Gaussian low-pass filters over a probe set's inputs.

Xu et al. (Frequency Principle, arXiv 1901.06523) and Wu et al. (MuScleLoRA,
ACL 2024, arXiv 2402.12026) measure the frequency content of a mapping over
high-dimensional inputs by smoothing it with a Gaussian kernel built from the
inputs. For probe inputs x_1..x_N and a width delta:

    G_delta[i, j] = exp(-dist(x_i, x_j) / (2 delta)) / sum_j' exp(-dist(x_i, x_j') / (2 delta))

    f_low = G_delta f,    f_high = f - f_low

with ``dist`` the plain Euclidean distance ``||x_i - x_j||`` (``"euclidean"``,
the MuScleLoRA code, freqlens' default) or its square (``"squared"``, the
Frequency Principle code, a true Gaussian). Larger delta means wider smoothing,
a lower cut-off frequency.

:class:`FilterBank` builds the pairwise distances once and then measures any
number of output snapshots against the targets at every width in one pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from freqlens._checks import (
    ArrayLike,
    as_index,
    as_matrix,
    as_outputs,
    as_targets,
    as_widths,
    check_choice,
    check_positive_int,
)
from freqlens.spectral.sketch import RandomProjection
from freqlens.spectral.uncertainty import as_weights

DISTANCES = ("euclidean", "squared")
REDUCTIONS = ("mean", "frobenius")

#: A target part whose size is below this fraction of the whole target's size
#: is treated as zero: its relative error is undefined (NaN).
ZERO_PART_RTOL = 1e-6

#: The kernel is built in blocks of rows of about this many bytes (float32):
#: memory O(N x chunk), never a whole N x N kernel, let alone K of them.
CHUNK_BYTES = 64 * 2**20

#: The (N, N) distances are kept between calls when they take at most
#: this many bytes (N <= 8192); above, each call recomputes them chunk by chunk.
DISTANCE_CACHE_BYTES = 256 * 2**20

#: The Gram products of the distances run in float32 when the change this
#: causes in a kernel row (L1, measured on sampled rows) is below this; else float64.
GRAM_FLOAT32_TOLERANCE = 1e-6


class DegenerateTargetWarning(RuntimeWarning):
    """A relative error is undefined because the target part it divides by is zero."""


@dataclass
class _Problem:
    """Outputs and targets of one measurement, laid out for the kernel products.

    ``signal`` has three groups of columns, snapshot-major: the errors h - y
    (T * C), the targets y (C) and, when measured too, the outputs h (T * C).
    """

    signal: torch.Tensor  # (N, M) float64
    rows: torch.Tensor | None  # rows the errors are reduced over (None: all)
    classes: int
    reduction: str
    scale: float  # size of the whole target over the rows, for the zero test
    constant: bool  # the targets are the same for every row
    single: bool  # the outputs were one snapshot (N, C)
    errors: int  # columns of errors; the targets follow
    end: int  # columns of errors and targets; outputs follow
    weights: torch.Tensor | None = None  # bootstrap row weights (R, rows) float64, or None


class _Sums:
    """Sizes of column groups (mean row norm or Frobenius norm), summed over row chunks.

    With bootstrap ``weights`` (R, rows) the per-row terms of each chunk (row
    norms, or row sums of squares) are contracted with the chunk's weights,
    one (R, c) @ (c, groups) product, so every size gains a leading R axis:
    weighted means ``sum_n w_n ||f_n|| / sum_n w_n`` and weighted sums of
    squares ``sqrt(sum_n w_n ||f_n||^2)``.
    """

    def __init__(self, classes: int, reduction: str, rows: int, weights: torch.Tensor | None = None) -> None:
        self.classes, self.reduction, self.rows = classes, reduction, rows
        self.weights = weights  # (R, rows) float64, or None
        self.total = float(rows) if weights is None else weights.sum(dim=1, keepdim=True)
        self.chunk: torch.Tensor | None = None  # the current chunk's weights (R, c)
        self.sums: dict = {}

    def start(self, positions: slice) -> None:
        """The next chunk's rows are these positions among the reduced rows."""
        if self.weights is not None:
            self.chunk = self.weights[:, positions]

    def add(self, key, values: torch.Tensor) -> None:
        blocks = values.reshape(values.shape[0], -1, self.classes)
        if self.reduction == "mean":
            terms = torch.linalg.vector_norm(blocks, dim=2)
        else:
            terms = blocks.square().sum(dim=2)
        part = terms.sum(dim=0) if self.chunk is None else self.chunk @ terms.double()
        previous = self.sums.get(key)
        self.sums[key] = part if previous is None else previous + part

    def size(self, key) -> np.ndarray:
        total = self.sums[key]
        if self.reduction == "mean":
            total = total / (self.total.to(total.device) if isinstance(self.total, torch.Tensor) else self.total)
            return total.cpu().numpy()
        return total.sqrt().cpu().numpy()


def pairwise_distances(inputs: ArrayLike, *, distance: str = "euclidean") -> np.ndarray:
    """Pairwise distances between the rows of ``inputs``.

    Args:
        inputs: probe inputs, shape (N, D).
        distance: ``"euclidean"`` for ``||x_i - x_j||`` or ``"squared"`` for
            ``||x_i - x_j||^2``.

    Returns:
        A symmetric float64 array of shape (N, N) with a zero diagonal.

    Example:
        >>> pairwise_distances([[0.0, 0.0], [3.0, 4.0]]).tolist()
        [[0.0, 5.0], [5.0, 0.0]]
    """
    x = torch.from_numpy(as_matrix(inputs, "inputs"))
    check_choice(distance, "distance", DISTANCES)
    return _distances(x, distance).numpy()


def _distances(x: torch.Tensor, distance: str, rows: np.ndarray | None = None) -> torch.Tensor:
    """Distances from every row (or from ``rows`` only) to every row of ``x``, in x's dtype."""
    # Centre first: distances are translation invariant, and the Gram trick
    # |a|^2 + |b|^2 - 2ab loses fewer digits on centred data.
    x = x - x.mean(dim=0, keepdim=True)
    norms = (x * x).sum(dim=1)
    if rows is None:
        squared = (norms[:, None] + norms[None, :] - 2.0 * (x @ x.T)).clamp_(min=0.0)
        squared.fill_diagonal_(0.0)
        squared = 0.5 * (squared + squared.T)
    else:
        index = torch.as_tensor(rows, device=x.device)
        squared = (norms[index, None] + norms[None, :] - 2.0 * (x[index] @ x.T)).clamp_(min=0.0)
        squared[torch.arange(index.numel(), device=x.device), index] = 0.0
    return squared if distance == "squared" else squared.sqrt()


class FilterBank:
    """Low-pass filters of several widths over one probe set's inputs.

    Built once from the probe inputs; then splits any signal into low and high
    parts, measures relative errors of outputs against targets per width (the
    low/high split), per frequency band, and the low/high frequency ratios.
    Outputs may be one snapshot (N, C) or a stack of snapshots (T, N, C).

    How it computes (the same numbers as the dense method, a kernel per width
    and a product per snapshot, to ~1e-6 relative; see ``benchmarks/``):

    - the kernel is never held: it is built in blocks of rows (about
      ``CHUNK_BYTES``), so memory is O(N x chunk), not O(K N^2);
    - all T snapshots of all C classes, the targets and a column of ones
      (the row sums that normalise the kernel) form one (N, T C + C + 1)
      matrix, so each width costs one exponential of the block and one
      matrix product;
    - distances come from the Gram trick on centred inputs, in float32 when
      the change this makes to kernel rows, measured on sampled rows, is
      below ``GRAM_FLOAT32_TOLERANCE``, and in float64 otherwise (tight
      clusters far apart; see :attr:`gram_dtype`); exponentials and products run in
      float32 (``dtype``); the low parts and every reduction in float64.

    Args:
        inputs: probe inputs, shape (N, D); for a language model the flattened
            embedding-layer outputs at the start of training. float32 inputs
            are used as they are (no float64 copy).
        widths: filter widths delta, all > 0, in any order.
        distance: ``"euclidean"`` (default, MuScleLoRA) or ``"squared"``
            (Frequency Principle).
        device: torch device for the computation (default CPU).
        chunk_size: rows of the kernel built at a time (default: as many as
            fit in ``CHUNK_BYTES``).
        dtype: ``"float32"`` (default) for the exponentials and products, or
            ``"float64"`` for everything (about twice the time; the same
            numbers as the dense float64 method to rounding).
        sketch: for very wide inputs, project them first to this many
            dimensions with :class:`~freqlens.spectral.sketch.RandomProjection`
            (seed 0), streamed over row chunks: ``inputs`` may then be a
            memmap or an iterable of row chunks, never held whole. Squared
            distances are kept within 1 +- eps, eps from
            :func:`~freqlens.spectral.sketch.jl_dimension`; the kernel then
            belongs to the sketched inputs, see ``sketch_error``.

    Attributes:
        gram_dtype: the dtype of the distance products (float32 or float64).
        sketch_error: with ``sketch``, the eps that every squared distance is
            kept within (1 +- eps) with probability 0.99; else None.

    Example:
        >>> bank = FilterBank([[0.0], [1.0], [2.0], [3.0]], widths=[0.5, 2.0])
        >>> low, high = bank.relative_errors([[0.9, 0.1]] * 4, [0, 0, 1, 1])
        >>> low.shape, high.shape
        ((2,), (2,))
    """

    def __init__(
        self,
        inputs: ArrayLike,
        widths: ArrayLike,
        *,
        distance: str = "euclidean",
        device: str | torch.device | None = None,
        chunk_size: int | None = None,
        dtype: str | torch.dtype = "float32",
        sketch: int | None = None,
    ) -> None:
        self.sketch_error: float | None = None
        if sketch is not None:
            projection = RandomProjection(check_positive_int(sketch, "sketch"))
            inputs = projection.transform(inputs)
            self.sketch_error = projection.error_bound(inputs.shape[0]) if inputs.shape[0] > 1 else 0.0
        x = as_matrix(inputs, "inputs", keep_float32=True)
        names = {"float32": torch.float32, "float64": torch.float64}
        self.dtype = names.get(dtype, dtype)
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"Expected `dtype` to be 'float32' or 'float64' but got {dtype!r}.")
        self.widths = as_widths(widths)
        self.distance = check_choice(distance, "distance", DISTANCES)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        n = x.shape[0]
        if chunk_size is None:
            chunk_size = max(1, CHUNK_BYTES // (self.dtype.itemsize * n))
        self.chunk_size = min(check_positive_int(chunk_size, "chunk_size"), n)
        mean = x.mean(axis=0, dtype=np.float64)
        self.gram_dtype = self.dtype
        self._x, self._norms = self._centre(x, mean)
        self._dist: torch.Tensor | None = None
        if self.dtype == torch.float32 and self._gram_error(x, mean) > GRAM_FLOAT32_TOLERANCE:
            self.gram_dtype = torch.float64
            self._x, self._norms = self._centre(x, mean)
        if n * n * self.dtype.itemsize <= DISTANCE_CACHE_BYTES:
            self._dist = self._all_distances()

    def _centre(self, x: np.ndarray, mean: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs minus their mean in ``gram_dtype``, and their squared norms.

        Centred in the inputs' own precision before any rounding to float32
        (a float32 offset of 100 would lose a spread of 0.01 to rounding);
        distances are translation invariant, and the Gram trick
        |a|^2 + |b|^2 - 2ab loses fewer digits on centred data.
        """
        # float32 inputs minus a float32 mean lose nothing the Gram products keep
        work = torch.float32 if x.dtype == np.float32 and self.gram_dtype == torch.float32 else torch.float64
        shift = torch.from_numpy(mean).to(self.device, work)
        centred = torch.empty(x.shape, dtype=self.gram_dtype, device=self.device)
        norms = torch.empty(x.shape[0], dtype=self.gram_dtype, device=self.device)
        for a in range(0, x.shape[0], self.chunk_size):
            # Not in place: the block may share memory with the caller's array.
            block = torch.from_numpy(x[a : a + self.chunk_size]).to(self.device, work) - shift
            centred[a : a + self.chunk_size] = block
            norms[a : a + self.chunk_size] = torch.linalg.vector_norm(block, dim=1).square()
        return centred, norms

    def _gram_error(self, x: np.ndarray, mean: np.ndarray, sample: int = 64) -> float:
        """How far float32 Gram products move the kernel, measured on sampled rows.

        For up to ``sample`` rows, the largest L1 change of a kernel row at the
        narrowest width between float32 and float64 distances. A low part moves
        by at most this times the signal's largest value. Small on spread-out
        data (~1e-7 on sentence-embedding-like inputs); large for tight
        clusters far apart, whose small distances float32 cannot resolve.
        """
        n = x.shape[0]
        rows = torch.as_tensor(np.unique(np.linspace(0, n - 1, min(n, sample)).astype(np.int64)))
        single = self._distance_block(rows).double().cpu()
        centred = torch.from_numpy(x[rows.numpy()]).double() - torch.from_numpy(mean)
        exact = torch.empty_like(single)
        for a in range(0, n, self.chunk_size):
            block = torch.from_numpy(x[a : a + self.chunk_size]).double() - torch.from_numpy(mean)
            exact[:, a : a + block.shape[0]] = torch.cdist(centred, block)
        if self.distance == "squared":
            exact.square_()
        width = float(self.widths.min())  # the narrowest filter feels a distance error most
        change = torch.softmax(single / (-2.0 * width), 1) - torch.softmax(exact / (-2.0 * width), 1)
        return float(change.abs().sum(dim=1).max())

    @property
    def n(self) -> int:
        """Number of probe inputs N."""
        return int(self._x.shape[0])

    def __repr__(self) -> str:
        return (
            f"FilterBank(n={self.n}, widths={np.round(self.widths, 4).tolist()}, "
            f"distance={self.distance!r})"
        )

    # ----------------------------------------------------------------- kernels
    def _distance_block(self, rows: torch.Tensor | slice) -> torch.Tensor:
        """Distances (in ``dtype``) from ``rows`` (a slice or a 1-D index tensor) to every
        input, shape (c, N); a view of the cache when the distances are cached."""
        if self._dist is not None:
            return self._dist[_on(rows, self.device)]
        index = _index(rows, self.device)
        x, norms = self._x, self._norms
        block = torch.addmm(norms[None, :], x[index], x.T, alpha=-2.0).add_(norms[index, None]).clamp_(min=0.0)
        block[torch.arange(index.numel(), device=self.device), index] = 0.0
        if self.distance == "euclidean":
            block.sqrt_()
        return block.to(self.dtype)

    def _all_distances(self, block: int = 768) -> torch.Tensor:
        """The whole (N, N) distance matrix, from the Gram products of the blocks on and above
        the diagonal only (it is symmetric: about half the arithmetic of one product)."""
        n, x, norms = self.n, self._x, self._norms
        dist = torch.empty((n, n), dtype=self.dtype, device=self.device)
        for i in range(0, n, block):
            for j in range(i, n, block):
                part = torch.addmm(norms[None, j : j + block], x[i : i + block], x[j : j + block].T, alpha=-2.0)
                part.add_(norms[i : i + block, None]).clamp_(min=0.0)
                if i == j:  # the product of a block with itself is symmetric only to rounding
                    part = 0.5 * (part + part.T)
                    part.fill_diagonal_(0.0)
                if self.distance == "euclidean":
                    part.sqrt_()
                dist[i : i + block, j : j + block] = part
                if j != i:
                    dist[j : j + block, i : i + block] = part.T
        return dist

    def _row_chunks(self, rows: torch.Tensor | None):
        """Row chunks: slices of all rows, or index tensors of ``rows``."""
        if rows is None:
            for start in range(0, self.n, self.chunk_size):
                yield slice(start, min(start + self.chunk_size, self.n))
            return
        ids = rows.cpu()
        for start in range(0, ids.numel(), self.chunk_size):
            yield ids[start : start + self.chunk_size]

    def _lows(self, values: torch.Tensor, rows: torch.Tensor):
        """Low parts ``G_w[rows] @ values`` (float64, (c, M)) for every width, widest first.

        Yields ``(k, low)`` with ``k`` the width's index in :attr:`widths`.
        ``values`` is (N, M + 1) in ``dtype``, its last column ones.
        """
        dist = self._distance_block(rows)
        kernel = torch.empty_like(dist)
        m = values.shape[1] - 1
        for k in np.argsort(-self.widths, kind="stable"):
            torch.mul(dist, -0.5 / float(self.widths[k]), out=kernel).exp_()
            product = (kernel @ values).double()
            # The diagonal is the row maximum (distance 0): every row sum is >= 1.
            yield int(k), product[:, :m] / product[:, m:]

    def _with_ones(self, signal: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(signal.shape[0], 1, dtype=self.dtype, device=self.device)
        return torch.cat([signal.to(self.device, self.dtype), ones], dim=1)

    def kernel(self, width_index: int = 0) -> np.ndarray:
        """The dense (N, N) row-normalised kernel for ``widths[width_index]`` (float64)."""
        if not 0 <= width_index < self.widths.size:
            raise ValueError(
                f"Expected `width_index` in [0, {self.widths.size}) but got {width_index}."
            )
        width = float(self.widths[width_index])
        parts = []
        for rows in self._row_chunks(None):
            block = torch.exp(self._distance_block(rows).double() / (-2.0 * width))
            parts.append(block / block.sum(dim=1, keepdim=True))
        return torch.cat(parts).cpu().numpy()

    # ---------------------------------------------------------------- signals
    def split(self, signal: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Split a signal (N, C) into its low and high parts at every width.

        Returns:
            ``(low, high)``, each of shape (K, N, C), with ``low + high == signal``.
        """
        f = self._signal(signal)
        low = self._all_lows(f)
        return low.cpu().numpy(), (f[None] - low).cpu().numpy()

    def bands(self, signal: ArrayLike) -> np.ndarray:
        """Band-pass decomposition of a signal (N, C) into K + 1 bands.

        With the widths sorted in decreasing order delta_1 > ... > delta_K, the
        bands are ``G_1 f, G_2 f - G_1 f, ..., f - G_K f``, lowest frequency
        first. They sum to ``f`` (to rounding).

        Returns:
            An array of shape (K + 1, N, C).
        """
        f = self._signal(signal)
        ordered = self._all_lows(f)[torch.as_tensor(np.argsort(-self.widths, kind="stable"))]
        parts = [ordered[:1], ordered[1:] - ordered[:-1], (f - ordered[-1])[None]]
        return torch.cat(parts).cpu().numpy()

    def band_edges(self) -> np.ndarray:
        """The widths in the order that separates the bands (decreasing)."""
        return np.sort(self.widths)[::-1].copy()

    def _signal(self, signal: ArrayLike) -> torch.Tensor:
        values = as_outputs(signal, self.n, "signal")
        if values.shape[0] != 1:
            raise ValueError(
                f"Expected `signal` to have shape (N, C) but got shape {values.shape[1:]} "
                f"with {values.shape[0]} snapshots."
            )
        return torch.from_numpy(values[0]).to(self.device)

    def _all_lows(self, f: torch.Tensor) -> torch.Tensor:
        """Low parts of ``f`` (N, C) at every width, shape (K, N, C), float64."""
        out = torch.empty((self.widths.size, *f.shape), dtype=torch.float64, device=self.device)
        values = self._with_ones(f)
        for rows in self._row_chunks(None):
            for k, low in self._lows(values, rows):
                out[k, _on(rows, self.device)] = low
        return out

    # ------------------------------------------------------------------ errors
    def relative_errors(
        self,
        outputs: ArrayLike,
        targets: ArrayLike,
        *,
        reduction: str = "mean",
        subset: ArrayLike | None = None,
        weights: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Relative errors of the low and high parts of ``outputs`` against ``targets``.

        MuScleLoRA form (``reduction="mean"``, default)::

            e_low = mean_i ||h_low_i - y_low_i|| / mean_i ||y_low_i||

        Frequency Principle form (``reduction="frobenius"``)::

            e_low = ||H_low - Y_low||_F / ||Y_low||_F

        and ``e_high`` likewise with the high parts. Where a target part is
        zero (the high part of a constant target, e.g. a backdoor probe set
        whose targets are all the target class) the error is NaN and a
        :class:`DegenerateTargetWarning` says why.

        Args:
            outputs: model outputs (softmax probabilities), shape (N, C) or a
                stack of snapshots (T, N, C).
            targets: integer labels (N,) or one-hot/soft targets (N, C).
            reduction: ``"mean"`` or ``"frobenius"``.
            subset: optional boolean mask or indices: the kernel stays over all
                N inputs but the errors are reduced over these rows only (the
                joint view of :func:`joint_relative_errors`).
            weights: bootstrap row weights, shape (R, n_rows) with n_rows =
                ``len(subset)`` (its rows in increasing index order) or N, e.g.
                :func:`~freqlens.spectral.bootstrap_weights`. Every reduction
                over rows becomes weighted (``"mean"``: weighted means
                ``sum_n w_n ||.|| / sum_n w_n``; ``"frobenius"``: weighted sums
                of squares) and every result gains a leading R axis. The kernel
                is not resampled: it stays over all N inputs (resampling its
                inputs would duplicate points and bias the filters, see
                :mod:`freqlens.spectral.uncertainty`); one pass over the kernel
                serves all R resamples. ``None`` (default): unweighted.

        Returns:
            ``(low, high)``, float arrays of shape (K,) for one snapshot or
            (T, K) for a stack, K = ``len(widths)`` in the given order;
            (R, K) or (R, T, K) with ``weights``.

        Raises:
            ValueError: bad outputs, targets, reduction, subset or weights.
        """
        problem = self._prepare(outputs, targets, reduction, subset, weights=weights)
        result = self._measure(problem, split=True)
        return result["low"], result["high"]

    def band_errors(
        self,
        outputs: ArrayLike,
        targets: ArrayLike,
        *,
        reduction: str = "mean",
        subset: ArrayLike | None = None,
        weights: ArrayLike | None = None,
    ) -> np.ndarray:
        """Relative error per frequency band (see :meth:`bands`), lowest band first.

        Args: as :meth:`relative_errors` (``weights`` included).

        Returns:
            Shape (K + 1,) for one snapshot or (T, K + 1) for a stack; NaN
            where the band of the target is zero; (R, K + 1) or (R, T, K + 1)
            with ``weights``.
        """
        problem = self._prepare(outputs, targets, reduction, subset, weights=weights)
        return self._measure(problem, bands=True)["bands"]

    def ratios(
        self, outputs: ArrayLike, *, reduction: str = "mean", subset: ArrayLike | None = None,
        weights: ArrayLike | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Low- and high-frequency ratios of the outputs.

        ``LFR = mean_i ||h_low_i|| / mean_i ||h_i||`` and ``HFR`` likewise with
        ``h_high`` (``reduction="mean"``); ``||H_low||_F / ||H||_F`` with
        ``"frobenius"`` (Xu et al. report its square).

        ``weights``: bootstrap row weights as in :meth:`relative_errors`.

        Returns:
            ``(lfr, hfr)`` of shape (K,) or (T, K); (R, K) or (R, T, K) with ``weights``.
        """
        problem = self._prepare(outputs, None, reduction, subset, weights=weights)
        result = self._measure(problem, ratios=True)
        return result["lfr"], result["hfr"]

    def measure(
        self,
        outputs: ArrayLike,
        targets: ArrayLike,
        *,
        reduction: str = "mean",
        subset: ArrayLike | None = None,
        weights: ArrayLike | None = None,
    ) -> dict[str, np.ndarray]:
        """Everything at once: low/high errors, band errors and LFR/HFR.

        The same numbers as :meth:`relative_errors`, :meth:`band_errors` and
        :meth:`ratios`, from one pass over the kernel instead of three.

        Args:
            outputs, targets, reduction, subset, weights: as in :meth:`relative_errors`.

        Returns:
            A dict with ``"low"``, ``"high"``, ``"lfr"``, ``"hfr"`` of shape
            (K,) or (T, K) and ``"bands"`` of shape (K + 1,) or (T, K + 1);
            with ``weights`` each gains a leading R axis: (R, T, K), (R, T, K + 1).
        """
        problem = self._prepare(outputs, targets, reduction, subset, with_outputs=True, weights=weights)
        return self._measure(problem, split=True, bands=True, ratios=True)

    def _measure(self, problem: _Problem, *, split=False, bands=False, ratios=False) -> dict:
        """One pass over the kernel's row chunks, reducing as it goes (nothing (N, N) is kept)."""
        e, end, k_all = problem.errors, problem.end, self.widths.size
        rows_total = self.n if problem.rows is None else problem.rows.numel()
        sums = _Sums(problem.classes, problem.reduction, rows_total, problem.weights)
        values = self._with_ones(problem.signal)
        position = 0
        for rows in self._row_chunks(problem.rows):
            count = rows.stop - rows.start if isinstance(rows, slice) else rows.numel()
            sums.start(slice(position, position + count))
            position += count
            own = problem.signal[_on(rows, self.device)]
            if ratios:
                sums.add("whole", own[:, end:])
            previous, band = None, 0
            for k, low in self._lows(values, rows):
                if split:
                    high = own[:, :end] - low[:, :end]
                    sums.add(("low", k), low[:, :e])
                    sums.add(("low-y", k), low[:, e:end])
                    sums.add(("high", k), high[:, :e])
                    sums.add(("high-y", k), high[:, e:end])
                if ratios:
                    sums.add(("lfr", k), low[:, end:])
                    sums.add(("hfr", k), own[:, end:] - low[:, end:])
                if bands:
                    part = low[:, :end] if previous is None else low[:, :end] - previous
                    sums.add(("band", band), part[:, :e])
                    sums.add(("band-y", band), part[:, e:end])
                    previous, band = low[:, :end], band + 1
            if bands:
                part = own[:, :end] - previous
                sums.add(("band", band), part[:, :e])
                sums.add(("band-y", band), part[:, e:end])
        result, single = {}, problem.single
        if split:
            for name in ("low", "high"):
                result[name] = _finish([
                    _ratio(sums, (name, k), (f"{name}-y", k), problem,
                           f"{name} part at width {self.widths[k]:.4g}") for k in range(k_all)
                ], single)
        if bands:
            result["bands"] = _finish([
                _ratio(sums, ("band", b), ("band-y", b), problem, f"band {b} of {k_all + 1}")
                for b in range(k_all + 1)
            ], single)
        if ratios:
            whole = sums.size("whole")
            with np.errstate(divide="ignore", invalid="ignore"):
                for name in ("lfr", "hfr"):
                    result[name] = _finish([sums.size((name, k)) / whole for k in range(k_all)], single)
        return result

    def neighbour_counts(self) -> np.ndarray:
        """Median effective number of neighbours per width, ``1 / sum_j G_ij^2``.

        1 means the filter is the identity (the low part is the signal itself);
        N means it is uniform (the low part is the constant mean).

        Returns:
            Shape (K,), in the order of ``widths``.
        """
        counts = torch.empty(self.widths.size, self.n, dtype=torch.float64)
        for rows in self._row_chunks(None):
            dist = self._distance_block(rows).double()
            for k, width in enumerate(self.widths):
                kernel = torch.exp(dist / (-2.0 * width))
                counts[k, rows] = (kernel.sum(dim=1).square() / kernel.square().sum(dim=1)).cpu()
        return torch.median(counts, dim=1).values.numpy()

    def median_distance(self) -> float:
        """Median of the off-diagonal distances (over at most 2,048 sampled rows)."""
        if self.n < 2:
            return 0.0
        rows = torch.as_tensor(np.unique(np.linspace(0, self.n - 1, min(self.n, 2048)).astype(np.int64)))
        sample = self._distance_block(rows)
        return float(torch.median(sample[sample > 0]).item()) if bool((sample > 0).any()) else 0.0

    def _prepare(self, outputs, targets, reduction, subset, with_outputs: bool = False,
                 weights: ArrayLike | None = None) -> _Problem:
        check_choice(reduction, "reduction", REDUCTIONS)
        values = as_outputs(outputs, self.n)
        t, n, c = values.shape
        rows = None if subset is None else torch.as_tensor(as_index(subset, n))
        if weights is not None:
            weights = torch.from_numpy(as_weights(weights, n if rows is None else rows.numel())).to(self.device)
        stacked = values.transpose(1, 0, 2).reshape(n, t * c)  # snapshot-major
        if targets is None:  # ratios only: outputs alone
            signal = torch.from_numpy(np.ascontiguousarray(stacked)).to(self.device)
            return _Problem(signal=signal, rows=rows, classes=c, reduction=reduction, scale=1.0,
                            constant=False, single=np.ndim(outputs) == 2, errors=0, end=0, weights=weights)
        y = as_targets(targets, n, c)
        columns = [stacked - np.tile(y, t), y] + ([stacked] if with_outputs else [])
        signal = torch.from_numpy(np.concatenate(columns, axis=1)).to(self.device)
        own_y = torch.from_numpy(y if rows is None else y[rows.numpy()])
        scale = _Sums(c, reduction, own_y.shape[0])
        scale.add("y", own_y)
        return _Problem(
            signal=signal,
            rows=rows,
            classes=c,
            reduction=reduction,
            scale=float(scale.size("y")[0]),
            constant=bool(np.all(y == y[:1])),
            single=np.ndim(outputs) == 2,
            errors=t * c,
            end=t * c + c,
            weights=weights,
        )


def _on(rows: torch.Tensor | slice, device: torch.device) -> torch.Tensor | slice:
    """A slice as it is, an index tensor moved to ``device``."""
    return rows if isinstance(rows, slice) else rows.to(device)


def _index(rows: torch.Tensor | slice, device: torch.device) -> torch.Tensor:
    """Row indices on ``device`` for a slice or an index tensor."""
    if isinstance(rows, slice):
        return torch.arange(rows.start, rows.stop, device=device)
    return rows.to(device)


def _ratio(sums: _Sums, numerator_key, denominator_key, problem: _Problem, what: str) -> np.ndarray:
    """Size of an error part over the size of the matching target part (NaN where that is zero).

    Shapes: (T,) without weights, (R, T) with (one denominator per resample).
    """
    numerator = sums.size(numerator_key)
    denominator = sums.size(denominator_key)[..., :1]
    zero = ~(denominator > ZERO_PART_RTOL * problem.scale)
    if not zero.any():
        return numerator / denominator
    if problem.weights is not None and not zero.all():
        # only some resamples drew no row with this target part: NaN there
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(zero, np.nan, numerator / denominator)
    reason = (
        "the targets are constant over the probe set (all one class), so they have no "
        "high-frequency part; use the joint view (one kernel over clean and backdoor probes, "
        "freqlens.spectral.joint_relative_errors) or an absolute error"
        if problem.constant
        else "the filter is ~identity or ~uniform at this width (or, for a band, two widths are "
        "equal); choose widths from the data (freqlens.spectral.suggest_widths)"
    )
    warnings.warn(
        f"Relative error of the {what} is undefined (NaN): that part of the targets is "
        f"zero because {reason}.",
        DegenerateTargetWarning,
        stacklevel=4,
    )
    return np.full(numerator.shape, np.nan)


def _finish(columns: list[np.ndarray], single: bool) -> np.ndarray:
    """Stack K per-width columns of shape (T,) into (T, K), or (K,) for one snapshot;
    with bootstrap weights columns of shape (R, T) into (R, T, K), or (R, K)."""
    stacked = np.stack(columns, axis=-1)
    return stacked[..., 0, :] if single else stacked


def relative_errors(
    inputs: ArrayLike,
    outputs: ArrayLike,
    targets: ArrayLike,
    widths: ArrayLike,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """Low- and high-frequency relative errors of ``outputs`` against ``targets``.

    A one-call form of :meth:`FilterBank.relative_errors`; build a
    :class:`FilterBank` instead to measure many snapshots against one kernel.

    Args:
        inputs: probe inputs, shape (N, D).
        outputs: model outputs, shape (N, C) (or (T, N, C)).
        targets: labels (N,) or one-hot targets (N, C).
        widths: filter widths, all > 0.
        distance: ``"euclidean"`` (default) or ``"squared"``.
        reduction: ``"mean"`` (default, MuScleLoRA) or ``"frobenius"``.

    Returns:
        ``(low, high)``, arrays of shape (len(widths),) (or (T, len(widths))).

    Example:
        >>> inputs = [[0.0], [1.0], [2.0], [3.0]]
        >>> low, high = relative_errors(inputs, [[1.0, 0.0]] * 4, [0, 0, 1, 1], [1.0])
        >>> bool(low[0] > 0 and high[0] > 0)
        True
    """
    check_choice(distance, "distance", DISTANCES)
    check_choice(reduction, "reduction", REDUCTIONS)
    bank = FilterBank(inputs, widths, distance=distance)
    return bank.relative_errors(outputs, targets, reduction=reduction)


def band_errors(
    inputs: ArrayLike,
    outputs: ArrayLike,
    targets: ArrayLike,
    widths: ArrayLike,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> np.ndarray:
    """Relative error per frequency band; see :meth:`FilterBank.band_errors`."""
    bank = FilterBank(inputs, widths, distance=distance)
    return bank.band_errors(outputs, targets, reduction=reduction)


def joint_relative_errors(
    inputs: Mapping[str, ArrayLike],
    outputs: Mapping[str, ArrayLike],
    targets: Mapping[str, ArrayLike],
    widths: ArrayLike,
    *,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Relative errors per probe set under one kernel over all of them.

    A backdoor probe set alone has a constant target (every example is
    labelled with the target class), so its high part is zero and its own
    kernel gives no high-frequency error. Over the union of the clean and the
    backdoor probes the target is not constant: each backdoor example sits
    among clean neighbours of both classes. This builds one kernel over the
    union and reduces the errors over each probe set's rows.

    Args:
        inputs, outputs, targets: mappings from probe-set name to that set's
            inputs (N_s, D), outputs (N_s, C) or (T, N_s, C) and targets.
        widths, distance, reduction: as in :func:`relative_errors`.

    Returns:
        A dict from probe-set name to ``(low, high)``.
    """
    names = list(inputs)
    for name, mapping in (("outputs", outputs), ("targets", targets)):
        if set(mapping) != set(names):
            raise ValueError(
                f"Expected `{name}` to have the probe sets {sorted(names)} of `inputs` "
                f"but got {sorted(mapping)}."
            )
    matrices = [as_matrix(inputs[s], f"inputs[{s!r}]") for s in names]
    bank = FilterBank(np.concatenate(matrices), widths, distance=distance)
    stacked_outputs, stacked_targets, subsets = _stack_sets(
        names, [m.shape[0] for m in matrices], outputs, targets
    )
    return {
        name: bank.relative_errors(
            stacked_outputs, stacked_targets, reduction=reduction, subset=subsets[name]
        )
        for name in names
    }


def _stack_sets(names, sizes, outputs, targets):
    """Concatenate per-set outputs and targets along N; return row ranges per set."""
    out = [as_outputs(outputs[s], n, f"outputs[{s!r}]") for s, n in zip(names, sizes)]
    steps = {o.shape[0] for o in out}
    if len(steps) != 1:
        raise ValueError(
            f"Expected every probe set's `outputs` to hold the same number of snapshots "
            f"but got {dict(zip(names, (o.shape[0] for o in out)))}."
        )
    classes = out[0].shape[2]
    tgt = [as_targets(targets[s], n, classes, f"targets[{s!r}]") for s, n in zip(names, sizes)]
    single = all(np.ndim(outputs[s]) == 2 for s in names)
    stacked = np.concatenate(out, axis=1)
    offsets = np.cumsum([0] + sizes)
    subsets = {s: np.arange(offsets[i], offsets[i + 1]) for i, s in enumerate(names)}
    return (stacked[0] if single else stacked), np.concatenate(tgt), subsets

