"""Gradient alignment: the projection by hand, its branches, accumulation, and the Hugging Face Trainer."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from freqlens.defenses import AlignedTrainerMixin, GAConfig, GradientAligner, align_gradients
from freqlens.defenses.ga import mixing_weight, project_on_span
from freqlens.training import TrainConfig, train

from .helpers import build, inputs, labels

# ------------------------------------------------------------------ a two-tensor model with known gradients
A0 = [0.5, -1.0, 2.0]
B0 = [[1.0, 0.0], [0.0, 1.0]]
TRAIN_A = np.array([3.0, -1.0, 2.0])
TRAIN_B = np.array([[0.5, -1.0], [2.0, 0.0]])


class TwoTensors(nn.Module):
    """loss = offset + mean_i <x_i[:3], a> + <x_i[3:], vec(b)>: the reference gradient is the mean input."""

    def __init__(self, offset: float = 10.0):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(A0, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(B0, dtype=torch.float64))
        self.offset = offset

    def forward(self, x, labels=None):
        loss = self.offset + (x[:, :3] @ self.a).mean() + (x[:, 3:] * self.b.reshape(-1)).sum(1).mean()
        return SimpleNamespace(loss=loss)


def reference_inputs(scale: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.as_tensor(scale * rng.normal(size=(6, 7)) + scale * np.array([1, -2, 0.5, 1, 3, -1, 0.2]))


def aligner_for(model, x, config=None) -> GradientAligner:
    # one batch of all reference rows: the reference gradient is their mean, whatever the order
    return GradientAligner(model, {"x": x}, np.zeros(len(x), dtype=int), config or GAConfig(), batch_size=len(x))


def set_training_gradients(model):
    model.a.grad = torch.tensor(TRAIN_A)
    model.b.grad = torch.tensor(TRAIN_B)


def hand_reference(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    mean = x.numpy().mean(0)
    return mean[:3], mean[3:].reshape(2, 2)


def projection(g: np.ndarray, gc: np.ndarray) -> np.ndarray:
    """|<g, gc>| / ||gc||^2 * gc."""
    return abs(np.sum(g * gc)) / np.sum(gc * gc) * gc


def test_pure_alignment_equals_the_projection_by_hand():
    x = reference_inputs()
    model = TwoTensors(offset=10.0)
    set_training_gradients(model)
    aligner = aligner_for(model, x)
    step = aligner.align(epoch=0, epochs=1)
    ca, cb = hand_reference(x)
    assert np.sum(TRAIN_A * ca) * np.sum(TRAIN_B * cb) < 0  # one dot is negative: the |.| matters
    np.testing.assert_allclose(model.a.grad.numpy(), projection(TRAIN_A, ca), rtol=1e-12)
    np.testing.assert_allclose(model.b.grad.numpy(), projection(TRAIN_B, cb), rtol=1e-12)
    assert step.branch == "pure" and step.mu == 0.0
    expected_loss = 10.0 + float(x[:, :3].numpy().mean(0) @ np.array(A0)) + float(np.sum(cb * np.array(B0)))
    assert step.reference_loss == pytest.approx(expected_loss, rel=1e-12)
    assert step.mean_reference_norm == pytest.approx((np.linalg.norm(ca) + np.linalg.norm(cb)) / 2, rel=1e-12)
    g = np.concatenate([TRAIN_A, TRAIN_B.ravel()])
    gc = np.concatenate([ca, cb.ravel()])
    assert step.cosine == pytest.approx(g @ gc / (np.linalg.norm(g) * np.linalg.norm(gc)), rel=1e-12)
    assert len(aligner.log.steps) == 1 and aligner.log.to_dict()["branch"] == ["pure"]


def test_the_model_parameters_and_their_values_are_untouched():
    x = reference_inputs()
    model = TwoTensors()
    set_training_gradients(model)
    aligner_for(model, x).align(epoch=0, epochs=1)
    np.testing.assert_array_equal(model.a.detach().numpy(), A0)
    np.testing.assert_array_equal(model.b.detach().numpy(), B0)


@pytest.mark.parametrize("epoch, epochs", [(1, 4), (2, 4), (3, 4), (1, 2), (2, 3)])
def test_mixed_branch_equals_the_hand_computation(epoch, epochs):
    x = reference_inputs()
    model = TwoTensors(offset=-10.0)  # reference loss below the 0.4 threshold
    set_training_gradients(model)
    config = GAConfig()
    step = aligner_for(model, x, config).align(epoch=epoch, epochs=epochs)
    mu = config.mu * (epoch - config.mix_from_epoch + 1) / (epochs - config.mix_from_epoch)
    ca, cb = hand_reference(x)
    assert step.branch == "mixed" and step.mu == pytest.approx(mu, rel=1e-12)
    np.testing.assert_allclose(model.a.grad.numpy(), (1 - mu) * projection(TRAIN_A, ca) + mu * TRAIN_A, rtol=1e-12)
    np.testing.assert_allclose(model.b.grad.numpy(), (1 - mu) * projection(TRAIN_B, cb) + mu * TRAIN_B, rtol=1e-12)


def test_mu_reaches_the_configured_value_at_the_last_epoch():
    config = GAConfig(mu=0.1)
    assert [mixing_weight(config, e, 5) for e in range(5)] == pytest.approx([0, 0.025, 0.05, 0.075, 0.1])
    assert mixing_weight(GAConfig(mu=0.3, mix_from_epoch=2), 2, 4) == pytest.approx(0.15)
    assert mixing_weight(config, 0, 1) == 0.0  # a single epoch never mixes


def test_low_loss_in_the_first_epoch_stays_pure():
    x = reference_inputs()
    model = TwoTensors(offset=-10.0)
    set_training_gradients(model)
    step = aligner_for(model, x).align(epoch=0, epochs=3)
    ca, _ = hand_reference(x)
    assert step.branch == "pure"
    np.testing.assert_allclose(model.a.grad.numpy(), projection(TRAIN_A, ca), rtol=1e-12)


def test_high_loss_stays_pure_at_the_last_epoch():
    model = TwoTensors(offset=10.0)
    set_training_gradients(model)
    assert aligner_for(model, reference_inputs()).align(epoch=3, epochs=4).branch == "pure"


def test_a_vanishing_reference_gradient_allows_mixing_even_at_high_loss():
    x = reference_inputs(scale=1e-9)  # mean reference-gradient norm below 5e-7
    model = TwoTensors(offset=10.0)
    set_training_gradients(model)
    step = aligner_for(model, x).align(epoch=3, epochs=4)
    assert step.mean_reference_norm < 5e-7
    assert step.branch == "mixed" and step.mu == pytest.approx(0.1)


def test_pure_config_never_mixes():
    x = reference_inputs()
    model = TwoTensors(offset=-10.0)
    set_training_gradients(model)
    step = aligner_for(model, x, GAConfig(pure=True)).align(epoch=3, epochs=4)
    _, cb = hand_reference(x)
    assert step.branch == "pure" and step.mu == 0.0
    np.testing.assert_allclose(model.b.grad.numpy(), projection(TRAIN_B, cb), rtol=1e-12)


@pytest.mark.parametrize("offset", [10.0, -10.0])
def test_a_zero_reference_gradient_gives_a_zero_aligned_gradient(offset):
    """A memorised reference set: every g_c = 0. No error, no NaN, mean norm 0, g_a = 0."""
    x = torch.zeros(6, 7, dtype=torch.float64)
    model = TwoTensors(offset=offset)
    set_training_gradients(model)
    step = aligner_for(model, x).align(epoch=0, epochs=1)
    assert step.mean_reference_norm == 0.0
    assert step.branch == "pure" and step.cosine == 0.0
    for p in (model.a, model.b):
        assert torch.isfinite(p.grad).all()
        assert torch.count_nonzero(p.grad) == 0


def test_a_zero_reference_gradient_in_the_mixed_branch_keeps_mu_g():
    x = torch.zeros(6, 7, dtype=torch.float64)
    model = TwoTensors(offset=10.0)
    set_training_gradients(model)
    step = aligner_for(model, x).align(epoch=1, epochs=2)
    assert step.branch == "mixed" and step.mu == pytest.approx(0.1)
    np.testing.assert_allclose(model.a.grad.numpy(), 0.1 * TRAIN_A, rtol=1e-12)
    np.testing.assert_allclose(model.b.grad.numpy(), 0.1 * TRAIN_B, rtol=1e-12)


def test_frozen_parameters_are_left_alone():
    x = reference_inputs()
    model = TwoTensors()
    model.b.requires_grad_(False)
    model.a.grad = torch.tensor(TRAIN_A)
    aligner_for(model, x).align(epoch=0, epochs=1)
    ca, _ = hand_reference(x)
    np.testing.assert_allclose(model.a.grad.numpy(), projection(TRAIN_A, ca), rtol=1e-12)
    assert model.b.grad is None


def test_an_empty_reference_set_is_refused():
    with pytest.raises(ValueError, match="reference"):
        GradientAligner(TwoTensors(), {"x": torch.zeros(0, 7)}, np.zeros(0, dtype=int))


# ------------------------------------------------------------------ align_gradients
def test_align_gradients_per_tensor():
    rng = np.random.default_rng(4)
    g = [torch.as_tensor(rng.normal(size=s)) for s in ((3,), (2, 4))]
    gc = [torch.as_tensor(rng.normal(size=s)) for s in ((3,), (2, 4))]
    for mu in (0.0, 0.25):
        out = align_gradients(g, gc, mu)
        for o, a, c in zip(out, g, gc):
            a, c = a.numpy(), c.numpy()
            np.testing.assert_allclose(o.numpy(), (1 - mu) * projection(a, c) + mu * a, rtol=1e-12)


def test_align_gradients_does_not_change_its_inputs():
    g = [torch.tensor([1.0, -2.0])]
    gc = [torch.tensor([0.5, 0.5])]
    out = align_gradients(g, gc, 0.0)
    assert torch.equal(g[0], torch.tensor([1.0, -2.0])) and torch.equal(gc[0], torch.tensor([0.5, 0.5]))
    assert out[0] is not g[0] and out[0] is not gc[0]


def test_align_gradients_points_along_the_reference_even_against_it():
    out = align_gradients([torch.tensor([-2.0, 0.0])], [torch.tensor([1.0, 0.0])], 0.0)
    torch.testing.assert_close(out[0], torch.tensor([2.0, 0.0]))


def test_align_gradients_zero_and_missing_tensors():
    g = torch.tensor([1.0, 2.0])
    out = align_gradients([g, None, g, None], [torch.zeros(2), torch.tensor([1.0, 1.0]), None, None], 0.2)
    torch.testing.assert_close(out[0], 0.2 * g)  # g_c = 0: g_a = 0, the raw share stays
    torch.testing.assert_close(out[1], torch.zeros(2))  # no training gradient counts as zero
    torch.testing.assert_close(out[2], 0.2 * g)  # no reference gradient counts as zero
    assert out[3] is None
    pure = align_gradients([g], [torch.zeros(2)], 0.0)
    assert torch.equal(pure[0], torch.zeros(2))


# ------------------------------------------------------------------ projection on a span of reference gradients
def span_projection(g: np.ndarray, rows: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Least-squares projection of g on the rows' span, its component along the rows' weighted
    mean reflected when it points against that mean (numpy's lstsq, not a pseudo-inverse)."""
    coefficients = np.linalg.lstsq(rows.T, g.ravel(), rcond=None)[0]
    projected = coefficients @ rows
    mean = shares @ rows
    along = projected @ mean
    if along < 0:
        projected = projected - 2 * along / (mean @ mean) * mean
    return projected.reshape(g.shape)


def twin_groups(model, x, subspace: int) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """The group gradients the aligner will use: a twin aligner with the same seed draws the same batch."""
    twin = aligner_for(model, x, GAConfig(subspace=subspace))
    groups, shares, _ = twin.reference_group_gradients([model.a, model.b])
    return [[g.numpy() for g in group] for group in groups], np.array(shares)


@pytest.mark.parametrize("subspace", [2, 3, 5])
def test_span_alignment_equals_the_least_squares_projection(subspace):
    x = reference_inputs()
    model = TwoTensors(offset=10.0)
    groups, shares = twin_groups(model, x, subspace)
    set_training_gradients(model)
    step = aligner_for(model, x, GAConfig(subspace=subspace)).align(epoch=0, epochs=1)
    for i, (name, train) in enumerate([("a", TRAIN_A), ("b", TRAIN_B)]):
        rows = np.stack([group[i].ravel() for group in groups])
        np.testing.assert_allclose(getattr(model, name).grad.numpy(), span_projection(train, rows, shares),
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    # the loss, norm and cosine are the whole batch's, as with one reference gradient
    ca, cb = hand_reference(x)
    expected_loss = 10.0 + float(x[:, :3].numpy().mean(0) @ np.array(A0)) + float(np.sum(cb * np.array(B0)))
    assert step.reference_loss == pytest.approx(expected_loss, rel=1e-12)
    assert step.mean_reference_norm == pytest.approx((np.linalg.norm(ca) + np.linalg.norm(cb)) / 2, rel=1e-12)
    assert sum(shares) == pytest.approx(1.0) and len(shares) == subspace


def test_a_span_of_the_whole_space_keeps_a_descending_gradient_and_reflects_an_ascending_one():
    x = reference_inputs()  # 6 rows, one per group: they span R^3 (tensor a) and R^4 (tensor b)
    model = TwoTensors(offset=10.0)
    set_training_gradients(model)
    aligner_for(model, x, GAConfig(subspace=6)).align(epoch=0, epochs=1)
    for name, train, mean in [("a", TRAIN_A, hand_reference(x)[0]), ("b", TRAIN_B, hand_reference(x)[1])]:
        along = np.sum(train * mean)
        expected = train if along >= 0 else train - 2 * along / np.sum(mean * mean) * mean
        np.testing.assert_allclose(getattr(model, name).grad.numpy(), expected, rtol=1e-9, err_msg=name)
    assert np.sum(TRAIN_A * hand_reference(x)[0]) * np.sum(TRAIN_B * hand_reference(x)[1]) < 0  # both cases met


def test_span_mixed_branch_mixes_in_the_raw_gradient():
    x = reference_inputs()
    model = TwoTensors(offset=-10.0)  # below the loss threshold
    groups, shares = twin_groups(model, x, 2)
    set_training_gradients(model)
    step = aligner_for(model, x, GAConfig(subspace=2)).align(epoch=1, epochs=2)
    assert step.branch == "mixed" and step.mu == pytest.approx(0.1)
    rows = np.stack([group[0].ravel() for group in groups])
    np.testing.assert_allclose(model.a.grad.numpy(), 0.9 * span_projection(TRAIN_A, rows, shares) + 0.1 * TRAIN_A,
                               rtol=1e-9)


def test_project_on_span_of_one_gradient_is_the_papers_rule():
    rng = np.random.default_rng(3)
    for _ in range(5):
        g, gc = rng.normal(size=(2, 4, 3))
        np.testing.assert_allclose(project_on_span(torch.tensor(g), [torch.tensor(gc)]).numpy(), projection(g, gc),
                                   rtol=1e-10)


def test_project_on_span_of_dependent_or_zero_gradients():
    rng = np.random.default_rng(4)
    g, gc = (torch.tensor(v) for v in rng.normal(size=(2, 5)))
    dependent = project_on_span(g, [gc, 2 * gc, torch.zeros(5), -gc], weights=[0.25, 0.25, 0.25, 0.25])
    # the mean 0.5 gc points along gc: the rule is the paper's on gc
    np.testing.assert_allclose(dependent.numpy(), projection(g.numpy(), gc.numpy()), rtol=1e-8)
    assert torch.equal(project_on_span(g, [torch.zeros(5), torch.zeros(5)]), torch.zeros(5, dtype=g.dtype))


# ------------------------------------------------------------------ gradient accumulation
N = 16


def one_step(batch_size: int, accumulation: int, *, aligned: bool, subspace: int = 1):
    model = build("bert", seed=0, dropout=0.0)
    enc = inputs("bert", n=N, length=10, seed=11)
    aligner = None
    if aligned:
        ref = inputs("bert", n=12, length=10, seed=12)
        aligner = GradientAligner(model, ref, labels(12, seed=1).numpy(), GAConfig(subspace=subspace), batch_size=8,
                                  seed=3)
    config = TrainConfig(epochs=1, batch_size=batch_size, accumulation_steps=accumulation, lr=1e-3, seed=5)
    result = train(model, enc, labels(N), config, aligner=aligner, progress=False)
    assert result.steps == 1
    return model, result


@pytest.mark.parametrize("aligned, subspace", [(True, 1), (True, 4), (False, 1)], ids=["ga", "ga-span", "no-ga"])
def test_accumulated_step_equals_one_big_batch(aligned, subspace):
    small, small_result = one_step(8, 2, aligned=aligned, subspace=subspace)
    big, big_result = one_step(16, 1, aligned=aligned, subspace=subspace)
    assert small_result.losses == pytest.approx(big_result.losses, rel=1e-5)
    before = dict(build("bert", seed=0, dropout=0.0).named_parameters())
    moved = 0
    for (name, p), (_, q) in zip(small.named_parameters(), big.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
        moved += not torch.equal(p, before[name])
    assert moved > 0
    if aligned:
        assert len(small_result.alignment["branch"]) == len(big_result.alignment["branch"]) == 1
        assert small_result.alignment["cosine"] == pytest.approx(big_result.alignment["cosine"], rel=1e-4)


# ------------------------------------------------------------------ Hugging Face Trainer
class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        enc = inputs("bert", n=n, length=10, seed=21)
        y = labels(n)
        self.rows = [{**{k: v[i] for k, v in enc.items()}, "labels": y[i]} for i in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def run_aligned_trainer(tmp_path, callbacks=None, **arguments):
    from transformers import Trainer, TrainingArguments

    class AlignedTrainer(AlignedTrainerMixin, Trainer):
        pass

    model = build("bert", dropout=0.0)
    ref = inputs("bert", n=8, length=10, seed=22)
    aligner = GradientAligner(model, ref, labels(8).numpy(), GAConfig(), batch_size=4)
    calls = []
    align = aligner.align

    def spy(**kwargs):
        calls.append(kwargs)
        return align(**kwargs)

    aligner.align = spy
    settings = {"output_dir": str(tmp_path / "trainer"), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
                "report_to": [], "save_strategy": "no", "use_cpu": True, "disable_tqdm": True, "seed": 0,
                "dataloader_num_workers": 0, "logging_strategy": "no"}
    settings.update(arguments)
    trainer = AlignedTrainer(model=model, args=TrainingArguments(**settings), train_dataset=Rows(16),
                             aligner=aligner, callbacks=callbacks)
    trainer.train()
    return trainer, aligner, calls


@pytest.mark.parametrize("arguments, steps", [
    ({"max_steps": 3}, 3),
    ({"num_train_epochs": 2}, 8),
    ({"num_train_epochs": 1, "gradient_accumulation_steps": 2}, 2),
    ({"max_steps": 3, "max_grad_norm": 0.0}, 3),
    ({"num_train_epochs": 1, "gradient_accumulation_steps": 2, "max_grad_norm": 0.0}, 2),
], ids=["max-steps", "epochs", "accumulation", "no-clipping", "accumulation-no-clipping"])
def test_trainer_aligns_once_per_optimisation_step(tmp_path, arguments, steps):
    trainer, aligner, calls = run_aligned_trainer(tmp_path, **arguments)
    assert trainer.state.global_step == steps
    assert len(aligner.log.steps) == len(calls) == steps


def test_trainer_passes_the_epoch(tmp_path):
    _, _, calls = run_aligned_trainer(tmp_path, num_train_epochs=2)
    assert [c["epoch"] for c in calls] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert {c["epochs"] for c in calls} == {2}


@pytest.mark.parametrize("arguments", [{}, {"gradient_accumulation_steps": 2}, {"max_grad_norm": 0.0}],
                         ids=["default", "accumulation", "no-clipping"])
def test_trainer_steps_with_the_aligned_gradients(tmp_path, arguments):
    """In the pure branch each tensor's gradient at the optimizer step lies along +g_c of the reference batch."""
    from transformers import TrainerCallback

    class Gradients(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.seen.append([None if p.grad is None else p.grad.detach().clone() for p in model.parameters()])

    gradients = Gradients()
    start = build("bert", dropout=0.0)  # the weights before the first step
    _, aligner, _ = run_aligned_trainer(tmp_path, max_steps=1, callbacks=[gradients], **arguments)
    assert aligner.log.steps[0].branch == "pure" and len(gradients.seen) == 1
    fresh = GradientAligner(start, inputs("bert", n=8, length=10, seed=22), labels(8).numpy(), GAConfig(),
                            batch_size=4)  # the same seed: the same first reference batch
    reference, _ = fresh.reference_gradients([p for p in start.parameters() if p.requires_grad])
    checked = 0
    for (name, _), g, gc in zip(start.named_parameters(), gradients.seen[0], reference):
        if gc is None or float(gc.norm()) == 0:
            continue
        g, gc = g.double().flatten(), gc.double().flatten()
        if float(g.norm()) == 0:
            continue
        assert float(g @ gc) / (float(g.norm()) * float(gc.norm())) == pytest.approx(1.0, abs=1e-5), name
        checked += 1
    assert checked > 10


# ------------------------------------------------------------------ GAConfig checks
@pytest.mark.parametrize("field, value", [("loss_threshold", -0.1), ("norm_threshold", -1e-7), ("mu", 1.5),
                                          ("mu", -0.1), ("mix_from_epoch", -1), ("batch_size", 0),
                                          ("subspace", 0)])
def test_ga_config_rejects_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        GAConfig(**{field: value})


def test_ga_config_batch_size_sets_the_reference_batch():
    aligner = GradientAligner(TwoTensors(), {"x": reference_inputs()}, np.zeros(6, dtype=int),
                              GAConfig(batch_size=2), batch_size=32)
    assert aligner.batch_size == 2
    assert aligner_for(TwoTensors(), reference_inputs()).batch_size == 6
    capped = GradientAligner(TwoTensors(), {"x": reference_inputs()}, np.zeros(6, dtype=int), batch_size=32)
    assert capped.batch_size == 6  # never more than the reference set


def test_ga_config_refuses_more_groups_than_reference_examples():
    with pytest.raises(ValueError, match="`subspace` <= `batch_size`"):
        GAConfig(batch_size=4, subspace=5)


def test_aligner_refuses_more_groups_than_its_reference_batch():
    with pytest.raises(ValueError, match="`subspace` <= the reference batch \\(6 examples\\)"):
        aligner_for(TwoTensors(), reference_inputs(), GAConfig(subspace=7))


def test_the_gram_matrix_is_the_same_over_column_blocks(monkeypatch):
    import freqlens.defenses.ga as ga

    rows = torch.tensor(np.random.default_rng(5).normal(size=(4, 11)), dtype=torch.float32)
    whole = ga._gram64(rows)
    monkeypatch.setattr(ga, "GRAM_CHUNK", 3)  # 11 columns in blocks of 3, 3, 3, 2
    np.testing.assert_allclose(ga._gram64(rows).numpy(), whole.numpy(), rtol=1e-12)
    np.testing.assert_allclose(whole.numpy(), rows.double().numpy() @ rows.double().numpy().T, rtol=1e-12)


@pytest.mark.parametrize("name", ["ga", "ga+lora", "muscle"])
@pytest.mark.parametrize("subspace", [1, 2])
def test_a_non_finite_reference_loss_stops_naming_the_reference_batch(name, subspace):
    """NaN/inf on the clean reference examples alone: the message names the reference batch, not `train.lr`."""
    from freqlens.defenses import DefenseConfig, fit_defense, prepare_model

    model = build("bert")
    enc, y = inputs("bert", n=16, length=8, seed=5), labels(16)
    enc["input_ids"][enc["input_ids"] == 99] = 98  # training rows never see token 99
    ref_enc, ref_y = inputs("bert", n=8, length=8, seed=6), labels(8, seed=1)
    ref_enc["input_ids"][:, 2] = 99
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[99] = float("inf")
    config = DefenseConfig(name=name, reference_size=8, ga={"subspace": subspace})
    prepared = prepare_model(model, config, max_length=8)
    with pytest.raises(FloatingPointError, match=r"clean reference batch's loss is nan at gradient-alignment "
                                                 r"step 1 \(epoch 1\).*before the update") as error:
        fit_defense(prepared.model, enc, y, config, TrainConfig(epochs=1, batch_size=4, lr=1e-3),
                    reference=(ref_enc, ref_y), progress=False)
    assert "train.lr" not in str(error.value)
