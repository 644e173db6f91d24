"""Choosing filter widths from the data, and checking a given choice.

A width tells something only where the filter is neither ~identity (the low
part is the signal itself) nor ~uniform (the low part is the constant mean).
Which widths those are depends on the scale and the spread of the pairwise
distances: on real sentence embeddings the distances are concentrated, and on
a tiny random BERT only about 0.07 to 0.2 of the median distance was useful
(METHOD.md, pitfalls). So freqlens derives widths from the data.

The measure used is the effective number of neighbours of a row of the
kernel, ``n_eff = 1 / sum_j G_ij^2``: 1 for the identity, N for the uniform
filter, and monotone in the width in between.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from freqlens._checks import ArrayLike, as_matrix, as_widths, check_choice, check_positive_int
from freqlens.spectral.filters import DISTANCES, FilterBank, _distances

METHODS = ("neighbours", "quantiles")

#: A width whose median self-weight makes n_eff below this is ~identity.
IDENTITY_NEIGHBOURS = 1.1
#: A width whose median n_eff is above this share of N is ~uniform.
UNIFORM_SHARE = 0.9
#: With ``num="auto"``: adjacent widths' median n_eff differ by at least this factor
#: (closer filters pass nearly the same part of the signal), and at most this many widths.
RESOLVING_FACTOR = 1.5
MAX_AUTO_WIDTHS = 12
#: Widths whose median n_eff span less than this factor (largest / smallest) act as one filter.
COLLAPSE_SPAN = 2.0


class WidthWarning(UserWarning):
    """The filter widths cannot show frequency structure on these inputs."""


def resolvable_widths(n: int, neighbours: tuple[float, float] | None = None) -> int:
    """How many filter widths N probe inputs resolve: ``num="auto"`` of :func:`suggest_widths`.

    With median effective neighbour counts log-spaced over ``neighbours``
    (default ``(2, N / 2)``), adjacent widths must differ by at least
    :data:`RESOLVING_FACTOR` in n_eff, else two filters pass nearly the same
    low part; so ``K = 1 + floor(log(high / low) / log(1.5))``, between 2 and
    :data:`MAX_AUTO_WIDTHS` (freqlens' rule), and 1 where the range spans
    less than 2x (N < 8), where two widths would act as one filter. N = 16 gives 4 widths, 64 gives
    7, 256 gives 11 and 600 or more 12.

    Raises:
        ValueError: ``n`` < 3.
    """
    n = check_positive_int(n, "n", minimum=3)
    low, high = _check_range(neighbours or _default_neighbours(n), "neighbours", 1.0, float(n))
    if high / low < COLLAPSE_SPAN:  # N < 8: two widths would be one filter; one is one by choice
        return 1
    return int(min(MAX_AUTO_WIDTHS, max(2, 1 + np.floor(np.log(high / low) / np.log(RESOLVING_FACTOR) + 1e-9))))


def _default_neighbours(n: int) -> tuple[float, float]:
    return 2.0, max(2.5, n / 2.0)


def suggest_widths(
    inputs: ArrayLike,
    num: int | str = "auto",
    *,
    distance: str = "euclidean",
    method: str = "neighbours",
    neighbours: tuple[float, float] | None = None,
    quantiles: tuple[float, float] = (0.01, 0.5),
    max_rows: int = 500,
) -> np.ndarray:
    """Filter widths chosen from the probe inputs, widest first.

    Args:
        inputs: probe inputs, shape (N, D).
        num: number of widths K, or ``"auto"`` (default): as many as N
            resolves (:func:`resolvable_widths`; 11 for N = 256).
        distance: ``"euclidean"`` (default) or ``"squared"``.
        method: ``"neighbours"`` (default): widths whose median effective
            neighbour count ``n_eff`` is log-spaced over ``neighbours``;
            ``"quantiles"``: ``delta = q / 2``, so that the kernel falls to
            1/e at the distance quantile ``q``, for ``q`` evenly spaced over
            ``quantiles`` of the pairwise distances.
        neighbours: (smallest, largest) effective neighbour count; default
            ``(2, N / 2)``: from a filter that averages each input with about
            one neighbour to one that averages over half of the probe set.
        quantiles: (lowest, highest) quantile levels in (0, 1).
        max_rows: rows sampled (deterministically) to estimate the median.

    Returns:
        A float array of ``num`` widths in decreasing order (low cut-off
        frequency first, the order of the bands).

    Raises:
        ValueError: fewer than 3 inputs, all rows equal, ``num`` not a
            positive integer or ``"auto"``, or a bad range.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> widths = suggest_widths(rng.normal(size=(200, 8)), num=5)
        >>> widths.shape, bool(np.all(np.diff(widths) < 0))
        ((5,), True)
    """
    x = as_matrix(inputs, "inputs")
    check_choice(distance, "distance", DISTANCES)
    check_choice(method, "method", METHODS)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"Expected `inputs` to hold at least 3 probe inputs to choose widths but got {n}.")
    num = resolvable_widths(n, neighbours) if num == "auto" else check_positive_int(num, "num")
    rows = np.linspace(0, n - 1, min(n, max_rows)).astype(np.int64)
    sample = _distances(torch.from_numpy(x), distance, rows=np.unique(rows))  # (rows, N)
    off_diagonal = sample[sample > 0]
    if off_diagonal.numel() == 0:
        raise ValueError("Expected `inputs` to hold at least two distinct rows but all rows are equal.")
    if method == "quantiles":
        low, high = _check_range(quantiles, "quantiles", 0.0, 1.0)
        levels = torch.linspace(low, high, num, dtype=off_diagonal.dtype)
        widths = torch.quantile(_subsample(off_diagonal), levels).numpy() / 2.0
        return np.sort(widths)[::-1].copy()
    low, high = _check_range(neighbours or _default_neighbours(n), "neighbours", 1.0, float(n))
    # From below the identity regime (the nearest neighbour's weight under
    # 1/(N e^4)) to above the uniform one, on a geometric grid.
    nearest, farthest = off_diagonal.min().item(), off_diagonal.max().item()
    grid = np.geomspace(nearest / (2.0 * (np.log(n) + 4.0)), farthest * 10.0, 96)
    counts = np.array([_median_neighbours(sample, w) for w in grid])
    targets = np.geomspace(low, high, num)
    # n_eff is monotone in the width: interpolate log(width) against log(n_eff).
    counts = np.maximum.accumulate(counts)
    widths = np.exp(np.interp(np.log(targets), np.log(counts), np.log(grid)))
    return np.sort(widths)[::-1].copy()


def _subsample(values: torch.Tensor, limit: int = 4_000_000) -> torch.Tensor:
    if values.numel() <= limit:
        return values
    step = values.numel() // limit + 1
    return values[::step]


def _median_neighbours(dist_rows: torch.Tensor, width: float) -> float:
    kernel = torch.softmax(dist_rows / (-2.0 * width), dim=1)
    return torch.median(1.0 / kernel.square().sum(dim=1)).item()


def _check_range(bounds, name: str, lowest: float, highest: float) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Expected `{name}` to be a (low, high) pair but got {bounds!r}.") from error
    if not lowest <= low < high <= highest:
        raise ValueError(
            f"Expected `{name}` to be (low, high) with {lowest} <= low < high <= {highest} "
            f"but got {bounds!r}."
        )
    return low, high


@dataclass(frozen=True)
class WidthCheck:
    """How each width filters a probe set.

    Attributes:
        widths: the widths, in the given order.
        neighbours: median effective neighbour count per width (1 .. N).
        n: number of probe inputs.
        status: per width, ``"identity"`` (low part ~ the signal),
            ``"uniform"`` (low part ~ constant) or ``"useful"``.
    """

    widths: np.ndarray
    neighbours: np.ndarray
    n: int
    status: tuple[str, ...]

    @property
    def useful(self) -> np.ndarray:
        """Boolean mask of the widths that are neither ~identity nor ~uniform."""
        return np.array([s == "useful" for s in self.status])

    @property
    def span(self) -> float:
        """Largest over smallest median effective neighbour count (1 for one width)."""
        return float(self.neighbours.max() / self.neighbours.min()) if self.neighbours.size else 1.0

    @property
    def collapsed(self) -> bool:
        """Whether the widths act as one filter: more than one width, and their median
        n_eff span less than :data:`COLLAPSE_SPAN` (x2), or none of them is useful."""
        return self.widths.size > 1 and (self.span < COLLAPSE_SPAN or not self.useful.any())

    @property
    def message(self) -> str | None:
        """A plain warning when the widths cannot resolve frequencies, else None."""
        counts = np.round(self.neighbours, 2).tolist()
        if not self.useful.any():
            return (f"Every filter width gives a low part that is ~the signal itself or ~constant (median "
                    f"effective neighbours {counts} of N={self.n}): the relative errors cannot show "
                    f"frequency structure. Choose widths from the data (analysis.widths = \"auto\", "
                    f"freqlens.spectral.suggest_widths).")
        if self.collapsed:
            return (f"The {self.widths.size} filter widths collapse to one filter: their median effective "
                    f"neighbour counts span only {self.span:.3g}x ({counts} of N={self.n}), so every "
                    f"width shows the same split of the spectrum. Choose widths from the data "
                    f"(analysis.widths = \"auto\": n_eff from 2 to N/2).")
        return None

    def to_dict(self) -> dict:
        return {
            "widths": self.widths.tolist(),
            "neighbours": self.neighbours.tolist(),
            "n": self.n,
            "status": list(self.status),
            "span": self.span,
            "collapsed": self.collapsed,
        }


def check_widths(
    inputs: ArrayLike | FilterBank,
    widths: ArrayLike | None = None,
    *,
    distance: str = "euclidean",
    warn: bool = True,
) -> WidthCheck:
    """Check which widths filter the probe inputs in a useful way.

    Warns with :class:`WidthWarning` when every width gives a low part that is
    ~the signal itself or ~constant, or when the widths collapse to one filter
    (:attr:`WidthCheck.collapsed`), naming the counts and the median distance
    and suggesting :func:`suggest_widths`.

    Args:
        inputs: probe inputs (N, D), or a :class:`FilterBank` (then ``widths``
            and ``distance`` come from it).
        widths: widths to check, when ``inputs`` is an array.
        distance: distance, when ``inputs`` is an array.
        warn: emit the warning (default True).

    Returns:
        A :class:`WidthCheck`.
    """
    if isinstance(inputs, FilterBank):
        bank = inputs
    else:
        if widths is None:
            raise ValueError("Expected `widths` when `inputs` is an array but got None.")
        bank = FilterBank(inputs, as_widths(widths), distance=distance)
    counts = bank.neighbour_counts()
    status = tuple(
        "identity" if c < IDENTITY_NEIGHBOURS else "uniform" if c > UNIFORM_SHARE * bank.n else "useful"
        for c in counts
    )
    check = WidthCheck(widths=bank.widths.copy(), neighbours=counts, n=bank.n, status=status)
    if warn and check.message:
        warnings.warn(
            f"{check.message} (widths {np.round(bank.widths, 4).tolist()}, median {bank.distance} "
            f"distance {bank.median_distance():.4g})",
            WidthWarning,
            stacklevel=2,
        )
    return check
