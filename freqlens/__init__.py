"""freqlens: Fourier analysis of backdoor learning dynamics.

The data flow: probe sets (:class:`ProbeSet`) -> a :class:`Recorder` that
writes model outputs during training -> a :class:`Trajectory` on disk ->
:func:`analyse` (the filtering method of :mod:`freqlens.spectral`) -> figures
(:mod:`freqlens.plots`) and reports (:mod:`freqlens.report`).
"""

__version__ = "0.1.0"

from freqlens.analysis import SpectralAnalysis, analyse
from freqlens.recording import ProbeSet, Recorder, Schedule, Trajectory, load_trajectory
from freqlens.spectral import FilterBank, relative_errors

__all__ = [
    "FilterBank",
    "ProbeSet",
    "Recorder",
    "Schedule",
    "SpectralAnalysis",
    "Trajectory",
    "__version__",
    "analyse",
    "load_trajectory",
    "relative_errors",
]
