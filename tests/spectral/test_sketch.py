"""The distance sketch (Gaussian random projection) against independent references.

The target dimension against the Dasgupta-Gupta bound computed by hand, the
distortion of all pairwise squared distances against dense float64 distances,
streamed (chunks, generators, memmaps) against one-shot results, the
projection against an explicit matrix, seeds, argument checks and the
working memory on a memmap.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
import torch

from freqlens.spectral.sketch import RandomProjection, jl_dimension, sketch_inputs


def _squared_distances(x: np.ndarray) -> np.ndarray:
    """Dense pairwise squared distances in float64 (centred Gram form)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    gram = x @ x.T
    norms = np.diag(gram)
    return norms[:, None] + norms[None, :] - 2.0 * gram


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


# ------------------------------------------------------------------ dimension
@pytest.mark.parametrize(
    "n, eps, delta, expected",
    # By hand: ceil(2 ln(n (n - 1) / delta) / (eps^2/2 - eps^3/3)).
    [
        (300, 0.25, 0.01, 1230),
        (50_000, 0.1, 0.01, 11248),
        (1000, 0.1, 0.01, 7895),
        (2, 0.5, 0.1, 72),  # 24 ln 20 = 71.9
    ],
)
def test_jl_dimension_matches_the_bound(n, eps, delta, expected):
    by_numpy = int(np.ceil(2.0 * np.log(n * (n - 1) / delta) / (eps**2 / 2 - eps**3 / 3)))
    assert jl_dimension(n, eps, delta) == expected == by_numpy


def test_jl_dimension_monotone_and_dasgupta_gupta_theorem():
    ks = [jl_dimension(n, 0.2) for n in (2, 10, 100, 10_000, 10**6)]
    assert ks == sorted(ks) and len(set(ks)) == len(ks)
    ks = [jl_dimension(1000, eps) for eps in (0.05, 0.1, 0.3, 0.6, 0.9)]
    assert ks == sorted(ks, reverse=True) and len(set(ks)) == len(ks)
    assert jl_dimension(1000, 0.1, 0.001) > jl_dimension(1000, 0.1, 0.1)
    # Their Theorem 2.1: k >= 4 ln n / (eps^2/2 - eps^3/3) succeeds with probability >= 1/n.
    for n, eps in [(10, 0.3), (500, 0.1)]:
        theorem = math.ceil(4 * math.log(n) / (eps**2 / 2 - eps**3 / 3))
        assert abs(jl_dimension(n, eps, 1 - 1 / n) - theorem) <= 1  # ceil of equal reals
    assert jl_dimension(1) == 1  # no pairs


@pytest.mark.parametrize("n, dim", [(2, 50), (300, 1230), (300, 5000), (10**5, 20_000)])
def test_error_bound_inverts_jl_dimension(n, dim):
    eps = RandomProjection(dim).error_bound(n, delta=0.05)
    assert 0 < eps < 1
    assert jl_dimension(n, eps, 0.05) <= dim < jl_dimension(n, eps * (1 - 1e-6), 0.05)


def test_error_bound_edges():
    assert RandomProjection(10).error_bound(1) == 0.0
    assert RandomProjection(10).error_bound(1000) == math.inf  # no eps < 1 at 10 dimensions


# ------------------------------------------------------------------ distances
def test_all_pairwise_distances_within_eps():
    n, d, eps = 300, 20_000, 0.25
    x = _data(n, d).astype(np.float32)
    dim = jl_dimension(n, eps=eps)
    y = RandomProjection(dim, seed=3).transform(x)
    assert y.shape == (n, dim) and y.dtype == np.float32
    pairs = np.triu_indices(n, 1)
    ratio = _squared_distances(y)[pairs] / _squared_distances(x)[pairs]
    assert 1 - eps < ratio.min() and ratio.max() < 1 + eps
    assert abs(ratio.mean() - 1) < 0.01  # unbiased: E ||x R||^2 = ||x||^2


def test_projection_is_x_times_a_gaussian_matrix():
    d, dim = 3000, 200
    projection = RandomProjection(dim, seed=5, block_size=512)  # 6 blocks, the last one partial
    matrix = projection.transform(np.eye(d)).astype(np.float64)  # rows of R
    assert abs(matrix.mean()) < 3 * math.sqrt(1 / dim / matrix.size)
    assert matrix.var() == pytest.approx(1 / dim, rel=0.01)
    x = _data(7, d, seed=1)
    np.testing.assert_allclose(projection.transform(x), x @ matrix, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ streaming
@pytest.mark.parametrize("chunk_size", [7, 64, 1000])
def test_chunked_equals_one_shot(tmp_path, chunk_size):
    n, d, dim = 100, 5000, 64
    x = _data(n, d, seed=2).astype(np.float32)
    projection = RandomProjection(dim, seed=1, block_size=1024, chunk_size=chunk_size)
    whole = RandomProjection(dim, seed=1, block_size=1024, chunk_size=n).transform(x)
    bounds = [0, 3, 4, 40, 41, 77, n]  # uneven chunks, one of them a single row
    pieces = [x[a:b] for a, b in itertools.pairwise(bounds)]
    memmap = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=(n, d))
    memmap[:] = x
    memmap.flush()
    sources = {
        "list": pieces,
        "generator": (p for p in pieces),
        "tensors": iter([torch.from_numpy(p) for p in pieces]),
        "memmap": np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="r", shape=(n, d)),
        "memmap rows": (memmap[i : i + 9] for i in range(0, n, 9)),
        "float64": x.astype(np.float64),
    }
    for name, source in sources.items():
        np.testing.assert_allclose(
            projection.transform(source), whole, rtol=1e-5, atol=1e-5, err_msg=name
        )


def test_sketch_inputs():
    x = _data(40, 3000, seed=4)
    assert sketch_inputs(x, eps=0.5).shape == (40, jl_dimension(40, 0.5))
    np.testing.assert_array_equal(
        sketch_inputs(x, 100, seed=2), RandomProjection(100, seed=2).transform(x)
    )
    streamed = sketch_inputs((x[i : i + 5] for i in range(0, 40, 5)), 100, seed=2)
    np.testing.assert_array_equal(streamed, sketch_inputs(x, 100, seed=2))
    # dim >= D: the inputs themselves, as float32.
    for dim in (3000, 5000):
        np.testing.assert_array_equal(sketch_inputs(x, dim), x.astype(np.float32))
    np.testing.assert_array_equal(sketch_inputs(x[:, :10]), x[:, :10].astype(np.float32))
    with pytest.raises(ValueError, match="`dim`.*one-pass iterator"):
        sketch_inputs(iter([x]))
    assert sketch_inputs([x[:10], x[10:]], eps=0.5).shape == (40, jl_dimension(40, 0.5))


# ---------------------------------------------------------------------- seeds
def test_seed_fixes_the_projection():
    x = _data(20, 2500, seed=6)
    first = RandomProjection(32, seed=7, block_size=1000).transform(x)
    np.testing.assert_array_equal(first, RandomProjection(32, seed=7, block_size=1000).transform(x))
    for other in (RandomProjection(32, seed=8, block_size=1000), RandomProjection(32, seed=7)):
        assert np.abs(other.transform(x) - first).max() > 1.0  # another seed or another R


# --------------------------------------------------------------------- checks
@pytest.mark.parametrize("bad", [0, -3, 1.5, True, None])
def test_bad_dim(bad):
    with pytest.raises(ValueError, match="`dim`"):
        RandomProjection(bad)


@pytest.mark.parametrize("name", ["eps", "delta"])
@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), "0.1"])
def test_bad_eps_and_delta(name, bad):
    with pytest.raises(ValueError, match=rf"`{name}` to be a number in \(0, 1\)"):
        jl_dimension(100, **{name: bad})
    with pytest.raises(ValueError, match=f"`{name}`"):
        sketch_inputs(np.ones((3, 4)), **{name: bad})


def test_bad_arguments():
    with pytest.raises(ValueError, match="`n`"):
        jl_dimension(0)
    with pytest.raises(ValueError, match="`seed`"):
        RandomProjection(4, seed=-1)
    with pytest.raises(ValueError, match="`block_size`"):
        RandomProjection(4, block_size=0)
    with pytest.raises(ValueError, match="`delta`"):
        RandomProjection(4).error_bound(10, delta=1.0)


@pytest.mark.parametrize(
    "inputs, error, match",
    [
        (
            [np.ones((3, 5)), np.ones((2, 5)), np.ones((4, 6))],
            ValueError,
            r"D=5 .*chunk 2` has shape \(4, 6\)",
        ),
        (iter([np.ones((3, 5)), np.ones((2, 4))]), ValueError, "D=5 .*chunk 1"),
        (np.ones(5), ValueError, r"2-D .*shape \(5,\)"),
        (np.ones((2, 3, 4)), ValueError, r"2-D .*shape \(2, 3, 4\)"),
        (iter([np.ones((2, 3)), np.ones(3)]), ValueError, "`inputs chunk 1` to be 2-D"),
        (np.ones((0, 5)), ValueError, "at least one row"),
        (iter([]), ValueError, "at least one row"),
        (np.ones((4, 0)), ValueError, "D >= 1"),
        (np.ones((3, 4), dtype=bool), TypeError, "real numbers"),
        (np.ones((3, 4), dtype=complex), TypeError, "real numbers"),
        (
            np.array([[1.0, 2.0], [np.nan, 0.0], [0.0, np.inf]]),
            ValueError,
            r"finite .*rows \[1, 2\]",
        ),
    ],
)
def test_bad_inputs(inputs, error, match):
    with pytest.raises(error, match=match):
        RandomProjection(4).transform(inputs)


# --------------------------------------------------------------------- memory
def test_memmap_is_streamed_in_small_blocks(tmp_path):
    """numpy allocations during the transform of a 64 MB float64 memmap stay near the blocks.

    tracemalloc sees numpy's buffers (a float32 copy of the whole matrix would
    be 32 MB), not torch's; R's blocks and the float64 sums are torch tensors
    of block_size x dim and chunk_size x dim.
    """
    n, d, dim = 256, 32_768, 32
    path = tmp_path / "wide.f64"
    memmap = np.memmap(path, dtype=np.float64, mode="w+", shape=(n, d))
    rng = np.random.default_rng(9)
    for start in range(0, n, 64):
        memmap[start : start + 64] = rng.normal(size=(64, d))
    memmap.flush()
    del memmap
    inputs = np.memmap(path, dtype=np.float64, mode="r", shape=(n, d))
    projection = RandomProjection(dim, seed=0, block_size=2048, chunk_size=64)
    tracemalloc.start()
    try:
        y = projection.transform(inputs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # the float32 blocks are 64 x 2048 x 4 bytes = 0.5 MB
    np.testing.assert_allclose(
        y[-5:], projection.transform(np.array(inputs[-5:])), rtol=1e-5, atol=1e-5
    )
