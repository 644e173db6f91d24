"""Read labelled text from files and OpenBackdoor folders.

- :func:`read_table`: one ``.csv``, ``.tsv`` or ``.jsonl`` file -> :class:`Split`.
- :func:`load_openbackdoor`: a poisoned dataset in the OpenBackdoor layout
  (``train-clean.csv``, ``mix/0.1/train-poison.csv``, ``dev-poison.csv``, ...)
  -> :class:`PoisonedDataset`, with control splits.
- :func:`load_clean`: a folder with ``train``, ``dev`` and ``test`` files ->
  :class:`CleanDataset` (to poison with :func:`freqlens.data.poison`).
- Hugging Face datasets: :func:`freqlens.data.hf.load_hf_dataset`.

CSV and TSV files are read as Python's :mod:`csv` and pandas read them: fields
may be quoted with ``"`` (RFC 4180; pandas' ``to_csv`` with ``sep="\\t"`` quotes
TSV fields the same way), inner quotes doubled. JSONL holds one JSON object per
line. A malformed file (an unbalanced quote, a wrong field count, a bad JSON
line) is a ValueError naming the file and the line. Every file needs a header
row (for JSONL: the keys of each object).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from freqlens._checks import check_label, check_positive_int
from freqlens.data.attacks import ATTACKS, AddSent, BadNets, make_attack, remove_trigger
from freqlens.data.splits import CleanDataset, PoisonedDataset, Split, carve

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
    """The header and rows of a CSV or TSV file, read by Python's :mod:`csv` as RFC 4180 and
    pandas (``to_csv``/``read_csv``) write and read them: a field may be quoted with ``"``
    (then it may hold the delimiter, line breaks and doubled ``""`` quotes); a quote inside an
    unquoted field is a plain character. Blank lines are skipped. Reading is strict: an
    unbalanced quote, text after a closing quote or a row with another field count than
    the header is a ValueError naming the file and the line the record starts on."""
    kind = "CSV" if delimiter == "," else "TSV"
    header: list[str] | None = None
    records: list[Record] = []
    start = 1  # the line the record being read starts on
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file, delimiter=delimiter, quotechar='"', doublequote=True,
                            quoting=csv.QUOTE_MINIMAL, strict=True)
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row:
                    continue
                if header is None:
                    header = row
                elif len(row) != len(header):
                    raise ValueError(
                        f"Expected {len(header)} fields on line {line} of {path}, as in "
                        f"its header {header}, but got {len(row)}."
                    )
                else:
                    records.append((line, dict(zip(header, row))))
        except csv.Error as error:
            raise ValueError(
                f"Expected valid {kind} in {path} but the record starting on line {start} is "
                f"malformed: {error} (a field that starts with a quote must end with one, inner "
                f"quotes doubled, as RFC 4180 and pandas write them)."
            ) from error
    if header is None:
        raise ValueError(f"Expected a header row in {path} but the file is empty.")
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
        A :class:`Split` (``true_labels`` equal to ``labels``; ``ids`` the
        file and the line each record starts on).

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
        if column is not None and header.count(column) > 1:
            raise ValueError(
                f"Expected one column {column!r} in {path} but its header has it "
                f"{header.count(column)} times: {header}."
            )
    columns = (text_column, label_column, poison_column)
    rows = [_parse_record(record, line, path, columns, num_classes) for line, record in records]
    texts, labels, flags = zip(*rows)
    where = path.resolve()
    return Split(list(texts), np.array(labels, np.int64), flags if poison_column else None,
                 ids=[f"{where}:{line}" for line, _ in records])


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


PAIRING_AGREEMENT = 0.8  # share of rows closer to their paired source than to the next one


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.lower()))


def _pairing_agreement(texts: Sequence[str], sources: Sequence[str]) -> float:
    """Share of rows whose text shares more words (Jaccard) with its paired source than with
    the next row's source: about 0.98 for OpenBackdoor's SST-2 paraphrases, about 0.45 for
    a wrong pairing."""
    words = [_words(t) for t in texts]
    paired = [_words(t) for t in sources]

    def similarity(a: frozenset, b: frozenset) -> float:
        return len(a & b) / max(1, len(a | b))

    n = len(words)
    closer = sum(similarity(words[i], paired[i]) > similarity(words[i], paired[(i + 1) % n])
                 for i in range(n))
    return closer / n


def recover_sources(poisoned: Split, clean: Split, trigger, *, target: int, poison_file: Path,
                    clean_file: Path, attack: str) -> tuple[np.ndarray, str]:
    """The row of ``clean`` each triggered sentence of ``poisoned`` was made from.

    Tried in order:

    1. with a removable trigger (BadNets, AddSent): the sentence without its
       trigger is a sentence of ``clean``, all of whose copies there carry
       one label;
    2. OpenBackdoor's layout, the only way to pair a paraphrase (StyleBkd,
       SynBkd) with its source: row ``k`` of ``poisoned`` was made from row
       ``k`` of the non-target rows of ``clean`` (or of all its rows), the
       counts agree and at least 80% of rows share more words with their
       paired source than with the next row's (:data:`PAIRING_AGREEMENT`).

    Returns:
        The positions in ``clean`` (one per poisoned row) and how they were found.

    Raises:
        ValueError: naming ``poison_file`` when neither way recovers every source.
    """
    n = len(poisoned)
    unmatched: list[int] = []
    if trigger is not None:
        rows: dict[str, list[int]] = {}
        for i, text in enumerate(clean.texts):
            rows.setdefault(text, []).append(i)
        positions = []
        for k, text in enumerate(poisoned.texts):
            found = rows.get(remove_trigger(trigger, text), [])
            if not found or len({int(clean.labels[i]) for i in found}) > 1:
                unmatched.append(k)
            else:
                positions.append(found[0])
        if not unmatched:
            return np.array(positions, np.int64), (
                f"matched in {clean_file.name} after removing the {attack} trigger")
    tried = []
    for what, candidates in (("non-target rows", np.flatnonzero(clean.labels != target)),
                             ("rows", np.arange(len(clean)))):
        if len(candidates) != n:
            tried.append(f"its {len(candidates)} {what}")
            continue
        paired = [clean.texts[i] for i in candidates]
        agreement = _pairing_agreement(poisoned.texts, paired) if n > 1 else 0.0
        if agreement >= PAIRING_AGREEMENT:
            return candidates.astype(np.int64), (
                f"paired row by row with the {what} of {clean_file.name} ({agreement:.0%} of rows "
                f"share more words with their pair than with the next row's)")
        tried.append(f"its {len(candidates)} {what} (only {agreement:.0%} of rows share more "
                     f"words with their pair than with the next row's; at least "
                     f"{PAIRING_AGREEMENT:.0%} needed)")
    matched = ("" if trigger is None else
               f"{len(unmatched)} of them are not (or not unambiguously) a sentence of "
               f"{clean_file.name} once the {attack} trigger is removed (e.g. data row {unmatched[0] + 1}: "
               f"{poisoned.texts[unmatched[0]]!r}), and ")
    raise ValueError(
        f"Expected to find the source (the clean sentence and its true label) of each of the {n} "
        f"triggered sentences in {poison_file}, to measure the attack success rate over non-target "
        f"sources only, but {matched}they do not pair row by row with {' or '.join(tried)} of "
        f"{clean_file.name}. Put the sentences they were made from into {clean_file.name}, in the "
        f"same order (OpenBackdoor's layout), or name the attack (a folder named badnets or "
        f"addsent, or `attack`) so its trigger can be removed."
    )


def _sourced_poison(poisoned: Split, clean: Split, trigger, *, target: int, poison_file: Path,
                    clean_file: Path, attack: str) -> tuple[Split, Split, dict]:
    """The poisoned split with its target-class sources dropped, the control (the kept
    sources, clean, with their true labels) and a note for ``info["poison_sources"]``."""
    positions, how = recover_sources(poisoned, clean, trigger, target=target,
                                     poison_file=poison_file, clean_file=clean_file, attack=attack)
    true = clean.labels[positions]
    keep = np.flatnonzero(true != target)
    kept = poisoned.subset(keep)
    kept.true_labels = true[keep]
    note = {"file": str(poison_file), "rows": len(poisoned), "kept": int(keep.size),
            "dropped_target_source": int(len(poisoned) - keep.size), "sources": how}
    return kept, clean.subset(positions[keep]), note


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
    return Split(train.texts, train.labels, train.poison, true_labels, train.ids), note


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

    Sources: the attack success rate counts only triggered sentences whose
    source (the clean sentence each was made from) is not of the target
    class, so each dev/test-poison sentence's source is found in
    dev-clean/test-clean (:func:`recover_sources`: by removing the BadNets or
    AddSent trigger, or, for paraphrases (stylebkd, synbkd, an unknown folder
    name), by OpenBackdoor's row-by-row pairing with the clean file, checked
    on the words they share). Triggered sentences whose source is of the
    target class (a file made by another tool may hold them) are dropped;
    ``info["poison_sources"]`` gives per split the rows read, kept and
    dropped (``dropped_target_source``) and how the sources were found. A file
    whose sources cannot be found is refused. ``true_labels`` of the poison
    splits are the sources' labels.

    Control splits: the kept sources themselves, clean, with their true
    labels: for BadNets and AddSent the poisoned sentences with the trigger
    removed (``info["control"]`` = "trigger removed"); for paraphrases the
    paired non-target clean examples ("non-target clean examples").

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
            the target, a poisoned sentence whose source cannot be found, a
            poison file with no non-target source, or an unknown ``attack`` name.
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
    sources = {}
    for part in ("dev", "test"):
        poison_file = files[f"{part}_poison"]
        _check_all_target(splits[f"{part}_poison"], poison_file, target)
        poisoned, control, sources[f"{part}_poison"] = _sourced_poison(
            splits[f"{part}_poison"], splits[f"{part}_clean"], trigger, target=target,
            poison_file=poison_file, clean_file=files[f"{part}_clean"], attack=attack_name)
        if not len(poisoned):
            raise ValueError(
                f"Expected triggered sentences with a non-target source in {poison_file} (the "
                f"attack success rate is measured on them) but all {len(splits[f'{part}_poison'])} "
                f"were made from `target_label` {target} sentences."
            )
        splits[f"{part}_poison"], splits[f"{part}_control"] = poisoned, control
    splits["train"], train_note = _recover_true_labels(
        splits["train"], root, files["train"], trigger
    )
    exact = all(note["sources"].startswith("matched") for note in sources.values())
    control = "trigger removed" if exact else "non-target clean examples"
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
            "poison_sources": sources,
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


ROLES = ("train", "dev", "test")


def split_names(splits: Any, defaults: Sequence[str]) -> dict[str, str]:
    """The split (or file) name of each role "train", "dev", "test".

    Args:
        splits: three names in that order, or a mapping from some of the roles
            to names (the others keep ``defaults``), as ``data.splits`` in a config.
        defaults: the three default names.

    Raises:
        ValueError: for anything else (another count, an unknown role, a name
            that is not a non-empty string).
    """
    if isinstance(splits, Mapping):
        unknown = sorted(set(splits) - set(ROLES))
        names = {**dict(zip(ROLES, defaults)), **dict(splits)}
    elif isinstance(splits, str) or not isinstance(splits, Sequence) or len(splits) != 3:
        unknown, names = ["?"], {}
    else:
        unknown, names = [], dict(zip(ROLES, splits))
    if unknown or not all(isinstance(v, str) and v for v in names.values()):
        raise ValueError(
            f"Expected `splits` to be three split names (train, dev, test) or a table such as "
            f"{{test = \"validation\"}} with keys among {list(ROLES)} but got {splits!r}."
        )
    return names


def check_labelled(split: Split, role: str, where: str, num_classes: int | None) -> None:
    """Refuse hidden labels (any label < 0, as in GLUE's test splits), naming the role and the
    setting to change, and labels outside [0, num_classes)."""
    hidden = np.flatnonzero(split.labels < 0)
    if hidden.size:
        raise ValueError(
            f"Expected labels >= 0 in {where} (the {role} split) but got "
            f"{int(split.labels[hidden[0]])} for {hidden.size} of its {len(split)} examples: its "
            f"labels are hidden (as in GLUE's test splits). Name a labelled split for {role}: "
            f"`data.splits.{role}` in a config (e.g. data.splits = {{{role} = \"validation\"}}), "
            f"`splits` in Python; a split named for two roles is carved into disjoint parts."
        )
    if num_classes is not None:
        outside = np.flatnonzero(split.labels >= num_classes)
        if outside.size:
            row = outside[0]
            at = split.ids[row] if split.ids is not None else f"row {row}"
            raise ValueError(
                f"Expected labels in [0, {num_classes}) in {where} (`num_classes`={num_classes}) "
                f"but got {int(split.labels[row])} at {at}."
            )


def load_clean(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str = "label",
    num_classes: int | None = None,
    splits: Sequence[str] | Mapping[str, str] = ("train", "dev", "test"),
    seed: int = 0,
    holdout: float = 0.1,
) -> CleanDataset:
    """Load a clean dataset from a folder with one file per split.

    Each split is a file ``<name>.csv``, ``<name>.tsv`` or ``<name>.jsonl``,
    e.g. ``sst-2/raw/train.tsv`` with columns ``sentence`` and ``label``.
    A file named for two roles (e.g. ``splits={"test": "dev"}``) is carved
    into disjoint parts (:func:`freqlens.data.splits.carve`: dev and test
    halves, or ``holdout`` of train for each evaluation role), so no example
    is both trained on (or selected by) and scored; ``info["splits"]`` says
    where each split came from.

    Args:
        path: the folder.
        text_column: the column of the texts; None takes the first of
            ("text", "sentence") in each file's header.
        label_column: the column of the integer labels.
        num_classes: the number of classes; None infers max label + 1 (at least 2).
        splits: the file names (without suffix) of the train, dev and test
            splits, or a mapping from some of "train", "dev", "test" to names.
        seed: the seed of the carving.
        holdout: the share of the training file an evaluation role named for
            it takes, in (0, 0.5).

    Returns:
        The :class:`CleanDataset`, named after the folder and its parent (e.g. "sst-2/raw").

    Raises:
        FileNotFoundError: if the folder or a split file is missing.
        ValueError: if a split has two files (e.g. train.csv and train.tsv), a
            file is malformed, a label is negative (hidden test labels: the
            error names the role and ``data.splits``) or outside the classes,
            or a shared file is too small to carve.
    """
    root = _directory(path)
    names = split_names(splits, ROLES)
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    parts, files, read = {}, {}, {}
    for role, stem in names.items():
        file = files[role] = _split_file(root, stem)
        if file not in read:
            read[file] = read_table(file, text_column=text_column, label_column=label_column)
        check_labelled(read[file], role, str(file), num_classes)
        parts[role] = read[file]
    parts, notes = carve(parts, {role: file.resolve() for role, file in files.items()},
                         seed=seed, holdout=holdout, names={r: str(f) for r, f in files.items()})
    return CleanDataset(
        **parts,
        num_classes=num_classes or _infer_num_classes(list(parts.values())),
        name=f"{root.parent.name}/{root.name}",
        info={"splits": {role: notes.get(role, str(files[role])) for role in ROLES}},
    )
