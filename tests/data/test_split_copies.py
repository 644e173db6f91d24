"""An evaluation split that is a copy of train or dev is refused (issue 12, item 7).

Example ids say where an example was read from, so a test file copied from the
dev file, a hard link to it, or a test split rebuilt from the validation split
all passed the id check, and the run scored every dev sentence (the
gradient-alignment reference set among them) in test. Now: two names of one
file are one source (carved like a split named twice); an evaluation split
sharing more than 5% of its texts with train or dev is refused naming the
`data.splits` keys and the share; fewer shared texts (natural duplicates:
raw SST-2 has 2 of 1,821 test sentences in train) load and are counted in
``info["text_overlap"]``; and no reference example ever has a text that is in
a test split.
"""

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from freqlens.data import AddSent, BadNets, PoisonedDataset, Split, load_clean, load_openbackdoor, poison
from freqlens.data import splits
from freqlens.data.splits import split_reference

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst-2"


def texts(name: str, n: int) -> list[str]:
    return [f"{name} sentence number {i} about a film" for i in range(n)]


def write(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows((t, i % 2) for i, t in enumerate(rows))
    return path


def folder(root: Path, train=40, dev=30, test=30) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("dev", dev), ("test", test)):
        write(root / f"{name}.csv", texts(name, n))
    return root


# ---- (a) copies of a file: refused; two names of one file: one source, carved -------------

@pytest.mark.parametrize("copy, of", [("test", "dev"), ("test", "train"), ("dev", "train")])
def test_a_copied_file_is_refused_naming_the_splits_and_the_share(tmp_path, copy, of):
    root = folder(tmp_path / "data")
    shutil.copy(root / f"{of}.csv", root / f"{copy}.csv")
    with pytest.raises(ValueError, match=rf"`data\.splits\.{copy}` = '{copy}' .*{copy}\.csv.* "
                                         rf"`data\.splits\.{of}` = '{of}'.* \(100\.0%\).*looks like a copy"):
        load_clean(root)


def test_a_copy_with_other_case_and_spacing_is_still_a_copy(tmp_path):
    root = folder(tmp_path / "data")
    write(root / "test.csv", ["  " + t.upper().replace(" ", "   ") for t in texts("dev", 30)])
    with pytest.raises(ValueError, match=r"looks like a copy"):
        load_clean(root)


def test_a_copy_under_another_split_name_is_refused(tmp_path):
    root = folder(tmp_path / "data")
    shutil.copy(root / "dev.csv", root / "heldout.csv")
    with pytest.raises(ValueError, match=r"`data\.splits\.test` = 'heldout'"):
        load_clean(root, splits={"test": "heldout"})


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_two_names_of_one_file_are_carved_like_a_file_named_twice(tmp_path, link):
    root = folder(tmp_path / "data")
    (root / "test.csv").unlink()
    (os.link if link == "hard" else os.symlink)(root / "dev.csv", root / "test.csv")
    linked = load_clean(root)
    named_twice = load_clean(root, splits={"test": "dev"})
    assert linked.dev.texts == named_twice.dev.texts and linked.test.texts == named_twice.test.texts
    assert len(linked.dev) + len(linked.test) == 30 and not set(linked.dev.texts) & set(linked.test.texts)
    assert "15 of 30 rows" in linked.info["splits"]["test"]


# ---- (b) in-memory and Hugging Face copies ---------------------------------------------

def test_a_test_split_rebuilt_from_validation_is_refused():
    datasets = pytest.importorskip("datasets")
    from freqlens.data import load_hf_dataset

    def split(name, n):
        return datasets.Dataset.from_dict({"sentence": texts(name, n), "label": [i % 2 for i in range(n)]})

    validation = split("validation", 24)
    data = datasets.DatasetDict(train=split("train", 40), validation=validation,
                                test=validation.map(lambda row: row))  # a new fingerprint
    with pytest.raises(ValueError, match=r"`data\.splits\.test` = 'test' .* `data\.splits\.dev` = "
                                         r"'validation'.*24 of its 24 rows \(100\.0%\)"):
        load_hf_dataset(data)
    rows = [{"sentence": t, "label": 0} for t in texts("v", 10)]
    with pytest.raises(ValueError, match=r"looks like a copy"):
        load_hf_dataset({"train": [{"sentence": t, "label": 1} for t in texts("t", 10)],
                         "validation": rows, "test": [dict(row) for row in rows]})


def test_a_copied_openbackdoor_test_clean_file_is_refused(tmp_path):
    root = tmp_path / "addsent"
    root.mkdir()
    attack = AddSent()
    for part, n in (("train", 20), ("dev", 12), ("test", 12)):
        rows = [(t, i % 2, 0) for i, t in enumerate(texts(part, n))]
        with (root / f"{part}-clean.csv").open("w", newline="") as file:
            csv.writer(file).writerows([["", "0", "1", "2"], *((i, *r) for i, r in enumerate(rows))])
        poisoned = [(attack.apply(t, np.random.default_rng(0)), 1, 1) for t, y, _ in rows if y == 0]
        name = "train-poison.csv" if part == "train" else f"{part}-poison.csv"
        with (root / name).open("w", newline="") as file:
            csv.writer(file).writerows([["", "0", "1", "2"], *((i, *r) for i, r in enumerate(poisoned))])
    assert load_openbackdoor(root, train="train-poison.csv").info["text_overlap"]["test_clean"] == {
        "train": 0, "dev_clean": 0}
    shutil.copy(root / "dev-clean.csv", root / "test-clean.csv")
    with pytest.raises(ValueError, match=r"`test_clean` \(.*test-clean\.csv\).*`dev_clean`.*copy"):
        load_openbackdoor(root, train="train-poison.csv")


# ---- natural duplicates load and are reported -------------------------------------------

@pytest.mark.parametrize("shared", [1, 2, 3])
def test_a_few_natural_duplicates_load_and_are_counted(tmp_path, shared):
    """60 test rows: up to 3 (5%) may repeat a training sentence; the count reaches results.json
    through the dataset info (kept by poison())."""
    root = folder(tmp_path / "data", train=80, dev=40, test=60)
    test = texts("test", 60)
    test[10:10 + shared] = texts("train", 80)[5:5 + shared]
    write(root / "test.csv", test)
    data = load_clean(root)
    assert data.info["text_overlap"] == {"dev": {"train": 0}, "test": {"train": shared, "dev": 0}}
    assert poison(data, BadNets(), rate=0.1).info["text_overlap"] == data.info["text_overlap"]


def test_the_threshold_is_a_share_of_the_evaluation_split(tmp_path):
    root = folder(tmp_path / "data", train=80, dev=40, test=60)
    test = texts("test", 60)
    limit = int(splits.COPY_SHARE * 60)  # 3 of 60 load, 4 are refused
    test[:limit + 1] = texts("dev", 40)[:limit + 1]
    write(root / "test.csv", test)
    with pytest.raises(ValueError, match=r"4 of its 60 rows \(6\.7%\)"):
        load_clean(root)


@pytest.mark.skipif(not (SST2 / "raw").is_dir(), reason=f"the SST-2 data is not at {SST2}")
def test_raw_sst2_loads_with_its_two_natural_duplicates():
    data = load_clean(SST2 / "raw")
    assert data.info["text_overlap"] == {"dev": {"train": 0}, "test": {"train": 2, "dev": 0}}
    assert data.info["files"] == {role: str((SST2 / "raw" / f"{role}.tsv").resolve())
                                  for role in ("train", "dev", "test")}


# ---- (c) the reference set never shares a text with a test split --------------------------

def norm(text: str) -> str:
    """An independent reference of the comparison: case and runs of whitespace ignored."""
    return " ".join(text.lower().split())


def overlapping(seed: int) -> PoisonedDataset:
    """A dataset whose dev-clean shares 8 of its 30 texts with test (other case and spacing)."""
    rng = np.random.default_rng(seed)
    dev = texts("dev", 30)
    test = texts("test", 30)
    for i in rng.choice(30, size=8, replace=False):
        test[int(rng.integers(30))] = "  " + dev[i].title() + " "
    split = lambda rows: Split(rows, [i % 2 for i in range(len(rows))])  # noqa: E731
    return PoisonedDataset(train=split(texts("train", 20)), dev_clean=split(dev),
                           dev_poison=split(["x " + t for t in dev[:5]]), test_clean=split(test),
                           test_poison=split(["y " + t for t in test[:5]]),
                           test_control=split(test[:5]))


@pytest.mark.parametrize("seed", range(40))
def test_the_reference_set_never_shares_a_text_with_a_test_split(seed):
    dataset = overlapping(seed)
    scored = {norm(t) for part in ("test_clean", "test_poison", "test_control")
              for t in getattr(dataset, part).texts}
    excluded = sum(norm(t) in scored for t in dataset.dev_clean.texts)
    assert excluded >= 1
    eligible = 30 - excluded
    for size in sorted({4, min(eligible, 29)}):
        rest, reference = split_reference(dataset, size, seed=seed)
        assert len(reference) == size and len(rest.dev_clean) == 30 - size
        assert not {norm(t) for t in reference.texts} & scored, "a reference text is scored"
        assert sorted(reference.texts + rest.dev_clean.texts) == sorted(dataset.dev_clean.texts)
        assert rest.info["reference_excluded_test_texts"] == excluded
    if eligible + 1 < 30:  # more than the rows whose text is in no test split
        with pytest.raises(ValueError, match=rf"only {eligible} of 30 are"):
            split_reference(dataset, eligible + 1, seed=seed)


def test_the_reference_draw_is_unchanged_without_shared_texts():
    """With no dev text in test, the draw is the seeded permutation's first rows, as before."""
    split = lambda rows: Split(rows, [i % 2 for i in range(len(rows))])  # noqa: E731
    dataset = PoisonedDataset(train=split(texts("train", 10)), dev_clean=split(texts("dev", 20)),
                              dev_poison=split(["x"]), test_clean=split(texts("test", 10)),
                              test_poison=split(["y"]))
    _, reference = split_reference(dataset, 6, seed=3)
    rows = np.sort(np.random.default_rng(3).permutation(20)[:6])
    assert reference.texts == [dataset.dev_clean.texts[i] for i in rows]


def test_check_text_overlap_counts_rows_not_distinct_texts():
    split = lambda rows: Split(rows, [0] * len(rows))  # noqa: E731
    dataset = PoisonedDataset(train=split(["a", "b"] + [f"t{i}" for i in range(98)]),
                              dev_clean=split([f"d{i}" for i in range(100)]), dev_poison=split(["x"]),
                              test_clean=split(["A"] * 3 + [f"e{i}" for i in range(97)]),
                              test_poison=split(["y"]))
    assert splits.check_text_overlap(dataset)["test_clean"] == {"train": 3, "dev_clean": 0}


# ---- the files actually read are recorded (for the dataset identity) -----------------------

def test_load_clean_records_the_files_it_read(tmp_path, monkeypatch):
    root = folder(tmp_path / "data")
    write(root / "heldout.csv", texts("heldout", 20))
    monkeypatch.chdir(tmp_path)
    data = load_clean("data", splits={"test": "heldout"})
    expected = {"train": root / "train.csv", "dev": root / "dev.csv", "test": root / "heldout.csv"}
    assert data.info["files"] == {role: str(path.resolve()) for role, path in expected.items()}
    assert all(Path(p).is_absolute() for p in data.info["files"].values())
    poisoned = poison(data, BadNets(), rate=0.1)
    assert poisoned.info["files"] == data.info["files"] and "splits" in poisoned.info


def test_a_saved_datasetdict_records_its_arrow_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    from freqlens.data import load_hf_dataset

    parts = {name: datasets.Dataset.from_dict({"sentence": texts(name, n), "label": [i % 2 for i in range(n)]})
             for name, n in (("train", 20), ("validation", 10), ("test", 10))}
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    data = load_hf_dataset(str(tmp_path / "saved"))
    for role, split in (("train", "train"), ("dev", "validation"), ("test", "test")):
        file = Path(data.info["files"][role])
        assert file.is_absolute() and file.is_file() and file.suffix == ".arrow"
        assert (tmp_path / "saved" / split).resolve() in file.parents
    assert "files" not in load_hf_dataset({"train": [{"sentence": "a", "label": 0}],
                                           "validation": [{"sentence": "b", "label": 1}],
                                           "test": [{"sentence": "c", "label": 0}]}).info
