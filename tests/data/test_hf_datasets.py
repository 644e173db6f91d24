"""load_hf_dataset with real `datasets` objects and the real load_dataset on local files."""

import csv

import pytest

from freqlens.data.hf import load_hf_dataset

datasets = pytest.importorskip("datasets", reason="the `datasets` package (freqlens[hf]) is not installed")

ROWS = {"sentence": ["good film", "bad film", "fine", "awful", "great fun", "dull"], "label": [1, 0, 1, 0, 1, 0]}


def test_a_datasetdict_with_a_classlabel_feature():
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive", "neutral"])})
    split = datasets.Dataset.from_dict(ROWS, features=features)
    dev, test = (datasets.Dataset.from_dict(  # other sentences than train's (a copy is refused)
        {"sentence": [f"{name}: {t}" for t in ROWS["sentence"][::-1][:n]], "label": ROWS["label"][::-1][:n]},
        features=features) for name, n in (("dev", 4), ("test", 2)))
    data = load_hf_dataset(datasets.DatasetDict({"train": split, "validation": dev, "test": test}))
    assert data.num_classes == 3  # from the feature, not from the labels seen
    assert data.train.texts == ROWS["sentence"] and data.dev.labels.tolist() == ROWS["label"][::-1][:4]


def test_load_dataset_by_path_reads_local_files_offline(tmp_path):
    for name in ("train", "validation", "test"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["sentence", "label"])
            writer.writerows(zip([f"{name}: {t}" for t in ROWS["sentence"]], ROWS["label"]))
    data = load_hf_dataset(str(tmp_path))
    assert len(data.train) == len(data.dev) == len(data.test) == 6
    assert data.num_classes == 2 and str(tmp_path) in data.name


def test_hidden_test_labels_are_refused():
    hidden = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [-1, -1]})
    visible = datasets.Dataset.from_dict(ROWS)
    with pytest.raises(ValueError, match="validation"):
        load_hf_dataset(datasets.DatasetDict({"train": visible, "validation": visible, "test": hidden}))
