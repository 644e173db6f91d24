"""Prefix / prompt tuning past the position table is refused before training (issue 12, item 8).

peft puts ``defense.prefix.tokens`` virtual tokens before every input, so
``model.max_length`` + those must fit the model's position table
(``max_position_embeddings``; ``n_positions`` for GPT-2; RoBERTa's positions
start after the padding id). Before, the first long batch stopped training
with a bare size-mismatch error.
"""

from __future__ import annotations

import re

import pytest
import torch

from freqlens.defenses import DefenseConfig, add_prefix, fit_defense, prepare_model
from freqlens.training import TrainConfig

from .helpers import FAMILIES, build, inputs, labels, logits

TOKENS = 3
# the tiny models' tables (tests/models.py): BERT, GPT-2 and Llama 32 positions, RoBERTa 40 less 2 (pad id 1)
LIMIT = {"bert": 32, "roberta": 38, "gpt2": 32, "llama": 32}


def keys_named(length: int, tokens: int, limit: int) -> str:
    return (rf"`model\.max_length` \+ `defense\.prefix\.tokens` <= {limit} .* got {length} \+ {tokens} = "
            rf"{length + tokens}")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_limit_is_the_position_table(family):
    from freqlens.defenses.adapters import position_limit

    limit, where = position_limit(build(family))
    assert limit == LIMIT[family]
    assert ("`n_positions`" if family == "gpt2" else "`max_position_embeddings`") in where


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])  # Llama's rotary positions have no table to pass
def test_the_limit_is_where_the_model_itself_breaks(family):
    """The independent reference: the prompt-tuned model runs at the limit and fails one token past it."""
    model = add_prefix(build(family), TOKENS)
    fits = LIMIT[family] - TOKENS
    assert logits(model, inputs(family, n=2, length=fits)).shape == (2, 2)
    with pytest.raises((IndexError, RuntimeError)):
        logits(model, inputs(family, n=2, length=fits + 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_too_long_max_length_is_refused_before_the_model_changes(family):
    model = build(family)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    length = LIMIT[family] - TOKENS + 1
    with pytest.raises(ValueError, match=keys_named(length, TOKENS, LIMIT[family])):
        prepare_model(model, DefenseConfig(name="prefix", prefix={"tokens": TOKENS}), max_length=length)
    assert not hasattr(model, "peft_config")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fitting_max_length_trains(family):
    length = LIMIT[family] - TOKENS  # exactly at the limit
    config = DefenseConfig(name="prefix", prefix={"tokens": TOKENS})
    prepared = prepare_model(build(family), config, max_length=length)
    n = 4
    result, info = fit_defense(prepared.model, inputs(family, n=n, length=length), labels(n).numpy(), config,
                               TrainConfig(epochs=1, batch_size=n), progress=False)
    assert result.steps == 1 and info["adapter"] in ("prefix", "prompt")


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_defense_refuses_too_wide_encodings_before_any_step(family):
    """Called from Python without max_length: the encodings' width is checked against the adapter."""
    config = DefenseConfig(name="prefix", prefix={"tokens": TOKENS})
    model = prepare_model(build(family), config).model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    n, length = 4, LIMIT[family] - TOKENS + 2
    with pytest.raises(ValueError, match=keys_named(length, TOKENS, LIMIT[family])):
        fit_defense(model, inputs(family, n=n, length=length), labels(n).numpy(), config,
                    TrainConfig(epochs=1, batch_size=n), progress=False)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


@pytest.mark.parametrize("name", ["vanilla", "lora", "muscle"])
def test_without_virtual_tokens_max_length_alone_must_fit(name):
    with pytest.raises(ValueError, match=r"`model\.max_length` <= 38 \(.*`max_position_embeddings` = 40.*\) but got 39"):
        prepare_model(build("roberta"), DefenseConfig(name=name), max_length=39)
    prepare_model(build("roberta"), DefenseConfig(name=name), max_length=38)


def test_a_bad_max_length_is_refused_by_its_key():
    with pytest.raises(ValueError, match=r"`model\.max_length` to be an integer >= 1 but got 0"):
        prepare_model(build("bert"), DefenseConfig(name="prefix"), max_length=0)


def test_freqlens_run_refuses_before_training(tmp_path, capsys):
    """The config keys as the user wrote them, from `freqlens run`, and nothing trained or recorded."""
    from freqlens.cli import main
    from tests.models import save_tiny_bert, write_clean_csvs

    save_tiny_bert(tmp_path / "model", layers=1)
    write_clean_csvs(tmp_path / "data", num_train=40, num_eval=20)
    (tmp_path / "run.toml").write_text(f"""
[model]
name = "{tmp_path / 'model'}"
max_length = 60
[data]
path = "{tmp_path / 'data'}"
[attack]
name = "addsent"
[defense]
name = "prefix"
[defense.prefix]
tokens = 5
""")
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "run.toml"), "--out", str(out), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert re.search(keys_named(60, 5, 64), error), error
    assert not (out / "results.json").exists() and not (out / "trajectory").exists()
