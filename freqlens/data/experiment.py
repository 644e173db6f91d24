"""The ``[data]`` and ``[attack]`` config sections, and the poisoned experiment they describe.

:class:`DataConfig` and :class:`AttackConfig` are the sections;
:func:`load_experiment` is what ``freqlens run`` calls with them: it finds what ``data.path`` is,
picks the loader for ``data.format``, poisons a clean dataset with
``attack``, and caps the splits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from freqlens._checks import IMPORT_PATH, check_choice, check_label, check_positive_int
from freqlens.data.attacks import ATTACKS, Attack, attack_class, poison
from freqlens.data.hf import is_saved_dataset
from freqlens.data.splits import PoisonedDataset

DATA_FORMATS = ("auto", "openbackdoor", "clean", "hf")

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")  # "glue", "stanfordnlp/sst2"


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
    """How to poison a clean dataset (unused for pre-poisoned OpenBackdoor folders).

    ``name`` is ``"none"`` (the data is an OpenBackdoor folder, already
    poisoned) or a registered attack (:data:`freqlens.data.ATTACKS`):
    ``"badnets"``, ``"addsent"``, or one of your own registered with
    :func:`freqlens.data.register_attack` before the config is built or named
    by import path (``"my_attacks:Tail"``, an :class:`~freqlens.data.Attack`
    subclass in an importable module; the working directory counts).
    ``"stylebkd"`` and ``"synbkd"`` are registered too but exist only as
    OpenBackdoor folders: poisoning clean data with them is refused
    (:func:`load_experiment`). ``options`` (the ``[attack.options]`` table) are
    the attack's own settings, passed to its constructor: ``triggers`` and
    ``insertions`` for ``badnets``, ``sentence`` for ``addsent``, the fields
    of your class for yours. ``clean_label`` stays a key of ``[attack]``.

    Everything is checked when the config is built, before any data loads:
    an unknown name names ``attack.name``; an unknown option or a bad value
    names ``attack.options.<key>`` as written, what was expected and what came.

    Example::

        [attack]
        name = "badnets"
        rate = 0.1
        [attack.options]
        triggers = ["cf", "mn"]
        insertions = 2
    """

    name: str = "none"  # "none" (an OpenBackdoor folder) or a registered attack: "badnets", "addsent", your own
    rate: float = 0.1  # share of training examples poisoned
    clean_label: bool | None = None  # None: the attack's default (BadNets clean, AddSent dirty)
    seed: int = 0  # seed of the poisoning
    options: dict = field(default_factory=dict)  # the attack's own settings, e.g. {insertions = 2} (badnets: triggers, insertions; addsent: sentence)

    def __post_init__(self) -> None:
        if not (isinstance(self.rate, (int, float)) and 0.0 <= self.rate <= 1.0):
            raise ValueError(f"Expected `attack.rate` in [0, 1] but got {self.rate!r}.")
        if self.clean_label is not None and not isinstance(self.clean_label, bool):
            raise ValueError(
                f"Expected `attack.clean_label` to be true, false or absent (the attack's "
                f"default) but got {self.clean_label!r}."
            )
        if not isinstance(self.options, Mapping):
            raise ValueError(
                f"Expected `attack.options` to be a table of the attack's settings (e.g. "
                f"{{insertions = 2}}) but got {self.options!r}."
            )
        if self.name == "none":
            if self.options:
                raise ValueError(
                    f"Expected no `attack.options` with `attack.name` = 'none' (no attack: the "
                    f"data is already poisoned) but got {dict(self.options)!r}."
                )
            return
        if not isinstance(self.name, str) or (self.name.lower() not in ATTACKS and not IMPORT_PATH.match(self.name)):
            raise ValueError(
                f"Expected `attack.name` to be 'none' (an OpenBackdoor folder) or a registered "
                f"attack {sorted(ATTACKS)} but got {self.name!r}; register your own with "
                f"freqlens.data.register_attack before the config is built, or name it by import path "
                f"(`module:Class`)."
            )
        attack_class(self.name)  # an import path: imported and registered, or its error named
        if "clean_label" in self.options:
            raise ValueError(
                f"Expected `attack.clean_label` (a key of [attack]) rather than "
                f"`attack.options.clean_label` but got `attack.options.clean_label` = "
                f"{self.options['clean_label']!r}."
            )
        self.make_attack()  # every option checked now, naming `attack.options.<key>`

    def make_attack(self) -> Attack | None:
        """The attack these settings describe (None for ``name = "none"``).

        Raises:
            ValueError: naming ``attack.clean_label`` if the attack takes no
                ``clean_label``, or ``attack.options.<key>`` for an option the
                attack does not take or a bad value.
            TypeError: naming ``attack.options.<key>`` for a value of the wrong type.
        """
        if self.name == "none":
            return None
        cls = attack_class(self.name)
        options = dict(self.options)
        if self.clean_label is not None:
            known = cls.option_names()
            if known is not None and "clean_label" not in known:
                raise ValueError(
                    f"Expected no `attack.clean_label` for attack {cls.name!r} (it takes "
                    f"{list(known)}) but got {self.clean_label!r}."
                )
            options["clean_label"] = self.clean_label
        return cls.from_options(options, where="attack.options")


def data_kind(data) -> str:
    """What ``data.path`` is: "openbackdoor", "clean" or "hf" (``data.format``, or found out).

    With ``data.format = "auto"``: a folder with ``dev-poison.csv`` is an
    OpenBackdoor folder, one written by ``DatasetDict.save_to_disk`` a
    Hugging Face dataset, another folder a clean one, and a path that does not
    exist a Hugging Face dataset name when it looks like one (``name`` or
    ``owner/name``, not absolute, not starting with ``.`` or ``~``).

    Raises:
        FileNotFoundError: naming ``data.path`` as given and as resolved, when
            it is a path (or the format needs a folder) and there is no folder there.
    """
    path = data.path
    folder = Path(path).expanduser()
    kind = data.format
    if kind == "auto":
        if (folder / "dev-poison.csv").is_file():
            kind = "openbackdoor"
        elif is_saved_dataset(path):  # DatasetDict.save_to_disk
            kind = "hf"
        elif folder.is_dir():
            kind = "clean"
        elif not folder.exists() and HUB_NAME.fullmatch(path):  # never starts with "." or "/"
            kind = "hf"
        else:
            kind = "clean"
    if kind in ("openbackdoor", "clean") and not folder.is_dir():
        what = "a file, not a folder" if folder.exists() else "nothing there"
        raise FileNotFoundError(
            f"Expected `data.path` to be a dataset folder (an OpenBackdoor folder or one with "
            f"train/dev/test files) or a Hugging Face dataset name but {path!r} is {what} "
            f"(resolved: {folder.resolve()})."
        )
    return kind


def load_experiment(data, attack, *, seed: int = 0) -> PoisonedDataset:
    """The poisoned experiment that ``data`` and ``attack`` (config sections) describe.

    An OpenBackdoor folder is loaded as it is
    (:func:`~freqlens.data.loaders.load_openbackdoor`: ``data.train``; the
    triggered dev/test sentences whose source is of the target class are
    dropped, ``info["poison_sources"]``); a clean folder
    (:func:`~freqlens.data.loaders.load_clean`) or Hugging Face dataset
    (:func:`~freqlens.data.hf.load_hf_dataset`: ``data.config_name``) is read
    with ``data.splits`` (a split named for two roles is carved disjointly,
    seeded by ``seed``, ``data.holdout``) and poisoned with ``attack``
    (:meth:`AttackConfig.make_attack`; an attack without a generator,
    ``stylebkd`` or ``synbkd``, is refused before any data loads). Then
    every split is capped (``data.max_train``, ``data.max_eval``).

    Args:
        data: the ``[data]`` section (:class:`DataConfig`).
        attack: the ``[attack]`` section (:class:`AttackConfig`).
        seed: the seed of the carving and the caps (``train.seed`` in ``freqlens run``).

    Returns:
        The :class:`PoisonedDataset`; no evaluation split shares an example
        with the training split, and no test split with a dev split.

    Raises:
        FileNotFoundError: if ``data.path`` names no folder (and no dataset
            name), or a file is missing.
        ValueError: for settings that do not fit the data (``attack.name``,
            ``data.splits``, ``data.config_name``), hidden labels, or a
            malformed file.
    """
    from freqlens.data import hf, loaders

    if not data.path:
        raise ValueError("Expected `data.path` (a dataset folder or name) but got an empty string.")
    kind = data_kind(data)
    text_column = data.text_column or None
    if kind == "openbackdoor":
        unused = [f"data.{key}" for key in ("splits", "config_name") if getattr(data, key)]
        if unused:
            raise ValueError(
                f"Expected no {' or '.join(f'`{u}`' for u in unused)} for the OpenBackdoor folder "
                f"{data.path} (its files are fixed; the training file is `data.train`) but got "
                f"{', '.join(f'{u} = {getattr(data, u[5:])!r}' for u in unused)}."
            )
        if attack.name != "none":
            raise ValueError(
                f"Expected `attack.name` = 'none' for the pre-poisoned folder {data.path} but got "
                f"{attack.name!r}: poison a clean dataset instead (data.format = 'clean')."
            )
    elif attack.name == "none":
        folder = Path(data.path).expanduser()
        read_as = "" if folder.exists() else (
            f" (`data.path` is read as a Hugging Face dataset name: there is no folder "
            f"{folder.resolve()})")
        raise ValueError(
            f"Expected `attack.name` (e.g. 'badnets' or 'addsent') to poison the clean dataset "
            f"{data.path}{read_as} but got 'none'."
        )
    else:
        generator = attack.make_attack()
        if not generator.generates:
            raise ValueError(
                f"Expected `attack.name` to be an attack that can poison the clean dataset "
                f"{data.path} (one with a generator, e.g. 'badnets' or 'addsent') but "
                f"{attack.name!r} has none in freqlens: its poisoned sentences exist only as "
                f"OpenBackdoor folders; set `data.path` to such a folder (e.g. sst-2/{attack.name}) "
                f"and `attack.name` = 'none'."
            )
    if kind == "clean" and data.config_name:
        raise ValueError(
            f"Expected no `data.config_name` for the folder of files {data.path} (a configuration "
            f"names a Hugging Face dataset's variant) but got {data.config_name!r}."
        )
    if kind == "openbackdoor":
        dataset = loaders.load_openbackdoor(data.path, train=data.train,
                                            target_label=data.target_label,
                                            num_classes=data.num_classes)
    else:
        options = {"label_column": data.label_column, "num_classes": data.num_classes,
                   "splits": dict(data.splits), "seed": seed, "holdout": data.holdout}
        if kind == "clean":
            clean = loaders.load_clean(data.path, text_column=text_column, **options)
        else:
            clean = _load_hub(hf, data, text_column or "sentence", options)
        dataset = poison(clean, generator, rate=attack.rate, target_label=data.target_label,
                         seed=attack.seed)
    return dataset.capped(max_train=data.max_train, max_eval=data.max_eval, seed=seed)


def _load_hub(hf, data, text_column: str, options: dict):
    """:func:`~freqlens.data.hf.load_hf_dataset` by name; a dataset that cannot be found is
    reported as a ``data.path`` that names neither a folder nor a loadable dataset."""
    try:
        return hf.load_hf_dataset(data.path, text_column=text_column,
                                  config=data.config_name or None, **options)
    except (FileNotFoundError, ConnectionError) as error:
        raise FileNotFoundError(
            f"Expected `data.path` to be a dataset folder or a Hugging Face dataset name but there "
            f"is no folder {Path(data.path).expanduser().resolve()} and `datasets` could not load "
            f"{data.path!r}"
            + (f" (`data.config_name` = {data.config_name!r})" if data.config_name else "")
            + f": {error}"
        ) from error
