"""prepare_model: what each named defense trains, on four families; DefenseConfig checks and learning rates."""

from __future__ import annotations

import pytest
import torch

from freqlens.defenses import DEFENSES, DefenseConfig, MSLRHead, MSLRLinear, prepare_model
from freqlens.defenses import make_defense
from freqlens.defenses.registry import ADAPTER_LR, PROMPT_LR, SMALL_MODEL, count_parameters

from .helpers import DECODERS, FAMILIES, build, trainable

FULL = ("vanilla", "ga", "abl", "reference-only", "early-loss", "dece", "cube", "bki", "graceful")
LORA_ONLY = ("lora", "ga+lora")
LORA_MSLR = ("mslr", "muscle", "muscle-paper")
HEADS = {"bert": "classifier", "roberta": "classifier.out_proj", "gpt2": "score", "llama": "score"}


def test_the_defense_list():
    assert set(DEFENSES) == {*FULL, *LORA_ONLY, *LORA_MSLR, "prefix"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", FULL)
def test_full_fine_tuning_defenses_train_everything(family, name):
    model = build(family)
    everything = {n for n, _ in model.named_parameters()}
    prepared = prepare_model(model, DefenseConfig(name=name))
    assert prepared.model is model
    assert prepared.mslr_layers == []
    assert trainable(prepared.model) == everything
    assert prepared.layout.adapter == "none" and prepared.layout.mslr is None


def lora_names(model) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".lora_" in n}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", LORA_ONLY)
def test_lora_defenses_train_only_lora_with_the_head_frozen(family, name):
    prepared = prepare_model(build(family), DefenseConfig(name=name))
    model = prepared.model
    names = trainable(model)
    assert names and names == lora_names(model)
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    head = model.get_base_model().get_submodule(HEADS[family])
    assert not any(p.requires_grad for p in head.parameters())
    assert prepared.layout.adapter == "lora" and prepared.layout.mslr is None
    assert not any(isinstance(m, MSLRLinear) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", LORA_MSLR)
def test_mslr_defenses_train_lora_and_mslr(family, name):
    prepared = prepare_model(build(family), DefenseConfig(name=name))
    model = prepared.model
    names = trainable(model)
    mslr = {n for n in names if n.rsplit(".", 1)[-1].startswith("mslr_")}
    extra = names - lora_names(model) - mslr
    if family in DECODERS:
        assert prepared.mslr_layers == ["score.0"]
        assert {n.rsplit(".", 1)[-1] for n in mslr} == {"mslr_L", "mslr_R"}
        assert all(n.endswith(("score.0.mslr_L", "score.0.mslr_R")) for n in mslr)
        assert extra == {"base_model.model.score.1.weight"}
        head = model.get_base_model().score
        assert isinstance(head, MSLRHead)
        assert not head[0].base.weight.requires_grad  # the new head's first layer is a frozen random projection
    else:
        target = {"bert": "bert.pooler.dense", "roberta": "classifier.dense"}[family]
        assert prepared.mslr_layers == [target]
        assert mslr == {f"base_model.model.{target}.mslr_L", f"base_model.model.{target}.mslr_R"}
        assert extra == set()
        base = model.get_base_model()
        assert not base.get_submodule(target).base.weight.requires_grad
        assert not any(p.requires_grad for p in base.get_submodule(HEADS[family]).parameters())
    assert lora_names(model) and lora_names(model) <= names  # every LoRA parameter trains
    assert prepared.layout.adapter == "lora" and prepared.layout.mslr is not None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name, init", [("mslr", "zero"), ("muscle", "zero"), ("muscle-paper", "paper")])
def test_mslr_init_per_defense(family, name, init):
    prepared = prepare_model(build(family), DefenseConfig(name=name))
    layers = [m for m in prepared.model.modules() if isinstance(m, MSLRLinear)]
    assert len(layers) == 1
    assert layers[0].config.init == init
    assert prepared.layout.mslr["init"] == init
    assert (torch.count_nonzero(layers[0].mslr_R) == 0) == (init == "zero")


@pytest.mark.parametrize("init", ["zero", "paper"])
def test_explicit_mslr_init_overrides_the_defense_default(init):
    prepared = prepare_model(build("bert"), DefenseConfig(name="muscle-paper" if init == "zero" else "muscle",
                                                          mslr={"init": init}))
    assert [m.config.init for m in prepared.model.modules() if isinstance(m, MSLRLinear)] == [init]


def test_mslr_settings_reach_the_layer():
    config = DefenseConfig(name="muscle", mslr={"bands": (1, 3), "rank": 2, "alpha": 2.0,
                                                "target": "bert.encoder.layer.1.output.dense"})
    prepared = prepare_model(build("bert"), config)
    assert prepared.mslr_layers == ["bert.encoder.layer.1.output.dense"]
    layer = prepared.model.get_base_model().bert.encoder.layer[1].output.dense
    assert isinstance(layer, MSLRLinear)
    assert (layer.config.bands, layer.config.rank, layer.config.alpha) == ((1.0, 3.0), 2, 2.0)
    assert layer.mslr_L.shape[0] == 4
    assert prepared.layout.mslr_targets == ("bert.encoder.layer.1.output.dense",)


def test_lora_settings_reach_peft():
    prepared = prepare_model(build("bert"), DefenseConfig(name="lora", lora={"r": 2, "alpha": 4.0,
                                                                              "targets": ("query",)}))
    names = trainable(prepared.model)
    assert names and all(".query.lora_" in n for n in names)
    a = next(p for n, p in prepared.model.named_parameters() if n.endswith("query.lora_A.default.weight"))
    assert a.shape[0] == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_trains_the_prompt_and_the_head(family):
    prepared = prepare_model(build(family), DefenseConfig(name="prefix", prefix={"tokens": 3}))
    names = trainable(prepared.model)
    assert any(n.startswith("prompt_encoder.") for n in names)
    assert all(n.startswith("prompt_encoder.") or ".modules_to_save." in n for n in names)
    assert any(".modules_to_save." in n for n in names)  # sequence classification: the head trains too
    assert prepared.layout.adapter == prepared.model.freqlens_adapter in ("prefix", "prompt")


def test_prepare_model_fails_on_a_bad_mslr_target():
    with pytest.raises(ValueError, match="'bert.embeddings.LayerNorm'"):
        prepare_model(build("bert"), DefenseConfig(name="muscle", mslr={"target": "bert.embeddings.LayerNorm"}))


def test_prepare_model_fails_on_a_bad_mslr_rank():
    with pytest.raises(ValueError, match=r"`defense\.mslr\.rank`"):
        prepare_model(build("bert"), DefenseConfig(name="muscle", mslr={"rank": 0}))


# ------------------------------------------------------------------ DefenseConfig
def test_unknown_defense_name():
    with pytest.raises(ValueError, match=r"`defense\.name`"):
        DefenseConfig(name="muscles")


def test_bad_select():
    with pytest.raises(ValueError, match=r"`defense\.select`"):
        DefenseConfig(select="best")


def test_bad_mslr_init():
    with pytest.raises(ValueError, match=r"`defense\.mslr\.init`"):
        DefenseConfig(name="muscle", mslr={"init": "kaiming"})


@pytest.mark.parametrize("bands", [(1, 0, 4), (-1,), (1, -2.5)])
def test_non_positive_mslr_bands(bands):
    with pytest.raises(ValueError, match=r"`defense\.mslr\.bands`"):
        DefenseConfig(name="muscle", mslr={"bands": bands})


@pytest.mark.parametrize("lr", [0, -1e-5, 0.0])
def test_non_positive_lr(lr):
    with pytest.raises(ValueError, match=r"`defense\.lr`"):
        DefenseConfig(lr=lr)


def test_bad_lora_rank():
    with pytest.raises(ValueError, match=r"`defense\.lora\.r`"):
        DefenseConfig(name="lora", lora={"r": 0})


def test_string_settings_become_tuples():
    config = DefenseConfig(name="muscle", lora={"targets": "query"}, mslr={"target": "bert.pooler.dense"})
    assert config.lora.targets == ("query",) and config.mslr.target == ("bert.pooler.dense",)
    assert DefenseConfig(lora={"targets": ""}).lora.targets == ()


@pytest.mark.parametrize("name, size", [("muscle", 256), ("muscle-paper", 96), ("ga", 256), ("ga+lora", 256),
                                        ("reference-only", 256)])
def test_reference_size_defaults(name, size):
    assert make_defense(DefenseConfig(name=name)).reference_size == size
    assert make_defense(DefenseConfig(name=name, reference_size=10)).reference_size == 10


@pytest.mark.parametrize("name, needs", [("vanilla", False), ("lora", False), ("mslr", False), ("ga", True),
                                         ("ga+lora", True), ("muscle", True), ("muscle-paper", True),
                                         ("prefix", False), ("abl", False), ("reference-only", True)])
def test_which_defenses_need_a_reference_set(name, needs):
    assert make_defense(DefenseConfig(name=name)).needs_reference is needs


def test_auto_selection_keeps_the_best_epoch_for_defended_runs_only():
    assert not make_defense(DefenseConfig(name="vanilla")).selects_best()
    assert make_defense(DefenseConfig(name="muscle")).selects_best()
    assert make_defense(DefenseConfig(name="vanilla", select="best-dev")).selects_best()
    assert not make_defense(DefenseConfig(name="muscle", select="last")).selects_best()


# ------------------------------------------------------------------ learning rates
TRAIN_LR = 2e-5


@pytest.fixture(scope="module")
def tiny():
    model = build("bert")
    assert count_parameters(model) < SMALL_MODEL
    return model


@pytest.mark.parametrize("name", ["lora", "mslr", "ga+lora", "muscle"])
def test_adapter_defenses_on_a_small_model_use_the_adapter_lr(tiny, name):
    assert make_defense(DefenseConfig(name=name)).learning_rate(tiny, TRAIN_LR) == ADAPTER_LR == 5e-4


def test_prefix_uses_the_prompt_lr(tiny):
    assert make_defense(DefenseConfig(name="prefix")).learning_rate(tiny, TRAIN_LR) == PROMPT_LR


@pytest.mark.parametrize("name", ["muscle-paper", "vanilla", "ga", "abl", "reference-only"])
def test_paper_and_full_fine_tuning_use_the_train_lr(tiny, name):
    assert make_defense(DefenseConfig(name=name)).learning_rate(tiny, TRAIN_LR) == TRAIN_LR


@pytest.mark.parametrize("name", ["lora", "muscle", "muscle-paper", "vanilla", "prefix"])
def test_an_explicit_lr_wins(tiny, name):
    assert make_defense(DefenseConfig(name=name, lr=3e-3)).learning_rate(tiny, TRAIN_LR) == 3e-3


def test_adapter_defenses_on_a_large_model_use_the_train_lr():
    class Large(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(0))

        def parameters(self, recurse=True):  # counts as SMALL_MODEL parameters without allocating them
            yield torch.empty(SMALL_MODEL, device="meta")

    assert make_defense(DefenseConfig(name="muscle")).learning_rate(Large(), TRAIN_LR) == TRAIN_LR


@pytest.mark.parametrize("key, value", [("subspace", 0), ("mu", 1.5), ("loss_threshold", -1.0),
                                        ("norm_threshold", -1e-9)])
def test_bad_gradient_alignment_settings_name_the_config_key(key, value):
    with pytest.raises(ValueError, match=rf"`defense\.ga\.{key}`.*{value}"):
        DefenseConfig(name="muscle", ga={key: value})
