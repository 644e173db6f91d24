"""Where MSLR goes in BERT, RoBERTa, GPT-2 and Llama classifiers, and its default bands (METHOD.md section 3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from freqlens.defenses import (
    MSLRConfig,
    MSLRHead,
    MSLRLinear,
    apply_mslr,
    default_mslr_config,
    merge_mslr,
)
from freqlens.defenses.placement import HEAD_WIDTH, default_target, family, mslr_layers

from .helpers import DECODERS, FAMILIES, build, inputs, logits

# METHOD.md section 3, written out.
BERT_BASE_BANDS = (1, 4, 8, 12, 16, 20, 24, 28)
ROBERTA_BASE_BANDS = (1, 2, 4, 6, 8, 10, 12, 14, 16)
LARGE_BANDS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLM_BANDS = (1, 2, 3, 4)

PLACEMENT = {"bert": "bert.pooler.dense", "roberta": "classifier.dense", "gpt2": "score", "llama": "score"}


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_encoders_get_mslr_at_the_dense_layer_nearest_the_head(name):
    model = build(name)
    original = model.get_submodule(PLACEMENT[name])
    placed = apply_mslr(model)
    assert placed == [PLACEMENT[name]]
    layer = model.get_submodule(PLACEMENT[name])
    assert isinstance(layer, MSLRLinear)
    assert layer.base is original  # the same frozen weights, wrapped
    assert list(mslr_layers(model)) == [PLACEMENT[name]]


@pytest.mark.parametrize("name", DECODERS)
def test_decoders_get_a_new_head_whose_first_layer_is_mslr(name):
    model = build(name)
    classes = model.score.out_features
    placed = apply_mslr(model)
    assert placed == ["score.0"]
    head = model.score
    assert isinstance(head, MSLRHead)
    first, second = head[0], head[1]
    assert isinstance(first, MSLRLinear)
    assert (first.in_features, first.out_features) == (32, HEAD_WIDTH) == (32, 16)
    assert first.base.bias is None
    assert type(second) is nn.Linear
    assert (second.in_features, second.out_features) == (16, classes)
    assert second.bias is None
    out = logits(model, inputs(name))
    assert out.shape == (4, classes)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_zero_init_placement_keeps_encoder_outputs(name):
    model = build(name)
    enc = inputs(name)
    before = logits(model, enc)
    apply_mslr(model, default_mslr_config(model, init="zero"))
    torch.testing.assert_close(logits(model, enc), before, atol=0, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_and_default_target(name):
    model = build(name)
    expected = {"bert": "bert", "roberta": "roberta", "gpt2": "decoder", "llama": "decoder"}[name]
    assert family(model) == expected
    assert default_target(model) == PLACEMENT[name]


@pytest.mark.parametrize("name, bands, alpha", [
    ("bert", BERT_BASE_BANDS, 6.0),
    ("roberta", ROBERTA_BASE_BANDS, 6.0),
    ("gpt2", LLM_BANDS, 4.0),
    ("llama", LLM_BANDS, 4.0),
])
def test_default_config_bands_and_alpha_per_family(name, bands, alpha):
    config = default_mslr_config(build(name))
    assert config.bands == tuple(float(b) for b in bands)
    assert config.alpha == alpha
    assert config.rank == 1  # the paper's inner rank
    assert config.init == "zero"


class LargeEncoder(nn.Module):
    """Stands in for a BERT- or RoBERTa-large: only the placement module and the hidden size."""

    def __init__(self, kind: str, hidden: int = 1024):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden)
        if kind == "bert":
            self.bert = nn.Module()
            self.bert.pooler = nn.Module()
            self.bert.pooler.dense = nn.Linear(4, 4)
        else:
            self.classifier = nn.Module()
            self.classifier.dense = nn.Linear(4, 4)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_default_config_for_large_encoders(kind):
    config = default_mslr_config(LargeEncoder(kind))
    assert config.bands == tuple(float(b) for b in LARGE_BANDS)
    assert config.alpha == 6.0


def test_default_config_just_below_large_keeps_base_bands():
    assert default_mslr_config(LargeEncoder("roberta", hidden=1023)).bands == tuple(map(float, ROBERTA_BASE_BANDS))
    assert default_mslr_config(LargeEncoder("bert", hidden=768)).bands == tuple(map(float, BERT_BASE_BANDS))


def test_default_config_overrides():
    model = build("bert")
    config = default_mslr_config(model, bands=(2, 3), alpha=None, rank=2, init="paper")
    assert config.bands == (2.0, 3.0)
    assert config.alpha == 6.0  # None means keep the family default
    assert (config.rank, config.init) == (2, "paper")


@pytest.mark.parametrize("name, target", [
    ("bert", "bert.encoder.layer.0.intermediate.dense"),
    ("roberta", "roberta.encoder.layer.1.output.dense"),
    ("llama", "model.layers.0.mlp.up_proj"),
])
def test_a_named_linear_target(name, target):
    model = build(name)
    module = model.get_submodule(target)
    assert type(module) is nn.Linear
    placed = apply_mslr(model, MSLRConfig(bands=(1, 2)), target=target)
    assert placed == [target]
    assert isinstance(model.get_submodule(target), MSLRLinear)
    assert model.get_submodule(target).base is module
    default = PLACEMENT[name]
    assert not isinstance(model.get_submodule(default), (MSLRLinear, MSLRHead))  # only the named one changes
    assert logits(model, inputs(name)).shape == (4, 2)


@pytest.mark.parametrize("name", DECODERS)
def test_naming_the_decoder_score_explicitly_gives_the_head(name):
    model = build(name)
    assert apply_mslr(model, MSLRConfig(bands=(1, 2)), target="score") == ["score.0"]
    assert isinstance(model.score, MSLRHead)


def test_several_named_targets():
    model = build("bert")
    targets = ["bert.encoder.layer.0.intermediate.dense", "bert.pooler.dense"]
    assert apply_mslr(model, MSLRConfig(bands=(1, 2)), target=targets) == targets
    assert set(mslr_layers(model)) == set(targets)


@pytest.mark.parametrize("name, target", [
    ("bert", "bert.embeddings.LayerNorm"),
    ("bert", "bert.embeddings"),
    ("bert", "bert.embeddings.word_embeddings"),
    ("roberta", "roberta.encoder.layer.0.output.LayerNorm"),
    ("gpt2", "transformer.h.0.mlp.c_fc"),  # transformers' Conv1D, not an nn.Linear
    ("llama", "model.norm"),
])
def test_a_target_that_is_not_linear_is_refused_by_name(name, target):
    model = build(name)
    with pytest.raises(ValueError, match=f"'{target}'.*nn.Linear"):
        apply_mslr(model, MSLRConfig(bands=(1, 2)), target=target)
    assert not mslr_layers(model)


def test_an_unknown_module_name_is_refused_by_name():
    model = build("bert")
    with pytest.raises(ValueError, match="'bert.pooler.nothing'"):
        apply_mslr(model, target="bert.pooler.nothing")


def test_a_bad_target_among_several_changes_nothing():
    model = build("bert")
    with pytest.raises(ValueError, match="'bert.embeddings.LayerNorm'"):
        apply_mslr(model, target=["bert.pooler.dense", "bert.embeddings.LayerNorm"])
    assert type(model.bert.pooler.dense) is nn.Linear


def test_an_empty_target_list_is_refused():
    with pytest.raises(ValueError, match="`target`"):
        apply_mslr(build("bert"), target=[])


def test_placing_twice_is_refused():
    model = build("bert")
    apply_mslr(model)
    with pytest.raises(ValueError, match="already MSLR"):
        apply_mslr(model, target="bert.pooler.dense")


class NoPlacement(nn.Module):
    """A DistilBERT-like classifier: pre_classifier and classifier, none of the known placements."""

    def __init__(self):
        super().__init__()
        self.pre_classifier = nn.Linear(8, 8)
        self.classifier = nn.Linear(8, 2)

    def forward(self, x):
        return self.classifier(torch.relu(self.pre_classifier(x)))


@pytest.mark.parametrize("model", [nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), NoPlacement()],
                         ids=["sequential", "distilbert-like"])
def test_a_model_without_known_placement_needs_a_target(model):
    assert family(model) == "unknown"
    with pytest.raises(ValueError, match="target"):
        apply_mslr(model, MSLRConfig())
    with pytest.raises(ValueError, match="target"):
        apply_mslr(model)


def test_a_model_without_known_placement_takes_a_named_target():
    model = NoPlacement()
    assert apply_mslr(model, MSLRConfig(bands=(1, 2)), target="pre_classifier") == ["pre_classifier"]
    assert isinstance(model.pre_classifier, MSLRLinear)


@pytest.mark.parametrize("name", FAMILIES)
def test_merge_mslr_folds_every_layer_back_to_linear(name):
    model = build(name)
    apply_mslr(model, default_mslr_config(model, init="paper"))
    enc = inputs(name)
    before = logits(model, enc)
    merge_mslr(model)
    assert not mslr_layers(model)
    torch.testing.assert_close(logits(model, enc), before, atol=1e-5, rtol=1e-5)
