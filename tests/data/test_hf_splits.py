"""Hugging Face datasets through `freqlens run` (issue 12, item 7) and a missing `data.path`.

`[data]` names the dataset configuration (`data.config_name`, datasets' `name`)
and the splits (`data.splits`); a split with hidden labels (GLUE's test: all
-1) is refused naming the split and the key; a split named for two roles is
carved into disjoint parts; and no example a model trains on (the training
split, the gradient-alignment reference set drawn from dev-clean) is ever in
a test split. Real `datasets.Dataset` objects, built locally.
"""

import dataclasses

import numpy as np
import pytest

from freqlens.config import DataConfig, ExperimentConfig
from freqlens.data import AddSent, CleanDataset, PoisonedDataset, load_hf_dataset, poison
from freqlens.data.experiment import load_experiment
from freqlens.data.splits import split_reference

datasets = pytest.importorskip("datasets", reason="the `datasets` package (freqlens[hf]) is not installed")


def load_dataset(config: ExperimentConfig):
    """The poisoned experiment of ``config``, loaded as ``freqlens run`` loads it."""
    return load_experiment(config.data, config.attack, seed=config.train.seed)


def split_of(name: str, n: int, hidden: bool = False):
    return datasets.Dataset.from_dict({
        "sentence": [f"{name} sentence number {i}" for i in range(n)],
        "label": [-1] * n if hidden else [i % 2 for i in range(n)],
    })


def glue_like(hidden_test: bool = True):
    """GLUE SST-2's shape: labelled train and validation, a test split whose labels are -1."""
    return datasets.DatasetDict({"train": split_of("train", 40), "validation": split_of("validation", 24),
                                 "test": split_of("test", 10, hidden=hidden_test)})


def config(**data) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"data": {"path": "glue", "format": "hf", **data},
                                       "attack": {"name": "addsent", "rate": 0.1}})


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` replaced by a local GLUE-like DatasetDict; records its arguments."""
    calls = []

    def load_dataset(path, name=None, *args, **kwargs):
        calls.append((path, name))
        return glue_like()

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_the_config_name_is_passed_to_load_dataset(hub):
    dataset = load_dataset(config(config_name="sst2", splits={"test": "validation"}))
    assert hub == [("glue", "sst2")]
    assert "glue/sst2" in dataset.name


def test_a_split_with_hidden_labels_is_refused_naming_the_split_and_the_key(hub):
    with pytest.raises(ValueError, match=r"split 'test' of glue/sst2 \(the test split\) but got -1 for "
                                         r"10 of its 10 .*`data\.splits\.test`"):
        load_dataset(config(config_name="sst2"))


def _texts(*splits):
    return [set(split.texts) for split in splits]


@pytest.mark.parametrize("reference_size", [4, 8])
def test_dev_reused_as_test_is_carved_and_the_reference_is_never_scored(hub, reference_size):
    dataset = load_dataset(config(config_name="sst2", splits={"test": "validation"}))
    dataset, reference = split_reference(dataset, reference_size, seed=0)
    dev, test, ref, train = _texts(dataset.dev_clean, dataset.test_clean, reference, dataset.train)
    assert not (ref & test) and not (dev & test) and not (train & test) and not (ref & dev)
    # the two halves of validation, the reference carved out of the dev half
    assert len(test) == 12 and len(dev) + len(ref) == 12
    assert dev | test | ref == set(glue_like()["validation"]["sentence"])
    control = {t for t in dataset.test_control.texts}
    assert control <= test  # the test probes' sources are test examples
    assert dataset.info["splits"]["test"] == "split 'validation': 12 of 24 rows (seed 0)"


def test_python_reuse_of_a_split_for_dev_and_test_keeps_the_reference_out_of_test():
    """The advice for GLUE in Python: splits=("train", "validation", "validation")."""
    clean = load_hf_dataset(glue_like(), splits=("train", "validation", "validation"))
    dataset, reference = split_reference(poison(clean, AddSent(), rate=0.1), 4, seed=0)
    assert not set(reference.texts) & set(dataset.test_clean.texts)
    assert not set(dataset.dev_clean.texts) & set(dataset.test_clean.texts)


def test_a_test_split_carved_from_train_is_held_out_deterministically(hub):
    first = load_dataset(config(splits={"test": "train"}, holdout=0.25))
    again = load_dataset(config(splits={"test": "train"}, holdout=0.25))
    other = load_dataset(dataclasses.replace(config(splits={"test": "train"}, holdout=0.25),
                                             train=dataclasses.replace(ExperimentConfig().train, seed=1)))
    train, test = _texts(first.train, first.test_clean)
    assert len(test) == 10 and len(train) == 30 and not train & test
    assert first.test_clean.texts == again.test_clean.texts != other.test_clean.texts


def test_a_dataset_saved_to_disk_runs_through_the_config(tmp_path):
    glue_like().save_to_disk(tmp_path / "saved")
    dataset = load_dataset(ExperimentConfig.from_dict({
        "data": {"path": str(tmp_path / "saved"), "splits": {"test": "validation"}},
        "attack": {"name": "addsent"}}))
    assert len(dataset.train) == 40 and len(dataset.test_clean) == 12
    data = load_hf_dataset(datasets.load_from_disk(str(tmp_path / "saved")), splits={"test": "validation"})
    assert data.test.texts == dataset.test_clean.texts


def test_splits_sharing_examples_are_refused_where_they_are_built():
    data = load_hf_dataset(glue_like(hidden_test=False))
    with pytest.raises(ValueError, match=r"split `test` to share no example with `train`"):
        CleanDataset(data.train, data.dev, data.train, 2)
    poisoned = poison(data, AddSent(), rate=0.1)
    with pytest.raises(ValueError, match=r"split `test_clean` to share no example with `dev_clean`"):
        dataclasses.replace(poisoned, test_clean=poisoned.dev_clean)
    with pytest.raises(ValueError, match=r"split `dev_clean` to share no example with `train`"):
        PoisonedDataset(poisoned.train, poisoned.train, poisoned.dev_poison, poisoned.test_clean,
                        poisoned.test_poison)
    # the same Dataset object under two split names is the same examples: carved, not shared
    same = split_of("validation", 24)
    carved = load_hf_dataset(datasets.DatasetDict({"train": split_of("train", 40), "validation": same,
                                                   "test": same}))
    assert not set(carved.dev.texts) & set(carved.test.texts)


def test_data_splits_and_holdout_are_checked_and_set_from_the_command_line(tmp_path):
    with pytest.raises(ValueError, match=r"`data\.splits` to be a table with some of the keys"):
        DataConfig(splits={"tst": "validation"})
    with pytest.raises(ValueError, match=r"`data\.holdout` in \(0, 0\.5\)"):
        DataConfig(holdout=0.5)
    path = tmp_path / "c.toml"
    path.write_text('[data]\npath = "glue"\nformat = "hf"\nconfig_name = "sst2"\n')
    loaded = ExperimentConfig.from_toml(path, ['data.splits={test = "validation"}'])
    assert loaded.data.splits == {"test": "validation"} and loaded.data.config_name == "sst2"


# --- a data.path that does not exist ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["auto", "clean", "openbackdoor"])
@pytest.mark.parametrize("relative", [False, True])
def test_a_missing_data_path_is_reported_as_such(tmp_path, monkeypatch, fmt, relative):
    monkeypatch.chdir(tmp_path)
    path = "./no-such-folder/sst-2" if relative else str(tmp_path / "no-such-folder" / "sst-2")
    experiment = ExperimentConfig.from_dict({"data": {"path": path, "format": fmt}})  # attack: none
    with pytest.raises(FileNotFoundError, match=r"`data\.path` .* but '.*no-such-folder/sst-2' is nothing "
                                                rf"there \(resolved: {tmp_path}/no-such-folder/sst-2\)"):
        load_dataset(experiment)


def test_a_name_datasets_cannot_load_is_reported_as_data_path(monkeypatch):
    def load_dataset_offline(path, name=None, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach {path!r} on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset_offline)
    experiment = ExperimentConfig.from_dict({"data": {"path": "glu", "config_name": "sst2"},
                                             "attack": {"name": "addsent"}})
    with pytest.raises(FileNotFoundError, match=r"`data\.path` .* no folder .*glu and `datasets` could "
                                                r"not load 'glu' \(`data\.config_name` = 'sst2'\)"):
        load_dataset(experiment)
    with pytest.raises(ValueError, match=r"`attack\.name` .* read as a Hugging Face dataset name: "
                                         r"there is no folder"):
        load_dataset(dataclasses.replace(experiment, attack=ExperimentConfig().attack))


def test_splits_and_config_name_are_refused_for_an_openbackdoor_folder(tmp_path):
    (tmp_path / "ob").mkdir()
    (tmp_path / "ob" / "dev-poison.csv").write_text(",0,1,2\n")
    experiment = ExperimentConfig.from_dict({"data": {"path": str(tmp_path / "ob"), "config_name": "x",
                                                      "splits": {"test": "validation"}}})
    with pytest.raises(ValueError, match=r"no `data\.splits` or `data\.config_name` for the OpenBackdoor"):
        load_dataset(experiment)
