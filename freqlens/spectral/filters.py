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

DISTANCES = ("euclidean", "squared")
REDUCTIONS = ("mean", "frobenius")

#: A target part whose size is below this fraction of the whole target's size
#: is treated as zero: its relative error is undefined (NaN).
ZERO_PART_RTOL = 1e-6

#: Kernels are cached when all K of them fit in this many bytes; else they are
#: rebuilt in row chunks at every call (memory O(N x chunk)).
KERNEL_CACHE_BYTES = 256 * 2**20


class DegenerateTargetWarning(RuntimeWarning):
    """A relative error is undefined because the target part it divides by is zero."""


@dataclass
class _Problem:
    """Outputs and targets of one measurement, laid out for the kernel products."""

    signal: torch.Tensor  # (N, T*C + C [+ T*C]): errors h - y per snapshot, targets y [, outputs h]
    rows: np.ndarray | None  # rows the errors are reduced over (None: all)
    classes: int
    reduction: str
    scale: float  # size of the whole target over the rows, for the zero test
    constant: bool  # the targets are the same for every row
    single: bool  # the outputs were one snapshot (N, C)
    end: int  # columns of errors and targets; outputs follow when measured too

    def own(self) -> torch.Tensor:
        return self.signal if self.rows is None else self.signal[torch.as_tensor(self.rows)]


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
    """Distances from every row (or from ``rows`` only) to every row of ``x``."""
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
    Outputs may be one snapshot (N, C) or a stack of snapshots (T, N, C): all
    snapshots are filtered together, as one matrix product per width.

    Args:
        inputs: probe inputs, shape (N, D); for a language model the flattened
            embedding-layer outputs at the start of training.
        widths: filter widths delta, all > 0, in any order.
        distance: ``"euclidean"`` (default, MuScleLoRA) or ``"squared"``
            (Frequency Principle).
        device: torch device for the computation (default CPU).
        chunk_size: rows of the kernel built at a time when the kernels are
            too large to cache.

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
        chunk_size: int = 1024,
    ) -> None:
        x = as_matrix(inputs, "inputs")
        self.widths = as_widths(widths)
        self.distance = check_choice(distance, "distance", DISTANCES)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self._dist = _distances(torch.from_numpy(x).to(self.device), self.distance)
        self._kernels: torch.Tensor | None = None
        n, k = x.shape[0], self.widths.size
        if k * n * n * 8 <= KERNEL_CACHE_BYTES:
            self._kernels = torch.stack([self._kernel_rows(w, slice(None)) for w in self.widths])

    @property
    def n(self) -> int:
        """Number of probe inputs N."""
        return int(self._dist.shape[0])

    def __repr__(self) -> str:
        return (
            f"FilterBank(n={self.n}, widths={np.round(self.widths, 4).tolist()}, "
            f"distance={self.distance!r})"
        )

    # ----------------------------------------------------------------- kernels
    def _kernel_rows(self, width: float, rows: slice) -> torch.Tensor:
        logits = self._dist[rows] / (-2.0 * width)
        # Each row's maximum is its own diagonal (distance 0), so the softmax
        # is the row-normalised Gaussian without overflow or a zero row sum.
        return torch.softmax(logits, dim=1)

    def _low(self, index: int, values: torch.Tensor, rows: np.ndarray | None = None) -> torch.Tensor:
        """G_width[rows] @ values for the width at ``index``; values is (N, M)."""
        if self._kernels is not None:
            kernel = self._kernels[index]
            return kernel @ values if rows is None else kernel[torch.as_tensor(rows)] @ values
        row_ids = np.arange(self.n) if rows is None else rows
        parts = []
        for start in range(0, row_ids.size, self.chunk_size):
            chunk = row_ids[start : start + self.chunk_size]
            block = self._kernel_rows(self.widths[index], torch.as_tensor(chunk, device=self.device))
            parts.append(block @ values)
        return torch.cat(parts)

    def kernel(self, width_index: int = 0) -> np.ndarray:
        """The dense (N, N) row-normalised kernel for ``widths[width_index]``."""
        if not 0 <= width_index < self.widths.size:
            raise ValueError(
                f"Expected `width_index` in [0, {self.widths.size}) but got {width_index}."
            )
        if self._kernels is not None:
            return self._kernels[width_index].cpu().numpy()
        return self._kernel_rows(self.widths[width_index], slice(None)).cpu().numpy()

    # ---------------------------------------------------------------- signals
    def split(self, signal: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """Split a signal (N, C) into its low and high parts at every width.

        Returns:
            ``(low, high)``, each of shape (K, N, C), with ``low + high == signal``.
        """
        f = self._signal(signal)
        low = torch.stack([self._low(k, f) for k in range(self.widths.size)])
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
        return torch.stack(self._band_parts(f)).cpu().numpy()

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

    def _band_parts(
        self, f: torch.Tensor, rows: np.ndarray | None = None, lows: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """Bands of ``f`` (lowest first), from its low parts per width if already computed."""
        if lows is None:
            lows = [self._low(k, f, rows) for k in range(self.widths.size)]
        ordered = [lows[k] for k in np.argsort(-self.widths, kind="stable")]
        own = f if rows is None else f[torch.as_tensor(rows)]
        return [ordered[0]] + [b - a for a, b in zip(ordered[:-1], ordered[1:])] + [own - ordered[-1]]

    # ------------------------------------------------------------------ errors
    def relative_errors(
        self,
        outputs: ArrayLike,
        targets: ArrayLike,
        *,
        reduction: str = "mean",
        subset: ArrayLike | None = None,
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

        Returns:
            ``(low, high)``, float arrays of shape (K,) for one snapshot or
            (T, K) for a stack, K = ``len(widths)`` in the given order.
        """
        problem = self._prepare(outputs, targets, reduction, subset)
        own = problem.own()
        low, high = [], []
        for k, width in enumerate(self.widths):
            part = self._low(k, problem.signal, problem.rows)
            low.append(_ratio(part, problem, f"low part at width {width:.4g}"))
            high.append(_ratio(own - part, problem, f"high part at width {width:.4g}"))
        return _finish(low, problem.single), _finish(high, problem.single)

    def band_errors(
        self,
        outputs: ArrayLike,
        targets: ArrayLike,
        *,
        reduction: str = "mean",
        subset: ArrayLike | None = None,
    ) -> np.ndarray:
        """Relative error per frequency band (see :meth:`bands`), lowest band first.

        Returns:
            Shape (K + 1,) for one snapshot or (T, K + 1) for a stack; NaN
            where the band of the target is zero.
        """
        problem = self._prepare(outputs, targets, reduction, subset)
        parts = self._band_parts(problem.signal, problem.rows)
        errors = [_ratio(p, problem, f"band {b} of {len(parts)}") for b, p in enumerate(parts)]
        return _finish(errors, problem.single)

    def ratios(
        self, outputs: ArrayLike, *, reduction: str = "mean", subset: ArrayLike | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Low- and high-frequency ratios of the outputs.

        ``LFR = mean_i ||h_low_i|| / mean_i ||h_i||`` and ``HFR`` likewise with
        ``h_high`` (``reduction="mean"``); ``||H_low||_F / ||H||_F`` with
        ``"frobenius"`` (Xu et al. report its square).

        Returns:
            ``(lfr, hfr)`` of shape (K,) or (T, K).
        """
        values = as_outputs(outputs, self.n)
        single = np.ndim(outputs) == 2
        rows = None if subset is None else as_index(subset, self.n)
        check_choice(reduction, "reduction", REDUCTIONS)
        t, n, c = values.shape
        h = torch.from_numpy(values).to(self.device).permute(1, 0, 2).reshape(n, t * c)
        own = h if rows is None else h[torch.as_tensor(rows)]
        whole = _reduce(own, c, reduction)
        lfr, hfr = [], []
        for k in range(self.widths.size):
            part = self._low(k, h, rows)
            lfr.append(_reduce(part, c, reduction) / whole)
            hfr.append(_reduce(own - part, c, reduction) / whole)
        return _finish(lfr, single), _finish(hfr, single)

    def measure(
        self,
        outputs: ArrayLike,
        targets: ArrayLike,
        *,
        reduction: str = "mean",
        subset: ArrayLike | None = None,
    ) -> dict[str, np.ndarray]:
        """Everything at once: low/high errors, band errors and LFR/HFR.

        The same numbers as :meth:`relative_errors`, :meth:`band_errors` and
        :meth:`ratios`, with one kernel product per width instead of three.

        Returns:
            A dict with ``"low"``, ``"high"``, ``"lfr"``, ``"hfr"`` of shape
            (K,) or (T, K) and ``"bands"`` of shape (K + 1,) or (T, K + 1).
        """
        problem = self._prepare(outputs, targets, reduction, subset, with_outputs=True)
        own = problem.own()
        c, end = problem.classes, problem.end
        whole = _reduce(own[:, end:], c, reduction)
        lows = [self._low(k, problem.signal, problem.rows) for k in range(self.widths.size)]
        low, high, lfr, hfr = [], [], [], []
        for width, part in zip(self.widths, lows):
            low.append(_ratio(part, problem, f"low part at width {width:.4g}"))
            high.append(_ratio(own - part, problem, f"high part at width {width:.4g}"))
            lfr.append(_reduce(part[:, end:], c, reduction) / whole)
            hfr.append(_reduce(own[:, end:] - part[:, end:], c, reduction) / whole)
        parts = self._band_parts(problem.signal, problem.rows, lows)
        bands = [_ratio(p, problem, f"band {b} of {len(parts)}") for b, p in enumerate(parts)]
        single = problem.single
        return {
            "low": _finish(low, single), "high": _finish(high, single), "bands": _finish(bands, single),
            "lfr": _finish(lfr, single), "hfr": _finish(hfr, single),
        }

    def neighbour_counts(self) -> np.ndarray:
        """Median effective number of neighbours per width, ``1 / sum_j G_ij^2``.

        1 means the filter is the identity (the low part is the signal itself);
        N means it is uniform (the low part is the constant mean).

        Returns:
            Shape (K,), in the order of ``widths``.
        """
        if self._kernels is not None:
            counts = torch.median(1.0 / self._kernels.square().sum(dim=2), dim=1).values
            return counts.cpu().numpy()
        counts = []
        for width in self.widths:
            chunks = [
                self._kernel_rows(width, slice(start, start + self.chunk_size)).square().sum(dim=1)
                for start in range(0, self.n, self.chunk_size)
            ]
            counts.append(torch.median(1.0 / torch.cat(chunks)).item())
        return np.asarray(counts)

    def _prepare(self, outputs, targets, reduction, subset, with_outputs: bool = False) -> _Problem:
        check_choice(reduction, "reduction", REDUCTIONS)
        values = as_outputs(outputs, self.n)
        t, n, c = values.shape
        y = as_targets(targets, n, c)
        rows = None if subset is None else as_index(subset, n)
        error = (values - y[None]).transpose(1, 0, 2).reshape(n, t * c)  # snapshot-major
        columns = [error, y]
        if with_outputs:
            columns.append(values.transpose(1, 0, 2).reshape(n, t * c))
        signal = torch.from_numpy(np.concatenate(columns, axis=1)).to(self.device)
        own_y = y if rows is None else y[rows]
        return _Problem(
            signal=signal,
            rows=rows,
            classes=c,
            reduction=reduction,
            scale=float(_reduce(torch.from_numpy(own_y), c, reduction)[0]),
            constant=bool(np.all(y == y[:1])),
            single=np.ndim(outputs) == 2,
            end=t * c + c,
        )


def _ratio(part: torch.Tensor, problem: _Problem, what: str) -> np.ndarray:
    """Reduce the error columns of ``part`` and divide by its target columns."""
    c, end = problem.classes, problem.end
    numerator = _reduce(part[:, : end - c], c, problem.reduction)
    denominator = _reduce(part[:, end - c : end], c, problem.reduction)[0]
    if denominator > ZERO_PART_RTOL * problem.scale:
        return numerator / denominator
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
    """Stack K per-width columns of length T into (T, K), or (K,) for one snapshot."""
    stacked = np.stack(columns, axis=-1)
    return stacked[0] if single else stacked


def _reduce(values: torch.Tensor, classes: int, reduction: str) -> np.ndarray:
    """Reduce an (N, T * C) block to T sizes: mean row norm or Frobenius norm."""
    n = values.shape[0]
    blocks = values.reshape(n, -1, classes)
    if reduction == "mean":
        sizes = torch.linalg.vector_norm(blocks, dim=2).mean(dim=0)
    else:
        sizes = torch.linalg.vector_norm(blocks, dim=(0, 2))
    return sizes.cpu().numpy()


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

