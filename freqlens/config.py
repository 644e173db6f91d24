"""Experiment configuration: the sections composed, read from TOML, overridable by ``key=value``.

Each section belongs to the package that uses it and is defined there:
``[model]`` :class:`~freqlens.models.loading.ModelConfig`, ``[data]`` and
``[attack]`` :class:`~freqlens.data.experiment.DataConfig` and
:class:`~freqlens.data.experiment.AttackConfig`, ``[defense]``
:class:`~freqlens.defenses.registry.DefenseConfig`, ``[detector]``
:class:`~freqlens.detectors.config.DetectorConfig`, ``[train]``
:class:`~freqlens.training.TrainConfig`, ``[record]``
:class:`~freqlens.recording.plan.RecordConfig`, ``[analysis]``
:class:`~freqlens.analysis.AnalysisConfig`. This module only composes them
(:class:`ExperimentConfig`) and reads files and overrides.

A config file has one table per section; every field has a default, so a file
names only what differs::

    [model]
    name = "bert-base-uncased"      # a hub id or a local folder
    [data]
    path = "../../shared/data/sst-2/addsent"   # relative to this file's folder
    train = "mix/0.1/train-poison.csv"
    max_train = 2000
    [train]
    epochs = 2

Unknown sections or keys are an error that names them. Relative paths in a
file resolve against the file's folder, those given as overrides against the
working directory (:meth:`ExperimentConfig.from_toml`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from freqlens.analysis import AnalysisConfig
from freqlens.data.experiment import DATA_FORMATS, AttackConfig, DataConfig  # noqa: F401 (re-exported)
from freqlens.defenses.registry import DEFENSES, DefenseConfig
from freqlens.detectors.config import DetectorConfig
from freqlens.models.loading import MODEL_DTYPES, ModelConfig  # noqa: F401 (re-exported)
from freqlens.recording.plan import RecordConfig
from freqlens.settings import Setting, apply_override, build, describe
from freqlens.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: model, data, attack, defense, training, recording, analysis, and the inference-time
    detectors applied to the trained model."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self) -> None:
        recorded = list(self.record.input_spaces)
        if self.analysis.input_space not in ("auto", *recorded):
            raise ValueError(
                f"Expected `analysis.input_space` to be one of the spaces `record.input_spaces` records "
                f"({recorded}) or \"auto\" (the first of them) but got {self.analysis.input_space!r}; add it to "
                f"`record.input_spaces`."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        """Build from nested mappings; unknown sections or keys raise ValueError naming them in dotted form
        (``defense.ga.muu``), and a flat key of earlier versions names its new key (``defense.ga_mu`` is now
        ``defense.ga.mu``)."""
        sections = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ValueError(f"Unknown config section(s) {unknown}; expected some of {sorted(sections)}.")
        built = {}
        for name, value in data.items():
            if not isinstance(value, Mapping):
                raise ValueError(f"Expected config section `{name}` to be a table but got {value!r}.")
            built[name] = build(sections[name].default_factory, value, name)
        return cls(**built)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
        """Read a TOML file and apply ``key=value`` overrides (``train.epochs=3``, ``defense.ga.mu=0.2``).

        Relative paths follow the convention of config-driven tools: a
        ``data.path`` or local ``model.name`` written in the file resolves
        against the file's folder, one given in ``overrides`` (``freqlens run
        --set``) against the working directory; both are stored absolute, so
        the config in ``results.json`` names the files used. What counts as a
        path is :func:`resolve_config_paths`' rule. (:meth:`from_dict` keeps
        paths as given: relative ones resolve against the working directory.)

        Raises:
            FileNotFoundError: if ``path`` is not a file.
            ValueError: if it is not TOML, an override is malformed, or a
                section or key is unknown or invalid.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Expected a TOML config file at {path} but there is none.")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"Could not parse {path} as TOML: {error}.") from error
        overridden = {apply_override(data, override) for override in overrides}
        resolve_config_paths(data, Path(os.path.abspath(path)).parent, overridden=overridden)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def upgrade(cls, stored: Mapping[str, Any]) -> dict[str, Any]:
        """A config as an earlier version stored it (``results.json``, ``checkpoint/config.json``), in
        today's JSON form: the defense's flat keys nested
        (:func:`~freqlens.defenses.registry.nest_flat_keys`) and each section that still builds
        completed with today's defaults (e.g. ``attack.options``), so a run of an earlier version
        groups with, and resumes as, one of this version with the same settings; where a defense's
        default changed, its :meth:`~freqlens.defenses.base.Defense.upgrade_stored` writes the earlier
        value (ABL's ``abl.budget``, early-loss's ``options.first_size``). A section that no longer
        builds, or whose defense is not registered here (a ``module:Class`` name is never imported to
        read a run), is kept as stored; nothing is ever refused. A run config from before ``[detector]``
        gets today's default (no detector), which is what it applied.
        """
        from freqlens.defenses.registry import defense_class, nest_flat_keys

        upgraded = {name: dict(value) if isinstance(value, Mapping) else value for name, value in stored.items()}
        if "model" in upgraded and "detector" not in upgraded:  # a run from before `[detector]`: it applied none
            upgraded["detector"] = {}
        if isinstance(upgraded.get("defense"), Mapping):  # a changed default read as the stored run ran it
            table = nest_flat_keys(upgraded["defense"])
            name = table.get("name")
            upgraded["defense"] = (defense_class(name).upgrade_stored(table)  # a registered one only: never
                                   if isinstance(name, str) and name in DEFENSES else table)  # import to read
        for section in fields(cls):
            values = upgraded.get(section.name)
            if (section.name == "defense" and isinstance(values, Mapping)
                    and not (isinstance(values.get("name"), str) and values["name"] in DEFENSES)):
                continue  # never import the code a stored `module:Class` names just to read a run
            if isinstance(values, Mapping):
                try:
                    built = build(section.default_factory, values, section.name)
                except (ValueError, TypeError):
                    continue
                upgraded[section.name] = json.loads(json.dumps(dataclasses.asdict(built), default=str))
        return upgraded


def resolve_config_paths(data: dict, folder: Path, *, overridden: Iterable[tuple[str, str]] = ()) -> None:
    """Make the relative paths in config ``data`` (nested mappings, changed in place) absolute.

    ``data.path`` and ``model.name`` resolve against ``folder`` (the config
    file's), or against the working directory when their ``(section, key)``
    is in ``overridden`` (given on the command line). ``~`` is expanded.

    What counts as a path: ``model.name`` when it starts with ``./``, ``../``
    or ``~``, or when the resolved folder exists (else it is a hub id such as
    ``prajjwal1/bert-tiny``; ``pkg:...`` is left alone). ``data.path`` always
    when ``data.format`` is ``"clean"`` or ``"openbackdoor"``, never when it
    is ``"hf"``, and with ``"auto"`` when it starts with ``./``, ``../`` or
    ``~`` or the resolved path exists (else it may be a Hugging Face dataset
    name such as ``glue``, and is left as written).
    """
    overridden = set(overridden)
    explicit = ("./", "../", ".\\", "..\\", "~")

    def resolve(section: str, key: str, always: bool) -> None:
        table = data.get(section)
        value = table.get(key) if isinstance(table, Mapping) else None
        if not isinstance(value, str) or not value or value.startswith("pkg:"):
            return
        expanded = Path(value).expanduser()
        base = Path.cwd() if (section, key) in overridden else folder
        candidate = Path(os.path.abspath(base / expanded))
        if expanded.is_absolute() or always or value.startswith(explicit) or value in (".", "..") \
                or candidate.exists():
            table[key] = str(candidate)

    resolve("model", "name", always=False)
    data_table = data.get("data")
    data_format = data_table.get("format", "auto") if isinstance(data_table, Mapping) else "auto"
    if data_format != "hf":
        resolve("data", "path", always=data_format in ("clean", "openbackdoor"))


def list_settings() -> list[Setting]:
    """Every setting of every section, nested tables included, in file order, with default and meaning.

    Then the ``[defense.options]`` settings of each registered defense that
    declares some (``Defense.options``), their meaning prefixed with the
    defense's name. What ``freqlens run --list-keys`` prints.
    """
    from freqlens.defenses.base import defense_class

    found = []
    for section in fields(ExperimentConfig):
        found += [s for s in describe(section.default_factory, section.name) if s.key != "defense.options"]
    for name in DEFENSES:
        options = defense_class(name).options
        if options is not None:
            found += [Setting(s.key, s.default, f"(defense {name!r}) {s.meaning}".rstrip())
                      for s in describe(options, "defense.options")]
    return found
