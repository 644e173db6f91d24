"""The example defense of docs/defenses.md ("Writing a defense"), taken from the page, registered and run.

The code block is written to a module file and imported (as a user would), so
that it registers itself; then it goes through the defense contract and
through `freqlens run` on a tiny BERT, with its own setting from `--set
defense.options.smoothing=...`.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

import pytest
import torch

from freqlens.cli import main
from freqlens.config import ExperimentConfig, list_settings
from freqlens.defenses import DEFENSES, DefenseConfig, make_defense, unregister_defense
from freqlens.defenses.base import defense_class
from freqlens.training import TrainConfig
from tests.defenses.test_contract import test_prepare_train_save_load_merge as contract
from tests.test_run import _check_results, _tiny_experiment

DOC = Path(__file__).resolve().parents[1] / "docs" / "defenses.md"
MODULE = "label_smoothing"


def example_code() -> str:
    """The python block of the "Writing a defense" section."""
    section = DOC.read_text(encoding="utf-8").split("## Writing a defense", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "expected one python block in docs/defenses.md, 'Writing a defense'"
    return blocks[0]


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The example module, written to a folder on sys.path and imported; unregistered afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(example_code(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MODULE, None)
    module = importlib.import_module(MODULE)
    yield module
    for name in ("label-smoothing", f"{MODULE}:LabelSmoothing"):
        if name in DEFENSES:
            unregister_defense(name)
    sys.modules.pop(MODULE, None)


def test_the_example_registers_and_keeps_the_contract(example, tmp_path):
    assert "label-smoothing" in DEFENSES and defense_class("label-smoothing") is example.LabelSmoothing
    for family in ("bert", "gpt2"):
        contract(tmp_path / family, "label-smoothing", family)


def test_the_example_smooths_the_loss(example):
    """Its training loss is label-smoothed cross-entropy: compared with torch's on the same logits."""
    from tests.defenses.helpers import build, inputs, labels

    model = build("bert")
    config = DefenseConfig(name="label-smoothing", options={"smoothing": 0.3})
    defense = make_defense(config)
    enc, y = inputs("bert", n=4), labels(4)
    with torch.no_grad():
        model.eval()
        expected = torch.nn.functional.cross_entropy(model(**enc).logits, y, label_smoothing=0.3)
    result, info = defense.fit(model, enc, y.numpy(), _one_step(), progress=False)
    assert info["label_smoothing"] == 0.3 and info["name"] == "label-smoothing"
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)


def _one_step():
    from freqlens.training import TrainConfig

    return TrainConfig(epochs=1, batch_size=4, lr=1e-9)


def test_its_options_are_checked_named_and_listed(example, tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "label-smoothing"\n')
    assert ExperimentConfig.from_toml(path).defense.options == example.LabelSmoothingOptions(smoothing=0.1)
    with pytest.raises(ValueError, match=r"`defense\.options\.smoothing` in \[0, 1\) but got 1\.5"):
        ExperimentConfig.from_toml(path, overrides=["defense.options.smoothing=1.5"])
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['defense\.options\.smoothness'\]"):
        ExperimentConfig.from_toml(path, overrides=["defense.options.smoothness=0.2"])
    listed = {s.key: s for s in list_settings()}["defense.options.smoothing"]
    assert listed.default == 0.1 and "'label-smoothing'" in listed.meaning and "spread evenly" in listed.meaning


def test_a_defense_named_by_its_import_path_is_imported_and_registered(example, tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "label_smoothing:LabelSmoothing"\n[defense.options]\nsmoothing = 0.2\n')
    config = ExperimentConfig.from_toml(path)
    assert type(make_defense(config.defense)).__name__ == "LabelSmoothing"
    assert config.defense.options.smoothing == 0.2
    path.write_text('[defense]\nname = "label_smoothing:NoSuchClass"\n')
    with pytest.raises(ValueError, match=r"`defense\.name` 'label_smoothing:NoSuchClass' .* has no 'NoSuchClass'"):
        ExperimentConfig.from_toml(path)
    path.write_text('[defense]\nname = "label_smoothing:LabelSmoothingOptions"\n')  # a class, not a Defense
    with pytest.raises(ValueError, match=r"`defense\.name` .* to name a subclass of freqlens.defenses.Defense"):
        ExperimentConfig.from_toml(path)
    (tmp_path / "broken_defense.py").write_text("raise RuntimeError('broken on import')\n")
    path.write_text('[defense]\nname = "broken_defense:Anything"\n')  # any error on import is named
    with pytest.raises(ValueError, match=r"`defense\.name` .* cannot be imported \(RuntimeError: broken on import\)"):
        ExperimentConfig.from_toml(path)


def test_the_example_runs_through_freqlens_run(example, tmp_path, capsys):
    config = _tiny_experiment(tmp_path, """
[train]
epochs = 1
batch_size = 16
[record]
schedule = "log:4"
probe_size = 8
[analysis]
num_widths = 3
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--set", "defense.name=label-smoothing",
                 "--set", "defense.options.smoothing=0.2"]) == 0, capsys.readouterr().err
    results = _check_results(out)
    assert results["defense"]["name"] == "label-smoothing" and results["defense"]["label_smoothing"] == 0.2
    assert results["config"]["defense"]["options"] == {"smoothing": 0.2}
    stored = json.loads((out / "results.json").read_text())["config"]
    assert ExperimentConfig.from_dict(stored).defense.options.smoothing == 0.2


def test_the_freqlens_script_finds_a_defense_module_in_the_working_directory(example, tmp_path, monkeypatch,
                                                                              capsys):
    """The `freqlens` console script (unlike `python -m freqlens.cli`) has no working directory on
    sys.path; the docs say a defense module there is found, and --list-keys lists its options."""
    (tmp_path / "my_smoothing.py").write_text(Path(example.__file__).read_text(encoding="utf-8").replace(
        'register_defense("label-smoothing", LabelSmoothing)', ""))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert main(["run", "--list-keys", "--set", "defense.name=my_smoothing:LabelSmoothing"]) == 0
        assert "defense.options.smoothing = 0.1  # " in capsys.readouterr().out
    finally:
        unregister_defense("my_smoothing:LabelSmoothing")
        sys.modules.pop("my_smoothing", None)


# ------------------------------------------------------------------ the filter example ("Writing a filter")
def filter_example_code() -> str:
    section = DOC.read_text(encoding="utf-8").split("## Writing a filter", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "expected one python block in docs/defenses.md, 'Writing a filter'"
    return blocks[0]


def test_the_filter_example_drops_the_dirty_label_rows_and_retrains(tmp_path, monkeypatch):
    from tests.defenses.helpers import build
    from tests.defenses.trigger_set import trigger_set

    (tmp_path / "high_loss.py").write_text(filter_example_code(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("high_loss", None)
    importlib.import_module("high_loss")
    try:
        encodings, labels, poison = trigger_set("bert")  # 20 class-0 rows with the trigger, labelled 1
        defense = make_defense(DefenseConfig(name="high-loss", options={"rate": 0.1, "epochs": 3}))
        torch.manual_seed(0)
        model = build("bert")
        defense.prepare(model)
        result, info = defense.fit(model, encodings, labels, TrainConfig(epochs=1, batch_size=16, lr=3e-3),
                                   poison=poison, progress=False)
        assert info["detection"]["flagged"] == 20 and info["trained_on"] == 180
        assert info["detection"]["precision"] >= 0.9, info["detection"]
        assert info["flagged_rows"] == sorted(info["flagged_rows"]) and "loss_threshold" in info
        with pytest.raises(ValueError, match=r"`defense.options.rate` in \(0, 1\)"):
            DefenseConfig(name="high-loss", options={"rate": 2.0})
    finally:
        unregister_defense("high-loss")
        sys.modules.pop("high_loss", None)
