"""Defended models saved and loaded back, merged for deployment, and prefix tuning run, on four families."""

from __future__ import annotations

import json

import pytest
import torch

from freqlens.defenses import (
    DefenseConfig,
    MSLRLinear,
    load_defended,
    merge_defended,
    prepare_model,
    save_defended,
)
from freqlens.defenses.adapters import SETTINGS_FILE, WEIGHTS_FILE
from freqlens.training import TrainConfig, train

from .helpers import DECODERS, FAMILIES, build, inputs, labels, logits, perturb, trainable


def prepared_and_perturbed(family: str, name: str, **settings):
    prepared = prepare_model(build(family), DefenseConfig(name=name, **settings))
    perturb(prepared.model, seed=1)
    return prepared


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["lora", "mslr", "muscle", "muscle-paper"])
def test_save_then_load_gives_the_same_logits(family, name, tmp_path):
    prepared = prepared_and_perturbed(family, name)
    enc = inputs(family)
    expected = logits(prepared.model, enc)
    save_defended(prepared.model, tmp_path, prepared.layout)
    assert (tmp_path / SETTINGS_FILE).is_file()
    assert (tmp_path / "adapter_config.json").is_file()
    assert (tmp_path / WEIGHTS_FILE).is_file()  # a model built from a config: no checkpoint gives its weights back
    loaded = load_defended(build(family), tmp_path)
    torch.testing.assert_close(logits(loaded, enc), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_after_training_then_load_gives_the_same_logits(family, tmp_path):
    prepared = prepare_model(build(family), DefenseConfig(name="muscle"))
    n = 8
    enc = inputs(family, n=n, seed=5)
    train(prepared.model, enc, labels(n), TrainConfig(epochs=1, batch_size=4, lr=5e-2), progress=False)
    layer = next(m for m in prepared.model.modules() if isinstance(m, MSLRLinear))
    assert torch.count_nonzero(layer.mslr_R) > 0  # training moved the zero-initialised factor
    probe = inputs(family)
    expected = logits(prepared.model, probe)
    save_defended(prepared.model, tmp_path, prepared.layout)
    torch.testing.assert_close(logits(load_defended(build(family), tmp_path), probe), expected, atol=1e-5, rtol=1e-5)


def test_save_then_load_with_a_named_mslr_target(tmp_path):
    target = "bert.encoder.layer.1.intermediate.dense"
    prepared = prepared_and_perturbed("bert", "muscle", mslr={"target": target, "bands": (1, 2), "rank": 2})
    enc = inputs("bert")
    expected = logits(prepared.model, enc)
    save_defended(prepared.model, tmp_path, prepared.layout)
    layout = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert layout["mslr_targets"] == [target] and layout["mslr"]["rank"] == 2
    loaded = load_defended(build("bert"), tmp_path)
    assert isinstance(loaded.get_base_model().get_submodule(target), MSLRLinear)
    torch.testing.assert_close(logits(loaded, enc), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_the_decoder_head_is_saved_whole(family, tmp_path):
    """The added head's frozen first layer is random: a fresh base model would draw another one."""
    prepared = prepared_and_perturbed(family, "mslr")
    save_defended(prepared.model, tmp_path, prepared.layout)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / WEIGHTS_FILE))
    assert {"score.0.base.weight", "score.0.mslr_L", "score.0.mslr_R", "score.1.weight"} <= set(saved)
    enc = inputs(family)
    torch.manual_seed(12345)  # the rebuilt head draws another random first layer before loading
    loaded = load_defended(build(family), tmp_path)
    torch.testing.assert_close(logits(loaded, enc), logits(prepared.model, enc), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_vanilla_saves_and_loads_the_whole_model(family, tmp_path):
    prepared = prepared_and_perturbed(family, "vanilla")
    enc = inputs(family)
    expected = logits(prepared.model, enc)
    save_defended(prepared.model, tmp_path, prepared.layout)
    assert not (tmp_path / WEIGHTS_FILE).exists()
    loaded = load_defended(build(family), tmp_path)
    torch.testing.assert_close(logits(loaded, enc), expected, atol=1e-5, rtol=1e-5)


def test_load_without_saved_settings_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=SETTINGS_FILE):
        load_defended(build("bert"), tmp_path)


def no_wrappers(model) -> bool:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (not isinstance(model, PeftModel)
            and not any(isinstance(m, (BaseTunerLayer, MSLRLinear)) for m in model.modules())
            and not any("lora_" in n or "mslr_" in n for n, _ in model.named_parameters()))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["mslr", "muscle-paper", "lora"])
def test_merge_gives_a_plain_model_with_the_same_logits(family, name):
    prepared = prepared_and_perturbed(family, name)
    enc = inputs(family)
    expected = logits(prepared.model, enc)
    merged = merge_defended(prepared.model)
    assert no_wrappers(merged)
    assert type(merged) is type(build(family))
    torch.testing.assert_close(logits(merged, enc), expected, atol=1e-5, rtol=1e-5)


def test_merge_of_an_mslr_model_without_lora():
    from freqlens.defenses import apply_mslr, default_mslr_config

    model = build("roberta")
    apply_mslr(model, default_mslr_config(model, init="paper"))
    enc = inputs("roberta")
    expected = logits(model, enc)
    merged = merge_defended(model)
    assert no_wrappers(merged)
    torch.testing.assert_close(logits(merged, enc), expected, atol=1e-5, rtol=1e-5)


def test_merge_of_prefix_tuning_is_refused():
    prepared = prepare_model(build("bert"), DefenseConfig(name="prefix", prefix={"tokens": 2}))
    with pytest.raises(ValueError, match="prefix"):
        merge_defended(prepared.model)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_tuning_takes_a_training_step(family):
    prepared = prepare_model(build(family), DefenseConfig(name="prefix", prefix={"tokens": 3}))
    model = prepared.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    n = 4
    result = train(model, inputs(family, n=n), labels(n), TrainConfig(epochs=1, batch_size=n, lr=1e-2),
                   progress=False)
    assert result.steps == 1
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trainable(model)
    assert any(name.startswith("prompt_encoder.") for name in changed)
    assert logits(model, inputs(family)).shape == (4, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_reports_which_peft_method_ran(family):
    """transformers 5 models may not take past_key_values; add_prefix then falls back to prompt tuning."""
    model = prepare_model(build(family), DefenseConfig(name="prefix", prefix={"tokens": 3})).model
    kind = model.freqlens_adapter
    assert kind in ("prefix", "prompt")
    peft_type = model.peft_config["default"].peft_type.value
    assert peft_type == {"prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}[kind]


def test_prefix_saves_and_loads(tmp_path):
    prepared = prepared_and_perturbed("bert", "prefix", prefix={"tokens": 3})
    enc = inputs("bert")
    expected = logits(prepared.model, enc)
    save_defended(prepared.model, tmp_path, prepared.layout)
    loaded = load_defended(build("bert"), tmp_path)
    torch.testing.assert_close(logits(loaded, enc), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_is_placed_without_a_peft_warning(family):
    """GPT-2's Conv1D layers store weights (in, out): add_lora says so instead of letting peft warn."""
    import warnings

    from freqlens.defenses.adapters import add_lora

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        add_lora(build(family))
