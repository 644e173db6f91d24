"""DeCE (Yang et al., arXiv 2407.08956): the loss against a dense numpy reference of its formula, its
limits, its bound, its epoch schedule inside freqlens' loop, and the defense through fit_defense and
`freqlens run`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freqlens.config import ExperimentConfig
from freqlens.defenses import DefenseConfig, fit_defense, prepare_model
from freqlens.defenses.dece import DeCEOptions, EpochLoss, dece_loss, smoothed_targets
from freqlens.training import TrainConfig, steps_per_epoch

from .helpers import FAMILIES, build, inputs, labels


def reference_dece(logits: np.ndarray, y: np.ndarray, epoch: int, smoothing: float, alpha_base: float) -> np.ndarray:
    """The paper's formula, written densely in float64 numpy: per-example losses."""
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    p = np.clip(p, 1e-7, 1.0)
    q = np.full((n, k), smoothing / (k - 1))
    q[np.arange(n), y] = 1.0 - smoothing
    alpha = alpha_base ** epoch
    blended = alpha * p + (1.0 - alpha) * q
    return -(q * np.log(blended)).sum(axis=1)


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize(("smoothing", "alpha_base", "epoch"),
                         [(0.05, 0.99, 1), (0.05, 0.99, 7), (0.0, 0.9, 2), (0.3, 0.8, 3), (0.05, 1.0, 1),
                          (0.2, 0.5, 10)])
def test_the_loss_is_the_papers_formula(classes, smoothing, alpha_base, epoch):
    generator = torch.Generator().manual_seed(classes * 100 + epoch)
    logits = 3 * torch.randn(64, classes, generator=generator)
    y = torch.randint(0, classes, (64,), generator=generator)
    expected = reference_dece(logits.double().numpy(), y.numpy(), epoch, smoothing, alpha_base)
    got = dece_loss(logits, y, epoch=epoch, smoothing=smoothing, alpha_base=alpha_base, reduction="none")
    np.testing.assert_allclose(got.numpy(), expected, rtol=2e-5, atol=1e-6)
    mean = dece_loss(logits, y, epoch=epoch, smoothing=smoothing, alpha_base=alpha_base)
    assert float(mean) == pytest.approx(expected.mean(), rel=2e-5)


def test_without_smoothing_and_blending_it_is_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits, y = torch.randn(32, 3, generator=generator), torch.randint(0, 3, (32,), generator=generator)
    for epoch in (1, 5):  # alpha_base = 1: no blending in any epoch
        got = dece_loss(logits, y, epoch=epoch, smoothing=0.0, alpha_base=1.0)
        torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, y))


def test_the_targets_put_one_minus_eps_on_the_label_and_share_eps_among_the_others():
    q = smoothed_targets(torch.tensor([2, 0]), 4, 0.3)
    expected = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]])
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(q.sum(1), torch.ones(2))


def test_a_confidently_wrong_example_has_a_bounded_loss_and_gradient_while_cross_entropy_grows():
    """The point of DeCE: the loss (and the pull) of an example the model contradicts stays bounded."""
    smoothing, alpha_base, epoch = 0.05, 0.99, 1
    alpha = alpha_base ** epoch
    q_true, q_other = 1 - smoothing, smoothing  # two classes
    bound = -(q_true * np.log((1 - alpha) * q_true) + q_other * np.log(alpha + (1 - alpha) * q_other))
    dece, ce, grads = [], [], []
    for scale in (10.0, 100.0, 1000.0):
        logits = torch.tensor([[scale, -scale]], requires_grad=True)  # sure of class 0; the label is 1
        loss = dece_loss(logits, torch.tensor([1]), epoch=epoch, smoothing=smoothing, alpha_base=alpha_base)
        loss.backward()
        dece.append(float(loss.detach()))
        grads.append(float(logits.grad.abs().max()))
        ce.append(float(torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([1]))))
    assert all(np.isfinite(dece)) and max(dece) <= bound + 1e-4
    assert dece[-1] == pytest.approx(bound, rel=1e-3)  # saturates at the bound
    assert ce[-1] > 100 * dece[-1] and ce[2] - ce[1] > 1000  # cross-entropy grows with the confidence
    assert max(grads) < 1e-3  # DeCE's pull on the saturated example vanishes; CE's stays at 1 per logit


def test_the_loss_refuses_a_zero_based_epoch_and_an_unknown_reduction():
    logits, y = torch.zeros(2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="1-based"):
        dece_loss(logits, y, epoch=0)
    with pytest.raises(ValueError, match="reduction"):
        dece_loss(logits, y, epoch=1, reduction="sum")


class _Counting(EpochLoss):
    """EpochLoss that notes the epoch of every batch it is called on."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs: list[int] = []

    def __call__(self, model, batch, labels, *, rows):
        self.epochs.append(self.epoch)
        return super().__call__(model, batch, labels, rows=rows)


def test_each_batch_is_weighed_with_the_alpha_of_its_epoch_in_freqlens_loop():
    n, batch = 10, 4  # 3 batches per epoch, the last one short
    enc, y = inputs("bert", n=n, length=8), labels(n).numpy()
    loss = _Counting(DeCEOptions(), n)
    from freqlens.training import train

    result = train(build("bert"), enc, y, TrainConfig(epochs=3, batch_size=batch, lr=1e-3), loss_fn=loss,
                   progress=False)
    per_epoch = steps_per_epoch(n, batch)
    assert result.steps == 3 * per_epoch
    assert loss.epochs == [1] * per_epoch + [2] * per_epoch + [3] * per_epoch
    assert _Counting(DeCEOptions(), n, first_epoch=2).epoch == 3  # a run resumed after two epochs


@pytest.mark.parametrize("family", FAMILIES)
def test_dece_trains_every_family_through_fit_defense(family):
    config = DefenseConfig(name="dece", options={"smoothing": 0.1, "alpha_base": 0.9})
    model = prepare_model(build(family), config).model
    enc, y = inputs(family, n=8, length=8), labels(8).numpy()
    train_config = TrainConfig(epochs=2, batch_size=4, lr=1e-3)
    result, info = fit_defense(model, enc, y, config, train_config, poison=np.arange(8) < 2, progress=False)
    assert result.steps == 4 and all(np.isfinite(result.losses))
    assert info["dece"] == {"smoothing": 0.1, "alpha_base": 0.9, "final_alpha": pytest.approx(0.81)}
    assert "detection" not in info  # a loss, not a filter


def test_the_first_step_loss_is_dece_of_the_models_logits():
    model = build("bert")
    enc, y = inputs("bert", n=4), labels(4)
    model.eval()
    with torch.no_grad():
        expected = dece_loss(model(**enc).logits, y, epoch=1, smoothing=0.2, alpha_base=0.7)
    config = DefenseConfig(name="dece", options={"smoothing": 0.2, "alpha_base": 0.7})
    result, _ = fit_defense(model, enc, y.numpy(), config, TrainConfig(epochs=1, batch_size=4, lr=1e-9),
                            progress=False)
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("smoothing", "1.0", r"`defense\.options\.smoothing` in \[0, 1\) but got 1\.0"),
    ("smoothing", "-0.1", r"`defense\.options\.smoothing` in \[0, 1\) but got -0\.1"),
    ("alpha_base", "0.0", r"`defense\.options\.alpha_base` in \(0, 1\] but got 0\.0"),
    ("alpha_base", "1.5", r"`defense\.options\.alpha_base` in \(0, 1\] but got 1\.5"),
    ("alpha_base", "true", r"`defense\.options\.alpha_base` in \(0, 1\] but got True"),
])
def test_a_bad_option_is_refused_when_the_config_is_built_naming_its_key(tmp_path, key, value, expected):
    path = tmp_path / "experiment.toml"
    path.write_text('[defense]\nname = "dece"\n')
    assert ExperimentConfig.from_toml(path).defense.options == DeCEOptions(smoothing=0.05, alpha_base=0.99)
    with pytest.raises(ValueError, match=expected):
        ExperimentConfig.from_toml(path, overrides=[f"defense.options.{key}={value}"])
