"""MSLRLinear against an independent dense computation (METHOD.md section 3), its init, merge and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from freqlens.defenses import MSLRConfig, MSLRLinear

BANDS = (1.0, 4.0, 8.0)
ALPHA = 6.0


def layer(rank: int, init: str = "paper", *, seed: int = 0, dtype=torch.float64, bias: bool = True) -> MSLRLinear:
    torch.manual_seed(seed)
    base = nn.Linear(8, 5, bias=bias, dtype=dtype)
    return MSLRLinear(base, MSLRConfig(bands=BANDS, rank=rank, alpha=ALPHA, init=init))


def dense_reference(mslr: MSLRLinear, x: torch.Tensor, rank: int) -> np.ndarray:
    """W0 x + b0 + (alpha / r) x (R diag(k) L)^T, from the layer's tensors in numpy."""
    w0 = mslr.base.weight.detach().numpy()
    b0 = mslr.base.bias.detach().numpy() if mslr.base.bias is not None else 0.0
    left = mslr.mslr_L.detach().numpy()  # (B r, in)
    right = mslr.mslr_R.detach().numpy()  # (out, B r)
    k = np.repeat(np.asarray(BANDS), rank)  # each band value repeated r times
    update = right @ np.diag(k) @ left  # (out, in)
    xs = x.detach().numpy()
    return xs @ w0.T + b0 + (ALPHA / rank) * xs @ update.T


@pytest.mark.parametrize("rank", [1, 2])
def test_forward_equals_dense_computation(rank):
    mslr = layer(rank)
    assert mslr.mslr_L.shape == (len(BANDS) * rank, 8)
    assert mslr.mslr_R.shape == (5, len(BANDS) * rank)
    np.testing.assert_array_equal(mslr.mslr_k.numpy(), np.repeat(BANDS, rank))
    x = torch.randn(3, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = mslr(x).numpy()
    np.testing.assert_allclose(out, dense_reference(mslr, x, rank), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("rank", [1, 2])
def test_forward_equals_dense_computation_without_bias(rank):
    mslr = layer(rank, bias=False)
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = mslr(x).numpy()
    np.testing.assert_allclose(out, dense_reference(mslr, x, rank), rtol=1e-10, atol=1e-10)


def test_delta_weight_is_the_dense_update():
    mslr = layer(2)
    k = np.repeat(BANDS, 2)
    expected = (ALPHA / 2) * mslr.mslr_R.detach().numpy() @ np.diag(k) @ mslr.mslr_L.detach().numpy()
    np.testing.assert_allclose(mslr.delta_weight().detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2])
def test_zero_init_output_equals_base(rank):
    mslr = layer(rank, init="zero", dtype=torch.float32)
    assert torch.count_nonzero(mslr.mslr_R) == 0
    assert torch.count_nonzero(mslr.mslr_L) > 0  # L is still random: R = 0 alone keeps the layer at its base
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert torch.equal(mslr(x), mslr.base(x))


def test_default_init_is_zero():
    assert MSLRConfig().init == "zero"
    mslr = MSLRLinear(nn.Linear(8, 5))
    assert torch.count_nonzero(mslr.mslr_R) == 0


def test_paper_init_gives_a_nonzero_update():
    mslr = layer(1, init="paper", dtype=torch.float32)
    assert torch.count_nonzero(mslr.mslr_R) == mslr.mslr_R.numel()
    x = torch.randn(6, 8)
    with torch.no_grad():
        assert not torch.allclose(mslr(x), mslr.base(x))
        assert float(mslr.delta_weight().abs().max()) > 0


def test_only_mslr_factors_are_trainable():
    mslr = layer(2, dtype=torch.float32)
    assert {n for n, p in mslr.named_parameters() if p.requires_grad} == {"mslr_L", "mslr_R"}
    assert not mslr.base.weight.requires_grad and not mslr.base.bias.requires_grad
    assert "mslr_k" in dict(mslr.named_buffers())  # the band values are a buffer, never trained
    assert "mslr_k" not in dict(mslr.named_parameters())


def test_gradients_reach_only_the_factors():
    mslr = layer(1, init="paper", dtype=torch.float32)
    mslr(torch.randn(4, 8)).sum().backward()
    assert mslr.mslr_L.grad is not None and mslr.mslr_R.grad is not None
    assert mslr.base.weight.grad is None and mslr.base.bias.grad is None


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_merged_gives_the_same_outputs(rank, bias):
    mslr = layer(rank, init="paper", dtype=torch.float32, bias=bias)
    merged = mslr.merged()
    assert type(merged) is nn.Linear
    assert (merged.bias is None) == (not bias)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(merged(x), mslr(x), atol=1e-6, rtol=1e-6)


def test_merged_in_float64_is_exact():
    mslr = layer(2, init="paper")
    x = torch.randn(5, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mslr.merged()(x), mslr(x), atol=1e-12, rtol=1e-12)


def test_linear_attributes_are_kept():
    mslr = layer(1, dtype=torch.float32)
    assert (mslr.in_features, mslr.out_features) == (8, 5)
    assert mslr.weight is mslr.base.weight


def test_config_bands_become_a_float_tuple():
    config = MSLRConfig(bands=[1, 2, 3], rank=2)
    assert config.bands == (1.0, 2.0, 3.0)
    assert config.width == 6


@pytest.mark.parametrize("bands", [(), []])
def test_config_rejects_empty_bands(bands):
    with pytest.raises(ValueError, match="`bands`"):
        MSLRConfig(bands=bands)


@pytest.mark.parametrize("bands", [(1, 0), (1, -4), (-1,), (0.0,)])
def test_config_rejects_non_positive_bands(bands):
    with pytest.raises(ValueError, match="`bands`"):
        MSLRConfig(bands=bands)


@pytest.mark.parametrize("bands", [("1", "2"), (True, 2), 3])
def test_config_rejects_bands_that_are_not_numbers(bands):
    with pytest.raises(ValueError, match="`bands`"):
        MSLRConfig(bands=bands)


@pytest.mark.parametrize("rank", [0, -1, 1.5])
def test_config_rejects_bad_rank(rank):
    with pytest.raises(ValueError, match="`rank`"):
        MSLRConfig(rank=rank)


@pytest.mark.parametrize("init", ["kaiming", "", "Paper"])
def test_config_rejects_bad_init(init):
    with pytest.raises(ValueError, match="`init`"):
        MSLRConfig(init=init)


@pytest.mark.parametrize("alpha", [0, -6.0])
def test_config_rejects_non_positive_alpha(alpha):
    with pytest.raises(ValueError, match="`alpha`"):
        MSLRConfig(alpha=alpha)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_config_rejects_bad_dropout(dropout):
    with pytest.raises(ValueError, match="`dropout`"):
        MSLRConfig(dropout=dropout)


def test_wrapping_something_other_than_linear_is_a_type_error():
    with pytest.raises(TypeError, match="nn.Linear"):
        MSLRLinear(nn.Conv1d(4, 4, 1))
