"""The contract every registered defense keeps, tested over the registry.

A new defense is tested by being registered: for each name in
``freqlens.defenses.DEFENSES`` (at collection time) and a tiny BERT and a
tiny GPT-2, the defense prepares the model, trains one step, saves it, loads
it onto a base built under another seed with the same outputs, merges it
with the same outputs (prefix/prompt tuning: refused, named), and refuses a
bad value of every setting of every ``[defense.*]`` table naming its dotted
key.
"""

from __future__ import annotations

import re

import pytest
import torch

from freqlens.config import ExperimentConfig
from freqlens.defenses import (
    DEFENSES,
    Defense,
    DefenseConfig,
    load_defended,
    make_defense,
    merge_defended,
    register_defense,
    save_defended,
    unregister_defense,
)
from freqlens.defenses.registry import SECTIONS
from freqlens.settings import build, describe
from freqlens.training import TrainConfig

from .helpers import build as build_model
from .helpers import inputs, labels, logits

FAMILIES = ("bert", "gpt2")
N = 4  # training rows: one step of batch N
# small settings so that every defense takes one step on N rows (ABL: its isolation phase only)
SMALL = {"prefix": {"tokens": 2},
         "abl": {"isolation_rate": 0.25, "isolation_epochs": 1, "unlearn_epochs": 0, "budget": "shared"},
         "reference_size": N}

# A bad value for every setting of every component table, and what the error says of it.
BAD = {
    "lora.r": 0, "lora.alpha": 0, "lora.dropout": 1.0, "lora.targets": [""],
    "mslr.bands": [1, 0], "mslr.rank": 0, "mslr.alpha": -1.0, "mslr.dropout": 1.5, "mslr.init": "kaiming",
    "mslr.target": [""],
    "ga.loss_threshold": -1.0, "ga.norm_threshold": -1e-9, "ga.mu": 1.5, "ga.mix_from_epoch": -1,
    "ga.pure": "yes", "ga.batch_size": 0, "ga.subspace": 0,
    "abl.isolation_rate": 1.5, "abl.isolation_epochs": 0, "abl.gamma": -1.0, "abl.unlearn_epochs": -1,
    "abl.unlearn_lr": 0.0, "abl.budget": "epochs",
    "prefix.tokens": 0,
}


def test_every_component_setting_has_a_bad_value_here():
    keys = {s.key.removeprefix("defense.") for table, cls in SECTIONS.items()
            for s in describe(cls, f"defense.{table}")}
    assert keys == set(BAD)


def _config(name: str) -> DefenseConfig:
    return build(DefenseConfig, {"name": name, **SMALL}, "defense")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(DEFENSES))
def test_prepare_train_save_load_merge(tmp_path, name, family):
    config = _config(name)
    defense = make_defense(config)
    torch.manual_seed(0)
    prepared = defense.prepare(build_model(family, seed=0), max_length=8)
    enc, y = inputs(family, n=N), labels(N)
    reference = (inputs(family, n=N, seed=5), labels(N, seed=1).numpy()) if defense.needs_reference else None
    before = logits(prepared.model, enc)
    result, info = defense.fit(prepared.model, enc, y.numpy(), TrainConfig(epochs=1, batch_size=N, lr=1e-2),
                               reference=reference, progress=False)
    assert result.steps == 1
    assert info["name"] == name and info["mslr_layers"] == prepared.mslr_layers
    assert info["adapter"] == prepared.layout.adapter and info["selection"] in ("best-dev", "last")
    trained = logits(prepared.model, enc)
    assert not torch.allclose(before, trained), "one step changed nothing"

    save_defended(prepared.model, tmp_path / "model", prepared.layout)
    loaded = load_defended(build_model(family, seed=7), tmp_path / "model")  # another seed: every weight restored
    torch.testing.assert_close(logits(loaded, enc), trained, rtol=1e-5, atol=1e-6)

    if prepared.layout.adapter in ("prefix", "prompt"):
        with pytest.raises(ValueError, match="prefix tuning cannot be merged"):
            merge_defended(loaded)
    else:
        merged = merge_defended(loaded)
        assert not hasattr(merged, "peft_config")
        torch.testing.assert_close(logits(merged, enc), trained, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(DEFENSES))
def test_a_bad_setting_names_its_dotted_key(tmp_path, name):
    path = tmp_path / "experiment.toml"
    path.write_text(f'[defense]\nname = "{name}"\n')
    for key, value in BAD.items():
        written = f'"{value}"' if isinstance(value, str) else repr(value).replace("'", '"')
        with pytest.raises(ValueError, match=rf"`defense\.{re.escape(key)}`"):
            ExperimentConfig.from_toml(path, overrides=[f"defense.{key}={written}"])
    cls = make_defense(_config(name)).options
    with pytest.raises(ValueError, match=r"defense\.options" if cls is None else r"defense\.options\.no_such_key"):
        ExperimentConfig.from_toml(path, overrides=["defense.options.no_such_key=1"])


class _ReturnsResultOnly(Defense):
    def train(self, model, encodings, labels, config, **kwargs):
        return super().train(model, encodings, labels, config, **kwargs)[0]


class _OverwritesName(Defense):
    def train(self, model, encodings, labels, config, **kwargs):
        return super().train(model, encodings, labels, config, **kwargs)[0], {"name": "other", "lr": 1.0}


class _ForgetsTheRecorder(Defense):
    def train(self, model, encodings, labels, config, *, recorder, **kwargs):
        return super().train(model, encodings, labels, config, recorder=None, **kwargs)


class _PlacesWithoutPlaced(Defense):
    def place(self, model):
        return model


@pytest.mark.parametrize(("cls", "match"), [
    (_ReturnsResultOnly, r"_ReturnsResultOnly\.train \(defense 'plug'\) to return \(TrainResult, dict"),
    (_OverwritesName, r"_OverwritesName\.train \(defense 'plug'\) to add new keys .* \['lr', 'name'\]"),
    (_ForgetsTheRecorder, r"_ForgetsTheRecorder\.train \(defense 'plug'\) to pass `recorder=`"),
    (_PlacesWithoutPlaced, r"_PlacesWithoutPlaced\.place \(defense 'plug'\) to return freqlens\.defenses\.Placed"),
])
def test_a_plug_in_that_breaks_the_contract_is_named(tmp_path, cls, match):
    """A registered defense that returns the wrong thing, overwrites what every defense writes, or never
    starts the recorder gets an error naming its class and method, not a Python internal."""
    from freqlens.recording import ProbeSet, Recorder

    register_defense("plug", cls)
    try:
        defense = make_defense(_config("plug"))
        enc, y = inputs("bert", n=N), labels(N)
        with pytest.raises((TypeError, ValueError), match=match):
            prepared = defense.prepare(build_model("bert", seed=0), max_length=8)
            with Recorder(tmp_path / "trajectory", [ProbeSet("clean", enc, y)], schedule="every:1") as recorder:
                defense.fit(prepared.model, enc, y.numpy(), TrainConfig(epochs=1, batch_size=N, lr=1e-2),
                            recorder=recorder, progress=False)
    finally:
        unregister_defense("plug")


def test_registering_refuses_an_adapter_it_cannot_save():
    class QLoRA(Defense):
        adapter = "qlora"

    with pytest.raises(ValueError, match=r"`QLoRA\.adapter` to be one of \('none', 'lora', 'prefix'\) but got 'qlora'"):
        register_defense("qlora", QLoRA)
    assert "qlora" not in DEFENSES
