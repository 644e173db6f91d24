"""The eigenmode spectrum and learning speeds against known answers and dense numpy."""

from __future__ import annotations

import numpy as np
import pytest

from freqlens.spectral import convergence_steps
from freqlens.spectral.eigenmodes import eigenbasis
from freqlens.spectral.speed import learning_speed


def ring(n: int = 96, radius: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    theta = 2 * np.pi * np.arange(n) / n
    return radius * np.c_[np.cos(theta), np.sin(theta)], theta


@pytest.mark.parametrize("distance, width", [("euclidean", 0.3), ("squared", 0.1)])
@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_ring_modes_are_fourier_modes(distance, width, k):
    """On a ring the kernel is circulant: sin(k theta) and cos(k theta) lie in modes 2k-1, 2k."""
    x, theta = ring()
    basis = eigenbasis(x, width, distance=distance)
    assert basis.complete and basis.num_modes == 96
    for signal in (np.sin(k * theta), np.cos(k * theta)):
        per_mode, rest = basis.energy(signal)
        share = per_mode / per_mode.sum()
        assert share[2 * k - 1 : 2 * k + 1].sum() == pytest.approx(1.0, abs=1e-8)
        assert rest == pytest.approx(0.0, abs=1e-9)
    # mode 0 is the constant and the eigenvalues fall off in frequency pairs
    assert np.allclose(np.abs(basis.modes[:, 0]), 1 / np.sqrt(96))
    assert basis.eigenvalues[0] == pytest.approx(1.0)
    pairs = basis.eigenvalues[1 : 2 * 10 + 1].reshape(-1, 2)
    assert np.allclose(pairs[:, 0], pairs[:, 1], rtol=1e-8)
    assert np.all(np.diff(pairs[:, 0]) < 0)


def test_eigenvalues_match_dense_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    width = 1.5
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    kernel = np.exp(-d / (2 * width))
    s = kernel / np.sqrt(np.outer(kernel.sum(1), kernel.sum(1)))
    expected = np.sort(np.linalg.eigvalsh(s))[::-1]
    basis = eigenbasis(x, width)
    np.testing.assert_allclose(basis.eigenvalues, expected, atol=1e-10)
    np.testing.assert_allclose(basis.modes.T @ basis.modes, np.eye(60), atol=1e-10)
    np.testing.assert_allclose(basis.modes @ np.diag(basis.eigenvalues) @ basis.modes.T, s, atol=1e-10)
    assert np.all(basis.frequencies >= 0) and np.all(np.diff(basis.frequencies) >= -1e-12)


def test_partial_decomposition_matches_exact_top_modes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4))
    exact = eigenbasis(x, 2.0)
    partial = eigenbasis(x, 2.0, num_modes=20)
    assert not partial.complete and partial.num_modes == 20
    np.testing.assert_allclose(partial.eigenvalues, exact.eigenvalues[:20], atol=1e-9)
    signal = rng.normal(size=200)
    per_exact, _ = exact.energy(signal)
    per_partial, rest = partial.energy(signal)
    # mode energies agree where eigenvalues are simple; totals always do
    assert per_partial.sum() + rest == pytest.approx(per_exact.sum(), rel=1e-9)
    assert per_partial.sum() == pytest.approx(per_exact[:20].sum(), rel=1e-6)
    assert partial.band_energy(signal, 4).shape == (len(partial.band_edges(4)),)  # bands + rest


def test_smooth_signal_has_more_low_energy_than_noise():
    x, theta = ring(128)
    basis = eigenbasis(x)  # default width
    rng = np.random.default_rng(2)
    smooth = np.sign(np.sin(theta))  # a two-class label smooth along the ring
    noise = rng.choice([0.0, 1.0], size=128)
    assert basis.cumulative_share(smooth, top=16) > 0.85
    assert basis.cumulative_share(noise, top=16) < 0.35
    assert np.isnan(basis.cumulative_share(np.ones(128), top=4))


def test_band_errors_dense_reference_and_normalisations():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    basis = eigenbasis(x, 1.0)
    labels = rng.integers(0, 2, size=40)
    targets = np.eye(2)[labels]
    outputs = rng.dirichlet([1, 1], size=(5, 40))
    edges = basis.band_edges(6)
    assert edges[0] == 0 and edges[-1] == 40 and np.all(np.diff(edges) > 0) and edges[1] == 1
    raw = basis.band_errors(outputs, labels, 6, relative_to="none")
    for t in range(5):
        coeff = basis.modes.T @ (outputs[t] - targets)
        for b in range(len(edges) - 1):
            assert raw[t, b] == pytest.approx(np.linalg.norm(coeff[edges[b] : edges[b + 1]]))
    # the bands add up to the whole residual (Parseval)
    np.testing.assert_allclose((raw**2).sum(1), ((outputs - targets) ** 2).sum((1, 2)))
    initial = basis.band_errors(outputs, targets, 6)
    np.testing.assert_allclose(initial[0], 1.0)
    np.testing.assert_allclose(initial, raw / raw[:1])
    one = basis.band_errors(outputs[2], targets, 6, relative_to="none")
    np.testing.assert_allclose(one, raw[2])


def test_bad_arguments_name_themselves():
    x, _ = ring(16)
    with pytest.raises(ValueError, match="`width`"):
        eigenbasis(x, -1.0)
    with pytest.raises(ValueError, match="`num_modes`"):
        eigenbasis(x, 0.3, num_modes=17)
    with pytest.raises(ValueError, match="`inputs`"):
        eigenbasis(x[:2], 0.3)
    basis = eigenbasis(x, 0.3)
    with pytest.raises(ValueError, match="`signal`"):
        basis.energy(np.ones(15))
    with pytest.raises(ValueError, match="`outputs`"):
        basis.band_errors(np.ones((2, 15, 2)), np.zeros(16, dtype=int))
    with pytest.raises(ValueError, match="`relative_to`"):
        basis.band_errors(np.ones((2, 16, 2)), np.zeros(16, dtype=int), relative_to="x")


# ----------------------------------------------------------------- learning speed
def test_area_speed_known_answers_and_order():
    steps = np.array([0, 1, 3, 7, 15, 31])
    x = np.log1p(steps)
    fast = np.exp(-steps / 2.0)
    slow = np.exp(-steps / 20.0)
    flat = np.ones(6)
    rising = 1 + steps / 31
    speeds = learning_speed(steps, np.c_[fast, slow, flat, rising])
    assert speeds[0] > speeds[1] > speeds[2] == 0.0 > speeds[3]
    # against a direct trapezoid over log-time
    area = np.trapezoid(slow, x) / (x[-1] - x[0]) if hasattr(np, "trapezoid") else np.trapz(slow, x) / x[-1]
    assert speeds[1] == pytest.approx(1 - area)
    # scale invariant: a curve and 10x it have one speed
    assert learning_speed(steps, 10 * slow).item() == pytest.approx(speeds[1])


def test_speed_is_defined_where_the_convergence_step_is_not():
    steps = np.array([0, 2, 4, 8, 16])
    barely = np.array([1.0, 0.95, 0.9, 0.8, 0.7])  # never halves
    assert np.isnan(convergence_steps(steps, barely, 0.5, relative=True))
    assert 0 < learning_speed(steps, barely).item() < 0.3
    assert learning_speed(steps, barely, method="half_drop").item() == 8.0  # 0.2 >= half of its own 0.3 drop


def test_half_drop_requires_staying_and_nan_cases():
    steps = np.arange(5)
    bouncing = np.array([1.0, 0.4, 0.9, 0.3, 0.2])  # drop 0.8; half made at 1, lost at 2, kept from 3
    assert learning_speed(steps, bouncing, method="half_drop").item() == 3.0
    assert np.isnan(learning_speed(steps, np.ones(5), method="half_drop"))
    assert np.isnan(learning_speed(steps, np.r_[1.0, np.nan, 0.5, 0.2, 0.1]))
    assert np.isnan(learning_speed(steps, np.zeros(5)))
    curves = np.stack([bouncing, np.ones(5)], axis=1)[:, :, None]
    assert learning_speed(steps, curves).shape == (2, 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        learning_speed([0, 2, 1, 3, 4], bouncing)
    with pytest.raises(ValueError, match="`method`"):
        learning_speed(steps, bouncing, method="fast")
