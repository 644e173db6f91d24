"""Widths that resolve (issue 13, item 3): median effective neighbours log-spaced
from 2 to N/2, no more widths than N resolves, and a loud warning when the
widths act as one filter."""

import warnings

import numpy as np
import pytest

from freqlens.spectral import FilterBank, WidthWarning, check_widths, suggest_widths
from freqlens.spectral.widths import RESOLVING_FACTOR, resolvable_widths


def _concentrated(n: int, dim: int = 2048, seed: int = 0) -> np.ndarray:
    """High-dimensional Gaussian points: pairwise distances concentrate around their
    median (relative spread ~ 1/sqrt(dim)) as on real flattened sentence embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, dim))  # two loose clusters, like clean and triggered sentences
    return centres[rng.integers(0, 2, n)] * 0.3 + rng.normal(size=(n, dim))


@pytest.mark.parametrize("n", [32, 128, 256])
def test_default_widths_span_two_to_half_n_neighbours_on_concentrated_distances(n):
    x = _concentrated(n)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[np.triu_indices(n, 1)]
    assert np.quantile(d, 0.99) / np.quantile(d, 0.01) < 1.6  # as concentrated as SST-2's (43 / 91)
    widths = suggest_widths(x)
    assert widths.size == resolvable_widths(n)
    counts = FilterBank(x, widths).neighbour_counts()
    np.testing.assert_allclose(counts, np.geomspace(2.0, n / 2.0, widths.size)[::-1], rtol=0.25)
    assert counts[0] / counts[-1] >= (30.0 if n >= 128 else n / 8)
    check = check_widths(x, widths, warn=False)
    assert not check.collapsed and check.message is None


def test_auto_gives_as_many_widths_as_n_resolves():
    for n in (3, 7):  # (2, N/2) spans less than 2x: one width, not two that act as one
        assert resolvable_widths(n) == 1
        x = np.random.default_rng(n).normal(size=(n, 4))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_widths(x, suggest_widths(x))
    for n in (8, 16, 64, 256, 600, 10_000):
        k = resolvable_widths(n)
        span = max(2.5, n / 2.0) / 2.0
        assert 2 <= k <= 12
        if 2 < k < 12:  # adjacent widths differ by at least the resolving factor, and one more would not
            assert span ** (1.0 / (k - 1)) >= RESOLVING_FACTOR > span ** (1.0 / k)
    assert [resolvable_widths(n) for n in (16, 64, 256, 600)] == [4, 7, 11, 12]
    with pytest.raises(ValueError, match="`n`"):
        resolvable_widths(2)


def test_widths_that_act_as_one_filter_warn_loudly():
    x = _concentrated(128, dim=256)
    middle = suggest_widths(x)[5]
    with pytest.warns(WidthWarning, match="collapse to one filter"):
        check = check_widths(x, middle * np.linspace(1.0, 1.05, 12))
    assert check.collapsed and check.span < 2.0
    assert check.to_dict()["collapsed"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = check_widths(x, [middle])  # one width is one filter by choice, not a collapse
    assert not single.collapsed


def test_identity_or_uniform_widths_still_warn():
    x = _concentrated(64, dim=64)
    with pytest.warns(WidthWarning, match="cannot show frequency structure"):
        check = check_widths(x, [1e-4, 2e-4])
    assert check.collapsed
