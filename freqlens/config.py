"""Experiment configuration: typed sections, read from TOML, overridable by ``key=value``.

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
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from freqlens._checks import check_choice, check_label, check_positive_int
from freqlens.defenses.registry import DEFENSES, DefenseConfig  # noqa: F401 (re-exported)
from freqlens.recording.precision import check_precision
from freqlens.recording.schedule import Schedule
from freqlens.recording.spaces import DEFAULT_INPUT_SPACES, resolve_input_spaces
from freqlens.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DATA_FORMATS = ("auto", "openbackdoor", "clean", "hf")
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to fine-tune, where, and in what precision.

    ``dtype`` is the *compute* precision. The weights are always loaded and
    trained in float32 (AdamW's updates of bfloat16 or float16 weights round
    away); with ``"bfloat16"`` or ``"float16"`` the forward passes of
    training, recording and evaluation run under ``torch.autocast`` to that
    dtype on ``device`` (mixed precision), and float16 scales the loss
    (``torch.amp.GradScaler``). ``"auto"`` computes in the dtype the
    checkpoint was saved in (bfloat16 or float16; float32 otherwise). A
    device on which autocast cannot compute in the dtype is refused before
    training with an error naming ``model.dtype`` (torch 2.13 autocasts to
    both on CPU and CUDA). A training loss or gradient that becomes NaN/inf
    stops the run at that step with an error naming the likely cause.

    A relative ``name`` in a config file that starts with ``./``, ``../`` or
    ``~`` (or names an existing folder there) is a folder relative to the
    config file (:func:`resolve_config_paths`).
    """

    name: str = "bert-base-uncased"  # hub id, local folder (from_pretrained) or pkg:PACKAGE/folder
    max_length: int = 64  # tokens per example, padded/truncated (the kernel's L)
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "float32"  # compute precision (weights stay float32): "float32", "bfloat16", "float16", "auto"

    def __post_init__(self) -> None:
        check_positive_int(self.max_length, "model.max_length")
        check_choice(self.dtype, "model.dtype", MODEL_DTYPES)
        _check_str(self.name, "model.name")


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how much of it to use.

    ``splits`` names the train, dev and test splits of a Hugging Face dataset
    (default ``{train = "train", dev = "validation", test = "test"}``) or the
    file stems of a clean folder (default ``train``, ``dev``, ``test``); give
    only those that differ, e.g. ``splits = {test = "validation"}`` for GLUE,
    whose test labels are hidden (a split with labels < 0 is refused with an
    error naming ``data.splits.<role>``). A split named for two roles is
    carved into disjoint parts, seeded by ``train.seed``: dev and test take
    halves; an evaluation role named for the training split takes
    ``holdout`` of it. No test example is ever one the model trained on, the
    gradient-alignment reference set, or a dev example (checked where the
    splits are made; see ``freqlens.data.splits.check_disjoint``).
    ``info["splits"]`` in ``results.json``'s ``dataset`` says where each came from.
    """

    path: str = ""  # a dataset folder, file stem or HF dataset name
    format: str = "auto"  # "openbackdoor", "clean" (train/dev/test files), "hf", or "auto"
    train: str = "mix/0.1/train-poison.csv"  # OpenBackdoor training file, relative to path
    text_column: str = ""  # text column ("": "text" or "sentence" in files, "sentence" for HF)
    label_column: str = "label"  # label column of clean files / HF datasets
    max_train: int | None = None  # cap on training examples (keeps the poison share)
    max_eval: int | None = None  # cap on each evaluation split
    target_label: int = 1  # the attack's target class
    num_classes: int = 2  # classes of the task
    config_name: str = ""  # HF dataset configuration (datasets' `name`), e.g. "sst2" for path "glue"
    splits: dict = field(default_factory=dict)  # {train, dev, test} -> HF split / clean file stem
    holdout: float = 0.1  # share of the training split an evaluation split named for it takes

    def __post_init__(self) -> None:
        check_choice(self.format, "data.format", DATA_FORMATS)
        if not isinstance(self.config_name, str):
            raise ValueError(f"Expected `data.config_name` to be a string but got {self.config_name!r}.")
        if not isinstance(self.splits, Mapping) or set(self.splits) - {"train", "dev", "test"} or not all(
                isinstance(v, str) and v for v in self.splits.values()):
            raise ValueError(
                f"Expected `data.splits` to be a table with some of the keys 'train', 'dev', 'test' "
                f"and split names as values (e.g. {{test = \"validation\"}}) but got {self.splits!r}."
            )
        if isinstance(self.holdout, bool) or not isinstance(self.holdout, (int, float)) \
                or not 0.0 < self.holdout < 0.5:
            raise ValueError(f"Expected `data.holdout` in (0, 0.5) but got {self.holdout!r}.")
        for name in ("max_train", "max_eval"):
            if getattr(self, name) is not None:
                check_positive_int(getattr(self, name), f"data.{name}")
        check_positive_int(self.num_classes, "data.num_classes", minimum=2)
        check_label(self.target_label, "data.target_label", self.num_classes)


@dataclass(frozen=True)
class AttackConfig:
    """How to poison a clean dataset (unused for pre-poisoned OpenBackdoor folders)."""

    name: str = "none"  # "none", "badnets" or "addsent"
    rate: float = 0.1  # share of training examples poisoned
    clean_label: bool | None = None  # None: the attack's default (BadNets clean, AddSent dirty)
    seed: int = 0  # seed of the poisoning

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, (int, float)) and 0.0 <= self.rate <= 1.0):
            raise ValueError(f"Expected `attack.rate` in [0, 1] but got {self.rate!r}.")


@dataclass(frozen=True)
class RecordConfig:
    """What the recorder records and when.

    With ``probe_size = "auto"`` the probe sets are sized so that recording
    takes about ``budget`` of the wall time, measured on the model and data at
    hand (:func:`freqlens.recording.budget.plan_probes`); when the budget
    allows fewer than ``min_probe_size`` examples for three sets, the control
    set is left out (the verdicts use the clean and backdoor sets only), and
    when it cannot pay for ``min_probe_size`` at every snapshot of a log
    schedule, the schedule is thinned (to no fewer than ``min_snapshots``)
    rather than the budget overrun. The plan in results.json says which.
    A useful measurement comes first: ``min_probe_size`` examples per clean
    and backdoor set and ``min_snapshots`` snapshots are recorded even when
    they cost more than ``budget`` (the plan's warning then gives the
    expected share).

    ``input_spaces`` are the kernel's input spaces recorded with the
    trajectory (:mod:`freqlens.recording.spaces`): ``"flattened"`` (the
    paper's), ``"mean-pooled"``, ``"hidden:K"`` (K an integer, -1 the last
    layer), a name registered with ``register_input_space``, or
    ``"package.module:function"``; the first is the trajectory's ``inputs``.
    ``precision`` is the probe passes' precision
    (:mod:`freqlens.recording.precision`): ``"float32"`` (exact, the
    default), or ``"auto"``, bfloat16 on a CPU where it agrees with float32
    to 1e-3 on the run's own probes at the start (on the README's SST-2
    example it did, 1.3e-4, but drifted to 6.6e-3 by the last snapshot, which
    the run then warns about; in float32 that run records 17% of its wall
    time).
    """

    schedule: str = "log:50"  # "log:N", "every:K" or "steps:0,10,..."
    probe_size: int | str = "auto"  # examples per probe set (clean, backdoor, control), or "auto"
    budget: float = 0.2  # with probe_size = "auto": the share of wall time recording may take
    min_probe_size: int = 128  # with probe_size = "auto": the fewest examples per set (control dropped first)
    min_snapshots: int = 20  # with probe_size = "auto" and a log schedule: the fewest it is thinned to
    max_probe_size: int = 512  # with probe_size = "auto": the most examples per set
    batch_size: int = 32  # probe examples per forward pass (length-sorted; small is fast on CPU)
    input_spaces: list[str] = field(default_factory=lambda: list(DEFAULT_INPUT_SPACES))  # kernel input spaces
    precision: str = "float32"  # probe passes: "float32", "auto" (bfloat16 on CPU where exact to 1e-3), "bfloat16"

    def __post_init__(self) -> None:
        try:
            Schedule.parse(self.schedule)
        except ValueError as error:
            raise ValueError(f"Invalid `record.schedule`: {error}") from error
        if self.probe_size != "auto" and (isinstance(self.probe_size, (bool, str)) or not isinstance(
                self.probe_size, int) or self.probe_size < 1):
            raise ValueError(f"Expected `record.probe_size` to be 'auto' or an integer >= 1 but got "
                             f"{self.probe_size!r}.")
        if not (isinstance(self.budget, (int, float)) and 0.0 < self.budget < 1.0):
            raise ValueError(f"Expected `record.budget` in (0, 1) but got {self.budget!r}.")
        check_positive_int(self.min_probe_size, "record.min_probe_size")
        check_positive_int(self.min_snapshots, "record.min_snapshots", minimum=3)
        check_positive_int(self.max_probe_size, "record.max_probe_size", minimum=self.min_probe_size)
        check_positive_int(self.batch_size, "record.batch_size")
        resolve_input_spaces(self.input_spaces, argument="record.input_spaces")
        check_precision(self.precision, "record.precision")


# The [analysis] section belongs to the analysis (freqlens.analysis.AnalysisConfig), re-exported here.
from freqlens.analysis import AnalysisConfig  # noqa: E402,F401


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: model, data, attack, defense, training, recording, analysis."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

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
        """Build from nested mappings; unknown sections or keys raise ValueError."""
        sections = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ValueError(f"Unknown config section(s) {unknown}; expected some of {sorted(sections)}.")
        built = {}
        for name, value in data.items():
            if not isinstance(value, Mapping):
                raise ValueError(f"Expected config section `{name}` to be a table but got {value!r}.")
            section_type = sections[name].default_factory().__class__
            built[name] = _build_section(section_type, name, value)
        return cls(**built)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
        """Read a TOML file and apply ``key=value`` overrides (``train.epochs=3``).

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
        overridden = {_apply_override(data, override) for override in overrides}
        resolve_config_paths(data, Path(os.path.abspath(path)).parent, overridden=overridden)
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _build_section(section_type, name: str, values: Mapping[str, Any]):
    known = {f.name for f in fields(section_type)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"Unknown config key(s) {[f'{name}.{k}' for k in unknown]}; "
            f"`{name}` has {sorted(known)}."
        )
    try:
        return section_type(**values)
    except TypeError as error:  # wrong types that the dataclass itself rejects
        raise ValueError(f"Invalid value in config section `{name}`: {error}.") from error


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


def _apply_override(data: dict, override: str) -> tuple[str, str]:
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise ValueError(f"Expected an override like `section.key=value` but got {override!r}.")
    section, name = parts
    try:  # TOML syntax for the value: 3, 2e-5, true, "text", [1, 2]
        value = tomllib.loads(f"value = {text.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare string: model.name=prajjwal1/bert-tiny
    data.setdefault(section, {})[name] = value
    return section, name


def _check_str(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"Expected `{name}` to be a non-empty string but got {value!r}.")
