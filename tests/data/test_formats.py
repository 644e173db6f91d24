"""read_table reads CSV, TSV and JSONL exactly as the standard readers do (issue 12, item 6).

Written from the format rules, not from one example: RFC 4180 (quoted fields
holding delimiters, line breaks and doubled quotes; empty fields; CRLF), TSV
as pandas writes it (``to_csv(sep="\\t")`` quotes fields the same way), JSONL
(one object per line, blank lines, unicode). Round trips write many seeded
random texts with pandas / csv / json and compare what freqlens reads with
what pandas reads. A malformed file is an error naming the file and the line.
"""

import csv
import io
import json
import random

import numpy as np
import pandas as pd
import pytest

from freqlens.data import read_table

ALPHABET = (
    list("abcdefghij xyz ABC 0123")
    + ['"', '""', "'", ",", "\t", "\n", "\r\n", ";", "|", "\\", "#"]
    + ["é", "ß", "中文", "😀", "\u2028", "\u00a0", "\ufeff", "NA", "null", "nan", "None"]
)


def random_texts(seed: int, n: int = 120) -> list[str]:
    """Seeded random texts: quotes, delimiters, line breaks, unicode, pandas' NA words, blank
    (an empty text is a malformed row: test_an_empty_text_is_refused_naming_file_and_line).

    No bare carriage return: Python's csv writer (and so pandas) leaves a field holding "\r"
    but no "\n" unquoted when the line terminator is "\n", and every reader then takes the
    "\r" as a line break; a quoted "\r" is covered by the "\r\n" pieces."""
    rng = random.Random(seed)
    texts = [" ", '"', '""', '"quoted"', "a,b", "a\tb", "line\nbreak", "NA"]
    for _ in range(n):
        texts.append("".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12))))
    return texts


def labels_for(texts):
    return [i % 3 for i in range(len(texts))]


def pandas_reads(path, sep):
    """What pandas reads: every cell as the string in the file (no NA conversion)."""
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    return frame["text"].tolist(), [int(v) for v in frame["label"]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sep, suffix", [(",", "csv"), ("\t", "tsv")])
@pytest.mark.parametrize("index", [False, True])
def test_pandas_written_files_read_as_pandas_reads_them(tmp_path, seed, sep, suffix, index):
    texts = random_texts(seed)
    frame = pd.DataFrame({"text": texts, "label": labels_for(texts)})
    path = tmp_path / f"data.{suffix}"
    frame.to_csv(path, sep=sep, index=index)
    split = read_table(path, num_classes=3)
    expected_texts, expected_labels = pandas_reads(path, sep)
    assert split.texts == expected_texts
    assert split.labels.tolist() == expected_labels
    assert split.texts == texts


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("delimiter, suffix", [(",", "csv"), ("\t", "tsv")])
@pytest.mark.parametrize("quoting", [csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])
@pytest.mark.parametrize("lineterminator", ["\r\n", "\n"])
def test_csv_module_written_files_round_trip(tmp_path, seed, delimiter, suffix, quoting,
                                             lineterminator):
    texts = random_texts(seed, 60)
    path = tmp_path / f"data.{suffix}"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter=delimiter, quoting=quoting, lineterminator=lineterminator)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels_for(texts)))
    split = read_table(path)
    assert split.texts == texts and split.labels.tolist() == labels_for(texts)
    assert (split.texts, split.labels.tolist()) == pandas_reads(path, delimiter)


def test_rfc4180_examples(tmp_path):
    """RFC 4180 section 2, rule by rule: CRLF records, a last record without CRLF, quoted
    fields with commas, CRLF and doubled quotes, spaces kept. (An empty text field is a
    malformed row: test_an_empty_text_is_refused_naming_file_and_line.)"""
    raw = (
        'text,label\r\n'
        '"a, b",1\r\n'  # rule 6: a quoted comma
        '"multi\r\nline",0\r\n'  # rule 6: a quoted line break
        '"he said ""hi""",1\r\n'  # rule 7: doubled quotes
        '  spaced  ,1\r\n'  # rule 4: spaces are part of the field
        '"""",0\r\n'  # a quoted field holding one (doubled) quote
        'mid"quote,1'  # a quote inside an unquoted field is a character; no final CRLF
    )
    path = tmp_path / "rfc.csv"
    path.write_bytes(raw.encode("utf-8"))
    split = read_table(path)
    assert split.texts == ["a, b", "multi\r\nline", 'he said "hi"', "  spaced  ", '"', 'mid"quote']
    assert split.labels.tolist() == [1, 0, 1, 1, 0, 1]
    assert (split.texts, split.labels.tolist()) == pandas_reads(path, ",")


def test_tsv_as_pandas_writes_it_from_the_musclelora_layout(tmp_path):
    """The MuScleLoRA authors' TSVs are pandas-written: a text with quotes is quoted, inner
    quotes doubled. The old reader took the quotes as part of the text."""
    path = tmp_path / "train.tsv"
    path.write_text('sentence\tlabel\n"the ""best"" film"\t1\n"tab\there"\t0\nplain\t1\n',
                    encoding="utf-8")
    split = read_table(path, text_column="sentence")
    assert split.texts == ['the "best" film', "tab\there", "plain"]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("writer", ["pandas", "pandas-ascii", "json"])
def test_jsonl_round_trip(tmp_path, seed, writer):
    texts = random_texts(seed)
    labels = labels_for(texts)
    path = tmp_path / "data.jsonl"
    if writer.startswith("pandas"):
        pd.DataFrame({"text": texts, "label": labels}).to_json(
            path, orient="records", lines=True, force_ascii=writer == "pandas-ascii")
    else:
        lines = [json.dumps({"text": t, "label": y}, ensure_ascii=False) for t, y in zip(texts, labels)]
        lines[3:3] = ["", "   "]  # blank lines are skipped
        path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    split = read_table(path)
    frame = pd.read_json(path, lines=True, dtype=False)
    assert split.texts == texts == frame["text"].tolist()
    assert split.labels.tolist() == labels == frame["label"].tolist()


# --- malformed files: an error naming the file and the line ----------------------------------


@pytest.mark.parametrize("suffix, sep", [("csv", ","), ("tsv", "\t")])
def test_unbalanced_quote_is_an_error_naming_the_line(tmp_path, suffix, sep):
    path = tmp_path / f"bad.{suffix}"
    rows = ["text", "label"], ['"two\nlines"', "1"], ["fine", "0"], ['"never closed', "1"], \
        ["lost", "0"], ["rows", "1"]
    path.write_text("\n".join(sep.join(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad\.{suffix} but the record starting on line 5 is "
                                         r"malformed"):
        read_table(path)


@pytest.mark.parametrize("suffix, sep", [("csv", ","), ("tsv", "\t")])
def test_text_after_a_closing_quote_is_an_error(tmp_path, suffix, sep):
    path = tmp_path / f"bad.{suffix}"
    path.write_text(f'text{sep}label\nok{sep}1\n"quoted" tail{sep}0\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad\.{suffix} .*line 3 is malformed"):
        read_table(path)


@pytest.mark.parametrize("row, count", [("a,b,1", 3), ("alone", 1)])
def test_wrong_field_count_names_the_line(tmp_path, row, count):
    path = tmp_path / "bad.csv"
    path.write_text(f'text,label\n"x\ny",1\n\n{row}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"Expected 2 fields on line 5 of .*bad\.csv.*got {count}"):
        read_table(path)


def test_bad_json_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 0\n{"text": "c", "label": 1}\n')
    with pytest.raises(ValueError, match=r"line 3 of .*bad\.jsonl but it is not valid JSON"):
        read_table(path)


def test_duplicate_column_is_an_error(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("text,label,text\na,1,b\n")
    with pytest.raises(ValueError, match=r"one column 'text' in .*dup\.csv .* 2 times"):
        read_table(path)


def test_bom_and_crlf_written_by_excel_style_writers(tmp_path):
    buffer = io.StringIO(newline="")
    pd.DataFrame({"text": ["naïve, \"yes\"", "x"], "label": [1, 0]}).to_csv(
        buffer, index=False, lineterminator="\r\n")
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buffer.getvalue().encode("utf-8"))
    assert read_table(path).texts == ['naïve, "yes"', "x"]


# Labels: exactly what pandas' read_csv reads as an integer (or an integral float) label.
PANDAS_INTEGER_LABELS = ["1", " 1", "1 ", "+1", "-0", "01", "\t1\t", "1.0", "1.", " +1.0 ", "1e0",
                         "1E0", "1.0e0"]
NOT_INTEGER_LABELS = ["1_0", "1_000", "0x1", "١", "²", "1.5", "inf", "nan", "", "one", "1,0",
                      "True", "0b1", "1j"]


@pytest.mark.parametrize("value", PANDAS_INTEGER_LABELS + NOT_INTEGER_LABELS)
@pytest.mark.parametrize("suffix, sep", [("csv", ","), ("tsv", "\t")])
def test_labels_are_read_as_pandas_reads_integer_labels(tmp_path, value, suffix, sep):
    """The independent reference: pandas' own parse of the same file. A value pandas leaves as
    a string (Python's int() would take "1_0" as 10, "١" as 1) or reads as a non-integral
    float is refused naming the file and the line."""
    path = tmp_path / f"labels.{suffix}"
    field = f'"{value}"' if sep in value else value  # a delimiter in a field: quoted
    path.write_text(f"text{sep}label\nfirst{sep}0\nsecond{sep}{field}\n", encoding="utf-8")
    label = pd.read_csv(path, sep=sep)["label"].iloc[1]
    integral = isinstance(label, (int, float, np.integer, np.floating)) and np.isfinite(label) \
        and float(label).is_integer()
    assert integral == (value in PANDAS_INTEGER_LABELS)
    if integral:
        assert read_table(path).labels.tolist() == [0, int(label)]
    else:
        with pytest.raises(ValueError, match=rf"integer label in column 'label' of .*labels\.{suffix}, "
                                             r"line 3 but got"):
            read_table(path)


@pytest.mark.parametrize("raw, line", [
    ("text,label\n,1\nb,0\n", 2),
    ('text,label\na,1\n"",0\n', 3),
    ('text,label,extra\na,1,x\nb,0,y\n,1,z\n', 4),
])
def test_an_empty_text_is_refused_naming_file_and_line(tmp_path, raw, line):
    """pandas reads an empty text field as a missing value (NaN): a row without a sentence."""
    path = tmp_path / "empty.csv"
    path.write_text(raw, encoding="utf-8")
    assert pd.read_csv(path)["text"].isna().sum() == 1
    with pytest.raises(ValueError, match=rf"text in column 'text' of .*empty\.csv, line {line} but "
                                         r"the field is empty"):
        read_table(path)


def test_an_empty_text_in_jsonl_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "", "label": 0}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.jsonl, line 2 but the field is empty"):
        read_table(path)
