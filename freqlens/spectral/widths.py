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


class WidthWarning(UserWarning):
    """The filter widths cannot show frequency structure on these inputs."""


def suggest_widths(
    inputs: ArrayLike,
    num: int = 25,
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
        num: number of widths K.
        distance: ``"euclidean"`` (default) or ``"squared"``.
        method: ``"neighbours"`` (default): widths whose median effective
            neighbour count ``n_eff`` is log-spaced over ``neighbours``;
            ``"quantiles"``: ``delta = q / 2``, so that the kernel falls to
            1/e at the distance quantile ``q``, for ``q`` evenly spaced over
            ``quantiles`` of the pairwise distances.
        neighbours: (smallest, largest) effective neighbour count; default
            ``(2, N / 4)``.
        quantiles: (lowest, highest) quantile levels in (0, 1).
        max_rows: rows sampled (deterministically) to estimate the median.

    Returns:
        A float array of ``num`` widths in decreasing order (low cut-off
        frequency first, the order of the bands).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> widths = suggest_widths(rng.normal(size=(200, 8)), num=5)
        >>> widths.shape, bool(np.all(np.diff(widths) < 0))
        ((5,), True)
    """
    x = as_matrix(inputs, "inputs")
    num = check_positive_int(num, "num")
    check_choice(distance, "distance", DISTANCES)
    check_choice(method, "method", METHODS)
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"Expected `inputs` to hold at least 3 probe inputs to choose widths but got {n}.")
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
    low, high = _check_range(neighbours or (2.0, max(2.5, n / 4.0)), "neighbours", 1.0, float(n))
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

    def to_dict(self) -> dict:
        return {
            "widths": self.widths.tolist(),
            "neighbours": self.neighbours.tolist(),
            "n": self.n,
            "status": list(self.status),
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
    ~the signal itself or ~constant, naming the median distance and suggesting
    :func:`suggest_widths`.

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
    if warn and not check.useful.any():
        median = bank.median_distance()
        warnings.warn(
            f"Every filter width gives a low part that is ~the signal itself or ~constant "
            f"(median effective neighbours {np.round(counts, 2).tolist()} of N={bank.n}; "
            f"widths {np.round(bank.widths, 4).tolist()}, median {bank.distance} distance "
            f"{median:.4g}): the relative errors cannot show frequency structure. Use "
            f"freqlens.spectral.suggest_widths(inputs).",
            WidthWarning,
            stacklevel=2,
        )
    return check
