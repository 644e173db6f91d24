"""Learning speeds of error curves that are defined for every curve.

The paper's convergence step (the first step after which a curve stays below
half its first value, :func:`~freqlens.spectral.convergence_steps`) is NaN
for a curve that never halves, which is what a defense that slows learning
produces: such a run gets no point on a convergence spectrum. Two measures
that every curve has (freqlens' choice, not the papers'):

- ``"area"``: one minus the mean of the normalised error ``e(t) / e(0)`` over
  log-time ``log(1 + step)``, rescaled to [0, 1] over the recorded span
  (trapezoids between snapshots). 0 for a curve that never moves, close to 1
  for one that drops to zero by the first snapshot after step 0, negative for
  one that grows. Log-time, because backdoors are learned early and the
  recorder's default schedule is log-spaced.
- ``"half_drop"``: the first recorded step from which the curve has made, and
  keeps, half of its own total drop ``e(0) - min_t e(t)``; NaN only for a
  curve that never drops.
"""

from __future__ import annotations

import numpy as np

from freqlens._checks import ArrayLike, check_choice
from freqlens.spectral.convergence import _curves

SPEEDS = ("area", "half_drop")


def learning_speed(steps: ArrayLike, errors: ArrayLike, *, method: str = "area",
                   scale: ArrayLike | None = None) -> np.ndarray:
    """The learning speed of each error curve.

    Args:
        steps: recorded steps, shape (T,), strictly increasing, >= 0.
        errors: error curves, shape (T, ...) (axis 0 runs over the steps).
        method: ``"area"`` (default: higher is faster, unitless) or
            ``"half_drop"`` (a step: lower is faster).
        scale: with ``"area"``, the level drops are measured against,
            broadcast to ``errors.shape[1:]``: the speed is ``(e(0) - mean
            e) / scale``. Default: each curve's first value, which gives
            ``1 - mean e / e(0)``. Give ``1.0`` for curves already divided
            by a floored start (:meth:`~freqlens.spectral.EigenBasis.band_errors`
            with ``relative_to="floored"``), so that a curve with almost no
            error at the start is not blown up by it.

    Returns:
        Shape ``errors.shape[1:]``. ``"area"`` is NaN only where a curve holds
        NaN or starts at 0; ``"half_drop"`` also where it never drops.

    Raises:
        ValueError: on steps that are not increasing, negative, or do not match ``errors``.

    Example:
        >>> learning_speed([0, 1, 3, 7], [1.0, 1.0, 1.0, 1.0]).item()
        0.0
        >>> round(learning_speed([0, 1, 3, 7], [1.0, 0.0, 0.0, 0.0]).item(), 3)  # 1 - (log 2 / 2) / log 8
        0.833
        >>> learning_speed([0, 1, 3, 7], [1.0, 0.8, 0.5, 0.2], method="half_drop").item()
        3.0
    """
    check_choice(method, "method", SPEEDS)
    s, e = _curves(steps, errors)
    if s[0] < 0:
        raise ValueError(f"Expected `steps` to be non-negative (log-time is log(1 + step)) but got {s[0]:g}.")
    if method == "area":
        x = np.log1p(s)
        span = x[-1] - x[0]
        level = e[:1] if scale is None else np.broadcast_to(np.asarray(scale, dtype=np.float64), e.shape[1:])[None]
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised = np.where(level > 0, e / level, np.nan)
        if s.size == 1 or span <= 0:
            return np.where(np.isnan(normalised[0]), np.nan, 0.0)
        widths = np.diff(x).reshape((-1,) + (1,) * (e.ndim - 1))
        area = ((normalised[1:] + normalised[:-1]) * 0.5 * widths).sum(axis=0) / span
        return normalised[0] - area
    drop = e[0] - np.min(e, axis=0)
    with np.errstate(invalid="ignore"):
        made = (e[0] - e) >= 0.5 * drop  # NaN compares False
    stays = np.flip(np.logical_and.accumulate(np.flip(made, axis=0), axis=0), axis=0)
    first = np.argmax(stays, axis=0)
    defined = (drop > 0) & stays.any(axis=0) & ~np.isnan(e).any(axis=0)
    return np.where(defined, s[first], np.nan)
