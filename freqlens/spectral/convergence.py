"""Convergence steps of error curves recorded over training."""

from __future__ import annotations

import numpy as np

from freqlens._checks import ArrayLike, check_finite, check_positive_number, to_numpy


def convergence_steps(
    steps: ArrayLike, errors: ArrayLike, threshold: float = 0.5, *, relative: bool = False
) -> np.ndarray:
    """The first recorded step after which each error curve stays below a threshold.

    Args:
        steps: recorded training steps, shape (T,), increasing.
        errors: error curves, shape (T, ...): axis 0 runs over the steps.
        threshold: the error level (``relative=False``) or the fraction of
            each curve's first value (``relative=True``).
        relative: measure against the first recorded value of each curve.

    Returns:
        Shape ``errors.shape[1:]``: the step, or NaN where the curve never
        stays below the threshold up to the last snapshot or holds NaN.

    Example:
        >>> convergence_steps([0, 5, 10, 15], [0.9, 0.4, 0.6, 0.3]).item()
        15.0
        >>> convergence_steps([0, 5, 10, 15], [0.9, 0.4, 0.3, 0.2]).item()
        5.0
    """
    s, e = _curves(steps, errors)
    check_positive_number(threshold, "threshold")
    level = threshold * e[0] if relative else threshold
    below = e < level  # NaN compares False: a NaN curve never converges
    # stays[t] is True when every value from t on is below the level.
    stays = np.flip(np.logical_and.accumulate(np.flip(below, axis=0), axis=0), axis=0)
    converged = stays.any(axis=0)
    first = np.argmax(stays, axis=0)
    return np.where(converged, s[first], np.nan)


def _curves(steps: ArrayLike, errors: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` (T,) and ``errors`` (T, ...) as float64, checked: non-empty, finite,
    strictly increasing steps, one row of errors per step."""
    s = check_finite(np.asarray(to_numpy(steps, "steps"), dtype=np.float64), "steps")
    e = np.asarray(to_numpy(errors, "errors"), dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"Expected `steps` to be a non-empty 1-D array but got shape {s.shape}.")
    if e.ndim == 0 or e.shape[0] != s.size:
        raise ValueError(
            f"Expected `errors` to have shape (T, ...) with T={s.size} (one row per step) "
            f"but got shape {e.shape}."
        )
    if np.any(np.diff(s) <= 0):
        raise ValueError("Expected `steps` to be strictly increasing.")
    return s, e
