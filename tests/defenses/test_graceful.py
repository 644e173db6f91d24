"""GraCeFul (freqlens/defenses/graceful.py): per-example head gradients in closed form against autograd on
every family, the DCT block against a dense DCT matrix, the clustering on a planted minority, detection on
a tiny model with a known trigger, its settings, and a run through `freqlens run`."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from freqlens.config import ExperimentConfig
from freqlens.defenses import DEFENSES, DefenseConfig, filtering, make_defense
from freqlens.defenses import graceful as graceful_module
from freqlens.defenses.filtering import detection_metrics
from freqlens.defenses.graceful import (
    GracefulSettings,
    classification_head,
    cluster_flags,
    head_gradients,
    low_frequency_block,
)
from freqlens.defenses.placement import apply_mslr
from freqlens.training import TrainConfig, train

from .helpers import FAMILIES, build, inputs, labels

HEADS = {"bert": "classifier", "roberta": "classifier.out_proj", "gpt2": "score", "llama": "score"}


# ------------------------------------------------------------------ per-example head gradients
def _autograd_gradients(model, head, encodings, y) -> np.ndarray:
    """dL_i/dW of the head, one example per backward pass (the reference)."""
    model.eval()
    rows = []
    for i in range(len(y)):
        model.zero_grad()
        logits = model(**{k: v[i:i + 1] for k, v in encodings.items()}).logits
        torch.nn.functional.cross_entropy(logits, y[i:i + 1]).backward()
        rows.append(head.weight.grad.detach().clone().numpy())
    return np.stack(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_closed_form_head_gradients_equal_autograd_per_example(family):
    model = build(family, seed=0)
    encodings, y = inputs(family, n=5), labels(5)  # row 1 padded: decoders pool before the padding
    name, head = classification_head(model)
    assert name == HEADS[family]
    requires = [p.requires_grad for p in model.parameters()]
    got = head_gradients(model, encodings, y, batch_size=3)  # batches of 3 and 2: rows independent of batching
    assert got.shape == (5, 2, 32)
    assert [p.requires_grad for p in model.parameters()] == requires  # flags restored
    np.testing.assert_allclose(got, _autograd_gradients(model, head, encodings, y), rtol=1e-4, atol=1e-6)
    assert np.abs(got).max() > 1e-3


def test_a_decoder_with_an_mslr_head_takes_the_gradient_of_its_last_layer():
    model = build("gpt2", seed=0)
    apply_mslr(model, target="score")  # score -> MSLRHead(MSLR(hidden -> 16), 16 -> classes)
    name, head = classification_head(model)
    assert name == "score.1" and head.in_features == 16
    encodings, y = inputs("gpt2", n=3), labels(3)
    np.testing.assert_allclose(head_gradients(model, encodings, y), _autograd_gradients(model, head, encodings, y),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("targets", [("query", "value"), ("classifier",)])
def test_under_peft_lora_the_gradient_is_that_of_the_heads_base_weight(targets):
    """LoRA on the encoder (the head stays a plain nn.Linear under peft's wrapper) or on the head itself
    (its base layer is the head; the LoRA update is added after it)."""
    from freqlens.defenses import LoraSettings, add_lora

    model = add_lora(build("bert", seed=0), LoraSettings(targets=list(targets)))
    name, head = classification_head(model)
    assert name.endswith("classifier" if targets[0] != "classifier" else "classifier.base_layer")
    torch.manual_seed(0)
    for p in model.parameters():  # LoRA's B starts at zero: move it so that the update matters
        if p.requires_grad:
            p.data.add_(0.1 * torch.randn_like(p))
    head.weight.requires_grad_(True)  # frozen by LoRA; the reference needs its gradient
    encodings, y = inputs("bert", n=3), labels(3)
    np.testing.assert_allclose(head_gradients(model, encodings, y), _autograd_gradients(model, head, encodings, y),
                               rtol=1e-4, atol=1e-6)


def test_a_model_without_a_classification_head_or_with_bad_labels_is_refused():
    model = build("bert", seed=0)
    model.classifier = torch.nn.Linear(32, 3)  # no layer outputs config.num_labels = 2
    with pytest.raises(ValueError, match=r"nn\.Linear classification head with 2 outputs"):
        classification_head(model)
    model = build("bert", seed=0)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        head_gradients(model, inputs("bert", n=2), [0, 2])
    with pytest.raises(ValueError, match="one label per example"):
        head_gradients(model, inputs("bert", n=2), [0])


# ------------------------------------------------------------------ the frequency space
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: D[k, j] = sqrt(2/n) c_k cos(pi (2j + 1) k / (2n)), c_0 = 1/sqrt(2)."""
    k, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * j + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


@pytest.mark.parametrize(("classes", "hidden", "ratio", "keep"), [(2, 32, 0.125, 4), (3, 20, 0.3, 6),
                                                                   (2, 5, 0.1, 1), (4, 16, 1.0, 16)])
def test_the_low_frequency_block_is_the_corner_of_the_dense_2d_dct(classes, hidden, ratio, keep):
    rng = np.random.default_rng(0)
    gradients = rng.normal(size=(6, classes, hidden))
    got = low_frequency_block(gradients, ratio)
    dense = np.einsum("ka,nab,lb->nkl", _dct_matrix(classes), gradients, _dct_matrix(hidden))  # D_C G D_H^T
    assert got.shape == (6, classes, keep)
    np.testing.assert_allclose(got, dense[:, :, :keep], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(dense, axis=(1, 2)), np.linalg.norm(gradients, axis=(1, 2)))


def test_the_dc_row_along_the_classes_of_a_head_gradient_is_zero():
    """Why the class axis is kept whole: the softmax residual sums to zero over the classes."""
    model = build("bert", seed=0)
    block = low_frequency_block(head_gradients(model, inputs("bert", n=4), labels(4)), 0.5)
    assert np.abs(block[:, 0]).max() < 1e-6 < np.abs(block[:, 1]).max()


def test_the_block_refuses_a_bad_shape_or_ratio():
    with pytest.raises(ValueError, match=r"shape \(N, C, H\)"):
        low_frequency_block(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"`ratio` in \(0, 1\]"):
        low_frequency_block(np.zeros((3, 2, 4)), 0.0)


# ------------------------------------------------------------------ clustering
@pytest.mark.parametrize("seed", range(3))
def test_the_smaller_cluster_is_a_planted_minority(seed):
    """150 rows around one direction, 15 around another: the 15 are the smaller cluster, exactly."""
    rng = np.random.default_rng(seed)
    majority, minority = rng.normal(size=40), rng.normal(size=40)
    planted = np.zeros(165, dtype=bool)
    planted[rng.choice(165, 15, replace=False)] = True
    features = np.where(planted[:, None], minority, majority) + 0.3 * rng.normal(size=(165, 40))
    found = cluster_flags(features, pca_rank=8)
    np.testing.assert_array_equal(found.flagged, planted)
    assert found.sizes == [150, 15] and found.components == 8


@pytest.mark.parametrize("seed", range(3))
def test_with_one_cluster_per_label_and_one_more_the_smallest_is_the_planted_minority(seed):
    """A classifier's gradients: two labels in opposite directions (r_i = +-(1, -1)), 15 rows of label 1 with
    head inputs of their own. Two clusters follow the labels and miss them; three find the 15."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, size=165)
    planted = np.zeros(165, dtype=bool)
    planted[rng.choice(np.flatnonzero(label == 1), 15, replace=False)] = True
    common, own = rng.normal(size=40), rng.normal(size=40)
    h = np.where(planted[:, None], own, common) + 0.3 * rng.normal(size=(165, 40))
    residual = np.where(label[:, None] == 1, 1.0, -1.0) * np.array([1.0, -1.0])  # (165, 2)
    gradients = residual[:, :, None] * h[:, None, :]  # r_i h_i^T
    features = gradients.reshape(165, -1)
    two = cluster_flags(features, pca_rank=8, clusters=2)
    assert not (two.flagged & planted).any()  # split along the labels (about): the 15 go with label 1
    three = cluster_flags(features, pca_rank=8, clusters=3)
    np.testing.assert_array_equal(three.flagged, planted)
    assert three.sizes[-1] == 15


def test_directions_without_variance_are_not_inflated_into_features():
    """A column that is constant up to rounding stays out of the clustering (standardising would blow it up)."""
    rng = np.random.default_rng(0)
    planted = np.arange(40) < 5
    features = np.zeros((40, 3))
    features[:, 0] = np.where(planted, 5.0, 0.0) + 0.1 * rng.normal(size=40)
    features[:, 1] = 1e-13 * rng.normal(size=40)  # numerical noise
    found = cluster_flags(features)
    assert found.components == 1
    np.testing.assert_array_equal(found.flagged, planted)
    assert cluster_flags(np.ones((10, 4))).flagged.sum() == 0  # no variance at all: nothing flagged
    assert cluster_flags(np.eye(2)).sizes == [2]  # too few rows to split
    with pytest.raises(ValueError, match="`clusters` to be an integer >= 2"):
        cluster_flags(features, clusters=1)


# ------------------------------------------------------------------ detection on a tiny model
def _triggered(n: int = 160, length: int = 8, copies: int = 6, rate: float = 0.1, seed: int = 0):
    """Random rows and labels; a known ``rate`` of them get token 3 at ``copies`` positions and label 1."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 100, size=(n, length))
    y = rng.integers(0, 2, size=n)
    poison = np.zeros(n, dtype=bool)
    poison[rng.choice(n, int(rate * n), replace=False)] = True
    for row in np.flatnonzero(poison):
        ids[row, rng.choice(length, copies, replace=False)] = 3
    y[poison] = 1
    encodings = {"input_ids": torch.as_tensor(ids), "attention_mask": torch.ones(n, length, dtype=torch.long),
                 "token_type_ids": torch.zeros(n, length, dtype=torch.long)}
    return encodings, y, poison


def test_graceful_flags_the_triggered_rows_of_a_tiny_bert_and_trains_on_the_rest():
    """The paper's setting (no warm-up): a fresh tiny BERT, 16 of 160 rows carrying the trigger.

    Measured (seeds 0-2, this data, 3 clusters): with the whole hidden axis (ratio 1) precision 1.00,
    recall 0.75-0.88; with the paper's 1/8 of a 32-wide hidden axis (4 coefficients) seeds 0 and 1 find
    none of them (asserted below, so that the test can fail either way)."""
    encodings, y, poison = _triggered()
    defense = make_defense(DefenseConfig(name="graceful", options={"ratio": 1.0}))
    model = defense.prepare(build("bert", seed=0)).model
    result, info = defense.fit(model, encodings, y, TrainConfig(epochs=1, batch_size=32, lr=1e-3),
                               poison=poison, progress=False)
    detection = info["detection"]
    assert detection["precision"] >= 0.9 and detection["recall"] >= 0.75, detection
    assert info["removed"] == detection["flagged"] and info["trained_on"] == 160 - info["removed"]
    assert result.steps == int(np.ceil(info["trained_on"] / 32))
    graceful = info["graceful"]
    assert graceful["head"] == "classifier" and graceful["features"] == 2 * 32
    assert sum(graceful["clusters"]) == 160 and len(graceful["clusters"]) == 3  # num_labels + 1
    assert graceful["clusters"][-1] == info["removed"]

    paper = make_defense(DefenseConfig(name="graceful"))  # ratio 1/8: 4 of 32 hidden coefficients
    flags = paper.flag(build("bert", seed=0), encodings, y, TrainConfig(), reference=None, progress=False)
    assert detection_metrics(flags.flagged, poison)["precision"] < 0.1  # 4 coefficients: not the trigger


def test_a_warm_up_trains_before_the_gradients_and_the_final_model_starts_from_the_initial_weights(monkeypatch):
    encodings, y, poison = _triggered(n=32)
    defense = make_defense(DefenseConfig(name="graceful", options={"warmup_epochs": 1}))
    model = build("bert", seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def spy(model, *args, **kwargs):
        seen["moved"] = any(not torch.equal(v, initial[k]) for k, v in model.state_dict().items())
        return head_gradients(model, *args, **kwargs)

    def final_train(model, *args, **kwargs):  # the final phase: record the weights it starts from
        seen["restarted"] = all(torch.equal(v, initial[k]) for k, v in model.state_dict().items())
        return train(model, *args, **kwargs)

    monkeypatch.setattr(graceful_module, "head_gradients", spy)
    monkeypatch.setattr(filtering, "train", final_train)
    info = defense.fit(model, encodings, y, TrainConfig(epochs=1, batch_size=16, lr=1e-2), poison=poison,
                       progress=False)[1]
    assert seen == {"moved": True, "restarted": True}  # gradients after the warm-up; final phase from the start
    assert info["graceful"]["warmup_epochs"] == 1


# ------------------------------------------------------------------ settings
def test_graceful_is_registered_with_the_papers_defaults():
    assert "graceful" in DEFENSES
    settings = DefenseConfig(name="graceful").options
    assert settings == GracefulSettings(ratio=0.125, pca_rank=32, warmup_epochs=0, clusters=None, batch_size=64,
                                        restart=True)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("ratio", "0", r"`defense.options.ratio` in (0, 1]"),
    ("ratio", "1.5", r"`defense.options.ratio` in (0, 1]"),
    ("ratio", "true", r"`defense.options.ratio` in (0, 1]"),
    ("pca_rank", "0", "`defense.options.pca_rank`"),
    ("warmup_epochs", "-1", "`defense.options.warmup_epochs`"),
    ("clusters", "1", "`defense.options.clusters` to be an integer >= 2"),
    ("clusters", "2.5", "`defense.options.clusters` to be an integer >= 2"),
    ("batch_size", "0", "`defense.options.batch_size`"),
    ("restart", '"yes"', "`defense.options.restart` to be true or false"),
])
def test_a_bad_option_names_its_key_when_the_config_is_built(tmp_path, key, value, expected):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "graceful"\n')
    with pytest.raises(ValueError, match=re.escape(expected)):
        ExperimentConfig.from_toml(path, overrides=[f"defense.options.{key}={value}"])
