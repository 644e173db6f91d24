"""A distance sketch for very wide probe inputs: Gaussian random projection.

The Gaussian kernels of :class:`~freqlens.spectral.FilterBank` need only the
pairwise distances between the probe inputs, and for a language model those
inputs are flattened embeddings, L x d = 128 x 768 = 98,304 numbers each: with
N = 50,000 probes the (N, D) matrix alone is 19.6 GB of float32. A random
projection ``x -> x R`` with a (D, k) Gaussian matrix R, entries N(0, 1/k),
keeps every squared distance within a factor 1 +- eps with high probability
for k that depends on N and eps but not on D (Johnson-Lindenstrauss), and it
can be computed from row chunks of the inputs without ever holding the whole
matrix or the whole of R.

The projection is linear, so it maps the difference of two inputs to the
difference of their images; distances are translation invariant, so no
centring is needed. Rounding is the one place an offset matters: the
products are float32, so the images carry an error of about 1e-7 times the
norm of the inputs, and the relative error of a distance grows with
``||x|| / ||x_i - x_j||`` (measured: 5e-4 for inputs 100 + 0.01 z, z standard
normal, a ratio of about 7,000). That stays far below eps unless the offset
is some 1e5 times the spread; then subtract one common vector (e.g. the mean)
from the inputs first, the same vector for every set sketched to be compared.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from freqlens._checks import ArrayLike, check_positive_int, to_numpy


def _check_unit(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a number strictly between 0 and 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not 0.0 < float(value) < 1.0
    ):
        raise ValueError(f"Expected `{name}` to be a number in (0, 1) but got {value!r}.")
    return float(value)


def _log_failures(n: int, delta: float) -> float:
    """ln(n (n - 1) / delta): the union bound's log over n(n-1)/2 pairs and two tails."""
    return math.log(n) + math.log(n - 1) - math.log(delta)


def _rate(eps: float) -> float:
    return eps * eps / 2.0 - eps**3 / 3.0


def jl_dimension(n: int, eps: float = 0.1, delta: float = 0.01) -> int:
    """Dimension k of a Gaussian random projection that keeps all pairwise distances of n points.

    For a (D, k) matrix R with independent N(0, 1/k) entries and any n points
    x_1..x_n, with probability at least ``1 - delta`` every pair satisfies::

        (1 - eps) ||x_i - x_j||^2 <= ||x_i R - x_j R||^2 <= (1 + eps) ||x_i - x_j||^2

    when ``k >= 2 ln(n (n - 1) / delta) / (eps^2 / 2 - eps^3 / 3)``; this
    returns the smallest such integer. Source: Dasgupta and Gupta (2003), "An
    elementary proof of a theorem of Johnson and Lindenstrauss", Random
    Structures & Algorithms 22(1). Their Lemma 2.2 bounds each tail of
    ``||x R||^2 / ||x||^2`` (chi-squared with k degrees of freedom, over k) by
    ``exp(k/2 (1 - b + ln b))`` at b = 1 +- eps; with ln(1 + eps) <= eps -
    eps^2/2 + eps^3/3 and ln(1 - eps) <= -eps - eps^2/2 both tails are at most
    ``exp(-k (eps^2/2 - eps^3/3) / 2)``, and the union bound over n(n-1)/2
    pairs, two tails each, gives the failure probability ``n (n - 1)
    exp(-k (eps^2/2 - eps^3/3) / 2) <= delta``. Their Theorem 2.1 (k >= 4 ln n /
    (eps^2/2 - eps^3/3), success probability >= 1/n) is the case delta = 1 - 1/n.
    k does not depend on the input dimension D. The bound is a worst case: the
    observed distortion at this k is typically well under eps.

    Args:
        n: number of points, >= 1 (one point has no pairs: k = 1).
        eps: relative error of the squared distances, in (0, 1).
        delta: failure probability, in (0, 1).

    Returns:
        The target dimension k >= 1.

    Example:
        >>> jl_dimension(300, eps=0.25), jl_dimension(50_000, eps=0.1)
        (1230, 11248)
    """
    n = check_positive_int(n, "n")
    eps, delta = _check_unit(eps, "eps"), _check_unit(delta, "delta")
    if n == 1:
        return 1
    return max(1, math.ceil(2.0 * _log_failures(n, delta) / _rate(eps)))


class RandomProjection:
    """A Gaussian random projection to ``dim`` dimensions, streamed over rows and columns.

    ``transform`` computes ``x R`` for a (D, dim) matrix R with entries
    N(0, 1/dim) that is never held whole: R is cut into row blocks of
    ``block_size`` (one per block of input columns), and block b is drawn from a
    ``torch.Generator`` seeded from ``(seed, b)`` each time it is needed. So R,
    and the result, depend on ``seed``, ``block_size``, ``dim`` and D (and on
    torch's normal generator, which may change between torch versions), never
    on how the rows arrive. Two sets sketched with the same projection can be
    compared (e.g. clean and backdoor probes joined for the joint view).

    Rows are processed in batches of ``chunk_size``: a slice of an array or
    memmap, or the chunks of an iterable gathered until they reach
    ``chunk_size`` rows. Per batch each column block is copied to float32 and
    multiplied by its block of R in float32, and the blocks' products are
    summed in float64. Memory: O(block_size x dim + chunk_size x (block_size +
    dim)) working space, the (N, dim) float32 result, and for an iterable
    the chunks held until a batch is full (chunk_size x D in their dtype).
    Time: the matrix product, about 2 N D dim flops, plus D x dim normal draws
    per batch (about 8 ns each on a CPU core, roughly a tenth of the product's
    time at chunk_size = 2048), so fewer, larger batches are cheaper.

    Args:
        dim: target dimension k >= 1, e.g. :func:`jl_dimension` of the number
            of points.
        seed: integer >= 0 that fixes R.
        block_size: input columns per block of R.
        chunk_size: rows per batch.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(5, 3000))
        >>> y = RandomProjection(2000, seed=1).transform(x)
        >>> y.shape, y.dtype
        ((5, 2000), dtype('float32'))
        >>> true = np.sum((x[0] - x[1]) ** 2)
        >>> bool(abs(np.sum((y[0] - y[1]) ** 2) / true - 1) < 0.2)
        True
    """

    def __init__(
        self, dim: int, *, seed: int = 0, block_size: int = 4096, chunk_size: int = 2048
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.block_size = check_positive_int(block_size, "block_size")
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")

    def __repr__(self) -> str:
        return (
            f"RandomProjection(dim={self.dim}, seed={self.seed}, block_size={self.block_size}, "
            f"chunk_size={self.chunk_size})"
        )

    def error_bound(self, n: int, delta: float = 0.01) -> float:
        """The eps that :func:`jl_dimension` guarantees at this ``dim`` for n points.

        The inverse of :func:`jl_dimension`: the smallest eps in (0, 1) with
        ``jl_dimension(n, eps, delta) <= dim``, so with probability at least
        ``1 - delta`` all pairwise squared distances of n points are kept
        within a factor 1 +- eps. 0.0 for n = 1 (no pairs); ``inf`` when
        ``dim`` is too small to guarantee any eps < 1.

        Example:
            >>> round(RandomProjection(1230).error_bound(300), 3)
            0.25
        """
        n = check_positive_int(n, "n")
        delta = _check_unit(delta, "delta")
        if n == 1:
            return 0.0
        # eps^2/2 - eps^3/3 increases on (0, 1) to 1/6; bisect, keeping rate(high) >= target.
        target = 2.0 * _log_failures(n, delta) / self.dim * (1.0 + 1e-12)
        if target >= _rate(1.0):
            return math.inf
        low, high = 0.0, 1.0
        for _ in range(80):
            middle = 0.5 * (low + high)
            low, high = (low, middle) if _rate(middle) >= target else (middle, high)
        return high

    def transform(self, inputs: ArrayLike | Iterable[ArrayLike]) -> np.ndarray:
        """Project the rows of ``inputs``.

        Args:
            inputs: an (N, D) array-like (numpy array, memmap, torch tensor,
                nested sequence) or an iterable of row chunks, each (n_i, D)
                (a list or tuple of 2-D arrays, or an iterator such as a
                generator; read once).

        Returns:
            The (N, dim) float32 array ``x R``, rows in input order.

        Raises:
            ValueError: if the inputs are not 2-D, are empty, have chunks of
                different widths, or hold NaN or inf.
            TypeError: if they do not hold real numbers.
        """
        d, n, chunks = _source(inputs)
        out = None if n is None else np.empty((n, self.dim), dtype=np.float32)
        parts, done = [], 0
        for batch in _batches(chunks, self.chunk_size):
            part = self._project(batch, d)
            if not torch.isfinite(part).all():
                rows = (~torch.isfinite(part).all(dim=1)).nonzero().flatten() + done
                raise ValueError(
                    f"Expected `inputs` to be finite but rows {rows[:10].tolist()} hold NaN or "
                    "infinite values (or values too large for float32)."
                )
            if out is None:
                parts.append(part.numpy())  # N unknown: gathered, then joined
            else:
                out[done : done + part.shape[0]] = part.numpy()
            done += part.shape[0]
        return np.concatenate(parts) if out is None else out

    def _block(self, index: int, rows: int) -> torch.Tensor:
        """Row block ``index`` of R (unscaled, N(0, 1) entries), ``rows`` x dim."""
        state = np.random.SeedSequence([self.seed, index]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        return torch.randn(rows, self.dim, generator=generator, dtype=torch.float32)

    def _project(self, batch: list[np.ndarray], d: int) -> torch.Tensor:
        """x R for the rows of ``batch`` (2-D arrays of width d), as float32."""
        total = torch.zeros(sum(p.shape[0] for p in batch), self.dim, dtype=torch.float64)
        for index, start in enumerate(range(0, d, self.block_size)):
            stop = min(start + self.block_size, d)
            block = np.concatenate([p[:, start:stop] for p in batch], dtype=np.float32)
            total += torch.from_numpy(block) @ self._block(index, stop - start)
        return total.mul_(1.0 / math.sqrt(self.dim)).float()


def sketch_inputs(
    inputs: ArrayLike | Iterable[ArrayLike],
    dim: int | None = None,
    *,
    eps: float = 0.1,
    delta: float = 0.01,
    seed: int = 0,
) -> np.ndarray:
    """Probe inputs projected to few enough dimensions to keep their pairwise distances.

    With ``dim=None`` the dimension is ``jl_dimension(N, eps, delta)``, so that
    with probability at least ``1 - delta`` every pairwise squared distance is
    kept within a factor 1 +- eps (see :func:`jl_dimension`). When ``dim >= D``
    a projection would gain nothing (it keeps distances only approximately and
    is no smaller), so the inputs are returned unchanged, as float32.

    Args:
        inputs: an (N, D) array-like or memmap, or an iterable of (n_i, D) row
            chunks (see :meth:`RandomProjection.transform`). A one-pass
            iterator needs an explicit ``dim``: N is unknown until it is read.
        dim: target dimension, or None to choose it from N, eps and delta.
        eps: relative error of the squared distances, in (0, 1), when ``dim`` is None.
        delta: failure probability, in (0, 1), when ``dim`` is None.
        seed: seed of the projection (see :class:`RandomProjection`).

    Returns:
        An (N, min(dim, D)) float32 array.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(10, 20000))
        >>> sketch_inputs(x, eps=0.5).shape
        (10, 219)
        >>> sketch_inputs(x[:, :100], eps=0.5).shape
        (10, 100)
    """
    eps, delta = _check_unit(eps, "eps"), _check_unit(delta, "delta")
    d, n, chunks = _source(inputs)
    if dim is None:
        if n is None:
            raise ValueError(
                "Expected `dim` for `inputs` given as a one-pass iterator: N is unknown until it "
                "is read; pass dim=jl_dimension(N, eps, delta) or a list of chunks."
            )
        dim = jl_dimension(n, eps, delta)
    projection = RandomProjection(dim, seed=seed)
    if projection.dim >= d:
        x = np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])
        if not np.isfinite(x).all():
            raise ValueError("Expected `inputs` to be finite but they hold NaN or infinite values.")
        return x
    return projection.transform(chunks)


# ------------------------------------------------------------------- inputs
def _source(inputs: ArrayLike | Iterable) -> tuple[int, int | None, Iterator[np.ndarray]]:
    """Width D, row count N (None for a one-pass iterator) and the checked row chunks."""
    arrays = (np.ndarray, torch.Tensor, Sequence)  # a nested sequence of numbers is an (N, D) array
    if isinstance(inputs, (list, tuple)) and inputs and all(np.ndim(c) == 2 for c in inputs):
        chunks, n, single = iter(inputs), sum(int(np.shape(c)[0]) for c in inputs), False
    elif isinstance(inputs, Iterable) and not isinstance(inputs, arrays):
        chunks, n, single = iter(inputs), None, False  # one pass, e.g. a generator
    else:
        array = to_numpy(inputs, "inputs")
        if array.ndim != 2:
            raise ValueError(
                f"Expected `inputs` to be a 2-D array of shape (N, D) or an iterable of (n_i, D) "
                f"chunks but got shape {array.shape}."
            )
        chunks, n, single = iter([array]), array.shape[0], True
    checked = _checked(chunks, single)
    first = next(checked)
    return first.shape[1], n, itertools.chain([first], checked)


def _checked(chunks: Iterator[ArrayLike], single: bool) -> Iterator[np.ndarray]:
    """The chunks as 2-D real numpy arrays of one width D >= 1; at least one row in all."""
    width, rows = None, 0
    for i, chunk in enumerate(chunks):
        name = "inputs" if single else f"inputs chunk {i}"
        array = to_numpy(chunk, name)
        if array.ndim != 2:
            raise ValueError(f"Expected `{name}` to be 2-D, (n_i, D), but got shape {array.shape}.")
        if array.dtype.kind not in "iuf":
            raise TypeError(f"Expected `{name}` to hold real numbers but got dtype {array.dtype}.")
        if width is None:
            width = array.shape[1]
            if width == 0:
                raise ValueError(f"Expected `{name}` to have D >= 1 columns but got {array.shape}.")
        elif array.shape[1] != width:
            raise ValueError(
                f"Expected every chunk of `inputs` to have D={width} columns like chunk 0 but "
                f"`{name}` has shape {array.shape}."
            )
        if array.shape[0]:
            rows += array.shape[0]
            yield array
    if not rows:
        raise ValueError("Expected `inputs` to hold at least one row but got none.")


def _batches(chunks: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """Row batches of ``size`` rows (the last may be smaller): slices of chunks, gathered."""
    batch, rows = [], 0
    for chunk in chunks:
        start = 0
        while start < chunk.shape[0]:
            take = min(size - rows, chunk.shape[0] - start)
            batch.append(chunk[start : start + take])
            rows, start = rows + take, start + take
            if rows == size:
                yield batch
                batch, rows = [], 0
    if batch:
        yield batch
