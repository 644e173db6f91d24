"""The projection view: a Fourier spectrum along one direction of the inputs.

Xu et al. (Frequency Principle, arXiv 1901.06523) project high-dimensional
inputs onto one direction and take the non-uniform discrete Fourier transform
of the mapping along it:

    F[f](k) = sum_i f_i exp(-i k p_i)

freqlens projects onto the first principal direction of the probe inputs,
rescales the positions to [0, 1] (so frequency ``k = 2 pi m`` completes ``m``
periods across the probe set) and reports, per frequency, the relative error
``||F[h](k) - F[y](k)|| / ||F[y](k)||`` with the norm over the C classes.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse.linalg

from freqlens._checks import (
    ArrayLike,
    as_matrix,
    as_outputs,
    as_targets,
    check_finite,
    check_positive_int,
    to_numpy,
)
from freqlens.spectral.filters import ZERO_PART_RTOL, DegenerateTargetWarning


def principal_projection(inputs: ArrayLike) -> np.ndarray:
    """Coordinates of the centred inputs along their first principal direction.

    The sign is fixed so that the direction's largest component (in absolute
    value, the first on a tie) is positive, which makes the result
    deterministic.

    Args:
        inputs: probe inputs, shape (N, D).

    Returns:
        Shape (N,).

    Example:
        >>> principal_projection([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]).round(4).tolist()
        [-1.4142, 0.0, 1.4142]
    """
    x = as_matrix(inputs, "inputs")
    x = x - x.mean(axis=0, keepdims=True)
    n, d = x.shape
    if min(n, d) <= 4000:
        # Eigenvectors of the smaller of the Gram (N x N) and covariance (D x D) matrices.
        if n <= d:
            _, vectors = np.linalg.eigh(x @ x.T)
            direction = x.T @ vectors[:, -1]
            direction /= max(np.linalg.norm(direction), np.finfo(float).tiny)
        else:
            direction = np.linalg.eigh(x.T @ x)[1][:, -1]
    else:
        start = np.ones(min(n, d)) / np.sqrt(min(n, d))
        direction = scipy.sparse.linalg.svds(x, k=1, v0=start)[2][0]
    if direction[np.argmax(np.abs(direction))] < 0:
        direction = -direction
    return x @ direction


def projection_spectrum(
    inputs: ArrayLike,
    outputs: ArrayLike,
    targets: ArrayLike,
    *,
    num_frequencies: int = 32,
    positions: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Relative error per frequency along the first principal direction.

    Args:
        inputs: probe inputs, shape (N, D).
        outputs: model outputs, shape (N, C) or (T, N, C).
        targets: labels (N,) or one-hot targets (N, C).
        num_frequencies: number M of frequencies ``k = 2 pi m``, m = 0..M-1.
        positions: precomputed projections (N,) to reuse across calls
            (default: :func:`principal_projection` of ``inputs``).

    Returns:
        ``(frequencies, errors)``: frequencies (M,) and relative errors of
        shape (M,) or (T, M); NaN where the target's transform is zero.

    Example:
        >>> x = np.linspace(0, 1, 64)[:, None]
        >>> k, err = projection_spectrum(x, np.full((64, 2), 0.5), (x[:, 0] > 0.5).astype(int))
        >>> k.shape, err.shape
        ((32,), (32,))
    """
    x = as_matrix(inputs, "inputs")
    m = check_positive_int(num_frequencies, "num_frequencies")
    values = as_outputs(outputs, x.shape[0])
    t, n, c = values.shape
    y = as_targets(targets, n, c)
    if positions is None:
        p = principal_projection(x)
    else:
        p = check_finite(np.asarray(to_numpy(positions, "positions"), dtype=np.float64), "positions")
    if p.shape != (n,):
        raise ValueError(f"Expected `positions` to have shape ({n},) but got {p.shape}.")
    span = p.max() - p.min()
    if not span > 0:
        raise ValueError(
            f"Expected the {n} projected positions to vary but they are all equal "
            "(identical inputs, or constant `positions`): no frequency can be resolved."
        )
    scaled = (p - p.min()) / span
    frequencies = 2.0 * np.pi * np.arange(m)
    phases = np.exp(-1j * np.outer(frequencies, scaled))  # (M, N)
    target_transform = np.linalg.norm(phases @ y, axis=1)  # (M,)
    error = (values - y[None]).transpose(1, 0, 2).reshape(n, t * c)
    error_transform = np.abs(phases @ error).reshape(m, t, c)
    numerator = np.sqrt((error_transform**2).sum(axis=2)).T  # (T, M)
    zero = target_transform <= ZERO_PART_RTOL * np.linalg.norm(y, axis=1).sum()
    if zero.any():
        warnings.warn(
            f"Relative projection error is undefined (NaN) at frequencies "
            f"{frequencies[zero].round(3).tolist()}: the targets' transform is zero there.",
            DegenerateTargetWarning,
            stacklevel=2,
        )
    errors = np.where(zero[None], np.nan, numerator / np.where(zero, 1.0, target_transform)[None])
    return frequencies, errors[0] if np.ndim(outputs) == 2 else errors
