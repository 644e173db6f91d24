"""Low-precision compute: float32 master weights under autocast, and non-finite training stops.

``model.dtype = "bfloat16"`` used to load bfloat16 weights, whose AdamW updates
round away (11.9% of MiniLM's weights moved in 12 steps against 47.6% in
float32); ``"float16"`` gave NaN from the first step and training went on.
Now the weights stay float32 and ``model.dtype`` is the compute dtype; a loss
or gradient that is NaN/inf stops every training path at once. Every test here
runs on the CPU (dtype comparisons are device-dependent).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertForSequenceClassification

from freqlens.config import ModelConfig
from freqlens.defenses import DefenseConfig, fit_defense, make_defense, prepare_model
from freqlens.defenses.registry import DEFENSES
from freqlens.demo.model import make_tokenizer
from freqlens.models import compute_dtype, predict_proba, set_compute_dtype
from freqlens.models.loading import load_model
from freqlens.training import TrainConfig, train
from tests.models import save_tiny_bert

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/defenses/helpers.py
from defenses.helpers import FAMILIES, build  # noqa: E402

N, LENGTH = 48, 10
STEPS_CONFIG = TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=0)  # 3 steps


def _encodings(vocab: int, *, n: int = N, seed: int = 1, pad_id: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    mask[1::2, LENGTH - 3:] = 0  # every other row padded: padding and trim_padding take part
    ids[mask == 0] = pad_id
    return {"input_ids": ids, "attention_mask": mask}


def _labels(n: int = N) -> torch.Tensor:
    return torch.as_tensor([i % 2 for i in range(n)])


def _moved(model, before: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per trainable parameter: which elements changed."""
    return {name: p.detach() != before[name] for name, p in model.named_parameters() if p.requires_grad}


def _share(moved: dict[str, torch.Tensor]) -> float:
    return sum(int(m.sum()) for m in moved.values()) / sum(m.numel() for m in moved.values())


def _train_and_measure(model, encodings, config=STEPS_CONFIG, **kwargs):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    result = train(model, encodings, _labels(len(encodings["input_ids"])), config, progress=False, **kwargs)
    return result, _moved(model, before)


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BERT checkpoint (float32) with the demo's tokenizer, for load_model."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0, seed=0)


def _load(folder, dtype: str):
    config = ModelConfig(name=str(folder), dtype=dtype, device="cpu")
    torch.manual_seed(0)  # the same weights whatever the dtype
    return load_model(config)


# ------------------------------------------------------------------ (a) bf16/fp16 compute
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_config_moves_the_weights_float32_moves(bert_folder, dtype):
    """Through `model.dtype`: weights stay float32, the same weights move as in float32
    (on the old code 'bfloat16' weights moved far fewer, 'float16' went NaN)."""
    _, reference = _load(bert_folder, "float32")
    _, model = _load(bert_folder, dtype)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert compute_dtype(model) == getattr(torch, dtype)
    for name, p in model.named_parameters():  # one checkpoint, loaded twice
        assert torch.equal(p, dict(reference.named_parameters())[name])
    encodings = _encodings(reference.config.vocab_size)
    want, moved_want = _train_and_measure(reference, encodings)
    got, moved_got = _train_and_measure(model, encodings)
    assert all(math.isfinite(x) for x in got.losses)
    assert _share(moved_want) > 0.5
    assert _share(moved_got) == pytest.approx(_share(moved_want), abs=1e-3)
    for name, m in moved_want.items():  # LayerNorm, biases, head: every tensor that moves in float32 moves
        assert int(moved_got[name].sum()) >= 0.99 * int(m.sum()), name
    np.testing.assert_allclose(got.losses, want.losses, rtol=0.02)
    assert got.losses != want.losses  # the forward passes really computed in low precision
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_compute_moves_every_family_like_float32(family):
    reference, model = build(family), build(family)
    set_compute_dtype(model, torch.bfloat16)
    encodings = _encodings(100, pad_id=1 if family == "roberta" else 0)
    if family == "bert":
        encodings["token_type_ids"] = torch.zeros_like(encodings["input_ids"])
    want, moved_want = _train_and_measure(reference, encodings)
    got, moved_got = _train_and_measure(model, encodings)
    assert _share(moved_got) == pytest.approx(_share(moved_want), abs=1e-3) and _share(moved_want) > 0.5
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    np.testing.assert_allclose(got.losses, want.losses, rtol=0.02)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_probe_passes_under_low_precision_give_float32_probabilities(dtype, family):
    reference, model = build(family), build(family)
    set_compute_dtype(model, dtype)
    encodings = _encodings(100, pad_id=1 if family == "roberta" else 0)
    want = predict_proba(reference, encodings)
    got = predict_proba(model, encodings)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, want, atol=0.02)
    assert not np.array_equal(got, want)  # computed in low precision


def test_low_precision_survives_a_peft_wrapper():
    """The compute dtype set on the loaded model reaches the training of a LoRA-wrapped one."""
    model = set_compute_dtype(build("bert"), torch.bfloat16)
    prepared = prepare_model(model, DefenseConfig(name="lora"))
    assert compute_dtype(prepared.model) == torch.bfloat16
    result, moved = _train_and_measure(prepared.model, _encodings(100))
    assert all(math.isfinite(x) for x in result.losses) and _share(moved) > 0.5
    assert {p.dtype for p in prepared.model.parameters() if p.requires_grad} == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_trainable_weights_are_refused(dtype):
    model = build("bert").to(dtype)
    with pytest.raises(ValueError, match=r"float32.*round away.*`model.dtype`"):
        train(model, _encodings(100), _labels(), STEPS_CONFIG, progress=False)


def test_auto_dtype_computes_in_the_stored_precision(tmp_path, bert_folder):
    """'auto': a checkpoint saved in float16 loads as float32 weights computing in float16."""
    tokenizer = make_tokenizer()
    model = BertForSequenceClassification.from_pretrained(bert_folder).to(torch.float16)
    model.save_pretrained(tmp_path / "fp16")
    tokenizer.save_pretrained(tmp_path / "fp16")
    _, loaded = _load(tmp_path / "fp16", "auto")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    assert compute_dtype(loaded) == torch.float16
    _, loaded = _load(bert_folder, "auto")
    assert compute_dtype(loaded) is None


# --------------------------------------------------------- (c) a dtype the device cannot do
def test_a_dtype_autocast_cannot_compute_is_refused_before_loading(bert_folder, monkeypatch):
    import transformers

    import freqlens.models

    monkeypatch.setattr(freqlens.models, "_autocast_problem", lambda device, dtype: "no kernels")

    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the dtype was checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fail)
    with pytest.raises(ValueError, match=r"`model.dtype`.*float16 does not work there \(no kernels\)"):
        _load(bert_folder, "float16")


def test_float16_on_this_cpu_works_or_is_refused_naming_model_dtype(bert_folder):
    """torch 2.13 autocasts to float16 on CPU: it trains (finite, weights move); if a build
    cannot, the refusal names `model.dtype` before training."""
    try:
        _, model = _load(bert_folder, "float16")
    except ValueError as error:
        assert "`model.dtype`" in str(error)
        return
    result, moved = _train_and_measure(model, _encodings(model.config.vocab_size))
    assert all(math.isfinite(x) for x in result.losses) and _share(moved) > 0.5


def test_autocast_problem_sees_a_dtype_torch_would_silently_disable():
    from freqlens.models import _autocast_problem

    assert _autocast_problem(torch.device("cpu"), torch.bfloat16) == ""
    assert "not supported" in _autocast_problem(torch.device("cpu"), torch.float64)


# ------------------------------------------------------------- (b) non-finite training
def _nan_loss(model, batch, labels):
    return model(**batch, labels=labels).loss * float("nan")


def _nan_gradient(model, batch, labels):
    """A finite loss (exactly the model's) whose gradient is NaN."""
    logits = model(**batch).logits
    return torch.nn.functional.cross_entropy(logits, labels) + torch.sqrt(0.0 * logits.sum())


def test_a_nan_loss_stops_at_step_1():
    model = build("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 1 \(epoch 1\).*`train.lr`"):
        train(model, _encodings(100), _labels(), STEPS_CONFIG, progress=False, loss_fn=_nan_loss)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the step was not applied


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_nan_gradients_stop_at_step_1(max_grad_norm):
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-3, max_grad_norm=max_grad_norm)
    with pytest.raises(FloatingPointError, match=r"gradient norm is nan at step 1"):
        train(build("bert"), _encodings(100), _labels(), config, progress=False, loss_fn=_nan_gradient)


def test_the_step_offset_of_a_later_phase_is_named():
    with pytest.raises(FloatingPointError, match=r"at step 8 "):
        train(build("bert"), _encodings(100), _labels(), STEPS_CONFIG, progress=False, loss_fn=_nan_loss,
              step_offset=7)


def test_float16_overflow_is_named_as_a_likely_cause():
    model = set_compute_dtype(build("bert"), torch.float16)
    with pytest.raises(FloatingPointError, match=r"`model.dtype` = 'float16'.*`train.lr`"):
        train(model, _encodings(100), _labels(), STEPS_CONFIG, progress=False, loss_fn=_nan_loss)


@pytest.mark.parametrize("defense", DEFENSES)
def test_a_learning_rate_too_high_stops_every_defense(defense):
    """lr = 1e30: the first step's update makes the weights huge, the second step's loss is
    NaN/inf; every training path (plain, LoRA, prefix, GA, reference-only, ABL) stops there
    instead of reporting a NaN model."""
    config = DefenseConfig(name=defense, lr=1e30)
    prepared = prepare_model(build("bert"), config)
    encodings, labels = _encodings(100), _labels()
    reference = (_encodings(100, n=16, seed=5), _labels(16)) if make_defense(config).needs_reference else None
    with pytest.raises(FloatingPointError, match=r"at step 2 .*learning rate too high \(1e\+30"):
        fit_defense(prepared.model, encodings, labels.numpy(), config, TrainConfig(epochs=3, batch_size=16, lr=1e30),
                    reference=reference, selector=None, progress=False)


def test_float16_skips_a_loss_scale_overflow_and_goes_on():
    """float16 loss scaling: a step whose scaled gradients overflow is skipped (the scale is
    halved), as torch.amp.GradScaler does; the next steps train."""
    model = set_compute_dtype(build("bert"), torch.float16)
    calls = []

    def first_step_overflows(model, batch, labels):
        calls.append(1)
        return _nan_gradient(model, batch, labels) if len(calls) == 1 else model(**batch, labels=labels).loss

    result, moved = _train_and_measure(model, _encodings(100), loss_fn=first_step_overflows)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses) and _share(moved) > 0.5


def test_float16_gradients_that_overflow_at_every_scale_stop_the_run():
    """Skipping halves the scale from 2**16; below 1 the gradients overflow in float16 itself."""
    model = set_compute_dtype(build("bert"), torch.float16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = TrainConfig(epochs=6, batch_size=16, lr=1e-3)  # 18 steps
    with pytest.raises(FloatingPointError, match=r"gradient is nan at step 17 .*`model.dtype` = 'float16'"):
        train(model, _encodings(100), _labels(), config, progress=False, loss_fn=_nan_gradient)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
