"""Mode-band errors divided by a floored start (relative_to="floored") and speeds measured against it:
a band with almost no error at the first snapshot must not turn a small rise into a huge negative speed."""

import numpy as np

from freqlens.spectral import eigenbasis, learning_speed
from freqlens.spectral.eigenmodes import FLOOR_SHARE


def _ring(n=64):
    theta = 2 * np.pi * np.arange(n) / n
    return theta, eigenbasis(np.c_[np.cos(theta), np.sin(theta)], width=0.05)


def test_floored_errors_against_a_dense_reference():
    theta, basis = _ring()
    rng = np.random.default_rng(0)
    targets = (np.sin(3 * theta) > 0).astype(int)
    outputs = rng.dirichlet([1, 1], size=(5, theta.size))
    raw = basis.band_errors(outputs, targets, 6, relative_to="none")  # (T, B)
    sizes = np.diff(basis.band_edges(6)).astype(float)
    floor = FLOOR_SHARE * np.sqrt((raw[0] ** 2).sum()) * np.sqrt(sizes / sizes.sum())
    expected = raw / np.maximum(raw[0], floor)
    np.testing.assert_allclose(basis.band_errors(outputs, targets, 6, relative_to="floored"), expected)


def test_a_band_with_almost_no_start_error_gets_a_bounded_speed():
    steps = np.array([0, 1, 3, 7, 15])
    start = np.array([1.0, 1e-4])  # band 1 starts with almost no error, then rises to 1e-2
    raw = np.array([start, [0.5, 1e-3], [0.3, 5e-3], [0.2, 1e-2], [0.1, 1e-2]])
    plain = learning_speed(steps, raw)
    assert plain[1] < -30  # divided by its own tiny start: a rise of 1e-2 reads as a collapse
    floor = np.array([0.1, 0.1])
    floored = raw / np.maximum(raw[0], floor)
    speed = learning_speed(steps, floored, scale=1.0)
    assert speed[0] == plain[0]  # a band above its floor keeps the plain speed
    assert -0.2 < speed[1] < 0  # against the floor the rise is small, and still a rise
