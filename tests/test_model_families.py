"""Kernel inputs and probabilities for four model families: BERT, RoBERTa, GPT-2, Llama.

Each family's kernel input (its embedding layer's output, padding zeroed,
flattened) is checked against an independent computation from the model's own
tables, with padding on either side; then batch-size invariance, eval mode,
hooks removed on every path, probabilities, and the Recorder end to end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/models.py

from models import (  # noqa: E402
    HIDDEN,
    forward_hooks,
    padded_encodings,
    random_labels,
    tiny_bert,
    tiny_gpt2,
    tiny_llama,
    tiny_roberta,
)

import freqlens.models  # noqa: E402
from freqlens.models import (  # noqa: E402
    ProbeLayer,
    capture_input,
    embedding_inputs,
    embedding_module,
    predict_proba,
    probe_embedding_layer,
    register_embedding_rule,
    run_until_captured,
    unregister_embedding_rule,
)

N, LENGTH = 9, 10



# ------------------------------------------------------------ the four families
def _bert_expected(model, enc):
    return model.bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])


def _roberta_expected(model, enc):
    return model.roberta.embeddings(input_ids=enc["input_ids"])


def _gpt2_expected(model, enc):
    # transformers 5.24 GPT2Model.forward: position_ids = arange(L) (+ cached length), the
    # same for every row whatever the attention mask -- left padding does not shift them.
    ids = enc["input_ids"]
    positions = torch.arange(ids.shape[1])[None, :]
    return model.transformer.wte(ids) + model.transformer.wpe(positions)


def _llama_expected(model, enc):
    return model.model.embed_tokens(enc["input_ids"])


@dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]
    pad_id: int
    token_type_ids: bool
    expected: Callable  # independent embedding-layer output, before masking
    layer: Callable[[nn.Module], nn.Module]
    mode: str

    def encodings(self, side="right", n=N, seed=1):
        return padded_encodings(
            n,
            LENGTH,
            seed=seed,
            pad_from=3,
            pad_id=self.pad_id,
            side=side,
            token_type_ids=self.token_type_ids,
        )


FAMILIES = {
    "bert": Family(tiny_bert, 0, True, _bert_expected, lambda m: m.bert.embeddings, "output"),
    "roberta": Family(
        tiny_roberta, 1, False, _roberta_expected, lambda m: m.roberta.embeddings, "output"
    ),
    "gpt2": Family(tiny_gpt2, 0, False, _gpt2_expected, lambda m: m.transformer.h[0], "input"),
    "llama": Family(
        tiny_llama, 0, False, _llama_expected, lambda m: m.model.embed_tokens, "output"
    ),
}
families = pytest.mark.parametrize("name", list(FAMILIES))


def expected_inputs(family: Family, model: nn.Module, enc) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = family.expected(model, enc) * enc["attention_mask"][..., None]
    finally:
        model.train(was_training)
    return hidden.reshape(len(hidden), -1).numpy()


# --------------------------------------------------------------------- layers
@families
def test_probe_layer_per_family(name):
    family = FAMILIES[name]
    model = family.build()
    layer = probe_embedding_layer(model)
    assert isinstance(layer, ProbeLayer) and layer == (family.layer(model), family.mode)
    module, mode = layer  # unpacks as (module, mode)
    assert embedding_module(model) is module and mode == family.mode


def test_no_known_embedding_layer_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Sequential has none; pass the embedding layer expl"):
        probe_embedding_layer(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"Sequential has none"):
        embedding_inputs(nn.Sequential(nn.Linear(2, 2)), {"x": torch.ones(1, 2)})


# -------------------------------------------------------------- kernel inputs
@families
@pytest.mark.parametrize("side", ["right", "left"])
def test_kernel_inputs_match_an_independent_computation(name, side):
    family = FAMILIES[name]
    model = family.build()  # train mode, dropout on
    enc = family.encodings(side)
    inputs = embedding_inputs(model, enc, batch_size=4)

    assert inputs.shape == (N, LENGTH * HIDDEN) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs, expected_inputs(family, model, enc), atol=1e-6)
    per_position = inputs.reshape(N, LENGTH, HIDDEN)
    padding = enc["attention_mask"].numpy() == 0
    assert padding.any() and np.all(per_position[padding] == 0)
    assert np.all(np.abs(per_position[~padding]).sum(-1) > 0)
    # eval mode inside (no dropout: the same again), train mode restored after
    assert model.training
    np.testing.assert_array_equal(embedding_inputs(model, enc, batch_size=4), inputs)


@families
def test_kernel_inputs_do_not_depend_on_the_batch_size(name):
    family = FAMILIES[name]
    model = family.build()
    enc = family.encodings("left" if name in ("gpt2", "llama") else "right")
    small = embedding_inputs(model, enc, batch_size=2)
    np.testing.assert_allclose(embedding_inputs(model, enc, batch_size=64), small, atol=1e-6)
    # and a row's kernel input does not depend on the other rows in its batch
    alone = embedding_inputs(model, {k: v[1:2] for k, v in enc.items()})
    np.testing.assert_allclose(alone[0], small[1], atol=1e-6)


def test_llama_embeddings_carry_no_position_term():
    # Rotary positions act inside attention: permuting the tokens permutes the
    # (L, d) blocks of the kernel input and nothing else. GPT-2's do carry one.
    perm = torch.randperm(LENGTH, generator=torch.Generator().manual_seed(0))
    for name, carries_position in [("llama", False), ("gpt2", True)]:
        family = FAMILIES[name]
        model = family.build()
        ids = padded_encodings(1, LENGTH, seed=3, pad_from=LENGTH - 1)["input_ids"]
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        permuted = {k: v[:, perm] for k, v in enc.items()}
        a = embedding_inputs(model, enc).reshape(LENGTH, HIDDEN)
        b = embedding_inputs(model, permuted).reshape(LENGTH, HIDDEN)
        assert np.allclose(a[perm.numpy()], b, atol=1e-6) is not carries_position


def test_gpt2_kernel_inputs_include_token_type_embeddings_when_passed():
    # GPT-2 adds wte(token_type_ids) when given them: the kernel input is what the blocks receive.
    model = tiny_gpt2()
    enc = FAMILIES["gpt2"].encodings()
    with_types = dict(enc, token_type_ids=torch.full_like(enc["input_ids"], 5))
    expected = _gpt2_expected(model.eval(), enc) + model.transformer.wte.weight[5]
    expected = (expected * enc["attention_mask"][..., None]).reshape(N, -1).detach().numpy()
    np.testing.assert_allclose(embedding_inputs(model, with_types), expected, atol=1e-6)


def test_an_explicit_module_is_read_at_its_output_unless_told():
    model = tiny_gpt2()
    enc = FAMILIES["gpt2"].encodings()
    wte = model.transformer.wte
    tokens_only = embedding_inputs(model, enc, module=wte)
    expected = wte(enc["input_ids"]) * enc["attention_mask"][..., None]
    np.testing.assert_allclose(tokens_only, expected.reshape(N, -1).detach().numpy(), atol=1e-6)
    # the model's own layer keeps its mode when passed explicitly (as Recorder does) ...
    first, second = model.transformer.h[0], model.transformer.h[1]
    default = embedding_inputs(model, enc)
    np.testing.assert_array_equal(embedding_inputs(model, enc, module=first), default)
    # ... and any module can be read at its input if asked: block 1's input is block 0's output
    after_first = embedding_inputs(model, enc, module=first, mode="output")
    before_second = embedding_inputs(model, enc, module=second, mode="input")
    np.testing.assert_array_equal(before_second, after_first)
    assert not np.allclose(after_first, default)
    with pytest.raises(ValueError, match="mode"):
        embedding_inputs(model, enc, mode="middle")
    assert forward_hooks(model) == 0


def test_a_registered_rule_comes_first():
    model = tiny_llama()

    def last_norm(m):
        return ProbeLayer(m.model.norm, "output") if m is model else None

    register_embedding_rule(last_norm)
    try:
        assert probe_embedding_layer(model) == (model.model.norm, "output")
        assert embedding_module(tiny_llama()) is not model.model.norm  # other models unaffected
    finally:
        unregister_embedding_rule(last_norm)
    assert embedding_module(model) is model.model.embed_tokens
    with pytest.raises(ValueError, match="built-in"):
        unregister_embedding_rule(freqlens.models._BUILT_IN_RULES[0])


# ---------------------------------------------------- hooks removed, mode restored
@families
def test_no_hook_left_after_a_run_or_an_error(name):
    family = FAMILIES[name]
    model = family.build()
    enc = family.encodings()
    embedding_inputs(model, enc, batch_size=4)
    assert forward_hooks(model) == 0 and model.training

    with pytest.raises(ValueError, match="input_ids|inputs_embeds"):
        embedding_inputs(model, {"attention_mask": enc["attention_mask"]})  # no input_ids
    assert forward_hooks(model) == 0 and model.training

    with pytest.raises(IndexError):  # fails inside the embedding lookup, before the capture
        embedding_inputs(model, dict(enc, input_ids=enc["input_ids"] + 1000))
    assert forward_hooks(model) == 0 and model.training


def test_capture_input_removes_its_pre_hook_on_every_path():
    first, second = nn.Linear(2, 3), nn.Linear(3, 1)
    model = nn.Sequential(first, second)
    with capture_input(second) as captured:
        assert len(second._forward_pre_hooks) == 1
        run_until_captured(model, torch.ones(4, 2))
    torch.testing.assert_close(captured[0], first(torch.ones(4, 2)))
    assert len(second._forward_pre_hooks) == 0

    with pytest.raises(KeyError, match="inside"):
        with capture_input(second):
            raise KeyError("inside")
    assert len(second._forward_pre_hooks) == 0

    with pytest.raises(RuntimeError, match="did not run"):
        with capture_input(second):
            run_until_captured(first, torch.ones(1, 2))
    assert len(second._forward_pre_hooks) == 0


def test_capture_input_reads_a_keyword_input():
    class Block(nn.Module):
        def forward(self, hidden_states, scale=1.0):
            return hidden_states * scale

    block = Block()
    with capture_input(block) as captured:
        run_until_captured(block, hidden_states=torch.ones(2), scale=3.0)
    torch.testing.assert_close(captured[0], torch.ones(2))
    assert len(block._forward_pre_hooks) == 0


# ---------------------------------------------------------------- probabilities
@families
@pytest.mark.parametrize("side", ["right", "left"])
def test_predict_proba_rows_sum_to_one(name, side):
    family = FAMILIES[name]
    model = family.build()
    enc = family.encodings(side)
    probabilities = predict_proba(model, enc, batch_size=4)
    assert model.training
    assert probabilities.shape == (N, 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(predict_proba(model, enc, batch_size=64), probabilities, atol=1e-5)


# ---------------------------------------------------------------- the Recorder
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_recorder_end_to_end(name, tmp_path):
    from freqlens.recording import ProbeSet, Recorder

    family = FAMILIES[name]
    model = family.build()
    clean = ProbeSet("clean", family.encodings("left", n=N, seed=1), random_labels(N, seed=1))
    backdoor_encodings = family.encodings("right", n=4, seed=2)
    backdoor = ProbeSet("backdoor", backdoor_encodings, torch.ones(4, dtype=torch.long))
    with Recorder(tmp_path / "run", [clean, backdoor], schedule="every:1") as recorder:
        recorder.start(model, total_steps=2)
        recorder.record(1)
        trajectory = recorder.trajectory()
    assert trajectory.inputs["clean"].shape == (N, LENGTH * HIDDEN)
    assert trajectory.inputs["backdoor"].shape == (4, LENGTH * HIDDEN)
    np.testing.assert_allclose(
        trajectory.inputs["clean"], expected_inputs(family, model, clean.encodings), atol=1e-6
    )
    assert trajectory.outputs["clean"].shape == (2, N, 2)
    np.testing.assert_allclose(trajectory.outputs["backdoor"].sum(-1), 1.0, atol=1e-6)
    assert forward_hooks(model) == 0 and model.training


def test_recorder_keeps_the_mode_of_an_explicit_gpt2_layer(tmp_path):
    from freqlens.recording import ProbeSet, Recorder, load_trajectory

    model = tiny_gpt2(seed=0)
    encodings = padded_encodings(N, LENGTH, seed=1)
    probe = ProbeSet("clean", encodings, torch.zeros(N, dtype=torch.long))
    recorder = Recorder(tmp_path / "t", [probe], schedule="every:1", embedding_layer=embedding_module(model))
    recorder.start(model)
    recorder.close()
    trajectory = load_trajectory(tmp_path / "t")
    assert trajectory.meta["embedding_layer"] == "input of GPT2Block"
    np.testing.assert_allclose(trajectory.inputs["clean"], embedding_inputs(model, encodings), rtol=1e-6)
