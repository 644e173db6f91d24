"""ABL's budget (`defense.abl.budget`), its detection metrics on a task with known poison, and stored
configs of earlier versions (which shared `train.epochs` among ABL's phases)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from freqlens.config import ExperimentConfig
from freqlens.defenses import DefenseConfig, fit_defense, prepare_model
from freqlens.defenses.filtering import detection_metrics
from freqlens.training import TrainConfig, steps_per_epoch

from .helpers import build

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import random_encodings

N, POISONED, TRIGGER = 40, 4, 7


def poisoned_task(seed: int):
    """Random inputs with random labels, and 4 rows replaced by the trigger (one token repeated) labelled 1:
    the poisoned rows are known, and the trigger is what a model learns first."""
    rng = np.random.default_rng(seed)
    encodings = random_encodings(N, 8, seed=seed)
    y = rng.integers(0, 2, N)
    rows = rng.choice(N, POISONED, replace=False)
    encodings["input_ids"][torch.as_tensor(rows), :] = TRIGGER
    y[rows] = 1
    poison = np.zeros(N, dtype=bool)
    poison[rows] = True
    return encodings, y, poison


@pytest.mark.parametrize("seed", [0, 1])
def test_abl_isolates_the_poisoned_rows_and_reports_their_detection(seed):
    encodings, y, poison = poisoned_task(seed)
    config = DefenseConfig(name="abl", abl={"isolation_rate": POISONED / N, "isolation_epochs": 3,
                                            "unlearn_epochs": 1})
    torch.manual_seed(seed)
    model = prepare_model(build("bert", seed=seed), config).model
    result, info = fit_defense(model, encodings, y, config, TrainConfig(epochs=1, batch_size=8, lr=1e-2),
                               poison=poison, progress=False)
    detection = info["detection"]
    assert detection == {"flagged": POISONED, "poisoned": POISONED, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert info["abl"]["isolated"] == POISONED and info["abl"]["isolated_poison_share"] == 1.0
    assert info["removed"] == POISONED and info["trained_on"] == N - POISONED  # as every filter reports them
    assert info["flagged_rows"] == np.flatnonzero(poison).tolist()
    # full budget: 3 isolation epochs, the clean phase's 1 (train.epochs) on the 36 kept, 1 unlearning epoch
    assert info["abl"]["phase_steps"] == [3 * steps_per_epoch(N, 8), steps_per_epoch(N - POISONED, 8), 1]
    assert result.steps == sum(info["abl"]["phase_steps"])


def test_abl_detection_without_poison_flags_counts_only():
    encodings, y, _ = poisoned_task(0)
    config = DefenseConfig(name="abl", abl={"isolation_rate": 0.1, "unlearn_epochs": 0})
    model = prepare_model(build("bert"), config).model
    _, info = fit_defense(model, encodings, y, config, TrainConfig(epochs=1, batch_size=8, lr=1e-3), progress=False)
    assert info["detection"] == detection_metrics(np.arange(N) < 4, None)  # 4 flagged, no precision/recall
    assert info["abl"]["isolated_poison_share"] is None


def test_the_budget_is_checked_when_the_config_is_built(tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "abl"\n')
    assert ExperimentConfig.from_toml(path).defense.abl.budget == "full"
    assert ExperimentConfig.from_toml(path, overrides=['defense.abl.budget="shared"']).defense.abl.budget == "shared"
    with pytest.raises(ValueError, match=r"`defense\.abl\.budget` to be one of \('full', 'shared'\) but got 'scaled'"):
        ExperimentConfig.from_toml(path, overrides=['defense.abl.budget="scaled"'])


@pytest.mark.parametrize(("stored", "budget"), [
    ({"name": "abl", "abl": {"isolation_rate": 0.05}}, "shared"),  # before `budget`: the phases shared the epochs
    ({"name": "abl", "abl_gamma": 0.3}, "shared"),  # the flat keys of still earlier versions
    ({"name": "abl"}, "shared"),
    ({"name": "abl", "abl": {"budget": "full"}}, "full"),  # written by this version: kept
    ({"name": "vanilla"}, "full"),  # not an ABL run: today's default, so it groups with today's runs
])
def test_a_stored_config_of_an_earlier_version_reads_as_it_ran(stored, budget):
    upgraded = ExperimentConfig.upgrade({"defense": stored, "train": {"epochs": 2}})
    assert upgraded["defense"]["abl"]["budget"] == budget
    config = ExperimentConfig.from_dict(upgraded)
    assert config.defense.abl.budget == budget
    assert ExperimentConfig.upgrade(config.to_dict())["defense"] == upgraded["defense"]  # stable once upgraded
