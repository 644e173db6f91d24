"""Inference-time backdoor detectors: applied to a trained model, they flag or repair triggered inputs.

- :mod:`~freqlens.detectors.base`: a detector as an object (:class:`Detector`), the trained
  model it inspects (:class:`Victim`), the registry (:func:`register_detector`,
  :data:`DETECTORS`) and :func:`evaluate_detector` (FRR, FAR, CACC and ASR after detection).
- :mod:`~freqlens.detectors.strip`, :mod:`~freqlens.detectors.rap`,
  :mod:`~freqlens.detectors.onion`: the built-in detectors, each in its own module.
- :mod:`~freqlens.detectors.config`: the ``[detector]`` config section (:class:`DetectorConfig`).
"""

from freqlens.detectors import strip as _strip  # noqa: F401, I001 (the built-ins register in this order)
from freqlens.detectors import rap as _rap  # noqa: F401
from freqlens.detectors import onion as _onion  # noqa: F401
from freqlens.detectors.base import (
    DETECTORS,
    Detector,
    Victim,
    detector_class,
    evaluate_detector,
    register_detector,
    unregister_detector,
)
from freqlens.detectors.config import DetectorConfig, make_detectors
from freqlens.detectors.onion import Onion, OnionSettings
from freqlens.detectors.rap import Rap, RapSettings
from freqlens.detectors.strip import Strip, StripSettings

__all__ = [
    "DETECTORS", "Detector", "DetectorConfig", "Onion", "OnionSettings", "Rap", "RapSettings", "Strip",
    "StripSettings", "Victim", "detector_class", "evaluate_detector", "make_detectors", "register_detector",
    "unregister_detector",
]
