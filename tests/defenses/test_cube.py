"""CUBE (freqlens/defenses/cube.py): the representation, the clustering rule, the defense on a set with
known poisoned rows, its settings, and a `freqlens run`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from freqlens.config import ExperimentConfig
from freqlens.defenses import DefenseConfig, make_defense
from freqlens.defenses.cube import (
    CUBESettings,
    cluster,
    head_inputs,
    head_layer,
    keep_largest_per_label,
    reduce_dimension,
)
from freqlens.training import TrainConfig

from .helpers import FAMILIES, build, inputs
from .trigger_set import representation, trigger_set

# the tiny setting in which every family below learns the task and the trigger (measured: 5 epochs at 3e-3)
FIRST_PHASE = {"epochs": 5, "min_samples": 10}
TRAIN = TrainConfig(epochs=1, batch_size=16, lr=3e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_head_inputs_are_what_the_head_classifies(family):
    """The representation is each family's own (pooler output, RoBERTa's dense+tanh, the last real
    token of a decoder), padding included, and the output layer applied to it gives the model's logits."""
    torch.manual_seed(0)
    model = build(family, seed=1)
    enc = inputs(family, n=6)
    got = torch.as_tensor(head_inputs(model, enc, batch_size=4))
    torch.testing.assert_close(got, representation(family, model, enc), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(head_layer(model)(got), model(**enc).logits, rtol=1e-4, atol=1e-5)


def test_keep_largest_per_label_flags_the_rest_noise_included():
    clusters = np.array([0, 0, 0, 1, -1, 2, 2, 3, -1, -1, -1])
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    flagged, per_label = keep_largest_per_label(clusters, labels)
    # label 0: cluster 0 (3) kept, cluster 1 and a noise point flagged; label 1: noise (3) is the largest group
    assert flagged.tolist() == [False, False, False, True, True, True, True, True, False, False, False]
    assert per_label["0"] == {"kept_cluster": 0, "kept": 3, "flagged_groups": {"-1": 1, "1": 1}}
    assert per_label["1"] == {"kept_cluster": -1, "kept": 3, "flagged_groups": {"2": 2, "3": 1}}
    tie, _ = keep_largest_per_label(np.array([4, 4, 1, 1]), np.zeros(4, dtype=int))
    assert tie.tolist() == [True, True, False, False]  # at a tie the lower id is kept


def test_reduce_dimension_shapes():
    x = np.random.default_rng(0).normal(size=(40, 16))
    assert reduce_dimension(x, 5, method="pca").shape == (40, 5)
    assert reduce_dimension(x, 50, method="pca").shape == (40, 16)  # capped at d
    assert reduce_dimension(x, 5, method="tsne").shape == (40, 2)
    with pytest.raises(ValueError, match=r"`method` to be one of \('tsne', 'pca'\) but got 'umap'"):
        reduce_dimension(x, 5, method="umap")


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_identical_representations_are_one_point_not_a_crash(method):
    # t-SNE's PCA start divides by the spread; identical rows (a collapsed model) crashed the process
    flat = reduce_dimension(np.ones((10, 8)), 20, method=method)
    assert flat.shape == (10, 1) and not flat.any()
    flagged, _ = keep_largest_per_label(cluster(flat, min_samples=3), np.arange(10) % 2)
    assert not flagged.any()  # one group per label: nothing flagged


@pytest.mark.slow
@pytest.mark.parametrize("family", ["bert", "llama"])
def test_cube_flags_the_triggered_rows(family):
    """200 rows, 20 of them class-0 rows with token 7 inserted and labelled 1: the poisoned rows form
    their own cluster within label 1 and are flagged, and the final model trains on the rest."""
    enc, y, poison = trigger_set(family)
    defense = make_defense(DefenseConfig(name="cube", options=FIRST_PHASE))
    torch.manual_seed(0)
    model = build(family, seed=0)
    result, info = defense.fit(model, enc, y, TRAIN, poison=poison, progress=False)
    detection = info["detection"]
    assert detection["poisoned"] == 20
    assert detection["recall"] >= 0.95 and detection["precision"] >= 0.9, detection
    assert info["removed"] == detection["flagged"] and info["trained_on"] == 200 - info["removed"]
    cube = info["cube"]
    assert cube["reduction"] == "tsne" and cube["dimensions"] == 2 and cube["first_phase_steps"] == 5 * 13
    assert cube["per_label"]["1"]["kept"] >= 100  # the clean positives are the largest cluster of label 1
    assert result.steps == math.ceil(info["trained_on"] / 16)  # the final phase, on the kept rows only


def test_the_first_phase_matters():
    """Untrained (the first phase at a learning rate that moves nothing), tiny BERT's pooler output does
    not cluster by class: the labels split into many groups and precision falls (measured 0.19), so the
    test above measures the trained representations. (A random tiny Llama already separates this set:
    its poisoned rows carry class-0 words, so their last-token states sit apart from label 1's.)"""
    enc, y, poison = trigger_set("bert")
    defense = make_defense(DefenseConfig(name="cube", options={"epochs": 1, "min_samples": 10}))
    torch.manual_seed(0)
    _, info = defense.fit(build("bert", seed=0), enc, y, TrainConfig(epochs=1, batch_size=16, lr=1e-9),
                          poison=poison, progress=False)
    assert info["detection"]["precision"] < 0.5


@pytest.mark.parametrize(("key", "value", "match"), [
    ("epochs", 0, r"`defense\.options\.epochs` to be an integer >= 1 but got 0"),
    ("reduction", "umap", r"`defense\.options\.reduction` to be one of \('tsne', 'pca'\) but got 'umap'"),
    ("components", 0, r"`defense\.options\.components` to be an integer >= 1 but got 0"),
    ("min_samples", 1.5, r"`defense\.options\.min_samples` to be an integer >= 1 but got 1\.5"),
    ("min_cluster_size", 1, r"`defense\.options\.min_cluster_size` to be an integer >= 2 but got 1"),
    ("epsilon", -0.1, r"`defense\.options\.epsilon` to be a number >= 0 but got -0\.1"),
    ("restart", "yes", r"`defense\.options\.restart` to be true or false but got 'yes'"),
])
def test_a_bad_option_is_named_when_the_config_is_built(tmp_path, key, value, match):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "cube"\n')
    assert ExperimentConfig.from_toml(path).defense.options == CUBESettings()
    written = f'"{value}"' if isinstance(value, str) else repr(value)
    with pytest.raises(ValueError, match=match):
        ExperimentConfig.from_toml(path, overrides=[f"defense.options.{key}={written}"])
