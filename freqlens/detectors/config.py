"""The ``[detector]`` config section (:class:`DetectorConfig`) and building the detectors it names.

========================  ==================================================================
``strip``                 perturb by replacing words; low prediction entropy = triggered (Gao et al., arXiv 1911.10312)
``rap``                   a trained perturbation token; a small target-probability drop = triggered (Yang et al., arXiv 2110.07831)
``onion``                 remove the words whose removal lowers GPT-2's perplexity most (Qi et al., arXiv 2011.10369)
========================  ==================================================================

A run applies the named detectors to the trained model after training
(:func:`freqlens.experiment.run_experiment`), each on its own, and writes
their metrics into ``results.json`` under ``detectors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from freqlens._checks import check_positive_int
from freqlens.detectors.base import Detector, detector_class
from freqlens.detectors.onion import OnionSettings
from freqlens.detectors.rap import RapSettings
from freqlens.detectors.strip import StripSettings

#: The built-in detectors' tables of ``[detector]``: name -> the settings class.
SECTIONS = {"strip": StripSettings, "rap": RapSettings, "onion": OnionSettings}


@dataclass(frozen=True)
class DetectorConfig:
    """Which inference-time detectors to apply after training (``name``), and their settings.

    ``name`` is one registered name or a list of them (``name = ["strip",
    "rap"]``, or ``"strip,rap"``: ``--set detector.name=strip,rap``); empty (the default) applies none. The built-ins read their
    settings from ``[detector.strip]``, ``[detector.rap]`` and
    ``[detector.onion]``; a detector registered outside freqlens with its
    own settings (``Detector.options``) reads them from
    ``[detector.options.<name>]``.

    Raises:
        ValueError: an unknown or repeated detector name, ``frr`` outside
            [0, 1), a bad setting (each named by its dotted key, e.g.
            ``detector.rap.lr``), options for a detector that takes none or
            is not named.
    """

    name: Any = ()  # the detector(s) to apply after training: "strip", "rap", "onion" or module:Class, one or a list; empty: none
    frr: float = 0.01  # false rejection rate on clean dev inputs that sets a flagging detector's threshold (OpenBackdoor's default)
    batch_size: int = 64  # inputs per forward pass of the trained model while detecting
    strip: StripSettings = field(default_factory=StripSettings)  # STRIP (strip)
    rap: RapSettings = field(default_factory=RapSettings)  # RAP (rap)
    onion: OnionSettings = field(default_factory=OnionSettings)  # ONION (onion)
    options: Any = field(default_factory=dict)  # settings of detectors registered outside freqlens: a table per name ([detector.options."module:Class"])

    def __post_init__(self) -> None:
        from freqlens.settings import build

        names = self.name
        if isinstance(names, str):  # one name, or several separated by commas (--set detector.name=strip,rap)
            names = tuple(n.strip() for n in names.split(",")) if names.strip() else ()
        if not (isinstance(names, Sequence) and all(isinstance(n, str) and n.strip() for n in names)):
            raise ValueError(f"Expected `detector.name` to be a detector name or a list of them but got {self.name!r}.")
        names = tuple(names)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"Expected each detector once in `detector.name` but got {repeated} more than once.")
        classes = {n: detector_class(n, "detector.name") for n in names}
        object.__setattr__(self, "name", names)
        frr = self.frr
        if not (isinstance(frr, (int, float)) and not isinstance(frr, bool) and 0 <= frr < 1):
            raise ValueError(f"Expected `detector.frr` in [0, 1) but got {frr!r}.")
        check_positive_int(self.batch_size, "detector.batch_size")
        for key, section in SECTIONS.items():
            value = getattr(self, key)
            if not isinstance(value, section):
                object.__setattr__(self, key, build(section, value if value is not None else {}, f"detector.{key}"))
        options = self.options or {}
        if not isinstance(options, Mapping):
            raise ValueError(f"Expected `detector.options` to be a table per detector name but got {options!r}.")
        built = {}
        for name, values in options.items():
            if name in SECTIONS:
                raise ValueError(f"Expected the settings of {name!r} in `detector.{name}` but got them in "
                                 f"`detector.options.{name}`.")
            cls = classes.get(name)
            if cls is None:
                raise ValueError(f"Expected `detector.options.{name}` only for a detector in `detector.name` "
                                 f"({list(names)}) but {name!r} is not one.")
            if cls.options is None:
                raise ValueError(f"Expected no `detector.options.{name}` (detector {name!r} takes none) but got "
                                 f"{values!r}.")
            built[name] = values if isinstance(values, cls.options) else build(
                cls.options, values or {}, f"detector.options.{name}")
        object.__setattr__(self, "options", built)

    @property
    def names(self) -> tuple[str, ...]:
        """The detectors to apply, in order (empty: none)."""
        return self.name

    def settings_of(self, name: str):
        """The settings of detector ``name``: its built-in table, its ``[detector.options.<name>]``, or its
        options' defaults (None when it takes none)."""
        if name in SECTIONS:
            return getattr(self, name)
        given = (self.options or {}).get(name)
        if given is not None:
            return given
        cls = detector_class(name, "detector.name")
        return cls.options() if cls.options is not None else None

    def to_dict(self) -> dict:
        return asdict(self)


def make_detectors(config: DetectorConfig, *, seed: int = 0) -> list[Detector]:
    """The detectors ``config`` names, built with their settings, ``detector.frr`` and ``seed``."""
    return [detector_class(name, "detector.name")(name, config.settings_of(name), frr=config.frr, seed=seed)
            for name in config.names]
