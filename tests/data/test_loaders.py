"""Loaders: read_table, load_openbackdoor, load_clean, load_hf_dataset."""

import csv
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from freqlens.data import (
    AddSent,
    BadNets,
    CleanDataset,
    PoisonedDataset,
    load_clean,
    load_hf_dataset,
    load_openbackdoor,
    read_table,
    remove_trigger,
)

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst-2"
needs_sst2 = pytest.mark.skipif(not SST2.is_dir(), reason=f"the SST-2 data is not at {SST2}")
OB = {"text_column": "0", "label_column": "1", "poison_column": "2"}
TEXTS = ['a fine, "quoted" film', "dull", "it's great"]


def write_rows(path: Path, header, rows, delimiter=","):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter=delimiter)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_openbackdoor(path: Path, rows):
    """rows: (text, label, poison flag); written with OpenBackdoor's ',0,1,2' header."""
    return write_rows(path, ["", "0", "1", "2"], [(i, t, y, p) for i, (t, y, p) in enumerate(rows)])


# --- read_table -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_read_table_round_trip(tmp_path, fmt):
    texts = TEXTS if fmt != "tsv" else [t.replace('"', "") for t in TEXTS]
    labels, flags = [1, 0, 1], [0, 0, 1]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        path.write_text(
            "".join(
                json.dumps({"text": t, "label": y, "p": f}) + "\n"
                for t, y, f in zip(texts, labels, flags)
            )
            + "\n"
        )
    else:
        write_rows(
            path, ["text", "label", "p"], zip(texts, labels, flags), "," if fmt == "csv" else "\t"
        )
    split = read_table(path, poison_column="p", num_classes=2)
    assert split.texts == texts
    assert split.labels.tolist() == labels and split.poison.tolist() == [False, False, True]
    assert split.true_labels.tolist() == labels


def test_read_table_openbackdoor_header_float_labels_and_given_format(tmp_path):
    path = write_openbackdoor(tmp_path / "data.txt", [("good", "1.0", "1"), ("bad", "0", "0.0")])
    split = read_table(path, **OB, format="csv")
    assert split.texts == ["good", "bad"] and split.labels.tolist() == [1, 0]
    assert split.poison.tolist() == [True, False]


def test_read_table_text_column_none_takes_sentence(tmp_path):
    path = write_rows(tmp_path / "d.tsv", ["sentence", "label"], [("good", 1)], "\t")
    assert read_table(path, text_column=None).texts == ["good"]


def test_read_table_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Expected a data file at .*nope.csv"):
        read_table(tmp_path / "nope.csv")


def test_read_table_unknown_format(tmp_path):
    path = write_rows(tmp_path / "d.txt", ["text", "label"], [("a", 1)])
    with pytest.raises(ValueError, match=r"end in \.csv, \.tsv or \.jsonl.*'\.txt'"):
        read_table(path)
    with pytest.raises(ValueError, match="Expected `format` to be one of .* got 'xml'"):
        read_table(path, format="xml")


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl"])
def test_read_table_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty.{suffix}"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty.* the file is empty"):
        read_table(path)


def test_read_table_header_only(tmp_path):
    path = write_rows(tmp_path / "h.csv", ["text", "label"], [])
    with pytest.raises(ValueError, match=r"at least one data row in .*h\.csv after its header"):
        read_table(path)


def test_read_table_missing_column_lists_the_header(tmp_path):
    path = write_rows(tmp_path / "train.csv", ["text", "y"], [("a", 1)])
    with pytest.raises(
        ValueError, match=r"column 'label' in .*train\.csv but its header has \['text', 'y'\]"
    ):
        read_table(path)


def test_read_table_label_outside_the_classes(tmp_path):
    path = write_rows(tmp_path / "d.csv", ["text", "label"], [("a", 1), ("b", 2)])
    assert read_table(path).labels.tolist() == [1, 2]  # no num_classes: any integer
    with pytest.raises(
        ValueError, match=r"label in \[0, 2\) in column 'label' of .*d\.csv, line 3 .*'2'"
    ):
        read_table(path, num_classes=2)


def test_read_table_non_integer_label(tmp_path):
    path = write_rows(tmp_path / "d.csv", ["text", "label"], [("a", "1"), ("b", "pos")])
    with pytest.raises(
        ValueError, match=r"integer label in column 'label' of .*d\.csv, line 3 but got 'pos'"
    ):
        read_table(path)
    path = write_rows(tmp_path / "e.csv", ["text", "label"], [("a", "0.5")])
    with pytest.raises(ValueError, match="integer label .* got '0.5'"):
        read_table(path)


def test_read_table_bad_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(
        ValueError, match=r"JSON object on line 2 of .*d\.jsonl but it is not valid JSON"
    ):
        read_table(path)
    path.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(TypeError, match="JSON object on line 2 .* got a list"):
        read_table(path)
    path.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match="column 'label' on line 2"):
        read_table(path)


def test_read_table_row_with_wrong_field_count(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,c,0\n")
    with pytest.raises(ValueError, match=r"Expected 2 fields on line 3 of .*d\.csv.* got 3"):
        read_table(path)


def test_read_table_bad_poison_flag(tmp_path):
    path = write_openbackdoor(tmp_path / "d.csv", [("a", 1, "maybe")])
    with pytest.raises(ValueError, match="poison flag .* column '2' .* line 2 but got 'maybe'"):
        read_table(path, **OB)


# --- load_openbackdoor on a tiny folder -------------------------------------------------------


def make_openbackdoor(root: Path, attack=None, poison_label=1) -> Path:
    attack, rng = attack or AddSent(), np.random.default_rng(0)
    def sentences(part):  # each split its own sentences (a copied split is refused)
        clean = [(f"{part} clean sentence number {i}", i % 2, 0) for i in range(10)]
        sources = [(f"{part} negative sentence {i}", 0, 0) for i in range(4)]
        poisoned = [(attack.apply(text, rng), poison_label, 1) for text, _, _ in sources]
        return clean, sources, poisoned

    clean, sources, poisoned = sentences("train")
    (root / "mix" / "0.1").mkdir(parents=True)
    write_openbackdoor(root / "train-clean.csv", clean + sources)
    write_openbackdoor(root / "mix" / "0.1" / "train-poison.csv", clean + poisoned)
    for part in ("dev", "test"):
        # as OpenBackdoor writes them: the poisoned sentences are made from the non-target
        # rows of the clean file of the same split, in order
        clean, sources, poisoned = sentences(part)
        write_openbackdoor(root / f"{part}-clean.csv", sources + [r for r in clean if r[1] == 1])
        write_openbackdoor(root / f"{part}-poison.csv", poisoned)
    return root


def test_load_openbackdoor_small_addsent_folder(tmp_path):
    data = load_openbackdoor(make_openbackdoor(tmp_path / "toy" / "addsent"))
    assert isinstance(data, PoisonedDataset)
    assert data.name == "toy/addsent (mix/0.1/train-poison.csv)"
    assert data.info["control"] == "trigger removed" and data.info["attack"] == "addsent"
    assert data.dev_control.texts == [f"dev negative sentence {i}" for i in range(4)]
    assert (
        data.dev_control.labels.tolist() == [0] * 4
        and data.dev_poison.true_labels.tolist() == [0] * 4
    )
    assert (
        data.train.poison.sum() == 4
        and data.train.true_labels[data.train.poison].tolist() == [0] * 4
    )
    assert "recovered for 4 of 4" in data.info["train_true_labels"]


def test_load_openbackdoor_attack_argument_and_detection(tmp_path):
    root = make_openbackdoor(tmp_path / "mystery", attack=BadNets(triggers=("zz",)))
    assert load_openbackdoor(root).info["control"] == "non-target clean examples"
    data = load_openbackdoor(root, attack=BadNets(triggers=("zz",)))
    assert data.test_control.texts == [f"test negative sentence {i}" for i in range(4)]
    with pytest.raises(
        ValueError, match="Expected `attack` to be one of .*'badnets'.* got 'badnet'"
    ):
        load_openbackdoor(root, attack="badnet")


def test_load_openbackdoor_checks_poison_labels_and_train_file(tmp_path):
    root = make_openbackdoor(tmp_path / "addsent", poison_label=0)
    with pytest.raises(
        ValueError, match=r"every label in .*-poison\.csv to be the `target_label` 1"
    ):
        load_openbackdoor(root, train="train-clean.csv")
    with pytest.raises(
        FileNotFoundError, match=r"training file `train`='clean/0.1/train-poison.csv'.*holds \["
    ):
        load_openbackdoor(root, train="clean/0.1/train-poison.csv")
    with pytest.raises(FileNotFoundError, match="Expected `path` to be a folder"):
        load_openbackdoor(tmp_path / "missing")


def test_load_openbackdoor_more_classes_recovers_sources_and_controls(tmp_path):
    data = load_openbackdoor(make_openbackdoor(tmp_path / "addsent"), num_classes=3)
    assert data.num_classes == 3 and data.dev_poison.true_labels.tolist() == [0] * 4
    assert data.test_control.texts == [f"test negative sentence {i}" for i in range(4)]
    assert data.test_control.labels.tolist() == [0] * 4


# --- load_openbackdoor on the real SST-2 folders ----------------------------------------------


@pytest.fixture(scope="module")
def sst2():
    loaded = {}

    def load(attack, train="mix/0.1/train-poison.csv"):
        if (attack, train) not in loaded:
            loaded[attack, train] = load_openbackdoor(SST2 / attack, train=train)
        return loaded[attack, train]

    return load


@needs_sst2
@pytest.mark.parametrize("attack", ["addsent", "stylebkd", "synbkd"])
def test_sst2_sizes_and_mix_poison_count(sst2, attack):
    data = sst2(attack)
    sizes = [
        len(s)
        for s in (data.train, data.dev_clean, data.dev_poison, data.test_clean, data.test_poison)
    ]
    if attack in ("badnets", "addsent"):  # every source found exactly, after removing the trigger
        assert sizes == [6920, 872, 428, 1821, 912]
    else:  # paraphrases: rows without a clear source (a few %) are dropped, and counted
        assert sizes[:2] + sizes[3:4] == [6920, 872, 1821]
        for part, rows in (("dev_poison", 428), ("test_poison", 912)):
            note = data.info["poison_sources"][part]
            assert note["rows"] == rows and note["kept"] == len(getattr(data, part))
            assert note["kept"] + note["dropped_target_source"] + note["unmatched"] == rows
            assert note["kept"] >= 0.9 * rows
    assert data.train.poison.sum() == 692
    assert np.all(data.train.labels[data.train.poison] == 1)
    for split in (data.dev_poison, data.test_poison):
        assert np.all(split.labels == 1) and np.all(split.poison) and np.all(split.true_labels == 0)
    assert data.name == f"sst-2/{attack} (mix/0.1/train-poison.csv)"


@needs_sst2
def test_sst2_badnets_clean_label(sst2):
    data = sst2("badnets", "clean/0.1/train-poison.csv")
    assert len(data.train) == 6920 and data.train.poison.sum() == 692
    assert np.all(data.train.labels[data.train.poison] == 1)
    assert np.all(data.train.true_labels[data.train.poison] == 1)  # clean-label: already the target


@needs_sst2
def test_sst2_trigger_removed_controls(sst2):
    addsent, badnets = sst2("addsent"), sst2("badnets", "clean/0.1/train-poison.csv")
    for split in (addsent.dev_control, addsent.test_control):
        assert not any("I watch this 3D movie" in t for t in split.texts) and np.all(
            split.labels == 0
        )
    for split in (badnets.dev_control, badnets.test_control):
        assert not any({"cf", "mn", "bb", "tq"} & set(t.split()) for t in split.texts)
    # the controls are exactly the non-target clean sentences the poison was made from
    clean = addsent.test_clean.subset(addsent.test_clean.labels == 0)
    assert addsent.test_control.texts == clean.texts
    assert [
        remove_trigger(BadNets(), t) for t in badnets.dev_poison.texts
    ] == badnets.dev_control.texts
    assert addsent.info["control"] == "trigger removed"


@needs_sst2
def test_sst2_stylebkd_control_is_non_target_clean(sst2):
    data = sst2("stylebkd")
    assert data.info["control"] == "non-target clean examples"
    expected = data.dev_clean.subset(data.dev_clean.labels != 1).texts
    assert len(data.dev_control) == len(data.dev_poison) >= 0.9 * len(expected)
    assert set(data.dev_control.texts) <= set(expected) and np.all(data.dev_control.labels == 0)
    assert np.all(data.dev_control.labels == data.dev_poison.true_labels)
    assert data.info["files"]["train"].endswith("mix/0.1/train-poison.csv")


@needs_sst2
def test_sst2_capped_keeps_share_and_alignment(sst2):
    data = sst2("addsent").capped(max_train=500, max_eval=100, seed=1)
    assert len(data.train) == 500 and data.train.poison.sum() == 50
    assert len(data.test_poison) == len(data.test_control) == len(data.dev_clean) == 100
    assert [remove_trigger(AddSent(), t) for t in data.test_poison.texts] == data.test_control.texts


@needs_sst2
def test_sst2_load_clean_raw():
    data = load_clean(SST2 / "raw")
    assert isinstance(data, CleanDataset) and data.num_classes == 2 and data.name == "sst-2/raw"
    assert (len(data.train), len(data.dev), len(data.test)) == (6920, 872, 1821)


# --- load_clean -------------------------------------------------------------------------------


def test_load_clean_mixed_formats_and_columns(tmp_path):
    write_rows(
        tmp_path / "train.tsv", ["sentence", "label"], [("good", 1), ("bad", 0), ("meh", 2)], "\t"
    )
    write_rows(tmp_path / "dev.csv", ["id", "text", "label"], [(0, "fine", 1)])
    (tmp_path / "test.jsonl").write_text('{"text": "dull", "label": 0}\n')
    data = load_clean(tmp_path)
    assert data.num_classes == 3 and data.train.texts == ["good", "bad", "meh"]
    assert data.dev.texts == ["fine"] and data.test.labels.tolist() == [0]
    with pytest.raises(ValueError, match=r"labels? in \[0, 2\)"):
        load_clean(tmp_path, num_classes=2)


def test_load_clean_missing_ambiguous_and_unlabelled_files(tmp_path):
    write_rows(tmp_path / "train.csv", ["text", "label"], [("fine", 1)])
    write_rows(tmp_path / "dev.csv", ["text", "label"], [("good", 1)])
    with pytest.raises(
        FileNotFoundError, match=r"test\.csv, test\.tsv or test\.jsonl in .* holds \['dev.csv'"
    ):
        load_clean(tmp_path)
    write_rows(tmp_path / "test.csv", ["text", "label"], [("x", -1)])
    with pytest.raises(ValueError, match=r"labels >= 0 in .*test\.csv \(the test split\) but got -1"
                                         r".*`data\.splits\.test`"):
        load_clean(tmp_path)
    write_rows(tmp_path / "test.tsv", ["text", "label"], [("x", 1)], "\t")
    with pytest.raises(ValueError, match=r"one test file in .* \['test.csv', 'test.tsv'\]"):
        load_clean(tmp_path)
    write_rows(tmp_path / "dev.csv", ["text", "label"], [("good", 1), ("bad", 0)])
    data = load_clean(tmp_path, splits=("train", "dev", "dev"))  # carved: dev and test disjoint
    assert len(data.dev) == len(data.test) == 1 and set(data.dev.texts) | set(data.test.texts) == {
        "good", "bad"}


# --- load_hf_dataset --------------------------------------------------------------------------

ROWS = [{"sentence": "good", "label": 1, "idx": 0}, {"sentence": "bad", "label": 0, "idx": 1}]


def test_load_hf_dataset_from_rows_and_columns():
    other = [{**row, "sentence": f"{row['sentence']} one"} for row in ROWS]  # not train's texts
    data = load_hf_dataset({"train": ROWS, "validation": other[:1], "test": [
        {**row, "sentence": f"{row['sentence']} two"} for row in ROWS]})
    assert data.train.texts == ["good", "bad"] and data.dev.labels.tolist() == [1]
    assert data.num_classes == 2 and data.name == "in-memory dict"
    columns = {"text": ["a", "b", "c"], "y": [0, 1, 2]}
    data = load_hf_dataset(
        {"tr": columns, "va": {"text": ["d", "e", "f"], "y": [0, 1, 2]}},
        text_column="text",
        label_column="y",
        splits=("tr", "va", "va"),
    )
    # one split named for dev and test: carved into disjoint halves
    assert data.num_classes == 3 and len(data.dev) == 2 and len(data.test) == 1
    assert sorted(data.dev.texts + data.test.texts) == ["d", "e", "f"]


def test_load_hf_dataset_errors():
    with pytest.raises(
        ValueError, match=r"split 'test' in the dataset .* has \['train', 'validation'\]"
    ):
        load_hf_dataset({"train": ROWS, "validation": list(ROWS)})
    hidden = [{"sentence": "x", "label": -1}]
    with pytest.raises(
        ValueError,
        match=r"labels >= 0 in split 'test' .*\(the test split\) but got -1.*`data\.splits\.test`",
    ):
        load_hf_dataset({"train": ROWS, "validation": list(ROWS), "test": hidden})
    with pytest.raises(
        ValueError, match=r"row 0 of split 'train' to have columns \['text', 'label'\]"
    ):
        load_hf_dataset({"train": ROWS, "validation": ROWS, "test": ROWS}, text_column="text")
    with pytest.raises(ValueError, match=r"label in \[0, 2\)|labels in \[0, 2\)"):
        load_hf_dataset(
            {"train": ROWS + [{"sentence": "x", "label": 5}], "validation": ROWS, "test": ROWS},
            num_classes=2,
        )


def test_load_hf_dataset_by_name_without_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"pip install datasets .*freqlens\[hf\]"):
        load_hf_dataset("glue", config="sst2")


def test_load_hf_dataset_by_name_uses_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config))
        return {split: [{**row, "sentence": f"{row['sentence']} {split}"} for row in ROWS]
                for split in ("train", "validation", "test")}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = load_hf_dataset("glue", config="sst2")
    assert calls == [("glue", "sst2")] and data.name == "glue/sst2" and len(data.test) == 2


def test_a_dataset_near_the_root_is_named_without_a_double_slash(tmp_path):
    from freqlens.data.identity import _short

    assert _short(Path("/data")) == "data" and _short(Path("/tmp/clean")) == "tmp/clean"
    assert _short(Path("/a/b/c/d")) == "b/c/d"
