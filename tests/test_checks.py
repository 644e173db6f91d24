"""Inputs that are valid but unusual: reversed views, bfloat16 tensors, bad chunk sizes."""

import numpy as np
import pytest
import torch

from freqlens.spectral import FilterBank, pairwise_distances, relative_errors, suggest_widths


def test_reversed_views_are_accepted():
    x = np.random.default_rng(0).normal(size=(12, 4))
    np.testing.assert_allclose(pairwise_distances(x[::-1]), pairwise_distances(x.copy()[::-1].copy()))
    assert suggest_widths(x[::-1], 3).shape == (3,)
    outputs = np.full((12, 2), 0.5)
    low, high = FilterBank(x[:, ::-1], [1.0]).relative_errors(outputs[::-1], np.arange(12) % 2)
    assert np.isfinite(low).all() and np.isfinite(high).all()


def test_bfloat16_tensors_are_accepted():
    x = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    got = relative_errors(x.to(torch.bfloat16), torch.full((6, 2), 0.5, dtype=torch.bfloat16), labels, [1.0])
    want = relative_errors(x.to(torch.bfloat16).float(), torch.full((6, 2), 0.5), labels, [1.0])
    np.testing.assert_allclose(got, want)


def test_chunk_size_must_be_positive():
    with pytest.raises(ValueError, match="`chunk_size` to be an integer >= 1"):
        FilterBank(np.eye(3), [1.0], chunk_size=0)
