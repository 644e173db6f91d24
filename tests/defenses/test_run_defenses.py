"""Every defense of issue 15 through `freqlens run` on a tiny experiment: what it writes into results.json
(clean examples; for a filter: removed, trained on, detection against the dataset's poison count) and
its own entries, with options given in the config (stored and read back)."""

from __future__ import annotations

import json

import pytest

from freqlens.cli import main
from freqlens.config import ExperimentConfig
from freqlens.defenses.base import defense_class
from freqlens.defenses.filtering import FilteringDefense

# name -> ([defense.options] for a tiny run, a check of the defense's own results.json entries)
CASES = {
    "early-loss": ({"rate": 0.1}, lambda d, r: d["median_loss_flagged"] <= d["loss_threshold"]),
    "graceful": ({"pca_rank": 8}, lambda d, r: d["graceful"]["head"] == "classifier"
                 and sum(d["graceful"]["clusters"]) == r["dataset"]["train"]),
    "cube": ({"min_samples": 10}, lambda d, r: set(d["cube"]) >= {"clusters", "noise", "per_label",
                                                                   "first_phase_steps"}),
    "bki": ({"max_tokens": 16}, lambda d, r: d["bki"]["sentences_scored"] == r["dataset"]["train"]),
    "dece": ({"alpha_base": 0.9}, lambda d, r: d["dece"]["final_alpha"] == pytest.approx(0.9)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_each_defense_runs_through_freqlens_run(tmp_path, capsys, name):
    from tests.test_run import _tiny_experiment

    options, check = CASES[name]
    table = "\n".join(f"{key} = {json.dumps(value)}" for key, value in options.items())
    config = _tiny_experiment(tmp_path, f"""
[train]
epochs = 1
batch_size = 16
[record]
schedule = "log:4"
probe_size = 8
[analysis]
num_widths = 3
[defense]
name = "{name}"
[defense.options]
{table}
""")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    defense = results["defense"]
    assert defense["name"] == name and defense["clean_examples"] == 0
    assert 0 <= results["cacc"] <= 1 and 0 <= results["asr"] <= 1
    if issubclass(defense_class(name), FilteringDefense):
        assert defense["removed"] + defense["trained_on"] == results["dataset"]["train"]
        assert defense["removed"] == defense["detection"]["flagged"] > 0
        assert defense["detection"]["poisoned"] == results["dataset"]["train_poisoned"]
        assert results["steps"] == -(-defense["trained_on"] // 16)  # the recorded phase: the kept rows only
    assert check(defense, results)
    stored = ExperimentConfig.from_dict(results["config"]).defense.options
    assert {key: getattr(stored, key) for key in options} == options
