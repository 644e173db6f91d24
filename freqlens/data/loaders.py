"""Read labelled text from files and OpenBackdoor folders.

- :func:`read_table`: one ``.csv``, ``.tsv`` or ``.jsonl`` file -> :class:`Split`.
- :func:`load_openbackdoor`: a poisoned dataset in the OpenBackdoor layout
  (``train-clean.csv``, ``mix/0.1/train-poison.csv``, ``dev-poison.csv``, ...)
  -> :class:`PoisonedDataset`, with control splits.
- :func:`load_clean`: a folder with ``train``, ``dev`` and ``test`` files ->
  :class:`CleanDataset` (to poison with :func:`freqlens.data.poison`).
- Hugging Face datasets: :func:`freqlens.data.hf.load_hf_dataset`.

CSV files follow the usual quoting rules; TSV files are read as plain
tab-separated text without quote characters (as GLUE's files are). Every file
needs a header row (for JSONL: the keys of each object).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from freqlens._checks import check_label, check_positive_int
from freqlens.data.attacks import ATTACKS, AddSent, BadNets, make_attack, remove_trigger
from freqlens.data.splits import CleanDataset, PoisonedDataset, Split

FORMATS = ("csv", "tsv", "jsonl")
TEXT_COLUMNS = ("text", "sentence")  # tried in this order when text_column is None
OPENBACKDOOR_COLUMNS = {"text_column": "0", "label_column": "1", "poison_column": "2"}
TRIGGERLESS_ATTACKS = ("stylebkd", "synbkd")  # no trigger to remove: controls are clean examples

Record = tuple[int, Mapping[str, Any]]  # (line number, column -> value)


def _format_of(path: Path, format: str | None) -> str:
    if format is None:
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in FORMATS:
            raise ValueError(
                f"Expected {path} to end in .csv, .tsv or .jsonl, or `format` to be one of "
                f"{FORMATS}, but the suffix is {path.suffix!r} and `format` is None."
            )
        return suffix
    if format not in FORMATS:
        raise ValueError(f"Expected `format` to be one of {FORMATS} or None but got {format!r}.")
    return format


def _read_delimited(path: Path, delimiter: str) -> tuple[list[str], list[Record]]:
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file, delimiter=delimiter, quoting=quoting)
        try:
            header = next((row for row in reader if row), None)
            if header is None:
                raise ValueError(f"Expected a header row in {path} but the file is empty.")
            records = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise ValueError(
                        f"Expected {len(header)} fields on line {reader.line_num} of {path}, as in "
                        f"its header {header}, but got {len(row)}."
                    )
                records.append((reader.line_num, dict(zip(header, row))))
        except csv.Error as error:
            raise ValueError(
                f"Expected valid CSV on line {reader.line_num} of {path} but got: {error}."
            ) from error
    return header, records


def _read_jsonl(path: Path) -> tuple[list[str], list[Record]]:
    records = []
    with path.open(encoding="utf-8-sig") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"Expected a JSON object on line {number} of {path} but it is not valid JSON "
                    f"({error.msg} at column {error.colno})."
                ) from error
            if not isinstance(row, dict):
                raise TypeError(
                    f"Expected a JSON object on line {number} of {path} but got a "
                    f"{type(row).__name__}."
                )
            records.append((number, row))
    if not records:
        raise ValueError(f"Expected at least one JSON object in {path} but the file is empty.")
    return list(records[0][1]), records


def _read_records(path: Path, fmt: str) -> tuple[list[str], list[Record]]:
    try:
        if fmt == "jsonl":
            return _read_jsonl(path)
        return _read_delimited(path, "," if fmt == "csv" else "\t")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Expected UTF-8 text in {path} but could not decode it ({error})."
        ) from error


def _parse_int(value: Any, where: str, num_classes: int | None = None) -> int:
    """An integer label from ``value`` ("1", "1.0", 1 or 1.0), checked against ``num_classes``."""
    number: float | None = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, (str, float, np.floating)):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not float(number).is_integer():
        raise ValueError(f"Expected an integer label in {where} but got {value!r}.")
    label = int(number)
    if num_classes is not None and not 0 <= label < num_classes:
        raise ValueError(
            f"Expected a label in [0, {num_classes}) in {where} (`num_classes`={num_classes}) "
            f"but got {value!r}."
        )
    return label


def _parse_flag(value: Any, where: str) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, bool):
        return value
    try:
        return bool(_parse_int(value, where, num_classes=2))
    except ValueError:
        raise ValueError(f"Expected a poison flag (0 or 1) in {where} but got {value!r}.") from None


def _pick_text_column(header: list[str], text_column: str | None, path: Path) -> str:
    if text_column is not None:
        return text_column
    for name in TEXT_COLUMNS:
        if name in header:
            return name
    raise ValueError(
        f"Expected one of the columns {list(TEXT_COLUMNS)} in {path} (`text_column` is None) but "
        f"its header has {header}."
    )


def _text(record: Mapping[str, Any], column: str, where: str) -> str:
    value = record[column]
    if not isinstance(value, str):
        raise TypeError(f"Expected a string in {where} but got {type(value).__name__} {value!r}.")
    return value


def _parse_record(
    record: Mapping[str, Any],
    line: int,
    path: Path,
    columns: tuple[str, str, str | None],
    num_classes: int | None,
) -> tuple[str, int, bool]:
    """The (text, label, poison flag) of one row; the flag is False without a poison column."""
    missing = [c for c in columns if c is not None and c not in record]
    if missing:
        raise ValueError(
            f"Expected column {missing[0]!r} on line {line} of {path} but it has {list(record)}."
        )
    text_column, label_column, poison_column = columns
    text = _text(record, text_column, f"column {text_column!r} of {path}, line {line}")
    where = f"column {label_column!r} of {path}, line {line}"
    label = _parse_int(record[label_column], where, num_classes)
    if poison_column is None:
        return text, label, False
    return (
        text,
        label,
        _parse_flag(record[poison_column], f"column {poison_column!r} of {path}, line {line}"),
    )


def read_table(
    path: str | Path,
    *,
    text_column: str | None = "text",
    label_column: str = "label",
    poison_column: str | None = None,
    num_classes: int | None = None,
    format: str | None = None,
) -> Split:
    """Read labelled texts from a ``.csv``, ``.tsv`` or ``.jsonl`` file.

    Args:
        path: the file; csv/tsv need a header row, jsonl one object per line.
        text_column: the column of the texts; None takes the first of
            ("text", "sentence") in the header.
        label_column: the column of the integer labels ("1" and "1.0" both read as 1).
        poison_column: a column of 0/1 poison flags, or None (all clean).
            OpenBackdoor files (header ``,0,1,2``) use ``text_column="0",
            label_column="1", poison_column="2"``.
        num_classes: if given, every label must lie in [0, num_classes).
        format: "csv", "tsv" or "jsonl"; None infers it from the suffix.

    Returns:
        A :class:`Split` (``true_labels`` equal to ``labels``).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: for an unknown format, an empty file, a header without
            rows, a missing column, a malformed row or JSON line, a label that
            is not an integer or outside the classes, or a bad poison flag.
        TypeError: if a JSONL line is not an object or a text is not a string.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise FileNotFoundError(f"Expected a data file at {path} but found {what} there.")
    fmt = _format_of(path, format)
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes")
    header, records = _read_records(path, fmt)
    if not records:
        raise ValueError(
            f"Expected at least one data row in {path} after its header {header} but found none."
        )
    text_column = _pick_text_column(header, text_column, path)
    for column in (text_column, label_column, poison_column):
        if column is not None and column not in header:
            raise ValueError(f"Expected column {column!r} in {path} but its header has {header}.")
    columns = (text_column, label_column, poison_column)
    rows = [_parse_record(record, line, path, columns, num_classes) for line, record in records]
    texts, labels, flags = zip(*rows)
    return Split(list(texts), np.array(labels, np.int64), flags if poison_column else None)


def _directory(path: str | Path, name: str = "path") -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected `{name}` to be a folder but {root} is not one.")
    return root


def _resolve_attack(attack: Any, root: Path) -> tuple[BadNets | AddSent | None, str]:
    """The attack whose trigger can be removed (or None), and the attack's name."""
    if attack is None:
        name = root.name.lower()
        return (make_attack(name) if name in ATTACKS else None), name
    if isinstance(attack, (BadNets, AddSent)):
        return attack, attack.name
    if isinstance(attack, str):
        name = attack.lower()
        if name in ATTACKS:
            return make_attack(name), name
        if name in TRIGGERLESS_ATTACKS:
            return None, name
    if hasattr(attack, "apply") and isinstance(getattr(attack, "name", None), str):
        return None, attack.name
    raise ValueError(
        f"Expected `attack` to be one of {sorted([*ATTACKS, *TRIGGERLESS_ATTACKS])}, an attack "
        f"object or None (detect it from the folder name) but got {attack!r}."
    )


def _check_all_target(split: Split, file: Path, target: int) -> None:
    other = np.flatnonzero(split.labels != target)
    if other.size:
        raise ValueError(
            f"Expected every label in {file} to be the `target_label` {target} (a poisoned "
            f"split) but {other.size} of {len(split)} are not (e.g. label "
            f"{split.labels[other[0]]} in data row {other[0] + 1})."
        )


def _controls(
    clean: Split, poisoned: Split, trigger, target: int, num_classes: int
) -> Split | None:
    """The control of ``poisoned``: its sentences untriggered, or clean non-target examples."""
    if trigger is None:
        return clean.subset(clean.labels != target)
    if num_classes != 2:
        return None
    texts = [remove_trigger(trigger, text) for text in poisoned.texts]
    return Split(texts, np.full(len(texts), 1 - target))


def _recover_true_labels(train: Split, root: Path, train_file: Path, trigger) -> tuple[Split, str]:
    """Fill the poisoned examples' ``true_labels`` from their clean sentence in train-clean.csv."""
    count = int(train.poison.sum())
    clean_file = root / "train-clean.csv"
    if count == 0:
        return train, "no poisoned examples"
    if trigger is None or not clean_file.is_file() or clean_file.resolve() == train_file.resolve():
        return train, "unknown for poisoned examples (set to their label)"
    clean = read_table(clean_file, **OPENBACKDOOR_COLUMNS)
    lookup = dict(zip(clean.texts, clean.labels.tolist()))
    true_labels, found = train.true_labels.copy(), 0
    for i in np.flatnonzero(train.poison):
        label = lookup.get(remove_trigger(trigger, train.texts[i]))
        if label is not None:
            true_labels[i], found = label, found + 1
    note = f"recovered for {found} of {count} poisoned examples from {clean_file.name}"
    return Split(train.texts, train.labels, train.poison, true_labels), note


def _openbackdoor_files(root: Path, train: str | Path) -> dict[str, Path]:
    """The five files of an OpenBackdoor folder; a clear error if the training file is missing."""
    files = {"train": root / train}
    if not files["train"].is_file():
        found = sorted(p.relative_to(root).as_posix() for p in root.rglob("train*") if p.is_file())
        raise FileNotFoundError(
            f"Expected the training file `train`={str(train)!r} in {root} but it is not there; "
            f"it holds {found}."
        )
    for part in ("dev", "test"):
        files[f"{part}_clean"] = root / f"{part}-clean.csv"
        files[f"{part}_poison"] = root / f"{part}-poison.csv"
    return files


def load_openbackdoor(
    path: str | Path,
    *,
    train: str | Path = "mix/0.1/train-poison.csv",
    attack: Any = None,
    target_label: int = 1,
    num_classes: int = 2,
) -> PoisonedDataset:
    """Load a poisoned dataset saved in the OpenBackdoor layout.

    The folder holds ``dev-clean.csv``, ``dev-poison.csv``, ``test-clean.csv``,
    ``test-poison.csv`` and training files such as ``train-clean.csv``,
    ``mix/0.1/train-poison.csv`` (dirty-label, rate 0.1) or
    ``clean/0.1/train-poison.csv`` (clean-label); each has the header ``,0,1,2``
    (row index, text, label, poison flag).

    Control splits: for BadNets and AddSent, the poisoned dev/test sentences
    with the trigger removed (true label ``1 - target_label``; binary tasks
    only, else None). For style or syntactic attacks (stylebkd, synbkd, or an
    unknown folder name) there is no trigger to remove: the controls are the
    non-target examples of dev-clean/test-clean, not derived from the
    poisoned sentences themselves (a paraphrase has no trigger to remove).
    In OpenBackdoor's SST-2 files the k-th non-target clean example happens
    to be the source of the k-th poisoned one, so they pair up row by row
    there. ``info["control"]`` says which kind of control was built.

    For BadNets/AddSent the true labels of poisoned training examples are
    looked up in ``train-clean.csv`` (``info["train_true_labels"]``); otherwise
    they are unknown and equal their label.

    Args:
        path: the folder, e.g. ``.../sst-2/addsent``.
        train: the training file, relative to ``path``.
        attack: "badnets", "addsent", "stylebkd", "synbkd", a BadNets/AddSent
            object (e.g. with other trigger tokens), or None to detect it from
            the folder name.
        target_label: the attack's target class.
        num_classes: the number of classes; every label must lie in [0, num_classes).

    Returns:
        The :class:`PoisonedDataset`, named e.g. "sst-2/addsent (mix/0.1/train-poison.csv)".

    Raises:
        FileNotFoundError: if the folder or one of its files is missing.
        ValueError: for a malformed file, a dev/test poison label other than
            the target, or an unknown ``attack`` name.
    """
    root = _directory(path)
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    target = check_label(target_label, "target_label", num_classes)
    trigger, attack_name = _resolve_attack(attack, root)
    files = _openbackdoor_files(root, train)
    splits = {
        key: read_table(file, **OPENBACKDOOR_COLUMNS, num_classes=num_classes)
        for key, file in files.items()
    }
    for part in ("dev", "test"):
        poisoned = splits[f"{part}_poison"]
        _check_all_target(poisoned, files[f"{part}_poison"], target)
        if num_classes == 2:
            poisoned.true_labels = np.full(len(poisoned), 1 - target)
        splits[f"{part}_control"] = _controls(
            splits[f"{part}_clean"], poisoned, trigger, target, num_classes
        )
    splits["train"], train_note = _recover_true_labels(
        splits["train"], root, files["train"], trigger
    )
    control = "trigger removed" if num_classes == 2 else "none"
    control = "non-target clean examples" if trigger is None else control
    return PoisonedDataset(
        **splits,
        target_label=target,
        num_classes=num_classes,
        name=f"{root.parent.name}/{root.name} ({Path(train).as_posix()})",
        info={
            "path": str(root),
            "files": {key: str(file) for key, file in files.items()},
            "attack": attack_name,
            "control": control,
            "train_true_labels": train_note,
        },
    )


def _split_file(root: Path, stem: str) -> Path:
    found = [root / f"{stem}.{fmt}" for fmt in FORMATS if (root / f"{stem}.{fmt}").is_file()]
    if not found:
        raise FileNotFoundError(
            f"Expected a file {stem}.csv, {stem}.tsv or {stem}.jsonl in {root} but it holds "
            f"{sorted(p.name for p in root.iterdir())[:20]}."
        )
    if len(found) > 1:
        raise ValueError(f"Expected one {stem} file in {root} but found {[p.name for p in found]}.")
    return found[0]


def _infer_num_classes(splits: Sequence[Split]) -> int:
    return max(2, max(int(split.labels.max()) + 1 for split in splits if len(split)))


def _check_splits_arg(splits: Any) -> tuple[str, str, str]:
    if isinstance(splits, str) or len(splits) != 3 or not all(isinstance(s, str) for s in splits):
        raise ValueError(
            f"Expected `splits` to be three split names (train, dev, test) but got {splits!r}."
        )
    return tuple(splits)


def load_clean(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str = "label",
    num_classes: int | None = None,
    splits: Sequence[str] = ("train", "dev", "test"),
) -> CleanDataset:
    """Load a clean dataset from a folder with one file per split.

    Each split is a file ``<name>.csv``, ``<name>.tsv`` or ``<name>.jsonl``,
    e.g. ``sst-2/raw/train.tsv`` with columns ``sentence`` and ``label``.

    Args:
        path: the folder.
        text_column: the column of the texts; None takes the first of
            ("text", "sentence") in each file's header.
        label_column: the column of the integer labels.
        num_classes: the number of classes; None infers max label + 1 (at least 2).
        splits: the file names (without suffix) of the train, dev and test splits.

    Returns:
        The :class:`CleanDataset`, named after the folder and its parent (e.g. "sst-2/raw").

    Raises:
        FileNotFoundError: if the folder or a split file is missing.
        ValueError: if a split has two files (e.g. train.csv and train.tsv), a
            file is malformed, or a label is negative (e.g. hidden test labels).
    """
    root = _directory(path)
    names = _check_splits_arg(splits)
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    parts = []
    for stem in names:
        file = _split_file(root, stem)
        split = read_table(
            file, text_column=text_column, label_column=label_column, num_classes=num_classes
        )
        if split.labels.min() < 0:
            raise ValueError(
                f"Expected labels >= 0 in {file} but got {int(split.labels.min())} (unlabelled "
                f"examples?); pass other file names as `splits`, e.g. ('train', 'dev', 'dev')."
            )
        parts.append(split)
    return CleanDataset(
        *parts,
        num_classes=num_classes or _infer_num_classes(parts),
        name=f"{root.parent.name}/{root.name}",
    )
