"""Clean datasets from Hugging Face ``datasets``: by name (with network), a local
folder of files, or an in-memory ``DatasetDict``-like mapping of splits.

Install the extra to load by name: ``pip install "freqlens[hf]"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from freqlens._checks import check_positive_int
from freqlens.data.loaders import _check_splits_arg, _infer_num_classes, _parse_int
from freqlens.data.splits import CleanDataset, Split


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


def _hf_split(dataset: Any, split: str, columns: tuple[str, str], num_classes: int | None) -> Split:
    try:
        data = dataset[split]
    except (KeyError, IndexError, TypeError) as error:
        available = list(dataset.keys()) if hasattr(dataset, "keys") else type(dataset).__name__
        raise ValueError(
            f"Expected a split {split!r} in the dataset (see `splits`) but it has {available}."
        ) from error
    where = f"split {split!r}"
    texts, raw = _hf_columns(data, columns, where)
    if not texts:
        raise ValueError(f"Expected at least one example in {where} but it is empty.")
    labels = [
        _parse_int(value, f"column {columns[1]!r} of {where}, row {i}")
        for i, value in enumerate(raw)
    ]
    if min(labels) < 0:
        raise ValueError(
            f"Expected labels >= 0 in {where} but got {min(labels)}: its labels are hidden (as in "
            f"GLUE's test splits); pass `splits` naming labelled splits, e.g. "
            f"('train', 'validation', 'validation')."
        )
    for i, (text, label) in enumerate(zip(texts, labels)):
        if not isinstance(text, str):
            raise TypeError(
                f"Expected a string in column {columns[0]!r} of {where}, row {i}, but got {text!r}."
            )
        if num_classes is not None and label >= num_classes:
            raise ValueError(
                f"Expected labels in [0, {num_classes}) in {where} but got {label} in row {i}."
            )
    return Split(texts, labels)


def _hf_num_classes(dataset: Any, split: str, label_column: str) -> int | None:
    """The label feature's class count of a real Hugging Face dataset, if it has one."""
    try:
        feature = dataset[split].features[label_column]
    except (AttributeError, KeyError, TypeError):
        return None
    count = getattr(feature, "num_classes", None)
    return int(count) if isinstance(count, (int, np.integer)) and count >= 2 else None


def load_hf_dataset(
    name_or_dataset: Any,
    *,
    text_column: str = "sentence",
    label_column: str = "label",
    splits: Sequence[str] = ("train", "validation", "test"),
    config: str | None = None,
    num_classes: int | None = None,
) -> CleanDataset:
    """Load a clean dataset from Hugging Face ``datasets`` or an in-memory mapping of splits.

    GLUE hides its test labels (every label is -1): for GLUE tasks pass
    labelled splits, e.g. ``splits=("train", "validation", "validation")`` or
    a ``train_test_split`` of your own.

    Args:
        name_or_dataset: a dataset name for ``datasets.load_dataset`` (e.g.
            "glue" with ``config="sst2"``, or "stanfordnlp/sst2"), or a
            ``DatasetDict``-like mapping whose splits are Datasets, dicts of
            columns or sequences of row dicts.
        text_column: the column of the texts.
        label_column: the column of the integer labels.
        splits: the split names to use as train, dev and test.
        config: the dataset configuration, for a name.
        num_classes: the number of classes; None takes the label feature's
            class count, else max label + 1 (at least 2).

    Returns:
        The :class:`CleanDataset`.

    Raises:
        ImportError: if a name is given and ``datasets`` is not installed.
        ValueError: if a split or column is missing, a label is not an integer,
            negative (hidden labels) or outside ``num_classes``.
        TypeError: if a text is not a string.

    Example:
        >>> rows = [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}]
        >>> data = load_hf_dataset({"train": rows, "validation": rows, "test": rows})
        >>> len(data.train), data.num_classes
        (2, 2)
    """
    names = _check_splits_arg(splits)
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    if isinstance(name_or_dataset, str):
        dataset = _import_datasets().load_dataset(name_or_dataset, config)
        name = name_or_dataset + (f"/{config}" if config else "")
    else:
        dataset, name = name_or_dataset, f"in-memory {type(name_or_dataset).__name__}"
    num_classes = num_classes or _hf_num_classes(dataset, names[0], label_column)
    parts = [_hf_split(dataset, split, (text_column, label_column), num_classes) for split in names]
    return CleanDataset(*parts, num_classes=num_classes or _infer_num_classes(parts), name=name)
