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
from freqlens.data.attacks import ATTACKS, Attack, make_attack, remove_trigger
from freqlens.data.splits import CleanDataset, PoisonedDataset, Split, carve, check_text_overlap

FORMATS = ("csv", "tsv", "jsonl")
TEXT_COLUMNS = ("text", "sentence")  # tried in this order when text_column is None
OPENBACKDOOR_COLUMNS = {"text_column": "0", "label_column": "1", "poison_column": "2"}

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


# a number as pandas' read_csv reads one: ASCII digits, an optional sign, decimal point and
# exponent, surrounding spaces; not Python's extras ("1_0", other scripts' digits, "inf", "nan")
NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*", re.ASCII)


def _parse_int(value: Any, where: str, num_classes: int | None = None) -> int:
    """An integer label from ``value``, checked against ``num_classes``.

    Accepted: an int, an integral float (1.0), or a string that pandas'
    ``read_csv`` reads as an integer or an integral float ("1", " +1 ",
    "1.0", "1e0"). Anything else ("1_0", "1.5", "nan", "", "0x1") is a
    ValueError naming ``where``.
    """
    number: float | None = None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        number = float(value)
    elif isinstance(value, str) and NUMBER.fullmatch(value):
        number = float(value)
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
    if not value:
        raise ValueError(
            f"Expected a text in {where} but the field is empty: a row without a sentence is "
            f"malformed (pandas reads it as a missing value)."
        )
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


def _resolve_attack(attack: Any, root: Path) -> tuple[Attack | None, str]:
    """The attack whose trigger can be removed (or None: ``removes_trigger`` False), and its name.

    ``attack`` is a registered name (:data:`~freqlens.data.attacks.ATTACKS`), an attack
    object, or None: the folder's name, when it is a registered attack's.
    """
    if attack is None:
        name = root.name.lower()
        if name not in ATTACKS:
            return None, name
        attack = make_attack(name)
    elif isinstance(attack, str) and attack.lower() in ATTACKS:
        attack = make_attack(attack)
    elif not isinstance(attack, Attack) and not (
            callable(getattr(attack, "apply", None))
            and isinstance(getattr(attack, "name", None), str)):
        raise ValueError(
            f"Expected `attack` to be one of {sorted(ATTACKS)} (the registered attacks), an attack "
            f"object or None (detect it from the folder name) but got {attack!r}."
        )
    return (attack if getattr(attack, "removes_trigger", False) else None), attack.name


def _check_all_target(split: Split, file: Path, target: int) -> None:
    other = np.flatnonzero(split.labels != target)
    if other.size:
        raise ValueError(
            f"Expected every label in {file} to be the `target_label` {target} (a poisoned "
            f"split) but {other.size} of {len(split)} are not (e.g. label "
            f"{split.labels[other[0]]} in data row {other[0] + 1})."
        )


NEAR_BEST = 0.05  # a row's pair is its source if it scores within this of the best clean row
MIN_SIMILARITY = 0.3  # an unpaired best match this similar (and no close rival) is the source
CLEAR_MARGIN = 0.2  # a target-class best match this far ahead of all non-target rows: its source
UNMATCHED_LIMIT = 0.2  # the largest share of rows without a clear source a file may have


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _similarity_rows(texts: Sequence[str], sources: Sequence[str], block: int = 512):
    """TF-IDF cosine similarity of each text to every source (bags of lower-cased words, the
    IDF taken over ``sources``), yielded in blocks: (first row, dense array of shape
    (rows in block, len(sources)))."""
    import scipy.sparse as sparse

    vocabulary: dict[str, int] = {}

    def counts(documents: Sequence[str], grow: bool):
        rows, columns = [], []
        for i, text in enumerate(documents):
            for word in set(_words(text)):
                if grow:
                    vocabulary.setdefault(word, len(vocabulary))
                if word in vocabulary:
                    rows.append(i)
                    columns.append(vocabulary[word])
        return rows, columns

    source_rows, source_columns = counts(sources, grow=True)
    text_rows, text_columns = counts(texts, grow=False)
    shape = len(vocabulary) or 1

    def matrix(rows, columns, n):
        return sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(n, shape))

    source_matrix = matrix(source_rows, source_columns, len(sources))
    frequency = np.asarray(source_matrix.sum(axis=0)).ravel()
    idf = sparse.diags(np.log((1 + len(sources)) / (1 + frequency)) + 1)

    def normalised(m):
        m = m @ idf
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sparse.diags(1.0 / norms) @ m

    source_matrix = normalised(source_matrix).T.tocsc()
    text_matrix = normalised(matrix(text_rows, text_columns, len(texts))).tocsr()
    for start in range(0, len(texts), block):
        yield start, (text_matrix[start:start + block] @ source_matrix).toarray()


def _match_sources(texts: Sequence[str], clean: Split, paired: np.ndarray | None,
                   target: int) -> np.ndarray:
    """Each text's source among ALL rows of ``clean`` (both classes), judged on TF-IDF word
    similarity (:func:`_similarity_rows`).

    A row's source is its pair (``paired[i]``, OpenBackdoor's row-by-row layout) when the pair
    scores within :data:`NEAR_BEST` of its best-matching clean row; else its best match, when
    that scores at least :data:`MIN_SIMILARITY` and every clean row within :data:`NEAR_BEST` of
    it has the same label, or when it is a target-class row at least :data:`CLEAR_MARGIN`
    ahead of every non-target row (a triggered target-class sentence). Otherwise the row has
    no source (-1).

    Returns:
        The source row in ``clean`` of each text (-1: none clear), shape ``(len(texts),)``.
    """
    positions = np.full(len(texts), -1, np.int64)
    labels = clean.labels
    for start, scores in _similarity_rows(texts, clean.texts):
        for offset, row in enumerate(scores):
            i = start + offset
            best = int(np.argmax(row))
            top = row[best]
            if top <= 0:
                continue
            if paired is not None and row[paired[i]] >= top - NEAR_BEST:
                positions[i] = paired[i]
                continue
            near = labels[row >= top - NEAR_BEST]
            if top >= MIN_SIMILARITY and np.all(near == labels[best]):
                positions[i] = best
            elif labels[best] == target:
                others = row[labels != target]
                if top - (others.max() if others.size else 0.0) >= CLEAR_MARGIN:
                    positions[i] = best
    return positions


def recover_sources(poisoned: Split, clean: Split, trigger, *, target: int, poison_file: Path,
                    clean_file: Path, attack: str) -> tuple[np.ndarray, str, bool]:
    """The row of ``clean`` each triggered sentence of ``poisoned`` was made from (-1: none found).

    Tried in order:

    1. with a removable trigger (BadNets, AddSent, any attack whose
       ``removes_trigger`` is True): the sentence without its
       trigger is a sentence of ``clean``, all of whose copies there carry
       one label;
    2. for paraphrases (StyleBkd, SynBkd) or where 1. fails: each sentence is
       compared with EVERY row of ``clean``, both classes (TF-IDF cosine of
       their words, :func:`_match_sources`). Its source is the row
       OpenBackdoor's layout pairs it with (row ``k`` of the non-target rows
       of ``clean``, or of all its rows, when the counts agree) if that row
       is (within :data:`NEAR_BEST`) its best match; else its best match if
       that is clear. A sentence whose best match is a target-class row is a
       triggered target-class sentence (its source label is the target); one
       with no clear match has no source (-1, counted as ``unmatched``).

    Measured on the shared SST-2 StyleBkd and SynBkd files (OpenBackdoor's
    own): 2-6% of rows have no clear source; a row paired with the wrong
    source is accepted only when the wrong row is about as similar as its
    best match.

    Returns:
        The positions in ``clean`` (one per poisoned row, -1 where no source
        is clear), how they were found, and whether exactly (1.: every
        sentence is its source plus the trigger).

    Raises:
        ValueError: naming ``poison_file`` when more than
            :data:`UNMATCHED_LIMIT` (20%) of its rows have no clear source.
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
                f"matched in {clean_file.name} after removing the {attack} trigger"), True
    paired, layout = None, "no row-by-row pairing (the counts differ)"
    for what, candidates in (("non-target rows", np.flatnonzero(clean.labels != target)),
                             ("rows", np.arange(len(clean)))):
        if len(candidates) == n:
            paired, layout = candidates.astype(np.int64), f"paired row by row with the {what}"
            break
    positions = _match_sources(poisoned.texts, clean, paired, target)
    missing = np.flatnonzero(positions < 0)
    if missing.size > UNMATCHED_LIMIT * n:
        matched = ("" if trigger is None else
                   f"{len(unmatched)} of them are not (or not unambiguously) a sentence of "
                   f"{clean_file.name} once the {attack} trigger is removed (e.g. data row "
                   f"{unmatched[0] + 1}: {poisoned.texts[unmatched[0]]!r}), and ")
        raise ValueError(
            f"Expected to find the source (the clean sentence and its true label) of each of the "
            f"{n} triggered sentences in {poison_file}, to measure the attack success rate over "
            f"non-target sources only, but {matched}{missing.size} of them "
            f"({missing.size / n:.0%}; "
            f"at most {UNMATCHED_LIMIT:.0%} allowed) match no row of {clean_file.name} clearly "
            f"(e.g. data row {missing[0] + 1}: {poisoned.texts[missing[0]]!r}; {layout}). Put the "
            f"sentences they were made from into {clean_file.name} (OpenBackdoor's layout pairs "
            f"row k with the k-th non-target row), or name the attack (a folder named badnets or "
            f"addsent, or `attack`) so its trigger can be removed."
        )
    return positions, (
        f"{layout} of {clean_file.name}, each checked against all its {len(clean)} rows by word "
        f"similarity ({int((positions == paired).sum()) if paired is not None else 0} pairs "
        f"confirmed, {missing.size} rows without a clear source)"), False


def _sourced_poison(poisoned: Split, clean: Split, trigger, *, target: int, poison_file: Path,
                    clean_file: Path, attack: str) -> tuple[Split, Split, dict, bool]:
    """The poisoned split with its target-class (and unmatched) sources dropped, the control
    (the kept sources, clean, with their true labels), a note for ``info["poison_sources"]``
    and whether the sources were found exactly (by removing the trigger)."""
    positions, how, exact = recover_sources(poisoned, clean, trigger, target=target,
                                     poison_file=poison_file, clean_file=clean_file, attack=attack)
    found = positions >= 0
    true = np.where(found, clean.labels[np.where(found, positions, 0)], target)
    keep = np.flatnonzero(found & (true != target))
    kept = poisoned.subset(keep)
    kept.true_labels = true[keep]
    note = {"file": str(poison_file), "rows": len(poisoned), "kept": int(keep.size),
            "dropped_target_source": int(found.sum() - keep.size),
            "unmatched": int((~found).sum()), "sources": how}
    return kept, clean.subset(positions[keep]), note, exact


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
    dev-clean/test-clean (:func:`recover_sources`: by removing the trigger
    of an attack that has a removable one (``Attack.remove_trigger``: BadNets,
    AddSent, a registered attack of your own), or, for paraphrases (stylebkd,
    synbkd, an unknown folder name), by comparing each sentence with every row of the clean file, both
    classes, and confirming OpenBackdoor's row-by-row pairing where it is the
    best match). Triggered sentences whose source is of the target class (a
    file made by another tool may hold them) are dropped, and so are those
    with no clear source; ``info["poison_sources"]`` gives per split the rows
    read, kept, dropped (``dropped_target_source``), without a clear source
    (``unmatched``; 2-6% of the shared SST-2 StyleBkd/SynBkd rows) and how the
    sources were found. A file more than 20% of whose rows have no clear
    source is refused. ``true_labels`` of the poison splits are the sources'
    labels. Evaluation splits that look like copies of train or dev are
    refused (:func:`freqlens.data.splits.check_text_overlap`;
    ``info["text_overlap"]`` counts the texts they share).

    Control splits: the kept sources themselves, clean, with their true
    labels: for an attack with a removable trigger the poisoned sentences
    with the trigger removed (``info["control"]`` = "trigger removed"); for paraphrases the
    kept sources, non-target clean examples ("non-target clean examples").

    With a removable trigger the true labels of poisoned training examples are
    looked up in ``train-clean.csv`` (``info["train_true_labels"]``); otherwise
    they are unknown and equal their label.

    Args:
        path: the folder, e.g. ``.../sst-2/addsent``.
        train: the training file, relative to ``path``.
        attack: a registered attack's name (:data:`~freqlens.data.attacks.ATTACKS`:
            "badnets", "addsent", "stylebkd", "synbkd", or one registered with
            :func:`~freqlens.data.register_attack`), an attack object (e.g.
            ``BadNets(triggers=("zz",))``), or None to detect it from the
            folder name (a registered name).
        target_label: the attack's target class.
        num_classes: the number of classes; every label must lie in [0, num_classes).

    Returns:
        The :class:`PoisonedDataset`, named e.g. "sst-2/addsent (mix/0.1/train-poison.csv)".

    Raises:
        FileNotFoundError: if the folder or one of its files is missing.
        ValueError: for a malformed file, a dev/test poison label other than
            the target, too many poisoned sentences whose source cannot be
            found, a poison file with no non-target source, an evaluation split
            that looks like a copy of train or dev, or an unknown ``attack`` name.
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
    sources, exact = {}, {}
    for part in ("dev", "test"):
        poison_file = files[f"{part}_poison"]
        _check_all_target(splits[f"{part}_poison"], poison_file, target)
        poisoned, control, sources[f"{part}_poison"], exact[part] = _sourced_poison(
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
    control = "trigger removed" if all(exact.values()) else "non-target clean examples"
    dataset = PoisonedDataset(
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
    where = {key: f"`{key}` ({file})" for key, file in files.items()}
    dataset.info["text_overlap"] = check_text_overlap(dataset, where)
    return dataset


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
    where each split came from. Two names of one file (a symbolic or hard
    link) count as one file. An evaluation split whose texts are more than 5%
    those of train or dev (a copied file) is refused
    (:func:`freqlens.data.splits.check_text_overlap`); the rows shared below
    that are counted in ``info["text_overlap"]``. ``info["files"]`` gives the
    absolute path of the file read for each role.

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
            a shared file is too small to carve, or an evaluation split looks
            like a copy of train or dev (the error names ``data.splits.<role>``).
    """
    root = _directory(path)
    names = split_names(splits, ROLES)
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    parts, files, read, identity = {}, {}, {}, {}
    for role, stem in names.items():
        file = files[role] = _split_file(root, stem)
        # one file under two names (a symbolic or hard link) is one source, carved like a
        # file named twice
        status = file.stat()
        key = identity[role] = (status.st_dev, status.st_ino)
        if key not in read:
            read[key] = read_table(file, text_column=text_column, label_column=label_column)
        check_labelled(read[key], role, str(file), num_classes)
        parts[role] = read[key]
    parts, notes = carve(parts, identity, seed=seed, holdout=holdout,
                         names={r: str(f) for r, f in files.items()})
    dataset = CleanDataset(
        **parts,
        num_classes=num_classes or _infer_num_classes(list(parts.values())),
        name=f"{root.parent.name}/{root.name}",
        info={"splits": {role: notes.get(role, str(files[role])) for role in ROLES},
              "path": str(root.resolve()),
              "files": {role: str(files[role].resolve()) for role in ROLES}},
    )
    overlap = check_text_overlap(dataset, {
        role: f"`data.splits.{role}` = {names[role]!r} ({files[role]})" for role in ROLES})
    dataset.info["text_overlap"] = overlap
    return dataset
