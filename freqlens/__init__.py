"""freqlens: Fourier analysis of backdoor learning dynamics.

The data flow: probe sets (:class:`ProbeSet`) -> a :class:`Recorder` that
writes model outputs during training -> a :class:`Trajectory` on disk ->
:func:`analyse` with an :class:`AnalysisConfig` (the filtering method and the
eigenmode spectrum of :mod:`freqlens.spectral`, with intervals) -> figures
(:mod:`freqlens.plots`) and reports (:mod:`freqlens.report`).
"""

__version__ = "0.1.0"

from freqlens.analysis import AnalysisConfig, SpectralAnalysis, analyse
from freqlens.recording import ProbeSet, Recorder, Schedule, Trajectory, load_trajectory
from freqlens.spectral import FilterBank, relative_errors

__all__ = [
    "AnalysisConfig",
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
