"""freqlens.models: probabilities, the embedding layer, capture hooks removed on every path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import HIDDEN, forward_hooks, random_encodings, tiny_bert
from torch import nn

from freqlens.models import (
    capture_output,
    embedding_inputs,
    embedding_module,
    eval_mode,
    predict_proba,
    run_until_captured,
)


# ------------------------------------------------------------ predict_proba
@pytest.mark.parametrize("training", [True, False])
def test_predict_proba_rows_sum_to_one_and_mode_is_restored(bert, encodings, training):
    bert.train(training)
    probabilities = predict_proba(bert, encodings, batch_size=4)
    assert bert.training is training
    assert probabilities.shape == (len(encodings["input_ids"]), 2)
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)
    # eval mode: no dropout, so the same result again, whatever the batch size
    np.testing.assert_allclose(predict_proba(bert, encodings, batch_size=64), probabilities, atol=1e-6)


def test_predict_proba_on_a_plain_module_returning_logits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    model.train()
    x = torch.randn(7, 5)
    probabilities = predict_proba(lambda_module(model), {"x": x}, batch_size=2)
    assert model.training
    expected = torch.softmax(model[0](x), -1).detach().numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)


def lambda_module(inner: nn.Module) -> nn.Module:
    """Wrap a module taking ``x`` as a keyword."""

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    return Wrapper()


def test_eval_mode_restores_after_an_error(bert):
    bert.train()
    with pytest.raises(KeyError):
        with eval_mode(bert):
            assert not bert.training and not bert.bert.embeddings.training
            raise KeyError("x")
    assert bert.training and bert.bert.embeddings.training


# --------------------------------------------------------- embedding_module
def test_embedding_module_of_bert(bert):
    assert embedding_module(bert) is bert.bert.embeddings


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x)


class WithInputEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def get_input_embeddings(self):
        return self.table

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.table(input_ids).mean(1))


def test_embedding_module_falls_back_to_input_embeddings():
    model = WithInputEmbeddings()
    assert embedding_module(model) is model.table


def test_embedding_module_of_a_plain_module_is_an_error():
    with pytest.raises(ValueError, match=r"Plain has none; pass the embedding layer"):
        embedding_module(Plain())


def test_embedding_inputs_of_a_custom_model():
    model = WithInputEmbeddings()
    ids = torch.tensor([[1, 2, 0], [3, 0, 0]])
    mask = (ids > 0).long()
    inputs = embedding_inputs(model, {"input_ids": ids, "attention_mask": mask})
    expected = model.table.weight.detach()[ids] * mask[..., None]
    np.testing.assert_allclose(inputs, expected.reshape(2, -1).numpy())


# ----------------------------------------------- hooks removed on every path
class Broken(nn.Module):
    """A model with an embedding layer that fails before, after or without it."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where
        self.embeddings = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, input_ids, **_):
        if self.where == "before":
            raise RuntimeError("failed before the embeddings")
        if self.where == "never":
            return self.head(torch.zeros(len(input_ids), 4))
        try:  # a model that catches everything (and so the capture signal too)
            hidden = self.embeddings(input_ids)
        except Exception as error:
            raise RuntimeError("failed after the embeddings") from error
        return self.head(hidden.mean(1))


def assert_no_hooks(model: nn.Module) -> None:
    assert len(embedding_module(model)._forward_hooks) == 0
    assert forward_hooks(model) == 0


def test_no_hook_left_after_a_normal_run(bert, encodings):
    inputs = embedding_inputs(bert, encodings, batch_size=3)
    assert inputs.shape == (len(encodings["input_ids"]), encodings["input_ids"].shape[1] * HIDDEN)
    assert_no_hooks(bert)


def test_no_hook_left_after_a_bad_argument(bert, encodings):
    bad = {"attention_mask": encodings["attention_mask"]}  # no input_ids: BERT raises
    with pytest.raises(ValueError, match="input_ids or inputs_embeds"):
        embedding_inputs(bert, bad)
    assert_no_hooks(bert)
    assert bert.training  # and the mode is restored


@pytest.mark.parametrize(
    "where, error, match",
    [
        ("before", RuntimeError, "failed before the embeddings"),
        ("never", RuntimeError, "did not run during the forward pass"),
    ],
)
def test_no_hook_left_when_the_forward_fails(where, error, match):
    model = Broken(where)
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    with pytest.raises(error, match=match):
        embedding_inputs(model, {"input_ids": ids})
    assert_no_hooks(model)
    assert model.training


def test_capture_survives_a_model_that_catches_exception():
    # The stop signal is a BaseException: `except Exception` in a model does not swallow it.
    model = Broken("after")
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    inputs = embedding_inputs(model, {"input_ids": ids})
    np.testing.assert_allclose(inputs, model.embeddings.weight.detach()[ids].reshape(2, -1).numpy())
    assert_no_hooks(model)


def test_no_hook_left_after_a_recorder_start_fails(probes, directory):
    from freqlens.recording import Recorder

    model = Broken("before")
    with pytest.raises(RuntimeError, match="failed before"):
        with Recorder(directory, probes, schedule="every:1") as recorder:
            recorder.start(model)
    assert_no_hooks(model)


def test_capture_output_directly():
    layer = nn.Linear(2, 3)
    after = nn.Linear(3, 1)
    calls = []
    after.register_forward_pre_hook(lambda *_: calls.append(1))
    model = nn.Sequential(layer, after)
    with capture_output(layer) as captured:
        assert len(layer._forward_hooks) == 1
        run_until_captured(model, torch.ones(4, 2))
    assert len(captured) == 1 and captured[0].shape == (4, 3)
    assert calls == []  # the forward stopped at the captured layer
    assert len(layer._forward_hooks) == 0


def test_capture_output_removes_the_hook_on_an_error():
    layer = nn.Linear(2, 3)
    with pytest.raises(KeyError, match="inside the block"):
        with capture_output(layer):
            raise KeyError("inside the block")
    assert len(layer._forward_hooks) == 0


def test_capture_output_of_a_layer_that_is_not_run():
    layer, other = nn.Linear(2, 3), nn.Linear(2, 3)
    with pytest.raises(RuntimeError, match="did not run"):
        with capture_output(layer) as captured:
            run_until_captured(other, torch.ones(1, 2))
    assert captured == [] and len(layer._forward_hooks) == 0


def test_capture_output_takes_the_first_element_of_a_tuple():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    layer = Pair()
    with capture_output(layer) as captured:
        run_until_captured(nn.Sequential(layer), torch.ones(2))
    torch.testing.assert_close(captured[0], torch.full((2,), 2.0))
    assert len(layer._forward_hooks) == 0


def test_a_model_built_by_tiny_bert_is_seeded():
    a, b = tiny_bert(seed=3), tiny_bert(seed=3)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.classifier.weight, tiny_bert(seed=4).classifier.weight)
    encodings = random_encodings(3, 6, pad_from=2)
    assert encodings["attention_mask"][1].tolist() == [1, 1, 0, 0, 0, 0]
    assert encodings["input_ids"][1, 2:].eq(0).all()
