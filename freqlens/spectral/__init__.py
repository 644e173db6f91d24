"""Frequency-domain convergence of a mapping over a probe set.

The filtering method (Xu et al., arXiv 1901.06523; Wu et al., ACL 2024,
arXiv 2402.12026): Gaussian low-pass filters built from the probe inputs split
model outputs and targets into low- and high-frequency parts, and the relative
error of each part, recorded over training, shows which frequencies a model
has learned and when. See ``METHOD.md`` and the module docstrings.

Pure functions take arrays (numpy or torch); :class:`FilterBank` is the
stateful form that builds the kernels once for many snapshots.
:func:`eigenbasis` gives the whole graph-Fourier spectrum over a probe set
(eigenmodes of the normalised kernel), and :func:`learning_speed` a speed
that every error curve has, also one that never halves.
:func:`bootstrap_weights` and :func:`conservative_interval` give their
uncertainty: a bootstrap over probe rows with the filters held fixed.
"""

from freqlens.spectral.convergence import convergence_steps
from freqlens.spectral.eigenmodes import EigenBasis, eigenbasis
from freqlens.spectral.filters import (
    DISTANCES,
    REDUCTIONS,
    DegenerateTargetWarning,
    FilterBank,
    band_errors,
    joint_relative_errors,
    pairwise_distances,
    relative_errors,
)
from freqlens.spectral.projection import principal_projection, projection_spectrum
from freqlens.spectral.sketch import RandomProjection, jl_dimension, sketch_inputs
from freqlens.spectral.speed import SPEEDS, learning_speed
from freqlens.spectral.uncertainty import (
    bootstrap_weights,
    centred_interval,
    conservative_interval,
    percentile_interval,
)
from freqlens.spectral.widths import WidthCheck, WidthWarning, check_widths, suggest_widths

__all__ = [
    "DISTANCES",
    "REDUCTIONS",
    "SPEEDS",
    "DegenerateTargetWarning",
    "EigenBasis",
    "FilterBank",
    "RandomProjection",
    "WidthCheck",
    "WidthWarning",
    "band_errors",
    "bootstrap_weights",
    "centred_interval",
    "conservative_interval",
    "check_widths",
    "convergence_steps",
    "eigenbasis",
    "jl_dimension",
    "learning_speed",
    "joint_relative_errors",
    "pairwise_distances",
    "percentile_interval",
    "principal_projection",
    "projection_spectrum",
    "relative_errors",
    "sketch_inputs",
    "suggest_widths",
]
