"""Clean datasets from Hugging Face ``datasets``: by name (with network), a local
folder of files, or an in-memory ``DatasetDict``-like mapping of splits.

Install the extra to load by name: ``pip install "freqlens[hf]"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from freqlens._checks import check_positive_int
from freqlens.data.loaders import _infer_num_classes, _parse_int, check_labelled, split_names
from freqlens.data.splits import CleanDataset, Split, carve, check_text_overlap


def _import_datasets():
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            "Loading a dataset by name needs the Hugging Face `datasets` package: "
            "pip install datasets (or pip install 'freqlens[hf]'); or pass a mapping of splits "
            "to load_hf_dataset instead of a name."
        ) from error
    return datasets


def _hf_columns(data: Any, columns: tuple[str, str], where: str) -> tuple[list, list]:
    """The texts and labels of one split: a Dataset, a dict of columns or a sequence of rows."""
    if hasattr(data, "column_names") or isinstance(data, Mapping):
        present = list(data.column_names) if hasattr(data, "column_names") else list(data)
        if not all(c in present for c in columns):
            raise ValueError(f"Expected columns {list(columns)} in {where} but it has {present}.")
        texts, labels = list(data[columns[0]]), list(data[columns[1]])
        if len(texts) != len(labels):
            raise ValueError(
                f"Expected as many labels as texts in {where} but got {len(labels)} labels and "
                f"{len(texts)} texts."
            )
        return texts, labels
    texts, labels = [], []
    for i, row in enumerate(data):
        if not isinstance(row, Mapping) or not all(c in row for c in columns):
            keys = list(row) if isinstance(row, Mapping) else type(row).__name__
            raise ValueError(
                f"Expected row {i} of {where} to have columns {list(columns)} but it has {keys}."
            )
        texts.append(row[columns[0]])
        labels.append(row[columns[1]])
    return texts, labels


def is_saved_dataset(path: str) -> bool:
    """Whether ``path`` is a folder written by ``DatasetDict.save_to_disk``."""
    return (Path(path).expanduser() / "dataset_dict.json").is_file()


def _source(data: Any) -> str:
    """The identity of a split's examples: a Dataset's fingerprint, else the object's id
    (the same object under two split names is the same examples)."""
    fingerprint = getattr(data, "_fingerprint", None)
    return f"fingerprint {fingerprint}" if isinstance(fingerprint, str) else f"object {id(data):#x}"


def _cache_files(data: Any) -> str | list[str] | None:
    """The absolute path of the local file a Dataset's rows are read from (a list when they are
    in several), or None for one held in memory."""
    files = [str(Path(f["filename"]).resolve()) for f in getattr(data, "cache_files", None) or []
             if isinstance(f, Mapping) and f.get("filename")]
    return None if not files else files[0] if len(files) == 1 else files


def _hf_split(dataset: Any, split: str, columns: tuple[str, str]
              ) -> tuple[Split, str, str | list[str] | None]:
    """One split as a :class:`Split` (ids ``"<source>:<row>"``), the identity of its source and
    the local file(s) it was read from (:func:`_cache_files`)."""
    try:
        data = dataset[split]
    except (KeyError, IndexError, TypeError, ValueError) as error:
        available = list(dataset.keys()) if hasattr(dataset, "keys") else type(dataset).__name__
        raise ValueError(
            f"Expected a split {split!r} in the dataset (see `splits`, `data.splits` in a config) "
            f"but it has {available}."
        ) from error
    where = f"split {split!r}"
    texts, raw = _hf_columns(data, columns, where)
    if not texts:
        raise ValueError(f"Expected at least one example in {where} but it is empty.")
    labels = [
        _parse_int(value, f"column {columns[1]!r} of {where}, row {i}")
        for i, value in enumerate(raw)
    ]
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"Expected a string in column {columns[0]!r} of {where}, row {i}, but got {text!r}."
            )
        if not text:
            raise ValueError(
                f"Expected a text in column {columns[0]!r} of {where}, row {i}, but it is empty: a "
                f"row without a sentence is malformed."
            )
    source = _source(data)
    split_data = Split(texts, labels, ids=[f"{source}:{i}" for i in range(len(texts))])
    return split_data, source, _cache_files(data)


def _hf_num_classes(dataset: Any, split: str, label_column: str) -> int | None:
    """The label feature's class count of a real Hugging Face dataset, if it has one."""
    try:
        feature = dataset[split].features[label_column]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    count = getattr(feature, "num_classes", None)
    return int(count) if isinstance(count, (int, np.integer)) and count >= 2 else None


def load_hf_dataset(
    name_or_dataset: Any,
    *,
    text_column: str = "sentence",
    label_column: str = "label",
    splits: Sequence[str] | Mapping[str, str] = ("train", "validation", "test"),
    config: str | None = None,
    num_classes: int | None = None,
    seed: int = 0,
    holdout: float = 0.1,
) -> CleanDataset:
    """Load a clean dataset from Hugging Face ``datasets`` or an in-memory mapping of splits.

    A name is loaded with ``datasets.load_dataset(name, config)`` (e.g.
    ``"glue"``, ``config="sst2"``), a folder written by
    ``DatasetDict.save_to_disk`` with ``datasets.load_from_disk``. GLUE hides
    its test labels (every label is -1): such a split is refused with an error naming its role; name a
    labelled split instead, e.g. ``splits={"test": "validation"}``. A split
    named for two roles (or the same object under two names) is carved into
    disjoint parts (:func:`freqlens.data.splits.carve`: dev and test halves,
    or ``holdout`` of train for each evaluation role, by ``seed``), so no
    example is both trained on (or selected by) and scored; ``info["splits"]``
    says where each split came from. An evaluation split whose texts are more
    than 5% those of train or dev (e.g. a test split rebuilt from validation)
    is refused (:func:`freqlens.data.splits.check_text_overlap`); the rows
    shared below that are counted in ``info["text_overlap"]``. For splits
    read from local files (``datasets``' Arrow files), ``info["files"]`` gives
    the absolute path of each role's file (a list if it has several).

    Args:
        name_or_dataset: a dataset name or local folder for
            ``datasets.load_dataset`` (e.g. "glue" with ``config="sst2"``, or
            "stanfordnlp/sst2"), or a ``DatasetDict``-like mapping whose splits
            are Datasets, dicts of columns or sequences of row dicts.
        text_column: the column of the texts.
        label_column: the column of the integer labels.
        splits: the split names to use as train, dev and test, or a mapping
            from some of "train", "dev", "test" to split names (the others
            keep the defaults "train", "validation", "test").
        config: the dataset configuration (``datasets``' ``name``), for a name.
        num_classes: the number of classes; None takes the label feature's
            class count, else max label + 1 (at least 2).
        seed: the seed of the carving.
        holdout: the share of the training split an evaluation role named for
            it takes, in (0, 0.5).

    Returns:
        The :class:`CleanDataset` (``ids`` name the split, its source and the row).

    Raises:
        ImportError: if a name is given and ``datasets`` is not installed.
        ValueError: if a split or column is missing, a label is not an integer,
            negative (hidden labels; the error names the role and ``data.splits``)
            or outside ``num_classes``, a shared split is too small to carve, or
            an evaluation split looks like a copy of train or dev (the error
            names ``data.splits.<role>``).
        TypeError: if a text is not a string.

    Example:
        >>> def rows(*texts):
        ...     return [{"sentence": text, "label": i % 2} for i, text in enumerate(texts)]
        >>> data = load_hf_dataset({"train": rows("good", "bad"), "validation": rows("fine", "dull"),
        ...                         "test": rows("great", "poor")})
        >>> len(data.train), data.num_classes
        (2, 2)
    """
    names = split_names(splits, ("train", "validation", "test"))
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    if isinstance(name_or_dataset, str) and is_saved_dataset(name_or_dataset):
        if config:
            raise ValueError(
                f"Expected no `config` (`data.config_name`) for the DatasetDict saved with "
                f"save_to_disk in {name_or_dataset} but got {config!r}."
            )
        dataset, name = _import_datasets().load_from_disk(name_or_dataset), name_or_dataset
    elif isinstance(name_or_dataset, str):
        dataset = _import_datasets().load_dataset(name_or_dataset, config)
        name = name_or_dataset + (f"/{config}" if config else "")
    else:
        dataset, name = name_or_dataset, f"in-memory {type(name_or_dataset).__name__}"
    num_classes = num_classes or _hf_num_classes(dataset, names["train"], label_column)
    parts, sources, files, read = {}, {}, {}, {}
    for role, split in names.items():
        if split not in read:  # a split named for two roles is read once (and carved below)
            read[split] = _hf_split(dataset, split, (text_column, label_column))
        parts[role], sources[role], files[role] = read[split]
        check_labelled(parts[role], role, f"split {split!r} of {name}", num_classes)
    parts, notes = carve(parts, sources, seed=seed, holdout=holdout,
                         names={role: f"split {split!r}" for role, split in names.items()})
    info: dict[str, Any] = {
        "splits": {role: notes.get(role, f"split {names[role]!r}") for role in names}}
    if any(files.values()):
        info["files"] = files
    result = CleanDataset(
        **parts, num_classes=num_classes or _infer_num_classes(list(parts.values())), name=name,
        info=info,
    )
    result.info["text_overlap"] = check_text_overlap(
        result, {role: f"`data.splits.{role}` = {split!r}" for role, split in names.items()})
    return result
